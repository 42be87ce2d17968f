//! The hub's row states in version tables (hub schema version 3; with
//! positions, 4): one table per synced table, `_ts_hv_<table>`, keyed by
//! the users' table's key types, with each row's column clocks, delete
//! clock and values in binary (see [`crate::store::version_table`]), the
//! column ordinals in `_tidesync_hub_columns`, and each row's position:
//! the log position of its latest change, the origin whose pushes set all
//! of it if one did, and its owner (pulls read rows by position, see
//! `since`).
//!
//! Format 1 kept every table's states in `_tidesync_hub_rows` under the
//! key's text, as typed JSON, each referring to the log entry that held
//! most of its values: every push wrote and read JSON, and loading a state
//! read its log entry too. A version row is written and read alone.
//!
//! Each install brings a table's format 1 states over ([`install_all`]):
//! `_tidesync_hub_rows` is renamed `_tidesync_hub_rows_v1`, then a page at
//! a time, each page in one transaction under the sequence lock, its
//! states are written to the version table and removed from the old table
//! together, so a state is in one table or the other and a crash loses
//! none. [`VERSIONED`] records each table that has a version table, with
//! its key: the snapshot reads them all, installed by this process or not.
//! States of a table no install of this release has seen stay in
//! `_tidesync_hub_rows_v1`, and the snapshot serves them from there after
//! the version tables. Rows without a position (moved states, version
//! tables of schema version 3) are given the log position of their latest
//! change ([`fill_positions`]).

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query, Table};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait, Value};

use super::owner;
use super::states;
use super::tables::hub_version_table;
use super::tables::{CHANGES, HUB_COLUMNS, HUB_META, HUB_ROWS, HUB_ROWS_V1, raise_version};
use crate::dialect::{self, Dialect, Place};
use crate::model::change::{ColumnSpec, TableSpec};
use crate::model::error::{Error, Result};
use crate::model::merge::RowState;
use crate::model::value::{key_identity, parse_pk_key, pk_key};
use crate::store::codec::{db_sequence, sequence};
use crate::store::ddl::create;
use crate::store::ddl::existing_columns;
use crate::store::meta::Meta;
use crate::store::rows::{STATE_COLUMNS, StoredState, key_text, upgrade_row_state_table};
use crate::store::version_table::{
    Position, ROW_META, VersionTables, Versions, column_spec_text, column_types, position_column,
    position_index, register_ddl, retype_keys, row_meta_column, row_meta_index, version_key_text,
    version_key_type, version_rows_ddl,
};

/// The tables that have a version table, each with its key columns (a JSON
/// array of column specs, with their value kinds), recorded when an
/// install made it.
pub(crate) const VERSIONED: Meta = Meta("_tidesync_hub_versioned_v6");

/// [`VERSIONED`]'s name before hub schema version 6, a placeholder since:
/// a server of an earlier release reads a live row's state from version
/// tables alone, which no longer hold it (see `users`), and would pass
/// live rows over in its pulls and snapshots. It reads the version tables
/// through this record, so it fails instead.
const VERSIONED_BEFORE_V6: &str = "_tidesync_hub_versioned";

/// Leave under [`VERSIONED_BEFORE_V6`] a placeholder with one row: a read
/// of it by an earlier release fails, on SQLite too, where a quoted name
/// that no column has reads as a string (the earlier release would find
/// no record in an empty placeholder, and pass every table over; a row of
/// it reads as a record whose key cannot be parsed).
async fn retire_versioned(db: &DatabaseConnection) -> Result<()> {
    const MARKER: &str = "retired_by_hub_schema_version_6";
    crate::store::ddl::placeholder(db, VERSIONED_BEFORE_V6, MARKER).await?;
    let any = Query::select()
        .expr(Expr::val(1))
        .from(Alias::new(VERSIONED_BEFORE_V6))
        .limit(1)
        .to_owned();
    if db.query_one(&any).await?.is_none() {
        let mark = Query::insert()
            .into_table(Alias::new(VERSIONED_BEFORE_V6))
            .columns([Alias::new(MARKER)])
            .values_panic([Expr::val(6)])
            .to_owned();
        db.execute(&mark).await?;
    }
    Ok(())
}

