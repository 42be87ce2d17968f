//! Databases written by an earlier release (`tests/fixtures/format1`: a
//! SQLite hub and two devices with changes captured and not pushed, writes
//! only marked, a deleted row) opened by this one: every write arrives
//! everywhere and the devices go on syncing.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::entities::{contacts, memberships, people_merge};
use common::{BoxError, TestResult};
use libtest_mimic::Trial;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, Database, DatabaseConnection, EntityTrait};
use tidesync::hub::{Hub, SqlHub};
use tidesync::{Replica, SyncEngine, SyncReport};
use uuid::Uuid;

fn main() -> std::process::ExitCode {
    common::run(vec![Trial::test(
        "sqlite::format1_databases_keep_syncing",
        || common::block_on(format1_databases_keep_syncing()).map_err(|e| e.to_string().into()),
    )])
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + n)
}

/// A copy of the fixture `name` in a fresh directory, connected.
async fn open_copy(dir: &Path, name: &str) -> Result<DatabaseConnection, BoxError> {
    let path = dir.join(name);
    std::fs::copy(Path::new("tests/fixtures/format1").join(name), &path)?;
    Ok(Database::connect(format!("sqlite://{}?mode=rw", path.display())).await?)
}

async fn device(db: DatabaseConnection, hub: Arc<dyn Hub>) -> Result<SyncEngine, BoxError> {
    let replica = Replica::builder(db)
        .register::<people_merge::Entity>()
        .register::<contacts::Entity>()
        .register::<memberships::Entity>()
        .open()
        .await?;
    Ok(SyncEngine::new(replica, hub))
}

async fn sync(e: &SyncEngine) -> Result<SyncReport, BoxError> {
    let r = e.sync_now().await?;
    if r.halted.is_some() || !r.local_errors.is_empty() || !r.rejected.is_empty() {
        return Err(format!("sync reported problems: {r:?}").into());
    }
    Ok(r)
}

type People = BTreeMap<Uuid, (String, Option<String>, Option<String>)>;

async fn people(db: &DatabaseConnection) -> Result<People, BoxError> {
    Ok(people_merge::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|p| (p.id, (p.name, p.email, p.phone)))
        .collect())
}

async fn roles(db: &DatabaseConnection) -> Result<Vec<(String, Uuid, String)>, BoxError> {
    Ok(memberships::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|m| (m.group_id, m.user_id, m.role))
        .collect())
}

async fn contact_names(db: &DatabaseConnection) -> Result<Vec<(Uuid, String)>, BoxError> {
    Ok(contacts::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|c| (c.id, c.name))
        .collect())
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

async fn format1_databases_keep_syncing() -> TestResult {
    let dir = std::env::temp_dir().join(format!("tidesync-upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let hub_db = open_copy(&dir, "hub.db").await?;
    let hub: Arc<dyn Hub> = Arc::new(SqlHub::new(hub_db.clone()));
    let a = device(open_copy(&dir, "a.db").await?, hub.clone()).await?;
    let b = device(open_copy(&dir, "b.db").await?, hub.clone()).await?;
    let (adb, bdb) = (a.replica().connection(), b.replica().connection());

    // What each device captured or only marked before the upgrade arrives
    // everywhere.
    sync(&a).await?;
    sync(&b).await?;
    sync(&a).await?;
    let want: People = [
        (id(1), ("Ada".into(), s("ada@a"), s("111"))),
        (id(3), ("Chloe".into(), s("Chloe@old"), s("333"))),
        (id(4), ("Dima".into(), s("Dmitri@old"), None)),
    ]
    .into_iter()
    .collect();
    for (who, db) in [("a", adb), ("b", bdb), ("hub", &hub_db)] {
        if people(db).await? != want {
            return Err(format!("{who}'s people: {:?}", people(db).await?).into());
        }
        let r = roles(db).await?;
        if r != [("g1".to_owned(), id(20), "owner".to_owned())] {
            return Err(format!("{who}'s memberships: {r:?}").into());
        }
    }

    // Then they go on: edits of other columns of one row on both sides
    // merge, a delete, an insert, and the deleted person brought back.
    people_merge::ActiveModel {
        id: Set(id(1)),
        name: Set("Ada L".into()),
        ..Default::default()
    }
    .update(adb)
    .await?;
    people_merge::ActiveModel {
        id: Set(id(1)),
        email: Set(s("ada@b")),
        ..Default::default()
    }
    .update(bdb)
    .await?;
    contacts::Entity::delete_by_id(id(10)).exec(bdb).await?;
    people_merge::ActiveModel {
        id: Set(id(2)),
        name: Set("Brian again".into()),
        email: Set(None),
        phone: Set(None),
    }
    .insert(adb)
    .await?;
    sync(&a).await?;
    sync(&b).await?;
    sync(&a).await?;
    let mut want = want;
    want.insert(id(1), ("Ada L".into(), s("ada@b"), s("111")));
    want.insert(id(2), ("Brian again".into(), None, None));
    for (who, db) in [("a", adb), ("b", bdb), ("hub", &hub_db)] {
        if people(db).await? != want {
            return Err(format!("{who}'s people after: {:?}", people(db).await?).into());
        }
        let c = contact_names(db).await?;
        if !c.is_empty() {
            return Err(format!("{who}'s contacts after the delete: {c:?}").into());
        }
    }
    for (who, e) in [("a", &a), ("b", &b)] {
        let n = e.replica().pending_count().await?;
        if n != 0 {
            return Err(format!("{who} has {n} writes pending after syncing").into());
        }
    }
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
