//! Row states in *version tables*: one table per synced table, with one
//! row per row the database has seen: the key in the table's own column
//! types, then the state's column clocks, delete clock and values in binary
//! (see [`super::versions`]), and whether the row is live. A replica keeps
//! its states so (`_ts_v_<table>`, schema version 2); the owner of the
//! tables names them and their column register.
//!
//! Format 1 kept the states of every table in one table under the key's
//! text, as typed JSON. A table of its own with the native key lets later
//! steps read a state joined with its row and marker, and the binary
//! columns cost a fraction of the JSON to write and read. Keys are read
//! through the table's spec alone (each column as its value kind), so a
//! database without the entities (a hub) keeps version tables too.
//!
//! Keys are written and looked up in their canonical form
//! ([`canonical_key`]: a decimal without trailing zeros, a date-time with
//! an offset at UTC), so a key that SQLite keeps as text is found however
//! it was read. States come back under the texts of the keys asked for
//! ([`pk_key`]), matched by the key's identity ([`key_identity`]: one
//! instant is one key whether an entity reads it as UTC or with an
//! offset); a state the database finds under a key of another identity (a
//! collation that ignores case or trailing spaces) is an error of kind
//! `UniqueViolation`, not a state taken for missing.
//!
//! Column ordinals are registered in a register table (table, column,
//! ordinal; a replica's is `_tidesync_columns`), append-only: a column keeps its ordinal for good, so a state
//! written before an entity gained or dropped a column reads the same
//! after. The register is read once per batch ([`Versions::open`]), and
//! again when a state names an ordinal it does not know (a column another
//! process registered meanwhile).

use std::collections::HashMap;

use rustc_hash::FxHashMap;

use sea_orm::sea_query::{
    Alias, ArrayType, ColumnDef, ColumnType, Expr, ExprTrait, Index, OnConflict, Order, Query,
    SimpleExpr, Table, TableCreateStatement,
};
use sea_orm::{ConnectionTrait, QueryResult, Statement, Value};

use crate::dialect::{self, Dialect, Place};
use crate::model::change::{ColumnSpec, TableSpec};
use crate::model::clock::NodeId;
use crate::model::error::{Error, Result};
use crate::model::merge::RowState;
use crate::model::value::{canonical_key, key_identity, pk_key};
use crate::model::value_kind::read_as;
use crate::store::ddl::{catalog, not_null, varchar};
use crate::store::versions::{self, Encoded, Ordinals};
use crate::store::write::{Inserts, MAX_ROWS, keys_match, placeholder};

/// Where a database keeps the version tables of its synced tables.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VersionTables {
    /// The name of a table's version table, from its name.
    pub(crate) name: fn(&str) -> String,
    /// The column register (see [`register_ddl`]).
    pub(crate) register: &'static str,
    /// Whether each version row also records where it stands in a
    /// sequence of changes ([`Position`]; a hub's do).
    pub(crate) positions: bool,
    /// Whether the register records each column's spec (a hub's: its
    /// users' tables hold the values of columns other devices' entities
    /// added, which a reader needs the kinds of).
    pub(crate) specs: bool,
}

/// Where a hub's version row stands: the hub sequence of the row's latest
/// change (unique: a row changed again takes the next one), the origin
/// whose pushes set every column of the row's state, if one did, and the
/// owner of the row (tables with owners).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) hub_seq: u64,
    /// The origin whose pushes set every column (and the delete) of the
    /// state, if one did: its pulls leave the row out, as it holds what it
    /// pushed. The origin, not the clocks' node: a device that took a new
    /// identity pushes clocks stamped under its old one, which the device
    /// holding the old one (its original, when it was a copy) never had.
    pub(crate) sole: Option<NodeId>,
    pub(crate) owner: Option<String>,
}

/// The columns of a version row that record its [`Position`].
pub(crate) const POSITION: [&str; 3] = ["hub_seq", "sole", "owner"];

/// The columns a hub keeps in a users' table beside each row's values,
/// for the rows its pushes write there: the row's position, column clocks
/// and delete clock (as a version row's `hub_seq`, `clocks`, `del`), its
/// sole writer and owner (as `sole` and `owner`), and the forms of its
/// values that the table's columns do not keep (see
/// [`versions::encode_forms`]). All nullable: a row another program wrote
/// has none. See `hub::versions::add_row_meta`.
pub(crate) const ROW_META: [&str; 6] = [
    "_tidesync_seq",
    "_tidesync_clocks",
    "_tidesync_del",
    "_tidesync_sole",
    "_tidesync_owner",
    "_tidesync_forms",
];

/// The definition of the column `name` of [`ROW_META`], nullable.
pub(crate) fn row_meta_column(d: &dyn Dialect, name: &str) -> ColumnDef {
    let ty = match name {
        "_tidesync_seq" => ColumnType::BigInteger,
        "_tidesync_clocks" | "_tidesync_del" | "_tidesync_forms" => d.long_bytes(),
        "_tidesync_sole" => varchar(32),
        _ => d.long_text(),
    };
    ColumnDef::new_with_type(Alias::new(name), ty)
        .null()
        .to_owned()
}

/// The unique index of `spec`'s users' table on `_tidesync_seq` (see
/// [`ROW_META`]): no two rows stand at one position, and a pull reads the
/// rows after a cursor in its order.
pub(crate) fn row_meta_index(
    d: &dyn Dialect,
    spec: &TableSpec,
) -> sea_orm::sea_query::IndexCreateStatement {
    Index::create()
        .unique()
        .if_not_exists()
        .name(crate::store::ddl::short_name("_ts_us_", &spec.name))
        .table(Place::of(d, spec).table_ref())
        .col(Alias::new("_tidesync_seq"))
        .to_owned()
}

