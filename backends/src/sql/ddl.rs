//! The hub's tables: its own metadata, and the users' tables created from
//! their `TableSpec`s with the precision each dialect's default would lose.

use sea_orm::sea_query::{
    Alias, ColumnDef, ColumnType, Index, StringLen, Table, TableCreateStatement,
};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use sync_core::schema::{long_text, utf8mb4};
use sync_core::store::row_state_table;
use sync_core::{Result, TableSpec};

/// Key/value metadata of the hub: schema version, hub id, next sequence.
pub const HUB_META: &str = "_tidesync_hub_meta";
/// The change log, in hub sequence order.
pub const CHANGES: &str = "_tidesync_changes";
/// Replicated state of every row (values and per-column clocks).
pub const HUB_ROWS: &str = "_tidesync_hub_rows";
/// Per-origin progress: the last origin sequence applied.
pub const PEERS: &str = "_tidesync_peers";
/// Changes refused and parked (policy `Park`), with the reason.
pub const REJECTED: &str = "_tidesync_rejected";

fn col(name: &str, ty: ColumnType) -> ColumnDef {
    let mut c = ColumnDef::new_with_type(Alias::new(name), ty);
    c.not_null();
    c
}

/// DDL of the hub's metadata tables (`IF NOT EXISTS`).
pub fn hub_tables(backend: DbBackend) -> Vec<TableCreateStatement> {
    let text = long_text(backend);
    let v = |n| ColumnType::String(StringLen::N(n));
    vec![
        Table::create()
            .table(Alias::new(HUB_META))
            .if_not_exists()
            .col(col("key", v(64)).primary_key())
            .col(col("value", ColumnType::Text))
            .to_owned(),
        Table::create()
            .table(Alias::new(CHANGES))
            .if_not_exists()
            .col(col("hub_seq", ColumnType::BigInteger).primary_key())
            .col(col("origin", v(32)))
            .col(col("origin_seq", ColumnType::BigInteger))
            .col(col("tbl", v(64)))
            .col(col("pk", text.clone()))
            .col(col("op", v(8)))
            .col(col("payload", text.clone()))
            .col(col("hlc", v(64)))
            .index(
                Index::create()
                    .name("_tidesync_changes_origin")
                    .unique()
                    .col(Alias::new("origin"))
                    .col(Alias::new("origin_seq")),
            )
            .to_owned(),
        row_state_table(backend, HUB_ROWS),
        Table::create()
            .table(Alias::new(PEERS))
            .if_not_exists()
            .col(col("origin", v(32)).primary_key())
            .col(col("applied_seq", ColumnType::BigInteger))
            .to_owned(),
        Table::create()
            .table(Alias::new(REJECTED))
            .if_not_exists()
            .col(col("origin", v(32)))
            .col(col("origin_seq", ColumnType::BigInteger))
            .col(col("tbl", v(64)))
            .col(col("change", text.clone()))
            .col(col("reason", text))
            .primary_key(
                Index::create()
                    .col(Alias::new("origin"))
                    .col(Alias::new("origin_seq")),
            )
            .to_owned(),
    ]
}

/// The column type a hub table uses for a synced column: the entity's own,
/// except where the dialect's default would lose data.
///
/// | entity type | MySQL | PostgreSQL | SQLite |
/// |---|---|---|---|
/// | date-time (naive, UTC, offset) | `DATETIME(6)` (UTC) | as is (µs) | as is (text) |
/// | time | `TIME(6)` | as is | as is |
/// | `Decimal` without precision | `DECIMAL(65,30)` | as is (unbounded) | `TEXT` (REAL affinity rounds) |
/// | `String` without length, `Text` | `LONGTEXT` (key: `VARCHAR(255)`) | as is | as is |
/// | bytes | `LONGBLOB` (key: `VARBINARY(255)`) | as is | as is |
/// | enum | `ENUM(...)` | the enum type, created if missing | as is (text) |
pub fn hub_column_type(backend: DbBackend, ty: &ColumnType, key: bool) -> ColumnType {
    match backend {
        DbBackend::MySql => match ty {
            ColumnType::DateTime | ColumnType::Timestamp | ColumnType::TimestampWithTimeZone => {
                ColumnType::custom("DATETIME(6)")
            }
            ColumnType::Time => ColumnType::custom("TIME(6)"),
            ColumnType::Decimal(None) => ColumnType::Decimal(Some((65, 30))),
            ColumnType::String(StringLen::None)
            | ColumnType::String(StringLen::Max)
            | ColumnType::Text
                if !key =>
            {
                ColumnType::custom("LONGTEXT")
            }
            ColumnType::String(StringLen::Max) | ColumnType::Text => {
                ColumnType::String(StringLen::N(255))
            }
            ColumnType::Blob | ColumnType::VarBinary(_) | ColumnType::Binary(_) if !key => {
                ColumnType::custom("LONGBLOB")
            }
            ColumnType::Enum { variants, .. } => {
                let v: Vec<String> = variants
                    .iter()
                    .map(|v| v.to_string().replace('\'', "''"))
                    .collect();
                ColumnType::custom(format!("ENUM('{}')", v.join("', '")))
            }
            other => other.clone(),
        },
        DbBackend::Postgres => match ty {
            ColumnType::Enum { name, .. } => ColumnType::Custom(name.clone()),
            other => other.clone(),
        },
        _ => match ty {
            ColumnType::Decimal(_) | ColumnType::Money(_) => ColumnType::custom("TEXT"),
            other => other.clone(),
        },
    }
}

