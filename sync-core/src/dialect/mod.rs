//! Layer 2, the SQL dialects: everything that differs between PostgreSQL,
//! MySQL/MariaDB and SQLite, one file per database.
//!
//! [`Dialect`] is implemented once per database, each in its own file.
//! [`of`] is the one place in tidesync that matches on the kind of
//! database; every other module asks the dialect. SeaORM's `DbBackend` is
//! `#[non_exhaustive]`, so the match cannot be exhaustive: a kind without a
//! dialect (one SeaORM adds later) is an error, never another database's
//! SQL.
//!
//! The dialects are not behind the cargo features `sqlite`, `postgres` and
//! `mysql`, which select SeaORM's drivers: they are text and tables, with
//! no driver in them, and Cargo merges features, so an application may get
//! a driver through its own `sea-orm` dependency. Gating the dialects would
//! refuse a database the application can connect to.
//! What differs: identifier quoting, column types, table options, the
//! capture triggers and their marker upsert, the session id the triggers
//! compare, key-IN conditions, plan hints and statistics, the values each
//! database cannot hold, and native error codes.

mod mysql;
mod place;
mod postgres;
mod sqlite;
mod triggers;
mod values;

use sea_orm::sea_query::{
    Alias, ColumnType, Expr, ExprTrait, SimpleExpr, TableCreateStatement, Value,
};
use sea_orm::{ConnectionTrait, DbBackend, DbErr};

use crate::model::change::TableSpec;
use crate::model::error::{Error, ErrorKind, Result};

pub(crate) use place::Place;
pub(crate) use triggers::{Capture, Trigger};
pub(crate) use values::check_value;
pub use values::validate_active_model;

/// What one database does differently. Implemented by `Postgres`, `MySql`
/// and `Sqlite`, each in its own file; get one with [`of`]. The provided
/// methods are what more than one database does.
pub(crate) trait Dialect: Send + Sync {
    /// Quote an identifier.
    fn quote(&self, ident: &str) -> String {
        format!("\"{}\"", ident.replace('"', "\"\""))
    }

    /// Whether tables live in schemas that statements name (PostgreSQL):
    /// see [`Place`].
    fn has_schemas(&self) -> bool {
        false
    }

    /// Whether a key column of one table compares with another table's
    /// whatever their collations, so that sealing may join the markers
    /// with their rows and version rows (SQLite: the left operand's
    /// collation applies). PostgreSQL refuses to compare two columns of
    /// different non-default collations, and with a non-deterministic one
    /// matches keys the marker does not hold; MySQL's collations mix by
    /// precedence rules; there sealing reads them by the markers' keys.
    fn joins_keys(&self) -> bool {
        false
    }

    /// Whether a value is stored in the form it is bound in, so that two
    /// forms of one decimal (`1.5`, `1.50`) or one date-time (its instant
    /// at two offsets) are two keys of a table (SQLite, which keeps them
    /// as text); elsewhere a typed column keeps one.
    fn keeps_bound_forms(&self) -> bool {
        false
    }

    /// Whether a statement may carry inserts and updates in its `WITH`
    /// clause (PostgreSQL's data-modifying CTEs), each run once whether
    /// the statement reads it or not: several writes in one round trip.
    fn writes_in_with(&self) -> bool {
        false
    }

    /// Whether column names that differ in case only name one column
    /// (SQLite, MySQL); PostgreSQL's quoted names keep their case.
    fn names_ignore_case(&self) -> bool {
        true
    }

    /// The parameter that names the table at `place` in this dialect's
    /// catalog queries ([`Dialect::columns_query`] and the like).
    fn catalog_name(&self, place: Place<'_>) -> String {
        place.name.to_owned()
    }

