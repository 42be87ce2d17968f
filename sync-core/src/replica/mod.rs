//! Layer 4, the replica: the local database of one device, with its synced
//! tables registered, capture installed, and the outbox of captured
//! changes.
//!
//! - [`tables`]: the replica's own tables, named and created;
//! - [`applying`]: the session that writes pulled changes, uncaptured;
//! - [`entity`]: reading a `Syncable` entity's markers and rows;
//! - [`capture`]: markers into changes in the outbox;
//! - [`seal_state`]: the node's sequence and clock in a writing transaction;
//! - [`outbox`]: reading, acknowledging and parking outbox changes;
//! - [`incoming`]: applying pulled changes and snapshot rows;
//! - [`conflicts`]: conflicts held for a decision, and their resolution;
//! - [`reconcile`]: finding writes made behind tidesync's back;
//! - [`resend`]: every row state again, for a hub that lost changes;
//! - [`restamp`]: changes a wrong clock stamped in the future, stamped again;
//! - [`parked`]: what could not be applied or read, kept with the reason;
//! - [`versions`]: the row states, one version table per synced table.

pub(crate) mod applying;
pub(crate) mod capture;
pub(crate) mod conflicts;
pub(crate) mod entity;
pub(crate) mod incoming;
pub(crate) mod outbox;
pub(crate) mod parked;
pub(crate) mod reconcile;
pub(crate) mod resend;
pub(crate) mod restamp;
pub(crate) mod seal_state;
pub(crate) mod tables;
pub(crate) mod upgrade;
pub(crate) mod versions;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use sea_orm::{DatabaseConnection, TransactionTrait};

use crate::dialect::{self, Place};
use crate::model::change::{Change, TableSpec};
use crate::model::clock::NodeId;
use crate::model::conflict::Resolver;
use crate::model::error::{Error, Result};
use crate::model::syncable::{ConflictPolicy, Syncable};
use crate::store::stats::{analyze, crossed_doubling};
use crate::store::user_tables::ensure_table;
use capture::{CaptureReport, Pass};
use entity::{EntityTable, TableHandle};
use incoming::{ApplyReport, Delta, PageMeta};
use seal_state::SealState;
use tables::{LOCAL_META, OUTBOX};

pub use entity::{create_table, table_spec};

/// Builds a [`Replica`]: register the synced entities, then
/// [`open`](ReplicaBuilder::open).
///
/// Register parent tables before the tables that reference them: that order
/// is the order in which changes are applied elsewhere.
pub struct ReplicaBuilder {
    db: DatabaseConnection,
    tables: Vec<Arc<dyn TableHandle>>,
    resolvers: HashMap<String, Arc<dyn Resolver>>,
    create_tables: bool,
    errors: Vec<String>,
}

impl ReplicaBuilder {
    /// Create the registered tables when they are missing (and add nullable
    /// columns a newer entity has), with [`create_table`](entity::create_table)'s column
    /// types. Off by default: most applications create their tables with
    /// their own migrations.
    pub fn create_tables(mut self) -> Self {
        self.create_tables = true;
        self
    }

    /// Register a `Syncable` entity.
    pub fn register<E>(mut self) -> Self
    where
        E: Syncable,
        E::Model: Sync,
    {
        let table = EntityTable::<E>::new();
        let spec = table.spec();
        if spec.pk.is_empty() {
            self.errors
                .push(format!("table `{}` has no primary key", spec.name));
        }
        // Sealing reads its own columns beside the row's under names of
        // this prefix (see `TableHandle::marked`).
        if let Some(c) = spec
            .columns
            .iter()
            .chain(&spec.local_only)
            .find(|c| c.name.to_ascii_lowercase().starts_with("_tidesync"))
        {
            self.errors.push(format!(
                "table `{}`: column `{}`: names starting with `_tidesync` are tidesync's own",
                spec.name, c.name
            ));
        }
        if let Ok(d) = crate::dialect::of_db(&self.db)
            && let Some(why) = crate::store::version_table::reserved_key(
                spec,
                &crate::store::version_table::REPLICA_BESIDE_KEYS,
                d,
            )
        {
            self.errors.push(why);
        }
        if let Some(twin) = self.tables.iter().find(|t| t.spec().name == spec.name) {
            self.errors.push(match (&twin.spec().schema, &spec.schema) {
                (a, b) if a != b => format!(
                    "tables `{}` in schemas {} and {} are both registered: a table syncs by \
                     its name alone, which must be unique",
                    spec.name,
                    schema_text(a.as_deref()),
                    schema_text(b.as_deref()),
                ),
                _ => format!("table `{}` is registered twice", spec.name),
            });
        }
        self.tables.push(Arc::new(table));
        self
    }