/// Where the hub keeps its version tables.
pub(crate) const HUB_VERSIONS: VersionTables = VersionTables {
    name: hub_version_table,
    register: HUB_COLUMNS,
    positions: true,
    specs: true,
};

/// States moved from `_tidesync_hub_rows` per transaction.
const MOVE_PAGE: u64 = 500;

/// Make the version tables of `placed` (the tables an install placed and
/// made), bringing their format 1 states over, after raising the hub's
/// schema version (an earlier release must not write states this one no
/// longer reads).
///
/// `_tidesync_hub_rows` is renamed `_tidesync_hub_rows_v1` first, and a
/// table no earlier release can use takes its name, so that a server of an
/// earlier release still running fails to install and to push instead of
/// working from states that moved. Should a state table of that name be
/// there again (made by hand, or before the placeholder), the states in it
/// are merged into the version rows at each install.
pub(crate) async fn install_all(db: &DatabaseConnection, placed: &[TableSpec]) -> Result<()> {
    raise_version(db).await?;
    create(db, register_ddl(HUB_COLUMNS)).await?;
    crate::store::ddl::rename_once(db, VERSIONED_BEFORE_V6, VERSIONED.0, "key").await?;
    create(db, VERSIONED.table()).await?;
    retire_versioned(db).await?;
    let d = dialect::of_db(db)?;
    add_register_specs(db, d).await?;
    let columns = |store| async move { existing_columns(db, d, Place::own(store)).await };
    let holds_states =
        |store| async move { Ok::<_, Error>(columns(store).await?.iter().any(|c| c == "vals")) };
    crate::store::ddl::rename_once(db, HUB_ROWS, HUB_ROWS_V1, "vals").await?;
    let mut stores = Vec::new();
    for store in [HUB_ROWS_V1, HUB_ROWS] {
        if holds_states(store).await? {
            upgrade_row_state_table(db, store).await?;
            stores.push(store);
        }
    }
    if !columns(HUB_ROWS_V1).await?.is_empty() && columns(HUB_ROWS).await?.is_empty() {
        // In the renamed table's place, one an earlier release cannot use.
        crate::store::ddl::placeholder(db, HUB_ROWS, "retired_by_hub_schema_version_3").await?;
    }
    for spec in placed {
        install(db, spec, &stores).await?;
    }
    // The version tables of tables this install does not name get their
    // positions too: pulls read every version table (and fail while a
    // row has none).
    for spec in versioned(db, placed).await? {
        if placed.iter().all(|p| p.name != spec.name) {
            add_positions(db, d, &hub_version_table(&spec.name)).await?;
            fill_positions(db, &spec).await?;
            // Where its users' table is there (pulls read it).
            if !existing_columns(db, d, Place::of(d, &spec))
                .await?
                .is_empty()
            {
                add_row_meta(db, d, &spec).await?;
            }
        }
    }
    super::batches::settle(db).await
}

/// Create the version table of `spec` (placed; its users' table made),
/// bring its format 1 states over from `stores`, and record it in
/// [`VERSIONED`].
async fn install(db: &DatabaseConnection, spec: &TableSpec, stores: &[&str]) -> Result<()> {
    let d = dialect::of_db(db)?;
    add_row_meta(db, d, spec).await?;
    record_specs(db, spec).await?;
    let key_types = column_types(db, d, Place::of(d, spec)).await?;
    let name = hub_version_table(&spec.name);
    create(
        db,
        version_rows_ddl(d, &name, spec, |c| version_key_type(d, c, &key_types), true),
    )
    .await?;
    add_positions(db, d, &name).await?;
    retype_keys(db, d, spec, &name, |c| {
        version_key_text(key_types.get(&c.name))
    })
    .await?;
    for store in stores {
        move_states(db, spec, store).await?;
    }
    fill_positions(db, spec).await?;
    // The key as first recorded, with kinds from the first install that
    // names them (a device of a release before kinds names none): a later
    // device does not change how every server reads the table's keys.
    let key = serde_json::to_string(&spec.pk)?;
    match VERSIONED.read(db, &spec.name).await? {
        None => VERSIONED.insert_if_missing(db, &spec.name, &key).await,
        Some(recorded) => {
            let had = recorded_key(&spec.name, &recorded)?;
            let adds =
                had.iter().any(|c| c.kind.is_none()) && spec.pk.iter().all(|c| c.kind.is_some());
            if adds {
                VERSIONED.upsert(db, &spec.name, &key).await
            } else {
                Ok(())
            }
        }
    }
}

