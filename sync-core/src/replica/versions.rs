//! The replica's row states (schema version 2): one *version table* per
//! synced table, `_ts_v_<table>`, with one row per row this replica has
//! seen: the key in the table's own column types, then the state's column
//! clocks, delete clock and values in binary (see
//! [`crate::store::versions`]), and whether the row is live.
//!
//! Format 1 kept the states of every table in one table under the key's
//! text, as typed JSON. A table of its own with the native key lets later
//! steps read a state joined with its row and marker, and the binary
//! columns cost a fraction of the JSON to write and read.
//!
//! Keys are written and looked up in their canonical form
//! ([`canonical_key`]: a decimal without trailing zeros, a date-time with
//! an offset at UTC), so a key that SQLite keeps as text is found however
//! it was read. States come back under their key's text
//! ([`pk_key`]), which callers compare with the texts of the keys they
//! asked for; a state the database finds under a key of another text (a
//! case-insensitive key type, a key typed otherwise by another release) is
//! an error, not a state taken for missing.
//!
//! Column ordinals are registered in `_tidesync_columns` (table, column,
//! ordinal), append-only: a column keeps its ordinal for good, so a state
//! written before an entity gained or dropped a column reads the same
//! after. The register is read once per batch ([`Versions::open`]), and
//! again when a state names an ordinal it does not know (a column another
//! process registered meanwhile).

use std::collections::HashMap;

use rustc_hash::FxHashSet;

use sea_orm::sea_query::{
    Alias, Expr, ExprTrait, InsertStatement, OnConflict, Order, Query, SimpleExpr,
};
use sea_orm::{ConnectionTrait, QueryResult, Value};

use super::entity::TableHandle;
use super::tables::{COLUMNS, version_table};
use crate::dialect::{self, Dialect};
use crate::model::change::TableSpec;
use crate::model::error::{Error, Result};
use crate::model::merge::RowState;
use crate::model::value::{canonical_key, pk_key};
use crate::store::versions::{self, Encoded, Ordinals};
use crate::store::write::{MAX_ROWS, batched, keys_match};

/// The version table of one synced table, with its column register, for
/// the length of a transaction.
pub(crate) struct Versions<'a> {
    handle: &'a dyn TableHandle,
    ords: Ordinals,
    d: &'static dyn Dialect,
}

/// The columns of a version row after its key.
const STATE: [&str; 3] = ["clocks", "del", "vals"];