    /// Settle the conflicts of an entity registered before with `resolver`
    /// (its policy becomes [`ConflictPolicy::Custom`]): a concurrent edit of
    /// the same column is held back like under `manual`, then settled on
    /// this replica by the resolver; a `None` answer leaves it for the user.
    pub fn resolver<E>(mut self, resolver: impl Resolver + 'static) -> Self
    where
        E: Syncable,
        E::Model: Sync,
    {
        let table = EntityTable::<E>::new().with_policy(ConflictPolicy::Custom);
        let name = table.spec().name.clone();
        match self.tables.iter_mut().find(|t| t.spec().name == name) {
            Some(slot) => {
                *slot = Arc::new(table);
                self.resolvers.insert(name, Arc::new(resolver));
            }
            None => self
                .errors
                .push(format!("resolver for `{name}`, which is not registered")),
        }
        self
    }

    /// Create the sync metadata and capture triggers (idempotent: opening
    /// the same database again changes nothing), then return the replica.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad registration, [`Error::SchemaVersion`]
    /// when the metadata was written by a newer release, or the database's
    /// error.
    pub async fn open(self) -> Result<Replica> {
        if !self.errors.is_empty() {
            return Err(Error::Config(self.errors.join("; ")));
        }
        let db = self.db;
        let d = dialect::of_db(&db)?;
        if !d.has_schemas()
            && let Some((t, schema)) = self
                .tables
                .iter()
                .find_map(|t| Some((t, t.spec().schema.as_deref()?)))
        {
            // SeaORM names the table `schema`.`table` there: on MySQL
            // another database, on SQLite an attached one. tidesync's
            // markers and triggers would be on another table, or none.
            return Err(Error::Config(format!(
                "table `{}` is in schema `{schema}`: entities with `schema_name` are \
                     supported on PostgreSQL replicas only",
                t.spec().name
            )));
        }
        tables::install_metadata(&db).await?;
        let node_id = NodeId::random().to_string();
        for (key, value) in [
            ("node_id", node_id.as_str()),
            ("next_seq", "1"),
            ("hlc", ""),
        ] {
            LOCAL_META.insert_if_missing(&db, key, value).await?;
        }
        let node: NodeId = LOCAL_META.require(&db, "node_id").await?.parse()?;
        for t in &self.tables {
            if self.create_tables {
                ensure_table(&db, t.spec()).await?;
            }
            tables::install_table(&db, t.spec()).await?;
            upgrade::convert_states(&db, t.as_ref()).await?;
            upgrade::follow_columns(&db, t.as_ref()).await?;
        }
        Ok(Replica {
            db,
            tables: self.tables,
            resolvers: self.resolvers,
            node: std::sync::RwLock::new(node),
            written: 0.into(),
        })
    }
}

/// A table's schema in an error message.
fn schema_text(schema: Option<&str>) -> String {
    schema.map_or_else(|| "(the search path)".to_owned(), |s| format!("`{s}`"))
}

/// How often a capture pass goes back to an earlier round because writes
/// committed meanwhile (see [`Pass`]) before it ends and leaves the rest to
/// the next pass.
const MAX_RESTARTS: usize = 8;

/// A capture pass sealed one transaction (one batch of markers) at a time:
/// see [`Replica::capture`], which runs it to the end, and the push, which
/// seals as it sends.
pub(crate) struct Sealer<'r> {
    replica: &'r Replica,
    pass: Pass<'r>,
    /// What the pass did so far.
    pub(crate) report: CaptureReport,
    finished: bool,
    /// Whether the changes sealed are kept for [`Sealer::take_after`].
    keep: bool,
    /// The changes sealed and committed, not taken yet, in sequence order.
    kept: VecDeque<Change>,
}

