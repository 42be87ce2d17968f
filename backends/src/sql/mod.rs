//! [`SqlBackend`]: a hub that is an ordinary PostgreSQL, MySQL/MariaDB or
//! SQLite database, reached directly through SeaORM.
//!
//! A push is one hub transaction: take the sequence lock, skip what this
//! origin already delivered, check each change against the hub's dialect,
//! merge the changes into the row states (per-column last-writer-wins), write
//! the resulting rows into the users' tables with multi-row statements
//! (parents first, deletes children first), append the changes to the log
//! with consecutive hub sequence numbers, record the origin's progress,
//! commit. Each statement is built while the database writes the one
//! before (the row states' upserts while the rows are written, the log's
//! inserts while the states are). Because the sequence is assigned and
//! committed under one lock, a puller reading `hub_seq > cursor` never
//! skips a change that commits late.
//!
//! A row state does not repeat the values of the log: it refers to one log
//! entry (the one that holds most of its current values: the insert, for a
//! row written once) and stores only the values that entry does not hold
//! ([`store::StoredState`]). Loading states, and the snapshot, read the
//! referred entries back. The log is therefore never pruned.
//!
//! When the hub refuses a change of a batch, the push rolls back and goes
//! again change by change, each in a savepoint, to halt or park exactly the
//! refused ones.

pub mod ddl;

use std::borrow::Cow;
use std::collections::HashMap;

use sea_orm::sea_query::{Alias, Expr, ExprTrait, InsertStatement, Order, Query, SimpleExpr};
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    TransactionTrait, Value,
};
use sync_core::apply;
use sync_core::backend::{
    Backend, Cursor, HubInfo, PullBatch, PushAck, RejectPolicy, Rejection, SnapshotPage,
    SnapshotRow, Unreadable,
};
use sync_core::conflict::{self, ColumnConflict};
use sync_core::schema::utf8mb4;
use sync_core::store;
use sync_core::value::{approx_size, check_value, parse_pk_key, pk_key, same_value};
use sync_core::{
    Change, ChangeId, ConflictPolicy, Error, Hlc, NodeId, Op, Result, RowState, TableSpec,
};
use tokio::sync::RwLock;

use ddl::{CHANGES, HUB_META, HUB_ROWS, PEERS, REJECTED};
use sync_core::change::STORED_COLUMNS;
use sync_core::schema::Meta;

/// The hub's metadata table.
const HUB: Meta = Meta(HUB_META);

/// Newest hub metadata schema this release reads and writes.
pub const HUB_SCHEMA_VERSION: i64 = 1;

/// A hub in a SQL database. See the [module docs](self).
pub struct SqlBackend {
    db: DatabaseConnection,
    policy: RejectPolicy,
    tables: RwLock<Vec<TableSpec>>,
}

impl std::fmt::Debug for SqlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlBackend")
            .field("backend", &self.db.get_database_backend())
            .field("policy", &self.policy)
            .finish()
    }
}

fn offline(e: sea_orm::DbErr) -> Error {
    Error::from(e).or_offline()
}

impl SqlBackend {
    /// A hub over an existing connection.
    pub fn new(db: DatabaseConnection) -> Self {
        SqlBackend {
            db,
            policy: RejectPolicy::Halt,
            tables: RwLock::new(Vec::new()),
        }
    }

    /// Connect to a hub by URL (`postgres://`, `mysql://`, `sqlite://`),
    /// giving up after 10 seconds.
    ///
    /// # Errors
    /// [`Error::Config`] for a URL no driver accepts; [`Error::Offline`]
    /// when the server cannot be reached (or refuses the login: the message
    /// says which).
    pub async fn connect(url: &str) -> Result<Self> {
        let timeout = std::time::Duration::from_secs(10);
        Self::connect_with(
            sea_orm::ConnectOptions::new(url)
                .connect_timeout(timeout)
                .acquire_timeout(timeout)
                .to_owned(),
        )
        .await
    }

