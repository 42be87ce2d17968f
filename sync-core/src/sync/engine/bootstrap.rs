//! Bootstrapping: loading a hub's current rows into a replica that never
//! pulled from it, page by page, resumable after an interruption.

use std::sync::Arc;

use super::prefetch::Prefetch;
use super::{SyncEngine, SyncReport};
use crate::model::error::{Error, Result};
use crate::model::protocol::{Cursor, HubInfo, SnapshotPage};
use crate::replica::incoming::PageMeta;

/// How far an interrupted bootstrap got (see [`SyncEngine::bootstrap`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct BootstrapProgress {
    /// The hub's cursor when the snapshot started: the pull starts there.
    start: u64,
    /// The snapshot continues after this key (a page's `next`).
    after: String,
}

impl SyncEngine {
    /// Load the hub's current rows into a replica that never pulled from it.
    /// The next page is fetched while the current one is applied.
    ///
    /// Each page is applied in one local transaction with the progress
    /// (`bootstrap:<hub id>`): the snapshot's start cursor (returned with
    /// its first page) and the key of the page's last row. A bootstrap
    /// interrupted between pages (offline, a crash) resumes after that key
    /// at the next sync, however large the first copy. The last page stores
    /// the pull cursor (the start cursor) under `key` and removes the
    /// progress in its transaction. Pulling from the start cursor merges
    /// again what changed on the hub while the snapshot was read, in the
    /// pages applied before or after: merging twice is harmless.
    pub(super) async fn bootstrap(
        &self,
        info: &HubInfo,
        key: &str,
        report: &mut SyncReport,
    ) -> Result<Cursor> {
        let progress_key = format!("bootstrap:{}", info.hub_id);
        let resume = self.progress_of(&progress_key).await?;
        // The rows this replica's own pushes set whole, it has: a first
        // sync of an existing database pushes every row before it pulls.
        // Unless the hub did not say how far it applied this id's changes:
        // then a database restored from a backup (which would have taken
        // a new id) cannot be told apart, and every row is loaded.
        let me = self.replica.node_id();
        let exclude = self
            .standing_known
            .load(std::sync::atomic::Ordering::Relaxed);
        let fetch = |after: Option<String>| {
            let hub = Arc::clone(&self.hub);
            let limit = self.page;
            Prefetch::spawn(async move {
                match exclude {
                    true => hub.snapshot_excluding(after, limit, me).await,
                    false => hub.snapshot(after, limit).await,
                }
            })
        };
        let mut start = resume.as_ref().map(|p| Cursor(p.start));
        let mut check_tip = resume.is_some();
        let mut resumed = resume.is_some();
        let mut ahead = Some(fetch(resume.map(|p| p.after)));
        while let Some(call) = ahead.take() {
            let (cursor, page) = match call.get().await {
                // The hub refuses the token the bootstrap resumes after (one
                // of a server before it sealed its accounts' tokens, or of
                // another user): starting over is always safe.
                Err(Error::Config(e)) if std::mem::take(&mut resumed) => {
                    tracing::warn!(
                        "hub {} refused the token the bootstrap resumes after ({e}): the snapshot starts over",
                        info.hub_id
                    );
                    start = None;
                    check_tip = false;
                    ahead = Some(fetch(None));
                    continue;
                }
                got => {
                    resumed = false;
                    got.map_err(Error::or_offline)?
                }
            };
            if std::mem::take(&mut check_tip) && start.is_some_and(|s| cursor < s) {
                // The hub's tip is below the cursor the snapshot started at:
                // it was restored from an older backup (or replaced under the
                // same id). Resuming would pull from a cursor above its tip
                // and skip the changes it logs up to there: start over.
                tracing::warn!(
                    "hub {} is behind the bootstrap that started at {} (tip {}): the snapshot starts over",
                    info.hub_id,
                    start.map_or(0, |s| s.0),
                    cursor.0
                );
                start = None;
                ahead = Some(fetch(None));
                continue;
            }
            let start = *start.get_or_insert(cursor);
            ahead = page.next.clone().map(|n| fetch(Some(n)));
            let last = page.next.is_none();
            self.apply_snapshot_page(page, start, key, &progress_key, me, report)
                .await?;
            if last {
                return Ok(start);
            }
        }
        Err(Error::Corrupt("bootstrap ended without a last page".into()))
    }

    /// The progress of an interrupted bootstrap, if one was stored and can
    /// be read. Starting over is always safe: progress this release cannot
    /// read costs a restart, never a bootstrap that fails for ever.
    async fn progress_of(&self, progress_key: &str) -> Result<Option<BootstrapProgress>> {
        let Some(v) = self.replica.meta(progress_key).await? else {
            return Ok(None);
        };
        Ok(match serde_json::from_str::<BootstrapProgress>(&v) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!("{progress_key} `{v}` unreadable ({e}): the snapshot starts over");
                None
            }
        })
    }

    /// Apply one snapshot page with the bootstrap's progress, or, for the
    /// last page, with the pull cursor `start` under `key` (removing the
    /// progress). `me` is the id whose rows the pages left out: the page
    /// stores progress only while the replica still has it (a page that
    /// left out the rows of an id the replica no longer has would make
    /// them lost).
    async fn apply_snapshot_page(
        &self,
        page: SnapshotPage,
        start: Cursor,
        key: &str,
        progress_key: &str,
        me: crate::model::clock::NodeId,
        report: &mut SyncReport,
    ) -> Result<()> {
        let deltas = page
            .rows
            .into_iter()
            .map(super::pull::delta_of_row)
            .collect::<Vec<_>>();
        match page.next {
            Some(after) => {
                let progress = serde_json::to_string(&BootstrapProgress {
                    start: start.0,
                    after,
                })?;
                let store = [(progress_key, progress.as_str())];
                let meta = PageMeta {
                    store: &store,
                    forget: &[],
                    unpark: &[],
                    node: Some(me),
                    park_raced: true,
                };
                self.apply_page(deltas, meta, report).await
            }
            None => {
                let cursor = start.0.to_string();
                let store = [(key, cursor.as_str())];
                let forget = [progress_key];
                let meta = PageMeta {
                    store: &store,
                    forget: &forget,
                    unpark: &[],
                    node: Some(me),
                    park_raced: true,
                };
                self.apply_page(deltas, meta, report).await
            }
        }
    }
}
