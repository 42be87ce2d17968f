//! Key/value metadata tables: the replica's (`_tidesync_meta`) and the
//! hub's (`_tidesync_hub_meta`) have the same layout and the same code.

use std::collections::HashMap;

use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{
    Alias, ColumnType, Expr, ExprTrait, OnConflict, Query, Table, TableCreateStatement,
};

use crate::model::error::{Error, Result};
use crate::store::ddl::{not_null, varchar};

/// A key/value metadata table: the replica's (`_tidesync_meta`) or a hub's.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta(pub(crate) &'static str);

impl Meta {
    /// Read one value.
    pub(crate) async fn read<C: ConnectionTrait>(
        self,
        db: &C,
        key: &str,
    ) -> Result<Option<String>> {
        let stmt = Query::select()
            .column(Alias::new("value"))
            .from(Alias::new(self.0))
            .and_where(Expr::col(Alias::new("key")).eq(key))
            .to_owned();
        let row = db.query_one(&stmt).await?;
        Ok(row.map(|r| r.try_get::<String>("", "value")).transpose()?)
    }

    /// Read several values in one statement; keys without a value are
    /// absent from the map.
    pub(crate) async fn read_many<C: ConnectionTrait>(
        self,
        db: &C,
        keys: &[&str],
    ) -> Result<HashMap<String, String>> {
        let stmt = Query::select()
            .columns([Alias::new("key"), Alias::new("value")])
            .from(Alias::new(self.0))
            .and_where(Expr::col(Alias::new("key")).is_in(keys.iter().copied()))
            .to_owned();
        let mut out = HashMap::with_capacity(keys.len());
        for r in db.query_all(&stmt).await? {
            out.insert(r.try_get("", "key")?, r.try_get("", "value")?);
        }
        Ok(out)
    }

    /// Every key and value, in key order.
    pub(crate) async fn read_all<C: ConnectionTrait>(
        self,
        db: &C,
    ) -> Result<Vec<(String, String)>> {
        let stmt = Query::select()
            .columns([Alias::new("key"), Alias::new("value")])
            .from(Alias::new(self.0))
            .order_by(Alias::new("key"), sea_orm::sea_query::Order::Asc)
            .to_owned();
        let mut out = Vec::new();
        for r in db.query_all(&stmt).await? {
            out.push((r.try_get("", "key")?, r.try_get("", "value")?));
        }
        Ok(out)
    }

