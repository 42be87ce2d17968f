//! The replica's own tables, each named and created here: the metadata,
//! the outbox, the shadows, parked and held changes, the applying sessions,
//! and per synced table its dirty markers and capture triggers.
//!
//! Capture works by database triggers, generated from the entity: every
//! insert, update and delete of a synced table upserts a *dirty marker*
//! (primary key, a version counter and the wall time) in the same statement,
//! hence in the same transaction, as the write itself. That is what makes
//! capture complete for SeaORM's bulk paths, raw SQL and other programs, and
//! crash-safe without relying on the caller's transaction: a marker exists
//! exactly when its write committed. The marker is turned into a typed
//! change later by diffing the row against its last captured state
//! (see the `capture` module).
//!
//! While tidesync itself writes pulled changes it inserts its session id into
//! `_tidesync_applying` inside the same transaction; the triggers skip
//! sessions listed there, so applied changes are not captured again. The row
//! is deleted before commit and vanishes on rollback, so a crashed apply never
//! leaves capture switched off.

use sea_orm::sea_query::{Alias, ColumnDef, ColumnType, Index, Table, TableCreateStatement};
use sea_orm::{ConnectionTrait, Statement};

use crate::dialect::{self, Capture, Dialect, Trigger};
use crate::model::change::TableSpec;
use crate::model::error::Result;
use crate::store::codec::ChangeTable;
use crate::store::ddl::{create, not_null, varchar};
use crate::store::meta::Meta;
use crate::store::rows::row_state_table;

/// Newest metadata schema version this release writes and reads.
pub(crate) const SCHEMA_VERSION: i64 = 1;

/// Key/value metadata: schema version, node id, clock, next sequence,
/// pull cursors.
pub(crate) const META: &str = "_tidesync_meta";
/// The replica's metadata table.
pub(crate) const LOCAL_META: Meta = Meta(META);
/// Captured changes not yet acknowledged by a hub, by sequence.
pub(crate) const OUTBOX: ChangeTable = ChangeTable {
    name: "_tidesync_outbox",
    ids: &["seq"],
};
/// Last captured state of every synced row, with per-column clocks.
pub(crate) const ROWS: &str = "_tidesync_rows";
/// Changes that could not be applied or read here, with why.
pub(crate) const PARKED: &str = "_tidesync_parked";
/// Conflicts waiting for a decision.
pub(crate) const CONFLICTS: &str = "_tidesync_conflicts";
/// Sessions currently applying pulled changes (capture is skipped for them).
pub(crate) const APPLYING: &str = "_tidesync_applying";

/// Name of the dirty-marker table of `table`.
pub(crate) fn dirty_table(table: &str) -> String {
    short_name("_ts_d_", table)
}

