//! The local sync metadata: tables, per-table dirty markers and the capture
//! triggers, for each dialect.
//!
//! Capture works by database triggers, generated from the entity: every
//! insert, update and delete of a synced table upserts a *dirty marker*
//! (primary key, a version counter and the wall time) in the same statement,
//! hence in the same transaction, as the write itself. That is what makes
//! capture complete for SeaORM's bulk paths, raw SQL and other programs, and
//! crash-safe without relying on the caller's transaction: a marker exists
//! exactly when its write committed. The marker is turned into a typed
//! change later by diffing the row against its last captured state
//! (see [`crate::capture`]).
//!
//! While tidesync itself writes pulled changes it inserts its session id into
//! `_tidesync_applying` inside the same transaction; the triggers skip
//! sessions listed there, so applied changes are not captured again. The row
//! is deleted before commit and vanishes on rollback, so a crashed apply never
//! leaves capture switched off.

use sea_orm::sea_query::{
    Alias, ColumnDef, ColumnType, Expr, ExprTrait, Index, OnConflict, Query, StringLen, Table,
    TableCreateStatement,
};
use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::change::TableSpec;
use crate::error::{Error, Result};

/// Newest metadata schema version this release writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

/// Key/value metadata: schema version, node id, clock, next sequence.
pub const META: &str = "_tidesync_meta";
/// Captured changes not yet acknowledged by a hub.
pub const OUTBOX: &str = "_tidesync_outbox";
/// Last captured state of every synced row, with per-column clocks.
pub const ROWS: &str = "_tidesync_rows";
/// Sessions currently applying pulled changes (capture is skipped for them).
pub const APPLYING: &str = "_tidesync_applying";

/// Name of the dirty-marker table of `table`.
pub fn dirty_table(table: &str) -> String {
    short_name("_ts_d_", table)
}

/// Name of a capture trigger (or PostgreSQL trigger function) of `table`.
pub fn trigger_name(table: &str, suffix: &str) -> String {
    short_name(&format!("_ts_{suffix}_"), table)
}

/// `prefix + table`, shortened with a stable hash to fit the 63-character
/// identifier limit of PostgreSQL (64 on MySQL).
fn short_name(prefix: &str, table: &str) -> String {
    let full = format!("{prefix}{table}");
    if full.len() <= 60 {
        return full;
    }
    // FNV-1a: stable across releases and platforms.
    let hash = table.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut cut = 40;
    while !table.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{prefix}{}_{hash:016x}", &table[..cut])
}

/// Quote an identifier for `backend`.
pub fn quote(backend: DbBackend, ident: &str) -> String {
    match backend {
        DbBackend::MySql => format!("`{}`", ident.replace('`', "``")),
        _ => format!("\"{}\"", ident.replace('"', "\"\"")),
    }
}

/// A text column that holds at least a few megabytes on every dialect
/// (MySQL's TEXT stops at 64 KiB).
pub fn long_text(backend: DbBackend) -> ColumnType {
    match backend {
        DbBackend::MySql => ColumnType::custom("LONGTEXT"),
        _ => ColumnType::Text,
    }
}

/// The column type the dirty table uses for a key column: the entity's own,
/// with enums mapped the way SeaORM's schema builder maps them.
fn key_column_type(backend: DbBackend, ty: &ColumnType) -> ColumnType {
    match (ty, backend) {
        (ColumnType::Enum { variants, .. }, DbBackend::MySql) => {
            let v: Vec<String> = variants.iter().map(|v| v.to_string()).collect();
            ColumnType::custom(format!("ENUM('{}')", v.join("', '")))
        }
        (ColumnType::Enum { name, .. }, DbBackend::Postgres) => ColumnType::Custom(name.clone()),
        _ => ty.clone(),
    }
}

fn varchar(n: u32) -> ColumnType {
    ColumnType::String(StringLen::N(n))
}

/// On MySQL, make a table UTF-8 throughout (`utf8mb4`, binary collation), so
/// payloads and keys keep every character whatever the database default.
pub fn utf8mb4(backend: DbBackend, t: &mut TableCreateStatement) -> &TableCreateStatement {
    if backend == DbBackend::MySql {
        t.character_set("utf8mb4").collate("utf8mb4_bin");
    }
    t
}