/// The sole writer of a row's state after `origin`'s push changed it from
/// `before` (whose sole writer was `was`) to `after`: `origin` if it had
/// set every column before, or set now every column (and the delete) the
/// state holds; else none.
pub(crate) fn sole_after(
    origin: NodeId,
    was: Option<NodeId>,
    before: &RowState,
    after: &RowState,
) -> Option<NodeId> {
    if was == Some(origin) {
        return Some(origin);
    }
    let kept = |c: &String, h: &crate::model::clock::Hlc| {
        before.clocks.get(c) == Some(h)
            && match (before.vals.get(c), after.vals.get(c)) {
                (Some(a), Some(b)) => crate::model::value::same_value(a, b),
                (a, b) => a.is_none() && b.is_none(),
            }
    };
    let kept_any = after.clocks.iter().any(|(c, h)| kept(c, h))
        || (after.deleted_at.is_some() && after.deleted_at == before.deleted_at);
    (!kept_any).then_some(origin)
}

/// The version table of one synced table, with its column register, for
/// the length of a transaction.
///
/// It needs the table's spec only, not its entity: keys are read as the
/// variants of the keys asked for ([`Versions::load_keyed`]), else as their
/// columns' value kinds
/// ([`ColumnSpec::read`](crate::model::change::ColumnSpec::read)), unless
/// the owner gives its own reader ([`Versions::with_key_reader`]: a
/// replica reads keys through its entity).
#[derive(Clone)]
pub(crate) struct Versions<'a> {
    spec: &'a TableSpec,
    table: String,
    register: &'static str,
    ords: Ordinals,
    d: &'static dyn Dialect,
    read_key: Option<KeyReader<'a>>,
    positions: bool,
    specs: bool,
}

/// Reads a row's key values (see [`Versions::with_key_reader`]).
pub(crate) type KeyReader<'a> =
    std::sync::Arc<dyn Fn(&QueryResult) -> Result<Vec<Value>> + Send + Sync + 'a>;

/// The error of a state found under a key the database takes for the one
/// asked, whose text differs (see [`Versions::load_keyed`]).
pub(crate) fn another_key(table: &str, found: &str) -> Error {
    Error::Database {
        source: sea_orm::DbErr::Custom(format!(
            "{table}: the database takes the key asked for as the key {found} of another row \
             (a collation that ignores case or trailing spaces, or a key of another type)"
        )),
        kind: crate::model::error::ErrorKind::UniqueViolation,
    }
}

/// The columns of a version row after its key.
const STATE: [&str; 3] = ["clocks", "del", "vals"];

/// The columns a replica keeps beside a table's key columns in its own
/// tables (a dirty marker's, a version row's): a key column of one of
/// these names could not be created there (see [`reserved_key`]).
pub(crate) const REPLICA_BESIDE_KEYS: [&str; 7] =
    ["ver", "wall_us", "gone", "clocks", "del", "vals", "live"];

/// The columns a hub keeps beside a table's key columns in its version
/// rows (see [`reserved_key`]).
pub(crate) const HUB_BESIDE_KEYS: [&str; 7] =
    ["clocks", "del", "vals", "live", "hub_seq", "sole", "owner"];

/// The refusal of a table with a key column named as one of `beside`
/// (the columns tidesync keeps beside the key in its own tables on the
/// dialect `d`), if it has one: the same name, or on a dialect whose
/// names ignore case (SQLite, MySQL) the same name in another case.
pub(crate) fn reserved_key(spec: &TableSpec, beside: &[&str], d: &dyn Dialect) -> Option<String> {
    let same = |a: &str, b: &str| match d.names_ignore_case() {
        true => a.eq_ignore_ascii_case(b),
        false => a == b,
    };
    let k = spec
        .pk
        .iter()
        .find(|k| beside.iter().any(|r| same(&k.name, r)))?;
    Some(format!(
        "table `{}`: key column `{}` is named as a column tidesync keeps beside the key \
         in its own tables ({}); give it another name in the database \
         (`#[sea_orm(column_name = \"...\")]`)",
        spec.name,
        k.name,
        beside.join(", ")
    ))
}

