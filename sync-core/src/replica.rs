//! A [`Replica`]: the local database of one device, with its synced tables
//! registered, capture installed, and the outbox of captured changes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait, Value};

use crate::capture::{self, CaptureReport, EntityTable, SealState, TableHandle};
use crate::change::{Change, TableSpec};
use crate::clock::{NodeId, wall_clock_us};
use crate::conflict::Resolver;
use crate::error::{Error, Result};
use crate::schema::{self, OUTBOX, ROWS};
use crate::store;
use crate::syncable::{ConflictPolicy, Syncable};
use crate::value::{parse_pk_key, pk_key};

/// How many markers one capture transaction seals.
const BATCH: u64 = 500;

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
    /// columns a newer entity has), with [`crate::create_table`]'s column
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
        if self.tables.iter().any(|t| t.spec().name == spec.name) {
            self.errors
                .push(format!("table `{}` is registered twice", spec.name));
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
        schema::install_metadata(&db).await?;
        schema::insert_meta_if_missing(&db, "node_id", &NodeId::random().to_string()).await?;
        schema::insert_meta_if_missing(&db, "next_seq", "1").await?;
        schema::insert_meta_if_missing(&db, "hlc", "").await?;
        let node: NodeId = schema::read_meta(&db, "node_id")
            .await?
            .ok_or_else(|| Error::Corrupt("node_id missing".into()))?
            .parse()?;
        for t in &self.tables {
            if self.create_tables {
                schema::ensure_table(&db, t.spec()).await?;
            }
            schema::install_table(&db, t.spec()).await?;
        }
        Ok(Replica {
            db,
            tables: self.tables,
            resolvers: self.resolvers,
            node,
            written: 0.into(),
        })
    }
}