/// Bring the format 1 states of `spec`'s table from `store` into its
/// version table, a page per transaction, merged into the version rows
/// already there (a server of an earlier release wrote them after the
/// first move; merging keeps the newer clock of each column). A state that
/// cannot be read is left in `store`, with a warning.
async fn move_states(db: &DatabaseConnection, spec: &TableSpec, store: &str) -> Result<()> {
    let d = dialect::of_db(db)?;
    let any = Query::select()
        .expr(Expr::val(1))
        .from(Alias::new(store))
        .and_where(Expr::col(Alias::new("tbl")).eq(spec.name.as_str()))
        .limit(1)
        .to_owned();
    if db.query_one(&any).await?.is_none() {
        return Ok(());
    }
    let mut after: Option<String> = None;
    loop {
        let tx = db.begin().await?;
        // Under the sequence lock, as a push: no push runs between the
        // read of these states and their removal.
        HUB_META.lock(&tx, "next_seq").await?;
        let mut q = Query::select();
        q.columns(STATE_COLUMNS.map(Alias::new))
            .from(Alias::new(store))
            .and_where(Expr::col(Alias::new("tbl")).eq(spec.name.as_str()))
            .order_by(Alias::new("pk"), Order::Asc)
            .limit(MOVE_PAGE);
        if let Some(a) = &after {
            q.and_where(Expr::col(Alias::new("pk")).gt(a.as_str()));
        }
        let rows = tx.query_all(&q).await?;
        let stored: Vec<Result<StoredState>> = rows.iter().map(StoredState::decode).collect();
        let seqs: Vec<u64> = stored
            .iter()
            .filter_map(|s| s.as_ref().ok().and_then(|s| s.reference))
            .collect();
        let mut entries = states::columns(&tx, &seqs).await?;
        let mut moved: Vec<(Vec<Value>, RowState)> = Vec::with_capacity(rows.len());
        let mut done: Vec<String> = Vec::with_capacity(rows.len());
        for (r, s) in rows.iter().zip(stored) {
            let pk: String = r.try_get("", "pk")?;
            let read = s.and_then(|s| {
                let text = key_text(r)?;
                let entry = s.reference.and_then(|seq| entries.remove(&seq));
                let (state, _) = s.fill(entry)?;
                let key = parse_pk_key(&text)?;
                if key.len() != spec.pk.len() {
                    return Err(Error::Corrupt(format!(
                        "the key {text} has {} values, the table {}",
                        key.len(),
                        spec.pk.len()
                    )));
                }
                Ok((key, state))
            });
            match read {
                Ok(m) => {
                    moved.push(m);
                    done.push(pk.clone());
                }
                Err(e) => tracing::warn!(
                    table = %spec.name,
                    key = %pk,
                    error = %e,
                    "a hub row state of format 1 cannot be read: left in {store}"
                ),
            }
            after = Some(pk);
        }
        let mut versions = Versions::open(&tx, HUB_VERSIONS, spec).await?;
        let sp = tx.begin().await?;
        if let Err(e) = merge_in(&sp, &mut versions, moved.clone()).await {
            // Two keys the database takes for one (a collation that ignores
            // case or trailing spaces; states an earlier release kept
            // apart), or a state already under such a key: one at a time,
            // each merged into what the database finds for its key.
            sp.rollback().await?;
            tracing::warn!(table = %spec.name, error = %e, "moving hub row states one at a time");
            for (key, state) in moved {
                merge_one(&tx, &mut versions, &spec.name, key, state).await?;
            }
        } else {
            sp.commit().await?;
        }
        if !done.is_empty() {
            let delete = Query::delete()
                .from_table(Alias::new(store))
                .and_where(Expr::col(Alias::new("tbl")).eq(spec.name.as_str()))
                .and_where(d.key_in(&done)?)
                .to_owned();
            tx.execute(&delete).await?;
        }
        tx.commit().await?;
        if (rows.len() as u64) < MOVE_PAGE {
            return Ok(());
        }
    }
}

