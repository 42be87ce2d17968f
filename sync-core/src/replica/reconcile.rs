//! Reconciling: finding rows changed behind tidesync's back (before it was
//! installed, with its triggers dropped, by `TRUNCATE`, ...) by comparing
//! every row with its shadow, and marking them for capture.
//!
//! Both sides are read page by page in key order, each page after the last
//! key of the one before (never by `OFFSET`, which would read the table
//! again up to each page and let a row deleted before the cursor move the
//! next page's first row out of the scan), and nothing is kept from one
//! page to the next: a reconcile of a million rows takes the memory of one
//! page.

use std::collections::HashSet;

use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict, Query, SimpleExpr};
use sea_orm::{ConnectionTrait, TransactionTrait, Value};

use super::Replica;
use super::capture::{BATCH, CaptureReport, diff};
use super::entity::TableHandle;
use super::tables::{ROWS, dirty_table};
use crate::model::change::TableSpec;
use crate::model::clock::wall_clock_us;
use crate::model::error::Result;
use crate::model::value::{parse_pk_key, pk_key};
use crate::store::rows::{live_keys, load_states};
use crate::store::stats::custom_plans;

impl Replica {
    /// Find rows changed behind tidesync's back (before it was installed,
    /// with triggers dropped, by `TRUNCATE`, ...) by comparing every row
    /// with its last captured state, mark them, and capture them.
    pub async fn reconcile(&self) -> Result<CaptureReport> {
        let wall = i64::try_from(wall_clock_us()).unwrap_or(i64::MAX);
        for table in self.handles() {
            self.mark_changed(table.as_ref(), wall).await?;
            self.mark_gone(table.as_ref(), wall).await?;
        }
        self.capture().await
    }

    /// Mark the rows of `table` that differ from their shadow, page by
    /// page.
    async fn mark_changed(&self, table: &dyn TableHandle, wall: i64) -> Result<()> {
        let spec = table.spec();
        let mut after: Option<Vec<Value>> = None;
        loop {
            let tx = self.connection().begin().await?;
            custom_plans(&tx).await?;
            let page = table.scan(&tx, after.as_deref(), BATCH).await?;
            let keys: Vec<String> = page
                .iter()
                .map(|(pk, _)| pk_key(pk))
                .collect::<Result<_>>()?;
            let shadows = load_states(&tx, ROWS, &spec.name, &keys).await?;
            let mut stale = Vec::new();
            for ((pk, vals), key) in page.iter().zip(&keys) {
                if diff(spec, Some(vals), shadows.get(key), false).is_some() {
                    stale.push(pk.clone());
                }
            }
            mark(&tx, spec, &stale, wall).await?;
            tx.commit().await?;
            if (page.len() as u64) < BATCH {
                return Ok(());
            }
            after = page.last().map(|(pk, _)| pk.clone());
        }
    }

    /// Mark the rows captured before (a live shadow) that are gone now,
    /// page by page of shadows: those whose key finds no row. A row may
    /// have appeared since: diffing decides.
    async fn mark_gone(&self, table: &dyn TableHandle, wall: i64) -> Result<()> {
        let spec = table.spec();
        let mut after: Option<String> = None;
        loop {
            let tx = self.connection().begin().await?;
            custom_plans(&tx).await?;
            let keys = live_keys(&tx, ROWS, &spec.name, after.as_deref(), BATCH).await?;
            let pks: Vec<Vec<Value>> = keys
                .iter()
                .map(|k| parse_pk_key(k))
                .collect::<Result<_>>()?;
            let present: HashSet<String> = table
                .rows(&tx, &pks)
                .await?
                .iter()
                .map(|(pk, _)| pk_key(pk))
                .collect::<Result<_>>()?;
            let gone: Vec<Vec<Value>> = pks
                .into_iter()
                .zip(&keys)
                .filter(|(_, k)| !present.contains(*k))
                .map(|(pk, _)| pk)
                .collect();
            mark(&tx, spec, &gone, wall).await?;
            tx.commit().await?;
            if (keys.len() as u64) < BATCH {
                return Ok(());
            }
            after = keys.last().cloned();
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
