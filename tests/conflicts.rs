//! Conflict policies on every hub dialect: `lww`, `merge`, `manual`, a
//! custom resolver, delete against update, a device back after a year, and
//! schema evolution (a newer client adds a column).
//!
//! Every test runs twice: with devices on the hub database (direct), and
//! with each device reaching it through a hub server of its own over HTTP
//! (`::http`). None runs direct only.

mod common;

use common::device::{Device, device, device_with, held_id, rows, s};
use common::entities::{people_lww, people_manual, people_merge, people_v2};
use common::{BoxError, TestDb, TestResult, run};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{ConnectionTrait, EntityTrait, Value};
use tidesync::{ColumnConflict, Resolution, Syncable};
use uuid::Uuid;

fn main() -> std::process::ExitCode {
    common::over_every_transport();
    let trials = trials![
        lww_and_merge_keep_disjoint_edits,
        merge_settles_same_column_by_clock_and_reports_it,
        back_after_a_year_lww_and_merge_keep_later_edits,
        back_after_a_year_manual_raises_a_conflict,
        manual_conflict_is_held_then_resolved_three_ways,
        resolve_keeps_local_edits_made_after_the_conflict,
        custom_resolver_settles_on_the_replica,
        delete_against_concurrent_update_is_one_rule,
        newer_client_adds_a_column,
        a_change_from_the_future_is_refused_and_stamped_again_once_the_clock_is_right,
        two_edits_from_the_future_stamped_again_are_no_conflict,
        two_held_edits_of_a_column_in_one_batch_are_one_decision,
    ];
    run(trials)
}

async fn lww_and_merge_keep_disjoint_edits(hub: TestDb) -> TestResult {
    for (i, merge) in [false, true].into_iter().enumerate() {
        let (a, b) = if merge {
            (
                device::<people_merge::Entity>(&hub, "a").await?,
                device::<people_merge::Entity>(&hub, "b").await?,
            )
        } else {
            (
                device::<people_lww::Entity>(&hub, "a").await?,
                device::<people_lww::Entity>(&hub, "b").await?,
            )
        };
        let id = a.add(&format!("ada {i}")).await?;
        a.sync().await?;
        b.sync().await?;
        // Offline on both: a changes the phone, b the email.
        a.set(id, "phone", "555-0100").await?;
        b.set(id, "email", "ada@example.org").await?;
        a.sync().await?;
        let rb = b.sync().await?;
        a.sync().await?;
        ensure!(
            rb.settled.is_empty() && rb.conflicts.is_empty(),
            "disjoint columns are not conflicts: {rb:?}"
        );
        let want = (format!("ada {i}"), s("ada@example.org"), s("555-0100"));
        ensure_eq!(a.rows().await?[&id], want);
        ensure_eq!(b.rows().await?[&id], want);
        a.drop().await?;
        b.drop().await?;
    }
    hub.drop().await
}

async fn merge_settles_same_column_by_clock_and_reports_it(hub: TestDb) -> TestResult {
    let a = device::<people_merge::Entity>(&hub, "a").await?;
    let b = device::<people_merge::Entity>(&hub, "b").await?;
    let id = a.add("x").await?;
    a.sync().await?;
    b.sync().await?;
    b.set(id, "name", "b's earlier edit").await?;
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    a.set(id, "name", "a's later edit").await?;
    a.sync().await?;
    let rb = b.sync().await?;
    ensure_eq!(
        rb.settled.len(),
        1,
        "the concurrent edit is reported: {rb:?}"
    );
    ensure_eq!(rb.settled[0].column, "name");
    ensure_eq!(rb.settled[0].base, Some(Value::String(Some("x".into()))));
    a.sync().await?;
    for d in [&a, &b] {
        ensure_eq!(
            d.rows().await?[&id].0,
            "a's later edit",
            "settled by the clock, everywhere"
        );
    }
    a.drop().await?;
    b.drop().await?;
    hub.drop().await
}