/// Give the version table `name` the columns of positions and their index,
/// where a hub of schema version 3 made it without them (and a table just
/// made, without `sole`). `sole` comes last, after the index: a table
/// that has it has everything, and a stopped upgrade goes on at the next
/// install. Two installs at once may both add a column or the index: the
/// one that finds it made goes on.
async fn add_positions(db: &DatabaseConnection, d: &'static dyn Dialect, name: &str) -> Result<()> {
    let present = existing_columns(db, d, Place::own(name)).await?;
    if present.iter().any(|c| c == "sole") {
        return Ok(());
    }
    let add = |column: &'static str| async move {
        let alter = Table::alter()
            .table(Alias::new(name))
            .add_column(position_column(d, column))
            .to_owned();
        if let Err(e) = db.execute(&alter).await {
            let now = existing_columns(db, d, Place::own(name)).await?;
            if !now.iter().any(|c| c == column) {
                return Err(Error::from(e));
            }
        }
        Ok(())
    };
    for column in ["hub_seq", "owner"] {
        if !present.iter().any(|c| c == column) {
            add(column).await?;
        }
    }
    if let Err(e) = db.execute(&position_index(name)).await {
        // MySQL has no `IF NOT EXISTS` here: another install made it.
        let e = Error::from(e);
        if !matches!(crate::dialect::native_code(&e).as_deref(), Some("1061")) {
            return Err(e);
        }
    }
    add("sole").await
}

/// Give `spec`'s users' table the columns of its rows' metadata
/// ([`ROW_META`]) and their index, where it lacks them: nullable columns,
/// added without rewriting the table (PostgreSQL, MariaDB 10.3+).
/// `_tidesync_sole` comes last, after the index: a table that has it has
/// everything, and a stopped install goes on at the next. Two installs at
/// once may both add a column or the index: the one that finds it made
/// goes on.
async fn add_row_meta(
    db: &DatabaseConnection,
    d: &'static dyn Dialect,
    spec: &TableSpec,
) -> Result<()> {
    let place = Place::of(d, spec);
    let present = existing_columns(db, d, place).await?;
    if present.iter().any(|c| c == "_tidesync_sole") {
        return Ok(());
    }
    let add = |column: &'static str| async move {
        let alter = Table::alter()
            .table(place.table_ref())
            .add_column(row_meta_column(d, column))
            .to_owned();
        if let Err(e) = db.execute(&alter).await {
            let now = existing_columns(db, d, place).await?;
            if !now.iter().any(|c| c == column) {
                return Err(Error::from(e));
            }
        }
        Ok(())
    };
    for column in ROW_META {
        if column != "_tidesync_sole" && !present.iter().any(|c| c == column) {
            add(column).await?;
        }
    }
    if let Err(e) = db.execute(&row_meta_index(d, spec)).await {
        // MySQL has no `IF NOT EXISTS` here: another install made it.
        let e = Error::from(e);
        if !matches!(crate::dialect::native_code(&e).as_deref(), Some("1061")) {
            return Err(e);
        }
    }
    add("_tidesync_sole").await
}

/// Give the register its column of specs ([`VersionTables::specs`]),
/// where it lacks it (a hub made by an earlier release). Two installs at
/// once may both add it: the one that finds it made goes on.
async fn add_register_specs(db: &DatabaseConnection, d: &'static dyn Dialect) -> Result<()> {
    let present = existing_columns(db, d, Place::own(HUB_COLUMNS)).await?;
    if present.iter().any(|c| c == "spec") {
        return Ok(());
    }
    let alter = Table::alter()
        .table(Alias::new(HUB_COLUMNS))
        .add_column(
            sea_orm::sea_query::ColumnDef::new_with_type(Alias::new("spec"), d.long_text())
                .null()
                .to_owned(),
        )
        .to_owned();
    if let Err(e) = db.execute(&alter).await {
        let now = existing_columns(db, d, Place::own(HUB_COLUMNS)).await?;
        if !now.iter().any(|c| c == "spec") {
            return Err(Error::from(e));
        }
    }
    Ok(())
}

