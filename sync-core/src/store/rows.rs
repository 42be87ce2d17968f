//! Row states in a database table, as JSON: the hub's row metadata
//! (`_tidesync_hub_rows`), and the replica's states of schema version 1
//! (`_tidesync_rows`), read once when a replica is upgraded (a replica
//! keeps its states in version tables now, see [`super::versions`]).
//!
//! Layout: `tbl`, `pk` (the row's [`storage_key`]: its canonical key text,
//! or a hash of a long one), `vals` (typed JSON map), `clocks` (see
//! [`clocks::encode`]), `deleted_at` (clock text or NULL), `live` (derived,
//! for queries) and `pk_full` (the key text when `pk` is its hash, else
//! NULL); primary key `(tbl, pk)`.
//!
//! Every function here takes and returns key texts: only this module knows
//! how a long one is stored.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use sea_orm::sea_query::{Alias, ColumnDef, Expr, ExprTrait, Query, Table};
#[cfg(test)]
use sea_orm::sea_query::{ColumnType, Index, StringLen, TableCreateStatement};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};
use sha2::{Digest, Sha256};

use crate::dialect::{self, Dialect, Place};
use crate::model::clock::Hlc;
use crate::model::error::{Error, Result};
use crate::model::merge::RowState;
use crate::model::typed;
use crate::store::clocks::{self, SHARED};
#[cfg(test)]
use crate::store::codec::db_sequence;
use crate::store::ddl::existing_columns;
#[cfg(test)]
use crate::store::write::Inserts;

/// The characters the `pk` column of a row-state table holds: a key text
/// up to this long is stored as is. (On MySQL the key `(tbl, pk)` takes
/// `(64 + 700) * 4` bytes of utf8mb4, within InnoDB's 3072.)
pub(crate) const STORED_KEY_CHARS: usize = 700;

/// What identifies the row of key text `key` in a row-state table (its
/// `pk` column): the key text itself when it has at most
/// [`STORED_KEY_CHARS`] characters, else `#` and the hex SHA-256 of the
/// text (the full text goes to `pk_full`). A key text is a JSON array, so
/// it never starts with `#`: a stored key names one key text. Characters,
/// not bytes: the column counts characters on every dialect, and each key
/// text a release before stored as is stays so.
///
/// Idempotent: a storage key is its own storage key.
pub(crate) fn storage_key(key: &str) -> Cow<'_, str> {
    // At most 4 bytes a character: a short text in bytes is short.
    if key.len() <= STORED_KEY_CHARS || key.chars().count() <= STORED_KEY_CHARS {
        return Cow::Borrowed(key);
    }
    let mut hashed = String::with_capacity(65);
    hashed.push('#');
    for b in Sha256::digest(key.as_bytes()) {
        hashed.push_str(&format!("{b:02x}"));
    }
    Cow::Owned(hashed)
}

/// DDL of a row-state table named `name` (as format 1 made them; the
/// tests make them so).
#[cfg(test)]
pub(crate) fn row_state_table(d: &dyn Dialect, name: &str) -> TableCreateStatement {
    let col = |n: &str, ty: ColumnType| {
        let mut c = ColumnDef::new_with_type(Alias::new(n), ty);
        c.not_null();
        c
    };
    Table::create()
        .table(Alias::new(name))
        .if_not_exists()
        .col(col("tbl", ColumnType::String(StringLen::N(64))))
        .col(col(
            "pk",
            ColumnType::String(StringLen::N(STORED_KEY_CHARS as u32)),
        ))
        .col(col("vals", d.long_text()))
        .col(col("clocks", d.long_text()))
        .col(
            ColumnDef::new_with_type(
                Alias::new("deleted_at"),
                ColumnType::String(StringLen::N(64)),
            )
            .null(),
        )
        .col(col("live", ColumnType::Boolean))
        .col(full_key_column(d))
        .primary_key(Index::create().col(Alias::new("tbl")).col(Alias::new("pk")))
        .to_owned()
}

