//! The hub's own tables, each named and created here: its metadata, the
//! change log, the row states, per-origin progress, rejected changes and
//! held conflicts.

use sea_orm::sea_query::{
    Alias, ColumnDef, ColumnType, Expr, ExprTrait, Index, Query, Table, TableCreateStatement,
};
use sea_orm::{ConnectionTrait, DatabaseConnection};

use super::owner;
use crate::dialect::{self, Dialect, Place};
use crate::model::change::{ColumnSpec, TableSpec};
use crate::model::clock::NodeId;
use crate::model::error::{Error, Result};
use crate::model::protocol::HubInfo;
use crate::model::syncable::Ownership;
use crate::store::codec::ChangeTable;
use crate::store::ddl::{create, existing_columns, not_null, schema_of, varchar};
use crate::store::meta::Meta;
use crate::store::user_tables::ensure_table;

/// Newest hub metadata schema this release reads and writes. Version 2
/// keeps a table in a schema of its own ([`HUB_PLACES`]), which a release
/// of version 1 would not find: a hub takes it only then (a new hub starts
/// at [`FIRST_VERSION`], which every release reads). Version 3 keeps the
/// row states in version tables (see `versions`), which no earlier release
/// reads; version 4 gives each version row its position, which pulls read
/// (a server of version 3 would write rows without one); version 5 no
/// longer writes the log (a server of version 4 would serve pulls of
/// changes from it, so the log moves to another name, see `retire_log`):
/// version 6 keeps a live row's state in its users' row too (see
/// `users`), which a push of version 5 would leave behind the version row
/// it writes. The first install of this release raises it, and a push
/// refuses a hub of a later version than its own.
pub(crate) const HUB_SCHEMA_VERSION: i64 = 6;
/// The version a new hub starts at.
const FIRST_VERSION: i64 = 1;

/// Key/value metadata of the hub: schema version, hub id, next sequence.
pub(crate) const HUB_META: Meta = Meta("_tidesync_hub_meta");
/// The change log of releases before hub schema version 5, by hub
/// sequence, with each change's origin and origin sequence: read for the
/// changes applied then (see `log`), never written.
pub(crate) const CHANGES: ChangeTable = ChangeTable {
    name: "_tidesync_changes_v4",
    ids: &["hub_seq", "origin", "origin_seq", "owner"],
};
/// Replicated state of every row (values and per-column clocks).
pub(crate) const HUB_ROWS: &str = "_tidesync_hub_rows";
/// The register of the column ordinals of the hub's version tables.
pub(crate) const HUB_COLUMNS: &str = "_tidesync_hub_columns";

/// Name of the hub's version table of `table` (see `versions`).
pub(crate) fn hub_version_table(table: &str) -> String {
    crate::store::ddl::short_name("_ts_hv_", table)
}

/// [`HUB_ROWS`] once a release of hub schema version 3 installed (see
/// `versions`): what is left in it are the states of tables no install
/// of this release has seen.
pub(crate) const HUB_ROWS_V1: &str = "_tidesync_hub_rows_v1";
/// One record per push transaction that applied changes: the origin, the
/// hub sequence of its first applied change, and per change its origin
/// sequence and digest (see `batches`).
pub(crate) const BATCHES: &str = "_tidesync_batches";
/// Per-origin progress: the last origin sequence applied.
pub(crate) const PEERS: &str = "_tidesync_peers";
/// Changes refused and parked (policy `Park`), with the reason.
pub(crate) const REJECTED: &str = "_tidesync_rejected";
/// The conflicts each applied change raised and the hub held back
/// (policies `manual` and custom), until its device has them for sure.
pub(crate) const HELD: &str = "_tidesync_held";
/// Who each synced table's rows belong to ([`Ownership::record`]),
/// recorded when the hub first installs it: a device cannot change it (see
/// [`ownership`]).
pub(crate) const HUB_ACCESS: Meta = Meta("_tidesync_hub_access");
/// The user each origin (device identity) pushed as first, through a hub
/// serving accounts: another user cannot push under it (see `access`).
pub(crate) const HUB_ORIGINS: Meta = Meta("_tidesync_hub_origins");
/// Where the hub keeps each synced table, on a dialect with schemas
/// (PostgreSQL): the table's sync name and the schema it is in, recorded
/// when the hub first installs it (see [`place`]).
pub(crate) const HUB_PLACES: Meta = Meta("_tidesync_hub_places");
/// Each synced table's key: its columns' names, order and types (a JSON
/// array of column specs), recorded when the hub first installs it (see
/// [`key`]): a device cannot retype or rename it. A table an earlier
/// release made has its key recorded by its next install.
pub(crate) const HUB_KEYS: Meta = Meta("_tidesync_hub_keys");

