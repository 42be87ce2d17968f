//! The outbox: captured changes waiting for a hub's acknowledgement, read
//! in sequence order, dropped once acknowledged, parked when unreadable.

use std::collections::VecDeque;

use sea_orm::sea_query::{Alias, Asterisk, Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, TransactionTrait};

use super::Replica;
use super::parked::{Parked, park};
use super::tables::{OUTBOX, dirty_table};
use crate::model::change::{Change, ChangeId};
use crate::model::error::{Error, Result};
use crate::model::protocol::Unreadable;
use crate::model::value::approx_size;
use crate::store::codec::{self, db_sequence, sequence};

/// About how many bytes of values one outbox batch holds at most.
pub(crate) const BATCH_BYTES: usize = 4 << 20;

/// About how many bytes of values `batch` holds.
pub(crate) fn batch_bytes(batch: &[Change]) -> usize {
    batch.iter().map(change_bytes).sum()
}

/// About how many bytes of values `change` holds.
pub(crate) fn change_bytes(change: &Change) -> usize {
    change.columns.iter().map(|(_, v)| approx_size(v)).sum()
}

/// Take from `kept` (changes in sequence order) those that come right
/// after sequence `after`, one sequence after another: up to `limit`, and
/// about `max_bytes` of values (at least one). Changes at or before
/// `after` are dropped; a gap ends what is taken (nothing, if it comes
/// first), and the rest stays.
pub(crate) fn take_next(
    kept: &mut VecDeque<Change>,
    after: u64,
    limit: usize,
    max_bytes: usize,
) -> Vec<Change> {
    while kept.front().is_some_and(|c| c.id.seq <= after) {
        kept.pop_front();
    }
    let mut out = Vec::new();
    let mut last = after;
    let mut bytes = 0usize;
    while out.len() < limit && bytes <= max_bytes {
        if kept.front().map(|c| c.id.seq) != last.checked_add(1) {
            break;
        }
        let Some(c) = kept.pop_front() else {
            break;
        };
        last = c.id.seq;
        bytes += change_bytes(&c);
        out.push(c);
    }
    out
}

impl Replica {
    /// Captured changes not yet acknowledged by a hub, oldest first.
    pub async fn pending(&self, limit: u64) -> Result<Vec<Change>> {
        let q = OUTBOX
            .select()
            .order_by(Alias::new("seq"), Order::Asc)
            .limit(Ord::min(limit, i64::MAX as u64))
            .to_owned();
        let rows = self.connection().query_all(&q).await?;
        rows.iter().map(|r| self.decode(r)).collect()
    }

    /// Number of writes not yet pushed: outbox changes plus dirty markers
    /// not yet captured.
    pub async fn pending_count(&self) -> Result<u64> {
        let mut n = self.count(OUTBOX.name).await?;
        for t in self.tables() {
            n += self.count(&dirty_table(&t.name)).await?;
        }
        Ok(n)
    }