/// A device edits, stays offline a year while others edit the same column
/// later, then syncs.
async fn year_old_edit<E>(hub: &TestDb) -> Result<(Device, Device, Device, Uuid), BoxError>
where
    E: Syncable,
    E::Model: Sync,
{
    let a = device::<E>(hub, "a").await?;
    let b = device::<E>(hub, "b").await?;
    let old = device::<E>(hub, "old").await?;
    let id = a.add("original").await?;
    a.sync().await?;
    b.sync().await?;
    old.sync().await?;
    old.set(id, "name", "a year old").await?;
    old.age_pending_writes().await?;
    old.engine.replica().capture().await?; // captured with its year-old clock
    a.set(id, "name", "recent a").await?;
    a.sync().await?;
    b.sync().await?;
    b.set(id, "name", "recent b").await?;
    b.sync().await?;
    Ok((a, b, old, id))
}

async fn back_after_a_year_lww_and_merge_keep_later_edits(hub: TestDb) -> TestResult {
    for merge in [false, true] {
        let (a, b, old, id) = if merge {
            year_old_edit::<people_merge::Entity>(&hub).await?
        } else {
            year_old_edit::<people_lww::Entity>(&hub).await?
        };
        old.sync().await?;
        a.sync().await?;
        b.sync().await?;
        for d in [&a, &b, &old] {
            ensure_eq!(
                d.rows().await?[&id].0,
                "recent b",
                "the later edit survives (merge: {merge})"
            );
        }
        for d in [a, b, old] {
            d.drop().await?;
        }
        let hub_db = &hub.db;
        hub_db.execute_unprepared("DELETE FROM people").await?;
    }
    hub.drop().await
}

async fn back_after_a_year_manual_raises_a_conflict(hub: TestDb) -> TestResult {
    let (a, b, old, id) = year_old_edit::<people_manual::Entity>(&hub).await?;
    let r = old.sync().await?;
    ensure_eq!(r.conflicts.len(), 1, "{r:?}");
    let held = old.engine.replica().conflicts().await?;
    ensure_eq!(held.len(), 1);
    let c = &held[0].conflict;
    ensure_eq!(
        (
            c.column.as_str(),
            c.base.clone(),
            c.local.clone(),
            c.remote.clone()
        ),
        (
            "name",
            Some(Value::String(Some("original".into()))),
            Value::String(Some("a year old".into())),
            Value::String(Some("recent b".into()))
        )
    );
    ensure_eq!(
        old.rows().await?[&id].0,
        "a year old",
        "the local edit stays visible locally"
    );
    a.sync().await?;
    ensure_eq!(
        a.rows().await?[&id].0,
        "recent b",
        "but is held back from everyone else"
    );
    for d in [a, b, old] {
        d.drop().await?;
    }
    hub.drop().await
}