impl Sealer<'_> {
    /// Whether the pass is over (every round done, or it went back more
    /// often than it may: the markers left wait for the next pass).
    pub(crate) fn finished(&self) -> bool {
        self.finished
    }

    /// Seal the pass's next batch in a transaction of its own. If it
    /// fails, the pass starts over at its next step: the pass moved on
    /// before the transaction that failed rolled back, and going on from
    /// there would skip the markers it rolled back (a parent's, say,
    /// sealed after its child's).
    pub(crate) async fn step(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        let captured = self.report.captured;
        let rejected = self.report.rejected.len();
        let sealed = self.try_step().await;
        if sealed.is_err() {
            self.pass = Pass::new(&self.replica.tables);
            self.report.captured = captured;
            self.report.rejected.truncate(rejected);
        }
        sealed
    }

    async fn try_step(&mut self) -> Result<()> {
        let replica = self.replica;
        let tx = replica.db.begin().await?;
        let mut state = SealState::lock_and_load(&tx).await?;
        if self.keep {
            state.kept = Some(Vec::new());
        }
        let seq = state.next_seq;
        let step = self
            .pass
            .step(&tx, &mut state, &mut self.report, MAX_RESTARTS)
            .await?;
        state.save(&tx).await?;
        tx.commit().await?;
        // Committed: the changes are in the outbox as kept here.
        self.kept.extend(state.kept.take().unwrap_or_default());
        replica.wrote(state.next_seq - seq).await;
        self.finished = step.finished();
        Ok(())
    }

    /// Forget every change kept: the outbox changed under them (a change
    /// was parked), so the push reads it again.
    pub(crate) fn forget_kept(&mut self) {
        self.kept.clear();
    }

    /// Take the changes this sealer kept that come right after sequence
    /// `after` in the outbox: up to `limit`, and about `max_bytes` of
    /// values (at least one), under the replica's node id (as the outbox
    /// gives them, see `Replica::outbox_batch`).
    ///
    /// A kept change comes right after `after` only if its sequence is
    /// the next one: sequences are handed out one by one under the
    /// capture lock, so no other change of the outbox can lie between. A
    /// kept change at or before `after` was read from the outbox already
    /// and is dropped; one further on leaves a gap, which only the outbox
    /// can fill (another pass sealed changes meanwhile, or a resolver
    /// wrote one): nothing is taken then.
    pub(crate) fn take_after(&mut self, after: u64, limit: usize, max_bytes: usize) -> Vec<Change> {
        let mut taken = outbox::take_next(&mut self.kept, after, limit, max_bytes);
        let node = self.replica.node_id();
        for c in &mut taken {
            c.id.origin = node;
        }
        taken
    }

    /// Seal batches until `n` more changes are in the outbox or the pass
    /// is over; how many were added.
    pub(crate) async fn seal(&mut self, n: usize) -> Result<usize> {
        let start = self.report.captured;
        while !self.finished && self.report.captured - start < n {
            self.step().await?;
        }
        Ok(self.report.captured - start)
    }
}

