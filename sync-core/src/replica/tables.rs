//! The replica's own tables, each named and created here: the metadata,
//! the outbox, the column register, parked and held changes, the applying
//! sessions, and per synced table its version table (the row states), its
//! dirty markers and capture triggers.
//!
//! Capture works by database triggers, generated from the entity: every
//! insert, update and delete of a synced table upserts a *dirty marker*
//! (primary key, a version counter, the wall time, and whether a row with
//! that key stopped existing) in the same statement,
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

use std::collections::HashMap;

use sea_orm::sea_query::{Alias, ColumnDef, ColumnType, Index, Table, TableCreateStatement};
use sea_orm::{ConnectionTrait, DatabaseConnection};

use crate::dialect::{self, Capture, Dialect, Place, Trigger};
use crate::model::change::{ColumnSpec, TableSpec};
use crate::model::error::Result;
use crate::store::codec::ChangeTable;
use crate::store::ddl::existing_columns;
use crate::store::ddl::{catalog, create, not_null, schema_of, varchar};
use crate::store::ddl::{fnv, short_name};
use crate::store::meta::Meta;
use crate::store::version_table::{
    column_types, register_ddl, retype_keys, version_key_text, version_key_type, version_rows_ddl,
};

/// Newest metadata schema version this release writes and reads: 2, the
/// row states in version tables (see `versions`); 1 kept them as JSON in
/// [`ROWS`], moved into the version tables at open (see
/// `upgrade::convert_states`).
pub(crate) const SCHEMA_VERSION: i64 = 2;

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
/// Format 1's row states of every synced table, as JSON: moved into the
/// version tables at open (see `upgrade::convert_states`).
pub(crate) const ROWS: &str = "_tidesync_rows";
/// [`ROWS`] once a release of schema version 2 opened the database (see
/// `upgrade::convert_states`): what is left in it could not be read.
pub(crate) const ROWS_V1: &str = "_tidesync_rows_v1";
/// The register of column ordinals of the version tables.
pub(crate) const COLUMNS: &str = "_tidesync_columns";
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

/// Name of the version table of `table` (its row states).
pub(crate) fn version_table(table: &str) -> String {
    short_name("_ts_v_", table)
}