/// The `pk_full` column: the key text of a row whose `pk` is its hash.
fn full_key_column(d: &dyn Dialect) -> ColumnDef {
    ColumnDef::new_with_type(Alias::new("pk_full"), d.long_text())
        .null()
        .to_owned()
}

/// Bring the row-state table `store` of a release before `pk_full` up to
/// date (idempotent): add the column and, in the same transaction, move
/// each key text longer than `pk` should hold (SQLite, which does not check
/// lengths, stored them as is) to `pk_full`, under its storage key.
pub(crate) async fn upgrade_row_state_table(db: &DatabaseConnection, store: &str) -> Result<()> {
    let d = dialect::of_db(db)?;
    let has = |columns: &[String]| columns.iter().any(|c| c == "pk_full");
    if has(&existing_columns(db, d, Place::own(store)).await?) {
        return Ok(());
    }
    let tx = db.begin().await?;
    let alter = Table::alter()
        .table(Alias::new(store))
        .add_column(full_key_column(d))
        .to_owned();
    if let Err(e) = tx.execute(&alter).await {
        drop(tx);
        // Another process added it meanwhile.
        if has(&existing_columns(db, d, Place::own(store)).await?) {
            return Ok(());
        }
        return Err(e.into());
    }
    let long = Statement::from_string(
        tx.get_database_backend(),
        format!(
            "SELECT {tbl}, {pk} FROM {store} WHERE LENGTH({pk}) > {STORED_KEY_CHARS}",
            tbl = d.quote("tbl"),
            pk = d.quote("pk"),
            store = d.quote(store),
        ),
    );
    for r in tx.query_all_raw(long).await? {
        let (tbl, key): (String, String) = (r.try_get("", "tbl")?, r.try_get("", "pk")?);
        let stored = storage_key(&key);
        if stored == key {
            continue;
        }
        let update = Query::update()
            .table(Alias::new(store))
            .value(Alias::new("pk"), stored.as_ref())
            .value(Alias::new("pk_full"), key.as_str())
            .and_where(Expr::col(Alias::new("tbl")).eq(tbl))
            .and_where(Expr::col(Alias::new("pk")).eq(key.as_str()))
            .to_owned();
        tx.execute(&update).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The key text of a row of a row-state table: `pk_full`, else `pk`.
pub(crate) fn key_text(r: &sea_orm::QueryResult) -> Result<String> {
    let full: Option<String> = r.try_get("", "pk_full")?;
    match full {
        Some(k) => Ok(k),
        None => Ok(r.try_get("", "pk")?),
    }
}

/// The columns a state is read from: its key (both columns) and the
/// columns [`StoredState::decode`] reads.
pub(crate) const STATE_COLUMNS: [&str; 5] = ["pk", "pk_full", "vals", "clocks", "deleted_at"];

/// Load the states of `keys` of `table` as stored, before the values they
/// take from a log entry are filled in.
///
/// On PostgreSQL, run [`custom_plans`](crate::store::stats::custom_plans) once in the transaction first: the
/// lookup relies on a plan made for its own keys.
pub(crate) async fn load_stored<C: ConnectionTrait>(
    db: &C,
    store: &str,
    table: &str,
    keys: &[String],
) -> Result<HashMap<String, StoredState>> {
    let mut out = HashMap::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let stored: Vec<String> = chunk.iter().map(|k| storage_key(k).into_owned()).collect();
        let q = Query::select()
            .columns(STATE_COLUMNS.map(Alias::new))
            .from(Alias::new(store))
            .and_where(Expr::col(Alias::new("tbl")).eq(table))
            .and_where(dialect::of_db(db)?.key_in(&stored)?)
            .to_owned();
        for r in db.query_all(&q).await? {
            out.insert(key_text(&r)?, StoredState::decode(&r)?);
        }
    }
    Ok(out)
}

/// A row state as stored: the values it holds itself, and the log entry
/// (by hub sequence) the others come from.
///
/// A hub's state would otherwise repeat the values of the log entry that
/// wrote them (for a row written by one insert, every value): it keeps, in
/// `vals` under the key `""` (no column has an empty name), the sequence of
/// one entry of the log, and only the values that entry does not hold.
/// Replicas' states hold every value.
#[derive(Debug)]
pub(crate) struct StoredState {
    vals: BTreeMap<String, sea_orm::Value>,
    clocks: String,
    deleted_at: Option<Hlc>,
    /// The log entry the values not in `vals` come from.
    pub(crate) reference: Option<u64>,
}

/// The columns a state takes from its log entry, each with its clock: what
/// a hub needs to tell whether they still hold that entry's values when it
/// saves the state again (see [`Referral`]).
pub(crate) type Referred = (u64, Vec<(String, Hlc)>);

impl StoredState {
    /// Decode the `vals`, `clocks` and `deleted_at` columns of a row.
    pub(crate) fn decode(r: &sea_orm::QueryResult) -> Result<StoredState> {
        let vals: String = r.try_get("", "vals")?;
        let clocks: String = r.try_get("", "clocks")?;
        let deleted_at: Option<String> = r.try_get("", "deleted_at")?;
        let mut vals: BTreeMap<String, sea_orm::Value> = typed::map_from_text(&vals)?;
        let reference = match vals.remove(SHARED) {
            None => None,
            Some(sea_orm::Value::BigInt(Some(seq))) if seq > 0 => Some(seq as u64),
            Some(v) => {
                return Err(Error::Corrupt(format!(
                    "row state refers to log entry {v:?}"
                )));
            }
        };
        Ok(StoredState {
            vals,
            clocks,
            deleted_at: deleted_at.map(|d| d.parse()).transpose()?,
            reference,
        })
    }

    /// The full state, given the columns of the log entry it refers to (if
    /// it refers to one; they are moved in, not copied), and what it took
    /// from that entry.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the state refers to an entry and
    /// `entry` is `None` (the entry is missing).
    pub(crate) fn fill(
        self,
        entry: Option<Vec<(String, sea_orm::Value)>>,
    ) -> Result<(RowState, Option<Referred>)> {
        let StoredState {
            mut vals,
            clocks,
            deleted_at,
            reference,
        } = self;
        let mut taken = Vec::new();
        if let Some(seq) = reference {
            let entry = entry.ok_or_else(|| {
                Error::Corrupt(format!("row state refers to a missing log entry {seq}"))
            })?;
            for (c, v) in entry {
                if let std::collections::btree_map::Entry::Vacant(e) = vals.entry(c) {
                    taken.push(e.key().clone());
                    e.insert(v);
                }
            }
        }
        let clocks = clocks::decode(&clocks, &vals)?;
        let referred = match reference {
            Some(seq) => {
                let mut cols = Vec::with_capacity(taken.len());
                for c in taken {
                    let h = *clocks.get(&c).ok_or_else(|| {
                        Error::Corrupt(format!("row state without a clock for `{c}`"))
                    })?;
                    cols.push((c, h));
                }
                Some((seq, cols))
            }
            None => None,
        };
        Ok((
            RowState {
                vals,
                clocks,
                deleted_at,
            },
            referred,
        ))
    }
}

/// The log entry a saved state takes some values from, and which columns.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Referral<'a> {
    /// The entry's hub sequence.
    pub(crate) seq: u64,
    /// The columns whose value the state takes from it (the entry holds
    /// exactly the state's value for each).
    pub(crate) columns: &'a [String],
}

