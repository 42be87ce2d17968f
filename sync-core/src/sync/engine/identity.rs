//! Device identity: finding, before a push, that another device used this
//! replica's node id, and taking a new one without losing either device's
//! changes.
//!
//! A node id names one stream of changes, numbered 1, 2, 3... A copy of the
//! replica's database (a phone restored from another's backup, a copied
//! SQLite file) goes on numbering from the same point as the original, and
//! a database restored from an older backup numbers new changes with
//! sequences the hub already applied. Left alone, the hub would take the
//! second change under an id as a re-send of the first and drop it, and
//! each copy would leave the other's changes out of its pulls (a replica
//! does not pull its own origin's changes).
//!
//! The engine finds it two ways: the hub holds more of the id's sequences
//! than this replica ever numbered ([`RenewalCause::HubAhead`], asked with
//! [`Hub::standing`](crate::hub::Hub::standing) before each push), or the
//! hub holds another change under the id of one it is sent again
//! ([`RenewalCause::Clash`], in the push's answer). Either way the replica
//! takes a new node id: its pending changes go out under it (a change the
//! hub already applied under the old id is merged again, which changes
//! nothing), and it loads the hub's rows again, which brings back the
//! changes made under the old id that it lacks. The device that keeps the
//! old id needs nothing: the renewed one's changes reach it as another
//! device's.

use super::{SyncEngine, SyncReport};
use crate::model::change::ChangeId;
use crate::model::clock::NodeId;
use crate::model::error::{Error, Result};
use crate::model::protocol::{Cursor, HubInfo, Rejection};

/// The replica's metadata keys of one hub.
pub(super) struct HubKeys {
    /// Where the next pull starts.
    pub(super) cursor: String,
    /// How far an interrupted bootstrap got.
    pub(super) bootstrap: String,
    /// The last change of this replica the hub acknowledged:
    /// `<node id> <sequence>`.
    pub(super) acked: String,
    /// The change the hub logged at the cursor when it was stored:
    /// `<cursor> <origin> <sequence>` (see [`mark`]).
    pub(super) mark: String,
}

impl HubKeys {
    pub(super) fn of(info: &HubInfo) -> HubKeys {
        HubKeys {
            cursor: format!("cursor:{}", info.hub_id),
            bootstrap: format!("bootstrap:{}", info.hub_id),
            acked: format!("acked:{}", info.hub_id),
            mark: format!("mark:{}", info.hub_id),
        }
    }
}

/// The change `id` the hub logs at `cursor`, as stored under
/// [`HubKeys::mark`].
pub(super) fn mark(cursor: Cursor, id: ChangeId) -> String {
    format!("{} {} {}", cursor.0, id.origin, id.seq)
}

/// A [`mark`] read back.
fn parse_mark(v: &str) -> Option<(u64, ChangeId)> {
    let mut parts = v.split(' ');
    let cursor = parts.next()?.parse().ok()?;
    let origin = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    Some((cursor, ChangeId { origin, seq }))
}

/// `<node id> <sequence>` as stored under [`HubKeys::acked`].
fn parse_acked(v: &str) -> Option<(NodeId, u64)> {
    let (node, seq) = v.split_once(' ')?;
    Some((node.parse().ok()?, seq.parse().ok()?))
}

/// A new node id this replica took during a sync: another device used
/// its id (a copied database, a restored backup), and the replica goes on
/// under a new one without losing either device's changes.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Renewal {
    /// The id another device used too.
    pub old: NodeId,
    /// The id the replica goes on with.
    pub new: NodeId,
    /// How the engine found out.
    pub cause: RenewalCause,
}

/// How the engine found that another device used this replica's node id.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum RenewalCause {
    /// The hub holds changes of this id up to `applied`, but this replica
    /// numbered its changes only up to `numbered`: it was restored from an
    /// older backup, or it is a copy whose twin pushed first.
    HubAhead {
        /// The id's last sequence the hub holds.
        applied: u64,
        /// The last sequence this replica numbered.
        numbered: u64,
    },
    /// The hub holds another change under the id of one this replica sent:
    /// a copy of this replica pushed its own change under that id first.
    Clash(Rejection),
}

impl std::fmt::Display for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "device {} is now {}: ", self.old, self.new)?;
        match &self.cause {
            RenewalCause::HubAhead { applied, numbered } => write!(
                f,
                "the hub holds its changes up to {applied} but it numbered only up to \
                 {numbered} (a copy of another device, or restored from an older backup)"
            ),
            RenewalCause::Clash(r) => write!(f, "{}", r.reason),
        }
    }
}

/// What the engine found and did when the hub held less than this replica
/// knew it held: the hub was restored from an older backup (see
/// [`SyncReport::hub_behind`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HubBehind {
    /// The hub's last log position now.
    pub tip: u64,
    /// How far this replica had pulled.
    pub cursor: Option<u64>,
    /// This replica's last change the hub holds now.
    pub applied: u64,
    /// This replica's last change the hub had acknowledged.
    pub acknowledged: Option<u64>,
    /// Changes queued again from this replica's row states.
    pub resent: usize,
}

