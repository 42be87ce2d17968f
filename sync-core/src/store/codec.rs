//! One codec for stored changes: the replica's outbox and the hub's log
//! store a change in the same columns, after ids of their own.

use std::borrow::Cow;

use sea_orm::sea_query::{
    Alias, ColumnDef, InsertStatement, Query, SelectStatement, Table, TableCreateStatement, Value,
};
use sea_orm::{DbBackend, QueryResult, Statement};

use crate::dialect::Dialect;
use crate::model::change::{Change, ChangeId, Op};
use crate::model::error::{Error, Result};
use crate::model::protocol::{Cursor, Unreadable};
use crate::model::typed;
use crate::model::value::approx_size;
use crate::store::ddl::{not_null, varchar};
use crate::store::write::Inserts;

/// The columns a change is stored in, after the ids of its table.
pub(crate) const STORED_COLUMNS: [&str; 6] = ["tbl", "pk", "op", "payload", "hlc", "base"];

/// A table of stored changes: its name and the id columns before the
/// change's own ([`STORED_COLUMNS`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChangeTable {
    /// Table name.
    pub(crate) name: &'static str,
    /// The id columns, in the order rows give their values.
    pub(crate) ids: &'static [&'static str],
}

impl ChangeTable {
    /// DDL of the table (`IF NOT EXISTS`): the id columns `ids` (with the
    /// key among them), then the change's.
    pub(crate) fn table(self, d: &dyn Dialect, ids: Vec<ColumnDef>) -> TableCreateStatement {
        let text = d.long_text();
        let mut t = Table::create();
        t.table(Alias::new(self.name)).if_not_exists();
        for mut id in ids {
            t.col(&mut id);
        }
        t.col(not_null("tbl", varchar(64)))
            .col(not_null("pk", text.clone()))
            .col(not_null("op", varchar(8)))
            .col(not_null("payload", text.clone()))
            .col(not_null("hlc", varchar(64)))
            .col(ColumnDef::new_with_type(Alias::new("base"), text).null());
        t.to_owned()
    }

    /// Every column: the ids, then the change's.
    pub(crate) fn columns(self) -> impl Iterator<Item = Alias> {
        self.ids
            .iter()
            .copied()
            .chain(STORED_COLUMNS)
            .map(Alias::new)
    }

    /// A select of every column, to decode with [`decode`].
    pub(crate) fn select(self) -> SelectStatement {
        Query::select()
            .columns(self.columns())
            .from(Alias::new(self.name))
            .to_owned()
    }

    /// An insert into every column, without rows.
    pub(crate) fn insert(self) -> InsertStatement {
        Query::insert()
            .into_table(Alias::new(self.name))
            .columns(self.columns())
            .to_owned()
    }

    /// The values of a row: `ids` (one per id column), then the change's.
    pub(crate) fn row(self, ids: Vec<Value>, change: &Change) -> Result<Vec<Value>> {
        debug_assert_eq!(ids.len(), self.ids.len());
        let mut row = ids;
        row.extend(stored_values(change)?);
        Ok(row)
    }

    /// A row with its approximate size in bytes, for [`ChangeTable::batch`].
    pub(crate) fn sized_row(self, ids: Vec<Value>, change: &Change) -> Result<(Vec<Value>, usize)> {
        let size = change
            .columns
            .iter()
            .map(|(_, v)| approx_size(v))
            .sum::<usize>()
            + 200;
        Ok((self.row(ids, change)?, size))
    }

    /// Multi-row inserts of these sized rows on `backend`, bounded in rows
    /// and bytes.
    pub(crate) fn batch(
        self,
        backend: DbBackend,
        rows: Vec<(Vec<Value>, usize)>,
    ) -> Result<Vec<Statement>> {
        let columns = self.ids.len() + STORED_COLUMNS.len();
        Inserts::plain(backend, self.insert(), columns).statements(rows)
    }