impl<'a> Versions<'a> {
    /// The version table of `spec` among `tables`, with its column
    /// register read.
    pub(crate) async fn open<C: ConnectionTrait>(
        db: &C,
        tables: VersionTables,
        spec: &'a TableSpec,
    ) -> Result<Versions<'a>> {
        Ok(Versions {
            spec,
            table: (tables.name)(&spec.name),
            register: tables.register,
            ords: read_ordinals(db, tables.register, &spec.name, tables.specs).await?,
            d: dialect::of_db(db)?,
            read_key: None,
            positions: tables.positions,
            specs: tables.specs,
        })
    }

    /// [`Versions::open`] with the register's rows of the table read
    /// already, in the same transaction (`ords`; see the hub's push,
    /// which reads them with its head).
    pub(crate) fn opened<C: ConnectionTrait>(
        db: &C,
        tables: VersionTables,
        spec: &'a TableSpec,
        ords: Ordinals,
    ) -> Result<Versions<'a>> {
        Ok(Versions {
            spec,
            table: (tables.name)(&spec.name),
            register: tables.register,
            ords,
            d: dialect::of_db(db)?,
            read_key: None,
            positions: tables.positions,
            specs: tables.specs,
        })
    }

    /// Read keys with `f` (the entity's own decoding) instead of by kind.
    pub(crate) fn with_key_reader(mut self, f: KeyReader<'a>) -> Self {
        self.read_key = Some(f);
        self
    }

    fn spec(&self) -> &'a TableSpec {
        self.spec
    }

    /// The name of the version table.
    pub(crate) fn name(&self) -> &str {
        &self.table
    }

    /// The column register as read (see [`Versions::open`]).
    pub(crate) fn ordinals(&self) -> &Ordinals {
        &self.ords
    }

    fn table(&self) -> Alias {
        Alias::new(&self.table)
    }

    fn select(&self) -> sea_orm::sea_query::SelectStatement {
        let mut q = Query::select();
        for c in &self.spec().pk {
            q.expr_as(self.d.read_key_column(&c.ty, &c.name), Alias::new(&c.name));
        }
        q.columns(STATE.map(Alias::new)).from(self.table());
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
        kinds: Option<&[ArrayType]>,
    ) -> Result<(Vec<Value>, RowState)> {
        match self.decode(r, kinds) {
            Err(Error::Corrupt(_)) => {
                self.ords = read_ordinals(db, self.register, &self.spec().name, self.specs).await?;
                self.decode(r, kinds)
            }
            other => other,
        }
    }

    /// A row's key: by the owner's reader, else each column as `kinds`
    /// says (the variants asked for), else as its kind.
    fn key(&self, r: &QueryResult, kinds: Option<&[ArrayType]>) -> Result<Vec<Value>> {
        if let Some(f) = &self.read_key {
            return f(r);
        }
        read_key(self.spec(), r, kinds)
    }

    fn decode(
        &self,
        r: &QueryResult,
        kinds: Option<&[ArrayType]>,
    ) -> Result<(Vec<Value>, RowState)> {
        let key = self.key(r, kinds)?;
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

    /// The state of a version row its owner read itself (sealing joins
    /// markers with their version rows): `found` is the row's key as read,
    /// `asked` the key it was joined on. A column ordinal missing from the
    /// register is looked up again once, as [`Versions::load`] does.
    ///
    /// # Errors
    /// The error of [`Versions::load`] when the two keys are not the same
    /// key (the database took one for the other).
    pub(crate) async fn stored<C: ConnectionTrait>(
        &mut self,
        db: &C,
        asked: &[Value],
        found: &[Value],
        (clocks, del, vals): (&[u8], Option<&[u8]>, &[u8]),
    ) -> Result<RowState> {
        if key_identity(found)? != key_identity(asked)? {
            return Err(another_key(&self.spec().name, &pk_key(found)?));
        }
        let decode = |ords: &Ordinals| {
            versions::decode(clocks, del, vals, ords).map_err(|e| match e {
                Error::Corrupt(m) => Error::Corrupt(format!(
                    "{} {}: {m}",
                    self.spec().name,
                    pk_key(found).unwrap_or_default()
                )),
                e => e,
            })
        };
        match decode(&self.ords) {
            Err(Error::Corrupt(_)) => {
                let ords = read_ordinals(db, self.register, &self.spec().name, self.specs).await?;
                let state = decode(&ords);
                self.ords = ords;
                state
            }
            other => other,
        }
    }

    /// The states of `keys`, by key text ([`pk_key`]); keys without one
    /// are absent.
    ///
    /// Keys are read back as the variants asked for (a key pushed as a
    /// `DateTime<Utc>` by one device is found under that text whatever the
    /// spec's kind), when every key asked has the same variant in a column.
    ///
    /// # Errors
    /// An error of kind [`UniqueViolation`](crate::model::error::ErrorKind)
    /// when the database finds a state under a key whose text is none of
    /// the texts asked for (a collation that ignores case or trailing
    /// spaces, a key typed otherwise): the caller would take the row for
    /// one without a state and overwrite another row's state. A hub refuses
    /// the change, as the database would refuse its row.
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
        Ok(self
            .load_rows(db, keys, texts, false)
            .await?
            .into_iter()
            .map(|(k, (s, _))| (k, s))
            .collect())
    }

    /// [`Versions::load_keyed`] of a table whose rows record positions,
    /// with the origin each row records as its sole writer (see
    /// [`Position::sole`]).
    pub(crate) async fn load_with_sole<C: ConnectionTrait>(
        &mut self,
        db: &C,
        keys: &[&[Value]],
        texts: &[String],
    ) -> Result<HashMap<String, (RowState, Option<NodeId>)>> {
        self.load_rows(db, keys, texts, self.positions).await
    }

    async fn load_rows<C: ConnectionTrait>(
        &mut self,
        db: &C,
        keys: &[&[Value]],
        texts: &[String],
        with_sole: bool,
    ) -> Result<HashMap<String, (RowState, Option<NodeId>)>> {
        debug_assert_eq!(keys.len(), texts.len());
        let asked = asked_by_identity(keys, texts)?;
        let mut out = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_ROWS) {
            let kinds = asked_kinds(chunk);
            let chunk: Vec<Vec<Value>> = chunk.iter().map(|k| canonical_key(k)).collect();
            let mut q = self.select();
            q.and_where(keys_match(self.spec(), &chunk, self.d));
            if with_sole {
                q.column(Alias::new("sole"));
            }
            for r in db.query_all(&q).await? {
                let (key, state) = self.read(db, &r, kinds.as_deref()).await?;
                let Some(text) = asked.get(&key_identity(&key)?) else {
                    return Err(another_key(&self.spec().name, &pk_key(&key)?));
                };
                let sole = match with_sole {
                    // A sole writer that cannot be read is none: the row is
                    // then sent to its writer too, which is harmless.
                    true => r
                        .try_get::<Option<String>>("", "sole")?
                        .and_then(|n| n.parse().ok()),
                    false => None,
                };
                out.insert((*text).to_owned(), (state, sole));
            }
        }
        Ok(out)
    }

    /// The state the database finds for `key`, with the key it is under:
    /// another text than `key`'s when the database takes the two for one
    /// (a collation that ignores case or trailing spaces).
    pub(crate) async fn load_equal<C: ConnectionTrait>(
        &mut self,
        db: &C,
        key: &[Value],
    ) -> Result<Option<(Vec<Value>, RowState)>> {
        let chunk = vec![canonical_key(key)];
        let q = self
            .select()
            .and_where(keys_match(self.spec(), &chunk, self.d))
            .to_owned();
        let kinds = asked_kinds(&[key]);
        match db.query_all(&q).await?.first() {
            Some(r) => Ok(Some(self.read(db, r, kinds.as_deref()).await?)),
            None => Ok(None),
        }
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
        self.page_where(db, after, live, limit, None).await
    }

    /// [`Versions::page`] of the rows `filter` keeps.
    pub(crate) async fn page_where<C: ConnectionTrait>(
        &mut self,
        db: &C,
        after: Option<&[Value]>,
        live: bool,
        limit: u64,
        filter: Option<SimpleExpr>,
    ) -> Result<Vec<(Vec<Value>, RowState)>> {
        let spec = self.spec();
        let mut q = self.select();
        if let Some(f) = filter {
            q.and_where(f);
        }
        for c in &spec.pk {
            // By the table's column, not the selected one of that name:
            // a PostgreSQL enum key is selected as text, and sorting that
            // text would disagree with `key_after`, which compares the
            // column (in its declared order).
            q.order_by((self.table(), Alias::new(&c.name)), Order::Asc);
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
            out.push(self.read(db, &r, None).await?);
        }
        Ok(out)
    }

    /// Up to `limit` version rows whose position is in `(cursor, tip]`
    /// and that `filter` keeps, in position order (a table that records
    /// positions; see [`Position`]). A row whose key or state cannot be
    /// read comes as its error, in its place.
    pub(crate) async fn after<C: ConnectionTrait>(
        &mut self,
        db: &C,
        cursor: u64,
        tip: u64,
        limit: u64,
        filter: Option<SimpleExpr>,
    ) -> Result<Vec<AtPosition>> {
        use crate::store::codec::{db_sequence, sequence};
        let mut q = self.select();
        q.columns(["hub_seq", "owner"].map(Alias::new))
            .and_where(Expr::col(Alias::new("hub_seq")).gt(db_sequence(cursor)?))
            .and_where(Expr::col(Alias::new("hub_seq")).lte(db_sequence(tip)?))
            .order_by(Alias::new("hub_seq"), Order::Asc)
            .limit(limit);
        if let Some(f) = filter {
            q.and_where(f);
        }
        let mut out = Vec::new();
        for r in db.query_all(&q).await? {
            // Only a row that cannot be decoded is one: a failure of the
            // database (looking up the register again) fails the read.
            let row = match self.read(db, &r, None).await {
                Ok(row) => Ok(row),
                Err(e) if undecodable(&e) => Err((e, raw_of(&r))),
                Err(e) => return Err(e),
            };
            out.push(AtPosition {
                hub_seq: sequence(&r, "hub_seq")?,
                owner: r.try_get("", "owner")?,
                row,
            });
        }
        Ok(out)
    }

    /// The keys of up to `limit` rows without a position, in key order (a
    /// table that records positions, whose rows an earlier format wrote).
    pub(crate) async fn unpositioned<C: ConnectionTrait>(
        &self,
        db: &C,
        limit: u64,
    ) -> Result<Vec<Vec<Value>>> {
        let mut q = self.select();
        for c in &self.spec().pk {
            q.order_by((self.table(), Alias::new(&c.name)), Order::Asc);
        }
        q.and_where(Expr::col(Alias::new("hub_seq")).is_null())
            .limit(limit);
        db.query_all(&q)
            .await?
            .iter()
            .map(|r| self.key(r, None))
            .collect()
    }

    /// Give the row of `key` the position `p`, leaving its state as it is
    /// (a row whose state cannot be read: no sole writer is recorded).
    pub(crate) async fn set_position<C: ConnectionTrait>(
        &self,
        db: &C,
        key: &[Value],
        p: &Position,
    ) -> Result<()> {
        let q = Query::update()
            .table(self.table())
            .value(
                Alias::new("hub_seq"),
                crate::store::codec::db_sequence(p.hub_seq)?,
            )
            .value(Alias::new("sole"), p.sole.map(|n| n.to_string()))
            .value(Alias::new("owner"), p.owner.clone())
            .and_where(keys_match(self.spec(), &[canonical_key(key)], self.d))
            .to_owned();
        db.execute(&q).await?;
        Ok(())
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
            let spec = self.specs.then_some(self.spec());
            self.ords = register(db, self.register, &table, &missing, spec).await?;
        }
        Ok(())
    }

    /// The multi-row upserts that save `states` (key values and state);
    /// their columns must be registered (see [`Versions::register`]).
    /// Built without a database, so that a caller can build them while the
    /// database works (see [`crate::store::write::execute_while`]).
    pub(crate) fn statements(&self, states: &[(&[Value], &RowState)]) -> Result<Vec<Statement>> {
        self.build(states.iter().map(|(k, s)| (*k, *s, None)), states.len())
    }

    /// [`Versions::statements`] of a table whose rows record their
    /// [`Position`]: each state with its position.
    pub(crate) fn positioned_statements(
        &self,
        states: &[(&[Value], &RowState, &Position)],
    ) -> Result<Vec<Statement>> {
        if !self.positions {
            return Err(Error::Corrupt(format!(
                "`{}`: no positioned rows here",
                self.table
            )));
        }
        self.build(
            states.iter().map(|(k, s, p)| (*k, *s, Some(*p))),
            states.len(),
        )
    }

    /// The statements that save `states`: upserts.
    fn build<'s>(
        &self,
        states: impl Iterator<Item = (&'s [Value], &'s RowState, Option<&'s Position>)>,
        n: usize,
    ) -> Result<Vec<Statement>> {
        let spec = self.spec();
        let mut template = Query::insert();
        let keys: Vec<Alias> = spec.pk.iter().map(|c| Alias::new(&c.name)).collect();
        let mut state: Vec<Alias> = ["clocks", "del", "vals", "live"].map(Alias::new).to_vec();
        let mut positioned = None;
        let mut rows = Vec::with_capacity(n);
        for (key, s, position) in states {
            match positioned {
                None => {
                    positioned = Some(position.is_some());
                    if position.is_some() {
                        state.extend(POSITION.map(Alias::new));
                    }
                }
                Some(p) if p != position.is_some() => {
                    return Err(Error::Corrupt(
                        "version rows saved with and without positions at once".into(),
                    ));
                }
                Some(_) => {}
            }
            let Encoded {
                clocks,
                del,
                vals,
                live,
            } = versions::encode(s, &self.ords)?;
            let size = clocks.len() + vals.len() + 64;
            let mut row: Vec<Value> = spec
                .pk
                .iter()
                .zip(canonical_key(key))
                .map(|(c, v)| self.d.bind_value(&c.ty, v))
                .collect();
            row.extend([clocks.into(), Value::Bytes(del), vals.into(), live.into()]);
            if let Some(p) = position {
                row.extend([
                    crate::store::codec::db_sequence(p.hub_seq)?.into(),
                    p.sole.map(|n| n.to_string()).into(),
                    p.owner.clone().into(),
                ]);
            }
            rows.push((row, size));
        }
        let shapes = spec
            .pk
            .iter()
            .map(|c| self.d.shape(&c.ty, placeholder()))
            .chain(state.iter().map(|_| placeholder()))
            .collect();
        template
            .into_table(self.table())
            .columns(keys.iter().cloned().chain(state.iter().cloned()));
        template.on_conflict(OnConflict::columns(keys).update_columns(state).to_owned());
        Inserts::new(self.d.backend(), template, shapes).statements(rows)
    }

    /// The values of [`ROW_META`] of a live row whose state is `state`
    /// at the position `p`, in that order; its columns must be registered
    /// (see [`Versions::register`]).
    pub(crate) fn row_meta(&self, state: &RowState, p: &Position) -> Result<Vec<Value>> {
        let (clocks, del) = versions::encode_clocks_of(state, &self.ords)?;
        Ok(vec![
            crate::store::codec::db_sequence(p.hub_seq)?.into(),
            clocks.into(),
            Value::Bytes(del),
            p.sole.map(|n| n.to_string()).into(),
            p.owner.clone().into(),
            Value::Bytes(versions::encode_forms(state, &self.ords)?),
        ])
    }

    /// The values of [`ROW_META`] of a users' row that carries no state
    /// (its state is in its version row): all NULL.
    pub(crate) fn no_row_meta() -> Vec<Value> {
        vec![
            Value::BigInt(None),
            Value::Bytes(None),
            Value::Bytes(None),
            Value::String(None),
            Value::String(None),
            Value::Bytes(None),
        ]
    }

    /// The statements that delete the version rows of `keys`, if any.
    pub(crate) fn delete_statements(&self, keys: &[Vec<Value>]) -> Vec<Statement> {
        keys.chunks(MAX_ROWS)
            .map(|chunk| {
                let chunk: Vec<Vec<Value>> = chunk.iter().map(|k| canonical_key(k)).collect();
                let q = Query::delete()
                    .from_table(self.table())
                    .and_where(keys_match(self.spec(), &chunk, self.d))
                    .to_owned();
                self.d.backend().build(&q)
            })
            .collect()
    }

    /// Register the columns of `states` and save them.
    pub(crate) async fn save<C: ConnectionTrait>(
        &mut self,
        db: &C,
        states: &[(&[Value], &RowState)],
    ) -> Result<()> {
        self.register(db, states.iter().map(|(_, s)| *s)).await?;
        for q in self.statements(states)? {
            db.execute_raw(q).await?;
        }
        Ok(())
    }
}