/// DDL of the shared metadata tables (idempotent: `IF NOT EXISTS`).
pub fn metadata_tables(backend: DbBackend) -> Vec<TableCreateStatement> {
    let text = long_text(backend);
    let col = |name: &str, ty: ColumnType| {
        let mut c = ColumnDef::new_with_type(Alias::new(name), ty);
        c.not_null();
        c
    };
    vec![
        Table::create()
            .table(Alias::new(META))
            .if_not_exists()
            .col(col("key", varchar(64)).primary_key())
            .col(col("value", ColumnType::Text))
            .to_owned(),
        Table::create()
            .table(Alias::new(OUTBOX))
            .if_not_exists()
            .col(col("seq", ColumnType::BigInteger).primary_key())
            .col(col("tbl", varchar(64)))
            .col(col("pk", text.clone()))
            .col(col("op", varchar(8)))
            .col(col("payload", text.clone()))
            .col(col("hlc", varchar(64)))
            .col(ColumnDef::new_with_type(Alias::new("base"), text.clone()).null())
            .to_owned(),
        crate::store::row_state_table(backend, ROWS),
        Table::create()
            .table(Alias::new(crate::pull::PARKED))
            .if_not_exists()
            .col(
                col("id", ColumnType::Integer)
                    .auto_increment()
                    .primary_key(),
            )
            .col(col("tbl", varchar(64)))
            .col(col("pk", text.clone()))
            .col(col("origin", varchar(64)))
            .col(col("seq", ColumnType::BigInteger))
            .col(col("payload", text.clone()))
            .col(col("reason", ColumnType::Text))
            .to_owned(),
        Table::create()
            .table(Alias::new(crate::resolve::CONFLICTS))
            .if_not_exists()
            .col(
                col("id", ColumnType::Integer)
                    .auto_increment()
                    .primary_key(),
            )
            .col(col("tbl", varchar(64)))
            .col(col("pk", text.clone()))
            .col(col("col", varchar(255)))
            .col(ColumnDef::new_with_type(Alias::new("base"), text.clone()).null())
            .col(col("local", text.clone()))
            .col(col("local_clock", varchar(64)))
            .col(col("remote", text.clone()))
            .col(col("remote_clock", varchar(64)))
            .to_owned(),
        Table::create()
            .table(Alias::new(APPLYING))
            .if_not_exists()
            .col(col("session", ColumnType::BigInteger).primary_key())
            .to_owned(),
    ]
}

/// DDL of the dirty-marker table of one synced table.
pub fn dirty_table_ddl(backend: DbBackend, spec: &TableSpec) -> TableCreateStatement {
    let mut t = Table::create();
    t.table(Alias::new(dirty_table(&spec.name))).if_not_exists();
    let mut pk = Index::create();
    for c in &spec.pk {
        t.col(
            ColumnDef::new_with_type(Alias::new(&c.name), key_column_type(backend, &c.ty))
                .not_null(),
        );
        pk.col(Alias::new(&c.name));
    }
    t.col(ColumnDef::new_with_type(Alias::new("ver"), ColumnType::BigInteger).not_null())
        .col(ColumnDef::new_with_type(Alias::new("wall_us"), ColumnType::BigInteger).not_null())
        .primary_key(&mut pk);
    t.to_owned()
}

/// The session id the triggers compare against `_tidesync_applying`.
pub fn session_expr(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "pg_backend_pid()",
        DbBackend::MySql => "CONNECTION_ID()",
        // One writer at a time, and the marker row is never committed.
        _ => "0",
    }
}

/// Current wall time in microseconds, as SQL.
fn now_us(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "(extract(epoch from clock_timestamp()) * 1000000)::bigint",
        DbBackend::MySql => "CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)",
        _ => "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)",
    }
}