async fn manual_conflict_is_held_then_resolved_three_ways(hub: TestDb) -> TestResult {
    let a = device::<people_manual::Entity>(&hub, "a").await?;
    let b = device::<people_manual::Entity>(&hub, "b").await?;
    let ids = [
        a.add("one").await?,
        a.add("two").await?,
        a.add("three").await?,
    ];
    a.sync().await?;
    b.sync().await?;
    for (i, id) in ids.iter().enumerate() {
        a.set(*id, "email", &format!("a{i}@x")).await?;
        b.set(*id, "email", &format!("b{i}@x")).await?;
    }
    // Meanwhile a disjoint edit on b, and a new row: they sync regardless.
    b.set(ids[0], "phone", "b-phone").await?;
    let other = b.add("unrelated").await?;
    a.sync().await?;
    let rb = b.sync().await?;
    ensure_eq!(rb.conflicts.len(), 3, "{rb:?}");
    a.sync().await?;
    let ra = a.rows().await?;
    ensure_eq!(
        ra[&ids[0]],
        ("one".to_string(), s("a0@x"), s("b-phone")),
        "other columns keep syncing"
    );
    ensure_eq!(
        ra.get(&other),
        Some(&("unrelated".to_string(), None, None)),
        "other rows keep syncing"
    );
    // Resolve: keep local, take remote, given value.
    let held = b.engine.replica().conflicts().await?;
    ensure_eq!(held.len(), 3);
    let by_row = |id: Uuid| held_id(&held, id);
    let replica = b.engine.replica();
    replica
        .resolve(by_row(ids[0])?, Resolution::KeepLocal)
        .await?;
    replica
        .resolve(by_row(ids[1])?, Resolution::TakeRemote)
        .await?;
    replica
        .resolve(
            by_row(ids[2])?,
            Resolution::Value(Value::String(Some("merged@x".into()))),
        )
        .await?;
    ensure!(replica.conflicts().await?.is_empty(), "all resolved");
    b.sync().await?;
    a.sync().await?;
    let want = [s("b0@x"), s("a1@x"), s("merged@x")];
    for d in [&a, &b] {
        let rows = d.rows().await?;
        for (id, email) in ids.iter().zip(&want) {
            ensure_eq!(&rows[id].1, email, "resolution reached every replica");
        }
    }
    ensure!(
        replica.resolve(12345, Resolution::KeepLocal).await.is_err(),
        "unknown id is an error"
    );
    a.drop().await?;
    b.drop().await?;
    hub.drop().await
}

/// An edit of the held column made after the conflict was recorded, and not
/// captured yet, is the local value a resolution keeps; taking the remote
/// value does not drop it in silence either: it goes out and meets the
/// remote value again as a new conflict.
async fn resolve_keeps_local_edits_made_after_the_conflict(hub: TestDb) -> TestResult {
    let a = device::<people_manual::Entity>(&hub, "a").await?;
    let b = device::<people_manual::Entity>(&hub, "b").await?;
    let ids = [a.add("one").await?, a.add("two").await?];
    a.sync().await?;
    b.sync().await?;
    for (i, id) in ids.iter().enumerate() {
        a.set(*id, "email", &format!("a{i}@x")).await?;
        b.set(*id, "email", &format!("b{i}@x")).await?;
    }
    a.sync().await?;
    ensure_eq!(b.sync().await?.conflicts.len(), 2);
    // The user edits the held column again; no sync, no capture since.
    b.set(ids[0], "email", "b0-later@x").await?;
    b.set(ids[1], "email", "b1-later@x").await?;
    let replica = b.engine.replica();
    let held = replica.conflicts().await?;
    let by_row = |id: Uuid| held_id(&held, id);
    replica
        .resolve(by_row(ids[0])?, Resolution::KeepLocal)
        .await?;
    replica
        .resolve(by_row(ids[1])?, Resolution::TakeRemote)
        .await?;
    let rb = b.engine.sync_now().await?;
    a.sync().await?;
    // Kept: the latest local value, everywhere.
    for d in [&a, &b] {
        ensure_eq!(
            d.rows().await?[&ids[0]].1,
            s("b0-later@x"),
            "keep-local keeps the edit made after the conflict"
        );
    }
    // Taken remote: the later local edit still went out, and meets the
    // remote value as a conflict again instead of vanishing.
    let again: Vec<_> = rb
        .conflicts
        .iter()
        .filter(|c| c.pk[0].1 == Value::Uuid(Some(ids[1])))
        .collect();
    ensure_eq!(again.len(), 1, "{rb:?}");
    ensure_eq!(again[0].local, Value::String(Some("b1-later@x".into())));
    ensure_eq!(again[0].remote, Value::String(Some("a1@x".into())));
    a.drop().await?;
    b.drop().await?;
    hub.drop().await
}