/// A version row read by its position ([`Versions::after`]).
#[derive(Debug)]
pub(crate) struct AtPosition {
    pub(crate) hub_seq: u64,
    /// The owner recorded with it.
    pub(crate) owner: Option<String>,
    /// Its key and state, or why they cannot be read and its stored bytes
    /// as text (hexadecimal).
    pub(crate) row: std::result::Result<(Vec<Value>, RowState), (Error, String)>,
}

/// Whether `e` says a row cannot be decoded (its state, or its key as its
/// kind), not that the database failed.
pub(crate) fn undecodable(e: &Error) -> bool {
    use sea_orm::DbErr;
    match e {
        Error::Corrupt(_) | Error::Payload(_) => true,
        Error::Database { source, .. } => match source {
            DbErr::Type(_) | DbErr::Json(_) | DbErr::TryIntoErr { .. } => true,
            #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
            DbErr::Query(sea_orm::RuntimeErr::SqlxError(x)) => matches!(
                &**x,
                sea_orm::sqlx::Error::ColumnDecode { .. } | sea_orm::sqlx::Error::Decode(_)
            ),
            _ => false,
        },
        _ => false,
    }
}

/// The stored state of a version row as text, for a row that cannot be
/// read: its binary columns in hexadecimal.
fn raw_of(r: &QueryResult) -> String {
    let hex = |col: &str| -> String {
        match r.try_get::<Option<Vec<u8>>>("", col) {
            Ok(Some(b)) => b.iter().map(|x| format!("{x:02x}")).collect(),
            Ok(None) => "null".into(),
            Err(_) => "?".into(),
        }
    };
    format!(
        "clocks {} del {} vals {}",
        hex("clocks"),
        hex("del"),
        hex("vals")
    )
}