/// The local database of one device.
///
/// Every write to a registered table (through SeaORM or not) leaves a dirty
/// marker; [`capture`](Replica::capture) turns markers into typed
/// [`Change`]s in the outbox, ready to push.
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
    node: NodeId,
    /// Rows whose state this process wrote (captured or pulled), for
    /// [`Replica::wrote`].
    written: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("node", &self.node)
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

    /// This device's node id (created on first open, then stable).
    pub fn node_id(&self) -> NodeId {
        self.node
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
    /// [`store::analyze`]).
    pub(crate) async fn wrote(&self, n: u64) {
        use std::sync::atomic::Ordering;
        let before = self.written.fetch_add(n, Ordering::Relaxed);
        if store::crossed_doubling(before, before.saturating_add(n)) {
            let mut tables: Vec<(&str, &[&str])> = vec![(ROWS, store::STATE_KEYS), (OUTBOX, &[])];
            tables.extend(
                self.tables
                    .iter()
                    .map(|t| (t.spec().name.as_str(), &[][..])),
            );
            store::analyze(&self.db, &tables).await;
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
        let mut report = CaptureReport::default();
        for (phase, table) in capture::phases(&self.tables) {
            let mut skip = 0u64;
            loop {
                let tx = self.db.begin().await?;
                let mut state = SealState::lock_and_load(&tx, self.node).await?;
                let sealed = capture::seal_table(
                    &tx,
                    table.as_ref(),
                    &mut state,
                    BATCH,
                    skip,
                    phase,
                    &mut report,
                )
                .await?;
                state.save(&tx).await?;
                tx.commit().await?;
                self.wrote((sealed.read - sealed.kept) as u64).await;
                skip += sealed.kept as u64;
                if sealed.read < BATCH as usize || sealed.read == sealed.kept {
                    break;
                }
            }
        }
        Ok(report)
    }

    /// Find rows changed behind tidesync's back (before it was installed,
    /// with triggers dropped, by `TRUNCATE`, ...) by comparing every row
    /// with its last captured state, mark them, and capture them.
    pub async fn reconcile(&self) -> Result<CaptureReport> {
        let wall = i64::try_from(wall_clock_us()).unwrap_or(i64::MAX);
        for table in &self.tables {
            let spec = table.spec();
            let mut seen = HashSet::new();
            let mut offset = 0;
            loop {
                let tx = self.db.begin().await?;
                crate::store::custom_plans(&tx).await?;
                let page = table.scan(&tx, offset, BATCH).await?;
                let keys: Vec<String> = page
                    .iter()
                    .map(|(pk, _)| pk_key(pk))
                    .collect::<Result<_>>()?;
                let shadows = crate::store::load_states(&tx, ROWS, &spec.name, &keys).await?;
                let mut stale = Vec::new();
                for ((pk, vals), key) in page.iter().zip(&keys) {
                    if capture::diff(spec, Some(vals), shadows.get(key)).is_some() {
                        stale.push(pk.clone());
                    }
                    seen.insert(key.clone());
                }
                mark(&tx, spec, &stale, wall).await?;
                tx.commit().await?;
                if (page.len() as u64) < BATCH {
                    break;
                }
                offset += BATCH;
            }
            // Rows captured before but gone now.
            let tx = self.db.begin().await?;
            let q = Query::select()
                .column(Alias::new("pk"))
                .from(Alias::new(ROWS))
                .and_where(Expr::col(Alias::new("tbl")).eq(spec.name.as_str()))
                .and_where(Expr::col(Alias::new("live")).eq(true))
                .to_owned();
            let mut gone = Vec::new();
            for r in tx.query_all(&q).await? {
                let key: String = r.try_get("", "pk")?;
                if !seen.contains(&key) {
                    gone.push(parse_pk_key(&key)?);
                }
            }
            // A row may have appeared since the scan: diffing decides.
            for chunk in gone.chunks(BATCH as usize) {
                mark(&tx, spec, chunk, wall).await?;
            }
            tx.commit().await?;
        }
        self.capture().await
    }

    /// Captured changes not yet acknowledged by a hub, oldest first.
    pub async fn pending(&self, limit: u64) -> Result<Vec<Change>> {
        let q = Query::select()
            .columns(crate::capture::outbox_columns())
            .from(Alias::new(OUTBOX))
            .order_by(Alias::new("seq"), Order::Asc)
            .limit(Ord::min(limit, i64::MAX as u64))
            .to_owned();
        self.db
            .query_all(&q)
            .await?
            .iter()
            .map(|r| capture::change_from_outbox(self.node, r))
            .collect()
    }

    /// Number of writes not yet pushed: outbox changes plus dirty markers
    /// not yet captured.
    pub async fn pending_count(&self) -> Result<u64> {
        let mut n = count(&self.db, OUTBOX).await?;
        for t in &self.tables {
            n += count(&self.db, &schema::dirty_table(&t.spec().name)).await?;
        }
        Ok(n)
    }
}

async fn count<C: ConnectionTrait>(db: &C, table: &str) -> Result<u64> {
    let q = Query::select()
        .expr_as(
            Expr::col(sea_orm::sea_query::Asterisk).count(),
            Alias::new("n"),
        )
        .from(Alias::new(table))
        .to_owned();
    let row = db
        .query_one(&q)
        .await?
        .ok_or_else(|| Error::Corrupt("COUNT returned no row".into()))?;
    let n: i64 = row.try_get("", "n")?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Insert (or bump) dirty markers for `pks`.
async fn mark<C: ConnectionTrait>(
    db: &C,
    spec: &TableSpec,
    pks: &[Vec<Value>],
    wall: i64,
) -> Result<()> {
    if pks.is_empty() {
        return Ok(());
    }
    let mut cols: Vec<Alias> = spec.pk.iter().map(|c| Alias::new(&c.name)).collect();
    cols.push(Alias::new("ver"));
    cols.push(Alias::new("wall_us"));
    let mut q = Query::insert();
    q.into_table(Alias::new(schema::dirty_table(&spec.name)))
        .columns(cols);
    for pk in pks {
        let mut row: Vec<sea_orm::sea_query::SimpleExpr> =
            pk.iter().cloned().map(Into::into).collect();
        row.push(1i64.into());
        row.push(wall.into());
        q.values_panic(row);
    }
    q.on_conflict(
        sea_orm::sea_query::OnConflict::columns(spec.pk.iter().map(|c| Alias::new(&c.name)))
            .value(
                Alias::new("ver"),
                Expr::col((
                    Alias::new(schema::dirty_table(&spec.name)),
                    Alias::new("ver"),
                ))
                .add(1),
            )
            .update_column(Alias::new("wall_us"))
            .to_owned(),
    );
    db.execute(&q).await?;
    Ok(())
}
