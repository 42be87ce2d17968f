//! Databases written by earlier releases (`tests/fixtures/format1` and
//! `format2`: a SQLite hub and two devices with changes captured and not
//! pushed, writes only marked, a deleted row) opened by this one: every
//! write arrives everywhere and the devices go on syncing.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::device::{device, device_in};
use common::entities::{contacts, memberships, people_lww, people_merge};
use common::{BoxError, Dialect, TestDb, TestResult};
use libtest_mimic::Trial;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectionTrait, Database, DatabaseConnection, DbBackend,
    EntityTrait,
};
use tidesync::hub::{Hub, SqlHub};
use tidesync::{Hlc, NodeId, Replica, SyncEngine, SyncReport};
use uuid::Uuid;

fn main() -> std::process::ExitCode {
    let mut trials: Vec<Trial> = ["format1", "format2"]
        .into_iter()
        .map(|format| {
            Trial::test(
                format!("sqlite::{format}_databases_keep_syncing"),
                move || {
                    common::block_on(databases_keep_syncing(format))
                        .map_err(|e| e.to_string().into())
                },
            )
        })
        .collect();
    trials.extend(direct_trials![
        format1_states_are_converted,
        format1_hub_states_are_moved
    ]);
    common::run(trials)
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + n)
}

/// A copy of the fixture `name` of `format` in a fresh directory,
/// connected.
async fn open_copy(format: &str, dir: &Path, name: &str) -> Result<DatabaseConnection, BoxError> {
    let path = dir.join(name);
    std::fs::copy(Path::new("tests/fixtures").join(format).join(name), &path)?;
    Ok(Database::connect(format!("sqlite://{}?mode=rw", path.display())).await?)
}

