//! Conflicts the hub held back, kept per change: a device that pushes a
//! change again gets the same conflicts again, so the value of the held
//! column is never dropped with the change. It pushes again when the answer
//! was lost after the hub committed, or when it was restored from a backup
//! made before it pushed (then it lacks the conflicts it recorded since).
//! The device updates a conflict it holds already instead of recording it
//! twice.
//!
//! An earlier release forgot a change's conflicts once its device pushed
//! past it, keeping only the columns they held back (see [`Held`]).

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

/// The conflicts these changes of `origin` raised when they were applied
/// and the hub still holds for its device, in their order.
pub(super) async fn of(
    tx: &DatabaseTransaction,
    origin: NodeId,
    seqs: &[u64],
) -> Result<Vec<ColumnConflict>> {
    Ok(by_seq(tx, origin, seqs)
        .await?
        .into_iter()
        .flat_map(|(_, held)| match held {
            Held::Conflicts(c) => c,
            Held::Forgotten(_) => Vec::new(),
        })
        .collect())
}

/// What the hub keeps of the conflicts one change raised.
pub(super) enum Held {
    /// The conflicts.
    Conflicts(Vec<ColumnConflict>),
    /// Only the columns held back, as an earlier release kept them once
    /// its device had the conflicts: a change sent again under its id is
    /// compared with the logged change, which lacks them (see `resent`).
    Forgotten(Vec<String>),
}

impl Held {
    /// The columns held back.
    pub(super) fn columns(&self) -> Vec<String> {
        match self {
            Held::Conflicts(c) => c.iter().map(|c| c.column.clone()).collect(),
            Held::Forgotten(c) => c.clone(),
        }
    }
}

/// A forgotten row's text: `{"held":[columns]}` (a live row's is the JSON
/// array of its conflicts).
#[derive(serde::Serialize, serde::Deserialize)]
struct ForgottenText {
    held: Vec<String>,
}

/// What the hub keeps of the conflicts of these changes of `origin`,
/// change by change (by origin sequence), in their order.
pub(super) async fn by_seq(
    tx: &DatabaseTransaction,
    origin: NodeId,
    seqs: &[u64],
) -> Result<Vec<(u64, Held)>> {
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
            out.push((sequence(&r, "origin_seq")?, decode(origin, &text)?));
        }
    }
    Ok(out)
}

/// A row's text, live or forgotten.
fn decode(origin: NodeId, text: &str) -> Result<Held> {
    let bad = |e: serde_json::Error| Error::Corrupt(format!("held conflicts of {origin}: {e}"));
    if text.trim_start().starts_with('{') {
        let f: ForgottenText = serde_json::from_str(text).map_err(bad)?;
        return Ok(Held::Forgotten(f.held));
    }
    Ok(Held::Conflicts(serde_json::from_str(text).map_err(bad)?))
}
