//! Events of real life, on every hub dialect: an answer lost after the hub
//! committed, writes that SQLite's `REPLACE` deletes, a row deleted and
//! inserted again between two captures, and more (each test says which).
//! Each one lost a write without a word before it was fixed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::device::{device, device_on};
use common::entities::people_manual;
use common::{TestDb, TestResult, run};
use tidesync::hub::{Cursor, Hub, HubInfo, PullBatch, PushAck, SnapshotPage, SqlHub};
use tidesync::{Change, Error, Resolution, TableSpec};

fn main() -> std::process::ExitCode {
    let trials = trials![held_conflicts_survive_a_lost_answer,];
    run(trials)
}

/// A hub whose answers to the next `lose` pushes are lost after it
/// committed them (the connection dropped, or the device crashed before it
/// read them).
struct AnswerLost {
    inner: SqlHub,
    lose: AtomicUsize,
}

#[async_trait::async_trait]
impl Hub for AnswerLost {
    async fn install(&self, tables: &[TableSpec]) -> tidesync::Result<HubInfo> {
        self.inner.install(tables).await
    }

    async fn push(&self, batch: &[Change]) -> tidesync::Result<PushAck> {
        let ack = self.inner.push(batch).await?;
        let lost = self
            .lose
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match lost {
            Ok(_) => Err(Error::Offline("the answer was lost (test)".into())),
            Err(_) => Ok(ack),
        }
    }

    async fn pull(&self, cursor: Cursor, limit: u64) -> tidesync::Result<PullBatch> {
        self.inner.pull(cursor, limit).await
    }

    async fn snapshot(
        &self,
        after: Option<String>,
        limit: u64,
    ) -> tidesync::Result<(Cursor, SnapshotPage)> {
        self.inner.snapshot(after, limit).await
    }
}

/// Item: a crash after the hub committed a push that held a conflict
/// (policy `manual`). The device sends the push again; the hub answers with
/// the conflict again, so the device holds it and the user decides. Before,
/// the second answer had no conflict: the device dropped the change and its
/// value of the column was gone from everywhere but its own table.
async fn held_conflicts_survive_a_lost_answer(hub: TestDb) -> TestResult {
    let a = device::<people_manual::Entity>(&hub, "a").await?;
    let lossy = Arc::new(AnswerLost {
        inner: SqlHub::new(hub.connect_again().await?),
        lose: AtomicUsize::new(0),
    });
    let b = device_on(lossy.clone(), "b", |r| {
        r.register::<people_manual::Entity>()
    })
    .await?;
    let id = a.add("original").await?;
    a.sync().await?;
    b.sync().await?;
    a.set(id, "name", "a's").await?;
    b.set(id, "name", "b's").await?;
    a.sync().await?;
    lossy.lose.store(1, Ordering::SeqCst);
    let lost = b.engine.sync_now().await;
    ensure!(
        matches!(lost, Err(Error::Offline(_))),
        "the answer is lost: {lost:?}"
    );
    let r = b.sync().await?;
    ensure_eq!(r.conflicts.len(), 1, "the conflict comes back: {r:?}");
    let held = b.engine.replica().conflicts().await?;
    ensure_eq!(held.len(), 1);
    ensure_eq!(held[0].conflict.local, sea_orm::Value::from("b's"));
    // A later push does not bring it back once the device holds it.
    b.add("another").await?;
    let r = b.sync().await?;
    ensure!(r.conflicts.is_empty(), "held once: {r:?}");
    b.engine
        .replica()
        .resolve(held[0].id, Resolution::KeepLocal)
        .await?;
    b.sync().await?;
    a.sync().await?;
    for d in [&a, &b] {
        ensure_eq!(d.rows().await?[&id].0, "b's", "the held value is kept");
    }
    a.drop().await?;
    b.drop().await?;
    hub.drop().await
}