/// The local database of one device.
///
/// Every write to a registered table (through SeaORM or not) leaves a dirty
/// marker; [`capture`](Replica::capture) turns markers into typed
/// [`Change`](crate::model::change::Change)s in the outbox, ready to push.
///
/// ```no_run
/// # async fn demo(db: sea_orm::DatabaseConnection) -> sync_core::Result<()> {
/// # use sea_orm::entity::prelude::*;
/// # mod contacts { use sea_orm::entity::prelude::*;
/// #   #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
/// #   #[sea_orm(table_name = "contacts")]
/// #   pub struct Model { #[sea_orm(primary_key, auto_increment = false)] pub id: Uuid, pub name: String }
/// #   #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)] pub enum Relation {}
/// #   impl ActiveModelBehavior for ActiveModel {}
/// #   impl sync_core::Syncable for Entity {}
/// # }
/// let replica = sync_core::Replica::builder(db)
///     .register::<contacts::Entity>()
///     .open()
///     .await?;
/// let report = replica.capture().await?;
/// println!("{} changes ready to push", report.captured);
/// # Ok(()) }
/// ```
pub struct Replica {
    db: DatabaseConnection,
    tables: Vec<Arc<dyn TableHandle>>,
    resolvers: HashMap<String, Arc<dyn Resolver>>,
    /// The node id (see [`Replica::node_id`]).
    node: std::sync::RwLock<NodeId>,
    /// Rows whose state this process wrote (captured or pulled), for
    /// [`Replica::wrote`].
    written: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("node", &self.node_id())
            .field(
                "tables",
                &self
                    .tables
                    .iter()
                    .map(|t| &t.spec().name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Replica {
    /// Start building a replica over the application's own connection.
    pub fn builder(db: DatabaseConnection) -> ReplicaBuilder {
        ReplicaBuilder {
            db,
            tables: Vec::new(),
            resolvers: HashMap::new(),
            create_tables: false,
            errors: Vec::new(),
        }
    }

    /// This device's node id: created on first open, and stable until the
    /// replica finds that another device used it (a copy of this database,
    /// or this database restored from an older backup) and takes a new one
    /// (the sync engine reports it in `SyncReport::renewed`).
    pub fn node_id(&self) -> NodeId {
        *self.node.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The node id and the last sequence this replica numbered, as stored
    /// (another `Replica` on the same database may have renewed the id);
    /// the node id in memory follows.
    pub(crate) async fn identity(&self) -> Result<(NodeId, u64)> {
        let mut meta = LOCAL_META
            .read_many(&self.db, &["node_id", "next_seq"])
            .await?;
        let node: NodeId = meta
            .remove("node_id")
            .ok_or_else(|| Error::Corrupt("node_id missing".into()))?
            .parse()?;
        let next_seq = meta.remove("next_seq").unwrap_or_default();
        let next_seq: u64 = next_seq
            .parse()
            .map_err(|_| Error::Corrupt(format!("next_seq `{next_seq}` is not a number")))?;
        self.set_node(node);
        Ok((node, next_seq.saturating_sub(1)))
    }

    /// Take a new node id, because `old` was used by another device too.
    /// Pending changes go out under the new id (the outbox is numbered by
    /// sequence alone, which goes on from where it was), and every pull
    /// cursor is forgotten, so the next pull loads each hub's rows again,
    /// the changes made under `old` elsewhere among them (a pull leaves out
    /// its own origin's changes, and these were not this replica's). Under
    /// the capture lock; if the stored id is no longer `old` (another
    /// `Replica` on this database renewed it), that one is taken.
    pub(crate) async fn renew_identity(&self, old: NodeId) -> Result<NodeId> {
        let tx = self.db.begin().await?;
        SealState::lock(&tx).await?;
        let stored: NodeId = LOCAL_META.require(&tx, "node_id").await?.parse()?;
        if stored != old {
            tx.commit().await?;
            self.set_node(stored);
            return Ok(stored);
        }
        let new = NodeId::random();
        LOCAL_META.upsert(&tx, "node_id", &new.to_string()).await?;
        // Its changes stamped under the old id are still its own (see
        // `restamp`).
        let mut former = restamp::former_ids(&tx).await?;
        former.push(old);
        let former: Vec<String> = former.iter().map(NodeId::to_string).collect();
        LOCAL_META
            .upsert(&tx, restamp::FORMER_IDS, &former.join(" "))
            .await?;
        for prefix in ["cursor:", "bootstrap:", "acked:", "mark:"] {
            LOCAL_META.remove_prefixed(&tx, prefix).await?;
        }
        tx.commit().await?;
        self.set_node(new);
        Ok(new)
    }

    fn set_node(&self, node: NodeId) {
        *self.node.write().unwrap_or_else(|e| e.into_inner()) = node;
    }

    /// The local connection.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub(crate) fn handles(&self) -> &[Arc<dyn TableHandle>] {
        &self.tables
    }

    /// Count `n` more row states written; at every doubling, fresh
    /// statistics for the replica's tables (PostgreSQL, see
    /// the store's `analyze`).
    pub(crate) async fn wrote(&self, n: u64) {
        use std::sync::atomic::Ordering;
        let before = self.written.fetch_add(n, Ordering::Relaxed);
        if crossed_doubling(before, before.saturating_add(n)) {
            let Ok(d) = dialect::of_db(&self.db) else {
                return;
            };
            let states: Vec<String> = self
                .tables
                .iter()
                .map(|t| tables::version_table(&t.spec().name))
                .collect();
            let mut tables: Vec<(Place<'_>, &[&str])> = vec![(Place::own(OUTBOX.name), &[])];
            tables.extend(states.iter().map(|v| (Place::own(v), &[][..])));
            tables.extend(
                self.tables
                    .iter()
                    .map(|t| (Place::of(d, t.spec()), &[][..])),
            );
            analyze(&self.db, &tables).await;
        }
    }

    pub(crate) fn resolver_for(&self, table: &str) -> Option<&Arc<dyn Resolver>> {
        self.resolvers.get(table)
    }

    /// The registered tables, in registration order.
    pub fn tables(&self) -> impl Iterator<Item = &TableSpec> {
        self.tables.iter().map(|t| t.spec())
    }

    /// Turn every pending dirty marker into a change in the outbox, in
    /// batches of one transaction each.
    ///
    /// A row whose values cannot be captured (a NaN, a string over its
    /// column's length) is listed in [`CaptureReport::rejected`] and its
    /// marker stays, so it is captured once the row is fixed.
    pub async fn capture(&self) -> Result<CaptureReport> {
        let mut sealer = self.sealer();
        while !sealer.finished() {
            sealer.step().await?;
        }
        Ok(sealer.report)
    }

    /// A capture pass run a transaction at a time by its caller (the push
    /// seals the markers it sends while the hub works on the previous
    /// batch).
    pub(crate) fn sealer(&self) -> Sealer<'_> {
        Sealer {
            replica: self,
            pass: Pass::new(&self.tables),
            report: CaptureReport::default(),
            finished: false,
            keep: false,
            kept: VecDeque::new(),
        }
    }

    /// A capture pass like [`Replica::sealer`]'s that keeps the changes
    /// it seals, for the push to send without reading them back (see
    /// [`Sealer::take_after`]).
    pub(crate) fn keeping_sealer(&self) -> Sealer<'_> {
        Sealer {
            keep: true,
            ..self.sealer()
        }
    }

    /// Apply a page of remote deltas, storing and removing `meta` in its
    /// transaction; counts the rows written (see [`Replica::wrote`]).
    pub(crate) async fn apply_page(
        &self,
        deltas: Vec<Delta>,
        meta: PageMeta<'_>,
    ) -> Result<ApplyReport> {
        let report = incoming::apply_page(&self.db, &self.tables, deltas, meta).await?;
        self.wrote(report.applied as u64).await;
        Ok(report)
    }

    /// Pulled rows this replica's table refused, to apply again (see
    /// [`incoming::refused`]).
    pub(crate) async fn refused(&self, limit: u64) -> Result<Vec<(i64, Delta)>> {
        incoming::refused(&self.db, limit).await
    }

    /// A value of the replica's metadata (`cursor:<hub id>`, ...).
    pub(crate) async fn meta(&self, key: &str) -> Result<Option<String>> {
        LOCAL_META.read(&self.db, key).await
    }

    /// Several values of the replica's metadata, in one read; keys without a
    /// value are absent.
    pub(crate) async fn metas(&self, keys: &[&str]) -> Result<HashMap<String, String>> {
        LOCAL_META.read_many(&self.db, keys).await
    }

    /// Store several values of the replica's metadata that were read for
    /// node id `node`, in one statement, unless the replica took another
    /// id meanwhile (see [`PageMeta::node`]).
    pub(crate) async fn set_metas_for(&self, node: NodeId, values: &[(&str, &str)]) -> Result<()> {
        let tx = self.db.begin().await?;
        SealState::lock(&tx).await?;
        let stored: NodeId = LOCAL_META.require(&tx, "node_id").await?.parse()?;
        if stored == node {
            LOCAL_META.upsert_many(&tx, values).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Store a value of the replica's metadata.
    pub(crate) async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        LOCAL_META.upsert(&self.db, key, value).await
    }
}