    /// A catalog query with one parameter, the table (see
    /// [`Dialect::catalog_name`]), returning the schema it is in (no row:
    /// no such table); `None` where the dialect has no schemas.
    fn schema_query(&self) -> Option<&'static str> {
        None
    }

    /// A query with one parameter, a schema name, that returns a row when
    /// the schema exists (`None`: no schemas).
    fn schema_exists_query(&self) -> Option<&'static str> {
        None
    }

    /// A text column that holds at least a few megabytes.
    fn long_text(&self) -> ColumnType {
        ColumnType::Text
    }

    /// A bytes column that holds at least a few megabytes.
    fn long_bytes(&self) -> ColumnType {
        ColumnType::Blob
    }

    /// The column type tidesync gives a synced column of type `ty` when it
    /// creates a table (`key`: part of the primary key).
    fn column_type(&self, ty: &ColumnType, key: bool) -> ColumnType;

    /// The type of a key column in a dirty-marker table: the entity's own,
    /// with enums mapped the way SeaORM's schema builder maps them.
    fn marker_key_type(&self, ty: &ColumnType) -> ColumnType;

    /// Options every table tidesync creates gets (MySQL: UTF-8 throughout).
    fn table_options(&self, _table: &mut TableCreateStatement) {}

    /// The types a table's columns need created first, as `(name,
    /// CREATE TYPE statement)` (PostgreSQL enums; nothing elsewhere).
    fn custom_types(&self, _spec: &TableSpec) -> Vec<(String, String)> {
        Vec::new()
    }

    /// A query with one parameter, the type name, that returns a row when
    /// the type exists (`None`: no custom types).
    fn type_exists_query(&self) -> Option<&'static str> {
        None
    }

    /// A query with one parameter, the table (see
    /// [`Dialect::catalog_name`]), returning the names of
    /// its columns.
    fn columns_query(&self) -> &'static str;

    /// The capture triggers of a table, in creation order.
    fn triggers(&self, capture: &Capture<'_>) -> Vec<Trigger>;

    /// A query with one parameter, the table (see
    /// [`Dialect::catalog_name`]), returning the names of
    /// its triggers, for a database whose `CREATE TRIGGER` cannot replace
    /// an existing one: the replica creates the triggers it lacks and drops
    /// its own that are no longer wanted (`None`: the statements replace
    /// in place).
    fn triggers_query(&self) -> Option<&'static str> {
        None
    }

    /// `DROP TRIGGER` of one of a table's triggers named by
    /// [`Dialect::triggers_query`].
    fn drop_trigger(&self, name: &str, _table: &str) -> String {
        format!("DROP TRIGGER IF EXISTS {}", self.quote(name))
    }

    /// A query with one parameter, the table (see
    /// [`Dialect::catalog_name`]), returning (column name,
    /// full type as the database writes it: `datetime(6)`,
    /// `decimal(20,4)`, ...) for each column of the table, where a dirty
    /// marker must copy the key's type from the table itself to hold it
    /// exactly; `None` where the type of the entity's column will do
    /// (SQLite stores any value in any column).
    fn key_types_query(&self) -> Option<&'static str> {
        None
    }

    /// Why this dialect cannot create `spec`'s table as tidesync would
    /// (its key too long to index), naming the table and the key columns;
    /// `None` where it can.
    fn key_refusal(&self, _spec: &TableSpec) -> Option<String> {
        None
    }

    /// A query with one parameter, the table (see
    /// [`Dialect::catalog_name`]), returning (index name,
    /// column name) for the columns of each unique index other than the
    /// key, in index order, where the capture triggers need them (see
    /// `Capture::uniques`); `None` where they do not.
    fn unique_columns_query(&self) -> Option<&'static str> {
        None
    }

    /// SQL for the id of the current session, which the triggers compare
    /// with the sessions applying pulled changes.
    fn session_expr(&self) -> &'static str;

    /// SQL for the database server's wall time, in microseconds since the
    /// Unix epoch (the capture triggers stamp markers with it; the hub
    /// measures pushed clocks against it).
    fn now_us(&self) -> &'static str;

    /// `pk IN (keys)` over a row-state table's text keys.
    fn key_in(&self, keys: &[String]) -> Result<SimpleExpr> {
        Ok(Expr::col(Alias::new("pk")).is_in(keys.iter().cloned()))
    }

    /// `(a, b) > (x, y)`, in the form the database serves from an index on
    /// `(a, b)`.
    fn after(&self, columns: [SimpleExpr; 2], values: [Value; 2]) -> SimpleExpr {
        Expr::tuple(columns).gt(Expr::tuple(values.map(Expr::val)))
    }

    /// A statement that makes the rest of the transaction plan each
    /// statement for its own parameters (`None`: nothing to do).
    fn plan_hint(&self) -> Option<&'static str> {
        None
    }

    /// [`plan_hint`](Dialect::plan_hint) as an expression a `SELECT` can
    /// return, for a transaction that runs a `SELECT` first anyway (one
    /// statement fewer).
    fn plan_hint_expr(&self) -> Option<&'static str> {
        None
    }

    /// A statement that refreshes the statistics of these `(table,
    /// columns)` (`None`: the database needs none).
    fn analyze(&self, _tables: &[(Place<'_>, &[&str])]) -> Option<String> {
        None
    }

    /// Whether the upsert clause fires on a collision with any unique
    /// index, not only the key's (MySQL's `ON DUPLICATE KEY UPDATE`): it
    /// would then update the row that holds the value instead of failing.
    fn upsert_takes_any_unique(&self) -> bool {
        false
    }

    /// Whether rows must be locked with `SELECT ... FOR UPDATE` before a
    /// read-merge-write (`false` where a write transaction locks the whole
    /// database).
    fn locks_rows(&self) -> bool;

    /// The expression that writes `value` into a column of type `ty`.
    /// How a key column of type `ty` is selected to be read (as the value
    /// the entity's field decodes): the column itself, except where the
    /// driver cannot decode the column's own type (a PostgreSQL enum,
    /// selected as text).
    fn read_key_column(&self, _ty: &ColumnType, column: &str) -> SimpleExpr {
        Expr::col(Alias::new(column))
    }

    /// The expression that writes `value` into a column of type `ty`:
    /// [`Dialect::shape`] around the parameter [`Dialect::bind_value`]
    /// gives.
    fn write_value(&self, ty: &ColumnType, value: Value) -> SimpleExpr {
        self.shape(ty, Expr::val(self.bind_value(ty, value)))
    }

    /// The value bound to write `value` into a column of type `ty`.
    fn bind_value(&self, _ty: &ColumnType, value: Value) -> Value {
        value
    }

    /// The expression around a bound parameter that writes a column of type
    /// `ty` (a cast, where the dialect needs one). It depends on the type
    /// only, so a statement's text can be built once for any values.
    fn shape(&self, _ty: &ColumnType, param: SimpleExpr) -> SimpleExpr {
        param
    }

    /// The kind of database this dialect writes.
    fn backend(&self) -> DbBackend;

    /// Why this database cannot hold `value` exactly, if it cannot.
    fn refuses(&self, value: &Value) -> Option<&'static str>;

    /// Why SeaORM's own binding would write `value` as something else on
    /// this database, if it would.
    fn refuses_binding(&self, _value: &Value) -> Option<&'static str> {
        None
    }

    /// The kind of a native error code (SQLSTATE, error number, extended
    /// result code); `None` for a code this database does not use.
    fn error_kind(&self, code: &str, message: &str) -> Option<ErrorKind>;
}