impl<'a> Versions<'a> {
    /// Read the column register of `handle`'s table.
    pub(crate) async fn open<C: ConnectionTrait>(
        db: &C,
        handle: &'a dyn TableHandle,
    ) -> Result<Versions<'a>> {
        Ok(Versions {
            handle,
            ords: read_ordinals(db, &handle.spec().name).await?,
            d: dialect::of_db(db)?,
        })
    }

    fn spec(&self) -> &'a TableSpec {
        self.handle.spec()
    }

    fn table(&self) -> Alias {
        Alias::new(version_table(&self.spec().name))
    }

    fn select(&self) -> sea_orm::sea_query::SelectStatement {
        let mut q = Query::select();
        q.columns(self.spec().pk.iter().map(|c| Alias::new(&c.name)))
            .columns(STATE.map(Alias::new))
            .from(self.table());
        q
    }

    /// A version row as its key values and state. A column ordinal not in
    /// the register read at [`Versions::open`] (a column another process
    /// registered since: registration holds the capture lock, readers such
    /// as reconcile need not) is looked up again once.
    async fn read<C: ConnectionTrait>(
        &mut self,
        db: &C,
        r: &QueryResult,
    ) -> Result<(Vec<Value>, RowState)> {
        match self.decode(r) {
            Err(Error::Corrupt(_)) => {
                self.ords = read_ordinals(db, &self.spec().name).await?;
                self.decode(r)
            }
            other => other,
        }
    }

    fn decode(&self, r: &QueryResult) -> Result<(Vec<Value>, RowState)> {
        let key = self.handle.read_key(r)?;
        let clocks: Vec<u8> = r.try_get("", "clocks")?;
        let del: Option<Vec<u8>> = r.try_get("", "del")?;
        let vals: Vec<u8> = r.try_get("", "vals")?;
        let state =
            versions::decode(&clocks, del.as_deref(), &vals, &self.ords).map_err(|e| match e {
                Error::Corrupt(m) => Error::Corrupt(format!(
                    "{} {}: {m}",
                    self.spec().name,
                    pk_key(&key).unwrap_or_default()
                )),
                e => e,
            })?;
        Ok((key, state))
    }

    /// The states of `keys`, by key text ([`pk_key`]); keys without one
    /// are absent.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the database finds a state under a key whose
    /// text is none of the texts asked for (a case-insensitive key type, a
    /// key typed otherwise by another release of the app): the caller would
    /// take the row for one without a state and overwrite its state.
    pub(crate) async fn load<C: ConnectionTrait>(
        &mut self,
        db: &C,
        keys: &[Vec<Value>],
    ) -> Result<HashMap<String, RowState>> {
        let texts: Vec<String> = keys.iter().map(|k| pk_key(k)).collect::<Result<_>>()?;
        let keys: Vec<&[Value]> = keys.iter().map(Vec::as_slice).collect();
        self.load_keyed(db, &keys, &texts).await
    }

    /// [`Versions::load`] of keys whose texts the caller has: `texts[i]`
    /// is `pk_key(keys[i])`.
    pub(crate) async fn load_keyed<C: ConnectionTrait>(
        &mut self,
        db: &C,
        keys: &[&[Value]],
        texts: &[String],
    ) -> Result<HashMap<String, RowState>> {
        debug_assert_eq!(keys.len(), texts.len());
        let asked: FxHashSet<&str> = texts.iter().map(String::as_str).collect();
        let mut out = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_ROWS) {
            let chunk: Vec<Vec<Value>> = chunk.iter().map(|k| canonical_key(k)).collect();
            let q = self
                .select()
                .and_where(keys_match(self.spec(), &chunk, self.d))
                .to_owned();
            for r in db.query_all(&q).await? {
                let (key, state) = self.read(db, &r).await?;
                let text = pk_key(&key)?;
                if !asked.contains(text.as_str()) {
                    return Err(Error::Corrupt(format!(
                        "{}: the state of key {text} was found for another key text; the key's \
                         type differs between the table, this release and the row's origin",
                        self.spec().name
                    )));
                }
                out.insert(text, state);
            }
        }
        Ok(out)
    }

    /// A page of states in key order after the key `after`, at most
    /// `limit`, only live ones if `live`. A page shorter than `limit` is
    /// the last.
    pub(crate) async fn page<C: ConnectionTrait>(
        &mut self,
        db: &C,
        after: Option<&[Value]>,
        live: bool,
        limit: u64,
    ) -> Result<Vec<(Vec<Value>, RowState)>> {
        let spec = self.spec();
        let mut q = self.select();
        for c in &spec.pk {
            q.order_by(Alias::new(&c.name), Order::Asc);
        }
        q.limit(limit);
        if live {
            q.and_where(Expr::col(Alias::new("live")).eq(true));
        }
        if let Some(after) = after {
            let values: Vec<SimpleExpr> = spec
                .pk
                .iter()
                .zip(canonical_key(after))
                .map(|(c, v)| self.d.write_value(&c.ty, v))
                .collect();
            let cols: Vec<SimpleExpr> = spec
                .pk
                .iter()
                .map(|c| Expr::col(Alias::new(&c.name)))
                .collect();
            q.and_where(key_after(&cols, &values));
        }
        let mut out = Vec::new();
        for r in db.query_all(&q).await? {
            out.push(self.read(db, &r).await?);
        }
        Ok(out)
    }

    /// Register the columns of `states` that have no ordinal yet.
    pub(crate) async fn register<'s, C: ConnectionTrait>(
        &mut self,
        db: &C,
        states: impl Iterator<Item = &'s RowState>,
    ) -> Result<()> {
        let missing = self.ords.missing(states);
        if !missing.is_empty() {
            let table = self.spec().name.clone();
            self.ords = register(db, &table, &missing).await?;
        }
        Ok(())
    }

    /// The multi-row upserts that save `states` (key values and state);
    /// their columns must be registered (see [`Versions::register`]).
    /// Built without a database, so that a caller can build them while the
    /// database works (see [`crate::store::write::execute_while`]).
    pub(crate) fn statements(
        &self,
        states: &[(&[Value], &RowState)],
    ) -> Result<Vec<InsertStatement>> {
        let spec = self.spec();
        let mut template = Query::insert();
        let keys: Vec<Alias> = spec.pk.iter().map(|c| Alias::new(&c.name)).collect();
        let state = ["clocks", "del", "vals", "live"].map(Alias::new);
        template
            .into_table(self.table())
            .columns(keys.iter().cloned().chain(state.iter().cloned()))
            .on_conflict(OnConflict::columns(keys).update_columns(state).to_owned());
        let mut rows = Vec::with_capacity(states.len());
        for (key, s) in states {
            let Encoded {
                clocks,
                del,
                vals,
                live,
            } = versions::encode(s, &self.ords)?;
            let size = clocks.len() + vals.len() + 64;
            let mut row: Vec<SimpleExpr> = spec
                .pk
                .iter()
                .zip(canonical_key(key))
                .map(|(c, v)| self.d.write_value(&c.ty, v))
                .collect();
            row.extend([
                Expr::val(clocks),
                Expr::val(Value::Bytes(del)),
                Expr::val(vals),
                Expr::val(live),
            ]);
            rows.push((row, size));
        }
        Ok(batched(&template, rows))
    }

    /// Register the columns of `states` and save them.
    pub(crate) async fn save<C: ConnectionTrait>(
        &mut self,
        db: &C,
        states: &[(&[Value], &RowState)],
    ) -> Result<()> {
        self.register(db, states.iter().map(|(_, s)| *s)).await?;
        for q in self.statements(states)? {
            db.execute(&q).await?;
        }
        Ok(())
    }
}

