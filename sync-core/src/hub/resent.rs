//! Changes pushed again under an id the hub already holds: acknowledged
//! only when they are the change it holds under that id.
//!
//! A device pushes a change again when the answer to its push was lost.
//! But two devices can also push *different* changes under one id: a copy
//! of a device (a phone restored from another's backup, a copied SQLite
//! file) numbers its changes from the same sequence as the original, and a
//! device restored from an older backup numbers new changes with sequences
//! the hub already applied. Acknowledging such a change would drop it from
//! its device without applying it, in silence. So a change at or below the
//! origin's progress is compared with what the hub logged (or parked) under
//! its id; when they differ, the hub acknowledges nothing and says so, and
//! the device takes a new identity (`SyncEngine` does).

use std::collections::HashMap;

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{ConnectionTrait, DatabaseTransaction};

use super::batches;
use super::held;
use super::tables::{CHANGES, REJECTED};
use crate::model::change::{Change, ChangeId};
use crate::model::clock::NodeId;
use crate::model::error::Result;
use crate::model::protocol::Rejection;
use crate::model::value::pk_key;
use crate::store::codec::{self, db_sequence, sequence};

/// The first of `sent` (changes of `origin` the hub already holds under
/// their ids) that is not the change it holds: its index, and what differs.
pub(super) async fn clash(
    tx: &DatabaseTransaction,
    origin: NodeId,
    sent: &[&Change],
) -> Result<Option<(usize, Rejection)>> {
    if sent.is_empty() {
        return Ok(None);
    }
    let seqs: Vec<u64> = sent.iter().map(|c| c.id.seq).collect();
    // Applied under a batch record: compared by digest. The others (parked,
    // or applied before batch records) with what the hub keeps of them.
    let digests = batches::digests_of(tx, origin, &seqs).await?;
    let rest: Vec<&Change> = sent
        .iter()
        .filter(|c| !digests.contains_key(&c.id.seq))
        .copied()
        .collect();
    let held = held_under(tx, origin, &rest).await?;
    let held_back: HashMap<u64, Vec<String>> = held::by_seq(tx, origin, &seqs)
        .await?
        .into_iter()
        .map(|(seq, held)| (seq, held.columns()))
        .collect();
    for (i, c) in sent.iter().enumerate() {
        let recorded = digests.get(&c.id.seq);
        let differs = match held.iter().find(|h| h.id.seq == c.id.seq) {
            _ if recorded.is_some() => (recorded != Some(&batches::digest(c)?))
                .then(|| "another change than the one applied under it".to_owned()),
            Some(h) => {
                let held_back = held_back.get(&c.id.seq).map_or(&[][..], Vec::as_slice);
                what_differs(h, c, held_back)?
            }
            None => Some("the hub holds no change under this id".to_owned()),
        };
        if let Some(what) = differs {
            return Ok(Some((
                i,
                Rejection {
                    id: c.id,
                    table: c.table.clone(),
                    reason: format!(
                        "change {} of device {origin} is not the one the hub holds under that id \
                     ({what}): two devices share this identity (a copy or a restored backup)",
                        c.id.seq
                    ),
                },
            )));
        }
    }
    Ok(None)
}

/// The changes of `origin` the hub logged or parked under the ids of `sent`.
async fn held_under(
    tx: &DatabaseTransaction,
    origin: NodeId,
    sent: &[&Change],
) -> Result<Vec<Change>> {
    let mut out = Vec::with_capacity(sent.len());
    for chunk in sent.chunks(500) {
        let seqs = chunk
            .iter()
            .map(|c| db_sequence(c.id.seq))
            .collect::<Result<Vec<i64>>>()?;
        let mut q = CHANGES.select();
        q.and_where(Expr::col(Alias::new("origin")).eq(origin.to_string()))
            .and_where(Expr::col(Alias::new("origin_seq")).is_in(seqs.clone()));
        for r in tx.query_all(&q).await? {
            let id = ChangeId {
                origin,
                seq: sequence(&r, "origin_seq")?,
            };
            out.push(codec::decode(id, &r)?);
        }
        let parked = Query::select()
            .column(Alias::new("change"))
            .from(Alias::new(REJECTED))
            .and_where(Expr::col(Alias::new("origin")).eq(origin.to_string()))
            .and_where(Expr::col(Alias::new("origin_seq")).is_in(seqs))
            .to_owned();
        for r in tx.query_all(&parked).await? {
            let text: String = r.try_get("", "change")?;
            out.push(serde_json::from_str(&text)?);
        }
    }
    Ok(out)
}