/// The upsert of a dirty marker for the row image `row` (`NEW` or `OLD`).
/// The one statement every dialect's trigger runs; only the upsert clause
/// and the clock differ.
fn mark_statement(backend: DbBackend, spec: &TableSpec, row: &str) -> String {
    let q = |s: &str| quote(backend, s);
    let dirty = q(&dirty_table(&spec.name));
    let keys: Vec<String> = spec.pk.iter().map(|c| q(&c.name)).collect();
    let vals: Vec<String> = spec
        .pk
        .iter()
        .map(|c| format!("{row}.{}", q(&c.name)))
        .collect();
    let (ver, wall) = (q("ver"), q("wall_us"));
    let head = format!(
        "INSERT INTO {dirty} ({}, {ver}, {wall}) VALUES ({}, 1, {})",
        keys.join(", "),
        vals.join(", "),
        now_us(backend)
    );
    match backend {
        DbBackend::MySql => {
            format!("{head} ON DUPLICATE KEY UPDATE {ver} = {ver} + 1, {wall} = VALUES({wall})")
        }
        DbBackend::Postgres => format!(
            "{} ON CONFLICT ({}) DO UPDATE SET {ver} = {dirty}.{ver} + 1, {wall} = EXCLUDED.{wall}",
            head,
            keys.join(", ")
        ),
        _ => format!(
            "{head} ON CONFLICT ({}) DO UPDATE SET {ver} = {ver} + 1, {wall} = excluded.{wall}",
            keys.join(", ")
        ),
    }
}

/// The statements that create the capture triggers of one table. Each is
/// idempotent on its own except MySQL's, whose existence [`install_table`]
/// checks first.
pub fn trigger_ddl(backend: DbBackend, spec: &TableSpec) -> Vec<String> {
    let q = |s: &str| quote(backend, s);
    let table = q(&spec.name);
    let applying = q(APPLYING);
    let session = q("session");
    match backend {
        DbBackend::Postgres => {
            let func = q(&trigger_name(&spec.name, "fn"));
            vec![
                format!(
                    "CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS $tidesync$\n\
                     BEGIN\n\
                     \x20 IF EXISTS (SELECT 1 FROM {applying} WHERE {session} = {sess}) THEN RETURN NULL; END IF;\n\
                     \x20 IF TG_OP <> 'INSERT' THEN {old}; END IF;\n\
                     \x20 IF TG_OP <> 'DELETE' THEN {new}; END IF;\n\
                     \x20 RETURN NULL;\n\
                     END\n$tidesync$",
                    sess = session_expr(backend),
                    old = mark_statement(backend, spec, "OLD"),
                    new = mark_statement(backend, spec, "NEW"),
                ),
                format!(
                    "CREATE OR REPLACE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {table} \
                     FOR EACH ROW EXECUTE FUNCTION {func}()",
                    q(&trigger_name(&spec.name, "cap"))
                ),
            ]
        }
        DbBackend::MySql => events(spec)
            .map(|(event, suffix, rows)| {
                let body: Vec<String> = rows
                    .iter()
                    .map(|r| format!("    {};\n", mark_statement(backend, spec, r)))
                    .collect();
                format!(
                    "CREATE TRIGGER {} AFTER {event} ON {table} FOR EACH ROW\n\
                     BEGIN\n\
                     \x20 IF NOT EXISTS (SELECT 1 FROM {applying} WHERE {session} = {sess}) THEN\n\
                     {body}\
                     \x20 END IF;\n\
                     END",
                    q(&trigger_name(&spec.name, suffix)),
                    sess = session_expr(backend),
                    body = body.concat(),
                )
            })
            .collect(),
        _ => events(spec)
            .map(|(event, suffix, rows)| {
                let body: Vec<String> = rows
                    .iter()
                    .map(|r| format!("  {};\n", mark_statement(backend, spec, r)))
                    .collect();
                format!(
                    "CREATE TRIGGER IF NOT EXISTS {} AFTER {event} ON {table}\n\
                     WHEN NOT EXISTS (SELECT 1 FROM {applying})\n\
                     BEGIN\n{}END",
                    q(&trigger_name(&spec.name, suffix)),
                    body.concat(),
                )
            })
            .collect(),
    }
}