/// Record the spec of each of `spec`'s synced columns that the register
/// holds without one (registered by an earlier release, or by a device
/// whose entity lacked it): the first install that knows a column records
/// it, and none changes it after.
async fn record_specs(db: &DatabaseConnection, spec: &TableSpec) -> Result<()> {
    let q = Query::select()
        .column(Alias::new("col"))
        .from(Alias::new(HUB_COLUMNS))
        .and_where(Expr::col(Alias::new("tbl")).eq(spec.name.as_str()))
        .and_where(Expr::col(Alias::new("spec")).is_null())
        .to_owned();
    for r in db.query_all(&q).await? {
        let col: String = r.try_get("", "col")?;
        let Some(text) = column_spec_text(spec, &col)? else {
            continue;
        };
        let update = Query::update()
            .table(Alias::new(HUB_COLUMNS))
            .value(Alias::new("spec"), text)
            .and_where(Expr::col(Alias::new("tbl")).eq(spec.name.as_str()))
            .and_where(Expr::col(Alias::new("col")).eq(col.as_str()))
            .and_where(Expr::col(Alias::new("spec")).is_null())
            .to_owned();
        db.execute(&update).await?;
    }
    Ok(())
}

/// Log entries read per query when positions are filled.
const LOG_PAGE: u64 = 5000;

/// Give every version row of `spec`'s table without a position (a state
/// moved from format 1, a row a hub of schema version 3 wrote) the hub
/// sequence of its row's latest log entry, so that a replica whose cursor
/// is past that entry is not sent the row again and one before it is; a
/// row the log has no entry of takes the next hub sequence (every replica
/// is sent it once more, which merging makes harmless). A page per
/// transaction, under the sequence lock, as a push: a push gives each row
/// it changes a position, so the rows still without one are rows no push
/// of this release has changed, and their latest log entries are the ones
/// read before the lock.
async fn fill_positions(db: &DatabaseConnection, spec: &TableSpec) -> Result<()> {
    let name = hub_version_table(&spec.name);
    let any = Query::select()
        .expr(Expr::val(1))
        .from(Alias::new(&name))
        .and_where(Expr::col(Alias::new("hub_seq")).is_null())
        .limit(1)
        .to_owned();
    if db.query_one(&any).await?.is_none() {
        return Ok(());
    }
    let mut latest = latest_entries(db, &spec.name).await?;
    loop {
        let tx = db.begin().await?;
        HUB_META.lock(&tx, "next_seq").await?;
        let mut next_seq = read_next_seq(&tx).await?;
        let fresh_from = next_seq;
        let mut versions = Versions::open(&tx, HUB_VERSIONS, spec).await?;
        let keys = versions.unpositioned(&tx, MOVE_PAGE).await?;
        let states = match versions.load(&tx, &keys).await {
            Ok(states) => Some(states),
            // A state that cannot be read: each row is given its position
            // alone, without reading it.
            Err(Error::Corrupt(e)) => {
                tracing::warn!(table = %spec.name, error = %e, "a hub version row cannot be read");
                None
            }
            Err(e) => return Err(e),
        };
        let mut rows: Vec<(&[Value], &RowState, Position)> = Vec::with_capacity(keys.len());
        for key in &keys {
            let hub_seq = match latest.remove(&key_identity(key)?) {
                Some(seq) => seq,
                None => {
                    next_seq += 1;
                    next_seq - 1
                }
            };
            let text = pk_key(key)?;
            let state = states.as_ref().and_then(|s| s.get(&text));
            let owner = state.and_then(|s| owner::owner_of(spec, &named(spec, key), s));
            // No sole writer: the log does not say which origin set every
            // column (a device that took a new identity pushed clocks of
            // its old one). The row is sent to its writer once more.
            let p = Position {
                hub_seq,
                sole: None,
                owner,
            };
            match state {
                Some(s) => rows.push((key.as_slice(), s, p)),
                None => versions.set_position(&tx, key, &p).await?,
            }
        }
        let positioned: Vec<(&[Value], &RowState, &Position)> =
            rows.iter().map(|(k, s, p)| (*k, *s, p)).collect();
        for q in versions.positioned_statements(&positioned)? {
            tx.execute_raw(q).await?;
        }
        if next_seq != fresh_from {
            HUB_META
                .write(&tx, "next_seq", &next_seq.to_string())
                .await?;
        }
        tx.commit().await?;
        if (keys.len() as u64) < MOVE_PAGE {
            return Ok(());
        }
    }
}