/// Name of a capture trigger (or PostgreSQL trigger function) of `table`.
pub(crate) fn trigger_name(table: &str, suffix: &str) -> String {
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

/// DDL of the replica's metadata tables (idempotent: `IF NOT EXISTS`).
pub(crate) fn metadata_tables(d: &dyn Dialect) -> Vec<TableCreateStatement> {
    let text = d.long_text();
    let seq = not_null("seq", ColumnType::BigInteger)
        .primary_key()
        .to_owned();
    vec![
        LOCAL_META.table(),
        OUTBOX.table(d, vec![seq]),
        row_state_table(d, ROWS),
        Table::create()
            .table(Alias::new(PARKED))
            .if_not_exists()
            .col(
                not_null("id", ColumnType::Integer)
                    .auto_increment()
                    .primary_key(),
            )
            .col(not_null("tbl", varchar(64)))
            .col(not_null("pk", text.clone()))
            .col(not_null("origin", varchar(64)))
            .col(not_null("seq", ColumnType::BigInteger))
            .col(not_null("payload", text.clone()))
            .col(not_null("reason", ColumnType::Text))
            .to_owned(),
        Table::create()
            .table(Alias::new(CONFLICTS))
            .if_not_exists()
            .col(
                not_null("id", ColumnType::Integer)
                    .auto_increment()
                    .primary_key(),
            )
            .col(not_null("tbl", varchar(64)))
            .col(not_null("pk", text.clone()))
            .col(not_null("col", varchar(255)))
            .col(ColumnDef::new_with_type(Alias::new("base"), text.clone()).null())
            .col(not_null("local", text.clone()))
            .col(not_null("local_clock", varchar(64)))
            .col(not_null("remote", text.clone()))
            .col(not_null("remote_clock", varchar(64)))
            .to_owned(),
        Table::create()
            .table(Alias::new(APPLYING))
            .if_not_exists()
            .col(not_null("session", ColumnType::BigInteger).primary_key())
            .to_owned(),
    ]
}

/// DDL of the dirty-marker table of one synced table.
pub(crate) fn dirty_table_ddl(d: &dyn Dialect, spec: &TableSpec) -> TableCreateStatement {
    let mut t = Table::create();
    t.table(Alias::new(dirty_table(&spec.name))).if_not_exists();
    let mut pk = Index::create();
    for c in &spec.pk {
        t.col(ColumnDef::new_with_type(Alias::new(&c.name), d.marker_key_type(&c.ty)).not_null());
        pk.col(Alias::new(&c.name));
    }
    t.col(ColumnDef::new_with_type(Alias::new("ver"), ColumnType::BigInteger).not_null())
        .col(ColumnDef::new_with_type(Alias::new("wall_us"), ColumnType::BigInteger).not_null())
        .primary_key(&mut pk);
    t.to_owned()
}

/// The capture triggers of one synced table on the dialect `d`.
pub(crate) fn triggers(d: &dyn Dialect, spec: &TableSpec) -> Vec<Trigger> {
    let markers = dirty_table(&spec.name);
    let name = |suffix: &str| trigger_name(&spec.name, suffix);
    d.triggers(&Capture {
        table: &spec.name,
        keys: spec.pk.iter().map(|c| c.name.as_str()).collect(),
        markers: &markers,
        applying: APPLYING,
        name: &name,
    })
}

/// Create the replica's metadata tables and check or set the schema
/// version.
pub(crate) async fn install_metadata<C: ConnectionTrait>(db: &C) -> Result<()> {
    for t in metadata_tables(dialect::of_db(db)?) {
        create(db, t).await?;
    }
    LOCAL_META.check_version(db, SCHEMA_VERSION).await
}

/// Create the dirty table and triggers of one synced table (idempotent).
pub(crate) async fn install_table<C: ConnectionTrait>(db: &C, spec: &TableSpec) -> Result<()> {
    let d = dialect::of_db(db)?;
    create(db, dirty_table_ddl(d, spec)).await?;
    let existing = match d.triggers_query() {
        Some(sql) => {
            let rows = db
                .query_all_raw(Statement::from_sql_and_values(
                    db.get_database_backend(),
                    sql,
                    [spec.name.clone().into()],
                ))
                .await?;
            rows.iter()
                .map(|r| r.try_get_by_index::<String>(0))
                .collect::<Result<Vec<_>, _>>()?
        }
        None => Vec::new(),
    };
    for t in triggers(d, spec) {
        if !existing.contains(&t.name) {
            db.execute_unprepared(&t.sql).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{column, table};
    use sea_orm::DbBackend;

    fn d(kind: DbBackend) -> &'static dyn Dialect {
        dialect::of(kind).unwrap()
    }

    fn trigger_sql(kind: DbBackend) -> Vec<String> {
        triggers(d(kind), &spec())
            .into_iter()
            .map(|t| t.sql)
            .collect()
    }

    fn spec() -> TableSpec {
        let columns = vec![
            column("id", ColumnType::Uuid, false),
            column("name", ColumnType::Text, false),
        ];
        table("contacts", &["id"], columns)
    }

    /// The three SQLite triggers, word for word: each skips writes while
    /// tidesync applies, and marks the new row (insert), the old and the
    /// new row (update, which may change the key) or the old row (delete).
    #[test]
    fn sqlite_triggers() {
        let sql = trigger_sql(DbBackend::Sqlite);
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
        let sql = trigger_sql(DbBackend::Postgres);
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
        let sql = trigger_sql(DbBackend::MySql);
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
        let ddl = dirty_table_ddl(d(DbBackend::Postgres), &spec());
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
        let names: Vec<String> = metadata_tables(d(DbBackend::Sqlite))
            .iter()
            .map(|t| {
                t.get_table_name()
                    .map(|n| n.sea_orm_table().to_string())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(
            names,
            [META, OUTBOX.name, ROWS, PARKED, CONFLICTS, APPLYING]
        );
    }
}