/// A device whose clock was a day ahead when it made a change, and is right
/// now. The hub refuses the change (stamped a day ahead, it would win every
/// edit of the column for a day, and carry its time to every clock); the
/// report names the device and says its clock was wrong. The device's
/// clock is right now, so it stamps the change again at its present time
/// and pushes it in the same sync. Before, the change (and every later one,
/// stamped after it by a clock that never goes back) stayed refused until
/// real time caught up. A later edit elsewhere then wins, and no clock
/// takes the bad time. (A device whose clock is still ahead keeps its
/// changes queued, `WrongClock::still_ahead`; its clock cannot be set
/// wrong in this test, so a unit test of the engine covers that decision.)
async fn a_change_from_the_future_is_refused_and_stamped_again_once_the_clock_is_right(
    hub: TestDb,
) -> TestResult {
    let a = device::<people_lww::Entity>(&hub, "a").await?;
    let b = device::<people_lww::Entity>(&hub, "b").await?;
    let id = a.add("one").await?;
    a.sync().await?;
    b.sync().await?;
    a.set(id, "email", "from-the-future@x").await?;
    a.shift_pending_writes(24 * 3600 * 1_000_000).await?;
    let ra = a.engine.sync_now().await?;
    let wrong = ra
        .wrong_clock
        .clone()
        .ok_or("the change from the future was not refused")?;
    let me = a.engine.replica().node_id();
    ensure!(
        wrong.refused.id.origin == me
            && !wrong.still_ahead
            && wrong.restamped == 1
            && wrong.ahead >= std::time::Duration::from_secs(23 * 3600),
        "{wrong:?}"
    );
    ensure!(
        wrong
            .to_string()
            .contains(&format!("the clock of device {me} was wrong")),
        "{wrong}"
    );
    ensure!(
        ra.halted.is_none() && ra.pushed == 1,
        "pushed again: {ra:?}"
    );
    ensure_eq!(a.engine.replica().pending_count().await?, 0);
    let now_us = || -> Result<u64, BoxError> {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_micros() as u64)
    };
    // a's clock went back: its next change is stamped now, and wins over
    // its own earlier edit everywhere.
    a.set(id, "email", "a-again@x").await?;
    a.engine.replica().capture().await?;
    let change = a.engine.replica().pending(1).await?.remove(0);
    ensure!(
        change.hlc.physical < now_us()? + 60_000_000,
        "a's clock stayed ahead: {}",
        change.hlc.physical
    );
    a.sync().await?;
    let c = device::<people_lww::Entity>(&hub, "c").await?;
    c.sync().await?;
    ensure_eq!(c.rows().await?[&id].1, s("a-again@x"));
    // A later edit on another device wins everywhere.
    b.set(id, "email", "b@x").await?;
    b.sync().await?;
    a.sync().await?;
    c.sync().await?;
    for d in [&a, &c] {
        ensure_eq!(d.rows().await?[&id].1, s("b@x"));
    }
    // No clock took the bad time: c's next change is stamped now.
    c.set(id, "phone", "c-phone").await?;
    c.engine.replica().capture().await?;
    let change = c.engine.replica().pending(1).await?.remove(0);
    ensure!(
        change.hlc.physical < now_us()? + 60_000_000,
        "c's clock jumped: {}",
        change.hlc.physical
    );
    for d in [a, b, c] {
        d.drop().await?;
    }
    hub.drop().await
}

/// A resolver that keeps both values: "local / remote", sorted (the same
/// answer on every replica).
fn both(c: &ColumnConflict) -> Option<Resolution> {
    match (&c.local, &c.remote) {
        (Value::String(Some(l)), Value::String(Some(r))) => {
            let mut v = [l.clone(), r.clone()];
            v.sort();
            Some(Resolution::Value(Value::String(Some(v.join(" / ")))))
        }
        _ => None,
    }
}