/// The next hub sequence (the caller holds the sequence lock).
async fn read_next_seq<C: ConnectionTrait>(db: &C) -> Result<u64> {
    HUB_META
        .read(db, "next_seq")
        .await?
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Corrupt("hub next_seq".into()))
}

/// Give the rows of `keys` new positions, the next hub sequences (the
/// caller holds the sequence lock): states merged from elsewhere, which
/// every replica must be sent again. No sole writer, no owner recorded
/// (a user's pull reads it from the state).
async fn new_positions<C: ConnectionTrait>(
    db: &C,
    versions: &Versions<'_>,
    keys: &[Vec<Value>],
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut next = read_next_seq(db).await?;
    for key in keys {
        let p = Position {
            hub_seq: next,
            sole: None,
            owner: None,
        };
        versions.set_position(db, key, &p).await?;
        next += 1;
    }
    HUB_META.write(db, "next_seq", &next.to_string()).await
}

/// The key values of `spec`'s table with their column names.
fn named(spec: &TableSpec, key: &[Value]) -> Vec<(String, Value)> {
    spec.pk
        .iter()
        .map(|c| c.name.clone())
        .zip(key.iter().cloned())
        .collect()
}

/// The hub sequence of the latest log entry of each row of `table`, by
/// the key's identity; none at all when an entry's key cannot be read
/// (its row's latest entry is unknown: every row takes a new position).
async fn latest_entries<C: ConnectionTrait>(
    db: &C,
    table: &str,
) -> Result<std::collections::HashMap<String, u64>> {
    let mut latest = std::collections::HashMap::new();
    let mut after = 0;
    loop {
        let q = Query::select()
            .columns(["hub_seq", "pk"].map(Alias::new))
            .from(Alias::new(CHANGES.name))
            .and_where(Expr::col(Alias::new("tbl")).eq(table))
            .and_where(Expr::col(Alias::new("hub_seq")).gt(db_sequence(after)?))
            .order_by(Alias::new("hub_seq"), Order::Asc)
            .limit(LOG_PAGE)
            .to_owned();
        let rows = db.query_all(&q).await?;
        for r in &rows {
            let seq = sequence(r, "hub_seq")?;
            after = seq;
            let pk: String = r.try_get("", "pk")?;
            let identity = serde_json::from_str::<Vec<(String, Value)>>(&pk)
                .ok()
                .and_then(|pk| {
                    let values: Vec<Value> = pk.into_iter().map(|(_, v)| v).collect();
                    key_identity(&values).ok()
                });
            match identity {
                Some(identity) => {
                    latest.insert(identity, seq);
                }
                None => {
                    tracing::warn!(
                        table,
                        hub_seq = seq,
                        "a log entry's key cannot be read: the table's rows take new positions"
                    );
                    return Ok(std::collections::HashMap::new());
                }
            }
        }
        if (rows.len() as u64) < LOG_PAGE {
            return Ok(latest);
        }
    }
}

/// Save `moved` into the version rows, each merged into the state held
/// under its key (per column the later clock).
async fn merge_in<C: ConnectionTrait>(
    db: &C,
    versions: &mut Versions<'_>,
    mut moved: Vec<(Vec<Value>, RowState)>,
) -> Result<()> {
    let keys: Vec<Vec<Value>> = moved.iter().map(|(k, _)| k.clone()).collect();
    let mut held = versions.load(db, &keys).await?;
    // A row whose state the move changes takes a new position: replicas
    // past its old one have not seen the change.
    let mut changed = Vec::new();
    for (key, state) in &mut moved {
        if let Some(mut newer) = held.remove(&pk_key(key)?) {
            if newer.merge(state) {
                changed.push(key.clone());
            }
            *state = newer;
        }
    }
    let pairs: Vec<(&[Value], &RowState)> = moved.iter().map(|(k, s)| (k.as_slice(), s)).collect();
    versions.save(db, &pairs).await?;
    new_positions(db, versions, &changed).await
}