async fn fixture_device(db: DatabaseConnection, hub: Arc<dyn Hub>) -> Result<SyncEngine, BoxError> {
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

/// The databases of `format` (`tests/fixtures/<format>`, written by the
/// release that wrote that format) opened by this one.
async fn databases_keep_syncing(format: &str) -> TestResult {
    let dir =
        std::env::temp_dir().join(format!("tidesync-upgrade-{format}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let hub_db = open_copy(format, &dir, "hub.db").await?;
    let hub: Arc<dyn Hub> = Arc::new(SqlHub::new(hub_db.clone()));
    let a = fixture_device(open_copy(format, &dir, "a.db").await?, hub.clone()).await?;
    let b = fixture_device(open_copy(format, &dir, "b.db").await?, hub.clone()).await?;
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
    // The hub's states moved to its version tables (hub schema version
    // 3), those of rows pushed since into their users' rows, and a new
    // device bootstraps from them.
    ensure!(
        hub_db
            .execute_unprepared("SELECT vals FROM _tidesync_hub_rows")
            .await
            .is_err(),
        "_tidesync_hub_rows still holds states"
    );
    let left = common::count_rows(&hub_db, "_tidesync_hub_rows_v1").await?;
    let moved = common::hub_state_count(&hub_db, "people").await?;
    let version = common::read_meta_of(&hub_db, "_tidesync_hub_meta", "schema_version").await?;
    if left != 0 || moved < 4 || version.as_deref() != Some("6") {
        return Err(format!(
            "hub states: {left} left in _tidesync_hub_rows_v1, {moved} states of \
             people, schema version {version:?}"
        )
        .into());
    }
    let fresh = Database::connect("sqlite::memory:").await?;
    for create in [
        tidesync::create_table::<people_merge::Entity, _>(&fresh).await,
        tidesync::create_table::<contacts::Entity, _>(&fresh).await,
        tidesync::create_table::<memberships::Entity, _>(&fresh).await,
    ] {
        create?;
    }
    let c = fixture_device(fresh, hub.clone()).await?;
    sync(&c).await?;
    let cdb = c.replica().connection();
    if people(cdb).await? != want || !contact_names(cdb).await?.is_empty() {
        return Err(format!("a new device's people: {:?}", people(cdb).await?).into());
    }
    if roles(cdb).await? != [("g1".to_owned(), id(20), "owner".to_owned())] {
        return Err(format!("a new device's memberships: {:?}", roles(cdb).await?).into());
    }
    drop((a, b, c));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Format 1's table of row states, as that release created it.
fn format1_rows_ddl(kind: DbBackend) -> String {
    format1_table_ddl(kind, "_tidesync_rows")
}

/// DDL of a row-state table of format 1 named `name` (a replica's
/// `_tidesync_rows`, a hub's `_tidesync_hub_rows`).
fn format1_table_ddl(kind: DbBackend, name: &str) -> String {
    match kind {
        DbBackend::MySql => format!(
            "CREATE TABLE `{name}` ( `tbl` varchar(64) NOT NULL, `pk` varchar(700) NOT NULL, \
             `vals` LONGTEXT NOT NULL, `clocks` LONGTEXT NOT NULL, `deleted_at` varchar(64) NULL, \
             `live` bool NOT NULL, `pk_full` LONGTEXT NULL, PRIMARY KEY (`tbl`, `pk`) ) \
             CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        ),
        _ => format!(
            r#"CREATE TABLE "{name}" ( "tbl" varchar(64) NOT NULL, "pk" varchar(700) NOT NULL, "vals" text NOT NULL, "clocks" text NOT NULL, "deleted_at" varchar(64) NULL, "live" boolean NOT NULL, "pk_full" text NULL, PRIMARY KEY ("tbl", "pk") )"#
        ),
    }
}

/// Rows of a format 1 row-state table: each (key, values, clocks, delete
/// clock or `NULL`, live) of a `people` row, as typed JSON.
fn format1_states_sql(
    kind: DbBackend,
    table: &str,
    states: &[(Uuid, String, String, String, bool)],
) -> String {
    let q = |n: &str| common::quote(kind, n);
    let (yes, no) = match kind {
        DbBackend::Postgres => ("TRUE", "FALSE"),
        _ => ("1", "0"),
    };
    let rows: Vec<String> = states
        .iter()
        .map(|(k, v, c, d, live)| {
            let live = if *live { yes } else { no };
            format!("('people', '[{{\"Uuid\":\"{k}\"}}]', '{v}', '{c}', {d}, {live})")
        })
        .collect();
    format!(
        "INSERT INTO {} ({}, {}, {}, {}, {}, {}) VALUES {}",
        q(table),
        q("tbl"),
        q("pk"),
        q("vals"),
        q("clocks"),
        q("deleted_at"),
        q("live"),
        rows.join(", ")
    )
}

/// A person's values as format 1's typed JSON.
fn format1_person(id: Uuid, name: &str, email: Option<&str>) -> String {
    let email = match email {
        Some(e) => format!(r#"{{"String":"{e}"}}"#),
        None => r#"{"String":null}"#.to_owned(),
    };
    format!(
        r#"{{"email":{email},"id":{{"Uuid":"{id}"}},"name":{{"String":"{name}"}},"phone":{{"String":null}}}}"#
    )
}

/// A hub on each dialect whose row states are put back into format 1
/// (typed JSON in `_tidesync_hub_rows`, hub schema version 2, no version
/// rows) with clocks of the test's choosing, then installed again by this
/// release: the states are in the version table (a new device bootstraps
/// them; a write older than a moved clock loses, a newer one wins), the old
/// table is renamed (and a table a server of the earlier release cannot
/// use takes its name: it fails instead of writing states nobody reads) and
/// left with only a state it cannot read, the schema version is 3. The old
/// table made again with an older state in it: merged at the next install,
/// it loses to the version row's newer clocks.
async fn format1_hub_states_are_moved(hub_db: TestDb) -> TestResult {
    use common::device::device_on;
    hub_db.create_table(people_lww::Entity).await?;
    let hub = || async {
        Ok::<_, BoxError>(Arc::new(SqlHub::new(hub_db.connect_again().await?)) as Arc<dyn Hub>)
    };
    let a = device_on(hub().await?, "hub_upgrade_a", |b| {
        b.register::<people_lww::Entity>()
    })
    .await?;
    let (ada, brian) = (id(1), id(2));
    a.insert(ada, "Ada").await?;
    a.set(ada, "email", "ada@x").await?;
    a.insert(brian, "Brian").await?;
    a.sync().await?;
    a.delete(brian).await?;
    a.sync().await?;
    // Back to format 1, with a name clock a day old, an email clock of its
    // own and a delete clock.
    let kind = hub_db.backend();
    let q = |n: &str| common::quote(kind, n);
    let node = NodeId([7; 16]);
    let now_us = u64::try_from(chrono::Utc::now().timestamp_micros())?;
    let day: u64 = 24 * 3600 * 1_000_000;
    let clock = |ago: u64| Hlc {
        physical: now_us - ago,
        logical: 0,
        node,
    };
    let (h_name, h_email, h_dead) = (clock(day), clock(day / 2), clock(day / 4));
    let db = &hub_db.db;
    for sql in [
        format!("DELETE FROM {}", q("_ts_hv_people")),
        format!(
            "UPDATE {} SET _tidesync_seq = NULL, _tidesync_clocks = NULL, _tidesync_del = NULL, \
             _tidesync_sole = NULL, _tidesync_owner = NULL, _tidesync_forms = NULL",
            q("people")
        ),
        format!("DELETE FROM {}", q("_tidesync_hub_columns")),
        format!("DELETE FROM {}", q("_tidesync_hub_versioned_v6")),
        format1_table_ddl(kind, "_tidesync_hub_rows"),
        format1_states_sql(
            kind,
            "_tidesync_hub_rows",
            &[
                (
                    ada,
                    format1_person(ada, "Ada", Some("ada@x")),
                    format!(r#"{{"":"{h_name}","email":"{h_email}"}}"#),
                    "NULL".into(),
                    true,
                ),
                (
                    brian,
                    format1_person(brian, "Brian", None),
                    format!(r#"{{"":"{h_name}"}}"#),
                    format!("'{h_dead}'"),
                    false,
                ),
                // A state whose JSON is garbled: left behind.
                (
                    id(3),
                    r#"{"name": "#.into(),
                    "{}".into(),
                    "NULL".into(),
                    true,
                ),
            ],
        ),
    ] {
        db.execute_unprepared(&sql).await?;
    }
    common::set_meta(db, "_tidesync_hub_meta", "schema_version", "2").await?;

    // This release installs: a new device bootstraps what moved.
    let b = device_on(hub().await?, "hub_upgrade_b", |b| {
        b.register::<people_lww::Entity>()
    })
    .await?;
    b.sync().await?;
    let v = common::read_meta_of(db, "_tidesync_hub_meta", "schema_version").await?;
    ensure_eq!(
        v.as_deref(),
        Some("6"),
        "hub schema version after the upgrade"
    );
    // In its place, a table a server of the earlier release cannot use:
    // its install and its pushes fail.
    ensure!(
        // Unquoted: SQLite takes a double-quoted name it does not know for
        // a string.
        db.execute_unprepared("SELECT vals FROM _tidesync_hub_rows")
            .await
            .is_err(),
        "_tidesync_hub_rows still holds states"
    );
    ensure_eq!(
        common::count_rows(db, "_tidesync_hub_rows_v1").await?,
        1,
        "states left behind: only the garbled one"
    );
    ensure_eq!(
        common::hub_state_count(db, "people").await?,
        2,
        "row states, the deleted row's among them"
    );
    let rows = b.rows().await?;
    ensure_eq!(
        rows.get(&ada).map(|r| (r.0.as_str(), r.1.as_deref())),
        Some(("Ada", Some("ada@x"))),
        "Ada bootstrapped from the moved state"
    );
    ensure!(!rows.contains_key(&brian), "Brian bootstrapped as live");

    // A state of format 1 still in `_tidesync_hub_rows_v1` (of a table no
    // install of this release has moved yet, as an install that stopped
    // midway leaves it) is served first by a snapshot of a server that
    // never saw an install: its key is named as the hub records it, not by
    // position.
    let dora = id(4);
    db.execute_unprepared(&format1_states_sql(
        kind,
        "_tidesync_hub_rows_v1",
        &[(
            dora,
            format1_person(dora, "Dora", None),
            format!(r#"{{"":"{h_name}"}}"#),
            "NULL".into(),
            true,
        )],
    ))
    .await?;
    let unseen = SqlHub::new(hub_db.connect_again().await?);
    let (_, page) = unseen.snapshot(None, 100).await?;
    let first = page.rows.first().ok_or("an empty snapshot")?;
    let names: Vec<&str> = first.pk.iter().map(|(n, _)| n.as_str()).collect();
    ensure_eq!(
        (first.table.as_str(), names),
        ("people", vec!["id"]),
        "the format-1 state's key as the hub records it"
    );
    ensure!(
        format!("{:?}", first.pk).contains(&dora.to_string()),
        "the first row is Dora's: {:?}",
        first.pk
    );
    db.execute_unprepared(&format!(
        "DELETE FROM {} WHERE {} LIKE '%{dora}%'",
        q("_tidesync_hub_rows_v1"),
        q("pk")
    ))
    .await?;
    ensure_eq!(
        common::count_rows(db, "_tidesync_hub_rows_v1").await?,
        1,
        "Dora's state taken out again, the garbled one left"
    );

    // The old table made again by hand (in the placeholder's place) with
    // an older state of Ada: the next install merges it, and it loses.
    db.execute_unprepared(&format!("DROP TABLE {}", q("_tidesync_hub_rows")))
        .await?;
    db.execute_unprepared(&format1_table_ddl(kind, "_tidesync_hub_rows"))
        .await?;
    let stale = clock(3 * day);
    db.execute_unprepared(&format1_states_sql(
        kind,
        "_tidesync_hub_rows",
        &[(
            ada,
            format1_person(ada, "Stale", Some("stale@x")),
            format!(r#"{{"":"{stale}"}}"#),
            "NULL".into(),
            true,
        )],
    ))
    .await?;
    // The moved clocks hold: a write made (by its clock) two days ago on
    // a device that had seen nothing loses to the name's clock of a day
    // ago; one made now wins over the email's.
    let c = device_on(hub().await?, "hub_upgrade_c", |b| {
        b.register::<people_lww::Entity>()
    })
    .await?;
    c.insert(ada, "Old name").await?;
    c.shift_pending_writes(-2 * i64::try_from(day)?).await?;
    c.sync().await?;
    ensure_eq!(
        common::count_rows(db, "_tidesync_hub_rows").await?,
        0,
        "the stale state moved"
    );
    b.set(ada, "email", "new@b").await?;
    b.sync().await?;
    c.sync().await?;
    for (who, d) in [("b", &b), ("c", &c)] {
        let rows = d.rows().await?;
        let got = rows.get(&ada).ok_or("Ada is gone")?;
        ensure_eq!(got.0.as_str(), "Ada", "{who}: the name's moved clock lost");
        ensure_eq!(got.1.as_deref(), Some("new@b"), "{who}: a newer email");
        ensure!(!rows.contains_key(&brian), "{who}: Brian came back");
    }
    a.drop().await?;
    b.drop().await?;
    c.drop().await?;
    hub_db.drop().await
}

/// A replica on each dialect whose row states are put back into format 1
/// (JSON in `_tidesync_rows`, schema version 1, no version table) with
/// clocks of the test's choosing, then opened again: the states are in the
/// version table (nothing differs from the rows, and a pulled write older
/// than a converted clock loses), the old table is empty, the schema
/// version is 2.
async fn format1_states_are_converted(t: TestDb) -> TestResult {
    let hub_db = TestDb::create(Dialect::Sqlite, "upgrade_hub").await?;
    hub_db.create_table(people_lww::Entity).await?;
    let hub = common::hub_for(&hub_db).await?;
    let a = device_in(t, hub.clone(), |b| b.register::<people_lww::Entity>()).await?;
    let (ada, brian) = (id(1), id(2));
    a.insert(ada, "Ada").await?;
    a.set(ada, "email", "ada@x").await?;
    a.insert(brian, "Brian").await?;
    a.sync().await?;
    a.delete(brian).await?;
    a.sync().await?;
    let kind = a.local.backend();
    let q = |n: &str| common::quote(kind, n);
    // Back to format 1, with a name clock a day old, an email clock of its
    // own and a delete clock.
    let node = NodeId([7; 16]);
    let now_us = u64::try_from(chrono::Utc::now().timestamp_micros())?;
    let day: u64 = 24 * 3600 * 1_000_000;
    let clock = |ago: u64| Hlc {
        physical: now_us - ago,
        logical: 0,
        node,
    };
    let (h_name, h_email, h_dead) = (clock(day), clock(day / 2), clock(day / 4));
    let db = a.db();
    db.execute_unprepared(&format!("DROP TABLE {}", q("_ts_v_people")))
        .await?;
    db.execute_unprepared(&format!("DELETE FROM {}", q("_tidesync_columns")))
        .await?;
    db.execute_unprepared(&format1_rows_ddl(kind)).await?;
    let uuid = |u: Uuid| format!(r#"{{"Uuid":"{u}"}}"#);
    let vals = |u: Uuid, name: &str, email: &str| {
        format!(
            r#"{{"email":{email},"id":{},"name":{{"String":"{name}"}},"phone":{{"String":null}}}}"#,
            uuid(u)
        )
    };
    let (yes, no) = match kind {
        DbBackend::Postgres => ("TRUE", "FALSE"),
        _ => ("1", "0"),
    };
    // Each state: key, values, clocks, delete clock, live.
    let insert = |states: &[(Uuid, String, String, String, &str)]| {
        let rows: Vec<String> = states
            .iter()
            .map(|(k, v, c, d, live)| {
                format!("('people', '[{}]', '{v}', '{c}', {d}, {live})", uuid(*k))
            })
            .collect();
        format!(
            "INSERT INTO {} ({}, {}, {}, {}, {}, {}) VALUES {}",
            q("_tidesync_rows"),
            q("tbl"),
            q("pk"),
            q("vals"),
            q("clocks"),
            q("deleted_at"),
            q("live"),
            rows.join(", ")
        )
    };
    db.execute_unprepared(&insert(&[
        (
            ada,
            vals(ada, "Ada", r#"{"String":"ada@x"}"#),
            format!(r#"{{"":"{h_name}","email":"{h_email}"}}"#),
            "NULL".into(),
            yes,
        ),
        (
            brian,
            vals(brian, "Brian", r#"{"String":null}"#),
            format!(r#"{{"":"{h_name}"}}"#),
            format!("'{h_dead}'"),
            no,
        ),
        // And a state whose JSON is garbled: left behind, the rest
        // converted.
        (
            id(3),
            r#"{"name": "#.into(),
            "{}".into(),
            "NULL".into(),
            yes,
        ),
    ]))
    .await?;
    common::write_meta(db, "schema_version", "1").await?;
    // This release opens it.
    let a = a.batched::<people_lww::Entity>(hub.clone(), 100).await?;
    let db = a.db();
    let v = common::read_meta(db, "schema_version").await?;
    ensure_eq!(v.as_deref(), Some("2"), "schema version after the upgrade");
    // The old table is renamed, so a process of format 1 still running
    // fails instead of working from states that moved.
    ensure!(
        common::count_rows(db, "_tidesync_rows").await.is_err(),
        "_tidesync_rows is still there"
    );
    ensure_eq!(
        common::count_rows(db, "_tidesync_rows_v1").await?,
        1,
        "states left behind: only the garbled one"
    );
    ensure_eq!(
        common::count_rows(db, "_ts_v_people").await?,
        2,
        "version rows, the deleted row's among them"
    );
    // The states hold the rows' values: nothing to reconcile.
    let r = a.engine.replica().reconcile().await?;
    ensure_eq!(r.marked, 0, "changes reconcile found after the upgrade");
    // A process of format 1 that opened the database since made its table
    // again and left an older state of Ada there: merged, it loses to the
    // version row's newer clocks instead of replacing them.
    db.execute_unprepared(&format1_rows_ddl(kind)).await?;
    let stale = clock(3 * day);
    db.execute_unprepared(&insert(&[(
        ada,
        vals(ada, "Stale", r#"{"String":"stale@x"}"#),
        format!(r#"{{"":"{stale}"}}"#),
        "NULL".into(),
        yes,
    )]))
    .await?;
    let a = a.batched::<people_lww::Entity>(hub.clone(), 100).await?;
    let db = a.db();
    ensure_eq!(
        common::count_rows(db, "_tidesync_rows").await?,
        0,
        "the stale state moved"
    );
    let r = a.engine.replica().reconcile().await?;
    ensure_eq!(r.marked, 0, "a stale state replaced a newer one");
    // The converted clocks hold: a write made (by its clock) two days ago
    // on another device that had seen nothing loses to the name's clock of
    // a day ago; one made now wins over the email's.
    let b = device::<people_lww::Entity>(&hub_db, "upgrade_b").await?;
    b.insert(ada, "Old name").await?;
    b.shift_pending_writes(-2 * i64::try_from(day)?).await?;
    b.sync().await?;
    b.set(ada, "email", "new@b").await?;
    b.sync().await?;
    a.sync().await?;
    let rows = a.rows().await?;
    let got = rows.get(&ada).ok_or("Ada is gone")?;
    ensure_eq!(got.0.as_str(), "Ada", "the name's converted clock lost");
    ensure_eq!(got.1.as_deref(), Some("new@b"), "a newer email");
    ensure!(!rows.contains_key(&brian), "Brian came back");
    a.drop().await?;
    b.drop().await?;
    hub_db.drop().await
}
