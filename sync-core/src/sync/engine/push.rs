//! Pushing the outbox: batch after batch, the next one read while the hub
//! works on the current one, acknowledged changes dropped by range.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::prefetch::Prefetch;
use super::{SyncEngine, SyncReport};
use crate::model::change::{Change, ChangeId};
use crate::model::clock::NodeId;
use crate::model::error::{Error, Result};
use crate::model::protocol::{HubInfo, PushAck, RejectPolicy, Rejection, Unreadable};
use crate::replica::Sealer;
use crate::replica::outbox::{BATCH_BYTES, batch_bytes};

/// What taking in a push's answer leaves to do.
enum AckOutcome {
    /// The stream halted at the hub: stop pushing.
    Halted,
    /// A resolver settled a conflict with a new change: the batch read
    /// ahead may predate it, read again.
    Resolved,
    /// The hub holds another change under the id of one of the batch: the
    /// replica took a new id, push the outbox again from its head.
    Renewed,
    /// Go on.
    Continue,
}

/// How many acknowledged changes may wait in the outbox before they are
/// dropped (see [`SyncEngine::push`]).
const ACK_EVERY: usize = 10_000;

/// The acknowledged head of the outbox not yet dropped.
#[derive(Debug, Default)]
struct AckedHead {
    /// Every change up to this sequence is acknowledged.
    through: Option<u64>,
    /// How many of them are still in the outbox.
    unflushed: usize,
    /// The last change the hub acknowledged, and its node id.
    last: Option<(NodeId, u64)>,
}

impl SyncEngine {
    /// Push the outbox. Acknowledged changes at its head are dropped by
    /// range, every [`ACK_EVERY`] changes and at the end (also after an
    /// error): a crash in between only makes the next sync re-send them, and
    /// the hub acknowledges a re-sent change without applying it again.
    ///
    /// The markers are sealed as the push goes: each batch read ahead
    /// seals what it needs while the hub works on the batch before. What
    /// the push did not take (the stream halted) is sealed at the end by a
    /// pass of its own (after an error, `sync_now` seals it); rows that
    /// cannot be captured are reported in [`SyncReport::local_errors`].
    pub(super) async fn push(&self, info: &HubInfo, report: &mut SyncReport) -> Result<()> {
        let mut head = AckedHead::default();
        let mut sealer = self.replica.keeping_sealer();
        let pushed = self.push_batches(report, &mut head, &mut sealer).await;
        let mut rejected = std::mem::take(&mut sealer.report.rejected);
        let sealed = match &pushed {
            // A pass of its own: the push's may have stopped (writes kept
            // arriving), and it holds what it rejected, which the new pass
            // rejects again if the row is still bad.
            Ok(()) => self.replica.capture().await.map(|c| rejected = c.rejected),
            Err(_) => Ok(()),
        };
        report.local_errors.extend(rejected);
        let dropped = match head.through {
            Some(seq) => self.replica.acknowledge_through(seq).await,
            None => Ok(()),
        };
        let recorded = match head.last {
            Some((node, seq)) => self.record_acked(info, node, seq).await,
            None => Ok(()),
        };
        pushed.and(sealed).and(dropped).and(recorded)
    }

    /// The outbox's next batch after sequence `after`, sealing markers
    /// until it is full or nothing is left to seal.
    ///
    /// What the sealer just sealed is taken as it made it, not read back
    /// from the outbox, where it comes right after the batch's last change
    /// (see [`Sealer::take_after`]). The outbox is read where it may hold
    /// changes the sealer did not make: at the start of a batch, and
    /// after a seal whose changes do not come right after.
    async fn next_batch(
        &self,
        after: u64,
        sealer: &mut Sealer<'_>,
    ) -> Result<(Vec<Change>, Option<Unreadable>)> {
        let limit = usize::try_from(self.batch).unwrap_or(usize::MAX);
        let mut batch: Vec<Change> = Vec::new();
        let mut bad = None;
        let mut bytes = 0;
        // Whether every change of the outbox after the batch's last one is
        // known to be one the sealer kept: the outbox was read since the
        // last seal, or the sealer's changes came right after.
        let mut known = false;
        while bad.is_none() && batch.len() < limit && bytes <= BATCH_BYTES {
            let from = batch.last().map_or(after, |c| c.id.seq);
            let want = limit - batch.len();
            let taken = sealer.take_after(from, want, BATCH_BYTES - bytes);
            if !taken.is_empty() {
                bytes += batch_bytes(&taken);
                batch.extend(taken);
                known = true;
                continue;
            }
            if !known {
                let (more, unreadable) = self
                    .replica
                    .outbox_batch(from, want as u64, BATCH_BYTES - bytes)
                    .await?;
                known = true;
                bad = unreadable;
                if !more.is_empty() || bad.is_some() {
                    bytes += batch_bytes(&more);
                    batch.extend(more);
                    continue;
                }
            }
            if sealer.finished() || sealer.seal(want).await? == 0 {
                break;
            }
            known = false;
        }
        Ok((batch, bad))
    }