/// Review finding (item 3): two edits of one column in one pushed batch,
/// both held back by the hub against another device's edit, under a
/// resolver. One decision is made, on the later edit. Before, the resolver
/// decided on the earlier edit (its answer overwrote the later one), then
/// the sync failed on the conflict it had just resolved, at every sync.
async fn two_held_edits_of_a_column_in_one_batch_are_one_decision(hub: TestDb) -> TestResult {
    let a = device_with(&hub, "a", |b| {
        b.register::<people_manual::Entity>()
            .resolver::<people_manual::Entity>(both)
    })
    .await?;
    let b = device_with(&hub, "b", |b| {
        b.register::<people_manual::Entity>()
            .resolver::<people_manual::Entity>(both)
    })
    .await?;
    let id = a.add("n").await?;
    a.sync().await?;
    b.sync().await?;
    a.set(id, "name", "from a").await?;
    a.sync().await?;
    b.set(id, "name", "b1").await?;
    b.engine.replica().capture().await?;
    b.set(id, "name", "b2").await?;
    let rb = b.sync().await?;
    ensure_eq!(rb.resolved, 1, "{rb:?}");
    a.sync().await?;
    b.sync().await?;
    for d in [&a, &b] {
        ensure_eq!(d.rows().await?[&id].0, "b2 / from a");
    }
    a.drop().await?;
    b.drop().await?;
    hub.drop().await
}

async fn custom_resolver_settles_on_the_replica(hub: TestDb) -> TestResult {
    let a = device_with(&hub, "a", |b| {
        b.register::<people_manual::Entity>()
            .resolver::<people_manual::Entity>(both)
    })
    .await?;
    let b = device_with(&hub, "b", |b| {
        b.register::<people_manual::Entity>()
            .resolver::<people_manual::Entity>(both)
    })
    .await?;
    let id = a.add("n").await?;
    a.sync().await?;
    b.sync().await?;
    a.set(id, "name", "from a").await?;
    b.set(id, "name", "from b").await?;
    a.sync().await?;
    let rb = b.sync().await?;
    ensure_eq!(rb.resolved, 1, "{rb:?}");
    ensure!(rb.conflicts.is_empty(), "nothing left for the user");
    a.sync().await?;
    for d in [&a, &b] {
        ensure_eq!(d.rows().await?[&id].0, "from a / from b");
    }
    a.drop().await?;
    b.drop().await?;
    hub.drop().await
}

async fn delete_against_concurrent_update_is_one_rule(hub: TestDb) -> TestResult {
    // The same rule under every policy: the delete wins unless the update is later.
    for policy in 0..3 {
        let mk = |tag: &'static str| {
            let hub = &hub;
            async move {
                match policy {
                    0 => device::<people_lww::Entity>(hub, tag).await,
                    1 => device::<people_merge::Entity>(hub, tag).await,
                    _ => device::<people_manual::Entity>(hub, tag).await,
                }
            }
        };
        let a = mk("a").await?;
        let b = mk("b").await?;
        let early = a.add("updated before the delete").await?;
        let late = a.add("updated after the delete").await?;
        a.sync().await?;
        b.sync().await?;
        b.set(early, "phone", "early").await?;
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        a.delete(early).await?;
        a.delete(late).await?;
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        b.set(late, "phone", "late").await?;
        b.sync().await?;
        a.sync().await?;
        b.sync().await?;
        for d in [&a, &b] {
            let rows = d.rows().await?;
            ensure!(
                !rows.contains_key(&early),
                "policy {policy}: the later delete wins"
            );
            ensure_eq!(
                rows.get(&late).map(|r| r.2.clone()),
                Some(s("late")),
                "policy {policy}: the later update wins"
            );
        }
        a.drop().await?;
        b.drop().await?;
        hub.db.execute_unprepared("DELETE FROM people").await?;
    }
    hub.drop().await
}