    /// Multi-row inserts of these changes, each with its ids, bounded in
    /// rows and bytes.
    pub(crate) fn inserts<'c>(
        self,
        backend: DbBackend,
        rows: impl IntoIterator<Item = (Vec<Value>, &'c Change)>,
    ) -> Result<Vec<Statement>> {
        let sized = rows
            .into_iter()
            .map(|(ids, change)| self.sized_row(ids, change))
            .collect::<Result<Vec<_>>>()?;
        self.batch(backend, sized)
    }
}

/// A change in the text of [`STORED_COLUMNS`], as stored.
#[derive(Debug, PartialEq)]
pub(crate) struct StoredText {
    tbl: String,
    pk: String,
    op: Cow<'static, str>,
    payload: String,
    hlc: String,
    base: Option<String>,
}

impl StoredText {
    /// The text a change is stored as.
    pub(crate) fn of(change: &Change) -> Result<StoredText> {
        Ok(StoredText {
            tbl: change.table.clone(),
            pk: typed::columns_to_text(&change.pk)?,
            op: Cow::Borrowed(change.op.as_str()),
            payload: typed::columns_to_text(&change.columns)?,
            hlc: change.hlc.to_string(),
            base: match change.base.is_empty() {
                true => None,
                false => Some(serde_json::to_string(&change.base)?),
            },
        })
    }

    /// The change this text holds, under `id`: what [`decode`] reads
    /// back from the stored row.
    ///
    /// # Errors
    /// [`Error::Payload`] or [`Error::Corrupt`] for malformed text.
    pub(crate) fn decode(&self, id: ChangeId) -> Result<Change> {
        let op = &self.op;
        Ok(Change {
            id,
            table: self.tbl.clone(),
            pk: typed::columns_from_text(&self.pk)?,
            op: Op::parse(op).ok_or_else(|| Error::Corrupt(format!("unknown operation `{op}`")))?,
            columns: typed::columns_from_text(&self.payload)?,
            hlc: self.hlc.parse()?,
            base: self
                .base
                .as_deref()
                .map(serde_json::from_str)
                .transpose()?
                .unwrap_or_default(),
        })
    }

    /// Whether `change` is stored as this text and reads back from it as
    /// it is, bit for bit: equal after decoding (where `-0.0 == 0.0` and a
    /// decimal's scale is not compared) and stored alike again.
    pub(crate) fn reads_back_as(&self, change: &Change) -> Result<bool> {
        let back = self.decode(change.id)?;
        Ok(back == *change && StoredText::of(&back)? == *self && StoredText::of(change)? == *self)
    }

    /// The values of [`STORED_COLUMNS`].
    fn values(self) -> [Value; 6] {
        [
            self.tbl.into(),
            self.pk.into(),
            self.op.into(),
            self.payload.into(),
            self.hlc.into(),
            self.base.into(),
        ]
    }
}

/// The values of [`STORED_COLUMNS`] for a change.
fn stored_values(change: &Change) -> Result<[Value; 6]> {
    Ok(StoredText::of(change)?.values())
}

/// Read back a change stored by [`ChangeTable::row`], under the id its
/// table's id columns give.
///
/// # Errors
/// [`Error::Payload`] or [`Error::Corrupt`] for a malformed row.
pub(crate) fn decode(id: ChangeId, r: &QueryResult) -> Result<Change> {
    let text = StoredText {
        tbl: r.try_get("", "tbl")?,
        pk: r.try_get("", "pk")?,
        op: Cow::Owned(r.try_get("", "op")?),
        payload: r.try_get("", "payload")?,
        hlc: r.try_get("", "hlc")?,
        base: r.try_get("", "base")?,
    };
    text.decode(id)
}

/// A stored change that [`decode`] refused, at `position`, as much of it
/// as can be read, for the caller to halt at or park.
pub(crate) fn unreadable(r: &QueryResult, position: u64, reason: String) -> Unreadable {
    Unreadable {
        position: Cursor(position),
        table: r.try_get("", "tbl").unwrap_or_default(),
        raw: r.try_get("", "payload").unwrap_or_default(),
        reason,
    }
}

/// A sequence number read from column `column`.
///
/// # Errors
/// [`Error::Corrupt`] for a negative one.
pub(crate) fn sequence(r: &QueryResult, column: &str) -> Result<u64> {
    let seq: i64 = r.try_get("", column)?;
    u64::try_from(seq).map_err(|_| Error::Corrupt(format!("negative sequence {seq} in `{column}`")))
}