    /// Connect with SeaORM's connection options (pool size, timeouts, ...).
    ///
    /// # Errors
    /// As [`SqlBackend::connect`].
    pub async fn connect_with(options: sea_orm::ConnectOptions) -> Result<Self> {
        let url = options.get_url().to_owned();
        let scheme_ok = [
            "postgres://",
            "postgresql://",
            "mysql://",
            "mariadb://",
            "sqlite:",
        ]
        .iter()
        .any(|p| url.starts_with(p));
        if !scheme_ok {
            return Err(Error::Config(format!(
                "`{url}` is not a hub URL: expected postgres://, mysql:// or sqlite:"
            )));
        }
        match Database::connect(options).await {
            Ok(db) => Ok(Self::new(db)),
            Err(e @ sea_orm::DbErr::Conn(_)) if e.to_string().contains("URL") => {
                Err(Error::Config(e.to_string()))
            }
            Err(e) => Err(Error::Offline(e.to_string())),
        }
    }

    /// Choose what happens to a change the hub cannot apply.
    pub fn with_policy(mut self, policy: RejectPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The hub's connection.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Changes parked by policy `Park`: (change id, table, reason).
    pub async fn rejected(&self) -> Result<Vec<Rejection>> {
        let q = Query::select()
            .columns(["origin", "origin_seq", "tbl", "reason"].map(Alias::new))
            .from(Alias::new(REJECTED))
            .order_by(Alias::new("origin"), Order::Asc)
            .order_by(Alias::new("origin_seq"), Order::Asc)
            .to_owned();
        let mut out = Vec::new();
        for r in self.db.query_all(&q).await? {
            let origin: String = r.try_get("", "origin")?;
            let seq: i64 = r.try_get("", "origin_seq")?;
            out.push(Rejection {
                id: ChangeId {
                    origin: origin.parse()?,
                    seq: seq as u64,
                },
                table: r.try_get("", "tbl")?,
                reason: r.try_get("", "reason")?,
            });
        }
        Ok(out)
    }
}

/// A change checked against the hub: why it cannot be applied, if so.
fn validate(
    change: &Change,
    spec: Option<&TableSpec>,
    backend: DbBackend,
) -> std::result::Result<(), String> {
    let Some(spec) = spec else {
        return Err(format!("table `{}` is not known to the hub", change.table));
    };
    let names: Vec<&str> = change.pk.iter().map(|(n, _)| n.as_str()).collect();
    let want: Vec<&str> = spec.pk.iter().map(|c| c.name.as_str()).collect();
    if names != want {
        return Err(format!(
            "{}: key columns {names:?} do not match the hub's {want:?}",
            spec.name
        ));
    }
    for (name, value) in change.pk.iter().chain(&change.columns) {
        let Some(col) = spec.column(name) else {
            return Err(format!(
                "{}.{name}: no such column on the hub (schema drift?)",
                spec.name
            ));
        };
        if let Value::String(None) | Value::Int(None) = value {
            // A NULL of any type: only a NOT NULL column refuses it.
        }
        check_value(&spec.name, name, Some(&col.ty), value, Some(backend))
            .map_err(|e| e.to_string())?;
    }
    if change.op == Op::Insert {
        for c in &spec.columns {
            if !c.nullable && !change.columns.iter().any(|(n, _)| *n == c.name) {
                return Err(format!(
                    "{}.{}: insert without a value for a NOT NULL column",
                    spec.name, c.name
                ));
            }
        }
    }
    Ok(())
}

/// The pieces of a push that the transaction works through.
struct Push<'a> {
    tx: &'a DatabaseTransaction,
    specs: &'a [TableSpec],
    next_seq: u64,
    states: HashMap<(String, String), RowState>,
    /// The log entry each state takes values from, and which (see
    /// [`store::StoredState`]).
    referred: HashMap<(String, String), store::Referred>,
    /// Concurrent edits held back (manual and custom policies).
    held: Vec<ColumnConflict>,
    /// Concurrent edits settled by the clock (merge policy).
    settled: Vec<ColumnConflict>,
}

impl<'a> Push<'a> {
    fn new(tx: &'a DatabaseTransaction, specs: &'a [TableSpec], next_seq: u64) -> Self {
        Push {
            tx,
            specs,
            next_seq,
            states: HashMap::new(),
            referred: HashMap::new(),
            held: Vec::new(),
            settled: Vec::new(),
        }
    }

    /// Take over what a committed savepoint did.
    fn absorb(&mut self, sub: Push<'_>) {
        self.next_seq = sub.next_seq;
        self.states = sub.states;
        self.referred = sub.referred;
        self.held.extend(sub.held);
        self.settled.extend(sub.settled);
    }

