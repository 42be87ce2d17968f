//! The boundary between a replica and a hub: the [`Hub`] trait and the
//! messages they exchange. Pure types: the sync engine is written against
//! the trait, and the SQL hub (layer 4) is one implementation of it.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use sea_orm::Value;

use crate::model::change::{Change, ChangeId, Op, TableSpec};
use crate::model::clock::Hlc;
use crate::model::error::Result;
use crate::model::merge::RowState;

/// A position in the hub's change log: a pull returns the changes after it.
/// Cursors are gap-free: a change that commits late is never skipped.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Cursor(pub u64);

/// What a hub says about itself when a replica installs against it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubInfo {
    /// Stable identity of the hub (created on first install); a replica
    /// keeps one pull cursor per hub.
    pub hub_id: String,
}

/// Why the hub refused a change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    /// The refused change.
    pub id: ChangeId,
    /// Table of the change.
    pub table: String,
    /// The reason, naming table, column and value where there is one.
    pub reason: String,
}

/// The hub's answer to a push.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PushAck {
    /// Changes of the batch the hub now holds (applied now or before, or
    /// parked as rejected): the replica can drop them from its outbox.
    pub acknowledged: Vec<ChangeId>,
    /// Changes parked in the hub's rejected-changes table (policy `Park`);
    /// also acknowledged.
    pub parked: Vec<Rejection>,
    /// With policy `Halt`: the change that stopped this origin's stream. It
    /// and every later change of the batch stay with the replica.
    pub halted: Option<Rejection>,
    /// Concurrent edits of the same column held back (policies `manual` and
    /// custom): the rest of each change was applied; these columns wait for
    /// the pushing replica to resolve them.
    pub conflicts: Vec<crate::model::conflict::ColumnConflict>,
    /// Concurrent edits settled by the clock (policy `merge`).
    pub settled: Vec<crate::model::conflict::ColumnConflict>,
    /// A change of the batch sent under an id the hub already holds with
    /// other content: another device used this origin id (a copy of the
    /// device, or the device before it was restored from a backup). The
    /// hub acknowledged the changes before it (each the change it holds
    /// under its id) and applied nothing; the replica must take a new
    /// identity and push the rest again (`SyncEngine` does).
    pub clashed: Option<Rejection>,
    /// With `halted`, when the change halted for a stamp too far ahead of
    /// the hub's clock: the numbers, so the device can tell whether its
    /// clock is still wrong or was wrong when it made the change.
    pub clock_ahead: Option<ClockAhead>,
}

/// A change refused for a stamp too far ahead of the hub's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockAhead {
    /// The refused change.
    pub id: ChangeId,
    /// Its stamp, in microseconds since the Unix epoch.
    pub stamped_us: u64,
    /// The hub's clock when it refused it.
    pub hub_now_us: u64,
    /// How far ahead of the hub's clock a stamp may be.
    pub max_skew_us: u64,
}

/// Where an origin stands at a hub (see [`Hub::standing`]). Each field is
/// optional: what a hub does not say (`None`, as `Standing::default()`
/// has it) is not checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Standing {
    /// The origin's last sequence the hub holds (applied, or parked as
    /// rejected); `Some(0)` for an origin it never heard of.
    pub applied: Option<u64>,
    /// The hub's last log position: a replica's cursor is never beyond it.
    pub tip: Option<Cursor>,
    /// The id of the change logged at the position asked about, if there
    /// is one there (and the hub says).
    pub at: Option<ChangeId>,
}

/// A page of changes after a cursor (see [`Hub::pull`]: a hub that keeps
/// row states sends each row as the changes its state is made of).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PullBatch {
    /// Changes after the requested cursor, in hub order.
    pub changes: Vec<Change>,
    /// Where the next pull starts: after the last change in `changes`, or
    /// further when changes were left out ([`Hub::pull_excluding`]).
    pub next: Cursor,
    /// The id of the change logged at `next`, if the hub says: the replica
    /// keeps it with its cursor, and [`Hub::standing`] tells later whether
    /// the hub still logs that change there (a hub restored from an older
    /// backup logs others there).
    pub next_id: Option<ChangeId>,
    /// A log entry that could not be read (malformed payload), right after
    /// `changes`: the page stops there and the replica halts or parks it.
    pub unreadable: Option<Unreadable>,
}