/// (event, trigger suffix, row images to mark) for per-event triggers.
fn events(
    _spec: &TableSpec,
) -> impl Iterator<Item = (&'static str, &'static str, Vec<&'static str>)> {
    [
        ("INSERT", "ins", vec!["NEW"]),
        // An update can change the key: mark the old and the new row.
        ("UPDATE", "upd", vec!["OLD", "NEW"]),
        ("DELETE", "del", vec!["OLD"]),
    ]
    .into_iter()
}

/// Create the shared metadata tables and check or set the schema version.
pub async fn install_metadata<C: ConnectionTrait>(db: &C) -> Result<()> {
    let backend = db.get_database_backend();
    for mut t in metadata_tables(backend) {
        db.execute(utf8mb4(backend, &mut t)).await?;
    }
    let version = read_meta(db, "schema_version").await?;
    match version {
        None => {
            insert_meta_if_missing(db, "schema_version", &SCHEMA_VERSION.to_string()).await?;
        }
        Some(v) => {
            let found: i64 = v
                .parse()
                .map_err(|_| Error::Corrupt(format!("schema_version `{v}` is not a number")))?;
            if found > SCHEMA_VERSION {
                return Err(Error::SchemaVersion {
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
        }
    }
    Ok(())
}

/// Create the dirty table and triggers of one synced table.
pub async fn install_table<C: ConnectionTrait>(db: &C, spec: &TableSpec) -> Result<()> {
    let backend = db.get_database_backend();
    db.execute(utf8mb4(backend, &mut dirty_table_ddl(backend, spec)))
        .await?;
    let existing = if backend == DbBackend::MySql {
        let rows = db
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS \
                 WHERE TRIGGER_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = ?",
                [spec.name.clone().into()],
            ))
            .await?;
        rows.iter()
            .map(|r| r.try_get_by_index::<String>(0))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    for (i, sql) in trigger_ddl(backend, spec).into_iter().enumerate() {
        if backend == DbBackend::MySql {
            let (_, suffix, _) = events(spec).nth(i).expect("one statement per event");
            if existing.contains(&trigger_name(&spec.name, suffix)) {
                continue;
            }
        }
        db.execute_unprepared(&sql).await?;
    }
    Ok(())
}

/// A key/value metadata table: the replica's (`_tidesync_meta`) or a hub's.
#[derive(Clone, Copy, Debug)]
pub struct Meta(pub &'static str);

/// The replica's metadata table.
pub const LOCAL_META: Meta = Meta(META);

impl Meta {
    /// Read one value.
    pub async fn read<C: ConnectionTrait>(self, db: &C, key: &str) -> Result<Option<String>> {
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
    pub async fn read_many<C: ConnectionTrait>(
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

    /// Insert or overwrite several values in one statement.
    pub async fn upsert_many<C: ConnectionTrait>(
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
    pub async fn insert_if_missing<C: ConnectionTrait>(
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
    pub async fn upsert<C: ConnectionTrait>(self, db: &C, key: &str, value: &str) -> Result<()> {
        self.upsert_many(db, &[(key, value)]).await
    }

    /// Overwrite a value that exists.
    pub async fn write<C: ConnectionTrait>(self, db: &C, key: &str, value: &str) -> Result<()> {
        let stmt = Query::update()
            .table(Alias::new(self.0))
            .value(Alias::new("value"), value)
            .and_where(Expr::col(Alias::new("key")).eq(key))
            .to_owned();
        db.execute(&stmt).await?;
        Ok(())
    }

    /// Lock the row of `key` until the transaction ends (a row lock on
    /// PostgreSQL and MySQL, the write lock on SQLite): the sequence lock.
    pub async fn lock<C: ConnectionTrait>(self, db: &C, key: &str) -> Result<()> {
        let stmt = Query::update()
            .table(Alias::new(self.0))
            .value(Alias::new("value"), Expr::col(Alias::new("value")))
            .and_where(Expr::col(Alias::new("key")).eq(key))
            .to_owned();
        db.execute(&stmt).await?;
        Ok(())
    }
}

/// Read one value of the replica's metadata.
pub async fn read_meta<C: ConnectionTrait>(db: &C, key: &str) -> Result<Option<String>> {
    LOCAL_META.read(db, key).await
}

/// Insert a value of the replica's metadata unless the key exists.
pub async fn insert_meta_if_missing<C: ConnectionTrait>(
    db: &C,
    key: &str,
    value: &str,
) -> Result<()> {
    LOCAL_META.insert_if_missing(db, key, value).await
}

/// Insert or overwrite a value of the replica's metadata.
pub async fn upsert_meta<C: ConnectionTrait>(db: &C, key: &str, value: &str) -> Result<()> {
    LOCAL_META.upsert(db, key, value).await
}

/// Overwrite a value of the replica's metadata.
pub async fn write_meta<C: ConnectionTrait>(db: &C, key: &str, value: &str) -> Result<()> {
    LOCAL_META.write(db, key, value).await
}

/// The column type tidesync gives a synced column when it creates a table
/// (on a hub, or a replica through [`create_table`]): the entity's own,
/// except where the dialect's default would lose data.
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
pub fn synced_column_type(backend: DbBackend, ty: &ColumnType, key: bool) -> ColumnType {
    match backend {
        DbBackend::MySql => match ty {
            ColumnType::DateTime | ColumnType::Timestamp | ColumnType::TimestampWithTimeZone => {
                ColumnType::custom("DATETIME(6)")
            }
            ColumnType::Time => ColumnType::custom("TIME(6)"),
            ColumnType::Decimal(None) => ColumnType::Decimal(Some((65, 28))),
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
            // sqlx binds and reads `i8` only as PostgreSQL's one-byte "char".
            ColumnType::TinyInteger => ColumnType::custom("\"char\""),
            other => other.clone(),
        },
        _ => ty.clone(),
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
            ColumnDef::new_with_type(Alias::new(&c.name), synced_column_type(backend, &c.ty, key));
        if c.nullable && !key {
            def.null();
        } else {
            def.not_null();
        }
        t.col(def);
    }
    for c in &spec.local_only {
        t.col(
            ColumnDef::new_with_type(
                Alias::new(&c.name),
                synced_column_type(backend, &c.ty, false),
            )
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
                    quote(DbBackend::Postgres, &name.to_string()),
                    labels.join(", ")
                );
                db.execute_unprepared(&sql).await?;
            }
        }
    }
    Ok(())
}

/// Create a synced table (and its enum types) on `db` if it is missing.
///
/// A table that exists but lacks nullable columns of the spec (a newer
/// client version added them) gets them with `ALTER TABLE ... ADD COLUMN`;
/// a missing NOT NULL column is refused: add it by a migration with a
/// default.
pub async fn ensure_table<C: ConnectionTrait>(db: &C, spec: &TableSpec) -> Result<()> {
    let backend = db.get_database_backend();
    create_enum_types(db, spec).await?;
    db.execute(&create_table(backend, spec)).await?;
    let existing = existing_columns(db, &spec.name).await?;
    let keys: Vec<&str> = spec.pk.iter().map(|c| c.name.as_str()).collect();
    for (c, local_only) in spec
        .columns
        .iter()
        .map(|c| (c, false))
        .chain(spec.local_only.iter().map(|c| (c, true)))
    {
        if existing.iter().any(|e| e == &c.name) {
            continue;
        }
        if !(c.nullable || local_only) || keys.contains(&c.name.as_str()) {
            return Err(Error::Config(format!(
                "table `{}` has no column `{}`, which is NOT NULL: add it with a default by a migration",
                spec.name, c.name
            )));
        }
        let mut def = ColumnDef::new_with_type(
            Alias::new(&c.name),
            synced_column_type(backend, &c.ty, false),
        );
        def.null();
        let alter = Table::alter()
            .table(Alias::new(&spec.name))
            .add_column(&mut def)
            .to_owned();
        db.execute(&alter).await?;
    }
    Ok(())
}

/// The column names a table has now.
async fn existing_columns<C: ConnectionTrait>(db: &C, table: &str) -> Result<Vec<String>> {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT column_name AS name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1"
        }
        DbBackend::MySql => {
            "SELECT COLUMN_NAME AS name FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?"
        }
        _ => "SELECT name FROM pragma_table_info(?)",
    };
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(backend, sql, [table.into()]))
        .await?;
    rows.iter()
        .map(|r| Ok(r.try_get_by_index::<String>(0)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::ColumnSpec;
    use crate::syncable::ConflictPolicy;

    fn spec() -> TableSpec {
        let c = |n: &str, ty| ColumnSpec {
            name: n.into(),
            ty,
            nullable: false,
        };
        TableSpec {
            name: "contacts".into(),
            pk: vec![c("id", ColumnType::Uuid)],
            columns: vec![c("id", ColumnType::Uuid), c("name", ColumnType::Text)],
            local_only: vec![],
            policy: ConflictPolicy::Lww,
            single_writer: false,
        }
    }

    /// The three SQLite triggers, word for word: each skips writes while
    /// tidesync applies, and marks the new row (insert), the old and the
    /// new row (update, which may change the key) or the old row (delete).
    #[test]
    fn sqlite_triggers() {
        let sql = trigger_ddl(DbBackend::Sqlite, &spec());
        assert_eq!(sql.len(), 3);
        assert_eq!(
            sql[0],
            "CREATE TRIGGER IF NOT EXISTS \"_ts_ins_contacts\" AFTER INSERT ON \"contacts\"\n\
             WHEN NOT EXISTS (SELECT 1 FROM \"_tidesync_applying\")\n\
             BEGIN\n\
             \x20 INSERT INTO \"_ts_d_contacts\" (\"id\", \"ver\", \"wall_us\") VALUES (NEW.\"id\", 1, CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)) ON CONFLICT (\"id\") DO UPDATE SET \"ver\" = \"ver\" + 1, \"wall_us\" = excluded.\"wall_us\";\n\
             END"
        );
        assert_eq!(
            sql[1],
            "CREATE TRIGGER IF NOT EXISTS \"_ts_upd_contacts\" AFTER UPDATE ON \"contacts\"\n\
             WHEN NOT EXISTS (SELECT 1 FROM \"_tidesync_applying\")\n\
             BEGIN\n\
             \x20 INSERT INTO \"_ts_d_contacts\" (\"id\", \"ver\", \"wall_us\") VALUES (OLD.\"id\", 1, CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)) ON CONFLICT (\"id\") DO UPDATE SET \"ver\" = \"ver\" + 1, \"wall_us\" = excluded.\"wall_us\";\n\
             \x20 INSERT INTO \"_ts_d_contacts\" (\"id\", \"ver\", \"wall_us\") VALUES (NEW.\"id\", 1, CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)) ON CONFLICT (\"id\") DO UPDATE SET \"ver\" = \"ver\" + 1, \"wall_us\" = excluded.\"wall_us\";\n\
             END"
        );
        assert_eq!(
            sql[2],
            "CREATE TRIGGER IF NOT EXISTS \"_ts_del_contacts\" AFTER DELETE ON \"contacts\"\n\
             WHEN NOT EXISTS (SELECT 1 FROM \"_tidesync_applying\")\n\
             BEGIN\n\
             \x20 INSERT INTO \"_ts_d_contacts\" (\"id\", \"ver\", \"wall_us\") VALUES (OLD.\"id\", 1, CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)) ON CONFLICT (\"id\") DO UPDATE SET \"ver\" = \"ver\" + 1, \"wall_us\" = excluded.\"wall_us\";\n\
             END"
        );
    }

    /// The PostgreSQL trigger function and trigger, word for word: the
    /// function skips sessions that are applying, marks the old row for
    /// updates and deletes and the new row for inserts and updates; one
    /// row-level trigger runs it after every write.
    #[test]
    fn postgres_trigger_function() {
        let sql = trigger_ddl(DbBackend::Postgres, &spec());
        assert_eq!(sql.len(), 2);
        assert_eq!(
            sql[0],
            "CREATE OR REPLACE FUNCTION \"_ts_fn_contacts\"() RETURNS trigger LANGUAGE plpgsql AS $tidesync$\n\
             BEGIN\n\
             \x20 IF EXISTS (SELECT 1 FROM \"_tidesync_applying\" WHERE \"session\" = pg_backend_pid()) THEN RETURN NULL; END IF;\n\
             \x20 IF TG_OP <> 'INSERT' THEN INSERT INTO \"_ts_d_contacts\" (\"id\", \"ver\", \"wall_us\") VALUES (OLD.\"id\", 1, (extract(epoch from clock_timestamp()) * 1000000)::bigint) ON CONFLICT (\"id\") DO UPDATE SET \"ver\" = \"_ts_d_contacts\".\"ver\" + 1, \"wall_us\" = EXCLUDED.\"wall_us\"; END IF;\n\
             \x20 IF TG_OP <> 'DELETE' THEN INSERT INTO \"_ts_d_contacts\" (\"id\", \"ver\", \"wall_us\") VALUES (NEW.\"id\", 1, (extract(epoch from clock_timestamp()) * 1000000)::bigint) ON CONFLICT (\"id\") DO UPDATE SET \"ver\" = \"_ts_d_contacts\".\"ver\" + 1, \"wall_us\" = EXCLUDED.\"wall_us\"; END IF;\n\
             \x20 RETURN NULL;\n\
             END\n\
             $tidesync$"
        );
        assert_eq!(
            sql[1],
            "CREATE OR REPLACE TRIGGER \"_ts_cap_contacts\" AFTER INSERT OR UPDATE OR DELETE ON \"contacts\" FOR EACH ROW EXECUTE FUNCTION \"_ts_fn_contacts\"()"
        );
    }

    /// The three MySQL triggers, word for word: each skips the connection
    /// that is applying, and marks the new row (insert), the old and the new
    /// row (update) or the old row (delete).
    #[test]
    fn mysql_triggers() {
        let sql = trigger_ddl(DbBackend::MySql, &spec());
        assert_eq!(sql.len(), 3);
        assert_eq!(
            sql[0],
            "CREATE TRIGGER `_ts_ins_contacts` AFTER INSERT ON `contacts` FOR EACH ROW\n\
             BEGIN\n\
             \x20 IF NOT EXISTS (SELECT 1 FROM `_tidesync_applying` WHERE `session` = CONNECTION_ID()) THEN\n\
             \x20   INSERT INTO `_ts_d_contacts` (`id`, `ver`, `wall_us`) VALUES (NEW.`id`, 1, CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)) ON DUPLICATE KEY UPDATE `ver` = `ver` + 1, `wall_us` = VALUES(`wall_us`);\n\
             \x20 END IF;\n\
             END"
        );
        assert_eq!(
            sql[1],
            "CREATE TRIGGER `_ts_upd_contacts` AFTER UPDATE ON `contacts` FOR EACH ROW\n\
             BEGIN\n\
             \x20 IF NOT EXISTS (SELECT 1 FROM `_tidesync_applying` WHERE `session` = CONNECTION_ID()) THEN\n\
             \x20   INSERT INTO `_ts_d_contacts` (`id`, `ver`, `wall_us`) VALUES (OLD.`id`, 1, CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)) ON DUPLICATE KEY UPDATE `ver` = `ver` + 1, `wall_us` = VALUES(`wall_us`);\n\
             \x20   INSERT INTO `_ts_d_contacts` (`id`, `ver`, `wall_us`) VALUES (NEW.`id`, 1, CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)) ON DUPLICATE KEY UPDATE `ver` = `ver` + 1, `wall_us` = VALUES(`wall_us`);\n\
             \x20 END IF;\n\
             END"
        );
        assert_eq!(
            sql[2],
            "CREATE TRIGGER `_ts_del_contacts` AFTER DELETE ON `contacts` FOR EACH ROW\n\
             BEGIN\n\
             \x20 IF NOT EXISTS (SELECT 1 FROM `_tidesync_applying` WHERE `session` = CONNECTION_ID()) THEN\n\
             \x20   INSERT INTO `_ts_d_contacts` (`id`, `ver`, `wall_us`) VALUES (OLD.`id`, 1, CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)) ON DUPLICATE KEY UPDATE `ver` = `ver` + 1, `wall_us` = VALUES(`wall_us`);\n\
             \x20 END IF;\n\
             END"
        );
    }

    #[test]
    fn dirty_table_copies_key_types() {
        let ddl = dirty_table_ddl(DbBackend::Postgres, &spec());
        assert_eq!(
            ddl.to_string(sea_orm::sea_query::PostgresQueryBuilder),
            "CREATE TABLE IF NOT EXISTS \"_ts_d_contacts\" ( \"id\" uuid NOT NULL, \"ver\" bigint NOT NULL, \"wall_us\" bigint NOT NULL, PRIMARY KEY (\"id\") )"
        );
    }

    #[test]
    fn long_names_are_shortened_stably() {
        let long = "a".repeat(100);
        let n = dirty_table(&long);
        assert!(n.len() <= 63, "{n}");
        assert_eq!(n, dirty_table(&long));
        assert_ne!(n, dirty_table(&"a".repeat(99)));
        assert_eq!(quote(DbBackend::MySql, "a`b"), "`a``b`");
        assert_eq!(quote(DbBackend::Postgres, "a\"b"), "\"a\"\"b\"");
    }

    /// Shortened names are persisted (trigger and marker table names of
    /// installed databases), so the hash is part of the format: FNV-1a of
    /// the table name, cut at a character boundary at most 40 bytes in.
    #[test]
    fn shortened_names_are_the_same_in_every_release() {
        let long = "a".repeat(100);
        assert_eq!(
            dirty_table(&long),
            format!("_ts_d_{}_2885d0ac2e5a9d79", "a".repeat(40))
        );
        // A two-byte character across byte 40 is left out whole.
        let accent = format!("{}é{}", "b".repeat(39), "c".repeat(30));
        let n = trigger_name(&accent, "i");
        assert_eq!(n, format!("_ts_i_{}_{:016x}", "b".repeat(39), fnv(&accent)));
        assert_eq!(trigger_name("contacts", "i"), "_ts_i_contacts");
    }

    fn fnv(s: &str) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in s.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        h
    }

    #[test]
    fn metadata_tables_are_the_replica_tables() {
        let names: Vec<String> = metadata_tables(DbBackend::Sqlite)
            .iter()
            .map(|t| {
                t.get_table_name()
                    .map(|n| n.sea_orm_table().to_string())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(
            names,
            [
                META,
                OUTBOX,
                ROWS,
                crate::pull::PARKED,
                crate::resolve::CONFLICTS,
                APPLYING
            ]
        );
    }
}

#[cfg(test)]
mod table_tests {
    use super::*;
    use crate::change::ColumnSpec;
    use crate::syncable::ConflictPolicy;
    use sea_orm::sea_query::{MysqlQueryBuilder, PostgresQueryBuilder, SqliteQueryBuilder};

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
             `amount` decimal(65, 28) NULL, `body` LONGTEXT NULL, `blob` LONGBLOB NULL, PRIMARY KEY (`id`) ) \
             DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        );
    }

    /// Key columns need an indexable type on MySQL: text keys become
    /// VARCHAR(255) and binary keys keep their type; other columns take the
    /// long types.
    #[test]
    fn mysql_keys_keep_indexable_types() {
        let ty = |t: ColumnType, key| synced_column_type(DbBackend::MySql, &t, key);
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
        let pg = |t: ColumnType| synced_column_type(DbBackend::Postgres, &t, false);
        assert_eq!(pg(ColumnType::TinyInteger), ColumnType::custom("\"char\""));
        assert_eq!(pg(ColumnType::Text), ColumnType::Text);
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
    fn sqlite_keeps_the_entity_types() {
        assert_eq!(
            create_table(DbBackend::Sqlite, &spec()).to_string(SqliteQueryBuilder),
            "CREATE TABLE IF NOT EXISTS \"t\" ( \"id\" varchar NOT NULL, \"at\" timestamp_with_timezone_text NOT NULL, \
             \"amount\" real_decimal NULL, \"body\" varchar NULL, \"blob\" varbinary_blob NULL, PRIMARY KEY (\"id\") )"
        );
    }
}