/// The multi-row upserts that insert or replace the states of rows of
/// `table`; a state with a [`Referral`] leaves out the values its log entry
/// holds (see [`StoredState`]). The tests write format 1 states with it: no
/// store is written in this format since hub schema version 3 (the hub's
/// states moved to version tables).
#[cfg(test)]
pub(crate) fn state_statements(
    store: &str,
    table: &str,
    states: &[(&str, &RowState, Option<Referral<'_>>)],
) -> Result<Vec<sea_orm::Statement>> {
    let mut template = Query::insert();
    template
        .into_table(Alias::new(store))
        .columns(
            [
                "tbl",
                "pk",
                "pk_full",
                "vals",
                "clocks",
                "deleted_at",
                "live",
            ]
            .map(Alias::new),
        )
        .on_conflict(
            sea_orm::sea_query::OnConflict::columns([Alias::new("tbl"), Alias::new("pk")])
                .update_columns(["vals", "clocks", "deleted_at", "live"].map(Alias::new))
                .to_owned(),
        );
    let mut rows = Vec::with_capacity(states.len());
    for (key, s, referral) in states {
        let vals = match referral {
            None => typed::map_to_text(&s.vals.iter().collect())?,
            Some(r) => {
                let reference = sea_orm::Value::BigInt(Some(db_sequence(r.seq)?));
                let mut own: BTreeMap<&str, &sea_orm::Value> = s
                    .vals
                    .iter()
                    .filter(|(c, _)| !r.columns.contains(c))
                    .map(|(c, v)| (c.as_str(), v))
                    .collect();
                own.insert(SHARED, &reference);
                typed::map_to_text(&own)?
            }
        };
        let clocks = clocks::encode(&s.clocks, &s.vals)?;
        let stored = storage_key(key);
        let full = (stored != *key).then_some(*key);
        let size = stored.len() + full.map_or(0, str::len) + vals.len() + clocks.len() + 80;
        rows.push((
            vec![
                sea_orm::Value::from(table),
                stored.into_owned().into(),
                full.into(),
                vals.into(),
                clocks.into(),
                s.deleted_at.map(|d| d.to_string()).into(),
                s.is_live().into(),
            ],
            size,
        ));
    }
    Inserts::plain(sea_orm::DbBackend::Sqlite, template, 7).statements(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing;
    use sea_orm::Value;

    fn hlc(t: u64) -> Hlc {
        testing::hlc(t, 7)
    }

    fn state(cols: &[(&str, u64)]) -> (BTreeMap<String, Hlc>, BTreeMap<String, Value>) {
        testing::clocked(cols)
    }

    #[test]
    fn row_state_tables_are_keyed_by_table_and_row() {
        use sea_orm::sea_query::{MysqlQueryBuilder, SqliteQueryBuilder};
        assert_eq!(
            row_state_table(
                crate::dialect::of(sea_orm::DbBackend::Sqlite).unwrap(),
                "_tidesync_rows"
            )
            .to_string(SqliteQueryBuilder),
            r#"CREATE TABLE IF NOT EXISTS "_tidesync_rows" ( "tbl" varchar(64) NOT NULL, "pk" varchar(700) NOT NULL, "vals" text NOT NULL, "clocks" text NOT NULL, "deleted_at" varchar(64) NULL, "live" boolean NOT NULL, "pk_full" text NULL, PRIMARY KEY ("tbl", "pk") )"#
        );
        // MySQL's TEXT holds 64 KiB: values and clocks are LONGTEXT there.
        assert_eq!(
            row_state_table(
                crate::dialect::of(sea_orm::DbBackend::MySql).unwrap(),
                "_tidesync_rows"
            )
            .to_string(MysqlQueryBuilder),
            "CREATE TABLE IF NOT EXISTS `_tidesync_rows` ( `tbl` varchar(64) NOT NULL, `pk` varchar(700) NOT NULL, `vals` LONGTEXT NOT NULL, `clocks` LONGTEXT NOT NULL, `deleted_at` varchar(64) NULL, `live` bool NOT NULL, `pk_full` LONGTEXT NULL, PRIMARY KEY (`tbl`, `pk`) )"
        );
    }

    /// A row inserted (a, b, c at 5) by hub log entry 7, then b set at 9:
    /// the state keeps b and takes a and c from the entry.
    #[test]
    fn a_state_takes_the_values_its_log_entry_holds() {
        let (clocks, mut vals) = state(&[("a", 5), ("b", 9), ("c", 5)]);
        vals.insert("b".into(), Value::Int(Some(2)));
        let stored = || StoredState {
            vals: [("b".to_owned(), Value::Int(Some(2)))].into(),
            clocks: clocks::encode(&clocks, &vals).unwrap(),
            deleted_at: None,
            reference: Some(7),
        };
        let entry: Vec<(String, Value)> = ["a", "b", "c"]
            .map(|c| (c.to_owned(), Value::Int(Some(1))))
            .into();
        let (full, referred) = stored().fill(Some(entry)).unwrap();
        assert_eq!(
            full,
            RowState {
                vals: vals.clone(),
                clocks: clocks.clone(),
                deleted_at: None
            }
        );
        assert_eq!(
            referred,
            Some((7, vec![("a".to_owned(), hlc(5)), ("c".to_owned(), hlc(5))]))
        );
        // The entry is gone: the state cannot be read.
        assert!(matches!(stored().fill(None), Err(Error::Corrupt(_))));
    }

    #[test]
    fn a_state_without_a_log_entry_is_read_as_stored() {
        let (clocks, vals) = state(&[("a", 5), ("b", 9)]);
        let stored = StoredState {
            vals: vals.clone(),
            clocks: clocks::encode(&clocks, &vals).unwrap(),
            deleted_at: Some(hlc(7)),
            reference: None,
        };
        let (full, referred) = stored.fill(None).unwrap();
        assert_eq!(
            full,
            RowState {
                vals,
                clocks,
                deleted_at: Some(hlc(7))
            }
        );
        assert_eq!(referred, None);
    }

    fn live(cols: &[(&str, u64)], deleted: Option<u64>) -> RowState {
        let (clocks, vals) = state(cols);
        RowState {
            vals,
            clocks,
            deleted_at: deleted.map(hlc),
        }
    }

    #[test]
    fn states_are_upserted_with_their_own_values_only() {
        let whole = live(&[("a", 5), ("b", 5)], None);
        let gone = RowState {
            deleted_at: Some(hlc(9)),
            ..live(&[("a", 5)], None)
        };
        // Log entry 3 holds the value of `a`: the state keeps `b` only.
        let referred = ["a".to_owned()];
        let qs = state_statements(
            "_tidesync_rows",
            "t",
            &[
                ("[1]", &whole, None),
                ("[2]", &gone, None),
                (
                    "[3]",
                    &whole,
                    Some(Referral {
                        seq: 3,
                        columns: &referred,
                    }),
                ),
            ],
        )
        .unwrap();
        let clock = |t: u64| hlc(t).to_string();
        assert_eq!(qs.len(), 1);
        assert_eq!(
            qs[0].to_string(),
            format!(
                r#"INSERT INTO "_tidesync_rows" ("tbl", "pk", "pk_full", "vals", "clocks", "deleted_at", "live") VALUES ('t', '[1]', NULL, '{{"a":{{"Int":1}},"b":{{"Int":1}}}}', '{{"":"{c5}"}}', NULL, TRUE), ('t', '[2]', NULL, '{{"a":{{"Int":1}}}}', '{{"a":"{c5}"}}', '{c9}', FALSE), ('t', '[3]', NULL, '{{"":{{"BigInt":3}},"b":{{"Int":1}}}}', '{{"":"{c5}"}}', NULL, TRUE) ON CONFLICT ("tbl", "pk") DO UPDATE SET "vals" = "excluded"."vals", "clocks" = "excluded"."clocks", "deleted_at" = "excluded"."deleted_at", "live" = "excluded"."live""#,
                c5 = clock(5),
                c9 = clock(9),
            )
        );
        assert!(
            state_statements("_tidesync_rows", "t", &[])
                .unwrap()
                .is_empty()
        );
    }

    /// A key text of at most 700 characters is stored as is, however many
    /// bytes (the column counts characters); a longer one by `#` and its
    /// SHA-256, one per text.
    #[test]
    fn long_key_texts_are_stored_by_their_hash() {
        let short = format!("[{{\"String\":\"{}\"}}]", "é".repeat(600));
        assert!(short.len() > STORED_KEY_CHARS);
        assert_eq!(short.chars().count(), 615);
        assert!(matches!(storage_key(&short), Cow::Borrowed(k) if k == short));
        let at = |n: usize| format!("[{}]", "1".repeat(n - 2));
        assert_eq!(storage_key(&at(700)), at(700));
        let long = storage_key(&at(701)).into_owned();
        assert_eq!(long.len(), 65);
        assert!(long.starts_with('#'));
        assert!(
            long[1..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        // The SHA-256 of the text, so stable across releases.
        assert_eq!(
            storage_key(&"a".repeat(1000)),
            "#41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
        );
        assert_ne!(storage_key(&at(702)), long);
        let mut other = at(701);
        other.replace_range(1..2, "2");
        assert_ne!(storage_key(&other), long);
        // A stored key is its own.
        assert_eq!(storage_key(&long), long);
    }

    /// A long key's state is saved under its hash, with the text beside it.
    #[test]
    fn a_long_keys_state_keeps_its_text() {
        let key = format!("[{}]", "7".repeat(800));
        let s = live(&[("a", 5)], None);
        let qs = state_statements("r", "t", &[(key.as_str(), &s, None)]).unwrap();
        let values = qs[0].values.clone().unwrap();
        assert_eq!(values.0[1], Value::from(storage_key(&key).into_owned()));
        assert_eq!(values.0[2], Value::from(key));
    }

    #[test]
    fn each_statement_of_states_binds_at_most_max_bytes() {
        use crate::store::write::MAX_BYTES;
        let big = Value::String(Some("x".repeat(10_000)));
        let states: Vec<(String, RowState)> = (0..1000)
            .map(|i| {
                let mut s = live(&[("a", 5)], Some(1));
                s.vals.insert("a".into(), big.clone());
                (format!("[{i}]"), s)
            })
            .collect();
        let rows: Vec<_> = states.iter().map(|(k, s)| (k.as_str(), s, None)).collect();
        let qs = state_statements("_tidesync_rows", "t", &rows).unwrap();
        let bytes: Vec<usize> = qs
            .iter()
            .map(|q| {
                q.values
                    .as_ref()
                    .unwrap()
                    .0
                    .iter()
                    .map(|v| match v {
                        Value::String(Some(s)) => s.len(),
                        _ => 1,
                    })
                    .sum()
            })
            .collect();
        assert!(bytes.iter().all(|b| *b <= MAX_BYTES), "{bytes:?}");
        // And no more statements than needed.
        let total: usize = bytes.iter().sum();
        assert_eq!(qs.len(), total.div_ceil(MAX_BYTES), "{bytes:?}");
    }

    #[test]
    fn long_keys_count_once_toward_a_statements_size() {
        use crate::store::write::MAX_BYTES;
        // Keys long enough to be stored by hash (the whole key kept beside
        // it), small values: the keys' bytes alone fill statements, each
        // counted once.
        let keys: Vec<String> = (0..600)
            .map(|i| format!("[\"{}{i}\"]", "k".repeat(9000)))
            .collect();
        let s = live(&[("a", 5)], Some(1));
        let rows: Vec<_> = keys.iter().map(|k| (k.as_str(), &s, None)).collect();
        let qs = state_statements("_tidesync_rows", "t", &rows).unwrap();
        // 600 rows of about 9 KB: 5.4 MB, two or three statements.
        assert!((2..=3).contains(&qs.len()), "{} statements", qs.len());
        for q in &qs {
            let bytes: usize = q
                .values
                .as_ref()
                .unwrap()
                .0
                .iter()
                .map(|v| match v {
                    Value::String(Some(s)) => s.len(),
                    _ => 1,
                })
                .sum();
            assert!(bytes <= MAX_BYTES, "{bytes}");
        }
    }
}
