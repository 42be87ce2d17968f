//! A change the hub refused for a stamp too far ahead of its clock: telling
//! a clock that is wrong now from one that was wrong when the change was
//! made, and stamping such changes again once the clock is right (see
//! the replica's `restamp`).

use std::time::Duration;

use super::{SyncEngine, SyncReport};
use crate::model::clock::wall_clock_us;
use crate::model::error::Result;
use crate::model::protocol::{ClockAhead, HubInfo};

/// A change of this device the hub refused because its stamp was too far
/// ahead of the hub's clock (see [`SyncReport::wrong_clock`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WrongClock {
    /// What the hub refused, with its stamp, the hub's time and the bound.
    pub refused: ClockAhead,
    /// How far ahead of the hub's clock the change was stamped.
    pub ahead: Duration,
    /// Whether this device's clock is still ahead of the hub's by more than
    /// the bound: then its changes stay queued (and are refused) until the
    /// clock is fixed. Set it right.
    pub still_ahead: bool,
    /// Changes stamped in the future, when the clock was wrong, that were
    /// stamped again at the device's present time (its clock is right now)
    /// and pushed again in this sync.
    pub restamped: usize,
}

impl WrongClock {
    /// What the refusal says, given this device's clock (`wall_us`) when
    /// the answer came.
    pub(super) fn of(refused: ClockAhead, wall_us: u64) -> WrongClock {
        WrongClock {
            refused,
            ahead: Duration::from_micros(refused.stamped_us.saturating_sub(refused.hub_now_us)),
            still_ahead: wall_us > refused.hub_now_us.saturating_add(refused.max_skew_us),
            restamped: 0,
        }
    }
}

impl std::fmt::Display for WrongClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "change {} was stamped {} s ahead of the hub's clock (at most {} s allowed): ",
            self.refused.id,
            self.ahead.as_secs(),
            self.refused.max_skew_us / 1_000_000
        )?;
        if self.still_ahead {
            write!(
                f,
                "the clock of device {} is wrong; its changes stay queued until it is set right",
                self.refused.id.origin
            )
        } else {
            write!(
                f,
                "the clock of device {} was wrong and is right now; {} changes were stamped again",
                self.refused.id.origin, self.restamped
            )
        }
    }
}

impl SyncEngine {
    /// After a push that halted on a wrong clock: if this device's clock is
    /// right now, stamp the changes made while it was ahead again, and push
    /// again.
    pub(super) async fn after_wrong_clock(
        &self,
        hub: &HubInfo,
        report: &mut SyncReport,
    ) -> Result<()> {
        let Some(wrong) = report.wrong_clock.as_ref().filter(|w| !w.still_ahead) else {
            return Ok(());
        };
        // Ahead of both clocks: a device whose clock is now a little behind
        // the hub's must not stamp again what the hub would take.
        let limit = Ord::max(wall_clock_us(), wrong.refused.hub_now_us)
            .saturating_add(wrong.refused.max_skew_us);
        let restamped = self.replica.restamp_ahead(limit).await?;
        if restamped == 0 {
            return Ok(());
        }
        let refused = wrong.refused;
        tracing::warn!(
            "device {}: {restamped} changes stamped in the future were stamped again",
            refused.id.origin
        );
        report.halted = None;
        self.push(hub, report).await?;
        // The report keeps what happened (unless the push met a wrong
        // clock again, which it reports).
        match report.wrong_clock.as_mut() {
            Some(w) if w.refused == refused => w.restamped = restamped,
            Some(_) => {}
            None => {
                let mut w = WrongClock::of(refused, wall_clock_us());
                w.restamped = restamped;
                w.still_ahead = false;
                report.wrong_clock = Some(w);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::change::ChangeId;
    use crate::model::clock::NodeId;

    fn refused(stamped_us: u64, hub_now_us: u64) -> ClockAhead {
        ClockAhead {
            id: ChangeId {
                origin: NodeId([1; 16]),
                seq: 3,
            },
            stamped_us,
            hub_now_us,
            max_skew_us: 300_000_000,
        }
    }

    #[test]
    fn a_clock_still_ahead_is_told_from_one_set_right() {
        let day = 86_400_000_000;
        let hub_now = 1_800_000_000_000_000;
        // Stamped a day ahead; the device's clock still a day ahead.
        let w = WrongClock::of(refused(hub_now + day, hub_now), hub_now + day);
        assert!(w.still_ahead);
        assert_eq!(w.ahead, Duration::from_secs(86_400));
        assert!(w.to_string().contains("is wrong"), "{w}");
        // The same change, the device's clock right now (a second off).
        let w = WrongClock::of(refused(hub_now + day, hub_now), hub_now + 1_000_000);
        assert!(!w.still_ahead);
        assert!(w.to_string().contains("is right now"), "{w}");
        // Just within the bound is right; just past it is not.
        assert!(
            !WrongClock::of(refused(hub_now + day, hub_now), hub_now + 300_000_000).still_ahead
        );
        assert!(WrongClock::of(refused(hub_now + day, hub_now), hub_now + 300_000_001).still_ahead);
    }
}