async fn newer_client_adds_a_column(hub: TestDb) -> TestResult {
    let old = device::<people_lww::Entity>(&hub, "old").await?;
    let id = old.add("from the old client").await?;
    old.sync().await?; // the hub's table is created without `nickname`
    let new = device::<people_v2::Entity>(&hub, "new").await?;
    new.sync().await?; // adds the column on the hub
    new.db()
        .execute(
            &Query::update()
                .table(Alias::new("people"))
                .value(Alias::new("nickname"), "nick")
                .and_where(Expr::col(Alias::new("id")).eq(id))
                .to_owned(),
        )
        .await?;
    let fresh = new.add("from the new client").await?;
    new.sync().await?;
    // The old client keeps syncing and editing the same rows.
    old.sync().await?;
    old.set(id, "name", "renamed by the old client").await?;
    old.set(fresh, "email", "old@x").await?;
    old.sync().await?;
    new.sync().await?;
    let m = people_v2::Entity::find_by_id(id)
        .one(new.db())
        .await?
        .ok_or("row")?;
    ensure_eq!(
        (m.name.as_str(), m.nickname.as_deref()),
        ("renamed by the old client", Some("nick")),
        "the old client's edit keeps the new column"
    );
    let on_hub = people_v2::Entity::find_by_id(id)
        .one(&hub.db)
        .await?
        .ok_or("hub row")?;
    ensure_eq!(on_hub.nickname.as_deref(), Some("nick"));
    ensure_eq!(rows(old.db()).await?[&fresh].1, s("old@x"));
    let f = people_v2::Entity::find_by_id(fresh)
        .one(new.db())
        .await?
        .ok_or("fresh")?;
    ensure_eq!(f.email.as_deref(), Some("old@x"));
    // The new client deletes the row; the old one, which has never had
    // the column, brings it back: the hub's row and the new client keep
    // the value the column had (the last known one), not a NULL.
    people_v2::Entity::delete_by_id(id).exec(new.db()).await?;
    new.sync().await?;
    old.sync().await?;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    sea_orm::ActiveModelTrait::insert(
        people_lww::ActiveModel {
            id: sea_orm::ActiveValue::Set(id),
            name: sea_orm::ActiveValue::Set("back".into()),
            email: sea_orm::ActiveValue::Set(None),
            phone: sea_orm::ActiveValue::Set(None),
        },
        old.db(),
    )
    .await?;
    old.sync().await?;
    new.sync().await?;
    for (db, who) in [(&hub.db, "the hub"), (new.db(), "the new client")] {
        let m = people_v2::Entity::find_by_id(id)
            .one(db)
            .await?
            .ok_or("row back")?;
        ensure_eq!(
            (m.name.as_str(), m.nickname.as_deref()),
            ("back", Some("nick")),
            "{who}"
        );
    }
    old.drop().await?;
    new.drop().await?;
    hub.drop().await
}

/// Review of item 8: two edits of one column made while the device's clock
/// was ahead (policy `manual`). The second change's base is the first's
/// clock. Stamped again, the bases must follow: before, the second kept
/// the old future clock as its base, and the hub held a conflict of the
/// device with itself.
async fn two_edits_from_the_future_stamped_again_are_no_conflict(hub: TestDb) -> TestResult {
    let a = device::<people_manual::Entity>(&hub, "a").await?;
    let id = a.add("one").await?;
    a.sync().await?;
    for email in ["first@x", "second@x"] {
        a.set(id, "email", email).await?;
        a.shift_pending_writes(24 * 3600 * 1_000_000).await?;
        a.engine.replica().capture().await?;
    }
    let r = a.engine.sync_now().await?;
    ensure!(
        r.wrong_clock.as_ref().is_some_and(|w| w.restamped == 2) && r.halted.is_none(),
        "{r:?}"
    );
    ensure!(r.conflicts.is_empty(), "no conflict with itself: {r:?}");
    let c = device::<people_manual::Entity>(&hub, "c").await?;
    c.sync().await?;
    ensure_eq!(c.rows().await?[&id].1, s("second@x"));
    a.drop().await?;
    c.drop().await?;
    hub.drop().await
}