/// DDL of a column register named `name` (a replica's is
/// `_tidesync_columns`, whose unique index is `_tidesync_columns_ord`).
pub(crate) fn register_ddl(name: &str) -> TableCreateStatement {
    Table::create()
        .table(Alias::new(name))
        .if_not_exists()
        .col(not_null("tbl", varchar(64)))
        .col(not_null("col", varchar(255)))
        .col(not_null("ord", ColumnType::Integer))
        .primary_key(
            Index::create()
                .col(Alias::new("tbl"))
                .col(Alias::new("col")),
        )
        // Two columns never share an ordinal, even when two processes
        // register columns at once (the second insert fails).
        .index(
            Index::create()
                .unique()
                .name(format!("{name}_ord"))
                .col(Alias::new("tbl"))
                .col(Alias::new("ord")),
        )
        .to_owned()
}

/// DDL of the version table `name` of `spec`, its key columns typed as
/// `key_type` gives them.
pub(crate) fn version_rows_ddl(
    d: &dyn Dialect,
    name: &str,
    spec: &TableSpec,
    key_type: impl Fn(&crate::model::change::ColumnSpec) -> ColumnType,
    positions: bool,
) -> TableCreateStatement {
    let mut t = Table::create();
    t.table(Alias::new(name)).if_not_exists();
    let mut pk = Index::create();
    for c in &spec.pk {
        t.col(ColumnDef::new_with_type(Alias::new(&c.name), key_type(c)).not_null());
        pk.col(Alias::new(&c.name));
    }
    t.col(not_null("clocks", d.long_bytes()))
        .col(ColumnDef::new_with_type(Alias::new("del"), d.long_bytes()).null())
        .col(not_null("vals", d.long_bytes()))
        .col(not_null("live", ColumnType::Boolean))
        .primary_key(&mut pk);
    if positions {
        // Their index is made apart (see `position_index`), under its
        // name on every dialect, then `sole` (see `position_column`).
        for c in ["hub_seq", "owner"] {
            t.col(position_column(d, c));
        }
    }
    t.to_owned()
}