/// A page of the rows changed after a cursor, each at its latest state
/// (see [`Hub::pull_states`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatePage {
    /// The rows changed after the requested cursor, each once, with its
    /// values and per-column clocks as the hub holds them now, in the
    /// order of their latest changes.
    pub rows: Vec<SnapshotRow>,
    /// Where the next pull starts: the position of the last row in `rows`,
    /// or further when rows were left out (the puller's own, other users').
    pub next: Cursor,
    /// The id of the change logged at `next`, if the hub says (see
    /// [`PullBatch::next_id`]).
    pub next_id: Option<ChangeId>,
    /// A row that could not be read, right after `rows`: the page stops
    /// there and the replica halts or parks it.
    pub unreadable: Option<Unreadable>,
}

impl From<PullBatch> for StatePage {
    /// A page of changes as a page of states: each change as the state of
    /// its row that it alone makes (merging them is merging the changes).
    fn from(batch: PullBatch) -> Self {
        StatePage {
            rows: batch
                .changes
                .into_iter()
                .map(|mut c| SnapshotRow {
                    table: std::mem::take(&mut c.table),
                    pk: std::mem::take(&mut c.pk),
                    state: RowState::of_change(c),
                })
                .collect(),
            next: batch.next,
            next_id: batch.next_id,
            unreadable: batch.unreadable,
        }
    }
}

/// The origin of the changes a hub makes of row states (see
/// `From<StatePage> for PullBatch`): a node no device has (node ids are
/// random; this one is all ones).
pub const STATE_ORIGIN: crate::model::clock::NodeId = crate::model::clock::NodeId([0xff; 16]);

impl From<StatePage> for PullBatch {
    /// A page of states as a page of changes, for a client that pulls
    /// changes ([`Hub::pull`]): each row as one change per distinct clock
    /// in its state, oldest first (a delete for its delete clock, the
    /// columns of each other clock), so that merging them makes the
    /// state. A hub keeps states, not the changes that made them: each
    /// change takes the id [`STATE_ORIGIN`]`:0`. Not the node of its
    /// clock: a client that leaves out changes of its own node would leave
    /// out a copy's changes stamped under the node they shared.
    fn from(page: StatePage) -> Self {
        type Columns = Vec<(String, Value)>;
        let mut changes = Vec::with_capacity(page.rows.len());
        for row in page.rows {
            let mut by_clock: BTreeMap<Hlc, Columns> = BTreeMap::new();
            let mut state = row.state;
            for (column, hlc) in &state.clocks {
                if let Some(v) = state.vals.remove(column) {
                    by_clock.entry(*hlc).or_default().push((column.clone(), v));
                }
            }
            let mut clocks: Vec<(Hlc, Option<Columns>)> =
                by_clock.into_iter().map(|(h, c)| (h, Some(c))).collect();
            if let Some(d) = state.deleted_at {
                clocks.push((d, None));
            }
            // A delete wins over a write stamped alike: it comes after it.
            clocks.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.is_none().cmp(&b.1.is_none())));
            let mut live = false;
            for (hlc, columns) in clocks {
                let id = ChangeId {
                    origin: STATE_ORIGIN,
                    seq: 0,
                };
                let (op, columns) = match columns {
                    None => {
                        live = false;
                        (Op::Delete, Vec::new())
                    }
                    Some(c) => (if live { Op::Update } else { Op::Insert }, c),
                };
                live |= op == Op::Insert;
                changes.push(Change {
                    id,
                    table: row.table.clone(),
                    pk: row.pk.clone(),
                    op,
                    columns,
                    hlc,
                    base: Vec::new(),
                });
            }
        }
        PullBatch {
            changes,
            next: page.next,
            next_id: page.next_id,
            unreadable: page.unreadable,
        }
    }
}

/// A change that cannot be read back (malformed typed JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unreadable {
    /// Its position: in the hub log (hub sequence) or the outbox (origin
    /// sequence).
    pub position: Cursor,
    /// Its table, if that much could be read.
    pub table: String,
    /// The stored text, kept when it is parked.
    pub raw: String,
    /// What is wrong with it.
    pub reason: String,
}

/// What to do with a change that cannot be applied (a constraint
/// violation, an unknown table or column, a value the dialect cannot hold,
/// a malformed payload). The hub applies it to pushed changes; a
/// `SyncEngine` to its own outbox and to pulled changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectPolicy {
    /// Stop that stream at the change, keeping its order: the change and the
    /// ones after it wait until the cause is fixed. The default.
    #[default]
    Halt,
    /// Park the change with its reason (`_tidesync_rejected` on a hub,
    /// `_tidesync_parked` on a replica) and go on.
    Park,
}

