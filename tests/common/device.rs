//! A device of the tests: a SQLite replica of the `people` entities synced
//! with a hub, and the edits the tests make on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{ConnectionTrait, DatabaseConnection, Value};
use tidesync::hub::Hub;
use tidesync::{Replica, SyncEngine, Syncable};
use uuid::Uuid;

use super::{BoxError, Dialect, TestDb, TestResult};

/// A SQLite replica and its engine.
pub struct Device {
    pub local: TestDb,
    pub engine: SyncEngine,
}

/// A device of the entity `E` syncing with the SQL hub on `hub`.
pub async fn device<E>(hub: &TestDb, tag: &str) -> Result<Device, BoxError>
where
    E: Syncable,
    E::Model: Sync,
{
    device_with(hub, tag, |b| b.register::<E>()).await
}

/// A device built by `build`, syncing with the SQL hub on `hub` as the
/// trial's transport reaches it (see [`super::reach`]).
pub async fn device_with(
    hub: &TestDb,
    tag: &str,
    build: impl FnOnce(tidesync::ReplicaBuilder) -> tidesync::ReplicaBuilder,
) -> Result<Device, BoxError> {
    device_on(super::hub_for(hub).await?, tag, build).await
}

/// A device built by `build`, syncing with `hub`.
pub async fn device_on(
    hub: Arc<dyn Hub>,
    tag: &str,
    build: impl FnOnce(tidesync::ReplicaBuilder) -> tidesync::ReplicaBuilder,
) -> Result<Device, BoxError> {
    device_in(TestDb::create(Dialect::Sqlite, tag).await?, hub, build).await
}

/// A device on `local` (any dialect) built by `build`, syncing with `hub`.
pub async fn device_in(
    local: TestDb,
    hub: Arc<dyn Hub>,
    build: impl FnOnce(tidesync::ReplicaBuilder) -> tidesync::ReplicaBuilder,
) -> Result<Device, BoxError> {
    let replica = build(Replica::builder(local.db.clone()))
        .create_tables()
        .open()
        .await?;
    Ok(Device {
        local,
        engine: SyncEngine::new(replica, hub),
    })
}

/// Name, email and phone of a person.
pub type Row = (String, Option<String>, Option<String>);

impl Device {
    pub fn db(&self) -> &DatabaseConnection {
        &self.local.db
    }

    /// The same database with a new engine of entity `E` on `hub` that
    /// pushes and pulls `batch` changes at a time.
    pub async fn batched<E>(self, hub: Arc<dyn Hub>, batch: u64) -> Result<Device, BoxError>
    where
        E: Syncable,
        E::Model: Sync,
    {
        let replica = Replica::builder(self.local.connect_again().await?)
            .register::<E>()
            .open()
            .await?;
        Ok(Device {
            engine: SyncEngine::new(replica, hub).with_batch_size(batch),
            local: self.local,
        })
    }

    pub async fn sync(&self) -> Result<tidesync::SyncReport, BoxError> {
        let r = self.engine.sync_now().await?;
        if r.halted.is_some() || !r.local_errors.is_empty() || !r.rejected.is_empty() {
            return Err(format!("sync reported problems: {r:?}").into());
        }
        Ok(r)
    }

    pub async fn add(&self, name: &str) -> Result<Uuid, BoxError> {
        let id = Uuid::now_v7();
        self.insert(id, name).await?;
        Ok(id)
    }

    /// Insert the person `id` named `name`.
    pub async fn insert(&self, id: Uuid, name: &str) -> TestResult {
        let q = Query::insert()
            .into_table(Alias::new("people"))
            .columns([Alias::new("id"), Alias::new("name")])
            .values_panic([id.into(), name.into()])
            .to_owned();
        self.db().execute(&q).await?;
        Ok(())
    }

    pub async fn set(&self, id: Uuid, column: &str, value: &str) -> TestResult {
        let q = Query::update()
            .table(Alias::new("people"))
            .value(Alias::new(column), value)
            .and_where(Expr::col(Alias::new("id")).eq(id))
            .to_owned();
        self.db().execute(&q).await?;
        Ok(())
    }

    pub async fn delete(&self, id: Uuid) -> TestResult {
        let q = Query::delete()
            .from_table(Alias::new("people"))
            .and_where(Expr::col(Alias::new("id")).eq(id))
            .to_owned();
        self.db().execute(&q).await?;
        Ok(())
    }

    pub async fn rows(&self) -> Result<BTreeMap<Uuid, Row>, BoxError> {
        rows(self.db()).await
    }

    /// Make the device's pending writes look a year old (its wall clock was
    /// a year behind, or it edited a year ago and stayed offline).
    pub async fn age_pending_writes(&self) -> TestResult {
        self.shift_pending_writes(-365 * 24 * 3600 * 1_000_000)
            .await
    }

    /// Move the wall time of the device's pending writes by `us`
    /// microseconds (a clock that was off when they were made).
    pub async fn shift_pending_writes(&self, us: i64) -> TestResult {
        self.db()
            .execute_unprepared(&format!(
                "UPDATE _ts_d_people SET wall_us = wall_us + ({us})"
            ))
            .await?;
        Ok(())
    }

    pub async fn drop(self) -> TestResult {
        self.local.drop().await
    }
}

pub async fn rows(db: &DatabaseConnection) -> Result<BTreeMap<Uuid, Row>, BoxError> {
    let q = Query::select()
        .columns(["id", "name", "email", "phone"].map(Alias::new))
        .from(Alias::new("people"))
        .to_owned();
    let mut out = BTreeMap::new();
    for r in db.query_all(&q).await? {
        out.insert(
            r.try_get::<Uuid>("", "id")?,
            (
                r.try_get("", "name")?,
                r.try_get("", "email")?,
                r.try_get("", "phone")?,
            ),
        );
    }
    Ok(out)
}

/// The id of the conflict held on the row `id`.
pub fn held_id(held: &[tidesync::HeldConflict], id: Uuid) -> Result<i64, BoxError> {
    held.iter()
        .find(|h| h.conflict.pk[0].1 == Value::Uuid(Some(id)))
        .map(|h| h.id)
        .ok_or_else(|| format!("no conflict held on {id}").into())
}

/// `Some(v)` as an owned string.
pub fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}