/// The columns of a version row's [`Position`] (named as [`POSITION`]
/// names them), all nullable: a state moved from an earlier format has
/// none until it is given one. A version table is made without `sole`,
/// which is added after the index on `hub_seq` is made: a table that has
/// `sole` has its index (see `hub::versions::add_positions`).
pub(crate) fn position_column(d: &dyn Dialect, name: &str) -> ColumnDef {
    let ty = match name {
        "hub_seq" => ColumnType::BigInteger,
        "sole" => varchar(32),
        _ => d.long_text(),
    };
    ColumnDef::new_with_type(Alias::new(name), ty)
        .null()
        .to_owned()
}

/// The unique index of the version table `name` on `hub_seq`: a pull
/// reads the rows after a cursor in its order, and no two rows stand at
/// one position.
pub(crate) fn position_index(name: &str) -> sea_orm::sea_query::IndexCreateStatement {
    Index::create()
        .unique()
        .if_not_exists()
        .name(crate::store::ddl::short_name("_ts_hs_", name))
        .table(Alias::new(name))
        .col(Alias::new("hub_seq"))
        .to_owned()
}

/// The type of a key column in a version table: the marker's, except that
/// a MySQL `ENUM` or `SET` key is kept as its text. Version tables are read
/// in key order, page after page from the last key read; MySQL sorts an
/// `ENUM` by its declaration but compares it with a bound value as text,
/// so a page would start anywhere. As text, the order and the comparison
/// agree.
pub(crate) fn version_key_type(
    d: &dyn Dialect,
    c: &ColumnSpec,
    key_types: &HashMap<String, String>,
) -> ColumnType {
    match version_key_text(key_types.get(&c.name)) {
        Some(t) => ColumnType::custom(t),
        None => d.marker_key_type(&c.ty),
    }
}

/// The catalog type of a version table's key column, given the table's
/// own (see [`version_key_type`]): the same, except an `ENUM` or `SET` as a
/// `varchar` as long as its longest label (not longer: with the key's other
/// columns it must stay within MySQL's index limit, as the table's own key
/// does).
pub(crate) fn version_key_text(own: Option<&String>) -> Option<String> {
    let own = own?;
    let lower = own.to_ascii_lowercase();
    if !(lower.starts_with("enum(") || lower.starts_with("set(")) {
        return Some(own.clone());
    }
    let labels = &own[own.find('(')? + 1..own.rfind(')')?];
    let lengths: Vec<usize> = labels
        .split("','")
        .map(|l| l.trim_matches('\'').replace("''", "'").chars().count())
        .collect();
    let n = match lower.starts_with("set(") {
        // A `SET` value is its labels joined by commas.
        true => lengths.iter().sum::<usize>() + lengths.len().saturating_sub(1),
        false => lengths.iter().copied().max().unwrap_or(1),
    };
    Some(format!("varchar({})", n.max(1)))
}

/// The full type of each column of `table`, by name, where the dialect
/// reads them for the dirty markers (the replica's dirty markers and version tables).
pub(crate) async fn column_types<C: ConnectionTrait>(
    db: &C,
    d: &dyn Dialect,
    table: Place<'_>,
) -> Result<HashMap<String, String>> {
    let Some(sql) = d.key_types_query() else {
        return Ok(HashMap::new());
    };
    let rows = catalog(db, sql, table).await?;
    rows.iter()
        .map(|r| Ok((r.try_get("", "name")?, r.try_get("", "ty")?)))
        .collect()
}