    async fn count(&self, table: &str) -> Result<u64> {
        let q = Query::select()
            .expr_as(Expr::col(Asterisk).count(), Alias::new("n"))
            .from(Alias::new(table))
            .to_owned();
        let row = self
            .connection()
            .query_one(&q)
            .await?
            .ok_or_else(|| Error::Corrupt("COUNT returned no row".into()))?;
        let n: i64 = row.try_get("", "n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// An outbox row as the change it holds.
    fn decode(&self, r: &sea_orm::QueryResult) -> Result<Change> {
        let id = ChangeId {
            origin: self.node_id(),
            seq: sequence(r, "seq")?,
        };
        codec::decode(id, r)
    }

    /// The oldest captured changes after sequence `after`, up to `limit`
    /// and about `max_bytes` of values (at least one change), stopping
    /// before the first one that cannot be read back (returned apart).
    pub(crate) async fn outbox_batch(
        &self,
        after: u64,
        limit: u64,
        max_bytes: usize,
    ) -> Result<(Vec<Change>, Option<Unreadable>)> {
        let q = OUTBOX
            .select()
            .and_where(Expr::col(Alias::new("seq")).gt(db_sequence(after)?))
            .order_by(Alias::new("seq"), Order::Asc)
            .limit(limit)
            .to_owned();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for r in self.connection().query_all(&q).await? {
            match self.decode(&r) {
                Ok(c) => {
                    bytes += c.columns.iter().map(|(_, v)| approx_size(v)).sum::<usize>();
                    out.push(c);
                    if bytes > max_bytes {
                        break;
                    }
                }
                Err(e) => {
                    let seq = sequence(&r, "seq")?;
                    let reason = format!("outbox change {seq} is malformed: {e}");
                    return Ok((out, Some(codec::unreadable(&r, seq, reason))));
                }
            }
        }
        Ok((out, None))
    }

    /// Move an unreadable outbox change to `_tidesync_parked`.
    pub(crate) async fn park_outbox(&self, bad: &Unreadable) -> Result<()> {
        let tx = self.connection().begin().await?;
        let row = Parked {
            table: &bad.table,
            key: String::new(),
            origin: self.node_id().to_string(),
            seq: bad.position.0,
            payload: bad.raw.clone(),
            reason: &bad.reason,
        };
        park(&tx, &[row]).await?;
        let del = Query::delete()
            .from_table(Alias::new(OUTBOX.name))
            .and_where(Expr::col(Alias::new("seq")).eq(db_sequence(bad.position.0)?))
            .to_owned();
        tx.execute(&del).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drop the outbox's changes up to `seq`, when every one of them was
    /// acknowledged (the head of the outbox, read in order).
    pub(crate) async fn acknowledge_through(&self, seq: u64) -> Result<()> {
        let q = Query::delete()
            .from_table(Alias::new(OUTBOX.name))
            .and_where(Expr::col(Alias::new("seq")).lte(db_sequence(seq)?))
            .to_owned();
        self.connection().execute(&q).await?;
        Ok(())
    }

    /// Drop acknowledged changes from the outbox.
    pub(crate) async fn acknowledge(&self, seqs: &[u64]) -> Result<()> {
        for chunk in seqs.chunks(500) {
            let seqs = chunk
                .iter()
                .map(|s| db_sequence(*s))
                .collect::<Result<Vec<_>>>()?;
            let q = Query::delete()
                .from_table(Alias::new(OUTBOX.name))
                .and_where(Expr::col(Alias::new("seq")).is_in(seqs))
                .to_owned();
            self.connection().execute(&q).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::sized_change as change;

    fn seqs(changes: &[Change]) -> Vec<u64> {
        changes.iter().map(|c| c.id.seq).collect()
    }

    fn kept(seqs: &[u64]) -> VecDeque<Change> {
        seqs.iter().map(|s| change(*s, 10)).collect()
    }

    #[test]
    fn changes_right_after_are_taken_up_to_a_gap() {
        let mut k = kept(&[4, 5, 6, 8, 9]);
        assert_eq!(seqs(&take_next(&mut k, 3, 100, BATCH_BYTES)), [4, 5, 6]);
        // 7 is in the outbox only (another pass sealed it): nothing is
        // taken until it was read.
        assert!(take_next(&mut k, 6, 100, BATCH_BYTES).is_empty());
        assert_eq!(seqs(&take_next(&mut k, 7, 100, BATCH_BYTES)), [8, 9]);
        assert!(k.is_empty());
    }

    #[test]
    fn changes_read_already_are_dropped() {
        let mut k = kept(&[4, 5, 6]);
        assert_eq!(seqs(&take_next(&mut k, 5, 100, BATCH_BYTES)), [6]);
        let mut k = kept(&[4, 5]);
        assert!(take_next(&mut k, 9, 100, BATCH_BYTES).is_empty());
        assert!(k.is_empty());
    }

    #[test]
    fn a_gap_before_the_first_takes_nothing() {
        let mut k = kept(&[5, 6]);
        assert!(take_next(&mut k, 3, 100, BATCH_BYTES).is_empty());
        assert_eq!(k.len(), 2, "kept for after the outbox was read");
        assert!(take_next(&mut kept(&[1]), u64::MAX, 100, BATCH_BYTES).is_empty());
    }

    #[test]
    fn taking_stops_at_the_limit_and_past_the_bytes() {
        let mut k = kept(&[1, 2, 3, 4]);
        assert_eq!(seqs(&take_next(&mut k, 0, 2, BATCH_BYTES)), [1, 2]);
        assert_eq!(seqs(&take_next(&mut k, 2, 2, BATCH_BYTES)), [3, 4]);
        let mut k: VecDeque<Change> = (1..=4).map(|s| change(s, 100)).collect();
        // At least one, then until the bytes pass the bound.
        assert_eq!(seqs(&take_next(&mut k, 0, 10, 0)), [1]);
        assert_eq!(seqs(&take_next(&mut k, 1, 10, 150)), [2, 3]);
        assert_eq!(seqs(&take_next(&mut k, 3, 0, 150)), [] as [u64; 0]);
    }
}