/// One row of a hub snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRow {
    /// Table name.
    pub table: String,
    /// Primary key, column by column.
    pub pk: Vec<(String, sea_orm::Value)>,
    /// Replicated state (values and clocks).
    pub state: RowState,
}

/// A page of the hub's current rows, for bootstrapping an empty replica.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotPage {
    /// Rows in (table, key) order.
    pub rows: Vec<SnapshotRow>,
    /// Where the next page starts; `None` when this was the last.
    pub next: Option<String>,
}

/// A hub: where replicas meet.
///
/// Five required methods; the engine builds everything else on them.
/// [`Hub::pull_excluding`] has a default that a hub may improve on.
#[async_trait::async_trait]
pub trait Hub: Send + Sync {
    /// Prepare the hub for these tables (idempotent), in parent-before-child
    /// order.
    async fn install(&self, tables: &[TableSpec]) -> Result<HubInfo>;

    /// Apply a batch of one origin's changes, in its order, at most once
    /// each.
    async fn push(&self, batch: &[Change]) -> Result<PushAck>;

    /// Where `origin` stands at this hub: the last of its sequences the hub
    /// holds, and the hub's tip. A replica asks before each sync: a hub
    /// holding more of its sequences than it ever numbered means another
    /// device used its identity, or it was restored from an older backup;
    /// a tip below its cursor, or fewer of its changes than the hub once
    /// acknowledged, means the hub was restored from an older backup.
    /// With `at` (the replica's cursor), also the id of the change logged
    /// there, to compare with the one [`PullBatch::next_id`] named.
    async fn standing(
        &self,
        origin: crate::model::clock::NodeId,
        at: Option<Cursor>,
    ) -> Result<Standing>;

    /// The changes after `cursor`, in hub order, up to `limit` of them.
    ///
    /// `SqlHub` keeps row states, not changes (since hub schema version
    /// 5): it sends the rows changed after `cursor`, up to `limit` rows,
    /// each as the changes its state is made of (see
    /// `From<StatePage> for PullBatch`), under ids of [`STATE_ORIGIN`].
    /// Merging them makes the states; they are not the changes devices
    /// pushed, and their ids are not unique.
    async fn pull(&self, cursor: Cursor, limit: u64) -> Result<PullBatch>;

    /// Like [`Hub::pull`], but without the changes made by `origin`
    /// (a replica does not need its own changes back). `next` still moves
    /// past the changes left out, so a replica that only pushed reads
    /// nothing and its cursor catches up with the hub's tip.
    ///
    /// The default pulls everything and filters; a hub that can filter
    /// where it stores the log should, so that a replica does not download
    /// what it has just uploaded. A wrapper around another hub (for
    /// metrics, say) should forward this method as well, or it falls back
    /// to the default.
    async fn pull_excluding(
        &self,
        cursor: Cursor,
        limit: u64,
        origin: crate::model::clock::NodeId,
    ) -> Result<PullBatch> {
        let mut batch = self.pull(cursor, limit).await?;
        batch.changes.retain(|c| c.id.origin != origin);
        Ok(batch)
    }

    /// The rows changed after `cursor` (each once, at its latest state, in
    /// the order of their latest changes), up to `limit` of them, leaving
    /// out those whose every column `origin`'s own pushes set (a replica
    /// has its own writes; the pushing origin, not the node of the clocks,
    /// as a device that took a new identity pushes clocks of its old one).
    /// `next` moves past the rows left out, as in
    /// [`Hub::pull_excluding`].
    ///
    /// A row changed many times after the cursor comes once: a replica far
    /// behind reads each row once instead of every change. The default
    /// pulls the changes ([`Hub::pull_excluding`]) and sends each as the
    /// state it makes; `SqlHub` reads its version rows. A wrapper around
    /// another hub should forward this method (and
    /// [`Hub::pull_excluding`]).
    async fn pull_states(
        &self,
        cursor: Cursor,
        limit: u64,
        origin: crate::model::clock::NodeId,
    ) -> Result<StatePage> {
        Ok(self.pull_excluding(cursor, limit, origin).await?.into())
    }