/// Give the key columns of tidesync's `table` (a dirty-marker table, a
/// version table) the type `want` names for each, where it differs: a
/// marker table made by an earlier release (MySQL: `datetime`,
/// `decimal(10,0)`, rounding the keys), or a table whose own key column
/// changed type since (a migration to `datetime(6)`: rounded, two keys
/// would share one marker or one state).
pub(crate) async fn retype_keys<C: ConnectionTrait>(
    db: &C,
    d: &dyn Dialect,
    spec: &TableSpec,
    table: &str,
    want: impl Fn(&ColumnSpec) -> Option<String>,
) -> Result<()> {
    if d.key_types_query().is_none() {
        return Ok(());
    }
    let now = column_types(db, d, Place::own(table)).await?;
    for c in &spec.pk {
        let (Some(want), Some(have)) = (want(c), now.get(&c.name)) else {
            continue;
        };
        if want != *have {
            let alter = Table::alter()
                .table(Alias::new(table))
                .modify_column(
                    ColumnDef::new_with_type(Alias::new(&c.name), ColumnType::custom(want.clone()))
                        .not_null(),
                )
                .to_owned();
            db.execute(&alter).await?;
        }
    }
    Ok(())
}

/// The variant of each key column when every key of `keys` has the same
/// one there (`None` when they differ, or there are none).
pub(crate) fn asked_kinds(keys: &[&[Value]]) -> Option<Vec<ArrayType>> {
    let first = keys.first()?;
    let kinds: Vec<ArrayType> = first.iter().map(Value::array_type).collect();
    keys.iter()
        .all(|k| k.len() == kinds.len() && k.iter().zip(&kinds).all(|(v, t)| v.array_type() == *t))
        .then_some(kinds)
}

/// The texts of the keys asked (`texts[i]` of `keys[i]`) by each key's
/// identity: a key found is matched to the key asked by its identity, not
/// its text (a device's `DateTime<Utc>` key is the row whose key another
/// entity reads as a `DateTime<FixedOffset>`).
pub(crate) fn asked_by_identity<'t>(
    keys: &[&[Value]],
    texts: &'t [String],
) -> Result<FxHashMap<String, &'t str>> {
    let mut asked = FxHashMap::default();
    for (k, t) in keys.iter().zip(texts) {
        asked.insert(key_identity(k)?, t.as_str());
    }
    Ok(asked)
}

/// The key of `spec`'s row `r`: each key column as `kinds` says (the
/// variants asked for), else as its kind.
pub(crate) fn read_key(
    spec: &TableSpec,
    r: &QueryResult,
    kinds: Option<&[ArrayType]>,
) -> Result<Vec<Value>> {
    spec.pk
        .iter()
        .enumerate()
        .map(|(i, c)| match kinds.and_then(|k| k.get(i)) {
            Some(kind) => read_as(r, &c.name, kind),
            None => c.read(r),
        })
        .collect()
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

/// The column register of `table`, in the register table `register`, with
/// the columns' specs if it records them (`specs`).
async fn read_ordinals<C: ConnectionTrait>(
    db: &C,
    register: &str,
    table: &str,
    specs: bool,
) -> Result<Ordinals> {
    let mut q = Query::select()
        .columns([Alias::new("col"), Alias::new("ord")])
        .from(Alias::new(register))
        .and_where(Expr::col(Alias::new("tbl")).eq(table))
        .to_owned();
    if specs {
        q.column(Alias::new("spec"));
    }
    let mut pairs = Vec::new();
    let mut texts = Vec::new();
    for r in db.query_all(&q).await? {
        let ord: i32 = r.try_get("", "ord")?;
        let col: String = r.try_get("", "col")?;
        if specs && let Some(text) = r.try_get::<Option<String>>("", "spec")? {
            texts.push((col.clone(), text));
        }
        pairs.push((col, ordinal(register, table, ord.into())?));
    }
    Ok(Ordinals::new(pairs).with_specs(table, texts))
}

/// A column ordinal of `table` as the register `register` holds it.
///
/// # Errors
/// [`Error::Corrupt`] for one out of range.
pub(crate) fn ordinal(register: &str, table: &str, ord: i64) -> Result<u16> {
    u16::try_from(ord)
        .map_err(|_| Error::Corrupt(format!("{register}: ordinal {ord} of `{table}`")))
}

/// The text a register records as the spec of `spec`'s column `column`
/// (see [`VersionTables::specs`]), or none where `spec` has no such
/// synced column.
pub(crate) fn column_spec_text(spec: &TableSpec, column: &str) -> Result<Option<String>> {
    spec.columns
        .iter()
        .find(|c| c.name == column)
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| Error::Corrupt(format!("the spec of `{}`.`{column}`: {e}", spec.name)))
}