/// The key `columns` after the key `values`, in key order: `a > x OR (a =
/// x AND (b > y OR ...))`, which every dialect serves from the key's index
/// (MySQL does not from a row comparison).
fn key_after(columns: &[SimpleExpr], values: &[SimpleExpr]) -> SimpleExpr {
    match (columns, values) {
        ([c, cs @ ..], [v, vs @ ..]) if !cs.is_empty() => c
            .clone()
            .gt(v.clone())
            .or(c.clone().eq(v.clone()).and(key_after(cs, vs))),
        ([c, ..], [v, ..]) => c.clone().gt(v.clone()),
        _ => Expr::val(false),
    }
}

/// The column register of `table`.
async fn read_ordinals<C: ConnectionTrait>(db: &C, table: &str) -> Result<Ordinals> {
    let q = Query::select()
        .columns([Alias::new("col"), Alias::new("ord")])
        .from(Alias::new(COLUMNS))
        .and_where(Expr::col(Alias::new("tbl")).eq(table))
        .to_owned();
    let mut pairs = Vec::new();
    for r in db.query_all(&q).await? {
        let ord: i32 = r.try_get("", "ord")?;
        let ord = u16::try_from(ord)
            .map_err(|_| Error::Corrupt(format!("{COLUMNS}: ordinal {ord} of `{table}`")))?;
        pairs.push((r.try_get("", "col")?, ord));
    }
    Ok(Ordinals::new(pairs))
}

/// Give `columns` of `table` the next ordinals, where they have none, and
/// return the register. Callers hold the capture lock, so no two
/// registrations pick an ordinal at once; should one still (a lock not
/// taken), the unique index on `(tbl, ord)` fails the second insert, or on
/// MySQL it adds nothing and the column gets the next ordinal.
pub(crate) async fn register<C: ConnectionTrait>(
    db: &C,
    table: &str,
    columns: &[String],
) -> Result<Ordinals> {
    let mut ords = read_ordinals(db, table).await?;
    for c in columns {
        // A few tries: each lost race means another column took the
        // ordinal, so the next read finds a higher one.
        for _ in 0..8 {
            if ords.of(c).is_some() {
                break;
            }
            let q = Query::insert()
                .into_table(Alias::new(COLUMNS))
                .columns(["tbl", "col", "ord"].map(Alias::new))
                .values_panic([
                    table.into(),
                    c.as_str().into(),
                    i32::from(ords.next()?).into(),
                ])
                .on_conflict(
                    OnConflict::columns([Alias::new("tbl"), Alias::new("col")])
                        .do_nothing_on([Alias::new("tbl")])
                        .to_owned(),
                )
                .to_owned();
            db.execute(&q).await?;
            ords = read_ordinals(db, table).await?;
        }
        if ords.of(c).is_none() {
            return Err(Error::Corrupt(format!(
                "{COLUMNS}: no ordinal could be given to `{table}`.`{c}`"
            )));
        }
    }
    Ok(ords)
}
