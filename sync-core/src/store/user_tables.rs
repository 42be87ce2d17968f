//! The users' synced tables as tidesync creates them (on a hub, or on a
//! replica that asks for it): column types that lose nothing on each
//! dialect, custom types first, nullable columns added by later releases.

use sea_orm::sea_query::{Alias, ColumnDef, Index, Table, TableCreateStatement};
use sea_orm::{ConnectionTrait, Statement};

use crate::dialect::{self, Dialect, Place};
use crate::model::change::TableSpec;
use crate::model::error::{Error, Result};
use crate::store::ddl::existing_columns;

/// `CREATE TABLE IF NOT EXISTS` for a synced table, with the column types
/// tidesync uses: the entity's own, except where the dialect's default would
/// lose data.
///
/// | entity type | MySQL | PostgreSQL | SQLite |
/// |---|---|---|---|
/// | date-time (naive, UTC, offset) | `DATETIME(6)` (UTC) | as is (µs) | as is (text) |
/// | time | `TIME(6)` | as is | as is |
/// | `Decimal` without precision | `DECIMAL(65,28)` | as is (unbounded) | as is (REAL: values that do not survive an `f64` are refused) |
/// | `i8` | as is | `"char"` (one byte; sqlx binds `i8` as `"char"`) | as is |
/// | `String` without length, `Text` | `LONGTEXT` (key: `VARCHAR(255)`) | as is | as is |
/// | bytes | `LONGBLOB` (key: `VARBINARY(255)`) | as is | as is |
/// | enum | `ENUM(...)` | the enum type, created if missing | as is (text) |
pub(crate) fn create_table(d: &dyn Dialect, spec: &TableSpec) -> TableCreateStatement {
    let mut t = Table::create();
    t.table(Place::of(d, spec).table_ref()).if_not_exists();
    for c in &spec.columns {
        let key = spec.pk.iter().any(|k| k.name == c.name);
        let mut def = ColumnDef::new_with_type(Alias::new(&c.name), d.column_type(&c.ty, key));
        if c.nullable && !key {
            def.null();
        } else {
            def.not_null();
        }
        t.col(def);
    }
    for c in &spec.local_only {
        t.col(ColumnDef::new_with_type(Alias::new(&c.name), d.column_type(&c.ty, false)).null());
    }
    let mut pk = Index::create();
    for k in &spec.pk {
        pk.col(Alias::new(&k.name));
    }
    t.primary_key(&mut pk);
    d.table_options(&mut t);
    t.to_owned()
}

/// Whether the existence query `sql` finds `name`.
async fn found<C: ConnectionTrait>(db: &C, sql: &str, name: &str) -> Result<bool> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            [name.into()],
        ))
        .await?;
    Ok(row.is_some())
}

/// Create the types a table's columns need (PostgreSQL enums), if missing.
async fn create_custom_types<C: ConnectionTrait>(
    db: &C,
    d: &dyn Dialect,
    spec: &TableSpec,
) -> Result<()> {
    for (_, create) in missing_types(db, d, spec).await? {
        db.execute_unprepared(&create).await?;
    }
    Ok(())
}

/// The custom types (PostgreSQL enums) `spec`'s table needs that the
/// database lacks: each name and the statement that creates it.
pub(crate) async fn missing_types<C: ConnectionTrait>(
    db: &C,
    d: &dyn Dialect,
    spec: &TableSpec,
) -> Result<Vec<(String, String)>> {
    let Some(exists) = d.type_exists_query() else {
        return Ok(Vec::new());
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, create) in d.custom_types(spec) {
        // One type may serve several columns: named once.
        if !out.iter().any(|(n, _)| *n == name) && !found(db, exists, &name).await? {
            out.push((name, create));
        }
    }
    Ok(out)
}