/// Give `columns` of `table` the next ordinals in the register table
/// `register`, where they have none, and return the table's register. Callers hold the capture lock, so no two
/// registrations pick an ordinal at once; should one still (a lock not
/// taken), the unique index on `(tbl, ord)` fails the second insert, or on
/// MySQL it adds nothing and the column gets the next ordinal.
///
/// With `spec` (a register that records specs: a hub's), each column is
/// registered with its spec there, where it has one.
pub(crate) async fn register<C: ConnectionTrait>(
    db: &C,
    register: &str,
    table: &str,
    columns: &[String],
    spec: Option<&TableSpec>,
) -> Result<Ordinals> {
    let mut ords = read_ordinals(db, register, table, spec.is_some()).await?;
    for c in columns {
        // A few tries: each lost race means another column took the
        // ordinal, so the next read finds a higher one.
        for _ in 0..8 {
            if ords.of(c).is_some() {
                break;
            }
            let mut q = Query::insert();
            q.into_table(Alias::new(register));
            match spec {
                Some(spec) => q
                    .columns(["tbl", "col", "ord", "spec"].map(Alias::new))
                    .values_panic([
                        table.into(),
                        c.as_str().into(),
                        i32::from(ords.next()?).into(),
                        column_spec_text(spec, c)?.into(),
                    ]),
                None => q
                    .columns(["tbl", "col", "ord"].map(Alias::new))
                    .values_panic([
                        table.into(),
                        c.as_str().into(),
                        i32::from(ords.next()?).into(),
                    ]),
            };
            q.on_conflict(
                OnConflict::columns([Alias::new("tbl"), Alias::new("col")])
                    .do_nothing_on([Alias::new("tbl")])
                    .to_owned(),
            );
            db.execute(&q).await?;
            ords = read_ordinals(db, register, table, spec.is_some()).await?;
        }
        if ords.of(c).is_none() {
            return Err(Error::Corrupt(format!(
                "{register}: no ordinal could be given to `{table}`.`{c}`"
            )));
        }
    }
    Ok(ords)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::hlc;

    /// A key column named as a column tidesync keeps beside the key is
    /// refused by name, in any case where the dialect's names ignore case
    /// and in its own case only on PostgreSQL (where `"Owner"` and `owner`
    /// are two columns); the same name on a column outside the key is not.
    #[test]
    fn keys_named_as_tidesyncs_own_columns_are_refused() {
        use crate::model::testing::{column, table};
        use sea_orm::DbBackend;
        use sea_orm::sea_query::ColumnType;
        let keyed = |name: &str| {
            table(
                "t",
                &[name],
                vec![
                    column(name, ColumnType::Integer, false),
                    column("x", ColumnType::Integer, true),
                ],
            )
        };
        let (sqlite, mysql, postgres) = (
            dialect::of(DbBackend::Sqlite).unwrap(),
            dialect::of(DbBackend::MySql).unwrap(),
            dialect::of(DbBackend::Postgres).unwrap(),
        );
        for beside in [&REPLICA_BESIDE_KEYS[..], &HUB_BESIDE_KEYS[..]] {
            for name in beside {
                for d in [sqlite, mysql, postgres] {
                    let why = reserved_key(&keyed(name), beside, d).expect(name);
                    assert!(why.contains(&format!("`{name}`")), "{why}");
                }
                let upper = name.to_ascii_uppercase();
                for d in [sqlite, mysql] {
                    assert!(reserved_key(&keyed(&upper), beside, d).is_some(), "{upper}");
                }
                assert_eq!(reserved_key(&keyed(&upper), beside, postgres), None);
            }
        }
        // The hub's names are the replica's to use, and the other way.
        assert_eq!(
            reserved_key(&keyed("owner"), &REPLICA_BESIDE_KEYS, sqlite),
            None
        );
        assert_eq!(reserved_key(&keyed("ver"), &HUB_BESIDE_KEYS, sqlite), None);
        let spec = table(
            "t",
            &["id"],
            vec![
                column("id", ColumnType::Integer, false),
                column("ver", ColumnType::Integer, true),
                column("vals", ColumnType::Integer, true),
            ],
        );
        assert_eq!(reserved_key(&spec, &REPLICA_BESIDE_KEYS, sqlite), None);
    }

    fn state(cols: &[(&str, &str, u64, u8)], del: Option<(u64, u8)>) -> RowState {
        let mut s = RowState::default();
        for (c, v, t, n) in cols {
            s.vals.insert((*c).into(), Value::from(*v));
            s.clocks.insert((*c).into(), hlc(*t, *n));
        }
        s.deleted_at = del.map(|(t, n)| hlc(t, n));
        s
    }

    #[test]
    fn a_row_is_its_pushers_when_the_push_set_every_column() {
        let o = NodeId([1; 16]);
        let before = RowState::default();
        let after = state(&[("a", "x", 10, 1), ("b", "y", 10, 1)], None);
        assert_eq!(sole_after(o, None, &before, &after), Some(o));
    }

    #[test]
    fn a_column_another_pushed_keeps_the_row_shared() {
        let o = NodeId([1; 16]);
        let e = NodeId([2; 16]);
        let before = state(&[("a", "x", 10, 2), ("b", "y", 10, 2)], None);
        let after = state(&[("a", "new", 20, 1), ("b", "y", 10, 2)], None);
        assert_eq!(sole_after(o, Some(e), &before, &after), None);
        assert_eq!(sole_after(o, None, &before, &after), None);
        // Already the pusher's: stays so.
        assert_eq!(sole_after(o, Some(o), &before, &after), Some(o));
        // A kept delete is a column of someone else's too.
        let dead = state(&[("a", "x", 5, 2)], Some((8, 2)));
        let back = state(&[("a", "z", 20, 1)], Some((8, 2)));
        assert_eq!(sole_after(o, None, &dead, &back), None);
    }

    /// The pusher's clock is not its node's: a device that took a new
    /// identity pushes clocks stamped under the old one. The row is the
    /// pusher's, not the clocks' node's.
    #[test]
    fn the_pusher_not_the_clocks_node_is_the_sole_writer() {
        let renewed = NodeId([3; 16]);
        let before = state(&[("a", "x", 10, 1)], None);
        // The same clock (node 1) with another value: a tie settled the
        // other way, set by this push.
        let after = state(&[("a", "y", 10, 1)], None);
        assert_eq!(sole_after(renewed, None, &before, &after), Some(renewed));
    }
}
