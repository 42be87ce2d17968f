//! Reconciling: finding rows changed behind tidesync's back (before it was
//! installed, with its triggers dropped, by `TRUNCATE`, ...) by comparing
//! every row with its shadow, and marking them for capture.
//!
//! The table is read page by page in key order, by `OFFSET` (each page
//! reads the table again up to it). Paging after the last key seen would
//! be linear, but the key values come back through the driver's types and
//! would be bound again in its encoding, which need not be the one stored
//! (a SQLite key written as text in another format by another program),
//! and a MySQL `ENUM` sorts by its declaration while it compares as text:
//! a cursor built from them can fall anywhere in the table's own order and
//! skip rows in silence.
//!
//! What is kept between pages is a set of 16-byte digests of the
//! canonical key texts seen, not the texts (an initial copy of a million
//! rows peaked at 174 MiB with the texts, 99 MiB with the digests; see
//! BENCHMARKS.md), and the row states are read page by page against it: a
//! live state whose key was not seen is gone. The keys are compared in
//! their canonical form, as capture and the states know them, never by
//! looking a row up by its canonical key (a SQLite date-time key stored
//! with its offset would not be found by its canonical UTC text: the row
//! would be taken for deleted). The version tables, unlike the table, are
//! paged after the last key read: tidesync wrote every key there itself,
//! in the encoding it binds them with again, and keeps a MySQL `ENUM` key
//! as text (see `tables::version_key_type`).

use std::collections::HashSet;

use sea_orm::sea_query::{Alias, Asterisk, Expr, ExprTrait, Func, OnConflict, Query, SimpleExpr};
use sea_orm::{ConnectionTrait, TransactionTrait, Value};
use sha2::{Digest, Sha256};

use super::Replica;
use super::capture::{BATCH, diff};
use super::entity::TableHandle;
use super::tables::{dirty_table, version_table};
use super::versions;
use crate::dialect::{self, Place};
use crate::model::change::TableSpec;
use crate::model::clock::wall_clock_us;
use crate::model::error::{Error, Result};
use crate::model::value::pk_key;
use crate::store::stats::custom_plans;

/// What a reconcile keeps of a key it saw: 16 bytes of its text's SHA-256
/// (two different keys of one table share it with a chance of about
/// 2^-128 a pair).
type Seen = [u8; 16];

fn seen(key: &str) -> Seen {
    let mut out = [0; 16];
    out.copy_from_slice(&Sha256::digest(key.as_bytes())[..16]);
    out
}

/// What [`Replica::reconcile`] found: the rows it marked for capture.
///
/// Marked rows are captured as the triggers' markers are: by the next
/// push, which seals them batch by batch while the hub applies the batch
/// before (or at once by [`Replica::capture`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReconcileReport {
    /// Rows marked: new or changed since their last captured state, or
    /// gone. A table marked whole counts the rows it held.
    pub marked: usize,
    /// Tables marked whole, without reading their rows: they had no live
    /// row state (never captured, as at an initial copy, or every row
    /// deleted), so each row they hold is new to tidesync.
    pub marked_whole: Vec<String>,
}