    /// Merge `changes` (already validated) and write their rows, log and
    /// states. On error the caller rolls back.
    async fn apply(&mut self, changes: &[&Change]) -> Result<()> {
        // Load the states not loaded yet, one query per table.
        let mut missing: HashMap<&str, Vec<String>> = HashMap::new();
        let mut keyed: Vec<(&Change, String)> = Vec::with_capacity(changes.len());
        for c in changes {
            let key = pk_key(&c.pk.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>())?;
            if !self.states.contains_key(&(c.table.clone(), key.clone())) {
                missing
                    .entry(c.table.as_str())
                    .or_default()
                    .push(key.clone());
            }
            keyed.push((c, key));
        }
        for (table, keys) in missing {
            let mut loaded = load_hub_states(self.tx, table, &keys).await?;
            for k in keys {
                let (s, referred) = loaded.remove(&k).unwrap_or_default();
                let id = (table.to_owned(), k);
                if let Some(r) = referred {
                    self.referred.insert(id.clone(), r);
                }
                self.states.entry(id).or_insert(s);
            }
        }
        // Merge in order; remember each touched row's state before.
        let mut before: HashMap<(String, String), RowState> = HashMap::new();
        let mut logged: Vec<Cow<'_, Change>> = Vec::with_capacity(changes.len());
        for (c, key) in &keyed {
            let id = (c.table.clone(), key.clone());
            let s = self
                .states
                .get_mut(&id)
                .ok_or_else(|| Error::Corrupt("state not loaded".into()))?;
            before.entry(id).or_insert_with(|| s.clone());
            let policy = self
                .specs
                .iter()
                .find(|t| t.name == c.table)
                .map_or(ConflictPolicy::Lww, |t| t.policy);
            let applied = conflict::apply(s, c, policy);
            if applied.conflicts.is_empty() {
                logged.push(Cow::Borrowed(*c));
            } else {
                // Pass on only what was applied; report the conflicts.
                let mut passed = (*c).clone();
                passed.base.retain(|b| !applied.held.contains(&b.column));
                passed.columns.retain(|(n, _)| !applied.held.contains(n));
                logged.push(Cow::Owned(passed));
                if policy.holds_conflicts() {
                    self.held.extend(applied.conflicts);
                } else {
                    self.settled.extend(applied.conflicts);
                }
            }
        }
        // Rows to write: upserts in table order, then deletes in reverse.
        // The states stay in `self.states` (not copied).
        let backend = self.tx.get_database_backend();
        let tx = self.tx;
        let mut upserts: Vec<sea_orm::Statement> = Vec::new();
        let mut deletes: Vec<(&TableSpec, Vec<Vec<Value>>)> = Vec::new();
        let mut saved: Vec<(&str, Vec<String>)> = Vec::new();
        for spec in self.specs {
            let mut live = Vec::new();
            let mut dead = Vec::new();
            let mut keys = Vec::new();
            for ((table, key), old) in &before {
                if *table != spec.name {
                    continue;
                }
                let new = &self.states[&(table.clone(), key.clone())];
                if old.same(new) {
                    continue;
                }
                if new.is_live() {
                    live.push(new);
                } else if old.is_live() {
                    dead.push(parse_pk_key(key)?);
                }
                keys.push(key.clone());
            }
            for q in apply::upsert_statements(spec, &live, backend)? {
                upserts.push(backend.build(&q));
            }
            deletes.push((spec, dead));
            saved.push((&spec.name, keys));
        }
        // The database writes the rows while the state statements are
        // built, then the states while the log statements are built.
        let first_seq = self.next_seq;
        let (states, referred) = (&self.states, &mut self.referred);
        let state_stmts = apply::execute_while(tx, upserts, || {
            state_statements(
                states, referred, &saved, &keyed, &logged, first_seq, backend,
            )
        })
        .await?;
        for (spec, dead) in deletes.iter().rev() {
            apply::delete_rows(tx, spec, dead).await?;
        }
        let log_stmts = apply::execute_while(tx, state_stmts, || {
            log_statements(&logged, first_seq, backend)
        })
        .await?;
        apply::execute_all(tx, log_stmts).await?;
        self.next_seq = first_seq + logged.len() as u64;
        Ok(())
    }
}