    /// Insert or overwrite several values in one statement.
    pub(crate) async fn upsert_many<C: ConnectionTrait>(
        self,
        db: &C,
        values: &[(&str, &str)],
    ) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let mut stmt = Query::insert();
        stmt.into_table(Alias::new(self.0))
            .columns([Alias::new("key"), Alias::new("value")])
            .on_conflict(
                OnConflict::column(Alias::new("key"))
                    .update_column(Alias::new("value"))
                    .to_owned(),
            );
        for (k, v) in values {
            stmt.values_panic([(*k).into(), (*v).into()]);
        }
        db.execute(&stmt).await?;
        Ok(())
    }

    /// Insert a value unless the key exists (safe when two processes
    /// install at once).
    pub(crate) async fn insert_if_missing<C: ConnectionTrait>(
        self,
        db: &C,
        key: &str,
        value: &str,
    ) -> Result<()> {
        let key_col = || Alias::new("key");
        let stmt = Query::insert()
            .into_table(Alias::new(self.0))
            .columns([key_col(), Alias::new("value")])
            .values_panic([key.into(), value.into()])
            .on_conflict(
                OnConflict::column(key_col())
                    .do_nothing_on([key_col()])
                    .to_owned(),
            )
            .to_owned();
        db.execute(&stmt).await?;
        Ok(())
    }

    /// Insert or overwrite a value.
    pub(crate) async fn upsert<C: ConnectionTrait>(
        self,
        db: &C,
        key: &str,
        value: &str,
    ) -> Result<()> {
        self.upsert_many(db, &[(key, value)]).await
    }

    /// Overwrite a value that exists.
    pub(crate) async fn write<C: ConnectionTrait>(
        self,
        db: &C,
        key: &str,
        value: &str,
    ) -> Result<()> {
        let stmt = Query::update()
            .table(Alias::new(self.0))
            .value(Alias::new("value"), value)
            .and_where(Expr::col(Alias::new("key")).eq(key))
            .to_owned();
        db.execute(&stmt).await?;
        Ok(())
    }

    /// Remove these keys.
    pub(crate) async fn remove<C: ConnectionTrait>(self, db: &C, keys: &[&str]) -> Result<()> {
        let stmt = Query::delete()
            .from_table(Alias::new(self.0))
            .and_where(Expr::col(Alias::new("key")).is_in(keys.iter().copied()))
            .to_owned();
        db.execute(&stmt).await?;
        Ok(())
    }

    /// Remove `key` if it holds `value` (and nothing else meanwhile).
    pub(crate) async fn remove_if<C: ConnectionTrait>(
        self,
        db: &C,
        key: &str,
        value: &str,
    ) -> Result<()> {
        let stmt = Query::delete()
            .from_table(Alias::new(self.0))
            .and_where(Expr::col(Alias::new("key")).eq(key))
            .and_where(Expr::col(Alias::new("value")).eq(value))
            .to_owned();
        db.execute(&stmt).await?;
        Ok(())
    }

    /// Remove every key that starts with `prefix` (which holds no `%` or
    /// `_`).
    pub(crate) async fn remove_prefixed<C: ConnectionTrait>(
        self,
        db: &C,
        prefix: &str,
    ) -> Result<()> {
        let stmt = Query::delete()
            .from_table(Alias::new(self.0))
            .and_where(Expr::col(Alias::new("key")).like(format!("{prefix}%")))
            .to_owned();
        db.execute(&stmt).await?;
        Ok(())
    }

    /// Lock the row of `key` until the transaction ends (a row lock on
    /// PostgreSQL and MySQL, the write lock on SQLite): the sequence lock.
    pub(crate) async fn lock<C: ConnectionTrait>(self, db: &C, key: &str) -> Result<()> {
        let stmt = Query::update()
            .table(Alias::new(self.0))
            .value(Alias::new("value"), Expr::col(Alias::new("value")))
            .and_where(Expr::col(Alias::new("key")).eq(key))
            .to_owned();
        db.execute(&stmt).await?;
        Ok(())
    }
}

impl Meta {
    /// DDL of the table (`IF NOT EXISTS`).
    pub(crate) fn table(self) -> TableCreateStatement {
        Table::create()
            .table(Alias::new(self.0))
            .if_not_exists()
            .col(not_null("key", varchar(64)).primary_key())
            .col(not_null("value", ColumnType::Text))
            .to_owned()
    }

    /// Record `supported` as the schema version of a new table, or check
    /// that the version recorded is not newer.
    ///
    /// # Errors
    /// [`Error::SchemaVersion`] when a newer release wrote it;
    /// [`Error::Corrupt`] when the recorded version is not a number.
    pub(crate) async fn check_version<C: ConnectionTrait>(
        self,
        db: &C,
        supported: i64,
    ) -> Result<()> {
        self.insert_if_missing(db, "schema_version", &supported.to_string())
            .await?;
        let v = self.read(db, "schema_version").await?.unwrap_or_default();
        let found: i64 = v.parse().map_err(|_| {
            Error::Corrupt(format!("{}: schema_version `{v}` is not a number", self.0))
        })?;
        if found > supported {
            return Err(Error::SchemaVersion { found, supported });
        }
        Ok(())
    }

    /// Read a value that must be there.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when it is missing.
    pub(crate) async fn require<C: ConnectionTrait>(self, db: &C, key: &str) -> Result<String> {
        self.read(db, key)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("{}: `{key}` missing", self.0)))
    }
}