/// Create a synced table (and its custom types, and its PostgreSQL schema)
/// on `db` if it is missing. A missing table the dialect cannot create
/// (its key too long to index on MySQL) is refused with the reason.
///
/// A table that exists but lacks nullable columns of the spec (a newer
/// client version added them) gets them with `ALTER TABLE ... ADD COLUMN`;
/// a missing NOT NULL column is refused: add it by a migration with a
/// default.
pub(crate) async fn ensure_table<C: ConnectionTrait>(db: &C, spec: &TableSpec) -> Result<()> {
    let d = dialect::of_db(db)?;
    if let Some(reason) = d.key_refusal(spec)
        && existing_columns(db, d, Place::of(d, spec))
            .await?
            .is_empty()
    {
        return Err(Error::Config(reason));
    }
    if let (Some(schema), Some(exists)) = (Place::of(d, spec).schema, d.schema_exists_query()) {
        // Created only when missing: `CREATE SCHEMA IF NOT EXISTS` needs
        // the right to create schemas in the database even when it exists.
        if !found(db, exists, schema).await? {
            db.execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS {}", d.quote(schema)))
                .await?;
        }
    }
    create_custom_types(db, d, spec).await?;
    db.execute(&create_table(d, spec)).await?;
    let existing = existing_columns(db, d, Place::of(d, spec)).await?;
    let keys: Vec<&str> = spec.pk.iter().map(|c| c.name.as_str()).collect();
    let all = spec.columns.iter().map(|c| (c, false));
    for (c, local_only) in all.chain(spec.local_only.iter().map(|c| (c, true))) {
        if existing.iter().any(|e| e == &c.name) {
            continue;
        }
        if !(c.nullable || local_only) || keys.contains(&c.name.as_str()) {
            return Err(Error::Config(format!(
                "table `{}` has no column `{}`, which is NOT NULL: add it with a default by a migration",
                spec.name, c.name
            )));
        }
        let mut def = ColumnDef::new_with_type(Alias::new(&c.name), d.column_type(&c.ty, false));
        def.null();
        let alter = Table::alter()
            .table(Place::of(d, spec).table_ref())
            .add_column(&mut def)
            .to_owned();
        db.execute(&alter).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{column, table};

    use sea_orm::DbBackend;
    use sea_orm::sea_query::{ColumnType, StringLen};
    use sea_orm::sea_query::{MysqlQueryBuilder, PostgresQueryBuilder, SqliteQueryBuilder};

    fn d(kind: DbBackend) -> &'static dyn Dialect {
        dialect::of(kind).unwrap()
    }

    fn spec() -> TableSpec {
        let text = || ColumnType::String(StringLen::None);
        let columns = vec![
            column("id", text(), false),
            column("at", ColumnType::TimestampWithTimeZone, false),
            column("amount", ColumnType::Decimal(None), true),
            column("body", text(), true),
            column("blob", ColumnType::VarBinary(StringLen::None), true),
        ];
        table("t", &["id"], columns)
    }

    /// InnoDB indexes 3072 bytes of a key: 768 characters of utf8mb4.
    #[test]
    fn mysql_refuses_a_key_it_cannot_index() {
        let text = |n| ColumnType::String(StringLen::N(n));
        let keyed = |n| table("t", &["k"], vec![column("k", text(n), false)]);
        let mysql = d(DbBackend::MySql);
        assert_eq!(mysql.key_refusal(&keyed(768)), None);
        let r = mysql.key_refusal(&keyed(769)).unwrap();
        assert!(
            r.starts_with("table `t`: MySQL indexes at most 3072 bytes")
                && r.contains("`k` up to 3076 bytes")
                && r.contains("at most 768 characters"),
            "{r}"
        );
        for other in [DbBackend::Postgres, DbBackend::Sqlite] {
            assert_eq!(d(other).key_refusal(&keyed(5000)), None);
        }
        // Bytes count as declared; the columns of a key add up; a column
        // of no text (a number) is not named.
        let two = |n| {
            table(
                "t",
                &["a", "n", "b"],
                vec![
                    column("a", ColumnType::VarBinary(StringLen::N(n)), false),
                    column("n", ColumnType::BigInteger, false),
                    column("b", text(300), false),
                    column("c", text(5000), false),
                ],
            )
        };
        assert_eq!(mysql.key_refusal(&two(1872)), None);
        let r = mysql.key_refusal(&two(1873)).unwrap();
        assert!(
            r.contains("`a` up to 1873 bytes, `b` up to 1200 bytes (utf8mb4") && !r.contains("`n`"),
            "{r}"
        );
    }

    #[test]
    fn mysql_keeps_fractions_digits_and_lengths() {
        assert_eq!(
            create_table(d(DbBackend::MySql), &spec()).to_string(MysqlQueryBuilder),
            "CREATE TABLE IF NOT EXISTS `t` ( `id` varchar(255) NOT NULL, `at` DATETIME(6) NOT NULL, \
             `amount` decimal(65, 28) NULL, `body` LONGTEXT NULL, `blob` LONGBLOB NULL, PRIMARY KEY (`id`) ) \
             DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        );
    }

    /// Key columns need an indexable type on MySQL: text keys become
    /// VARCHAR(255) and binary keys keep their type; other columns take the
    /// long types.
    #[test]
    fn mysql_keys_keep_indexable_types() {
        let ty = |t: ColumnType, key| d(DbBackend::MySql).column_type(&t, key);
        assert_eq!(
            ty(ColumnType::Text, true),
            ColumnType::String(StringLen::N(255))
        );
        assert_eq!(ty(ColumnType::Text, false), ColumnType::custom("LONGTEXT"));
        for bytes in [
            ColumnType::Blob,
            ColumnType::VarBinary(StringLen::N(16)),
            ColumnType::Binary(16),
        ] {
            assert_eq!(ty(bytes.clone(), true), bytes);
            assert_eq!(ty(bytes, false), ColumnType::custom("LONGBLOB"));
        }
        // PostgreSQL: sqlx reads `i8` only from the one-byte "char".
        let pg = |t: ColumnType| d(DbBackend::Postgres).column_type(&t, false);
        assert_eq!(pg(ColumnType::TinyInteger), ColumnType::custom("\"char\""));
        assert_eq!(pg(ColumnType::Text), ColumnType::Text);
    }

    #[test]
    fn postgres_keeps_the_entity_types() {
        assert_eq!(
            create_table(d(DbBackend::Postgres), &spec()).to_string(PostgresQueryBuilder),
            "CREATE TABLE IF NOT EXISTS \"t\" ( \"id\" varchar NOT NULL, \"at\" timestamp with time zone NOT NULL, \
             \"amount\" decimal NULL, \"body\" varchar NULL, \"blob\" bytea NULL, PRIMARY KEY (\"id\") )"
        );
    }

    #[test]
    fn sqlite_keeps_the_entity_types() {
        assert_eq!(
            create_table(d(DbBackend::Sqlite), &spec()).to_string(SqliteQueryBuilder),
            "CREATE TABLE IF NOT EXISTS \"t\" ( \"id\" varchar NOT NULL, \"at\" timestamp_with_timezone_text NOT NULL, \
             \"amount\" real_decimal NULL, \"body\" varchar NULL, \"blob\" varbinary_blob NULL, PRIMARY KEY (\"id\") )"
        );
    }
}
