//! Conflicts the hub held back, kept per change until its device has them
//! for sure: a device that pushes a change again (the answer was lost after
//! the hub committed) gets the same conflicts again, so the value of the
//! held column is never dropped with the change.
//!
//! A device pushes from the head of its outbox, and records the conflicts
//! of an answer before it drops the acknowledged changes. So when a push
//! starts after a change, the device has recorded that change's conflicts,
//! and the hub forgets them.

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{ConnectionTrait, DatabaseTransaction};

use super::tables::HELD;
use crate::model::change::ChangeId;
use crate::model::clock::NodeId;
use crate::model::conflict::ColumnConflict;
use crate::model::error::{Error, Result};
use crate::store::codec::{db_sequence, sequence};

/// Keep the conflicts each change raised.
pub(super) async fn keep(
    tx: &DatabaseTransaction,
    held: &[(ChangeId, Vec<ColumnConflict>)],
) -> Result<()> {
    for chunk in held.chunks(100) {
        let mut q = Query::insert();
        q.into_table(Alias::new(HELD))
            .columns(["origin", "origin_seq", "conflicts"].map(Alias::new));
        for (id, conflicts) in chunk {
            q.values([
                id.origin.to_string().into(),
                db_sequence(id.seq)?.into(),
                serde_json::to_string(conflicts)?.into(),
            ])
            .map_err(|e| Error::Corrupt(format!("held conflicts: {e}")))?;
        }
        tx.execute(&q).await?;
    }
    Ok(())
}

/// The conflicts these changes of `origin` raised when they were applied,
/// in their order.
pub(super) async fn of(
    tx: &DatabaseTransaction,
    origin: NodeId,
    seqs: &[u64],
) -> Result<Vec<ColumnConflict>> {
    Ok(by_seq(tx, origin, seqs)
        .await?
        .into_iter()
        .flat_map(|(_, c)| c)
        .collect())
}

/// The conflicts these changes of `origin` raised when they were applied,
/// change by change (by origin sequence), in their order.
pub(super) async fn by_seq(
    tx: &DatabaseTransaction,
    origin: NodeId,
    seqs: &[u64],
) -> Result<Vec<(u64, Vec<ColumnConflict>)>> {
    let mut out = Vec::new();
    for chunk in seqs.chunks(500) {
        let seqs = chunk
            .iter()
            .map(|s| db_sequence(*s))
            .collect::<Result<Vec<i64>>>()?;
        let rows = tx
            .query_all(
                &Query::select()
                    .columns(["origin_seq", "conflicts"].map(Alias::new))
                    .from(Alias::new(HELD))
                    .and_where(Expr::col(Alias::new("origin")).eq(origin.to_string()))
                    .and_where(Expr::col(Alias::new("origin_seq")).is_in(seqs))
                    .order_by(Alias::new("origin_seq"), sea_orm::Order::Asc)
                    .to_owned(),
            )
            .await?;
        for r in rows {
            let text: String = r.try_get("", "conflicts")?;
            let conflicts: Vec<ColumnConflict> = serde_json::from_str(&text)
                .map_err(|e| Error::Corrupt(format!("held conflicts of {origin}: {e}")))?;
            out.push((sequence(&r, "origin_seq")?, conflicts));
        }
    }
    Ok(out)
}

/// Forget the conflicts of `origin`'s changes before `seq`: its device
/// holds them.
pub(super) async fn forget_before(
    tx: &DatabaseTransaction,
    origin: NodeId,
    seq: u64,
) -> Result<()> {
    tx.execute(
        &Query::delete()
            .from_table(Alias::new(HELD))
            .and_where(Expr::col(Alias::new("origin")).eq(origin.to_string()))
            .and_where(Expr::col(Alias::new("origin_seq")).lt(db_sequence(seq)?))
            .to_owned(),
    )
    .await?;
    Ok(())
}
