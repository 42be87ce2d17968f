//! The node's sequence and clock, as a transaction that writes changes
//! holds them: loaded under the capture lock, advanced change by change,
//! saved where they moved.

use sea_orm::{DatabaseTransaction, Value};

use super::entity::Marker;
use super::outbox::{batch_bytes, change_bytes};
use super::tables::LOCAL_META;
use crate::model::change::{Change, ChangeId, ColumnBase, Op, TableSpec};
use crate::model::clock::{Hlc, HlcClock, NodeId};
use crate::model::error::{Error, Result};
use crate::model::merge::RowState;
use crate::store::stats::custom_plans;

/// About how many bytes of values a capture transaction keeps for the push
/// (see [`SealState::keep`]): one batch's worth.
const KEPT_BYTES: usize = crate::replica::outbox::BATCH_BYTES;

/// Clock and sequence state of a capture transaction.
pub(crate) struct SealState {
    pub(crate) node: NodeId,
    pub(crate) clock: HlcClock,
    pub(crate) next_seq: u64,
    /// The latest clock of a pulled change (see [`SealState::saw`]).
    pub(crate) seen: Option<Hlc>,
    /// The changes sealed in this transaction, in order, when its caller
    /// keeps them (the push sends them without reading the outbox back).
    pub(crate) kept: Option<Vec<Change>>,
    /// About how many bytes of values `kept` holds.
    kept_bytes: usize,
    /// Sequence, clock and latest pulled clock as loaded.
    loaded: (u64, Hlc, Option<Hlc>),
}

impl SealState {
    /// Take the capture lock (a row lock on PostgreSQL/MySQL, the write lock
    /// on SQLite) and load clock and sequence.
    pub(crate) async fn lock_and_load(tx: &DatabaseTransaction) -> Result<Self> {
        Self::lock(tx).await?;
        Self::load(tx).await
    }

    /// Take the capture lock only: a locking read, which on MySQL
    /// (REPEATABLE READ) does not take the transaction's snapshot. A
    /// transaction that must lock more rows before it reads anything (so
    /// that its snapshot holds the writes it waited for) locks them next,
    /// then calls [`SealState::load`].
    pub(crate) async fn lock(tx: &DatabaseTransaction) -> Result<()> {
        LOCAL_META.lock(tx, "next_seq").await
    }

    /// Load node id, clock and sequence, under the capture lock. The node id
    /// is read here, not taken from memory: another process on the same
    /// database may have renewed it (see `Replica::renew_identity`).
    pub(crate) async fn load(tx: &DatabaseTransaction) -> Result<Self> {
        custom_plans(tx).await?;
        let mut meta = LOCAL_META
            .read_many(tx, &["next_seq", "hlc", "node_id", "seen"])
            .await?;
        let node: NodeId = meta
            .remove("node_id")
            .ok_or_else(|| Error::Corrupt("node_id missing".into()))?
            .parse()?;
        let next_seq = meta
            .remove("next_seq")
            .ok_or_else(|| Error::Corrupt("next_seq missing".into()))?;
        let next_seq = next_seq
            .parse()
            .map_err(|_| Error::Corrupt(format!("next_seq `{next_seq}` is not a number")))?;
        let last = match meta.remove("hlc") {
            Some(s) if !s.is_empty() => Some(s.parse()?),
            _ => None,
        };
        let clock = HlcClock::new(node, last);
        let seen = match meta.remove("seen") {
            Some(s) if !s.is_empty() => Some(s.parse()?),
            _ => None,
        };
        Ok(SealState {
            node,
            loaded: (next_seq, clock.last(), seen),
            clock,
            next_seq,
            seen,
            kept: None,
            kept_bytes: 0,
        })
    }

    /// Remember `remote`, the clock of a pulled change, if it is the latest
    /// so far. The hybrid clock observes it too, but a clock running ahead
    /// (a wrong wall clock) hides it: stamping its changes again once the
    /// clock is right must still order them after every change it pulled
    /// (see `restamp`), or a pulled write they beat here would beat them
    /// everywhere else.
    pub(crate) fn saw(&mut self, remote: Hlc) {
        self.seen = Ord::max(self.seen, Some(remote));
    }

    /// Keep a copy of `change`, just sealed, if the caller keeps changes and
    /// the transaction kept fewer than [`KEPT_BYTES`] of values so far.
    /// Past that bound the rest is not kept (the push reads it from the
    /// outbox): a seal of 500 large rows holds one batch's worth in memory,
    /// not 500 rows' until the push takes them.
    pub(crate) fn keep(&mut self, change: &Change) {
        let Some(kept) = &mut self.kept else {
            return;
        };
        if self.kept_bytes > KEPT_BYTES {
            return;
        }
        self.kept_bytes += change_bytes(change);
        kept.push(change.clone());
    }