impl std::fmt::Display for HubBehind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the hub went back (restored from an older backup?): its tip is {}, this replica had \
             pulled to {}; it holds this replica's changes up to {}, it had acknowledged {}; \
             {} changes were queued again from the row states and the hub's rows are loaded again",
            self.tip,
            self.cursor.map_or("-".to_owned(), |c| c.to_string()),
            self.applied,
            self.acknowledged.map_or("-".to_owned(), |a| a.to_string()),
            self.resent
        )
    }
}

/// How many times one sync may renew the node id. A second renewal in one
/// sync would mean a fresh random id clashed at once: something else is
/// wrong, and the sync stops with an error rather than loop.
const MAX_RENEWALS: usize = 1;

impl SyncEngine {
    /// Before a push: find whether the hub holds more of the node id's
    /// sequences than this replica numbered (returned: the caller pushes
    /// the outbox under the old id first, so that the hub acknowledges each
    /// change it holds as sent, then renews the id); send every row state again if
    /// the hub holds less than it did (its tip is below this replica's
    /// cursor, it logs another change at the cursor than it did, or it
    /// holds fewer of this replica's changes than it acknowledged).
    pub(super) async fn check_identity(
        &self,
        info: &HubInfo,
        report: &mut SyncReport,
    ) -> Result<Option<(NodeId, RenewalCause)>> {
        let (me, _) = self.replica.identity().await?;
        let keys = HubKeys::of(info);
        // Cursor, mark and acknowledged change in one read, before the hub
        // is asked: the hub's tip and what it applied only grow (unless it
        // went back), while another process on this database may move them
        // on meanwhile, past what the hub says.
        let mut stored = self
            .replica
            .metas(&[&keys.cursor, &keys.mark, &keys.acked])
            .await?;
        let cursor = match stored.remove(&keys.cursor) {
            Some(c) => Some(
                c.parse::<u64>()
                    .map_err(|_| Error::Corrupt(format!("cursor `{c}`")))?,
            ),
            None => None,
        };
        let marked = stored
            .remove(&keys.mark)
            .and_then(|v| parse_mark(&v))
            .filter(|(at, _)| Some(*at) == cursor)
            .map(|(_, id)| id);
        let acknowledged = stored
            .remove(&keys.acked)
            .and_then(|v| parse_acked(&v))
            .filter(|(node, _)| *node == me)
            .map(|(_, seq)| seq);
        let standing = self
            .hub
            .standing(me, cursor.map(Cursor))
            .await
            .map_err(Error::or_offline)?;
        self.standing_known.store(
            standing.applied.is_some(),
            std::sync::atomic::Ordering::Relaxed,
        );
        // What this replica numbered, read after the hub answered: another
        // process on this database may have captured and pushed meanwhile.
        let (now, numbered) = self.replica.identity().await?;
        if now != me {
            // And renewed the id: the next sync looks again.
            return Ok(None);
        }
        if let Some(applied) = standing.applied.filter(|a| *a > numbered) {
            let cause = RenewalCause::HubAhead { applied, numbered };
            return Ok(Some((me, cause)));
        }
        // Another change logged at the cursor than when it was stored: the
        // log was rewritten from there (even if its tip is past the cursor
        // again). What the hub does not say is not checked.
        let rewritten = matches!((marked, standing.at), (Some(m), Some(now)) if m != now);
        let behind = matches!((cursor, standing.tip), (Some(c), Some(t)) if c > t.0)
            || matches!((acknowledged, standing.applied), (Some(a), Some(h)) if a > h)
            || rewritten;
        if !behind {
            return Ok(None);
        }
        let forget = [
            keys.cursor.as_str(),
            keys.bootstrap.as_str(),
            keys.acked.as_str(),
            keys.mark.as_str(),
        ];
        let resent = self.replica.resend_states(&forget).await?;
        let found = HubBehind {
            tip: standing.tip.map_or(0, |t| t.0),
            cursor,
            applied: standing.applied.unwrap_or(0),
            acknowledged,
            resent,
        };
        tracing::warn!("hub {}: {found}", info.hub_id);
        report.hub_behind = Some(found);
        Ok(None)
    }

    /// Record that the hub acknowledged this replica's changes up to `seq`
    /// (of node `node`).
    pub(super) async fn record_acked(&self, info: &HubInfo, node: NodeId, seq: u64) -> Result<()> {
        self.replica
            .set_meta(&HubKeys::of(info).acked, &format!("{node} {seq}"))
            .await
    }

    /// Take a new node id because `old` was used by another device too, and
    /// report it.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when this sync renewed the id already.
    pub(super) async fn renew(
        &self,
        old: NodeId,
        cause: RenewalCause,
        report: &mut SyncReport,
    ) -> Result<()> {
        if report.renewed.len() >= MAX_RENEWALS {
            return Err(Error::Corrupt(format!(
                "device {old} clashed again at the hub after taking a new id in this sync: {cause:?}"
            )));
        }
        let new = self.replica.renew_identity(old).await?;
        let renewal = Renewal { old, new, cause };
        tracing::warn!("{renewal}");
        report.renewed.push(renewal);
        Ok(())
    }
}
