//! The entity side of capture: a [`TableHandle`] reads a `Syncable`
//! entity's markers and rows through SeaORM, type-erased so a replica can
//! hold tables of different entities.

use std::marker::PhantomData;

use sea_orm::sea_query::{Alias, Condition, Expr, ExprTrait, JoinType, Order, Query, ValueTuple};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, FromQueryResult, IdenStatic, Iterable,
    ModelTrait, PrimaryKeyToColumn, PrimaryKeyTrait, QueryFilter, QueryOrder, QueryResult,
    QuerySelect, TryGetError, TryGetableMany, Value,
};

use super::tables::dirty_table;
use crate::dialect::{self, Place};
use crate::model::change::{ColumnSpec, TableSpec};
use crate::model::error::{Error, Result};
use crate::model::syncable::{ConflictPolicy, Syncable};
use crate::store::user_tables::ensure_table;
use crate::store::write::keys_match;

/// A dirty marker read back from a dirty table.
#[derive(Debug, Clone)]
pub(crate) struct Marker {
    pub(crate) pk: Vec<Value>,
    pub(crate) ver: i64,
    pub(crate) wall_us: i64,
    /// The version at which a row with this key last stopped existing (a
    /// delete, or an update of the key); 0 if none did since the last
    /// capture.
    pub(crate) gone: i64,
    /// Its SQLite `rowid`, where it was read with it (see
    /// [`TableHandle::marked`]): the marker as stored, whatever the form
    /// of its key.
    pub(crate) rowid: Option<i64>,
}

/// A row of a synced table: key values and synced column values (in
/// [`TableSpec::columns`] order).
pub(crate) type RowImage = (Vec<Value>, Vec<Value>);

/// A marker with what sealing reads for it, read in one query (see
/// [`TableHandle::marked`]).
#[derive(Debug)]
pub(crate) struct MarkedRow {
    pub(crate) marker: Marker,
    /// The row under the marker's key as it is now, if there is one.
    pub(crate) row: Option<RowImage>,
    /// The row's version row as stored, if it has one.
    pub(crate) version: Option<StoredVersion>,
}

/// A version row as stored: its key values (read as the entity reads its
/// keys) and its state columns, not decoded.
#[derive(Debug)]
pub(crate) struct StoredVersion {
    pub(crate) key: Vec<Value>,
    pub(crate) clocks: Vec<u8>,
    pub(crate) del: Option<Vec<u8>>,
    pub(crate) vals: Vec<u8>,
}

/// The prefix of the names [`TableHandle::marked`] gives tidesync's own
/// columns, beside the row's columns under their own names.
const OWN: &str = "_tidesync_";

/// A name of a SQLite marker's `rowid` that none of its columns takes (a
/// key column named `rowid` takes that name), if one is left.
pub(crate) fn rowid_name(spec: &TableSpec) -> Option<&'static str> {
    ["rowid", "_rowid_", "oid"]
        .into_iter()
        .find(|n| !spec.pk.iter().any(|k| k.name.eq_ignore_ascii_case(n)))
}

/// The entity-specific half of capture, type-erased so a replica can hold
/// tables of different entities.
#[async_trait::async_trait]
pub(crate) trait TableHandle: Send + Sync {
    fn spec(&self) -> &TableSpec;