/// Save one moved state, merged into the state the database finds for its
/// key, under the key that state is held (the database takes the two keys
/// for one).
async fn merge_one<C: ConnectionTrait>(
    db: &C,
    versions: &mut Versions<'_>,
    table: &str,
    key: Vec<Value>,
    state: RowState,
) -> Result<()> {
    let (key, state) = match versions.load_equal(db, &key).await? {
        Some((held_key, mut held)) => {
            if pk_key(&held_key)? != pk_key(&key)? {
                tracing::warn!(
                    table,
                    key = %pk_key(&key)?,
                    into = %pk_key(&held_key)?,
                    "a hub row state of format 1 merged into the state of a key the database takes for its own"
                );
            }
            let changed = held.merge(&state);
            versions.save(db, &[(held_key.as_slice(), &held)]).await?;
            if changed {
                new_positions(db, versions, &[held_key]).await?;
            }
            return Ok(());
        }
        None => (key, state),
    };
    versions.save(db, &[(key.as_slice(), &state)]).await
}

/// The spec a version table is read with, for a table of which the hub
/// records only the key (`pk`): its key columns are all it needs.
fn keyed_spec(name: String, pk: Vec<ColumnSpec>) -> TableSpec {
    TableSpec {
        name,
        schema: None,
        columns: pk.clone(),
        pk,
        local_only: Vec::new(),
        policy: Default::default(),
        single_writer: false,
        ownership: Default::default(),
    }
}

/// The key [`VERSIONED`] records for `name`, as read.
fn recorded_key(name: &str, key: &str) -> Result<Vec<ColumnSpec>> {
    serde_json::from_str(key).map_err(|e| {
        Error::Corrupt(format!(
            "`{}` records `{key}` for table `{name}`: {e}",
            VERSIONED.0
        ))
    })
}

/// The states of `keys` (values and key text) of `table`, by key text,
/// wherever they are: in its users' rows and its version table if it has
/// one (a live row's state is in its users' row, see `users`), else in
/// `_tidesync_hub_rows` (a table no install of this release has seen).
pub(crate) async fn load_any<C: ConnectionTrait>(
    db: &C,
    table: &str,
    keys: &[(Vec<Value>, String)],
) -> Result<std::collections::HashMap<String, RowState>> {
    let Some(key) = VERSIONED.read(db, table).await? else {
        let texts: Vec<String> = keys.iter().map(|(_, k)| k.clone()).collect();
        return Ok(states::load_states(db, table, &texts)
            .await?
            .into_iter()
            .map(|(k, (s, _))| (k, s))
            .collect());
    };
    let d = dialect::of_db(db)?;
    let mut spec = keyed_spec(table.to_owned(), recorded_key(table, &key)?);
    if d.has_schemas() {
        spec.schema = super::tables::HUB_PLACES
            .read(db, table)
            .await?
            .filter(|s| !s.is_empty());
    }
    let mut versions = Versions::open(db, HUB_VERSIONS, &spec).await?;
    let values: Vec<&[Value]> = keys.iter().map(|(v, _)| v.as_slice()).collect();
    let texts: Vec<String> = keys.iter().map(|(_, k)| k.clone()).collect();
    let carried = existing_columns(db, d, Place::of(d, &spec))
        .await?
        .iter()
        .any(|c| c == ROW_META[3]);
    let (found, _) = super::users::UserRows::new(d, &spec)
        .load_anywhere(db, &mut versions, &values, &texts, carried)
        .await?;
    Ok(found.into_iter().map(|(k, (s, _))| (k, s)).collect())
}

/// The tables with a version table, in name order: those of `specs` as
/// they are, the others as [`VERSIONED`] records their key.
pub(crate) async fn versioned<C: ConnectionTrait>(
    db: &C,
    specs: &[TableSpec],
) -> Result<Vec<TableSpec>> {
    let mut out = Vec::new();
    let mut places = None;
    for (name, key) in VERSIONED.read_all(db).await? {
        if let Some(s) = specs.iter().find(|s| s.name == name) {
            out.push(s.clone());
            continue;
        }
        let pk = recorded_key(&name, &key)?;
        let mut spec = keyed_spec(name, pk);
        // In the schema the hub records for it, where it keeps tables in
        // schemas (its users' table is read too).
        if dialect::of_db(db)?.has_schemas() {
            if places.is_none() {
                places = Some(super::tables::HUB_PLACES.read_all(db).await?);
            }
            spec.schema = places
                .iter()
                .flatten()
                .find(|(t, _)| *t == spec.name)
                .map(|(_, s)| s.clone())
                .filter(|s| !s.is_empty());
        }
        out.push(spec);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
