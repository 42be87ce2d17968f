//! The node's sequence and clock, as a transaction that writes changes
//! holds them: loaded under the capture lock, advanced change by change,
//! saved where they moved.

use sea_orm::{DatabaseTransaction, Value};

use super::entity::Marker;
use super::tables::LOCAL_META;
use crate::model::change::{Change, ChangeId, ColumnBase, Op, TableSpec};
use crate::model::clock::{Hlc, HlcClock, NodeId};
use crate::model::error::{Error, Result};
use crate::model::merge::RowState;
use crate::store::stats::custom_plans;

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