    /// Up to `limit` markers in key order (the primary key's index, no
    /// sort), skipping `offset`.
    async fn markers(
        &self,
        tx: &DatabaseTransaction,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<Marker>>;

    /// The key values of a row read with the key columns (a marker, a
    /// version row), typed as the entity types them.
    fn read_key(&self, r: &QueryResult) -> Result<Vec<Value>>;

    /// The current rows with these keys (missing rows are simply absent).
    async fn rows(&self, tx: &DatabaseTransaction, pks: &[Vec<Value>]) -> Result<Vec<RowImage>>;

    /// [`markers`](Self::markers), each with its row and its version row
    /// (in `versions`), in one query: the markers joined with the table and
    /// the version table on the key columns (each compared under the
    /// table's or version table's collation, as a keyed read would). Only
    /// where the dialect [joins keys](crate::dialect::Dialect::joins_keys).
    async fn marked(
        &self,
        tx: &DatabaseTransaction,
        versions: &str,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<MarkedRow>>;

    /// A page of all rows in key order.
    async fn scan(
        &self,
        tx: &DatabaseTransaction,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<RowImage>>;
}

/// [`TableHandle`] for a `Syncable` entity.
pub(crate) struct EntityTable<E: Syncable> {
    spec: TableSpec,
    columns: Vec<E::Column>,
    keys: Vec<E::Column>,
    _entity: PhantomData<fn() -> E>,
}

impl<E: Syncable> EntityTable<E> {
    /// The same table under another conflict policy (a registered resolver
    /// makes it `Custom`).
    pub(crate) fn with_policy(mut self, policy: ConflictPolicy) -> Self {
        self.spec.policy = policy;
        self
    }

    pub(crate) fn new() -> Self {
        let skipped: Vec<String> = E::skipped_columns()
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect();
        let keys: Vec<E::Column> = E::PrimaryKey::iter().map(|k| k.into_column()).collect();
        let columns: Vec<E::Column> = E::Column::iter()
            .filter(|c| !skipped.iter().any(|s| s == c.as_str()))
            .collect();
        let spec_of = |c: &E::Column| {
            let def = c.def();
            ColumnSpec {
                name: c.as_str().to_owned(),
                ty: def.get_column_type().clone(),
                nullable: def.is_null(),
                kind: Some(<E::Model as ModelTrait>::get_value_type(*c)),
            }
        };
        let spec = TableSpec {
            name: E::default().table_name().to_owned(),
            schema: E::default().schema_name().map(str::to_owned),
            pk: keys.iter().map(spec_of).collect(),
            columns: columns.iter().map(spec_of).collect(),
            local_only: E::Column::iter()
                .filter(|c| skipped.iter().any(|s| s == c.as_str()))
                .map(|c| spec_of(&c))
                .collect(),
            policy: E::POLICY,
            single_writer: E::SINGLE_WRITER,
            ownership: E::ownership().map(|c| c.as_str().to_owned()),
        };
        EntityTable {
            spec,
            columns,
            keys,
            _entity: PhantomData,
        }
    }

    /// The key values of `r` read from the columns named after the key's
    /// with `prefix`; `None` where they are NULL (a version table the join
    /// found no row in).
    fn key_of(&self, r: &QueryResult, prefix: &str) -> Result<Option<Vec<Value>>> {
        let names = self.spec.pk_names();
        match <<E::PrimaryKey as PrimaryKeyTrait>::ValueType as TryGetableMany>::try_get_many(
            r, prefix, &names,
        ) {
            Ok(pk) => {
                let pk: ValueTuple = pk.into();
                Ok(Some(pk.into_iter().collect()))
            }
            Err(TryGetError::Null(_)) => Ok(None),
            Err(e) => Err(sea_orm::DbErr::from(e).into()),
        }
    }

    fn image(&self, m: &E::Model) -> RowImage {
        (
            self.keys.iter().map(|c| m.get(*c)).collect(),
            self.columns.iter().map(|c| m.get(*c)).collect(),
        )
    }
}

#[async_trait::async_trait]
impl<E: Syncable> TableHandle for EntityTable<E>
where
    E::Model: Sync,
{
    fn spec(&self) -> &TableSpec {
        &self.spec
    }

    async fn markers(
        &self,
        tx: &DatabaseTransaction,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<Marker>> {
        let names = self.spec.pk_names();
        let mut q = Query::select();
        q.columns(names.iter().map(Alias::new))
            .columns([Alias::new("ver"), Alias::new("wall_us"), Alias::new("gone")])
            .from(Alias::new(dirty_table(&self.spec.name)))
            .limit(limit)
            .offset(offset);
        for n in &names {
            q.order_by(Alias::new(n), Order::Asc);
        }
        let rows = tx.query_all(&q).await?;
        rows.iter()
            .map(|r| {
                Ok(Marker {
                    pk: self.read_key(r)?,
                    ver: r.try_get("", "ver")?,
                    wall_us: r.try_get("", "wall_us")?,
                    gone: r.try_get("", "gone")?,
                    rowid: None,
                })
            })
            .collect()
    }

    fn read_key(&self, r: &QueryResult) -> Result<Vec<Value>> {
        let names = self.spec.pk_names();
        let pk = <<E::PrimaryKey as PrimaryKeyTrait>::ValueType as TryGetableMany>::try_get_many(
            r, "", &names,
        )
        .map_err(sea_orm::DbErr::from)?;
        let pk: ValueTuple = pk.into();
        Ok(pk.into_iter().collect())
    }

    async fn marked(
        &self,
        tx: &DatabaseTransaction,
        versions: &str,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<MarkedRow>> {
        let (m, t, v) = (Alias::new("m"), Alias::new("t"), Alias::new("v"));
        let own = |name: &str| Alias::new(format!("{OWN}{name}"));
        let first = self
            .spec
            .pk
            .first()
            .ok_or_else(|| Error::Config(format!("table `{}` has no key", self.spec.name)))?;
        // tidesync's columns first, read by position: the marker's key
        // (from position 0, as the key type reads a key), then the
        // marker's own, whether the join found a row, the version row's
        // state; then the row's columns and the version row's key, by name.
        let mut q = Query::select();
        for k in &self.spec.pk {
            q.expr_as(
                Expr::col((m.clone(), Alias::new(&k.name))),
                own(&format!("m_{}", k.name)),
            );
        }
        for c in ["ver", "wall_us", "gone", "_tidesync_rowid"] {
            q.expr_as(
                Expr::col((m.clone(), Alias::new(c))),
                own(c.trim_start_matches(OWN)),
            );
        }
        // Whether the join found a row: its key columns are never NULL.
        q.expr_as(
            Expr::col((t.clone(), Alias::new(&first.name))).is_not_null(),
            own("row"),
        );
        for c in ["clocks", "del", "vals"] {
            q.expr_as(Expr::col((v.clone(), Alias::new(c))), own(c));
        }
        // Every column of the model (skipped ones too: the model has
        // them), under its own name and read as the entity reads it.
        for c in E::Column::iter() {
            q.expr_as(
                c.select_as(Expr::col((t.clone(), Alias::new(c.as_str())))),
                Alias::new(c.as_str()),
            );
        }
        // Last: a name read finds the last column of that name, so a user
        // column named as these does not hide them.
        for k in &self.spec.pk {
            q.expr_as(
                Expr::col((v.clone(), Alias::new(&k.name))),
                own(&format!("v_{}", k.name)),
            );
        }
        let n = self.spec.pk.len();
        let (ver, wall_us, gone, rowid, row, clocks, del, vals) =
            (n, n + 1, n + 2, n + 3, n + 4, n + 5, n + 6, n + 7);
        let on = |other: &Alias| {
            self.spec.pk.iter().fold(Condition::all(), |all, k| {
                all.add(
                    Expr::col((other.clone(), Alias::new(&k.name)))
                        .equals((m.clone(), Alias::new(&k.name))),
                )
            })
        };
        // The page of markers first, then the joins: the markers a round
        // skips (kept by its earlier batches) are skipped on the marker
        // table's key alone, not joined and dropped.
        let mut page = Query::select();
        page.columns(self.spec.pk.iter().map(|k| Alias::new(&k.name)))
            .columns(["ver", "wall_us", "gone"].map(Alias::new))
            .expr_as(
                Expr::col(Alias::new(rowid_name(&self.spec).ok_or_else(|| {
                    Error::Config(format!(
                        "{}: every name of SQLite's rowid is a key column",
                        self.spec.name
                    ))
                })?)),
                own("rowid"),
            )
            .from(Alias::new(dirty_table(&self.spec.name)))
            .limit(limit)
            .offset(offset);
        for k in &self.spec.pk {
            page.order_by(Alias::new(&k.name), Order::Asc);
        }
        q.from_subquery(page, m.clone())
            .join_as(
                JoinType::LeftJoin,
                Place::of(dialect::of_db(tx)?, &self.spec).table_ref(),
                t.clone(),
                on(&t),
            )
            .join_as(JoinType::LeftJoin, Alias::new(versions), v.clone(), on(&v));
        for k in &self.spec.pk {
            q.order_by((m.clone(), Alias::new(&k.name)), Order::Asc);
        }
        let version_prefix = format!("{OWN}v_");
        let rows = tx.query_all(&q).await?;
        let mut out: Vec<MarkedRow> = Vec::with_capacity(rows.len());
        for r in rows {
            let pk =
                <<E::PrimaryKey as PrimaryKeyTrait>::ValueType as TryGetableMany>::try_get_many_by_index(
                    &r,
                )
                .map_err(sea_orm::DbErr::from)?;
            let pk: ValueTuple = pk.into();
            let row = match r.try_get_by_index::<bool>(row)? {
                true => Some(self.image(&E::Model::from_query_result(&r, "")?)),
                false => None,
            };
            let version = match r.try_get_by_index::<Option<Vec<u8>>>(clocks)? {
                Some(clocks) => Some(StoredVersion {
                    key: self.key_of(&r, &version_prefix)?.ok_or_else(|| {
                        Error::Corrupt(format!("{}: a version row without a key", self.spec.name))
                    })?,
                    clocks,
                    del: r.try_get_by_index(del)?,
                    vals: r.try_get_by_index(vals)?,
                }),
                None => None,
            };
            let marker = Marker {
                pk: pk.into_iter().collect(),
                ver: r.try_get_by_index(ver)?,
                wall_us: r.try_get_by_index(wall_us)?,
                gone: r.try_get_by_index(gone)?,
                rowid: Some(r.try_get_by_index(rowid)?),
            };
            out.push(MarkedRow {
                marker,
                row,
                version,
            });
        }
        Ok(out)
    }

    async fn rows(&self, tx: &DatabaseTransaction, pks: &[Vec<Value>]) -> Result<Vec<RowImage>> {
        if pks.is_empty() {
            return Ok(Vec::new());
        }
        // Each key value as the dialect writes it (a PostgreSQL enum cast
        // to its type, a MySQL date-time after 2038 as a DATETIME), so it
        // finds the row with that exact key.
        let cond = keys_match(&self.spec, pks, dialect::of_db(tx)?);
        let models = E::find().filter(cond).all(tx).await?;
        Ok(models.iter().map(|m| self.image(m)).collect())
    }

    async fn scan(
        &self,
        tx: &DatabaseTransaction,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<RowImage>> {
        let mut q = E::find();
        for c in &self.keys {
            q = q.order_by_asc(*c);
        }
        let models = q.offset(offset).limit(limit).all(tx).await?;
        Ok(models.iter().map(|m| self.image(m)).collect())
    }
}

/// The runtime description of a `Syncable` entity's table.
pub fn table_spec<E>() -> TableSpec
where
    E: Syncable,
    E::Model: Sync,
{
    EntityTable::<E>::new().spec
}

/// Create a `Syncable` entity's table if it is missing, with the column
/// types tidesync uses on every dialect (see
/// the store's `create_table`: microsecond date-times and unbounded text
/// on MySQL, exact decimals on SQLite, ...), creating its PostgreSQL enum
/// types first.
pub async fn create_table<E, C>(db: &C) -> Result<()>
where
    E: Syncable,
    E::Model: Sync,
    C: ConnectionTrait,
{
    ensure_table(db, &table_spec::<E>()).await
}