    /// Forget the changes kept from `len` on (a savepoint rolled back).
    pub(crate) fn unkeep(&mut self, len: usize) {
        if let Some(kept) = &mut self.kept {
            kept.truncate(len);
            self.kept_bytes = batch_bytes(kept);
        }
    }

    /// The id and clock of this node's next change, written at `wall_us`.
    pub(crate) fn next(&mut self, wall_us: u64) -> (ChangeId, Hlc) {
        let hlc = self.clock.tick(wall_us);
        let id = ChangeId {
            origin: self.node,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        (id, hlc)
    }

    /// The id of this node's next change, for a change that keeps a clock
    /// it already had (see `resend`).
    pub(crate) fn next_id(&mut self) -> ChangeId {
        let id = ChangeId {
            origin: self.node,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        id
    }

    /// The change that a marker's row made: `columns` set by `op`, with the
    /// base of each column (its value and clock in `shadow`) where the
    /// table's policy detects conflicts.
    pub(crate) fn change(
        &mut self,
        spec: &TableSpec,
        marker: &Marker,
        op: Op,
        columns: Vec<(String, Value)>,
        shadow: Option<&RowState>,
    ) -> Change {
        let base = if spec.policy.needs_base() {
            columns
                .iter()
                .map(|(c, _)| ColumnBase {
                    column: c.clone(),
                    value: shadow
                        .filter(|s| s.is_live())
                        .and_then(|s| s.vals.get(c).cloned()),
                    clock: shadow.and_then(|s| s.clocks.get(c).copied()),
                })
                .collect()
        } else {
            Vec::new()
        };
        let (id, hlc) = self.next(u64::try_from(marker.wall_us).unwrap_or(0));
        Change {
            id,
            table: spec.name.clone(),
            pk: spec
                .pk_names()
                .into_iter()
                .zip(marker.pk.iter().cloned())
                .collect(),
            op,
            columns,
            hlc,
            base,
        }
    }

    /// Persist sequence and clock, where they moved.
    pub(crate) async fn save(&self, tx: &DatabaseTransaction) -> Result<()> {
        self.save_with(tx, &[]).await
    }

    /// Persist sequence and clock where they moved, and `more` metadata,
    /// in one statement.
    pub(crate) async fn save_with(
        &self,
        tx: &DatabaseTransaction,
        more: &[(&str, &str)],
    ) -> Result<()> {
        let next_seq = self.next_seq.to_string();
        let hlc = self.clock.last().to_string();
        let seen = self.seen.map(|h| h.to_string());
        let mut values = more.to_vec();
        if self.next_seq != self.loaded.0 {
            values.push(("next_seq", &next_seq));
        }
        if self.clock.last() != self.loaded.1 {
            values.push(("hlc", &hlc));
        }
        if let Some(seen) = seen.as_deref().filter(|_| self.seen != self.loaded.2) {
            values.push(("seen", seen));
        }
        LOCAL_META.upsert_many(tx, &values).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::sized_change as change;

    fn state(keeping: bool) -> SealState {
        let node = NodeId([3; 16]);
        SealState {
            node,
            clock: HlcClock::new(node, None),
            next_seq: 1,
            seen: None,
            kept: keeping.then(Vec::new),
            kept_bytes: 0,
            loaded: (1, Hlc::default(), None),
        }
    }

    fn seqs(s: &SealState) -> Vec<u64> {
        s.kept.iter().flatten().map(|c| c.id.seq).collect()
    }

    /// A transaction keeps about one batch's worth of values: the change
    /// that passes the bound is the last kept.
    #[test]
    fn changes_are_kept_up_to_a_batchs_bytes() {
        let mut s = state(true);
        let big = KEPT_BYTES / 2;
        for seq in 1..=4 {
            s.keep(&change(seq, big));
        }
        assert_eq!(seqs(&s), [1, 2, 3]);
        s.unkeep(1);
        assert_eq!(seqs(&s), [1]);
        s.keep(&change(5, 10));
        assert_eq!(seqs(&s), [1, 5], "room again once rolled back");
        let mut off = state(false);
        off.keep(&change(1, 10));
        off.unkeep(0);
        assert!(off.kept.is_none(), "nothing kept unless the caller keeps");
    }
}
