//! DDL building blocks of every table tidesync creates: NOT NULL columns,
//! `VARCHAR(n)`, and creating a table with the options its dialect gives
//! every table.

use sea_orm::sea_query::{Alias, ColumnDef, ColumnType, StringLen, TableCreateStatement};
use sea_orm::{ConnectionTrait, QueryResult, Statement};

use crate::dialect::{self, Dialect, Place};
use crate::model::error::Result;

/// A NOT NULL column.
pub(crate) fn not_null(name: &str, ty: ColumnType) -> ColumnDef {
    let mut c = ColumnDef::new_with_type(Alias::new(name), ty);
    c.not_null();
    c
}

/// `VARCHAR(n)`.
pub(crate) fn varchar(n: u32) -> ColumnType {
    ColumnType::String(StringLen::N(n))
}

/// Create a table (`IF NOT EXISTS` in the statement) with the options the
/// dialect gives every table tidesync creates.
pub(crate) async fn create<C: ConnectionTrait>(
    db: &C,
    mut table: TableCreateStatement,
) -> Result<()> {
    dialect::of_db(db)?.table_options(&mut table);
    db.execute(&table).await?;
    Ok(())
}

/// Rename the table `old` to `new` once: when `old` has `column` (it is
/// the table an earlier release made, not a placeholder) and `new` does
/// not exist. Another process renaming it meanwhile is fine.
pub(crate) async fn rename_once(
    db: &sea_orm::DatabaseConnection,
    old: &str,
    new: &str,
    column: &str,
) -> Result<()> {
    let d = dialect::of_db(db)?;
    let columns = |name| async move { existing_columns(db, d, Place::own(name)).await };
    if !columns(old).await?.iter().any(|c| c == column) || !columns(new).await?.is_empty() {
        return Ok(());
    }
    let rename = sea_orm::sea_query::Table::rename()
        .table(Alias::new(old), Alias::new(new))
        .to_owned();
    if let Err(e) = db.execute(&rename).await
        && columns(new).await?.is_empty()
    {
        return Err(e.into());
    }
    Ok(())
}

/// A table named `name` that no earlier release can use (its one column,
/// `marker`, says which version retired the name): an earlier release's
/// install, which makes its tables before it reads the schema version,
/// finds the name taken and fails, and so does a server of it still
/// running that reads or writes the table.
pub(crate) async fn placeholder<C: ConnectionTrait>(
    db: &C,
    name: &str,
    marker: &str,
) -> Result<()> {
    let t = sea_orm::sea_query::Table::create()
        .table(Alias::new(name))
        .if_not_exists()
        .col(ColumnDef::new_with_type(Alias::new(marker), ColumnType::Integer).null())
        .to_owned();
    create(db, t).await
}

/// The column names a table has now.
pub(crate) async fn existing_columns<C: ConnectionTrait>(
    db: &C,
    d: &dyn Dialect,
    table: Place<'_>,
) -> Result<Vec<String>> {
    let rows = catalog(db, d.columns_query(), table).await?;
    rows.iter()
        .map(|r| Ok(r.try_get_by_index::<String>(0)?))
        .collect()
}

/// The schema the table at `place` is in, where the dialect has schemas
/// (`None`: no schemas, or no such table).
pub(crate) async fn schema_of<C: ConnectionTrait>(
    db: &C,
    place: Place<'_>,
) -> Result<Option<String>> {
    let Some(sql) = dialect::of_db(db)?.schema_query() else {
        return Ok(None);
    };
    let rows = catalog(db, sql, place).await?;
    Ok(rows
        .first()
        .map(|r| r.try_get_by_index::<String>(0))
        .transpose()?)
}

/// The rows a catalog query of the dialect returns for the table at
/// `place` (its one parameter, named as the dialect's catalog names it).
pub(crate) async fn catalog<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    place: Place<'_>,
) -> Result<Vec<QueryResult>> {
    let name = dialect::of_db(db)?.catalog_name(place);
    Ok(db
        .query_all_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            [name.into()],
        ))
        .await?)
}

/// `prefix + table`, shortened with a stable hash to fit the 63-character
/// identifier limit of PostgreSQL (64 on MySQL).
pub(crate) fn short_name(prefix: &str, table: &str) -> String {
    let full = format!("{prefix}{table}");
    if full.len() <= 60 {
        return full;
    }
    let mut cut = 40;
    while !table.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{prefix}{}_{:016x}", &table[..cut], fnv(table))
}

/// FNV-1a of `text`: stable across releases and platforms.
pub(crate) fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