/// The dialect of a database kind.
///
/// # Errors
/// [`Error::Config`] for a kind tidesync has no dialect for.
pub(crate) fn of(kind: DbBackend) -> Result<&'static dyn Dialect> {
    match kind {
        DbBackend::Postgres => Ok(&postgres::Postgres),
        DbBackend::MySql => Ok(&mysql::MySql),
        DbBackend::Sqlite => Ok(&sqlite::Sqlite),
        // `DbBackend` is non-exhaustive: a database SeaORM adds later has
        // no dialect until one is written, and gets none by default.
        other => Err(Error::Config(format!("no SQL dialect for {other:?}"))),
    }
}

/// The dialect of the database behind `db`.
pub(crate) fn of_db<C: ConnectionTrait>(db: &C) -> Result<&'static dyn Dialect> {
    of(db.get_database_backend())
}

/// Every dialect.
fn all() -> impl Iterator<Item = &'static dyn Dialect> {
    [DbBackend::Postgres, DbBackend::MySql, DbBackend::Sqlite]
        .into_iter()
        .filter_map(|k| of(k).ok())
}

/// A database error, classified by the native code of the database that
/// raised it.
impl From<DbErr> for Error {
    fn from(e: DbErr) -> Error {
        let kind = error_kind(&e);
        Error::Database { source: e, kind }
    }
}

