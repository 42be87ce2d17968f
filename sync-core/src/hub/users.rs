//! The hub's row states in its users' tables (hub schema version 6, step
//! 2e of the next format): a live row written by a push carries its
//! metadata in columns of its own ([`ROW_META`]: position, clocks, delete
//! clock, sole writer, owner), so its state is its values there with those
//! clocks, read without a version row.
//!
//! A users' row holds the values of every column any device's entity
//! synced, not only the columns this process's entity knows: each column
//! is read by the spec the register records for it (see
//! [`VersionTables::specs`](crate::store::version_table::VersionTables)).
//! A column without a recorded spec, or with one this release cannot
//! read, is read by this process's entity where it syncs the column. A row
//! whose clocks name a column read neither way, or an ordinal the register
//! does not hold, cannot be read here: it is left to the version table, as
//! a row without metadata is (written by another program, or by a release
//! before this one).
//!
//! A push writes a live row's state here only: its version row is deleted
//! when it has one (a row brought back, a row of a release before this
//! one). It keeps a version row beside the users' row only where the
//! users' row cannot carry the state whole (see [`carries`]). A row that
//! is gone has its version row only, with its values (an update that
//! brings it back merges with them).

use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::{
    Alias, ArrayType, Expr, ExprTrait, Order, Query, SelectStatement, SimpleExpr,
};
use sea_orm::{ConnectionTrait, QueryResult, Value};

use crate::dialect::{Dialect, Place};
use crate::model::change::{ColumnSpec, TableSpec};
use crate::model::clock::NodeId;
use crate::model::error::{Error, Result};
use crate::model::merge::RowState;
use crate::model::value::{key_identity, pk_key};
use crate::store::codec::{db_sequence, sequence};
use crate::store::version_table::{
    AtPosition, ROW_META, Versions, another_key, asked_by_identity, asked_kinds, read_key,
    undecodable,
};
use crate::store::versions::{Ordinals, apply_forms, decode_row_clocks};
use crate::store::write::{MAX_ROWS, keys_match};

/// Row states by key text, each with the origin it records as its sole
/// writer.
pub(crate) type States = HashMap<String, (RowState, Option<NodeId>)>;

/// The users' table of one synced table, read for the states its rows
/// carry.
pub(crate) struct UserRows<'a> {
    /// The table as this process places it (its key columns, its place).
    spec: &'a TableSpec,
    d: &'static dyn Dialect,
}