impl Replica {
    /// Find rows changed behind tidesync's back (before it was installed,
    /// with triggers dropped, by `TRUNCATE`, ...) by comparing every row
    /// with its last captured state, and mark them, as the triggers mark
    /// the rows the application writes. The next push (or
    /// [`capture`](Replica::capture)) captures them.
    ///
    /// A table without a live row state (never captured: the first sync of
    /// an existing database) is marked whole by one statement, without
    /// reading its rows into the process (the database reads them). Other
    /// tables are read page by page. That statement holds its transaction
    /// for as long as it takes (1.4 s for a million rows on SQLite, measured),
    /// and on MySQL it locks the rows it reads: the application's writes
    /// to the table wait meanwhile. A reconcile that fails (a write lock
    /// it could not take, the connection lost) changed nothing it had not
    /// committed, and is run again: marking a row twice is harmless.
    ///
    /// ```no_run
    /// # async fn f(engine: sync_core::SyncEngine) -> sync_core::Result<()> {
    /// // An existing database, synced for the first time.
    /// let found = engine.replica().reconcile().await?;
    /// println!("{} rows to send", found.marked);
    /// engine.sync_now().await?;
    /// # Ok(()) }
    /// ```
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        for table in self.handles() {
            let wall = i64::try_from(wall_clock_us()).unwrap_or(i64::MAX);
            if let Some(n) = self.mark_whole(table.as_ref(), wall).await? {
                report.marked += n;
                report.marked_whole.push(table.spec().name.clone());
                continue;
            }
            let (seen, n) = self.mark_changed(table.as_ref(), wall).await?;
            report.marked += n;
            report.marked += self.mark_gone(table.as_ref(), &seen, wall).await?;
        }
        Ok(report)
    }

    /// Mark every row of `table` in one statement when it has no live row
    /// state (each row then differs from its state: it has none), and
    /// return how many rows it held; `None` when it has live states, and
    /// is read page by page. The markers copy each key as the table holds
    /// it, as the triggers do. A row written meanwhile is marked by its
    /// trigger; a state made meanwhile by a capture only makes the marker
    /// one the seal finds nothing new in: marking more than needed costs
    /// a read, never a write.
    async fn mark_whole(&self, table: &dyn TableHandle, wall: i64) -> Result<Option<usize>> {
        let spec = table.spec();
        let tx = self.connection().begin().await?;
        let live = Query::select()
            .expr(Expr::val(1))
            .from(Alias::new(version_table(&spec.name)))
            .and_where(Expr::col(Alias::new("live")).eq(true))
            .limit(1)
            .to_owned();
        if tx.query_one(&live).await?.is_some() {
            return Ok(None);
        }
        let place = Place::of(dialect::of_db(&tx)?, spec);
        let count = Query::select()
            .expr_as(Expr::col(Asterisk).count(), Alias::new("n"))
            .from(place.table_ref())
            .to_owned();
        let held = match tx.query_one(&count).await? {
            Some(r) => r.try_get_by_index::<i64>(0)?,
            None => 0,
        };
        if held > 0 {
            let keys: Vec<Alias> = spec.pk.iter().map(|c| Alias::new(&c.name)).collect();
            let mut rows = Query::select();
            rows.columns(keys.clone())
                .expr(Expr::val(1i64))
                .expr(Expr::val(wall))
                .from(place.table_ref())
                // SQLite parses `SELECT … ON CONFLICT` only after a WHERE.
                .and_where(Expr::cust("1 = 1"));
            let mut cols = keys.clone();
            cols.push(Alias::new("ver"));
            cols.push(Alias::new("wall_us"));
            let mut q = Query::insert();
            q.into_table(Alias::new(dirty_table(&spec.name)))
                .columns(cols)
                .select_from(rows)
                .map_err(|e| Error::Config(e.to_string()))?;
            q.on_conflict(bump(spec, wall));
            tx.execute(&q).await?;
        }
        tx.commit().await?;
        Ok(Some(usize::try_from(held).unwrap_or(usize::MAX)))
    }

    /// Mark the rows of `table` that differ from their shadow, page by
    /// page; returns the digests of the keys of every row seen, and how
    /// many rows it marked.
    async fn mark_changed(
        &self,
        table: &dyn TableHandle,
        wall: i64,
    ) -> Result<(HashSet<Seen>, usize)> {
        let spec = table.spec();
        let mut keys_seen = HashSet::new();
        let mut marked = 0;
        let mut offset = 0;
        loop {
            let tx = self.connection().begin().await?;
            custom_plans(&tx).await?;
            let page = table.scan(&tx, offset, BATCH).await?;
            let keys: Vec<String> = page
                .iter()
                .map(|(pk, _)| pk_key(pk))
                .collect::<Result<_>>()?;
            let pks: Vec<Vec<Value>> = page.iter().map(|(pk, _)| pk.clone()).collect();
            let shadows = versions::open(&tx, table).await?.load(&tx, &pks).await?;
            let mut stale = Vec::new();
            for ((pk, vals), key) in page.iter().zip(&keys) {
                if diff(spec, Some(vals), shadows.get(key), false).is_some() {
                    stale.push(pk.clone());
                }
                keys_seen.insert(seen(key));
            }
            mark(&tx, spec, &stale, wall).await?;
            tx.commit().await?;
            marked += stale.len();
            if (page.len() as u64) < BATCH {
                return Ok((keys_seen, marked));
            }
            offset += BATCH;
        }
    }

    /// Mark the rows captured before (a live shadow) but not seen by the
    /// scan, page by page of shadows, and return how many. A row may have
    /// appeared since the scan: diffing decides.
    async fn mark_gone(
        &self,
        table: &dyn TableHandle,
        keys_seen: &HashSet<Seen>,
        wall: i64,
    ) -> Result<usize> {
        let spec = table.spec();
        let mut marked = 0;
        let mut after: Option<Vec<Value>> = None;
        loop {
            let tx = self.connection().begin().await?;
            let page = versions::open(&tx, table)
                .await?
                .page(&tx, after.as_deref(), true, BATCH)
                .await?;
            let mut gone = Vec::new();
            for (pk, _) in &page {
                if !keys_seen.contains(&seen(&pk_key(pk)?)) {
                    gone.push(pk.clone());
                }
            }
            mark(&tx, spec, &gone, wall).await?;
            tx.commit().await?;
            marked += gone.len();
            if (page.len() as u64) < BATCH {
                return Ok(marked);
            }
            after = page.last().map(|(k, _)| k.clone());
        }
    }
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
    q.into_table(Alias::new(dirty_table(&spec.name)))
        .columns(cols);
    for pk in pks {
        let mut row: Vec<SimpleExpr> = pk.iter().cloned().map(Into::into).collect();
        row.push(1i64.into());
        row.push(wall.into());
        q.values_panic(row);
    }
    q.on_conflict(bump(spec, wall));
    db.execute(&q).await?;
    Ok(())
}

/// A marker's row already there is bumped, as the triggers bump it: its
/// version moves, so a seal that read the row before does not delete it.
/// Its time moves to `wall` only forward: a marker an application write
/// left after the reconcile began keeps that write's time, which the seal
/// stamps the change with (stamped with the reconcile's earlier time, the
/// write could lose to a concurrent edit it followed).
fn bump(spec: &TableSpec, wall: i64) -> OnConflict {
    let own = |c: &str| Expr::col((Alias::new(dirty_table(&spec.name)), Alias::new(c)));
    OnConflict::columns(spec.pk.iter().map(|c| Alias::new(&c.name)))
        .value(Alias::new("ver"), own("ver").add(1))
        .value(
            Alias::new("wall_us"),
            Func::greatest([own("wall_us"), Expr::val(wall)]),
        )
        .to_owned()
}