/// The changes of `origin` under `seqs` the hub parked, with the reason
/// each was parked for: a batch pushed again (its answer lost) gets them
/// again, or the device would drop them unreported.
pub(super) async fn parked<C: ConnectionTrait>(
    tx: &C,
    origin: NodeId,
    seqs: &[u64],
) -> Result<Vec<Rejection>> {
    let mut out = Vec::new();
    for chunk in seqs.chunks(500) {
        let keys = chunk
            .iter()
            .map(|s| db_sequence(*s))
            .collect::<Result<Vec<i64>>>()?;
        let q = Query::select()
            .columns(["origin_seq", "tbl", "reason"].map(Alias::new))
            .from(Alias::new(REJECTED))
            .and_where(Expr::col(Alias::new("origin")).eq(origin.to_string()))
            .and_where(Expr::col(Alias::new("origin_seq")).is_in(keys))
            .to_owned();
        for r in tx.query_all(&q).await? {
            out.push(Rejection {
                id: ChangeId {
                    origin,
                    seq: sequence(&r, "origin_seq")?,
                },
                table: r.try_get("", "tbl")?,
                reason: r.try_get("", "reason")?,
            });
        }
    }
    out.sort_by_key(|r| r.id.seq);
    Ok(out)
}

/// What tells the change the hub holds (`held`) from the one sent again
/// (`sent`), if anything. The hub logs a change without the columns it held
/// back for a decision (`held_back`, kept until the device has the
/// conflicts): the change sent must set the logged columns to the same
/// values, and no other column but those.
fn what_differs(held: &Change, sent: &Change, held_back: &[String]) -> Result<Option<String>> {
    if held.table != sent.table {
        return Ok(Some(format!(
            "table `{}`, not `{}`",
            held.table, sent.table
        )));
    }
    if held.op != sent.op {
        return Ok(Some(format!("{:?}, not {:?}", held.op, sent.op)));
    }
    let key = |c: &Change| pk_key(&c.pk.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>());
    if key(held)? != key(sent)? {
        return Ok(Some("another key".to_owned()));
    }
    if held.hlc != sent.hlc {
        return Ok(Some(format!("clock {}, not {}", held.hlc, sent.hlc)));
    }
    for (column, value) in &held.columns {
        let same = sent
            .columns
            .iter()
            .find(|(c, _)| c == column)
            .is_some_and(|(_, v)| same_value(v, value));
        if !same {
            return Ok(Some(format!("another value of `{column}`")));
        }
    }
    let extra = sent
        .columns
        .iter()
        .find(|(c, _)| !held.columns.iter().any(|(h, _)| h == c) && !held_back.contains(c));
    if let Some((column, _)) = extra {
        return Ok(Some(format!("a value of `{column}` too")));
    }
    Ok(None)
}

/// Whether two values are the same. A value read back from the log equals
/// the one sent: typed JSON keeps every value exactly (a double too: JSON
/// is parsed with `float_roundtrip`); NaN is never logged.
fn same_value(a: &sea_orm::Value, b: &sea_orm::Value) -> bool {
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::change::Op;
    use crate::model::testing::hlc;
    use sea_orm::Value;

    fn change(seq: u64, name: &str) -> Change {
        Change {
            id: ChangeId {
                origin: NodeId([1; 16]),
                seq,
            },
            table: "people".into(),
            pk: vec![("id".into(), Value::BigInt(Some(7)))],
            op: Op::Update,
            columns: vec![
                ("name".into(), Value::from(name)),
                ("email".into(), Value::from("x@y")),
            ],
            hlc: hlc(seq, 1),
            base: vec![],
        }
    }

    #[test]
    fn the_same_change_sent_again_does_not_differ() {
        let c = change(3, "ann");
        assert_eq!(what_differs(&c, &c, &[]).unwrap(), None);
        // Read back from the log: the same values, through JSON.
        let back: Change = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(what_differs(&back, &c, &[]).unwrap(), None);
    }

    #[test]
    fn a_change_logged_without_a_held_column_does_not_differ() {
        let sent = change(3, "ann");
        let mut logged = sent.clone();
        logged.columns.retain(|(c, _)| c != "name");
        assert_eq!(
            what_differs(&logged, &sent, &["name".to_owned()]).unwrap(),
            None
        );
        // Not held back: a change that also set `name` is another change
        // (a copy's, stamped with the same clock).
        assert!(
            what_differs(&logged, &sent, &[])
                .unwrap()
                .unwrap()
                .contains("`name`")
        );
    }

    #[test]
    fn another_change_under_the_same_id_differs() {
        let held = change(3, "ann");
        let value = change(3, "bob");
        assert!(
            what_differs(&held, &value, &[])
                .unwrap()
                .unwrap()
                .contains("`name`")
        );
        let mut clock = held.clone();
        clock.hlc = hlc(4, 1);
        assert!(
            what_differs(&held, &clock, &[])
                .unwrap()
                .unwrap()
                .contains("clock")
        );
        let mut key = held.clone();
        key.pk[0].1 = Value::BigInt(Some(8));
        assert!(
            what_differs(&held, &key, &[])
                .unwrap()
                .unwrap()
                .contains("key")
        );
        let mut op = held.clone();
        op.op = Op::Delete;
        assert!(what_differs(&held, &op, &[]).unwrap().is_some());
        let mut table = held.clone();
        table.table = "pets".into();
        assert!(
            what_differs(&held, &table, &[])
                .unwrap()
                .unwrap()
                .contains("table")
        );
        let mut missing = held.clone();
        missing.columns.pop();
        assert!(
            what_differs(&held, &missing, &[])
                .unwrap()
                .unwrap()
                .contains("`email`")
        );
    }
}