impl<'a> UserRows<'a> {
    pub(crate) fn new(d: &'static dyn Dialect, spec: &'a TableSpec) -> UserRows<'a> {
        UserRows { spec, d }
    }

    /// The states of `keys` (`texts[i]` is `pk_key(keys[i])`) that the
    /// users' table holds with their metadata, with the origin each
    /// records as its sole writer, by key text; `ords` is the table's
    /// register with its specs. Keys whose row has no metadata, or whose
    /// row cannot be read here (see the module), are absent: the caller
    /// looks them up in the version table. Those of rows with metadata
    /// that cannot be decoded come second, each with why: where the
    /// version table holds no row of the key, the caller must not take it
    /// for a row without a state.
    ///
    /// # Errors
    /// An error of kind [`UniqueViolation`](crate::model::error::ErrorKind)
    /// when the database finds a row under a key that is none of those
    /// asked (a collation that ignores case or trailing spaces), as
    /// [`Versions::load_keyed`](crate::store::version_table::Versions::load_keyed).
    pub(crate) async fn load<C: ConnectionTrait>(
        &self,
        db: &C,
        ords: &Ordinals,
        keys: &[&[Value]],
        texts: &[String],
    ) -> Result<(States, HashMap<String, Error>)> {
        debug_assert_eq!(keys.len(), texts.len());
        let asked = asked_by_identity(keys, texts)?;
        let mut out = HashMap::with_capacity(keys.len());
        let mut unreadable = HashMap::new();
        // On SQLite a key is stored in the form it was pushed in, and a
        // decimal or a date-time with an offset has several: such a key
        // is left to the version table, which keeps one form.
        let one_form: Vec<&[Value]> = keys
            .iter()
            .copied()
            .filter(|k| !self.d.keeps_bound_forms() || !several_forms(k))
            .collect();
        for chunk in one_form.chunks(MAX_ROWS) {
            let kinds = asked_kinds(chunk);
            let chunk: Vec<Vec<Value>> = chunk.iter().map(|k| k.to_vec()).collect();
            let mut q = self.select(ords);
            q.and_where(keys_match(self.spec, &chunk, self.d));
            for r in db.query_all(&q).await? {
                // A key that cannot be read (the database found it under
                // one asked for) fails the lookup: which row's state it is
                // cannot be told, and taking the row for one without a
                // state would lose it.
                let key = self.key(&r, kinds.as_deref())?;
                let Some(text) = asked.get(&key_identity(&key)?) else {
                    return Err(another_key(&self.spec.name, &pk_key(&key)?));
                };
                // A row that cannot be read here (a value its recorded
                // spec does not read, garbled metadata) is left to its
                // version row, as one without metadata is.
                let state = match self.state(&r, &key, ords) {
                    Ok(Some(state)) => state,
                    Ok(None) => {
                        let e = Error::Corrupt(format!(
                            "`{}`: the row {text} carries a clock of a column the register \
                             records no readable spec of, or does not hold",
                            self.spec.name
                        ));
                        tracing::warn!(table = %self.spec.name, key = %text, error = %e, "a users' row's state cannot be read: taken from its version row, if it has one");
                        unreadable.insert((*text).to_owned(), e);
                        continue;
                    }
                    Err(e) if undecodable(&e) => {
                        tracing::warn!(table = %self.spec.name, key = %text, error = %e, "a users' row's state cannot be read: taken from its version row, if it has one");
                        unreadable.insert((*text).to_owned(), e);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                // A sole writer that cannot be read is none: the row is
                // then sent to its writer too, which is harmless.
                let sole = r
                    .try_get::<Option<String>>("", ROW_META[3])?
                    .and_then(|n| n.parse().ok());
                out.insert((*text).to_owned(), (state, sole));
            }
        }
        Ok((out, unreadable))
    }

    /// The states of `keys` (`texts[i]` is `pk_key(keys[i])`) wherever
    /// the hub keeps them, by key text, with the origin each records as
    /// its sole writer: the users' rows first (unless `users` is false: a
    /// table without [`ROW_META`]), the version table of `versions` for
    /// the others. Returns too the keys found in the version table. A
    /// users' row with metadata that cannot be read, and no version row,
    /// fails the lookup: its state is not empty, and taking it for a row
    /// without one would lose it.
    pub(crate) async fn load_anywhere<C: ConnectionTrait>(
        &self,
        db: &C,
        versions: &mut Versions<'_>,
        keys: &[&[Value]],
        texts: &[String],
        users: bool,
    ) -> Result<(States, HashSet<String>)> {
        let (mut found, mut unreadable) = match users {
            true => self.load(db, versions.ordinals(), keys, texts).await?,
            false => Default::default(),
        };
        let (rest, rest_texts): (Vec<&[Value]>, Vec<String>) = keys
            .iter()
            .zip(texts)
            .filter(|(_, t)| !found.contains_key(*t))
            .map(|(v, t)| (*v, t.clone()))
            .unzip();
        let kept = match rest.is_empty() {
            true => HashMap::new(),
            false => versions.load_with_sole(db, &rest, &rest_texts).await?,
        };
        unreadable.retain(|k, _| !kept.contains_key(k));
        if let Some((_, e)) = unreadable.into_iter().next() {
            return Err(e);
        }
        let in_versions = kept.keys().cloned().collect();
        found.extend(kept);
        Ok((found, in_versions))
    }

    /// Up to `limit` rows whose position is in `(cursor, tip]` and that
    /// `filter` keeps (on the columns of [`ROW_META`]), in position order,
    /// as [`Versions::after`](crate::store::version_table::Versions::after)
    /// reads version rows. A row whose state cannot be read here (see the
    /// module) comes as its error, in its place: the caller takes the
    /// version row at that position instead, where there is one.
    pub(crate) async fn after<C: ConnectionTrait>(
        &self,
        db: &C,
        ords: &Ordinals,
        cursor: u64,
        tip: u64,
        limit: u64,
        filter: Option<SimpleExpr>,
    ) -> Result<Vec<AtPosition>> {
        let seq = || Expr::col(Alias::new(ROW_META[0]));
        let mut q = self.select(ords);
        q.and_where(seq().gt(db_sequence(cursor)?))
            .and_where(seq().lte(db_sequence(tip)?))
            .order_by(Alias::new(ROW_META[0]), Order::Asc)
            .limit(limit);
        if let Some(f) = filter {
            q.and_where(f);
        }
        let mut out = Vec::new();
        for r in db.query_all(&q).await? {
            let row = self
                .key(&r, None)
                .and_then(|key| match self.state(&r, &key, ords)? {
                    Some(state) => Ok((key, state)),
                    None => Err(Error::Corrupt(format!(
                        "`{}`: a row whose clocks name a column the register records no spec \
                     of, or does not hold",
                        self.spec.name
                    ))),
                });
            let row = match row {
                Ok(row) => Ok(row),
                Err(e) if undecodable(&e) => Err((e, raw_meta(&r))),
                Err(e) => return Err(e),
            };
            out.push(AtPosition {
                hub_seq: sequence(&r, ROW_META[0])?,
                owner: r.try_get("", ROW_META[4])?,
                row,
            });
        }
        Ok(out)
    }

    /// The rows of the users' table that carry metadata: their key
    /// columns, every registered column with a recorded spec (a row's
    /// clocks name no other, or it is read elsewhere) and the metadata.
    fn select(&self, ords: &Ordinals) -> SelectStatement {
        let mut q = Query::select();
        for c in &self.spec.pk {
            q.expr_as(self.d.read_key_column(&c.ty, &c.name), Alias::new(&c.name));
        }
        for c in ords
            .names()
            .filter_map(|c| self.column_spec(ords, c))
            .filter(|c| !self.spec.pk.iter().any(|k| k.name == c.name))
        {
            q.expr_as(self.d.read_key_column(&c.ty, &c.name), Alias::new(&c.name));
        }
        q.columns(ROW_META.map(Alias::new))
            .from(Place::of(self.d, self.spec).table_ref())
            .and_where(Expr::col(Alias::new(ROW_META[0])).is_not_null());
        q
    }

    /// The spec a column is read by: the one the register records, else
    /// (none recorded, or one this release cannot read) this process's
    /// entity's, where it syncs the column.
    fn column_spec<'s>(&'s self, ords: &'s Ordinals, name: &str) -> Option<&'s ColumnSpec> {
        ords.spec(name)
            .or_else(|| self.spec.columns.iter().find(|c| c.name == name))
    }

    /// A row's key: each column as `kinds` says (the variants asked for),
    /// else as its kind.
    fn key(&self, r: &QueryResult, kinds: Option<&[ArrayType]>) -> Result<Vec<Value>> {
        read_key(self.spec, r, kinds)
    }

    /// The state a row carries: each clocked column's value read by its
    /// recorded spec. `None` when a clock names a column without one, or
    /// an ordinal the register does not hold.
    fn state(&self, r: &QueryResult, key: &[Value], ords: &Ordinals) -> Result<Option<RowState>> {
        let clocks: Vec<u8> = r.try_get("", ROW_META[1])?;
        let del: Option<Vec<u8>> = r.try_get("", ROW_META[2])?;
        let Some((clocks, deleted_at)) = decode_row_clocks(&clocks, del.as_deref(), ords)? else {
            return Ok(None);
        };
        let mut state = RowState {
            vals: Default::default(),
            clocks: Default::default(),
            deleted_at,
        };
        for (name, hlc) in clocks {
            // A key column's value as the key was read (the variant
            // asked for); another by its recorded spec.
            let value = match self.spec.pk.iter().position(|k| k.name == name) {
                Some(i) => key[i].clone(),
                None => match self.column_spec(ords, &name) {
                    Some(spec) => spec.read(r)?,
                    None => return Ok(None),
                },
            };
            state.vals.insert(name.clone(), value);
            state.clocks.insert(name, hlc);
        }
        let forms: Option<Vec<u8>> = r.try_get("", ROW_META[5])?;
        if let Some(forms) = forms {
            apply_forms(&forms, ords, &mut state.vals)?;
        }
        Ok(Some(state))
    }
}

/// Whether the users' row of `key` can carry `state` whole, so that its
/// table needs no version row of it: not where the dialect keeps a key in
/// the form it was bound in and the key has several (its lookup goes to
/// the version table, see [`UserRows::load`]), nor where the state holds a
/// column the users' row is not written with (`written`: the table's
/// columns as a push writes them, local-only ones left out) or that the
/// register `ords` records no readable spec of (a column of a release
/// before specs were recorded, a spec this release cannot read).
pub(crate) fn carries(
    d: &dyn Dialect,
    written: &TableSpec,
    ords: &Ordinals,
    key: &[Value],
    state: &RowState,
) -> bool {
    !(d.keeps_bound_forms() && several_forms(key))
        && state.clocks.keys().all(|c| {
            written.pk.iter().any(|k| k.name == *c)
                || (ords.spec(c).is_some() && written.columns.iter().any(|w| w.name == *c))
        })
}

/// Whether a key holds a value with more than one stored form on SQLite
/// (a decimal, a date-time with an offset).
fn several_forms(key: &[Value]) -> bool {
    key.iter().any(|v| {
        matches!(
            v,
            Value::Decimal(Some(_)) | Value::ChronoDateTimeWithTimeZone(Some(_))
        )
    })
}

/// A users' row's metadata as text, for a report of a row that cannot be
/// read: its clocks and delete clock in hexadecimal.
fn raw_meta(r: &QueryResult) -> String {
    let hex = |col: &str| -> String {
        match r.try_get::<Option<Vec<u8>>>("", col) {
            Ok(Some(b)) => b.iter().map(|x| format!("{x:02x}")).collect(),
            Ok(None) => "null".into(),
            Err(_) => "?".into(),
        }
    };
    format!("clocks {} del {}", hex(ROW_META[1]), hex(ROW_META[2]))
}