/// Name of a capture trigger (or PostgreSQL trigger function) of `table`.
pub(crate) fn trigger_name(table: &str, suffix: &str) -> String {
    short_name(&format!("_ts_{suffix}_"), table)
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
        columns_table(),
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

/// DDL of the dirty-marker table of one synced table: the key, a version
/// bumped by every write, the wall time of the last one, and whether a row
/// with this key stopped existing since the last capture (see the capture
/// triggers).
///
/// Each key column has the type of the table's own column where the
/// dialect reads it from the catalog (`key_types`, by column name), so the
/// marker holds the key exactly (fractional seconds, a decimal's scale);
/// else the type the entity declares.
pub(crate) fn dirty_table_ddl(
    d: &dyn Dialect,
    spec: &TableSpec,
    key_types: &HashMap<String, String>,
) -> TableCreateStatement {
    let mut t = Table::create();
    t.table(Alias::new(dirty_table(&spec.name))).if_not_exists();
    let mut pk = Index::create();
    for c in &spec.pk {
        t.col(
            ColumnDef::new_with_type(Alias::new(&c.name), marker_key_type(d, c, key_types))
                .not_null(),
        );
        pk.col(Alias::new(&c.name));
    }
    t.col(ColumnDef::new_with_type(Alias::new("ver"), ColumnType::BigInteger).not_null())
        .col(ColumnDef::new_with_type(Alias::new("wall_us"), ColumnType::BigInteger).not_null())
        .col(gone_column())
        .primary_key(&mut pk);
    t.to_owned()
}

/// DDL of the column register.
pub(crate) fn columns_table() -> TableCreateStatement {
    register_ddl(COLUMNS)
}

/// DDL of the version table of `spec`, its key columns typed as
/// `key_type` gives them (the marker table's types).
pub(crate) fn version_table_ddl(
    d: &dyn Dialect,
    spec: &TableSpec,
    key_type: impl Fn(&crate::model::change::ColumnSpec) -> ColumnType,
) -> TableCreateStatement {
    version_rows_ddl(d, &version_table(&spec.name), spec, key_type, false)
}

/// The type of a key column in the dirty-marker table.
fn marker_key_type(
    d: &dyn Dialect,
    c: &ColumnSpec,
    key_types: &HashMap<String, String>,
) -> ColumnType {
    match key_types.get(&c.name) {
        Some(ty) => ColumnType::custom(ty.clone()),
        None => d.marker_key_type(&c.ty),
    }
}

/// The `gone` column of a dirty-marker table.
fn gone_column() -> ColumnDef {
    ColumnDef::new_with_type(Alias::new("gone"), ColumnType::BigInteger)
        .not_null()
        .default(0)
        .to_owned()
}

/// The capture triggers of one synced table on the dialect `d`, given its
/// unique column sets other than the key.
///
/// Where a trigger cannot be replaced in place (SQLite, MySQL), its name
/// carries a hash of its text: a release or a new unique index that changes
/// the text gives it a new name, and [`install_table`] creates it before it
/// drops the old one, so no write goes unmarked in between.
///
/// `home` is the schema of tidesync's own tables where the dialect has
/// schemas (see `Capture::home`).
pub(crate) fn triggers(
    d: &dyn Dialect,
    spec: &TableSpec,
    uniques: &[Vec<String>],
    home: Option<&str>,
) -> Vec<Trigger> {
    let markers = dirty_table(&spec.name);
    let capture = |name: &dyn Fn(&str) -> String| {
        d.triggers(&Capture {
            table: Place::of(d, spec),
            keys: spec.pk.iter().map(|c| c.name.as_str()).collect(),
            uniques,
            markers: &markers,
            applying: APPLYING,
            home,
            name,
        })
    };
    if d.triggers_query().is_none() {
        return capture(&|suffix| trigger_name(&spec.name, suffix));
    }
    let drafts = capture(&|suffix| format!("\u{0}{suffix}"));
    let hash = |suffix: &str| {
        drafts
            .iter()
            .find(|t| t.name.strip_prefix('\u{0}') == Some(suffix))
            .map_or(0, |t| fnv(&t.sql))
    };
    capture(&|suffix| trigger_name(&spec.name, &format!("{suffix}_{:08x}", hash(suffix) as u32)))
}

/// Create the replica's metadata tables (bringing those of an earlier
/// release up to date) and check or set the schema version.
pub(crate) async fn install_metadata(db: &DatabaseConnection) -> Result<()> {
    for t in metadata_tables(dialect::of_db(db)?) {
        create(db, t).await?;
    }
    LOCAL_META.check_version(db, SCHEMA_VERSION).await?;
    LOCAL_META
        .upsert(db, "schema_version", &SCHEMA_VERSION.to_string())
        .await
}

/// Create the dirty table and triggers of one synced table (idempotent),
/// bringing those of an earlier release up to date.
pub(crate) async fn install_table<C: ConnectionTrait>(db: &C, spec: &TableSpec) -> Result<()> {
    let d = dialect::of_db(db)?;
    let markers = dirty_table(&spec.name);
    let place = Place::of(d, spec);
    let key_types = column_types(db, d, place).await?;
    create(db, dirty_table_ddl(d, spec, &key_types)).await?;
    create(
        db,
        version_table_ddl(d, spec, |c| version_key_type(d, c, &key_types)),
    )
    .await?;
    add_gone_column(db, d, &markers).await?;
    retype_keys(db, d, spec, &markers, |c| key_types.get(&c.name).cloned()).await?;
    retype_keys(db, d, spec, &version_table(&spec.name), |c| {
        version_key_text(key_types.get(&c.name))
    })
    .await?;
    let uniques = unique_columns(db, d, place).await?;
    // Where the markers were created (PostgreSQL: the current schema).
    let home = schema_of(db, Place::own(&markers)).await?;
    let wanted = triggers(d, spec, &uniques, home.as_deref());
    let existing = match d.triggers_query() {
        Some(sql) => names(db, sql, place).await?,
        None => Vec::new(),
    };
    for t in &wanted {
        if !existing.contains(&t.name) {
            db.execute_unprepared(&t.sql).await?;
        }
    }
    // Then drop this release's predecessors (and triggers of unique
    // indexes since dropped).
    for name in existing {
        if name.starts_with(TRIGGER_PREFIX) && !wanted.iter().any(|t| t.name == name) {
            db.execute_unprepared(&d.drop_trigger(&name, &spec.name))
                .await?;
        }
    }
    Ok(())
}

/// The start of the name of every trigger tidesync creates.
const TRIGGER_PREFIX: &str = "_ts_";

/// Add the `gone` column to a dirty-marker table of a release before it.
async fn add_gone_column<C: ConnectionTrait>(db: &C, d: &dyn Dialect, markers: &str) -> Result<()> {
    let has = |columns: &[String]| columns.iter().any(|c| c == "gone");
    if has(&existing_columns(db, d, Place::own(markers)).await?) {
        return Ok(());
    }
    let alter = Table::alter()
        .table(Alias::new(markers))
        .add_column(gone_column())
        .to_owned();
    match db.execute(&alter).await {
        Ok(_) => Ok(()),
        // Another process added it meanwhile.
        Err(_) if has(&existing_columns(db, d, Place::own(markers)).await?) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The unique column sets of `table` other than its key, where the capture
/// triggers need them; an index on an expression is left out.
async fn unique_columns<C: ConnectionTrait>(
    db: &C,
    d: &dyn Dialect,
    table: Place<'_>,
) -> Result<Vec<Vec<String>>> {
    let Some(sql) = d.unique_columns_query() else {
        return Ok(Vec::new());
    };
    let rows = catalog(db, sql, table).await?;
    let mut indexes: Vec<(String, Option<Vec<String>>)> = Vec::new();
    for r in rows {
        let index: String = r.try_get_by_index(0)?;
        let column: Option<String> = r.try_get_by_index(1)?;
        if indexes.last().is_none_or(|(i, _)| *i != index) {
            indexes.push((index, Some(Vec::new())));
        }
        if let Some((_, columns)) = indexes.last_mut() {
            match (columns.as_mut(), column) {
                (Some(cols), Some(c)) => cols.push(c),
                _ => *columns = None,
            }
        }
    }
    Ok(indexes.into_iter().filter_map(|(_, c)| c).collect())
}

/// The first column of each row `sql` returns for the parameter `table`.
async fn names<C: ConnectionTrait>(db: &C, sql: &str, table: Place<'_>) -> Result<Vec<String>> {
    let rows = catalog(db, sql, table).await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get_by_index::<String>(0))
        .collect::<Result<Vec<_>, _>>()?)
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
        triggers(d(kind), &spec(), &[], None)
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
    /// new row (update, which may change the key: the old row is then
    /// gone) or the old row (delete: gone). A name carries a hash of the
    /// trigger's text.
    #[test]
    fn sqlite_triggers() {
        let sql = trigger_sql(DbBackend::Sqlite);
        assert_eq!(sql.len(), 3);
        assert_eq!(
            sql[0],
            "CREATE TRIGGER IF NOT EXISTS \"_ts_ins_17ce6409_contacts\" AFTER INSERT ON \"contacts\"\n\
             WHEN NOT EXISTS (SELECT 1 FROM \"_tidesync_applying\")\n\
             BEGIN\n\
             \x20 INSERT INTO \"_ts_d_contacts\" (\"id\", \"ver\", \"wall_us\", \"gone\") VALUES (NEW.\"id\", 1, CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER), 0) ON CONFLICT (\"id\") DO UPDATE SET \"ver\" = \"ver\" + 1, \"wall_us\" = excluded.\"wall_us\", \"gone\" = CASE WHEN excluded.\"gone\" > 0 THEN \"ver\" + 1 ELSE \"gone\" END;\n\
             END"
        );
        assert_eq!(
            sql[1],
            "CREATE TRIGGER IF NOT EXISTS \"_ts_upd_5361c596_contacts\" AFTER UPDATE ON \"contacts\"\n\
             WHEN NOT EXISTS (SELECT 1 FROM \"_tidesync_applying\")\n\
             BEGIN\n\
             \x20 INSERT INTO \"_ts_d_contacts\" (\"id\", \"ver\", \"wall_us\", \"gone\") VALUES (OLD.\"id\", 1, CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER), CASE WHEN OLD.\"id\" = NEW.\"id\" THEN 0 ELSE 1 END) ON CONFLICT (\"id\") DO UPDATE SET \"ver\" = \"ver\" + 1, \"wall_us\" = excluded.\"wall_us\", \"gone\" = CASE WHEN excluded.\"gone\" > 0 THEN \"ver\" + 1 ELSE \"gone\" END;\n\
             \x20 INSERT INTO \"_ts_d_contacts\" (\"id\", \"ver\", \"wall_us\", \"gone\") VALUES (NEW.\"id\", 1, CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER), 0) ON CONFLICT (\"id\") DO UPDATE SET \"ver\" = \"ver\" + 1, \"wall_us\" = excluded.\"wall_us\", \"gone\" = CASE WHEN excluded.\"gone\" > 0 THEN \"ver\" + 1 ELSE \"gone\" END;\n\
             END"
        );
        assert_eq!(
            sql[2],
            "CREATE TRIGGER IF NOT EXISTS \"_ts_del_0853ce44_contacts\" AFTER DELETE ON \"contacts\"\n\
             WHEN NOT EXISTS (SELECT 1 FROM \"_tidesync_applying\")\n\
             BEGIN\n\
             \x20 INSERT INTO \"_ts_d_contacts\" (\"id\", \"ver\", \"wall_us\", \"gone\") VALUES (OLD.\"id\", 1, CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER), 1) ON CONFLICT (\"id\") DO UPDATE SET \"ver\" = \"ver\" + 1, \"wall_us\" = excluded.\"wall_us\", \"gone\" = CASE WHEN excluded.\"gone\" > 0 THEN \"ver\" + 1 ELSE \"gone\" END;\n\
             END"
        );
    }

    /// With unique columns besides the key, two more SQLite triggers mark,
    /// before an insert or an update of those columns, the rows holding the
    /// new values: `INSERT OR REPLACE` deletes them without a delete
    /// trigger.
    #[test]
    fn sqlite_triggers_of_unique_columns() {
        let uniques = [
            vec!["email".to_string()],
            vec!["a".to_string(), "b".to_string()],
        ];
        let sql: Vec<String> = triggers(d(DbBackend::Sqlite), &spec(), &uniques, None)
            .into_iter()
            .map(|t| t.sql)
            .collect();
        assert_eq!(sql.len(), 5);
        assert_eq!(sql[..3], trigger_sql(DbBackend::Sqlite)[..]);
        assert_eq!(
            sql[3],
            "CREATE TRIGGER IF NOT EXISTS \"_ts_uqi_cad9e732_contacts\" BEFORE INSERT ON \"contacts\"\n\
             WHEN NOT EXISTS (SELECT 1 FROM \"_tidesync_applying\")\n\
             BEGIN\n\
             \x20 INSERT INTO \"_ts_d_contacts\" (\"id\", \"ver\", \"wall_us\", \"gone\") SELECT h.\"id\", 1, CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER), 0 FROM \"contacts\" AS h WHERE h.\"email\" = NEW.\"email\" ON CONFLICT (\"id\") DO UPDATE SET \"ver\" = \"ver\" + 1, \"wall_us\" = excluded.\"wall_us\", \"gone\" = CASE WHEN excluded.\"gone\" > 0 THEN \"ver\" + 1 ELSE \"gone\" END;\n\
             \x20 INSERT INTO \"_ts_d_contacts\" (\"id\", \"ver\", \"wall_us\", \"gone\") SELECT h.\"id\", 1, CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER), 0 FROM \"contacts\" AS h WHERE h.\"a\" = NEW.\"a\" AND h.\"b\" = NEW.\"b\" ON CONFLICT (\"id\") DO UPDATE SET \"ver\" = \"ver\" + 1, \"wall_us\" = excluded.\"wall_us\", \"gone\" = CASE WHEN excluded.\"gone\" > 0 THEN \"ver\" + 1 ELSE \"gone\" END;\n\
             END"
        );
        assert_eq!(
            sql[4],
            "CREATE TRIGGER IF NOT EXISTS \"_ts_uqu_e844df68_contacts\" BEFORE UPDATE OF \"a\", \"b\", \"email\" ON \"contacts\"\n\
             WHEN NOT EXISTS (SELECT 1 FROM \"_tidesync_applying\")\n\
             BEGIN\n\
             \x20 INSERT INTO \"_ts_d_contacts\" (\"id\", \"ver\", \"wall_us\", \"gone\") SELECT h.\"id\", 1, CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER), 0 FROM \"contacts\" AS h WHERE h.\"email\" = NEW.\"email\" ON CONFLICT (\"id\") DO UPDATE SET \"ver\" = \"ver\" + 1, \"wall_us\" = excluded.\"wall_us\", \"gone\" = CASE WHEN excluded.\"gone\" > 0 THEN \"ver\" + 1 ELSE \"gone\" END;\n\
             \x20 INSERT INTO \"_ts_d_contacts\" (\"id\", \"ver\", \"wall_us\", \"gone\") SELECT h.\"id\", 1, CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER), 0 FROM \"contacts\" AS h WHERE h.\"a\" = NEW.\"a\" AND h.\"b\" = NEW.\"b\" ON CONFLICT (\"id\") DO UPDATE SET \"ver\" = \"ver\" + 1, \"wall_us\" = excluded.\"wall_us\", \"gone\" = CASE WHEN excluded.\"gone\" > 0 THEN \"ver\" + 1 ELSE \"gone\" END;\n\
             END"
        );
    }

    /// A trigger that cannot be replaced in place is named after its text:
    /// another text (here: another unique index), another name; the same
    /// text, the same name.
    #[test]
    fn trigger_names_follow_their_text() {
        let names = |uniques: &[Vec<String>]| -> Vec<String> {
            triggers(d(DbBackend::Sqlite), &spec(), uniques, None)
                .into_iter()
                .map(|t| t.name)
                .collect()
        };
        let one = [vec!["email".to_string()]];
        let two = [vec!["phone".to_string()]];
        assert_eq!(names(&one), names(&one));
        assert_eq!(names(&one)[..3], names(&[])[..]);
        assert_ne!(names(&one)[3], names(&two)[3]);
        assert_ne!(names(&one)[4], names(&two)[4]);
        for n in names(&one) {
            assert!(n.starts_with(TRIGGER_PREFIX), "{n}");
        }
        // PostgreSQL replaces its function and trigger in place.
        let pg: Vec<String> = triggers(d(DbBackend::Postgres), &spec(), &one, None)
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(pg, ["_ts_fn_contacts", "_ts_cap_contacts"]);
    }

    /// The PostgreSQL trigger function and trigger, word for word: the
    /// function skips sessions that are applying, marks the old row for
    /// updates and deletes (gone after a delete or a change of key) and
    /// the new row for inserts and updates; one row-level trigger runs it
    /// after every write.
    #[test]
    fn postgres_trigger_function() {
        let sql = trigger_sql(DbBackend::Postgres);
        assert_eq!(sql.len(), 2);
        assert_eq!(
            sql[0],
            "CREATE OR REPLACE FUNCTION \"_ts_fn_contacts\"() RETURNS trigger LANGUAGE plpgsql AS $tidesync$\n\
             BEGIN\n\
             \x20 IF EXISTS (SELECT 1 FROM \"_tidesync_applying\" WHERE \"session\" = pg_backend_pid()) THEN RETURN NULL; END IF;\n\
             \x20 IF TG_OP <> 'INSERT' THEN INSERT INTO \"_ts_d_contacts\" (\"id\", \"ver\", \"wall_us\", \"gone\") VALUES (OLD.\"id\", 1, (extract(epoch from clock_timestamp()) * 1000000)::bigint, CASE WHEN TG_OP = 'DELETE' THEN 1 WHEN OLD.\"id\" = NEW.\"id\" THEN 0 ELSE 1 END) ON CONFLICT (\"id\") DO UPDATE SET \"ver\" = \"_ts_d_contacts\".\"ver\" + 1, \"wall_us\" = EXCLUDED.\"wall_us\", \"gone\" = CASE WHEN EXCLUDED.\"gone\" > 0 THEN \"_ts_d_contacts\".\"ver\" + 1 ELSE \"_ts_d_contacts\".\"gone\" END; END IF;\n\
             \x20 IF TG_OP <> 'DELETE' THEN INSERT INTO \"_ts_d_contacts\" (\"id\", \"ver\", \"wall_us\", \"gone\") VALUES (NEW.\"id\", 1, (extract(epoch from clock_timestamp()) * 1000000)::bigint, 0) ON CONFLICT (\"id\") DO UPDATE SET \"ver\" = \"_ts_d_contacts\".\"ver\" + 1, \"wall_us\" = EXCLUDED.\"wall_us\", \"gone\" = CASE WHEN EXCLUDED.\"gone\" > 0 THEN \"_ts_d_contacts\".\"ver\" + 1 ELSE \"_ts_d_contacts\".\"gone\" END; END IF;\n\
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
    /// row (update) or the old row (delete), as on SQLite.
    #[test]
    fn mysql_triggers() {
        let sql = trigger_sql(DbBackend::MySql);
        assert_eq!(sql.len(), 3);
        assert_eq!(
            sql[0],
            "CREATE TRIGGER `_ts_ins_3f6236ee_contacts` AFTER INSERT ON `contacts` FOR EACH ROW\n\
             BEGIN\n\
             \x20 IF NOT EXISTS (SELECT 1 FROM `_tidesync_applying` WHERE `session` = CONNECTION_ID()) THEN\n\
             \x20   INSERT INTO `_ts_d_contacts` (`id`, `ver`, `wall_us`, `gone`) VALUES (NEW.`id`, 1, CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED), 0) ON DUPLICATE KEY UPDATE `ver` = `ver` + 1, `wall_us` = VALUES(`wall_us`), `gone` = IF(VALUES(`gone`) > 0, `ver`, `gone`);\n\
             \x20 END IF;\n\
             END"
        );
        assert_eq!(
            sql[1],
            "CREATE TRIGGER `_ts_upd_7ec058f6_contacts` AFTER UPDATE ON `contacts` FOR EACH ROW\n\
             BEGIN\n\
             \x20 IF NOT EXISTS (SELECT 1 FROM `_tidesync_applying` WHERE `session` = CONNECTION_ID()) THEN\n\
             \x20   INSERT INTO `_ts_d_contacts` (`id`, `ver`, `wall_us`, `gone`) VALUES (OLD.`id`, 1, CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED), CASE WHEN OLD.`id` = NEW.`id` THEN 0 ELSE 1 END) ON DUPLICATE KEY UPDATE `ver` = `ver` + 1, `wall_us` = VALUES(`wall_us`), `gone` = IF(VALUES(`gone`) > 0, `ver`, `gone`);\n\
             \x20   INSERT INTO `_ts_d_contacts` (`id`, `ver`, `wall_us`, `gone`) VALUES (NEW.`id`, 1, CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED), 0) ON DUPLICATE KEY UPDATE `ver` = `ver` + 1, `wall_us` = VALUES(`wall_us`), `gone` = IF(VALUES(`gone`) > 0, `ver`, `gone`);\n\
             \x20 END IF;\n\
             END"
        );
        assert_eq!(
            sql[2],
            "CREATE TRIGGER `_ts_del_bf2dc129_contacts` AFTER DELETE ON `contacts` FOR EACH ROW\n\
             BEGIN\n\
             \x20 IF NOT EXISTS (SELECT 1 FROM `_tidesync_applying` WHERE `session` = CONNECTION_ID()) THEN\n\
             \x20   INSERT INTO `_ts_d_contacts` (`id`, `ver`, `wall_us`, `gone`) VALUES (OLD.`id`, 1, CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED), 1) ON DUPLICATE KEY UPDATE `ver` = `ver` + 1, `wall_us` = VALUES(`wall_us`), `gone` = IF(VALUES(`gone`) > 0, `ver`, `gone`);\n\
             \x20 END IF;\n\
             END"
        );
    }

    /// A version table keeps a MySQL `ENUM` or `SET` key as text, as long
    /// as its longest value; every other type as the table has it.
    #[test]
    fn version_keys_take_the_tables_types_but_enums() {
        let t = |s: &str| version_key_text(Some(&s.to_owned()));
        assert_eq!(t("datetime(6)").as_deref(), Some("datetime(6)"));
        assert_eq!(t("enum('a','bbb','c''d')").as_deref(), Some("varchar(3)"));
        assert_eq!(t("ENUM('x')").as_deref(), Some("varchar(1)"));
        assert_eq!(t("set('ab','c')").as_deref(), Some("varchar(4)"));
        assert_eq!(version_key_text(None), None);
    }

    /// A version table is named like the markers, with its own prefix
    /// (shortened alike), and holds the key in the types given, the state
    /// in long bytes, and whether the row is live.
    #[test]
    fn version_tables_are_named_and_typed() {
        assert_eq!(version_table("contacts"), "_ts_v_contacts");
        let long = "a".repeat(100);
        assert_eq!(
            version_table(&long),
            format!("_ts_v_{}_2885d0ac2e5a9d79", "a".repeat(40))
        );
        let ddl = version_table_ddl(d(DbBackend::MySql), &spec(), |_| {
            ColumnType::custom("binary(16)")
        });
        assert_eq!(
            ddl.to_string(sea_orm::sea_query::MysqlQueryBuilder),
            "CREATE TABLE IF NOT EXISTS `_ts_v_contacts` ( `id` binary(16) NOT NULL, \
             `clocks` LONGBLOB NOT NULL, `del` LONGBLOB NULL, `vals` LONGBLOB NOT NULL, \
             `live` bool NOT NULL, PRIMARY KEY (`id`) )"
        );
        let ddl = version_table_ddl(d(DbBackend::Postgres), &spec(), |_| ColumnType::Uuid);
        assert_eq!(
            ddl.to_string(sea_orm::sea_query::PostgresQueryBuilder),
            "CREATE TABLE IF NOT EXISTS \"_ts_v_contacts\" ( \"id\" uuid NOT NULL, \
             \"clocks\" bytea NOT NULL, \"del\" bytea NULL, \"vals\" bytea NOT NULL, \
             \"live\" bool NOT NULL, PRIMARY KEY (\"id\") )"
        );
    }

    #[test]
    fn dirty_table_copies_key_types() {
        let ddl = dirty_table_ddl(d(DbBackend::Postgres), &spec(), &HashMap::new());
        assert_eq!(
            ddl.to_string(sea_orm::sea_query::PostgresQueryBuilder),
            "CREATE TABLE IF NOT EXISTS \"_ts_d_contacts\" ( \"id\" uuid NOT NULL, \"ver\" bigint NOT NULL, \"wall_us\" bigint NOT NULL, \"gone\" bigint NOT NULL DEFAULT 0, PRIMARY KEY (\"id\") )"
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
            [META, OUTBOX.name, COLUMNS, PARKED, CONFLICTS, APPLYING]
        );
    }
}