    /// The hub's cursor now, then its rows page by page (`after` is the
    /// previous page's `next`): a new replica loads the rows and pulls from
    /// the cursor. Rows newer than the cursor are merged again from the log,
    /// which is harmless because merging is idempotent.
    ///
    /// A page's `next` must stay valid across restarts and for any `limit`:
    /// the engine stores it with the rows it applied and resumes an
    /// interrupted bootstrap after it, maybe in another process, days later.
    /// Make it a key of a stable row order (as `SqlHub` does), not an
    /// offset or a server-side cursor. A snapshot whose cursor is below the
    /// one a resumed bootstrap started at (the hub went back in time) makes
    /// the engine start the snapshot over.
    async fn snapshot(&self, after: Option<String>, limit: u64) -> Result<(Cursor, SnapshotPage)>;

    /// [`Hub::snapshot`], leaving out the rows whose every column
    /// `origin`'s own pushes set, as [`Hub::pull_states`] does: a replica
    /// that pushed its rows before its first pull (the first sync of an
    /// existing database) has them, at those states. The engine asks for
    /// it only when the hub said, in [`Hub::standing`], how far it applied
    /// the replica's changes: a database restored from a backup is then
    /// found (it takes a new id first), where without it the rows its id
    /// pushed before the restore would be left out. A page's `next` is
    /// valid for either method. The default sends every row (merging a
    /// replica's own state again changes nothing); `SqlHub` leaves them
    /// out as it reads. A wrapper around another hub should forward this
    /// method.
    async fn snapshot_excluding(
        &self,
        after: Option<String>,
        limit: u64,
        origin: crate::model::clock::NodeId,
    ) -> Result<(Cursor, SnapshotPage)> {
        let _ = origin;
        self.snapshot(after, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::clock::NodeId;

    fn at(physical: u64, node: u8) -> Hlc {
        Hlc {
            physical,
            logical: 0,
            node: NodeId([node; 16]),
        }
    }

    fn row(state: RowState) -> SnapshotRow {
        SnapshotRow {
            table: "t".into(),
            pk: vec![("id".into(), Value::from(1i64))],
            state,
        }
    }

    fn state(cols: &[(&str, &str, Hlc)], deleted_at: Option<Hlc>) -> RowState {
        RowState {
            vals: cols
                .iter()
                .map(|(c, v, _)| ((*c).to_owned(), Value::from(*v)))
                .collect(),
            clocks: cols.iter().map(|(c, _, h)| ((*c).to_owned(), *h)).collect(),
            deleted_at,
        }
    }

    /// The changes of a page, folded back into states, make the page's
    /// states; ops and ids as `From<StatePage>` says.
    #[test]
    fn states_as_changes_merge_back_into_the_states() {
        let cases = [
            // Two clocks, no delete.
            (
                state(
                    &[
                        ("a", "1", at(5, 1)),
                        ("b", "2", at(9, 2)),
                        ("c", "3", at(5, 1)),
                    ],
                    None,
                ),
                vec![(Op::Insert, 5, 2), (Op::Update, 9, 1)],
            ),
            // Deleted after its writes.
            (
                state(&[("a", "1", at(5, 1))], Some(at(7, 3))),
                vec![(Op::Insert, 5, 1), (Op::Delete, 7, 0)],
            ),
            // Written again after a delete.
            (
                state(
                    &[("a", "1", at(5, 1)), ("b", "2", at(8, 1))],
                    Some(at(6, 3)),
                ),
                vec![(Op::Insert, 5, 1), (Op::Delete, 6, 0), (Op::Insert, 8, 1)],
            ),
            // A delete stamped like a write wins: it comes last.
            (
                state(&[("a", "1", at(6, 3))], Some(at(6, 3))),
                vec![(Op::Insert, 6, 1), (Op::Delete, 6, 0)],
            ),
            // Only a delete.
            (state(&[], Some(at(4, 2))), vec![(Op::Delete, 4, 0)]),
        ];
        for (s, expected) in cases {
            let page = StatePage {
                rows: vec![row(s.clone())],
                next: Cursor(3),
                next_id: None,
                unreadable: None,
            };
            let batch = PullBatch::from(page);
            assert_eq!(batch.next, Cursor(3));
            let shape: Vec<(Op, u64, usize)> = batch
                .changes
                .iter()
                .map(|c| (c.op, c.hlc.physical, c.columns.len()))
                .collect();
            assert_eq!(shape, expected, "{s:?}");
            let mut folded = RowState::default();
            for c in batch.changes {
                assert_eq!(
                    c.id,
                    ChangeId {
                        origin: STATE_ORIGIN,
                        seq: 0
                    }
                );
                assert_eq!((c.table.as_str(), c.pk.len()), ("t", 1));
                folded.merge(&RowState::of_change(c));
            }
            assert_eq!(folded, s);
        }
    }
}