/// At most this many columns (synced and local) in a table a hub takes.
const MAX_COLUMNS: usize = 1000;
/// At most this many key columns (MySQL indexes at most 16).
const MAX_KEY_COLUMNS: usize = 16;

/// Refuse a spec the hub would create wrong or not at all, before anything
/// is created or recorded: no key, a key column that is not one of its
/// columns (or of another type than that column) or that is named as a
/// column of tidesync's own tables, a column named twice, more columns
/// than a hub takes.
pub(crate) fn check_spec(spec: &TableSpec, d: &dyn Dialect) -> Result<()> {
    let refuse = |why: String| Err(Error::Config(format!("table `{}`: {why}", spec.name)));
    if spec.pk.is_empty() {
        return refuse("it has no key columns".into());
    }
    if spec.pk.len() > MAX_KEY_COLUMNS {
        return refuse(format!("more than {MAX_KEY_COLUMNS} key columns"));
    }
    if spec.columns.len() + spec.local_only.len() > MAX_COLUMNS {
        return refuse(format!("more than {MAX_COLUMNS} columns"));
    }
    let mut seen = std::collections::HashSet::new();
    for c in spec.columns.iter().chain(&spec.local_only) {
        if !seen.insert(c.name.to_ascii_lowercase()) {
            return refuse(format!("column `{}` is named twice", c.name));
        }
    }
    if let Some(why) = crate::store::version_table::reserved_key(
        spec,
        &crate::store::version_table::HUB_BESIDE_KEYS,
        d,
    ) {
        return Err(Error::Config(why));
    }
    // Refused by replicas too; kept free for tidesync's own columns in the
    // hub's tables.
    if let Some(c) = spec
        .columns
        .iter()
        .chain(&spec.local_only)
        .find(|c| c.name.to_ascii_lowercase().starts_with("_tidesync"))
    {
        return refuse(format!(
            "column `{}`: names starting with `_tidesync` are tidesync's own",
            c.name
        ));
    }
    let mut keys = std::collections::HashSet::new();
    for k in &spec.pk {
        if !keys.insert(k.name.as_str()) {
            return refuse(format!("key column `{}` is named twice", k.name));
        }
        match spec.column(&k.name) {
            Some(c) if c.ty == k.ty => {}
            Some(_) => {
                return refuse(format!(
                    "key column `{}` is of another type than its column",
                    k.name
                ));
            }
            None => {
                return refuse(format!(
                    "key column `{}` is not one of its synced columns",
                    k.name
                ));
            }
        }
    }
    Ok(())
}

/// The key of `spec` as [`HUB_KEYS`] records it.
fn key_of(spec: &TableSpec) -> Vec<ColumnSpec> {
    spec.pk
        .iter()
        .map(|k| ColumnSpec {
            name: k.name.clone(),
            ty: spec.column(&k.name).map_or(k.ty.clone(), |c| c.ty.clone()),
            nullable: false,
            kind: None,
        })
        .collect()
}

/// Check `spec`'s key against the one the hub records for its table (with
/// `write`, record it first if none is); a device cannot change a table's
/// key: another type would reach the same database row as another row
/// state (another user's, past the ownership check).
/// The text [`HUB_KEYS`] records for `spec`'s key.
fn key_text(spec: &TableSpec) -> Result<String> {
    serde_json::to_string(&key_of(spec)).map_err(|e| Error::Corrupt(e.to_string()))
}

