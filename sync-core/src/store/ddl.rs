//! DDL building blocks of every table tidesync creates: NOT NULL columns,
//! `VARCHAR(n)`, and creating a table with the options its dialect gives
//! every table.

use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Alias, ColumnDef, ColumnType, StringLen, TableCreateStatement};

use crate::dialect;
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
