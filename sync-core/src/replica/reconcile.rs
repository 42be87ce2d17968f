//! Reconciling: finding rows changed behind tidesync's back (before it was
//! installed, with its triggers dropped, by `TRUNCATE`, ...) by comparing
//! every row with its shadow, and marking them for capture.

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
            let seen = self.mark_changed(table.as_ref(), wall).await?;
            self.mark_gone(table.spec(), &seen, wall).await?;
        }
        self.capture().await
    }

    /// Mark the rows of `table` that differ from their shadow, page by
    /// page; returns the keys of every row seen.
    async fn mark_changed(&self, table: &dyn TableHandle, wall: i64) -> Result<HashSet<String>> {
        let spec = table.spec();
        let mut seen = HashSet::new();
        let mut offset = 0;
        loop {
            let tx = self.connection().begin().await?;
            custom_plans(&tx).await?;
            let page = table.scan(&tx, offset, BATCH).await?;
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
                seen.insert(key.clone());
            }
            mark(&tx, spec, &stale, wall).await?;
            tx.commit().await?;
            if (page.len() as u64) < BATCH {
                return Ok(seen);
            }
            offset += BATCH;
        }
    }

    /// Mark the rows captured before but gone now (a row may have appeared
    /// since the scan: diffing decides).
    async fn mark_gone(&self, spec: &TableSpec, seen: &HashSet<String>, wall: i64) -> Result<()> {
        let tx = self.connection().begin().await?;
        let mut gone = Vec::new();
        for key in live_keys(&tx, ROWS, &spec.name).await? {
            if !seen.contains(&key) {
                gone.push(parse_pk_key(&key)?);
            }
        }
        for chunk in gone.chunks(BATCH as usize) {
            mark(&tx, spec, chunk, wall).await?;
        }
        tx.commit().await?;
        Ok(())
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
