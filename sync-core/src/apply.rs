//! Writing replicated rows into a table described by a [`TableSpec`],
//! without the entity compiled in: the hub's tables and a replica's pulled
//! changes go through here.
//!
//! Rows are written in batches: one multi-row upsert per table and column
//! set (bounded in rows, parameters and bytes), one multi-row delete per
//! table. Every value is checked against the target dialect first, so a value
//! it cannot hold is refused with table, column and value instead of being
//! truncated.

use std::collections::BTreeMap;

use sea_orm::sea_query::{
    Alias, ColumnType, Expr, ExprTrait, OnConflict, Query, SimpleExpr, ValueTuple,
};
use sea_orm::{ConnectionTrait, DbBackend, Value};

use crate::change::{ColumnSpec, TableSpec};
use crate::error::{Error, Result};
use crate::merge::RowState;
use crate::value::check_value;

/// Largest number of rows in one statement.
const MAX_ROWS: usize = 500;
/// Largest number of bound parameters in one statement (SQLite allows
/// 32766, PostgreSQL and MySQL 65535).
const MAX_PARAMS: usize = 30_000;
/// Approximate largest statement, in bytes of bound values (MariaDB's
/// default max_allowed_packet is 16 MiB).
const MAX_BYTES: usize = 4 << 20;

/// The expression that writes `value` into `column` of `table` on `backend`,
/// after checking the dialect can hold it.
pub fn value_expr(
    table: &str,
    column: &ColumnSpec,
    value: &Value,
    backend: DbBackend,
) -> Result<SimpleExpr> {
    check_value(table, &column.name, Some(&column.ty), value, Some(backend))?;
    let value = match value {
        // An enum read from a model comes as `Value::Enum` or a string;
        // write its text, cast to the type on PostgreSQL.
        Value::Enum(e) => match e {
            sea_orm::sea_query::OptionEnum::Some(e) => Value::String(Some(e.value.to_string())),
            sea_orm::sea_query::OptionEnum::None(_) => Value::String(None),
        },
        // sqlx would send it as a TIMESTAMP (ends in 2038): send DATETIME.
        Value::ChronoDateTimeUtc(t) if backend == DbBackend::MySql => {
            Value::ChronoDateTime(t.map(|t| t.naive_utc()))
        }
        v => v.clone(),
    };
    match (&column.ty, backend) {
        (ColumnType::Enum { name, .. }, DbBackend::Postgres) => {
            Ok(Expr::val(value).as_enum(name.clone()))
        }
        _ => Ok(Expr::val(value)),
    }
}

/// Upsert full rows (`live`) and delete rows (`dead`) of one table. Pass
/// parents before children: callers order tables, this orders nothing.
pub async fn write_rows<C: ConnectionTrait>(
    db: &C,
    spec: &TableSpec,
    live: &[&RowState],
    dead: &[Vec<Value>],
) -> Result<()> {
    upsert_rows(db, spec, live).await?;
    delete_rows(db, spec, dead).await
}

/// Insert or update rows from their states, all synced columns the state
/// has a value for.
pub async fn upsert_rows<C: ConnectionTrait>(
    db: &C,
    spec: &TableSpec,
    rows: &[&RowState],
) -> Result<()> {
    let backend = db.get_database_backend();
    // Group by the set of columns present (a column added by a newer client
    // is absent from older rows).
    let mut groups: BTreeMap<Vec<usize>, Vec<&RowState>> = BTreeMap::new();
    for r in rows {
        let present: Vec<usize> = spec
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| r.vals.contains_key(&c.name))
            .map(|(i, _)| i)
            .collect();
        groups.entry(present).or_default().push(r);
    }
    for (present, rows) in groups {
        let cols: Vec<&ColumnSpec> = present.iter().map(|i| &spec.columns[*i]).collect();
        for c in &spec.pk {
            if !cols.iter().any(|x| x.name == c.name) {
                return Err(Error::Corrupt(format!(
                    "row of `{}` without key column `{}`",
                    spec.name, c.name
                )));
            }
        }
        let updates: Vec<Alias> = cols
            .iter()
            .filter(|c| !spec.pk.iter().any(|k| k.name == c.name))
            .map(|c| Alias::new(&c.name))
            .collect();
        let keys: Vec<Alias> = spec.pk.iter().map(|c| Alias::new(&c.name)).collect();
        let mut start = 0;
        while start < rows.len() {
            let mut q = Query::insert();
            q.into_table(Alias::new(&spec.name))
                .columns(cols.iter().map(|c| Alias::new(&c.name)));
            let mut bytes = 0;
            let mut n = 0;
            while start + n < rows.len()
                && n < MAX_ROWS
                && (n + 1) * cols.len() <= MAX_PARAMS
                && (n == 0 || bytes < MAX_BYTES)
            {
                let r = rows[start + n];
                let mut exprs = Vec::with_capacity(cols.len());
                for c in &cols {
                    let v = &r.vals[&c.name];
                    bytes += crate::value::approx_size(v);
                    exprs.push(value_expr(&spec.name, c, v, backend)?);
                }
                q.values_panic(exprs);
                n += 1;
            }
            let on_conflict = if updates.is_empty() {
                OnConflict::columns(keys.clone())
                    .do_nothing_on(keys.clone())
                    .to_owned()
            } else {
                OnConflict::columns(keys.clone())
                    .update_columns(updates.clone())
                    .to_owned()
            };
            q.on_conflict(on_conflict);
            db.execute(&q).await?;
            start += n;
        }
    }
    Ok(())
}

/// Delete rows by primary key.
pub async fn delete_rows<C: ConnectionTrait>(
    db: &C,
    spec: &TableSpec,
    keys: &[Vec<Value>],
) -> Result<()> {
    for chunk in keys.chunks(MAX_ROWS) {
        let cond = if spec.pk.len() == 1 {
            Expr::col(Alias::new(&spec.pk[0].name)).is_in(chunk.iter().map(|k| k[0].clone()))
        } else {
            Expr::tuple(spec.pk.iter().map(|c| Expr::col(Alias::new(&c.name))))
                .in_tuples(chunk.iter().map(|k| ValueTuple::Many(k.clone())))
        };
        let q = Query::delete()
            .from_table(Alias::new(&spec.name))
            .and_where(cond)
            .to_owned();
        db.execute(&q).await?;
    }
    Ok(())
}
