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
//! see `resent`). The log's entries answer for the positions before them
//! (a hub of an earlier release); the hub's metadata keeps since when
//! there are records (`batches_from`, see `settle`).

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, Value};
use sha2::{Digest, Sha256};

use super::tables::{BATCHES, HUB_META};
use crate::model::change::{Change, ChangeId, ColumnBase};
use crate::model::clock::NodeId;
use crate::model::error::{Error, Result};
use crate::model::value::pk_key;
use crate::store::codec::{db_sequence, sequence};
use crate::store::versions::put_value;

/// The digest of a change as pushed: its table, operation, key, clock,
/// columns (in name order, each with its value's binary form, which keeps
/// the variant) and bases (the values its edit started from, in column
/// order). Stable across releases, as `tests::digests_are_frozen` holds
/// it: a change pushed again by a later release of its device is compared
/// with it.
pub(crate) fn digest(c: &Change) -> Result<[u8; 16]> {
    let values: Vec<Value> = c.pk.iter().map(|(_, v)| v.clone()).collect();
    digest_keyed(c, &pk_key(&values)?)
}

/// [`digest`] of a change whose key text (`pk_key` of its key's values)
/// the caller has already.
pub(crate) fn digest_keyed(c: &Change, key: &str) -> Result<[u8; 16]> {
    let mut h = Sha256::new();
    for part in [
        c.table.as_str(),
        c.op.as_str(),
        key,
        c.hlc.to_string().as_str(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let mut bytes = Vec::new();
    let mut value = |h: &mut Sha256, v: &Value| -> Result<()> {
        bytes.clear();
        put_value(v, &mut bytes)?;
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
        Ok(())
    };
    let mut columns: Vec<&(String, Value)> = c.columns.iter().collect();
    columns.sort_by(|a, b| a.0.cmp(&b.0));
    h.update((columns.len() as u64).to_le_bytes());
    for (name, v) in columns {
        h.update(name.as_bytes());
        h.update([0]);
        value(&mut h, v)?;
    }
    let mut bases: Vec<&ColumnBase> = c.base.iter().collect();
    bases.sort_by(|a, b| a.column.cmp(&b.column));
    h.update((bases.len() as u64).to_le_bytes());
    for b in bases {
        h.update(b.column.as_bytes());
        h.update([0]);
        match &b.value {
            Some(v) => {
                h.update([1]);
                value(&mut h, v)?;
            }
            None => h.update([0]),
        }
        match b.clock {
            Some(clock) => {
                h.update([1]);
                h.update(clock.to_string().as_bytes());
                h.update([0]);
            }
            None => h.update([0]),
        }
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize()[..16]);
    Ok(out)
}

/// Make the batch records agree with the hub's sequence: a hub whose
/// metadata does not say since when it keeps records (a hub before them,
/// or a restored backup of one beside the records written after it) has
/// its records emptied, and a record at or past the next sequence (a
/// backup restored beside later records) goes. A record left there would
/// tell another change's id at a position, or stop every push at its key.
pub(super) async fn settle(db: &sea_orm::DatabaseConnection) -> Result<()> {
    use sea_orm::TransactionTrait;
    // A change pushed again is looked up by its origin and sequence, under
    // the sequence lock: by index, however many records there are.
    let by_origin = sea_orm::sea_query::Index::create()
        .if_not_exists()
        .name("_tidesync_batches_origin")
        .table(Alias::new(BATCHES))
        .col(Alias::new("origin"))
        .col(Alias::new("last_seq"))
        .to_owned();
    if let Err(e) = db.execute(&by_origin).await {
        // MySQL has no `IF NOT EXISTS` here: another install made it.
        let e = Error::from(e);
        if !matches!(crate::dialect::native_code(&e).as_deref(), Some("1061")) {
            return Err(e);
        }
    }
    let tx = db.begin().await?;
    HUB_META.lock(&tx, "next_seq").await?;
    let next_seq: u64 = HUB_META
        .read(&tx, "next_seq")
        .await?
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut stale = Query::delete();
    stale.from_table(Alias::new(BATCHES));
    match HUB_META.read(&tx, "batches_from").await? {
        None => {
            HUB_META
                .insert_if_missing(&tx, "batches_from", &next_seq.to_string())
                .await?;
        }
        Some(_) => {
            stale.and_where(Expr::col(Alias::new("first_hub")).gte(db_sequence(next_seq)?));
        }
    }
    tx.execute(&stale).await?;
    tx.commit().await?;
    Ok(())
}

/// The insert that records the changes of `origin` a push applied, in the
/// order they took hub sequences from `first_hub` on: their origin
/// sequences and digests. `None` for none.
pub(super) fn record(
    origin: NodeId,
    first_hub: u64,
    applied: &[(u64, [u8; 16])],
) -> Result<Option<sea_orm::sea_query::InsertStatement>> {
    let (Some(first), Some(last)) = (applied.first(), applied.last()) else {
        return Ok(None);
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
    Ok(Some(q))
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
    let index = at - first;
    if index >= count(&r)? as u64 {
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
        let n = count(&r)?;
        let s: Vec<u8> = r.try_get("", "seqs")?;
        let d: Vec<u8> = r.try_get("", "digests")?;
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

/// How many changes a record holds.
fn count(r: &sea_orm::QueryResult) -> Result<usize> {
    let n: i32 = r.try_get("", "n")?;
    usize::try_from(n).map_err(|_| Error::Corrupt(format!("{BATCHES}: a record of {n} changes")))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::change::Op;
    use crate::model::clock::Hlc;

    fn hex(d: [u8; 16]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn clock(physical: u64) -> Hlc {
        Hlc {
            physical,
            logical: 3,
            node: NodeId([0xab; 16]),
        }
    }

    /// A change with a value of each kind a column takes, columns out of
    /// name order, a composite key and bases.
    fn change() -> Change {
        let when = chrono::NaiveDate::from_ymd_opt(2026, 12, 6)
            .and_then(|d| d.and_hms_micro_opt(11, 38, 31, 250))
            .unwrap_or_default();
        Change {
            id: ChangeId {
                origin: NodeId([1; 16]),
                seq: 7,
            },
            table: "contacts".into(),
            pk: vec![
                ("org".into(), Value::from("ünï ☃")),
                ("id".into(), Value::from(42i64)),
            ],
            op: Op::Update,
            columns: vec![
                ("z_text".into(), Value::from("Zoë")),
                ("a_int".into(), Value::from(-5i32)),
                ("b_double".into(), Value::from(-0.0f64)),
                ("c_null".into(), Value::String(None)),
                ("d_bytes".into(), Value::from(vec![0u8, 255, 7])),
                ("e_bool".into(), Value::from(true)),
                (
                    "f_uuid".into(),
                    Value::from(uuid::Uuid::from_bytes([9; 16])),
                ),
                (
                    "g_decimal".into(),
                    Value::from(rust_decimal::Decimal::new(150, 2)),
                ),
                ("h_when".into(), Value::from(when)),
                (
                    "i_json".into(),
                    Value::from(serde_json::json!({"k": [1, "x"]})),
                ),
            ],
            hlc: clock(1_765_000_000_000_000),
            base: vec![
                ColumnBase {
                    column: "z_text".into(),
                    value: Some(Value::from("Zoe")),
                    clock: Some(clock(1_764_000_000_000_000)),
                },
                ColumnBase {
                    column: "a_int".into(),
                    value: None,
                    clock: None,
                },
            ],
        }
    }

    /// The digest of a change is frozen: a change a hub recorded is
    /// compared, when its device pushes it again, maybe after an upgrade
    /// of either, with the digest this release computes. A change here
    /// (of the binary value form, the key's text, the clock's text, the
    /// order or framing of the parts) must keep these.
    #[test]
    fn digests_are_frozen() -> Result<()> {
        let c = change();
        assert_eq!(hex(digest(&c)?), "26c920d3c6a1f44af268256188e11148");
        let values: Vec<Value> = c.pk.iter().map(|(_, v)| v.clone()).collect();
        assert_eq!(
            hex(digest_keyed(&c, &pk_key(&values)?)?),
            "26c920d3c6a1f44af268256188e11148"
        );
        let mut deleted = c.clone();
        deleted.op = Op::Delete;
        deleted.columns.clear();
        deleted.base.clear();
        assert_eq!(hex(digest(&deleted)?), "8d6ffc7d92dd78912495d31dbb327774");
        Ok(())
    }

    /// Everything that tells two changes apart changes the digest; the
    /// order columns and bases are listed in does not.
    #[test]
    fn digests_tell_changes_apart() -> Result<()> {
        let c = change();
        let d = digest(&c)?;
        let mut reordered = c.clone();
        reordered.columns.reverse();
        reordered.base.reverse();
        assert_eq!(digest(&reordered)?, d, "listed in another order");
        let mut others: Vec<(&str, Change)> = Vec::new();
        let mut x = c.clone();
        x.table = "contact".into();
        others.push(("table", x));
        let mut x = c.clone();
        x.op = Op::Insert;
        others.push(("op", x));
        let mut x = c.clone();
        x.pk[1].1 = Value::from(43i64);
        others.push(("key", x));
        let mut x = c.clone();
        x.pk[1].1 = Value::from(42i32);
        others.push(("key's kind", x));
        let mut x = c.clone();
        x.hlc.logical += 1;
        others.push(("clock", x));
        let mut x = c.clone();
        x.hlc.node = NodeId([0xac; 16]);
        others.push(("clock's node", x));
        let mut x = c.clone();
        x.columns[2].1 = Value::from(0.0f64);
        others.push(("-0.0 and 0.0", x));
        let mut x = c.clone();
        x.columns[7].1 = Value::from(rust_decimal::Decimal::new(15, 1));
        others.push(("1.50 and 1.5", x));
        let mut x = c.clone();
        x.columns[3].1 = Value::Bytes(None);
        others.push(("a NULL of another kind", x));
        let mut x = c.clone();
        x.columns.remove(3);
        others.push(("a NULL and no column", x));
        let mut x = c.clone();
        x.columns[0].1 = Value::from(b"Zo\xc3\xab".to_vec());
        others.push(("text and its bytes", x));
        let mut x = c.clone();
        x.columns[0].0 = "z_texT".into();
        others.push(("a column's name", x));
        let mut x = c.clone();
        x.base[0].value = Some(Value::from("Zo"));
        others.push(("a base's value", x));
        let mut x = c.clone();
        x.base[1].clock = Some(clock(1));
        others.push(("a base's clock", x));
        let mut x = c.clone();
        x.base.clear();
        others.push(("no bases", x));
        let mut x = c.clone();
        x.id.seq += 1;
        let id_only = digest(&x)?;
        assert_eq!(
            id_only, d,
            "the id is not the change's: it is what is compared under"
        );
        for (what, other) in others {
            assert_ne!(digest(&other)?, d, "{what}");
        }
        Ok(())
    }
}