/// An `INTEGER` auto-increment id (`_tidesync_parked`, `_tidesync_conflicts`),
/// which PostgreSQL and MySQL return as 32 bits and SQLite as 64.
pub(crate) fn integer_id(r: &QueryResult, column: &str) -> Result<i64> {
    match r.try_get::<i64>("", column) {
        Ok(id) => Ok(id),
        Err(_) => Ok(i64::from(r.try_get::<i32>("", column)?)),
    }
}

/// A sequence number as the databases' signed 64-bit integers hold it.
///
/// # Errors
/// [`Error::Corrupt`] beyond `i64::MAX`.
pub(crate) fn db_sequence(seq: u64) -> Result<i64> {
    i64::try_from(seq).map_err(|_| Error::Corrupt(format!("sequence {seq} overflows")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::clock::{Hlc, NodeId};
    use sea_orm::Value;
    use sea_orm::sea_query::SqliteQueryBuilder;

    const LOG: ChangeTable = ChangeTable {
        name: "log",
        ids: &["n", "who"],
    };

    fn change(seq: u64) -> Change {
        let node = NodeId([0x11; 16]);
        Change {
            id: ChangeId { origin: node, seq },
            table: "t".into(),
            pk: vec![("id".into(), Value::String(Some("1".into())))],
            op: Op::Update,
            columns: vec![("a".into(), Value::String(Some("x".into())))],
            hlc: Hlc {
                physical: 0x10,
                logical: 2,
                node,
            },
            base: vec![],
        }
    }

    #[test]
    fn a_change_is_stored_after_its_ids() {
        let q = LOG
            .inserts(
                DbBackend::Sqlite,
                [(vec![7.into(), "me".into()], &change(7))],
            )
            .unwrap();
        assert_eq!(
            q[0].to_string(),
            format!(
                r#"INSERT INTO "log" ("n", "who", "tbl", "pk", "op", "payload", "hlc", "base") VALUES (7, 'me', 't', '[["id",{{"String":"1"}}]]', 'update', '[["a",{{"String":"x"}}]]', '0000000000000010-00000002-{}', NULL)"#,
                "11".repeat(16)
            )
        );
        assert_eq!(
            LOG.select().to_string(SqliteQueryBuilder),
            r#"SELECT "n", "who", "tbl", "pk", "op", "payload", "hlc", "base" FROM "log""#
        );
    }

    #[test]
    fn the_table_holds_the_ids_then_the_change() {
        use crate::store::ddl::{not_null, varchar};
        use sea_orm::sea_query::{ColumnType, MysqlQueryBuilder};
        let d = crate::dialect::of(sea_orm::DbBackend::MySql).unwrap();
        let ids = vec![
            not_null("n", ColumnType::BigInteger)
                .primary_key()
                .to_owned(),
            not_null("who", varchar(32)),
        ];
        assert_eq!(
            LOG.table(d, ids).to_string(MysqlQueryBuilder),
            "CREATE TABLE IF NOT EXISTS `log` ( `n` bigint NOT NULL PRIMARY KEY, `who` varchar(32) NOT NULL, \
             `tbl` varchar(64) NOT NULL, `pk` LONGTEXT NOT NULL, `op` varchar(8) NOT NULL, \
             `payload` LONGTEXT NOT NULL, `hlc` varchar(64) NOT NULL, `base` LONGTEXT NULL )"
        );
    }

    #[test]
    fn inserts_keep_the_order_of_the_changes() {
        let changes: Vec<Change> = (1..=3).map(change).collect();
        let qs = LOG
            .inserts(
                DbBackend::Sqlite,
                changes
                    .iter()
                    .map(|c| (vec![(c.id.seq as i64).into(), "me".into()], c)),
            )
            .unwrap();
        assert_eq!(qs.len(), 1);
        let sql = qs[0].to_string();
        let at = |n: &str| sql.find(&format!("({n}, 'me'")).unwrap();
        assert!(at("1") < at("2") && at("2") < at("3"), "{sql}");
        assert!(
            LOG.inserts(DbBackend::Sqlite, std::iter::empty())
                .unwrap()
                .is_empty()
        );
    }

    /// Statements are bounded by the changes' values plus a fixed overhead
    /// per row: four changes of a million bytes share one, a fifth would
    /// pass the bound.
    #[test]
    fn inserts_are_bounded_by_the_size_of_the_values() {
        let big = |seq: u64| Change {
            columns: vec![("a".into(), Value::String(Some("x".repeat(1_000_000))))],
            ..change(seq)
        };
        let changes: Vec<Change> = (1..=9).map(big).collect();
        let rows: Vec<usize> = LOG
            .inserts(
                DbBackend::Sqlite,
                changes.iter().map(|c| (vec![1.into(), "me".into()], c)),
            )
            .unwrap()
            .iter()
            .map(|q| q.values.as_ref().unwrap().0.len() / 8)
            .collect();
        assert_eq!(rows, [4, 4, 1]);
        let (_, size) = LOG
            .sized_row(vec![1.into(), "me".into()], &changes[0])
            .unwrap();
        assert_eq!(size, 1_000_200);
    }

    /// The push sends a change as the seal made it, and sends it again
    /// after a crash as the outbox gives it back: for every kind of
    /// value, in the key, the columns and the bases, the two are one.
    #[test]
    fn a_change_reads_back_as_it_was_made() {
        use crate::model::change::ColumnBase;
        let t = crate::model::testing::a_time();
        let mut values = crate::model::testing::values();
        values.extend([
            Value::ChronoDateTimeWithTimeZone(Some(t.fixed_offset())),
            Value::ChronoDateTimeWithTimeZone(Some(
                t.with_timezone(&chrono::FixedOffset::east_opt(-5 * 3600 - 1800).unwrap()),
            )),
        ]);
        for v in values {
            let c = Change {
                pk: vec![("id".into(), v.clone()), ("n".into(), Value::Int(Some(1)))],
                columns: vec![("a".into(), v.clone()), ("b".into(), Value::Int(None))],
                base: vec![ColumnBase {
                    column: "a".into(),
                    value: Some(v.clone()),
                    clock: Some(Hlc::default()),
                }],
                ..change(3)
            };
            let text = StoredText::of(&c).unwrap();
            let back = text.decode(c.id).unwrap();
            assert_eq!(back, c, "{v:?}");
            // Bit for bit, where equality is looser (`-0.0 == 0.0`, a
            // decimal's scale, a time's offset): stored alike again.
            assert_eq!(StoredText::of(&back).unwrap(), text, "{v:?}");
            assert!(text.reads_back_as(&c).unwrap(), "{v:?}");
            for ((_, a), (_, b)) in back.columns.iter().zip(&c.columns) {
                assert!(crate::model::value::same_value(a, b), "{v:?}");
            }
        }
    }

    /// The check of a change kept by the push tells apart what equality
    /// does not: text stored for one change does not read back as another
    /// that compares equal.
    #[test]
    fn reading_back_tells_apart_what_equality_does_not() {
        let with = |v: Value| Change {
            columns: vec![("a".into(), v)],
            ..change(3)
        };
        for (a, b) in [
            (Value::Double(Some(0.0)), Value::Double(Some(-0.0))),
            (
                Value::Decimal(Some("1.5".parse().unwrap())),
                Value::Decimal(Some("1.50".parse().unwrap())),
            ),
        ] {
            let (a, b) = (with(a), with(b));
            assert_eq!(a, b, "equal as values");
            let text = StoredText::of(&a).unwrap();
            assert!(text.reads_back_as(&a).unwrap());
            assert!(!text.reads_back_as(&b).unwrap(), "{b:?}");
        }
    }

    #[test]
    fn a_sequence_beyond_the_databases_integers_is_refused() {
        assert_eq!(db_sequence(i64::MAX as u64).unwrap(), i64::MAX);
        assert!(matches!(
            db_sequence(i64::MAX as u64 + 1),
            Err(Error::Corrupt(_))
        ));
    }
}
