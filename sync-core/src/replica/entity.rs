//! The entity side of capture: a [`TableHandle`] reads a `Syncable`
//! entity's markers and rows through SeaORM, type-erased so a replica can
//! hold tables of different entities.

use std::marker::PhantomData;

use sea_orm::sea_query::{Alias, Order, Query, ValueTuple};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, IdenStatic, Iterable, ModelTrait,
    PrimaryKeyToColumn, PrimaryKeyTrait, QueryFilter, QueryOrder, QueryResult, QuerySelect,
    TryGetableMany, Value,
};

use super::tables::dirty_table;
use crate::dialect;
use crate::model::change::{ColumnSpec, TableSpec};
use crate::model::error::Result;
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
}

/// A row of a synced table: key values and synced column values (in
/// [`TableSpec::columns`] order).
pub(crate) type RowImage = (Vec<Value>, Vec<Value>);

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