fn error_kind(e: &DbErr) -> ErrorKind {
    match e {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => ErrorKind::Connection,
        DbErr::Exec(r) | DbErr::Query(r) => runtime_kind(r),
        _ => ErrorKind::Other,
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
fn runtime_kind(runtime: &sea_orm::RuntimeErr) -> ErrorKind {
    use sea_orm::sqlx::Error as SqlxError;
    let sea_orm::RuntimeErr::SqlxError(sqlx) = runtime else {
        return ErrorKind::Other;
    };
    match &**sqlx {
        SqlxError::Io(_)
        | SqlxError::Tls(_)
        | SqlxError::PoolTimedOut
        | SqlxError::PoolClosed
        | SqlxError::WorkerCrashed => ErrorKind::Connection,
        SqlxError::Database(db) => code_kind(&database_code(&**db), db.message()),
        _ => ErrorKind::Other,
    }
}

/// A database error's native code: its SQLSTATE, except on MySQL its
/// error number (sqlx gives MySQL's SQLSTATE as the code, a class as wide
/// as `23000` for every integrity error).
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
fn database_code(db: &dyn sea_orm::sqlx::error::DatabaseError) -> String {
    #[cfg(feature = "mysql")]
    if let Some(my) = db.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>() {
        return my.number().to_string();
    }
    db.code().map(|c| c.into_owned()).unwrap_or_default()
}

#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
fn runtime_kind(_runtime: &sea_orm::RuntimeErr) -> ErrorKind {
    ErrorKind::Other
}

/// The native code of a database error (a SQLSTATE, a MySQL error number,
/// a SQLite extended result code), if it has one.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub(crate) fn native_code(e: &Error) -> Option<String> {
    let Error::Database {
        source:
            DbErr::Exec(sea_orm::RuntimeErr::SqlxError(sqlx))
            | DbErr::Query(sea_orm::RuntimeErr::SqlxError(sqlx)),
        ..
    } = e
    else {
        return None;
    };
    match &**sqlx {
        sea_orm::sqlx::Error::Database(db) => Some(database_code(&**db)).filter(|c| !c.is_empty()),
        _ => None,
    }
}

#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
pub(crate) fn native_code(_e: &Error) -> Option<String> {
    None
}

#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(dead_code)
)]
/// The kind of a native code, asking each dialect (their codes
/// do not overlap: SQLSTATEs, four-digit MySQL numbers, SQLite's extended
/// result codes).
fn code_kind(code: &str, message: &str) -> ErrorKind {
    all()
        .find_map(|d| d.error_kind(code, message))
        .unwrap_or(ErrorKind::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sealing joins the markers with their rows on SQLite only, where a
    /// key column compares with another table's whatever the collations
    /// (PostgreSQL and MySQL refuse or pick a collation); and names ignore
    /// case everywhere but PostgreSQL, where a quoted `"Ver"` is not `ver`.
    #[test]
    fn which_dialects_join_keys_and_ignore_the_case_of_names() {
        use sea_orm::DatabaseBackend::{MySql, Postgres, Sqlite};
        let at = |k| of(k).unwrap();
        assert!(at(Sqlite).joins_keys());
        assert!(!at(Postgres).joins_keys());
        assert!(!at(MySql).joins_keys());
        assert!(at(Sqlite).keeps_bound_forms());
        assert!(!at(Postgres).keeps_bound_forms());
        assert!(!at(MySql).keeps_bound_forms());
        assert!(at(Sqlite).names_ignore_case());
        assert!(at(MySql).names_ignore_case());
        assert!(!at(Postgres).names_ignore_case());
    }

    /// Each dialect's native codes, and that no dialect claims another's.
    #[test]
    fn native_codes_map_to_kinds() {
        use ErrorKind::*;
        use sea_orm::DatabaseBackend::{MySql, Postgres, Sqlite};
        let codes = [
            (Postgres, "23505", UniqueViolation),
            (Postgres, "23503", ForeignKeyViolation),
            (Postgres, "23502", NotNullViolation),
            (Postgres, "23514", CheckViolation),
            (Postgres, "22001", DataTooLong),
            (Postgres, "22003", DataTooLong),
            (Postgres, "40001", Serialization),
            (Postgres, "40P01", Serialization),
            (Postgres, "55P03", Serialization),
            (Postgres, "08006", Connection),
            (Postgres, "57P01", Connection),
            (MySql, "1062", UniqueViolation),
            (MySql, "1586", UniqueViolation),
            (MySql, "1452", ForeignKeyViolation),
            (MySql, "1217", ForeignKeyViolation),
            (MySql, "1048", NotNullViolation),
            (MySql, "1364", NotNullViolation),
            (MySql, "3819", CheckViolation),
            (MySql, "4025", CheckViolation),
            (MySql, "1406", DataTooLong),
            (MySql, "1264", DataTooLong),
            (MySql, "1213", Serialization),
            (MySql, "1205", Serialization),
            (MySql, "2013", Connection),
            (MySql, "1927", Connection),
            (Sqlite, "2067", UniqueViolation),
            (Sqlite, "1555", UniqueViolation),
            (Sqlite, "787", ForeignKeyViolation),
            (Sqlite, "1299", NotNullViolation),
            (Sqlite, "275", CheckViolation),
            (Sqlite, "5", Serialization),
            (Sqlite, "6", Serialization),
            (Sqlite, "261", Serialization),
            (Sqlite, "517", Serialization),
        ];
        for (kind, code, expected) in codes {
            for other in [Postgres, MySql, Sqlite] {
                let got = of(other).unwrap().error_kind(code, "");
                let want = (other == kind).then_some(expected);
                assert_eq!(got, want, "{code} on {other:?}");
            }
            assert_eq!(code_kind(code, ""), expected, "{code}");
        }
        let locked = |k| of(k).unwrap().error_kind("", "database is locked");
        assert_eq!(locked(Sqlite), Some(Serialization));
        assert_eq!(locked(Postgres), None);
        assert_eq!(locked(MySql), None);
        assert_eq!(code_kind("", "database is locked"), Serialization);
        assert_eq!(code_kind("42P01", ""), Other);
    }

    #[test]
    fn a_connection_failure_is_offline() {
        let e = Error::from(DbErr::Conn(sea_orm::RuntimeErr::Internal("refused".into())));
        assert_eq!(e.kind(), ErrorKind::Connection);
        assert!(e.is_retryable());
        assert!(matches!(e.or_offline(), Error::Offline(_)));
        let other = Error::from(DbErr::Custom("no".into()));
        assert_eq!(other.kind(), ErrorKind::Other);
        assert!(matches!(other.or_offline(), Error::Database { .. }));
    }

    #[test]
    fn every_kind_has_its_dialect() {
        for kind in [DbBackend::Postgres, DbBackend::MySql, DbBackend::Sqlite] {
            assert!(of(kind).is_ok(), "{kind:?}");
        }
        assert_eq!(all().count(), 3);
    }
    #[test]
    fn key_lists_are_one_array_parameter_on_postgres() {
        use sea_orm::sea_query::Query;
        let keys = vec!["[1]".to_owned(), "[\"a'b\"]".to_owned()];
        let q = |b: DbBackend| {
            Query::select()
                .column(Alias::new("pk"))
                .from(Alias::new("s"))
                .and_where(of(b).unwrap().key_in(&keys).unwrap())
                .to_owned()
        };
        let (sql, values) = q(DbBackend::Postgres).build(sea_orm::sea_query::PostgresQueryBuilder);
        assert_eq!(
            sql,
            r#"SELECT "pk" FROM "s" WHERE "pk" = ANY(ARRAY(SELECT jsonb_array_elements_text($1::jsonb)))"#
        );
        assert_eq!(values.0, vec![Value::from(r#"["[1]","[\"a'b\"]"]"#)]);
        let (sql, values) = q(DbBackend::Sqlite).build(sea_orm::sea_query::SqliteQueryBuilder);
        assert_eq!(sql, r#"SELECT "pk" FROM "s" WHERE "pk" IN (?, ?)"#);
        assert_eq!(values.0.len(), 2);
    }

    #[test]
    fn row_states_are_analyzed_by_their_keys_only() {
        let tables: [(Place<'_>, &[&str]); 3] = [
            (Place::own("_tidesync_rows"), &["tbl", "pk"]),
            (Place::own("my\"t"), &[]),
            (
                Place {
                    schema: Some("s"),
                    name: "t",
                },
                &[],
            ),
        ];
        assert_eq!(
            of(DbBackend::Postgres).unwrap().analyze(&tables).as_deref(),
            Some(r#"ANALYZE "_tidesync_rows" ("tbl", "pk"), "my""t", "s"."t""#)
        );
        assert_eq!(of(DbBackend::Postgres).unwrap().analyze(&[]), None);
        assert_eq!(of(DbBackend::MySql).unwrap().analyze(&tables), None);
        assert_eq!(of(DbBackend::Sqlite).unwrap().analyze(&tables), None);
    }

    /// Keys after a key: a row comparison, spelled out on MySQL, whose
    /// MariaDB serves only that form from an index.
    #[test]
    fn keys_after_a_key() {
        use sea_orm::sea_query::{
            MysqlQueryBuilder, PostgresQueryBuilder, Query, SqliteQueryBuilder,
        };
        let q = |kind: DbBackend| {
            Query::select()
                .column(Alias::new("pk"))
                .from(Alias::new("s"))
                .and_where(of(kind).unwrap().after(
                    [Expr::col(Alias::new("tbl")), Expr::col(Alias::new("pk"))],
                    ["a".into(), "b".into()],
                ))
                .to_owned()
        };
        let row = r#"SELECT "pk" FROM "s" WHERE ("tbl", "pk") > ('a', 'b')"#;
        assert_eq!(q(DbBackend::Postgres).to_string(PostgresQueryBuilder), row);
        assert_eq!(q(DbBackend::Sqlite).to_string(SqliteQueryBuilder), row);
        assert_eq!(
            q(DbBackend::MySql).to_string(MysqlQueryBuilder),
            "SELECT `pk` FROM `s` WHERE `tbl` > 'a' OR (`tbl` = 'a' AND `pk` > 'b')"
        );
    }

    #[test]
    fn identifiers_are_quoted_per_dialect() {
        assert_eq!(of(DbBackend::MySql).unwrap().quote("a`b"), "`a``b`");
        assert_eq!(of(DbBackend::Postgres).unwrap().quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(of(DbBackend::Sqlite).unwrap().quote("a\"b"), "\"a\"\"b\"");
    }
}