async fn key<C: ConnectionTrait>(db: &C, spec: &TableSpec, write: bool) -> Result<()> {
    let mine = key_of(spec);
    let text = key_text(spec)?;
    if write {
        HUB_KEYS.insert_if_missing(db, &spec.name, &text).await?;
    }
    let Some(stored) = HUB_KEYS.read(db, &spec.name).await? else {
        return Ok(());
    };
    let recorded: Vec<ColumnSpec> = serde_json::from_str(&stored).map_err(|e| {
        Error::Corrupt(format!(
            "`{}` records `{stored}` for table `{}`: {e}",
            HUB_KEYS.0, spec.name
        ))
    })?;
    if recorded == mine {
        return Ok(());
    }
    let show = |k: &[ColumnSpec]| {
        k.iter()
            .map(|c| format!("{} {:?}", c.name, c.ty))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(Error::Config(format!(
        "table `{}`: the hub keys it by ({}), and this device's entity by ({}); a device \
         cannot change a table's key (change the table and its record in `{}` on the hub \
         if that is meant)",
        spec.name,
        show(&recorded),
        show(&mine),
        HUB_KEYS.0
    )))
}

/// Create the hub's tables and the users' (idempotent), check the schema
/// version, and return the hub's identity (created on first install) with
/// the tables as the hub places them (see [`place`]).
pub(crate) async fn install(
    db: &DatabaseConnection,
    tables: &[TableSpec],
) -> Result<(HubInfo, Vec<TableSpec>)> {
    let d = dialect::of_db(db)?;
    for spec in tables {
        check_spec(spec, d)?;
    }
    retire_log(db).await?;
    for t in hub_tables(d) {
        create(db, t).await?;
    }
    add_owner_column(db, d).await?;
    HUB_META
        .insert_if_missing(db, "schema_version", &FIRST_VERSION.to_string())
        .await?;
    HUB_META.check_version(db, HUB_SCHEMA_VERSION).await?;
    HUB_META.insert_if_missing(db, "next_seq", "1").await?;
    HUB_META
        .insert_if_missing(db, "hub_id", &NodeId::random().to_string())
        .await?;
    let mut placed = Vec::with_capacity(tables.len());
    for declared in tables {
        // Checked against the records first, the table created, and only
        // then recorded (checked again, with the device's own declaration:
        // another install may have recorded meanwhile): a refused or failed
        // install records nothing. One exception: a table made by this
        // install has its key recorded just before (and the record taken
        // back if the table could not be made), so that of two first
        // installs with other keys, the one whose key was not recorded is
        // refused before it makes anything; recorded after, the loser of
        // the `CREATE TABLE` could record its key over the winner's table.
        let spec = place(db, d, declared, false).await?;
        ownership(db, &spec, false).await?;
        key(db, &spec, false).await?;
        let fresh = existing_columns(db, d, Place::of(d, &spec))
            .await?
            .is_empty();
        if fresh {
            key(db, &spec, true).await?;
        }
        if let Err(e) = ensure_table(db, &spec).await {
            if fresh
                && existing_columns(db, d, Place::of(d, &spec))
                    .await
                    .is_ok_and(|c| c.is_empty())
            {
                // Nothing made: no key of it stays recorded (this
                // install's: another install of the same key may make the
                // table yet, and records it again after).
                let mine = key_text(&spec)?;
                if let Err(undo) = HUB_KEYS.remove_if(db, &spec.name, &mine).await {
                    tracing::warn!("the key record of `{}` stays: {undo}", spec.name);
                }
            }
            return Err(e);
        }
        // Again for a table this install made: another install's undo may
        // have taken the record back meanwhile.
        key(db, &spec, true).await?;
        let mut spec = place(db, d, declared, true).await?;
        spec.ownership = ownership(db, &spec, true).await?;
        placed.push(spec);
    }
    let hub_id = HUB_META.require(db, "hub_id").await?;
    Ok((HubInfo { hub_id }, placed))
}

/// Whether the hub holds the state of some row of `table`: in its users'
/// rows (see `users`; the table where [`HUB_PLACES`] records it, else in
/// the search path), in its version table, or in format 1's [`HUB_ROWS`]
/// or [`HUB_ROWS_V1`], where they are.
pub(crate) async fn has_states<C: ConnectionTrait>(db: &C, table: &str) -> Result<bool> {
    let d = dialect::of_db(db)?;
    let schema = match d.has_schemas() {
        true => HUB_PLACES.read(db, table).await?.filter(|s| !s.is_empty()),
        false => None,
    };
    let users = Place {
        schema: schema.as_deref(),
        name: table,
    };
    let seq = crate::store::version_table::ROW_META[0];
    if existing_columns(db, d, users)
        .await?
        .iter()
        .any(|c| c == seq)
    {
        let q = Query::select()
            .expr(Expr::val(1))
            .from(users.table_ref())
            .and_where(Expr::col(Alias::new(seq)).is_not_null())
            .limit(1)
            .to_owned();
        if db.query_one(&q).await?.is_some() {
            return Ok(true);
        }
    }
    let versions = hub_version_table(table);
    if !existing_columns(db, d, Place::own(&versions))
        .await?
        .is_empty()
    {
        let q = Query::select()
            .expr(Expr::val(1))
            .from(Alias::new(&versions))
            .limit(1)
            .to_owned();
        if db.query_one(&q).await?.is_some() {
            return Ok(true);
        }
    }
    for store in [HUB_ROWS_V1, HUB_ROWS] {
        // `_tidesync_hub_rows` may be the placeholder (see `versions`).
        let columns = existing_columns(db, d, Place::own(store)).await?;
        if !columns.iter().any(|c| c == "vals") {
            continue;
        }
        let q = Query::select()
            .expr(Expr::val(1))
            .from(Alias::new(store))
            .and_where(Expr::col(Alias::new("tbl")).eq(table))
            .limit(1)
            .to_owned();
        if db.query_one(&q).await?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The table of `spec` where the hub keeps it, on a dialect with schemas.
///
/// Devices install the hub's tables, each with its own entity: one may
/// name a schema (`schema_name`) where another names none (a SQLite
/// device cannot). The hub keeps each table in one place for good,
/// recorded in [`HUB_PLACES`] by its first install: the schema its entity
/// named, or the search path (recorded as an empty name: the table found
/// by its bare name, as an earlier release made it, and as it stays after
/// a move of the schema with the search path). A table of which the hub
/// holds row states but no record was made by an earlier release: it stays
/// in the search path. A spec without a schema takes the table where it
/// is; a spec naming another schema is refused, loud: taking it would
/// split the hub's table in two.
///
/// Recording a named schema raises the hub's metadata version to
/// [`HUB_SCHEMA_VERSION`], so that an earlier release, which would write to
/// the table of that name in the search path, refuses the hub instead.
///
/// Without `write`, the place is found (as it would be recorded) but
/// nothing is written.
async fn place<C: ConnectionTrait>(
    db: &C,
    d: &dyn Dialect,
    spec: &TableSpec,
    write: bool,
) -> Result<TableSpec> {
    if !d.has_schemas() {
        return Ok(spec.clone());
    }
    let recorded = match HUB_PLACES.read(db, &spec.name).await? {
        Some(s) => s,
        None => {
            let first = match &spec.schema {
                Some(s) if !has_states(db, &spec.name).await? => s.clone(),
                _ => String::new(),
            };
            if !write {
                // Checked below as if recorded: a hub an earlier release
                // made keeps its table in the search path, and a device
                // naming another schema is refused before anything is made.
                first
            } else {
                HUB_PLACES.insert_if_missing(db, &spec.name, &first).await?;
                HUB_PLACES.require(db, &spec.name).await?
            }
        }
    };
    if write && !recorded.is_empty() {
        raise_version(db).await?;
    }
    if let Some(s) = spec.schema.as_deref() {
        let (same, there) = if recorded.is_empty() {
            // The search path's table, where it is (none yet: another
            // device recorded the place and has not created it).
            let found = schema_of(db, Place::own(&spec.name)).await?;
            let there = match &found {
                Some(f) => format!("in the search path (schema `{f}`)"),
                None => "in the search path".to_owned(),
            };
            (found.as_deref() == Some(s), there)
        } else {
            (recorded == s, format!("in schema `{recorded}`"))
        };
        if !same {
            return Err(Error::Config(format!(
                "table `{}`: the hub keeps it {there}, and this device's entity names \
                 schema `{s}`; give the entity the hub's schema (or none), or move the \
                 hub's table (ALTER TABLE ... SET SCHEMA) and its record in `{}`",
                spec.name, HUB_PLACES.0
            )));
        }
    }
    Ok(TableSpec {
        schema: (!recorded.is_empty()).then_some(recorded),
        ..spec.clone()
    })
}

/// The log's name before hub schema version 5, when pushes wrote it.
const LOG_BEFORE_V5: &str = "_tidesync_changes";

/// Move the log of a hub an earlier release made to [`CHANGES`]'s name,
/// and leave in its place a table no earlier release can use: a server
/// of one still running fails to read the log, instead of serving pulls
/// of changes from a log no push writes any more (and moving its cursor
/// past them). A hub made since has the placeholder from the start.
async fn retire_log(db: &DatabaseConnection) -> Result<()> {
    crate::store::ddl::rename_once(db, LOG_BEFORE_V5, CHANGES.name, "payload").await?;
    crate::store::ddl::placeholder(db, LOG_BEFORE_V5, "retired_by_hub_schema_version_5").await
}

/// Add the log's `owner` column to a hub an earlier release made (its
/// entries keep NULL: a pull finds their owner from the row's state).
async fn add_owner_column(db: &DatabaseConnection, d: &dyn Dialect) -> Result<()> {
    let has = |columns: &[String]| columns.iter().any(|c| c == "owner");
    if has(&existing_columns(db, d, Place::own(CHANGES.name)).await?) {
        return Ok(());
    }
    let alter = Table::alter()
        .table(Alias::new(CHANGES.name))
        .add_column(
            ColumnDef::new_with_type(Alias::new("owner"), d.long_text())
                .null()
                .to_owned(),
        )
        .to_owned();
    if let Err(e) = db.execute(&alter).await {
        // Another process added it meanwhile.
        if !has(&existing_columns(db, d, Place::own(CHANGES.name)).await?) {
            return Err(e.into());
        }
    }
    Ok(())
}

/// Who the rows of `spec`'s table belong to, as the hub records it.
///
/// The first install records the device's declaration. After that, a
/// device cannot change it (a device is not trusted with who reads
/// what): a device declaring nothing takes the record, one declaring
/// the same is fine, one declaring another owner or sharing is refused.
/// The one change allowed is from nothing declared to a declaration
/// (an application that adds owners to an entity): the log entries
/// written before carry no owner, and a pull finds it from their row's
/// state (see `visible::Visible`).
///
/// Without `write`, the declaration is checked against the record (if
/// any) and nothing is written.
async fn ownership(db: &DatabaseConnection, spec: &TableSpec, write: bool) -> Result<Ownership> {
    let declared = &spec.ownership;
    if let Some(column) = declared.column() {
        let Some(c) = spec.column(column) else {
            return Err(Error::Config(format!(
                "table `{}`: owner column `{column}` is not one of its synced columns",
                spec.name
            )));
        };
        if !owner::owner_type(&c.ty) {
            return Err(Error::Config(format!(
                "table `{}`: owner column `{column}` is of type {:?}; an owner is \
                 text, an integer or a UUID",
                spec.name, c.ty
            )));
        }
    }
    if write {
        HUB_ACCESS
            .insert_if_missing(db, &spec.name, &declared.record())
            .await?;
    }
    let Some(stored) = HUB_ACCESS.read(db, &spec.name).await? else {
        return Ok(declared.clone());
    };
    let recorded = Ownership::from_record(&stored).ok_or_else(|| {
        Error::Corrupt(format!(
            "`{}` records `{stored}` for table `{}`",
            HUB_ACCESS.0, spec.name
        ))
    })?;
    if recorded == *declared || *declared == Ownership::Undeclared {
        return Ok(recorded);
    }
    if recorded != Ownership::Undeclared {
        return Err(Error::Config(format!(
            "table `{}`: the hub has it {recorded}, and this device's entity has it \
             {declared}; a device cannot change who reads a table's rows (change the \
             record in `{}` on the hub if that is meant)",
            spec.name, HUB_ACCESS.0
        )));
    }
    if write {
        HUB_ACCESS
            .upsert(db, &spec.name, &declared.record())
            .await?;
    }
    Ok(declared.clone())
}

/// Raise the hub's metadata version to [`HUB_SCHEMA_VERSION`] (never lower
/// it).
pub(crate) async fn raise_version<C: ConnectionTrait>(db: &C) -> Result<()> {
    let now = HUB_META.read(db, "schema_version").await?;
    if now.and_then(|v| v.parse::<i64>().ok()) < Some(HUB_SCHEMA_VERSION) {
        HUB_META
            .upsert(db, "schema_version", &HUB_SCHEMA_VERSION.to_string())
            .await?;
    }
    Ok(())
}

/// DDL of the hub's own tables (`IF NOT EXISTS`).
pub(crate) fn hub_tables(d: &dyn Dialect) -> Vec<TableCreateStatement> {
    let text = d.long_text();
    let mut log = CHANGES.table(
        d,
        vec![
            not_null("hub_seq", ColumnType::BigInteger)
                .primary_key()
                .to_owned(),
            not_null("origin", varchar(32)),
            not_null("origin_seq", ColumnType::BigInteger),
            // Whose row the change is of, for a table with owners (see
            // `access`): NULL for the other tables.
            ColumnDef::new_with_type(Alias::new("owner"), text.clone())
                .null()
                .to_owned(),
        ],
    );
    log.index(
        Index::create()
            .name("_tidesync_changes_origin")
            .unique()
            .col(Alias::new("origin"))
            .col(Alias::new("origin_seq")),
    );
    vec![
        HUB_META.table(),
        HUB_PLACES.table(),
        HUB_ACCESS.table(),
        HUB_ORIGINS.table(),
        HUB_KEYS.table(),
        log,
        Table::create()
            .table(Alias::new(BATCHES))
            .if_not_exists()
            .col(
                not_null("first_hub", ColumnType::BigInteger)
                    .primary_key()
                    .to_owned(),
            )
            .col(not_null("n", ColumnType::Integer))
            .col(not_null("origin", varchar(32)))
            .col(not_null("first_seq", ColumnType::BigInteger))
            .col(not_null("last_seq", ColumnType::BigInteger))
            .col(not_null("seqs", d.long_bytes()))
            .col(not_null("digests", d.long_bytes()))
            // Its index on the origin is made apart (see
            // `batches::settle`): the table was first made without it.
            .to_owned(),
        Table::create()
            .table(Alias::new(PEERS))
            .if_not_exists()
            .col(not_null("origin", varchar(32)).primary_key())
            .col(not_null("applied_seq", ColumnType::BigInteger))
            .to_owned(),
        Table::create()
            .table(Alias::new(REJECTED))
            .if_not_exists()
            .col(not_null("origin", varchar(32)))
            .col(not_null("origin_seq", ColumnType::BigInteger))
            .col(not_null("tbl", varchar(64)))
            .col(not_null("change", text.clone()))
            .col(not_null("reason", text))
            .primary_key(
                Index::create()
                    .col(Alias::new("origin"))
                    .col(Alias::new("origin_seq")),
            )
            .to_owned(),
        Table::create()
            .table(Alias::new(HELD))
            .if_not_exists()
            .col(not_null("origin", varchar(32)))
            .col(not_null("origin_seq", ColumnType::BigInteger))
            .col(not_null("conflicts", d.long_text()))
            .primary_key(
                Index::create()
                    .col(Alias::new("origin"))
                    .col(Alias::new("origin_seq")),
            )
            .to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{column, table};
    use sea_orm::DbBackend;
    use sea_orm::sea_query::ColumnType;

    /// A column named as tidesync names its own is refused, whatever its
    /// case, synced or local.
    #[test]
    fn a_column_named_as_tidesyncs_own_is_refused() {
        let d = dialect::of(DbBackend::Postgres).unwrap();
        let ok = table(
            "t",
            &["id"],
            vec![
                column("id", ColumnType::Integer, false),
                column("tidesync_x", ColumnType::Integer, true),
            ],
        );
        assert!(check_spec(&ok, d).is_ok());
        for name in ["_tidesync_seq", "_TideSync"] {
            let spec = table(
                "t",
                &["id"],
                vec![
                    column("id", ColumnType::Integer, false),
                    column(name, ColumnType::Integer, true),
                ],
            );
            assert!(
                matches!(check_spec(&spec, d), Err(Error::Config(m)) if m.contains(name) && m.contains("tidesync's own")),
                "{name}"
            );
            let mut local = ok.clone();
            local
                .local_only
                .push(column(name, ColumnType::Integer, true));
            assert!(
                matches!(check_spec(&local, d), Err(Error::Config(m)) if m.contains(name)),
                "{name}, local only"
            );
        }
    }

    /// The hub refuses a key named as a column of its version rows, with
    /// the store's refusal.
    #[test]
    fn a_key_named_as_a_version_rows_column_is_refused() {
        let d = dialect::of(DbBackend::MySql).unwrap();
        for name in ["hub_seq", "Owner", "vals"] {
            let spec = table("t", &[name], vec![column(name, ColumnType::Integer, false)]);
            let why = crate::store::version_table::reserved_key(
                &spec,
                &crate::store::version_table::HUB_BESIDE_KEYS,
                d,
            )
            .expect(name);
            assert!(
                matches!(check_spec(&spec, d), Err(Error::Config(m)) if m == why),
                "{name}"
            );
        }
        let spec = table(
            "t",
            &["id"],
            vec![
                column("id", ColumnType::Integer, false),
                column("owner", ColumnType::Integer, true),
            ],
        );
        assert!(check_spec(&spec, d).is_ok());
        let ver = table(
            "t",
            &["ver"],
            vec![column("ver", ColumnType::Integer, false)],
        );
        assert!(check_spec(&ver, d).is_ok(), "`ver` is the replica's alone");
    }
}
