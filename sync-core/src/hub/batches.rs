//! Batch records: one row per push transaction that applied changes,
//! `_tidesync_batches`, with the pushing origin, the hub sequence of its
//! first applied change (the changes took consecutive sequences from it),
//! and per change its origin sequence and a digest of the change as
//! pushed.
//!
//! They answer what the log answered, without a row per change: the id of
//! the change at a hub position (the id a device is told of its cursor,
//! see `log::id_at`), and whether a change pushed again under an id is
//! the one the hub applied under it (a copy of a device pushes another,
//! see `resent`). They are written beside the log for now; the log's
//! entries answer for the positions before them.

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, Value};
use sha2::{Digest, Sha256};

use super::tables::BATCHES;
use crate::model::change::{Change, ChangeId};
use crate::model::clock::NodeId;
use crate::model::error::{Error, Result};
use crate::model::value::pk_key;
use crate::store::codec::{db_sequence, sequence};
use crate::store::versions::put_value;

/// The digest of a change as pushed: its table, operation, key, clock and
/// columns (in name order, each with its value's binary form, which keeps
/// the variant). Stable across releases: a change pushed again by a later
/// release of its device is compared with it.
pub(crate) fn digest(c: &Change) -> Result<[u8; 16]> {
    let mut h = Sha256::new();
    let values: Vec<Value> = c.pk.iter().map(|(_, v)| v.clone()).collect();
    for part in [
        c.table.as_str(),
        c.op.as_str(),
        pk_key(&values)?.as_str(),
        c.hlc.to_string().as_str(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let mut columns: Vec<&(String, Value)> = c.columns.iter().collect();
    columns.sort_by(|a, b| a.0.cmp(&b.0));
    let mut bytes = Vec::new();
    for (name, value) in columns {
        h.update(name.as_bytes());
        h.update([0]);
        bytes.clear();
        put_value(value, &mut bytes)?;
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize()[..16]);
    Ok(out)
}

/// The record of the changes of `origin` a push applied, in the order they
/// took hub sequences from `first_hub` on: their origin sequences and
/// digests. Nothing for none.
pub(super) async fn record<C: ConnectionTrait>(
    db: &C,
    origin: NodeId,
    first_hub: u64,
    applied: &[(u64, [u8; 16])],
) -> Result<()> {
    let (Some(first), Some(last)) = (applied.first(), applied.last()) else {
        return Ok(());
    };
    let mut seqs = Vec::with_capacity(applied.len() * 8);
    let mut digests = Vec::with_capacity(applied.len() * 16);
    for (seq, d) in applied {
        seqs.extend_from_slice(&seq.to_le_bytes());
        digests.extend_from_slice(d);
    }
    let n = i32::try_from(applied.len())
        .map_err(|_| Error::Corrupt(format!("{} changes in one push", applied.len())))?;
    let q = Query::insert()
        .into_table(Alias::new(BATCHES))
        .columns(
            [
                "first_hub",
                "n",
                "origin",
                "first_seq",
                "last_seq",
                "seqs",
                "digests",
            ]
            .map(Alias::new),
        )
        .values_panic([
            db_sequence(first_hub)?.into(),
            n.into(),
            origin.to_string().into(),
            db_sequence(first.0)?.into(),
            db_sequence(last.0)?.into(),
            seqs.into(),
            digests.into(),
        ])
        .to_owned();
    db.execute(&q).await?;
    Ok(())
}

/// The id of the change at hub position `at`, if a batch record holds it
/// (`None`: a position before batch records, or none).
pub(super) async fn id_at<C: ConnectionTrait>(db: &C, at: u64) -> Result<Option<ChangeId>> {
    let q = Query::select()
        .columns(["first_hub", "n", "origin", "seqs"].map(Alias::new))
        .from(Alias::new(BATCHES))
        .and_where(Expr::col(Alias::new("first_hub")).lte(db_sequence(at)?))
        .order_by(Alias::new("first_hub"), Order::Desc)
        .limit(1)
        .to_owned();
    let Some(r) = db.query_one(&q).await? else {
        return Ok(None);
    };
    let first = sequence(&r, "first_hub")?;
    let n: i32 = r.try_get("", "n")?;
    let index = at - first;
    if index >= u64::try_from(n).unwrap_or(0) {
        return Ok(None);
    }
    let origin: String = r.try_get("", "origin")?;
    let seqs: Vec<u8> = r.try_get("", "seqs")?;
    Ok(Some(ChangeId {
        origin: origin.parse()?,
        seq: seq_at(&seqs, index)?,
    }))
}

/// The digest each of `seqs` (sequences of `origin`) was applied with, by
/// sequence, where a batch record holds it.
pub(super) async fn digests_of<C: ConnectionTrait>(
    db: &C,
    origin: NodeId,
    seqs: &[u64],
) -> Result<std::collections::HashMap<u64, [u8; 16]>> {
    let mut out = std::collections::HashMap::new();
    let (Some(min), Some(max)) = (seqs.iter().min(), seqs.iter().max()) else {
        return Ok(out);
    };
    let q = Query::select()
        .columns(["n", "seqs", "digests"].map(Alias::new))
        .from(Alias::new(BATCHES))
        .and_where(Expr::col(Alias::new("origin")).eq(origin.to_string()))
        .and_where(Expr::col(Alias::new("first_seq")).lte(db_sequence(*max)?))
        .and_where(Expr::col(Alias::new("last_seq")).gte(db_sequence(*min)?))
        .to_owned();
    let wanted: std::collections::HashSet<u64> = seqs.iter().copied().collect();
    for r in db.query_all(&q).await? {
        let n: i32 = r.try_get("", "n")?;
        let s: Vec<u8> = r.try_get("", "seqs")?;
        let d: Vec<u8> = r.try_get("", "digests")?;
        let n = usize::try_from(n).unwrap_or(0);
        if s.len() != n * 8 || d.len() != n * 16 {
            return Err(Error::Corrupt(format!(
                "{BATCHES}: a record of {n} changes is cut"
            )));
        }
        for i in 0..n {
            let seq = seq_at(&s, i as u64)?;
            if wanted.contains(&seq) {
                let mut digest = [0u8; 16];
                digest.copy_from_slice(&d[i * 16..i * 16 + 16]);
                out.insert(seq, digest);
            }
        }
    }
    Ok(out)
}

/// The origin sequence at `index` of a record's `seqs`.
fn seq_at(seqs: &[u8], index: u64) -> Result<u64> {
    let at = usize::try_from(index)
        .ok()
        .and_then(|i| i.checked_mul(8))
        .and_then(|i| seqs.get(i..i + 8))
        .ok_or_else(|| Error::Corrupt(format!("{BATCHES}: no sequence at {index}")))?;
    let mut b = [0u8; 8];
    b.copy_from_slice(at);
    Ok(u64::from_le_bytes(b))
}