    /// Push batch after batch until the outbox is empty or the stream
    /// halts; the next batch is read from the outbox while the hub works on
    /// the current one.
    async fn push_batches(
        &self,
        report: &mut SyncReport,
        head: &mut AckedHead,
        sealer: &mut Sealer<'_>,
    ) -> Result<()> {
        // Every change up to `after` is acknowledged or parked.
        let mut after = 0;
        let mut ahead = None;
        loop {
            let (batch, unreadable) = match ahead.take() {
                Some(read) => read?,
                None => self.next_batch(after, sealer).await?,
            };
            let empty = batch.is_empty();
            if let Some(last) = batch.last().map(|c| c.id.seq) {
                // The hub works on this batch while the next one is read
                // from the outbox: when everything is acknowledged (the
                // usual case) the next batch starts right after this one.
                let sending = Prefetch::spawn({
                    let hub = Arc::clone(&self.hub);
                    async move {
                        let ack = hub.push(&batch).await;
                        (batch, ack)
                    }
                });
                if unreadable.is_none() {
                    ahead = Some(self.next_batch(last, sealer).await);
                }
                let (batch, ack) = sending.get().await;
                let ack = ack.map_err(Error::or_offline)?;
                match self.settle(&batch, ack, head, report).await? {
                    AckOutcome::Halted => return Ok(()),
                    AckOutcome::Resolved => ahead = None,
                    AckOutcome::Renewed => {
                        // Everything after the acknowledged head again,
                        // under the new id.
                        ahead = None;
                        after = head.through.unwrap_or(0);
                        continue;
                    }
                    AckOutcome::Continue => {}
                }
                after = last;
            }
            let Some(bad) = unreadable else {
                if empty {
                    return Ok(());
                }
                continue;
            };
            // A change of our own outbox that cannot be read back.
            if self.policy == RejectPolicy::Park {
                self.replica.park_outbox(&bad).await?;
                // A copy of it kept from the seal is not sent either.
                sealer.forget_kept();
                report.local_errors.push(Error::Corrupt(bad.reason));
            } else {
                report.halted = Some(Rejection {
                    id: ChangeId {
                        origin: self.replica.node_id(),
                        seq: bad.position.0,
                    },
                    table: bad.table,
                    reason: bad.reason,
                });
                return Ok(());
            }
        }
    }

    /// Take in the hub's answer to a batch: drop what it acknowledged,
    /// report what it parked or settled, record the conflicts it held (and
    /// settle those a resolver decides).
    async fn settle(
        &self,
        batch: &[Change],
        mut ack: PushAck,
        head: &mut AckedHead,
        report: &mut SyncReport,
    ) -> Result<AckOutcome> {
        let clashed = ack.clashed.take();
        // The conflicts first: once a change counts as acknowledged it may
        // be dropped (even if this call then fails); the hub gives them
        // again only if the change is pushed again.
        let mut resolved = false;
        if !ack.conflicts.is_empty() {
            let ids = self.replica.record_conflicts(&ack.conflicts).await?;
            // One decision per stored conflict, on the conflict as stored:
            // two conflicts of one column in an answer (two edits of it in
            // the batch) are one, which holds the later edit.
            let mut once = std::collections::HashSet::new();
            let mut stored = Vec::new();
            for id in ids {
                if once.insert(id) {
                    stored.push((id, self.replica.held(id).await?.conflict));
                }
            }
            for (id, c) in stored {
                let decided = self
                    .replica
                    .resolver_for(&c.table)
                    .and_then(|r| r.resolve(&c));
                match decided {
                    Some(resolution) => {
                        // A new change: the loop pushes it next
                        // (the batch read ahead may predate it).
                        self.replica.resolve(id, resolution).await?;
                        report.resolved += 1;
                        resolved = true;
                    }
                    None => report.conflicts.push(c),
                }
            }
        }
        let acked: Vec<u64> = ack.acknowledged.iter().map(|id| id.seq).collect();
        let prefix =
            acked.len() <= batch.len() && acked.iter().zip(batch).all(|(a, c)| *a == c.id.seq);
        match acked.last() {
            // The batch is the head of the outbox: drop it by range,
            // later.
            Some(last) if prefix => {
                head.through = Some(*last);
                head.unflushed += acked.len();
                if head.unflushed >= ACK_EVERY {
                    self.replica.acknowledge_through(*last).await?;
                    head.unflushed = 0;
                }
            }
            _ => self.replica.acknowledge(&acked).await?,
        }
        if let Some(last) = ack
            .acknowledged
            .iter()
            .map(|id| (id.origin, id.seq))
            .max_by_key(|(_, s)| *s)
        {
            head.last = Some(last);
        }
        report.pushed += acked.len();
        self.progress.pushed.store(report.pushed, Ordering::Relaxed);
        report.rejected.extend(ack.parked);
        report.settled.extend(ack.settled);
        if let Some(h) = ack.halted {
            report.halted = Some(h);
            report.wrong_clock = ack
                .clock_ahead
                .map(|c| super::WrongClock::of(c, crate::model::clock::wall_clock_us()));
            return Ok(AckOutcome::Halted);
        }
        if let Some(clash) = clashed {
            // The changes before it were acknowledged, the rest neither
            // applied nor acknowledged: drop the acknowledged ones now,
            // then the rest goes out under a new id.
            if let Some(through) = head.through {
                self.replica.acknowledge_through(through).await?;
                head.unflushed = 0;
            }
            let old = batch
                .first()
                .map_or(self.replica.node_id(), |c| c.id.origin);
            self.renew(old, super::RenewalCause::Clash(clash), report)
                .await?;
            return Ok(AckOutcome::Renewed);
        }
        if acked.len() < batch.len() {
            return Err(Error::Corrupt(format!(
                "the hub acknowledged {} of {} changes without halting",
                acked.len(),
                batch.len()
            )));
        }
        Ok(if resolved {
            AckOutcome::Resolved
        } else {
            AckOutcome::Continue
        })
    }
}
