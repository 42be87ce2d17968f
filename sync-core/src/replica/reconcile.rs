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

use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict, Query, SimpleExpr};
use sea_orm::{ConnectionTrait, TransactionTrait, Value};
use sha2::{Digest, Sha256};

use super::Replica;
use super::capture::{BATCH, CaptureReport, diff};
use super::entity::TableHandle;
use super::tables::dirty_table;
use super::versions;
use crate::model::change::TableSpec;
use crate::model::clock::wall_clock_us;
use crate::model::error::Result;
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

impl Replica {
    /// Find rows changed behind tidesync's back (before it was installed,
    /// with triggers dropped, by `TRUNCATE`, ...) by comparing every row
    /// with its last captured state, mark them, and capture them.
    pub async fn reconcile(&self) -> Result<CaptureReport> {
        let wall = i64::try_from(wall_clock_us()).unwrap_or(i64::MAX);
        for table in self.handles() {
            let seen = self.mark_changed(table.as_ref(), wall).await?;
            self.mark_gone(table.as_ref(), &seen, wall).await?;
        }
        self.capture().await
    }

    /// Mark the rows of `table` that differ from their shadow, page by
    /// page; returns the digests of the keys of every row seen.
    async fn mark_changed(&self, table: &dyn TableHandle, wall: i64) -> Result<HashSet<Seen>> {
        let spec = table.spec();
        let mut keys_seen = HashSet::new();
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
            if (page.len() as u64) < BATCH {
                return Ok(keys_seen);
            }
            offset += BATCH;
        }
    }

    /// Mark the rows captured before (a live shadow) but not seen by the
    /// scan, page by page of shadows. A row may have appeared since the
    /// scan: diffing decides.
    async fn mark_gone(
        &self,
        table: &dyn TableHandle,
        keys_seen: &HashSet<Seen>,
        wall: i64,
    ) -> Result<()> {
        let spec = table.spec();
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
            if (page.len() as u64) < BATCH {
                return Ok(());
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
    q.on_conflict(
        OnConflict::columns(spec.pk.iter().map(|c| Alias::new(&c.name)))
            .value(
                Alias::new("ver"),
                Expr::col((Alias::new(dirty_table(&spec.name)), Alias::new("ver"))).add(1),
            )
            .update_column(Alias::new("wall_us"))
            .to_owned(),
    );
    db.execute(&q).await?;
    Ok(())
}