/// `CREATE TABLE IF NOT EXISTS` for a synced table on `backend`.
pub fn create_table(backend: DbBackend, spec: &TableSpec) -> TableCreateStatement {
    let mut t = Table::create();
    t.table(Alias::new(&spec.name)).if_not_exists();
    let mut pk = Index::create();
    for c in &spec.columns {
        let key = spec.pk.iter().any(|k| k.name == c.name);
        let mut def =
            ColumnDef::new_with_type(Alias::new(&c.name), hub_column_type(backend, &c.ty, key));
        if c.nullable && !key {
            def.null();
        } else {
            def.not_null();
        }
        t.col(def);
    }
    for c in &spec.local_only {
        t.col(
            ColumnDef::new_with_type(Alias::new(&c.name), hub_column_type(backend, &c.ty, false))
                .null(),
        );
    }
    for k in &spec.pk {
        pk.col(Alias::new(&k.name));
    }
    t.primary_key(&mut pk);
    utf8mb4(backend, &mut t);
    t.to_owned()
}

/// Create the PostgreSQL enum types a table needs, if missing.
pub async fn create_enum_types<C: ConnectionTrait>(db: &C, spec: &TableSpec) -> Result<()> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    for c in &spec.columns {
        if let ColumnType::Enum { name, variants } = &c.ty {
            let exists = db
                .query_one_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT 1 AS one FROM pg_type WHERE typname = $1",
                    [name.to_string().into()],
                ))
                .await?;
            if exists.is_none() {
                let labels: Vec<String> = variants
                    .iter()
                    .map(|v| format!("'{}'", v.to_string().replace('\'', "''")))
                    .collect();
                let sql = format!(
                    "CREATE TYPE {} AS ENUM ({})",
                    sync_core::schema::quote(DbBackend::Postgres, &name.to_string()),
                    labels.join(", ")
                );
                db.execute_unprepared(&sql).await?;
            }
        }
    }
    Ok(())
}

/// Create a synced table (and its enum types) on `db` if it is missing.
pub async fn ensure_table<C: ConnectionTrait>(db: &C, spec: &TableSpec) -> Result<()> {
    create_enum_types(db, spec).await?;
    db.execute(&create_table(db.get_database_backend(), spec))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::sea_query::{MysqlQueryBuilder, PostgresQueryBuilder, SqliteQueryBuilder};
    use sync_core::{ColumnSpec, ConflictPolicy};

    fn spec() -> TableSpec {
        let c = |n: &str, ty, nullable| ColumnSpec {
            name: n.into(),
            ty,
            nullable,
        };
        TableSpec {
            name: "t".into(),
            pk: vec![c("id", ColumnType::String(StringLen::None), false)],
            columns: vec![
                c("id", ColumnType::String(StringLen::None), false),
                c("at", ColumnType::TimestampWithTimeZone, false),
                c("amount", ColumnType::Decimal(None), true),
                c("body", ColumnType::String(StringLen::None), true),
                c("blob", ColumnType::VarBinary(StringLen::None), true),
            ],
            local_only: vec![],
            policy: ConflictPolicy::Lww,
            single_writer: false,
        }
    }

    #[test]
    fn mysql_keeps_fractions_digits_and_lengths() {
        assert_eq!(
            create_table(DbBackend::MySql, &spec()).to_string(MysqlQueryBuilder),
            "CREATE TABLE IF NOT EXISTS `t` ( `id` varchar(255) NOT NULL, `at` DATETIME(6) NOT NULL, \
             `amount` decimal(65, 30) NULL, `body` LONGTEXT NULL, `blob` LONGBLOB NULL, PRIMARY KEY (`id`) ) \
             DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        );
    }

    #[test]
    fn postgres_keeps_the_entity_types() {
        assert_eq!(
            create_table(DbBackend::Postgres, &spec()).to_string(PostgresQueryBuilder),
            "CREATE TABLE IF NOT EXISTS \"t\" ( \"id\" varchar NOT NULL, \"at\" timestamp with time zone NOT NULL, \
             \"amount\" decimal NULL, \"body\" varchar NULL, \"blob\" bytea NULL, PRIMARY KEY (\"id\") )"
        );
    }

    #[test]
    fn sqlite_stores_decimals_as_text() {
        assert_eq!(
            create_table(DbBackend::Sqlite, &spec()).to_string(SqliteQueryBuilder),
            "CREATE TABLE IF NOT EXISTS \"t\" ( \"id\" varchar NOT NULL, \"at\" timestamp_with_timezone_text NOT NULL, \
             \"amount\" TEXT NULL, \"body\" varchar NULL, \"blob\" varbinary_blob NULL, PRIMARY KEY (\"id\") )"
        );
    }
}
