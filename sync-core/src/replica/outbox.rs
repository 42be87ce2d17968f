//! The outbox: captured changes waiting for a hub's acknowledgement, read
//! in sequence order, dropped once acknowledged, parked when unreadable.

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
    batch
        .iter()
        .flat_map(|c| &c.columns)
        .map(|(_, v)| approx_size(v))
        .sum()
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
