//! Pulling what changed on the hub: the rows changed after the stored
//! cursor (`Hub::pull_states`), page after page, the next page fetched
//! while the current one is applied, each page applied with its cursor in
//! one local transaction.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::identity::{HubKeys, mark};
use super::prefetch::Prefetch;
use super::{SyncEngine, SyncReport};
use crate::model::change::ChangeId;
use crate::model::clock::NodeId;
use crate::model::error::{Error, Result};
use crate::model::merge::RowState;
use crate::model::protocol::{Cursor, HubInfo, RejectPolicy, SnapshotRow, StatePage};
use crate::replica::incoming::{Delta, PageMeta};

/// How many times in a row a page that rolled back on a retryable error is
/// applied again before the pull gives up (the next sync goes on).
const PAGE_RETRIES: usize = 3;

/// A pulled page, made ready to apply.
struct Page {
    /// The rows' states (and an unreadable row to park).
    deltas: Vec<Delta>,
    /// Where the next pull starts.
    next: Cursor,
    /// The change the hub logs at `next`, if it said.
    next_id: Option<ChangeId>,
    /// Whether the page ends at an unreadable row to halt at.
    halt: bool,
    /// Whether the hub returned nothing new.
    empty: bool,
}

impl SyncEngine {
    /// Pull the rows changed after the stored cursor (bootstrapping
    /// first if there is none). The next page is fetched while the current
    /// one is applied; an error of that fetch surfaces at the next turn,
    /// after the current page and its cursor have committed.
    pub(super) async fn pull(&self, info: &HubInfo, report: &mut SyncReport) -> Result<()> {
        let keys = HubKeys::of(info);
        let key = keys.cursor.clone();
        let mut cursor = match self.replica.meta(&key).await? {
            Some(c) => Cursor(
                c.parse()
                    .map_err(|_| Error::Corrupt(format!("cursor `{c}`")))?,
            ),
            None => self.bootstrap(info, &key, report).await?,
        };
        let me = self.replica.node_id();
        let fetch = |cursor: Cursor| {
            let hub = Arc::clone(&self.hub);
            let limit = self.page;
            Prefetch::spawn(async move { hub.pull_states(cursor, limit, me).await })
        };
        let mut ahead = fetch(cursor);
        let mut retries = 0;
        loop {
            let batch = ahead.get().await.map_err(Error::or_offline)?;
            let page = self.prepare(batch, cursor, report);
            if page.empty {
                return self.retry_refused(report).await;
            }
            if page.halt {
                // Apply what came before the unreadable change, then stop.
                return self.save_page(&keys, me, page, true, report).await;
            }
            ahead = fetch(page.next);
            let next = page.next;
            match self
                .save_page(&keys, me, page, retries >= PAGE_RETRIES, report)
                .await
            {
                Ok(()) => {
                    cursor = next;
                    retries = 0;
                }
                // A serialization failure, a deadlock, or an application
                // write that took the key of a new row while the page
                // waited for it: the page rolled back; read it again and
                // apply it again (its local writes are captured first).
                Err(e) if e.is_retryable() && retries < PAGE_RETRIES => {
                    retries += 1;
                    tracing::debug!("page after {} applied again: {e}", cursor.0);
                    ahead = fetch(cursor);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Apply again the pulled rows this replica's table refused (a later
    /// page may have made them fit: the delete that frees a unique value
    /// came after the insert that takes it), at most a page of them. Those
    /// still refused are parked again, not reported again (they were when
    /// they were first parked).
    async fn retry_refused(&self, report: &mut SyncReport) -> Result<()> {
        let parked = self.replica.refused(self.page).await?;
        if parked.is_empty() {
            return Ok(());
        }
        let (ids, deltas): (Vec<i64>, Vec<Delta>) = parked.into_iter().unzip();
        let meta = PageMeta {
            store: &[],
            forget: &[],
            unpark: &ids,
            node: None,
            park_raced: true,
        };
        let applied = self.replica.apply_page(deltas, meta).await?;
        report.pulled += applied.applied;
        self.progress.pulled.store(report.pulled, Ordering::Relaxed);
        report.local_errors.extend(
            applied
                .parked
                .into_iter()
                .filter(|e| !matches!(e, Error::Refused { .. })),
        );
        report.local_errors.extend(applied.captured.rejected);
        Ok(())
    }

    /// Apply a page's deltas with the cursor after it, in one local
    /// transaction; a page of only our own changes (left out by the hub),
    /// or an unreadable change first, just moves the cursor.
    async fn save_page(
        &self,
        keys: &HubKeys,
        me: NodeId,
        page: Page,
        last_try: bool,
        report: &mut SyncReport,
    ) -> Result<()> {
        let next = page.next.0.to_string();
        let mark = page.next_id.map(|id| mark(page.next, id));
        let mut store = vec![(keys.cursor.as_str(), next.as_str())];
        if let Some(m) = &mark {
            store.push((keys.mark.as_str(), m.as_str()));
        }
        if page.deltas.is_empty() {
            return self.replica.set_metas_for(me, &store).await;
        }
        let meta = PageMeta {
            store: &store,
            forget: &[],
            unpark: &[],
            node: Some(me),
            park_raced: last_try,
        };
        self.apply_page(page.deltas, meta, report).await
    }

    /// Turn a pulled page into deltas: the rows' states, and an unreadable
    /// row parked with them (the cursor moves past it) or halted at, by
    /// policy.
    fn prepare(&self, batch: StatePage, cursor: Cursor, report: &mut SyncReport) -> Page {
        let got = batch.rows.len();
        let mut page = Page {
            deltas: batch.rows.into_iter().map(delta_of_row).collect(),
            next: batch.next,
            next_id: batch.next_id,
            halt: false,
            empty: false,
        };
        if let Some(bad) = batch.unreadable {
            report.local_errors.push(Error::Corrupt(bad.reason.clone()));
            if self.policy == RejectPolicy::Park {
                page.next = bad.position;
                page.next_id = None;
                page.deltas.push(Delta {
                    table: bad.table,
                    pk: Vec::new(),
                    state: RowState::default(),
                    id: None,
                    raw: Some(bad.raw),
                    park: Some(bad.reason),
                });
            } else {
                page.halt = true;
            }
        }
        page.empty = got == 0 && page.next == cursor;
        page
    }

    /// Apply one page of deltas with `meta` in one local transaction, and
    /// report it.
    pub(super) async fn apply_page(
        &self,
        deltas: Vec<Delta>,
        meta: PageMeta<'_>,
        report: &mut SyncReport,
    ) -> Result<()> {
        let applied = self.replica.apply_page(deltas, meta).await?;
        report.pulled += applied.applied;
        self.progress.pulled.store(report.pulled, Ordering::Relaxed);
        report.local_errors.extend(applied.parked);
        report.local_errors.extend(applied.captured.rejected);
        Ok(())
    }
}

/// A pulled row as a delta.
pub(super) fn delta_of_row(row: SnapshotRow) -> Delta {
    Delta {
        table: row.table,
        pk: row.pk.into_iter().map(|(_, v)| v).collect(),
        state: row.state,
        id: None,
        raw: None,
        park: None,
    }
}