/// Decide which log entry each saved state refers to (the one that holds
/// most of its values: the one it referred to, or the last one logged in
/// this push for the row), and build the statements that save the states.
fn state_statements(
    states: &HashMap<(String, String), RowState>,
    referred: &mut HashMap<(String, String), store::Referred>,
    saved: &[(&str, Vec<String>)],
    keyed: &[(&Change, String)],
    logged: &[Cow<'_, Change>],
    first_seq: u64,
    backend: DbBackend,
) -> Result<Vec<sea_orm::Statement>> {
    let mut last_entry: HashMap<(&str, &str), (u64, &Change)> = HashMap::new();
    for (i, ((_, key), logged)) in keyed.iter().zip(logged).enumerate() {
        let seq = first_seq + i as u64;
        last_entry.insert(
            (logged.table.as_str(), key.as_str()),
            (seq, logged.as_ref()),
        );
    }
    let mut out = Vec::new();
    for (table, keys) in saved {
        let table: &str = table;
        // Each saved state with the entry it refers to and that entry's
        // columns it takes.
        let mut rows_of = Vec::with_capacity(keys.len());
        for key in keys {
            let id = (table.to_owned(), key.clone());
            let state = states
                .get(&id)
                .ok_or_else(|| Error::Corrupt("state not loaded".into()))?;
            let kept = referred.get(&id).map(|(seq, cols)| {
                let cols: Vec<(String, Hlc)> = cols
                    .iter()
                    .filter(|(c, h)| state.clocks.get(c) == Some(h))
                    .cloned()
                    .collect();
                (*seq, cols)
            });
            let fresh = last_entry
                .get(&(table, key.as_str()))
                .map(|(seq, c)| (*seq, held_values(state, c)));
            let best = [kept, fresh]
                .into_iter()
                .flatten()
                .filter(|(_, cols)| !cols.is_empty())
                .max_by_key(|(seq, cols)| (cols.len(), *seq));
            let names: Option<(u64, Vec<String>)> = best
                .as_ref()
                .map(|(seq, cols)| (*seq, cols.iter().map(|(c, _)| c.clone()).collect()));
            match best {
                Some(r) => referred.insert(id, r),
                None => referred.remove(&id),
            };
            rows_of.push((key, state, names));
        }
        let rows: Vec<_> = rows_of
            .iter()
            .map(|(key, state, names)| {
                let referral = names
                    .as_ref()
                    .map(|(seq, columns)| store::Referral { seq: *seq, columns });
                (key.as_str(), *state, referral)
            })
            .collect();
        for q in store::state_statements(HUB_ROWS, table, &rows)? {
            out.push(backend.build(&q));
        }
    }
    Ok(out)
}

/// The inserts that append `logged` to the log, from hub sequence
/// `first_seq` on.
fn log_statements(
    logged: &[Cow<'_, Change>],
    first_seq: u64,
    backend: DbBackend,
) -> Result<Vec<sea_orm::Statement>> {
    let mut rows = Vec::with_capacity(logged.len());
    for (seq, c) in (first_seq..).zip(logged) {
        let size = c.columns.iter().map(|(_, v)| approx_size(v)).sum::<usize>() + 200;
        rows.push((log_row(seq, c)?, size));
    }
    Ok(apply::batched(&log_insert(CHANGES), rows)
        .iter()
        .map(|q| backend.build(q))
        .collect())
}

/// The columns of a log entry: its hub sequence and origin, then the change
/// as stored ([`STORED_COLUMNS`]).
fn entry_columns() -> impl Iterator<Item = Alias> {
    ["hub_seq", "origin", "origin_seq"]
        .into_iter()
        .chain(STORED_COLUMNS)
        .map(Alias::new)
}

/// An insert into the log table `table` (the hub's is [`CHANGES`]) in the
/// columns of [`log_row`], without rows.
pub fn log_insert(table: &str) -> InsertStatement {
    Query::insert()
        .into_table(Alias::new(table))
        .columns(entry_columns())
        .to_owned()
}

/// The log entry of `change` at hub sequence `seq`: the values of a row of
/// [`log_insert`].
///
/// # Errors
/// [`Error::Payload`] if a value cannot be serialised.
pub fn log_row(seq: u64, change: &Change) -> Result<Vec<SimpleExpr>> {
    let mut row: Vec<SimpleExpr> = vec![
        (seq as i64).into(),
        change.id.origin.to_string().into(),
        (change.id.seq as i64).into(),
    ];
    row.extend(change.stored_values()?);
    Ok(row)
}

/// The columns of `change` whose value and clock `state` holds: what a
/// state referring to the change's log entry can leave out.
fn held_values(state: &RowState, change: &Change) -> Vec<(String, Hlc)> {
    let mut out: Vec<(String, Hlc)> = Vec::new();
    for (c, v) in &change.columns {
        if out.iter().any(|(n, _)| n == c) {
            continue; // a column listed twice: the first value counts
        }
        let held = state.clocks.get(c) == Some(&change.hlc)
            && state.vals.get(c).is_some_and(|s| same_value(s, v));
        if held {
            out.push((c.clone(), change.hlc));
        }
    }
    out
}

/// The hub's states of `keys` of `table`, with the values they take from
/// log entries filled in.
async fn load_hub_states<C: ConnectionTrait>(
    db: &C,
    table: &str,
    keys: &[String],
) -> Result<HashMap<String, (RowState, Option<store::Referred>)>> {
    let stored = store::load_stored(db, HUB_ROWS, table, keys).await?;
    let seqs: Vec<u64> = stored.values().filter_map(|s| s.reference).collect();
    // Each entry is of one row, so one state at most refers to it.
    let mut entries = log_columns(db, &seqs).await?;
    stored
        .into_iter()
        .map(|(k, s)| {
            let entry = s.reference.and_then(|seq| entries.remove(&seq));
            Ok((k, s.resolve(entry)?))
        })
        .collect()
}

/// The columns (names and values) of the log entries `seqs`.
async fn log_columns<C: ConnectionTrait>(
    db: &C,
    seqs: &[u64],
) -> Result<HashMap<u64, Vec<(String, Value)>>> {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = HashMap::with_capacity(sorted.len());
    for chunk in sorted.chunks(500) {
        let q = Query::select()
            .columns(["hub_seq", "payload"].map(Alias::new))
            .from(Alias::new(CHANGES))
            .and_where(Expr::col(Alias::new("hub_seq")).is_in(chunk.iter().map(|s| *s as i64)))
            .to_owned();
        for r in db.query_all(&q).await? {
            let seq: i64 = r.try_get("", "hub_seq")?;
            let payload: String = r.try_get("", "payload")?;
            out.insert(seq as u64, serde_json::from_str(&payload)?);
        }
    }
    Ok(out)
}

async fn set_applied<C: ConnectionTrait>(
    db: &C,
    origin: NodeId,
    seq: u64,
    existed: bool,
) -> Result<()> {
    if existed {
        let q = Query::update()
            .table(Alias::new(PEERS))
            .value(Alias::new("applied_seq"), seq as i64)
            .and_where(Expr::col(Alias::new("origin")).eq(origin.to_string()))
            .to_owned();
        db.execute(&q).await?;
    } else {
        let q = Query::insert()
            .into_table(Alias::new(PEERS))
            .columns([Alias::new("origin"), Alias::new("applied_seq")])
            .values_panic([origin.to_string().into(), (seq as i64).into()])
            .to_owned();
        db.execute(&q).await?;
    }
    Ok(())
}

async fn park<C: ConnectionTrait>(db: &C, change: &Change, reason: &str) -> Result<()> {
    let q = Query::insert()
        .into_table(Alias::new(REJECTED))
        .columns(["origin", "origin_seq", "tbl", "change", "reason"].map(Alias::new))
        .values_panic([
            change.id.origin.to_string().into(),
            (change.id.seq as i64).into(),
            change.table.clone().into(),
            serde_json::to_string(change)?.into(),
            reason.into(),
        ])
        .to_owned();
    db.execute(&q).await?;
    Ok(())
}

#[async_trait::async_trait]
impl Backend for SqlBackend {
    async fn install(&self, tables: &[TableSpec]) -> Result<HubInfo> {
        let backend = self.db.get_database_backend();
        for mut t in ddl::hub_tables(backend) {
            self.db
                .execute(utf8mb4(backend, &mut t))
                .await
                .map_err(offline)?;
        }
        let version = HUB.read(&self.db, "schema_version").await?;
        if let Some(v) = version {
            let found: i64 = v
                .parse()
                .map_err(|_| Error::Corrupt(format!("hub schema_version `{v}`")))?;
            if found > HUB_SCHEMA_VERSION {
                return Err(Error::SchemaVersion {
                    found,
                    supported: HUB_SCHEMA_VERSION,
                });
            }
        }
        for (k, v) in [
            ("schema_version", HUB_SCHEMA_VERSION.to_string()),
            ("next_seq", "1".to_owned()),
            ("hub_id", NodeId::random().to_string()),
        ] {
            HUB.insert_if_missing(&self.db, k, &v).await?;
        }
        for spec in tables {
            ddl::ensure_table(&self.db, spec).await?;
        }
        *self.tables.write().await = tables.to_vec();
        let hub_id = HUB
            .read(&self.db, "hub_id")
            .await?
            .ok_or_else(|| Error::Corrupt("hub_id missing".into()))?;
        Ok(HubInfo { hub_id })
    }

    async fn push(&self, batch: &[Change]) -> Result<PushAck> {
        let Some(first) = batch.first() else {
            return Ok(PushAck::default());
        };
        let origin = first.id.origin;
        if batch.iter().any(|c| c.id.origin != origin) {
            return Err(Error::Config(
                "a push batch must come from one origin".into(),
            ));
        }
        if batch.windows(2).any(|w| w[1].id.seq <= w[0].id.seq) {
            return Err(Error::Config(
                "a push batch must be in increasing sequence order".into(),
            ));
        }
        // Fast path: every change valid, the whole batch at once. If the hub
        // refuses it, roll back and go through it change by change.
        match self.push_once(batch, origin, false).await? {
            Some(ack) => Ok(ack),
            None => match self.push_once(batch, origin, true).await? {
                Some(ack) => Ok(ack),
                None => Err(Error::Corrupt("the careful push fell back".into())),
            },
        }
    }

    async fn pull(&self, cursor: Cursor, limit: u64) -> Result<PullBatch> {
        self.read_log(cursor, limit, None).await
    }

    async fn pull_excluding(
        &self,
        cursor: Cursor,
        limit: u64,
        origin: NodeId,
    ) -> Result<PullBatch> {
        self.read_log(cursor, limit, Some(origin)).await
    }

    async fn snapshot(&self, after: Option<String>, limit: u64) -> Result<(Cursor, SnapshotPage)> {
        let cursor = Cursor(self.tip().await?);
        let mut q = Query::select();
        q.columns(["tbl", "pk", "vals", "clocks", "deleted_at"].map(Alias::new))
            .from(Alias::new(HUB_ROWS))
            .order_by(Alias::new("tbl"), Order::Asc)
            .order_by(Alias::new("pk"), Order::Asc)
            .limit(Ord::min(limit, i64::MAX as u64));
        if let Some(after) = &after {
            let (tbl, pk): (String, String) = serde_json::from_str(after)?;
            // PostgreSQL and SQLite serve a row-value comparison from the
            // primary-key index as a range; MariaDB does not, but does the
            // equivalent OR form.
            let tbl_col = || Expr::col(Alias::new("tbl"));
            let pk_col = || Expr::col(Alias::new("pk"));
            if self.db.get_database_backend() == DbBackend::MySql {
                q.and_where(
                    tbl_col()
                        .gt(tbl.clone())
                        .or(tbl_col().eq(tbl).and(pk_col().gt(pk))),
                );
            } else {
                q.and_where(
                    Expr::tuple([tbl_col(), pk_col()])
                        .gt(Expr::tuple([Expr::val(tbl), Expr::val(pk)])),
                );
            }
        }
        let rows = self.db.query_all(&q).await.map_err(offline)?;
        let stored = rows
            .iter()
            .map(store::StoredState::decode)
            .collect::<Result<Vec<_>>>()?;
        let seqs: Vec<u64> = stored.iter().filter_map(|s| s.reference).collect();
        // Each entry is of one row, so one state at most refers to it.
        let mut entries = log_columns(&self.db, &seqs)
            .await
            .map_err(Error::or_offline)?;
        let specs = self.tables.read().await;
        let mut page = SnapshotPage::default();
        let mut last = None;
        for (r, stored) in rows.iter().zip(stored) {
            let tbl: String = r.try_get("", "tbl")?;
            let key: String = r.try_get("", "pk")?;
            let entry = stored.reference.and_then(|seq| entries.remove(&seq));
            let (state, _) = stored.resolve(entry)?;
            let values = parse_pk_key(&key)?;
            let names: Vec<String> = match specs.iter().find(|s| s.name == tbl) {
                Some(s) => s.pk_names(),
                None => (0..values.len()).map(|i| format!("key{i}")).collect(),
            };
            page.rows.push(SnapshotRow {
                table: tbl.clone(),
                pk: names.into_iter().zip(values).collect(),
                state,
            });
            last = Some((tbl, key));
        }
        if rows.len() as u64 == limit {
            page.next = last.map(|l| serde_json::to_string(&l)).transpose()?;
        }
        Ok((cursor, page))
    }
}

impl SqlBackend {
    /// One push transaction. The fast path (`careful` false) applies the
    /// whole batch with multi-row statements and gives up (rolls back,
    /// `None`) at the first change the hub refuses; the careful path applies
    /// one change at a time, each in a savepoint, to find the ones that
    /// cannot be applied and halt or park them.
    async fn push_once(
        &self,
        batch: &[Change],
        origin: NodeId,
        careful: bool,
    ) -> Result<Option<PushAck>> {
        let specs = self.tables.read().await.clone();
        let backend = self.db.get_database_backend();
        let tx = self.db.begin().await.map_err(offline)?;
        // The sequence lock: held until commit, so hub sequences commit in order.
        HUB.lock(&tx, "next_seq").await.map_err(Error::or_offline)?;
        store::custom_plans(&tx).await?;
        let next_seq: u64 = HUB
            .read(&tx, "next_seq")
            .await?
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Corrupt("hub next_seq".into()))?;
        let applied_row = tx
            .query_one(
                &Query::select()
                    .column(Alias::new("applied_seq"))
                    .from(Alias::new(PEERS))
                    .and_where(Expr::col(Alias::new("origin")).eq(origin.to_string()))
                    .to_owned(),
            )
            .await?;
        let existed = applied_row.is_some();
        let mut applied: u64 = match applied_row {
            Some(r) => r.try_get::<i64>("", "applied_seq")? as u64,
            None => 0,
        };

        let mut ack = PushAck::default();
        // Delivered before (a re-sent batch): acknowledged, never re-applied.
        let todo: Vec<&Change> = batch
            .iter()
            .filter(|c| {
                let done = c.id.seq <= applied;
                if done {
                    ack.acknowledged.push(c.id);
                }
                !done
            })
            .collect();
        let verdicts: Vec<Option<String>> = todo
            .iter()
            .map(|c| validate(c, specs.iter().find(|s| s.name == c.table), backend).err())
            .collect();

        let start_seq = next_seq;
        let mut push = Push::new(&tx, &specs, next_seq);
        if !careful && verdicts.iter().all(Option::is_none) {
            // No savepoint: a failure rolls back the transaction and the
            // caller goes again, carefully.
            match push.apply(&todo).await {
                Ok(()) => {}
                Err(e) if e.is_retryable() => return Err(e.or_offline()),
                Err(_) => {
                    drop(push);
                    tx.rollback().await.map_err(offline)?;
                    return Ok(None);
                }
            }
            ack.acknowledged.extend(todo.iter().map(|c| c.id));
            applied = todo.last().map_or(applied, |c| c.id.seq);
        } else {
            // Careful path: one change at a time, each in a savepoint, to
            // find the ones that cannot be applied.
            for (c, verdict) in todo.iter().zip(verdicts) {
                let reason = match verdict {
                    Some(r) => Some(r),
                    None => {
                        let sp = tx.begin().await?;
                        let mut sub = Push::new(&sp, &specs, push.next_seq);
                        sub.states = push.states.clone();
                        sub.referred = push.referred.clone();
                        match sub.apply(&[*c]).await {
                            Ok(()) => {
                                push.absorb(sub);
                                sp.commit().await?;
                                None
                            }
                            Err(e) if e.is_retryable() => return Err(e.or_offline()),
                            Err(e) => {
                                sp.rollback().await?;
                                Some(format!("{}: {e}", c.table))
                            }
                        }
                    }
                };
                if let Some(reason) = reason {
                    let rejection = Rejection {
                        id: c.id,
                        table: c.table.clone(),
                        reason,
                    };
                    if self.policy == RejectPolicy::Park {
                        park(&tx, c, &rejection.reason).await?;
                        ack.parked.push(rejection);
                    } else {
                        ack.halted = Some(rejection);
                        break;
                    }
                }
                ack.acknowledged.push(c.id);
                applied = c.id.seq;
            }
        }
        if applied > 0 {
            set_applied(&tx, origin, applied, existed).await?;
        }
        let Push {
            next_seq,
            held,
            settled,
            ..
        } = push;
        HUB.write(&tx, "next_seq", &next_seq.to_string()).await?;
        tx.commit().await.map_err(offline)?;
        if store::crossed_doubling(start_seq, next_seq) {
            // The row states are looked up by key, and the log is read by
            // a range of its key that the planner must know the size of:
            // without statistics it guesses a few hundred rows and reads
            // the whole range from the cursor to the tip, then sorts it,
            // for each page of a pull (19 ms instead of 0.2 ms a page at
            // 50k entries). The users' tables are only written by key.
            store::analyze(
                &self.db,
                &[(HUB_ROWS, store::STATE_KEYS), (CHANGES, &["hub_seq"])],
            )
            .await;
        }
        ack.conflicts = held;
        ack.settled = settled;
        Ok(Some(ack))
    }
}

impl SqlBackend {
    /// Up to `limit` log entries after `cursor`, leaving out `skip`'s.
    ///
    /// Leaving entries out must not leave a gap: the tip is read first, and
    /// because sequences are assigned and committed under the sequence lock,
    /// every entry up to it is visible to the query that follows. When fewer
    /// than `limit` entries up to the tip are left, the cursor moves to the
    /// tip, past the ones left out.
    async fn read_log(
        &self,
        cursor: Cursor,
        limit: u64,
        skip: Option<NodeId>,
    ) -> Result<PullBatch> {
        let limit = Ord::min(Ord::max(limit, 1), i64::MAX as u64);
        let mut q = Query::select();
        q.columns(entry_columns())
            .from(Alias::new(CHANGES))
            .and_where(Expr::col(Alias::new("hub_seq")).gt(cursor.0 as i64))
            .order_by(Alias::new("hub_seq"), Order::Asc)
            .limit(limit);
        let mut tip = None;
        if let Some(me) = skip {
            let t = self.tip().await?;
            if t <= cursor.0 {
                return Ok(PullBatch {
                    next: cursor,
                    ..PullBatch::default()
                });
            }
            q.and_where(Expr::col(Alias::new("hub_seq")).lte(t as i64))
                .and_where(Expr::col(Alias::new("origin")).ne(me.to_string()));
            tip = Some(t);
        }
        let rows = self.db.query_all(&q).await.map_err(offline)?;
        let mut batch = PullBatch {
            next: cursor,
            ..PullBatch::default()
        };
        let full = rows.len() as u64 >= limit;
        for r in rows {
            let hub_seq: i64 = r.try_get("", "hub_seq")?;
            match change_of_row(&r) {
                Ok(c) => {
                    batch.changes.push(c);
                    batch.next = Cursor(hub_seq as u64);
                }
                Err(e) => {
                    // Stop at it: the replica decides to halt or to park it.
                    let raw: Option<String> = r.try_get("", "payload").ok();
                    let table: Option<String> = r.try_get("", "tbl").ok();
                    batch.unreadable = Some(Unreadable {
                        position: Cursor(hub_seq as u64),
                        table: table.unwrap_or_default(),
                        raw: raw.unwrap_or_default(),
                        reason: format!("change {hub_seq} of the hub log is malformed: {e}"),
                    });
                    return Ok(batch);
                }
            }
        }
        if let (Some(tip), false) = (tip, full) {
            batch.next = Cursor(tip);
        }
        Ok(batch)
    }

    /// The last hub sequence committed.
    async fn tip(&self) -> Result<u64> {
        let next_seq: u64 = HUB
            .read(&self.db, "next_seq")
            .await
            .map_err(|e| match e {
                Error::Database(d) => offline(d),
                e => e,
            })?
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        Ok(next_seq.saturating_sub(1))
    }
}

fn change_of_row(r: &sea_orm::QueryResult) -> Result<Change> {
    let origin: String = r.try_get("", "origin")?;
    let seq: i64 = r.try_get("", "origin_seq")?;
    let id = ChangeId {
        origin: origin.parse()?,
        seq: u64::try_from(seq).map_err(|_| Error::Corrupt(format!("negative sequence {seq}")))?,
    };
    Change::from_stored(id, r)
}
