//! Capture on every dialect: each SeaORM write path, transactions, raw SQL,
//! reconcile, idempotent install, the clock across restarts, bad values.

mod common;

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use common::entities::{
    contacts, counters, keyed_by_offset, keyed_by_time, memberships, namesake_column, namesake_key,
    namesakes, readings, rowid_key,
};
use common::{Dialect, TestDb, TestResult, run};
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::Value as SqValue;
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, IntoActiveModel, QueryFilter, Statement, TransactionTrait,
};
use tidesync::{Change, Op, Replica};

fn main() -> std::process::ExitCode {
    let trials = trials![
        database_errors_are_classified,
        active_model_insert_update_delete,
        save_and_model_delete,
        transaction_commit_is_captured,
        transaction_rollback_leaves_nothing,
        entity_insert_exec,
        insert_many,
        update_many,
        delete_many_and_delete_by_id,
        entity_update_exec,
        raw_sql_is_captured,
        skipped_column_is_never_captured,
        composite_key_change_is_delete_then_insert,
        reconcile_finds_writes_behind_our_back,
        reconcile_pages_through_tables_of_several_pages,
        install_is_idempotent_and_versioned,
        clock_never_goes_backwards_across_restarts,
        nan_is_refused_naming_table_column_value,
        u64_above_i64_max_is_refused_without_panic,
        overlong_string_is_refused,
        bulk_nan_is_reported_and_kept_until_fixed,
        concurrent_writes_during_capture_are_not_lost,
        columns_named_as_tidesyncs_own_are_captured,
        keys_stored_otherwise_than_their_states_seal_updates_and_deletes,
        a_key_named_rowid_is_captured,
        rows_of_odd_keys_marked_whole_are_captured_once,
    ];
    run(trials)
}

async fn setup(t: &TestDb) -> Result<Replica, common::BoxError> {
    t.create_table(contacts::Entity).await?;
    t.create_table(memberships::Entity).await?;
    t.create_table(readings::Entity).await?;
    Ok(open(t).await?)
}

/// A replica of the three tables on `t` (installing its triggers).
async fn open(t: &TestDb) -> tidesync::Result<Replica> {
    Replica::builder(t.db.clone())
        .register::<contacts::Entity>()
        .register::<memberships::Entity>()
        .register::<readings::Entity>()
        .open()
        .await
}

fn contact(name: &str) -> contacts::ActiveModel {
    contacts::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set(name.to_owned()),
        email: Set(Some(format!("{name}@example.com"))),
        last_opened: Set(None),
        updated_at: Set(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()),
    }
}

/// Capture and return what was captured by that pass.
async fn captured(r: &Replica) -> Result<Vec<Change>, common::BoxError> {
    let before = r.pending(u64::MAX).await?.len();
    let report = r.capture().await?;
    ensure!(
        report.rejected.is_empty(),
        "unexpected rejections: {:?}",
        report.rejected
    );
    let all = r.pending(u64::MAX).await?;
    ensure_eq!(
        all.len() - before,
        report.captured,
        "report count vs outbox"
    );
    Ok(all[before..].to_vec())
}

fn cols(c: &Change) -> Vec<&str> {
    c.columns.iter().map(|(n, _)| n.as_str()).collect()
}

fn col<'a>(c: &'a Change, name: &str) -> Option<&'a SqValue> {
    c.columns.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

fn pk_uuid(c: &Change) -> Option<Uuid> {
    match c.pk.first() {
        Some((_, SqValue::Uuid(Some(u)))) => Some(*u),
        _ => None,
    }
}

async fn active_model_insert_update_delete(t: TestDb) -> TestResult {
    let r = setup(&t).await?;
    let m = contact("ada").insert(&t.db).await?;
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 1);
    ensure_eq!(c[0].op, Op::Insert);
    ensure_eq!(c[0].table, "contacts");
    ensure_eq!(pk_uuid(&c[0]), Some(m.id));
    ensure_eq!(cols(&c[0]), vec!["id", "name", "email", "updated_at"]);
    ensure_eq!(
        col(&c[0], "name"),
        Some(&SqValue::String(Some("ada".into())))
    );
    ensure_eq!(c[0].id.origin, r.node_id());
    ensure_eq!(c[0].id.seq, 1);

    let mut am = m.clone().into_active_model();
    am.name = Set("ada lovelace".into());
    let m = am.update(&t.db).await?;
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 1);
    ensure_eq!(c[0].op, Op::Update);
    ensure_eq!(cols(&c[0]), vec!["name"]);
    ensure_eq!(c[0].id.seq, 2);

    let am = m.into_active_model();
    am.delete(&t.db).await?;
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 1);
    ensure_eq!(c[0].op, Op::Delete);
    ensure!(c[0].columns.is_empty(), "delete carries no columns");
    ensure!(captured(&r).await?.is_empty(), "nothing left to capture");
    t.drop().await
}

async fn save_and_model_delete(t: TestDb) -> TestResult {
    let r = setup(&t).await?;
    // With a key minted on the client, `save` on a new model would be an
    // UPDATE (SeaORM decides by whether the key is set): insert, then save.
    let am = contact("bob").insert(&t.db).await?.into_active_model();
    let mut am2 = am.clone();
    am2.email = Set(None);
    let am2 = am2.save(&t.db).await?; // update through save
    let c = captured(&r).await?;
    // Two writes before one capture coalesce into one insert with the latest values.
    ensure_eq!(c.len(), 1);
    ensure_eq!(c[0].op, Op::Insert);
    ensure_eq!(col(&c[0], "email"), Some(&SqValue::String(None)));
    let mut am3 = am2.clone();
    am3.name = Set("robert".into());
    am3.save(&t.db).await?;
    let c = captured(&r).await?;
    ensure_eq!(
        (c.len(), c[0].op, cols(&c[0])),
        (1, Op::Update, vec!["name"])
    );

    let id = am2.id.clone().unwrap();
    let model = contacts::Entity::find_by_id(id)
        .one(&t.db)
        .await?
        .ok_or("row")?;
    model.delete(&t.db).await?; // ModelTrait::delete
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 1);
    ensure_eq!(c[0].op, Op::Delete);
    ensure_eq!(pk_uuid(&c[0]), Some(id));
    t.drop().await
}

async fn transaction_commit_is_captured(t: TestDb) -> TestResult {
    let r = setup(&t).await?;
    let tx = t.db.begin().await?;
    let a = contact("in-tx-a").insert(&tx).await?;
    let b = contact("in-tx-b").insert(&tx).await?;
    let mut am = a.clone().into_active_model();
    am.name = Set("in-tx-a2".into());
    am.update(&tx).await?;
    tx.commit().await?;
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 2);
    let mut names: Vec<_> = c.iter().map(|c| col(c, "name").cloned()).collect();
    names.sort_by_key(|v| format!("{v:?}"));
    ensure_eq!(
        names,
        vec![
            Some(SqValue::String(Some("in-tx-a2".into()))),
            Some(SqValue::String(Some("in-tx-b".into())))
        ]
    );
    ensure!(c.iter().any(|c| pk_uuid(c) == Some(b.id)), "b captured");
    t.drop().await
}

async fn transaction_rollback_leaves_nothing(t: TestDb) -> TestResult {
    let r = setup(&t).await?;
    let kept = contact("kept").insert(&t.db).await?;
    captured(&r).await?;
    let tx = t.db.begin().await?;
    contact("ghost").insert(&tx).await?;
    contacts::Entity::delete_by_id(kept.id).exec(&tx).await?;
    contacts::Entity::insert_many([contact("ghost2"), contact("ghost3")])
        .exec(&tx)
        .await?;
    tx.rollback().await?;
    ensure_eq!(
        r.pending_count().await?,
        1,
        "only the committed insert is pending"
    );
    ensure!(
        captured(&r).await?.is_empty(),
        "rolled-back writes leave no change"
    );
    t.drop().await
}

async fn entity_insert_exec(t: TestDb) -> TestResult {
    let r = setup(&t).await?;
    let am = contact("exec");
    let id = am.id.clone().unwrap();
    contacts::Entity::insert(am).exec(&t.db).await?;
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 1);
    ensure_eq!((c[0].op, pk_uuid(&c[0])), (Op::Insert, Some(id)));
    t.drop().await
}

/// `insert_many` is captured as one insert per row, each with its own row's
/// key and values, in a gap-free sequence with an increasing clock.
async fn insert_many(t: TestDb) -> TestResult {
    let r = setup(&t).await?;
    let rows: Vec<_> = (0..25).map(|i| contact(&format!("many{i}"))).collect();
    let names: BTreeMap<Uuid, String> = rows
        .iter()
        .map(|am| (am.id.clone().unwrap(), am.name.clone().unwrap()))
        .collect();
    contacts::Entity::insert_many(rows).exec(&t.db).await?;
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 25);
    ensure!(c.iter().all(|c| c.op == Op::Insert), "all inserts");
    let got: BTreeMap<Uuid, String> = c
        .iter()
        .map(|c| match (pk_uuid(c), col(c, "name"), col(c, "email")) {
            (Some(id), Some(SqValue::String(Some(n))), Some(SqValue::String(Some(e))))
                if *e == format!("{n}@example.com") =>
            {
                Ok((id, n.clone()))
            }
            _ => Err(format!(
                "a change without its row's key, name and email: {c:?}"
            )),
        })
        .collect::<Result<_, _>>()?;
    ensure_eq!(got, names, "each change carries its own row");
    let seqs: Vec<u64> = c.iter().map(|c| c.id.seq).collect();
    ensure_eq!(seqs, (1..=25).collect::<Vec<u64>>(), "gap-free sequence");
    ensure!(
        c.windows(2).all(|w| w[0].hlc < w[1].hlc),
        "clock increases with sequence"
    );
    t.drop().await
}

async fn update_many(t: TestDb) -> TestResult {
    let r = setup(&t).await?;
    contacts::Entity::insert_many((0..10).map(|i| contact(&format!("u{i}"))))
        .exec(&t.db)
        .await?;
    captured(&r).await?;
    contacts::Entity::update_many()
        .col_expr(contacts::Column::Email, Expr::value("bulk@example.com"))
        .filter(contacts::Column::Name.is_in(["u1", "u2", "u3"]))
        .exec(&t.db)
        .await?;
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 3);
    for ch in &c {
        ensure_eq!(ch.op, Op::Update);
        ensure_eq!(cols(ch), vec!["email"]);
        ensure_eq!(
            col(ch, "email"),
            Some(&SqValue::String(Some("bulk@example.com".into())))
        );
    }
    t.drop().await
}

/// `delete_many` and `delete_by_id` are captured as deletes of exactly the
/// rows they deleted.
async fn delete_many_and_delete_by_id(t: TestDb) -> TestResult {
    let r = setup(&t).await?;
    let rows: Vec<_> = (0..6).map(|i| contact(&format!("d{i}"))).collect();
    let ids: Vec<Uuid> = rows.iter().map(|am| am.id.clone().unwrap()).collect();
    let first = ids[0];
    contacts::Entity::insert_many(rows).exec(&t.db).await?;
    captured(&r).await?;
    contacts::Entity::delete_many()
        .filter(contacts::Column::Name.is_in(["d1", "d2"]))
        .exec(&t.db)
        .await?;
    contacts::Entity::delete_by_id(first).exec(&t.db).await?;
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 3);
    ensure!(c.iter().all(|c| c.op == Op::Delete), "all deletes");
    let deleted: std::collections::BTreeSet<Uuid> = c.iter().filter_map(pk_uuid).collect();
    ensure_eq!(
        deleted,
        [first, ids[1], ids[2]].into_iter().collect(),
        "the deletes of d1 and d2 (delete_many) and d0 (delete_by_id)"
    );
    t.drop().await
}

async fn entity_update_exec(t: TestDb) -> TestResult {
    let r = setup(&t).await?;
    let m = contact("before").insert(&t.db).await?;
    captured(&r).await?;
    let mut am = m.into_active_model();
    am.name = Set("after".into());
    contacts::Entity::update(am).exec(&t.db).await?;
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 1);
    ensure_eq!(
        col(&c[0], "name"),
        Some(&SqValue::String(Some("after".into())))
    );
    t.drop().await
}

async fn raw_sql_is_captured(t: TestDb) -> TestResult {
    let r = setup(&t).await?;
    // Another program, another connection, plain SQL.
    let other = t.connect_again().await?;
    let sql = match t.dialect {
        Dialect::Postgres => {
            "INSERT INTO memberships (group_id, user_id, role) VALUES ('g', '00000000-0000-0000-0000-000000000001', 'raw')"
        }
        _ => "",
    };
    if sql.is_empty() {
        // UUIDs are stored as bytes by SeaORM on SQLite and MySQL: bind it.
        other
            .execute_raw(Statement::from_sql_and_values(
                t.backend(),
                match t.dialect {
                    Dialect::MySql => {
                        "INSERT INTO memberships (group_id, user_id, role) VALUES (?, ?, ?)"
                    }
                    _ => "INSERT INTO memberships (group_id, user_id, role) VALUES ($1, $2, $3)",
                },
                ["g".into(), Uuid::from_u128(1).into(), "raw".into()],
            ))
            .await?;
    } else {
        other.execute_unprepared(sql).await?;
    }
    other
        .execute_unprepared("UPDATE memberships SET role = 'edited' WHERE group_id = 'g'")
        .await?;
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 1);
    ensure_eq!(c[0].op, Op::Insert);
    ensure_eq!(
        col(&c[0], "role"),
        Some(&SqValue::String(Some("edited".into())))
    );
    ensure_eq!(
        c[0].pk,
        vec![
            ("group_id".to_string(), SqValue::String(Some("g".into()))),
            (
                "user_id".to_string(),
                SqValue::Uuid(Some(Uuid::from_u128(1)))
            ),
        ]
    );
    other.execute_unprepared("DELETE FROM memberships").await?;
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 1);
    ensure_eq!(c[0].op, Op::Delete);
    other.close().await?;
    t.drop().await
}

async fn skipped_column_is_never_captured(t: TestDb) -> TestResult {
    let r = setup(&t).await?;
    let m = contact("skip").insert(&t.db).await?;
    captured(&r).await?;
    let mut am = m.into_active_model();
    am.last_opened = Set(Some(Utc::now()));
    am.update(&t.db).await?;
    ensure!(
        captured(&r).await?.is_empty(),
        "a local-only column change is not a change"
    );
    ensure!(
        r.tables().next().unwrap().column("last_opened").is_none(),
        "not in the spec"
    );
    t.drop().await
}

async fn composite_key_change_is_delete_then_insert(t: TestDb) -> TestResult {
    let r = setup(&t).await?;
    let user = Uuid::now_v7();
    memberships::ActiveModel {
        group_id: Set("admins".into()),
        user_id: Set(user),
        role: Set("owner".into()),
    }
    .insert(&t.db)
    .await?;
    captured(&r).await?;
    memberships::Entity::update_many()
        .col_expr(memberships::Column::GroupId, Expr::value("staff"))
        .filter(memberships::Column::UserId.eq(user))
        .exec(&t.db)
        .await?;
    let mut c = captured(&r).await?;
    c.sort_by_key(|c| c.op.as_str());
    ensure_eq!(c.len(), 2);
    ensure_eq!(c[0].op, Op::Delete);
    ensure_eq!(c[0].pk[0].1, SqValue::String(Some("admins".into())));
    ensure_eq!(c[1].op, Op::Insert);
    ensure_eq!(c[1].pk[0].1, SqValue::String(Some("staff".into())));
    t.drop().await
}

/// Drop tidesync's capture triggers of `table` (as a migration might).
async fn drop_triggers(t: &TestDb, table: &str) -> TestResult {
    let drop_sql: Vec<String> = match t.dialect {
        Dialect::Postgres => vec![format!("DROP TRIGGER _ts_cap_{table} ON {table}")],
        _ => {
            let list = match t.dialect {
                Dialect::Sqlite => format!(
                    "SELECT name AS n FROM sqlite_master WHERE type = 'trigger' AND tbl_name = '{table}'"
                ),
                _ => format!(
                    "SELECT TRIGGER_NAME AS n FROM information_schema.TRIGGERS \
                     WHERE TRIGGER_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = '{table}'"
                ),
            };
            let mut names = Vec::new();
            for r in
                t.db.query_all_raw(sea_orm::Statement::from_string(t.backend(), list))
                    .await?
            {
                names.push(format!("DROP TRIGGER {}", r.try_get::<String>("", "n")?));
            }
            ensure_eq!(names.len(), 3, "{names:?}");
            names
        }
    };
    for s in drop_sql {
        t.db.execute_unprepared(&s).await?;
    }
    Ok(())
}

/// Reconcile reads tables of several pages (500 rows a page), with a
/// single key and with a composite one, and finds what changed behind its
/// back on each page: rows edited, deleted and added.
async fn reconcile_pages_through_tables_of_several_pages(t: TestDb) -> TestResult {
    use sea_orm::{ColumnTrait, QueryFilter};
    const N: usize = 1100;
    t.create_table(contacts::Entity).await?;
    t.create_table(memberships::Entity).await?;
    t.create_table(readings::Entity).await?;
    let people: Vec<contacts::ActiveModel> = (0..N).map(|i| contact(&format!("c{i}"))).collect();
    let ids: Vec<Uuid> = people.iter().map(|p| p.id.clone().unwrap()).collect();
    for chunk in people.chunks(250) {
        contacts::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(&t.db)
            .await?;
    }
    let group = |i: usize| format!("g{}", i % 7);
    for chunk in (0..N).collect::<Vec<_>>().chunks(250) {
        memberships::Entity::insert_many(chunk.iter().map(|&i| memberships::ActiveModel {
            group_id: Set(group(i)),
            user_id: Set(ids[i]),
            role: Set("member".into()),
        }))
        .exec_without_returning(&t.db)
        .await?;
    }
    let r = open(&t).await?;
    let found = r.reconcile().await?;
    ensure_eq!(found.marked, 2 * N, "every pre-existing row");
    ensure_eq!(
        found.marked_whole,
        vec!["contacts", "memberships", "readings"],
        "tables never captured are marked whole"
    );
    ensure_eq!(
        r.pending_count().await?,
        2 * N as u64,
        "marked, not captured yet"
    );
    ensure_eq!(r.capture().await?.captured, 2 * N, "every pre-existing row");
    let again = r.reconcile().await?;
    ensure_eq!(
        (again.marked, again.marked_whole),
        (0, vec!["readings".to_owned()]),
        "nothing twice: the tables with states are read page by page"
    );
    ensure_eq!(r.capture().await?.captured, 0, "nothing twice");

    drop_triggers(&t, "contacts").await?;
    drop_triggers(&t, "memberships").await?;
    let pick = |m: usize, k: usize| -> Vec<usize> { (0..N).filter(|i| i % m == k).collect() };
    let (edited, deleted) = (pick(100, 1), pick(150, 2));
    contacts::Entity::update_many()
        .col_expr(
            contacts::Column::Name,
            Expr::value("edited behind our back"),
        )
        .filter(contacts::Column::Id.is_in(edited.iter().map(|&i| ids[i])))
        .exec(&t.db)
        .await?;
    contacts::Entity::delete_many()
        .filter(contacts::Column::Id.is_in(deleted.iter().map(|&i| ids[i])))
        .exec(&t.db)
        .await?;
    let mut added = Vec::new();
    for i in 0..3 {
        added.push(contact(&format!("new{i}")).insert(&t.db).await?.id);
    }
    let (promoted, left) = (pick(90, 3), pick(120, 4));
    for &i in &promoted {
        memberships::Entity::update_many()
            .col_expr(memberships::Column::Role, Expr::value("admin"))
            .filter(memberships::Column::GroupId.eq(group(i)))
            .filter(memberships::Column::UserId.eq(ids[i]))
            .exec(&t.db)
            .await?;
    }
    for &i in &left {
        memberships::Entity::delete_many()
            .filter(memberships::Column::GroupId.eq(group(i)))
            .filter(memberships::Column::UserId.eq(ids[i]))
            .exec(&t.db)
            .await?;
    }

    let r = open(&t).await?; // reinstalls the triggers
    let before = r.pending(u64::MAX).await?.len();
    let found = r.reconcile().await?;
    let report = r.capture().await?;
    let c = r.pending(u64::MAX).await?[before..].to_vec();
    ensure_eq!(report.captured, c.len());
    ensure_eq!(found.marked, c.len(), "each row marked is one change");
    let of = |table: &str, op: Op| -> Vec<&Change> {
        c.iter()
            .filter(|x| x.table == table && x.op == op)
            .collect()
    };
    let uuids = |v: Vec<&Change>| -> Vec<Uuid> {
        let mut u: Vec<Uuid> = v.iter().filter_map(|c| pk_uuid(c)).collect();
        u.sort();
        u
    };
    let sorted = |v: Vec<Uuid>| {
        let mut v = v;
        v.sort();
        v
    };
    ensure_eq!(
        uuids(of("contacts", Op::Update)),
        sorted(edited.iter().map(|&i| ids[i]).collect())
    );
    ensure!(
        of("contacts", Op::Update)
            .iter()
            .all(|c| cols(c) == ["name"]),
        "only the edited column"
    );
    ensure_eq!(
        uuids(of("contacts", Op::Delete)),
        sorted(deleted.iter().map(|&i| ids[i]).collect())
    );
    ensure_eq!(uuids(of("contacts", Op::Insert)), sorted(added));
    let members = |op: Op| -> Vec<(String, Uuid)> {
        let mut v: Vec<(String, Uuid)> = of("memberships", op)
            .iter()
            .filter_map(|c| match (&c.pk[0].1, &c.pk[1].1) {
                (SqValue::String(Some(g)), SqValue::Uuid(Some(u))) => Some((g.clone(), *u)),
                _ => None,
            })
            .collect();
        v.sort();
        v
    };
    let expect = |v: &[usize]| -> Vec<(String, Uuid)> {
        let mut e: Vec<(String, Uuid)> = v.iter().map(|&i| (group(i), ids[i])).collect();
        e.sort();
        e
    };
    ensure_eq!(members(Op::Update), expect(&promoted));
    ensure_eq!(members(Op::Delete), expect(&left));
    ensure_eq!(
        c.len(),
        edited.len() + deleted.len() + 3 + promoted.len() + left.len(),
        "nothing else"
    );
    ensure_eq!(
        r.reconcile().await?.marked,
        0,
        "a second reconcile finds nothing"
    );
    t.drop().await
}

async fn reconcile_finds_writes_behind_our_back(t: TestDb) -> TestResult {
    t.create_table(contacts::Entity).await?;
    t.create_table(memberships::Entity).await?;
    t.create_table(readings::Entity).await?;
    // Rows that exist before tidesync is installed.
    let old = contact("pre-existing").insert(&t.db).await?;
    let gone = contact("will-vanish").insert(&t.db).await?;
    let r = open(&t).await?;
    ensure!(
        captured(&r).await?.is_empty(),
        "triggers do not see the past"
    );
    // A write through the triggers before the first reconcile: its row
    // has a marker already, which marking the table whole bumps (its
    // version), without taking its time back (the write's, here made to
    // be an hour ahead of the reconcile's).
    let mut am = old.clone().into_active_model();
    am.name = Set("edited through the triggers".into());
    let old = am.update(&t.db).await?;
    let later = Utc::now().timestamp_micros() + 3_600_000_000;
    t.db.execute_unprepared(&format!("UPDATE _ts_d_contacts SET wall_us = {later}"))
        .await?;
    let marker = || async {
        let r =
            t.db.query_one_raw(sea_orm::Statement::from_string(
                t.db.get_database_backend(),
                "SELECT ver, wall_us FROM _ts_d_contacts ORDER BY wall_us DESC, ver DESC",
            ))
            .await?
            .ok_or("no marker")?;
        Ok::<_, common::BoxError>((r.try_get_by_index::<i64>(0)?, r.try_get_by_index::<i64>(1)?))
    };
    let (ver, _) = marker().await?;
    let found = r.reconcile().await?;
    ensure_eq!(
        marker().await?,
        (ver + 1, later),
        "the marker bumped, its time kept"
    );
    ensure_eq!(found.marked, 2, "reconcile marks pre-existing rows");
    ensure_eq!(found.marked_whole.len(), 3, "no table had states");
    let report = r.capture().await?;
    ensure_eq!(report.captured, 2, "and they are captured");
    let c = r.pending(u64::MAX).await?;
    let names: BTreeMap<Option<Uuid>, Option<&SqValue>> =
        c.iter().map(|c| (pk_uuid(c), col(c, "name"))).collect();
    let (edited, vanishing) = (
        SqValue::from("edited through the triggers"),
        SqValue::from("will-vanish"),
    );
    ensure_eq!(
        names,
        BTreeMap::from([
            (Some(old.id), Some(&edited)),
            (Some(gone.id), Some(&vanishing)),
        ]),
        "each row once, as it is now"
    );

    // Writes with the triggers gone (dropped by a migration, say).
    drop_triggers(&t, "contacts").await?;
    let mut am = old.clone().into_active_model();
    am.name = Set("edited behind our back".into());
    am.update(&t.db).await?;
    contacts::Entity::delete_by_id(gone.id).exec(&t.db).await?;
    let fresh = contact("unseen").insert(&t.db).await?;
    ensure!(captured(&r).await?.is_empty(), "no trigger, no marker");

    let r = open(&t).await?; // reinstalls the triggers
    let before = r.pending(u64::MAX).await?.len();
    ensure_eq!(r.reconcile().await?.marked, 3);
    let report = r.capture().await?;
    ensure_eq!(report.captured, 3);
    let c = r.pending(u64::MAX).await?[before..].to_vec();
    let by_id: BTreeMap<Uuid, &Change> = c.iter().map(|c| (pk_uuid(c).unwrap(), c)).collect();
    ensure_eq!(by_id[&old.id].op, Op::Update);
    ensure_eq!(cols(by_id[&old.id]), vec!["name"]);
    ensure_eq!(by_id[&gone.id].op, Op::Delete);
    ensure_eq!(by_id[&fresh.id].op, Op::Insert);
    ensure_eq!(
        r.reconcile().await?.marked,
        0,
        "a second reconcile finds nothing"
    );
    // And the reinstalled triggers capture again.
    contact("after-reinstall").insert(&t.db).await?;
    ensure_eq!(captured(&r).await?.len(), 1);
    t.drop().await
}

async fn install_is_idempotent_and_versioned(t: TestDb) -> TestResult {
    let r1 = setup(&t).await?;
    contact("x").insert(&t.db).await?;
    let r2 = Replica::builder(t.db.clone())
        .register::<contacts::Entity>()
        .register::<memberships::Entity>()
        .register::<readings::Entity>()
        .open()
        .await?;
    ensure_eq!(r1.node_id(), r2.node_id(), "node id is stable");
    ensure_eq!(
        r2.pending_count().await?,
        1,
        "reinstall keeps pending markers"
    );
    ensure_eq!(
        captured(&r2).await?.len(),
        1,
        "and captures once, not twice"
    );
    let v = common::read_meta(&t.db, "schema_version").await?;
    ensure_eq!(v.as_deref(), Some("2"));
    // A database written by a newer release is refused, not misread.
    common::write_meta(&t.db, "schema_version", "99").await?;
    match Replica::builder(t.db.clone())
        .register::<contacts::Entity>()
        .open()
        .await
    {
        Err(tidesync::Error::SchemaVersion {
            found: 99,
            supported: 2,
        }) => {}
        other => return Err(format!("expected SchemaVersion error, got {other:?}").into()),
    }
    // Registering a table twice is a configuration error.
    common::write_meta(&t.db, "schema_version", "2").await?;
    let dup = Replica::builder(t.db.clone())
        .register::<contacts::Entity>()
        .register::<contacts::Entity>()
        .open()
        .await;
    ensure!(
        matches!(dup, Err(tidesync::Error::Config(_))),
        "duplicate registration refused"
    );
    t.drop().await
}

async fn clock_never_goes_backwards_across_restarts(t: TestDb) -> TestResult {
    let r = setup(&t).await?;
    contact("one").insert(&t.db).await?;
    let first = captured(&r).await?.remove(0).hlc;
    // Pretend the previous run's clock was an hour ahead of this machine's.
    let ahead = tidesync::Hlc {
        physical: first.physical + 3_600_000_000,
        ..first
    };
    common::write_meta(&t.db, "hlc", &ahead.to_string()).await?;
    drop(r);
    let r = setup_again(&t).await?;
    contact("two").insert(&t.db).await?;
    let second = captured(&r).await?.remove(0).hlc;
    ensure!(second > ahead, "{second} must order after {ahead}");
    ensure_eq!(second.node, r.node_id());
    t.drop().await
}

async fn setup_again(t: &TestDb) -> Result<Replica, common::BoxError> {
    Ok(Replica::builder(t.db.clone())
        .register::<contacts::Entity>()
        .register::<memberships::Entity>()
        .register::<readings::Entity>()
        .open()
        .await?)
}

fn reading() -> readings::ActiveModel {
    readings::ActiveModel {
        id: Set(Uuid::now_v7()),
        value: Set(Some(1.5)),
        code: Set(Some("ok".into())),
    }
}

async fn assert_nothing_written(t: &TestDb, r: &Replica) -> TestResult {
    ensure_eq!(
        readings::Entity::find().count(&t.db).await?,
        0,
        "no row written"
    );
    ensure_eq!(r.pending_count().await?, 0, "nothing half-captured");
    Ok(())
}

async fn nan_is_refused_naming_table_column_value(t: TestDb) -> TestResult {
    let r = setup(&t).await?;
    let mut am = reading();
    am.value = Set(Some(f64::NAN));
    let err = am
        .insert(&t.db)
        .await
        .err()
        .ok_or("NaN insert must fail")?
        .to_string();
    ensure!(
        err.contains("readings.value") && err.contains("NaN"),
        "message: {err}"
    );
    let mut am = reading();
    am.value = Set(Some(f64::NEG_INFINITY));
    let err = am
        .insert(&t.db)
        .await
        .err()
        .ok_or("-inf insert must fail")?
        .to_string();
    ensure!(
        err.contains("readings.value") && err.contains("-inf"),
        "message: {err}"
    );
    assert_nothing_written(&t, &r).await?;
    t.drop().await
}

async fn u64_above_i64_max_is_refused_without_panic(t: TestDb) -> TestResult {
    t.create_table(counters::Entity).await?;
    let r = Replica::builder(t.db.clone())
        .register::<counters::Entity>()
        .open()
        .await?;
    let am = counters::ActiveModel {
        id: Set(Uuid::now_v7()),
        counter: Set(u64::MAX),
    };
    let res = am.insert(&t.db).await;
    match t.dialect {
        Dialect::MySql => {
            // BIGINT UNSIGNED holds it.
            let m = res?;
            let back = counters::Entity::find_by_id(m.id)
                .one(&t.db)
                .await?
                .ok_or("row")?;
            ensure_eq!(back.counter, u64::MAX);
            let c = captured(&r).await?;
            ensure_eq!(
                col(&c[0], "counter"),
                Some(&SqValue::BigUnsigned(Some(u64::MAX)))
            );
        }
        _ => {
            // sea-query-sqlx would panic binding it; the generated hook refuses first.
            let err = res.err().ok_or("u64::MAX insert must fail")?.to_string();
            ensure!(
                err.contains("counters.counter") && err.contains("18446744073709551615"),
                "message: {err}"
            );
            let raw =
                t.db.query_one_raw(Statement::from_string(
                    t.backend(),
                    "SELECT COUNT(*) AS n FROM counters",
                ))
                .await?
                .ok_or("count")?;
            ensure_eq!(raw.try_get::<i64>("", "n")?, 0, "no row written");
            ensure_eq!(r.pending_count().await?, 0, "nothing half-captured");
        }
    }
    t.drop().await
}

async fn overlong_string_is_refused(t: TestDb) -> TestResult {
    let r = setup(&t).await?;
    let mut am = reading();
    am.code = Set(Some("123456789".into()));
    let err = am
        .insert(&t.db)
        .await
        .err()
        .ok_or("9 characters in varchar(8) must fail")?
        .to_string();
    ensure!(
        err.contains("readings.code")
            && err.contains("\"123456789\"")
            && err.contains("8 characters"),
        "message: {err}"
    );
    let mut am = reading();
    am.code = Set(Some("ünïcödé!".into())); // 8 characters, more bytes
    am.insert(&t.db).await?;
    ensure_eq!(captured(&r).await?.len(), 1);
    t.drop().await
}

/// A value the sync must refuse that a bulk path (no hooks) got into the
/// table is reported by capture, naming table, column and value; the good
/// row next to it is captured; the bad row's marker stays, so every capture
/// reports it again until the row is fixed, and then captures the fixed
/// values.
///
/// Each dialect stores a different bad value: PostgreSQL a NaN in its
/// double column; SQLite a 9-character code in the `VARCHAR(8)` column (it
/// keeps any length); MySQL neither (no NaN in a DOUBLE, and a strict
/// server refuses the long string), so there the column is widened to
/// `VARCHAR(16)` first, as a migration might, and the table holds a code
/// longer than the entity's 8 characters, which other replicas cannot.
async fn bulk_nan_is_reported_and_kept_until_fixed(t: TestDb) -> TestResult {
    let r = setup(&t).await?;
    // Bulk paths run no hooks; what the database stores is checked at capture.
    let mut bad = reading();
    bad.code = Set(Some("bad".into()));
    let bad_id = bad.id.clone().unwrap();
    let too_long = "x".repeat(9);
    let (column, shown) = match t.dialect {
        // SQLite keeps any length in a VARCHAR(8): the long string is stored.
        Dialect::Sqlite => {
            bad.code = Set(Some(too_long.clone()));
            ("code", format!("{too_long:?}"))
        }
        // PostgreSQL stores NaN in a double precision column.
        Dialect::Postgres => {
            bad.value = Set(Some(f64::NAN));
            ("value", "NaN".to_owned())
        }
        // MariaDB holds neither NaN nor 9 characters in a VARCHAR(8): the
        // table's column is wider than the entity says.
        Dialect::MySql => {
            t.db.execute_unprepared("ALTER TABLE readings MODIFY code VARCHAR(16)")
                .await?;
            bad.code = Set(Some(too_long.clone()));
            ("code", format!("{too_long:?}"))
        }
    };
    let good = reading();
    let good_id = good.id.clone().unwrap();
    readings::Entity::insert_many([bad, good])
        .exec(&t.db)
        .await?;
    let stored = readings::Entity::find_by_id(bad_id)
        .one(&t.db)
        .await?
        .ok_or("the bad row is in the table")?;
    ensure!(
        stored.code.as_deref() == Some(too_long.as_str()) || stored.value.is_some_and(f64::is_nan),
        "the table holds the bad value: {stored:?}"
    );
    let before = r.pending(u64::MAX).await?.len();
    for attempt in ["first", "second"] {
        let report = r.capture().await?;
        ensure_eq!(report.rejected.len(), 1, "{attempt} capture: {report:?}");
        let msg = report.rejected[0].to_string();
        ensure!(
            msg.starts_with(&format!("readings.{column}:")) && msg.contains(&shown),
            "{attempt} capture names table, column and value: {msg}"
        );
        let c = r.pending(u64::MAX).await?[before..].to_vec();
        ensure_eq!(c.len(), 1, "only the good row is captured");
        ensure_eq!((c[0].op, pk_uuid(&c[0])), (Op::Insert, Some(good_id)));
        ensure_eq!(
            (col(&c[0], "value"), col(&c[0], "code")),
            (
                Some(&SqValue::Double(Some(1.5))),
                Some(&SqValue::String(Some("ok".into())))
            ),
            "the good row's values"
        );
        ensure_eq!(
            r.pending_count().await?,
            2,
            "{attempt} capture: one change and the kept marker"
        );
    }
    // Fix the row: the marker is still there and now captures.
    readings::Entity::update_many()
        .col_expr(readings::Column::Value, Expr::value(2.5))
        .col_expr(readings::Column::Code, Expr::value("fixed"))
        .filter(readings::Column::Id.eq(bad_id))
        .exec(&t.db)
        .await?;
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 1);
    ensure_eq!((c[0].op, pk_uuid(&c[0])), (Op::Insert, Some(bad_id)));
    ensure_eq!(
        (col(&c[0], "value"), col(&c[0], "code")),
        (
            Some(&SqValue::Double(Some(2.5))),
            Some(&SqValue::String(Some("fixed".into())))
        ),
        "the fixed values are captured"
    );
    ensure_eq!(r.pending_count().await?, 2, "no marker left");
    t.drop().await
}

/// The writes [`concurrent_writes_during_capture_are_not_lost`] commits
/// while a capture pass is under way: an edit of every row in `edit` (name
/// and email), two new rows, and the delete of `gone`.
async fn writes_during_a_pass<C: ConnectionTrait>(
    db: &C,
    edit: &[contacts::Model],
    gone: &contacts::Model,
) -> Result<(), sea_orm::DbErr> {
    for m in edit {
        let mut am = m.clone().into_active_model();
        am.name = Set(format!("{}-edited", m.name));
        am.email = Set(None);
        am.update(db).await?;
    }
    contact("new-0").insert(db).await?;
    contact("new-1").insert(db).await?;
    contacts::Entity::delete_by_id(gone.id).exec(db).await?;
    Ok(())
}

/// Every synced column of every contact, by id, as the outbox replays it:
/// inserts set every column, updates the ones they carry, deletes remove.
fn replay(changes: &[Change]) -> Result<BTreeMap<Uuid, BTreeMap<String, SqValue>>, String> {
    let mut rows: BTreeMap<Uuid, BTreeMap<String, SqValue>> = BTreeMap::new();
    for c in changes.iter().filter(|c| c.table == "contacts") {
        let id = pk_uuid(c).ok_or("uuid key")?;
        match c.op {
            Op::Delete => {
                rows.remove(&id);
            }
            Op::Insert => {
                rows.insert(id, c.columns.iter().cloned().collect());
            }
            Op::Update => rows
                .get_mut(&id)
                .ok_or(format!("update of {id} before its insert"))?
                .extend(c.columns.iter().cloned()),
        }
    }
    Ok(rows)
}

/// Every synced column of every contact in the table, by id.
async fn contacts_table(
    t: &TestDb,
    r: &Replica,
) -> Result<BTreeMap<Uuid, BTreeMap<String, SqValue>>, common::BoxError> {
    use sea_orm::Iterable;
    let spec = r.tables().next().ok_or("no table")?;
    Ok(contacts::Entity::find()
        .all(&t.db)
        .await?
        .into_iter()
        .map(|m| {
            let cols = contacts::Column::iter()
                .filter(|c| spec.column(c.as_str()).is_some())
                .map(|c| (c.as_str().to_owned(), m.get(c)))
                .collect();
            (m.id, cols)
        })
        .collect())
}

/// Writes that commit while a capture pass is under way are all captured
/// by a later pass, none lost: a pass clears only the markers it read, at
/// the version it read (a write since then bumped it and keeps it).
///
/// The overlap is forced, not hoped for. On PostgreSQL and MySQL another
/// transaction holds an uncommitted outbox row with the sequence number the
/// pass will use, so the pass blocks on its outbox insert after it has read
/// the markers and the rows; once the server shows it waiting there, a third
/// connection commits an edit of half the rows the pass read (re-dirtying
/// markers it will clear), two new rows (markers it never read) and the
/// delete of a row captured before; then the pass is released. The pass
/// must have captured the rows as it read them, before the edits.
///
/// On SQLite a capture transaction takes the write lock with its first
/// statement, so no write can commit inside a pass and the version check
/// has nothing to catch there. The interleaving SQLite allows is a writer
/// that holds the lock when a pass starts: the same writes are made in a
/// transaction held open, the pass is started, and the writer commits while
/// the pass waits for the lock; the pass must then see every write (and
/// keep the delete's marker, which its upsert phase reads but defers, for
/// its delete phase).
///
/// Either way, later passes leave no marker, and replaying the outbox gives
/// exactly the table, every column of every row.
async fn concurrent_writes_during_capture_are_not_lost(t: TestDb) -> TestResult {
    use std::time::{Duration, Instant};
    let r = setup(&t).await?;
    let other = t.connect_again().await?;
    // Two rows captured before, the second of which will be deleted.
    let old = [
        contact("old-0").insert(&t.db).await?,
        contact("old-1").insert(&t.db).await?,
    ];
    captured(&r).await?;
    // Six rows the pass reads; every other one is edited meanwhile.
    let mut read = Vec::new();
    for i in 0..6 {
        read.push(contact(&format!("read-{i}")).insert(&t.db).await?);
    }
    let edit: Vec<contacts::Model> = read.iter().step_by(2).cloned().collect();
    let before = r.pending(u64::MAX).await?.len();

    if t.dialect == Dialect::Sqlite {
        let writer = other.begin().await?;
        writes_during_a_pass(&writer, &edit, &old[1]).await?;
        let (pass, committed) = tokio::join!(
            async {
                let started = Instant::now();
                let report = r.capture().await;
                (started, Instant::now(), report)
            },
            async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let result = writer.commit().await;
                (Instant::now(), result)
            }
        );
        let (started, ended, report) = pass;
        let (commit_at, commit) = committed;
        commit?;
        let report = report?;
        ensure!(
            started < commit_at && commit_at < ended,
            "the pass started before the writer committed and ended after"
        );
        ensure!(report.rejected.is_empty(), "{:?}", report.rejected);
        ensure_eq!(
            r.pending_count().await?,
            r.pending(u64::MAX).await?.len() as u64,
            "the pass that waited for the writer saw all its writes"
        );
    } else {
        // The sequence number the pass will give its first change.
        let blocker = common::block::hold_next_outbox_seq(&t, &other).await?;
        let (report, driven) = tokio::join!(r.capture(), async {
            let driven = async {
                let deadline = Instant::now() + Duration::from_secs(120);
                while !common::block::pass_in_outbox_insert(&t).await? {
                    ensure!(
                        Instant::now() < deadline,
                        "the capture pass never blocked on its outbox insert"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                writes_during_a_pass(&other, &edit, &old[1]).await?;
                Ok::<_, common::BoxError>(())
            }
            .await;
            // Release the pass whatever happened.
            let released = blocker.rollback().await;
            driven?;
            Ok::<_, common::BoxError>(released?)
        });
        driven?;
        let report = report?;
        ensure!(report.rejected.is_empty(), "{:?}", report.rejected);
        // The pass read the rows before the edits committed.
        let pass = r.pending(u64::MAX).await?[before..].to_vec();
        for m in &read {
            let c = pass
                .iter()
                .find(|c| pk_uuid(c) == Some(m.id))
                .ok_or(format!("{} not captured by the blocked pass", m.name))?;
            ensure_eq!(
                (c.op, col(c, "name")),
                (Op::Insert, Some(&SqValue::String(Some(m.name.clone())))),
                "the blocked pass captured {} as it read it",
                m.name
            );
        }
        // The writes made during the pass kept their markers (their
        // versions moved): the pass went back for the ones in a table whose
        // round was over (see `Pass`), later passes take the rest.
    }
    // Later passes capture what is left, and then nothing.
    let mut passes = 0;
    while r.pending_count().await? > r.pending(u64::MAX).await?.len() as u64 {
        ensure!(passes < 3, "markers left after {passes} more passes");
        let report = r.capture().await?;
        ensure!(report.rejected.is_empty(), "{:?}", report.rejected);
        passes += 1;
    }
    let table = contacts_table(&t, &r).await?;
    ensure_eq!(table.len(), 9, "2 old - 1 deleted + 6 read + 2 new rows");
    let edited = table
        .values()
        .filter(|c| matches!(&c["name"], SqValue::String(Some(n)) if n.ends_with("-edited")))
        .count();
    ensure_eq!(edited, edit.len(), "the edits are in the table");
    let replayed = replay(&r.pending(u64::MAX).await?)?;
    let keys: std::collections::BTreeSet<&Uuid> = replayed.keys().chain(table.keys()).collect();
    let wrong: Vec<String> = keys
        .into_iter()
        .filter(|id| replayed.get(id) != table.get(id))
        .map(|id| {
            format!(
                "{id}: outbox {:?}, table {:?}",
                replayed.get(id),
                table.get(id)
            )
        })
        .collect();
    ensure!(
        wrong.is_empty(),
        "replaying the outbox gives the table, every column; differs in:\n{}",
        wrong.join("\n")
    );
    other.close().await?;
    t.drop().await
}

/// Each dialect's errors get their kind (sqlx gives MySQL's SQLSTATE as
/// the code, `23000` for every integrity error: the kind is read from
/// MySQL's error number). The hub parks a unique violation under an
/// account whatever its policy, and retries a deadlock, by these kinds.
async fn database_errors_are_classified(db: TestDb) -> TestResult {
    use tidesync::ErrorKind;
    let kind = db.db.get_database_backend();
    let q = |s: &str| common::quote(kind, s);
    db.db
        .execute_unprepared(&format!(
            "CREATE TABLE {} ({} INTEGER PRIMARY KEY, {} VARCHAR(10) NOT NULL)",
            q("kinds"),
            q("id"),
            q("v")
        ))
        .await?;
    let insert = |id: &str, v: &str| {
        format!(
            "INSERT INTO {} ({}, {}) VALUES ({id}, {v})",
            q("kinds"),
            q("id"),
            q("v")
        )
    };
    db.db.execute_unprepared(&insert("1", "'a'")).await?;
    for (sql, expected) in [
        (insert("1", "'b'"), ErrorKind::UniqueViolation),
        (insert("2", "NULL"), ErrorKind::NotNullViolation),
    ] {
        let e: tidesync::Error = db
            .db
            .execute_unprepared(&sql)
            .await
            .err()
            .ok_or_else(|| format!("{sql} went through"))?
            .into();
        ensure_eq!(e.kind(), expected, "{sql}: {e}");
    }
    db.drop().await
}

/// Sealing reads a marker with its row and its version row; a row whose
/// columns are named `ver`, `gone`, `clocks`, `vals`, ... is captured with
/// its own values, never the marker's or the version row's. A key column
/// of such a name (which the marker and version tables hold beside their
/// own) is refused by name when the replica opens.
async fn columns_named_as_tidesyncs_own_are_captured(t: TestDb) -> TestResult {
    t.create_table(namesake_key::Entity).await?;
    match Replica::builder(t.db.clone())
        .register::<namesake_key::Entity>()
        .open()
        .await
    {
        Err(tidesync::Error::Config(m)) => ensure!(
            m.contains("namesake_key") && m.contains("`gone`"),
            "the refusal names the table and the column: {m}"
        ),
        other => return Err(format!("a key named `gone` must be refused: {other:?}").into()),
    }
    // Names starting with `_tidesync` are tidesync's own, for columns too.
    t.create_table(namesake_column::Entity).await?;
    match Replica::builder(t.db.clone())
        .register::<namesake_column::Entity>()
        .open()
        .await
    {
        Err(tidesync::Error::Config(m)) => ensure!(
            m.contains("namesake_column") && m.contains("`_tidesync_v_id`"),
            "the refusal names the table and the column: {m}"
        ),
        other => {
            return Err(
                format!("a column named `_tidesync_v_id` must be refused: {other:?}").into(),
            );
        }
    }
    t.create_table(namesakes::Entity).await?;
    let r = Replica::builder(t.db.clone())
        .register::<namesakes::Entity>()
        .open()
        .await?;
    let row = |ver: i64, wall: i64| namesakes::ActiveModel {
        id: Set(ver),
        ver: Set(ver + 1000),
        wall_us: Set(wall),
        gone: Set(-wall),
        clocks: Set(format!("clocks {ver}")),
        del: Set(Some(format!("del {ver}"))),
        vals: Set(Some(i32::try_from(ver).unwrap_or(0) * 10)),
        m: Set(Some("m".into())),
        t: Set(None),
        v: Set(Some("v".into())),
    };
    namesakes::Entity::insert_many([row(1, 111), row(2, 222)])
        .exec(&t.db)
        .await?;
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 2);
    for (change, (ver, wall)) in c.iter().zip([(1i64, 111i64), (2, 222)]) {
        ensure_eq!(change.op, Op::Insert);
        ensure_eq!(
            change.pk,
            vec![("id".to_owned(), SqValue::BigInt(Some(ver)))]
        );
        ensure_eq!(col(change, "ver"), Some(&SqValue::BigInt(Some(ver + 1000))));
        ensure_eq!(col(change, "wall_us"), Some(&SqValue::BigInt(Some(wall))));
        ensure_eq!(col(change, "gone"), Some(&SqValue::BigInt(Some(-wall))));
        ensure_eq!(
            col(change, "clocks"),
            Some(&SqValue::String(Some(format!("clocks {ver}"))))
        );
        ensure_eq!(
            col(change, "vals"),
            Some(&SqValue::Int(Some(i32::try_from(ver)? * 10)))
        );
        ensure_eq!(col(change, "m"), Some(&SqValue::String(Some("m".into()))));
        ensure_eq!(
            col(change, "del"),
            Some(&SqValue::String(Some(format!("del {ver}"))))
        );
        ensure_eq!(col(change, "t"), Some(&SqValue::String(None)));
        ensure_eq!(col(change, "v"), Some(&SqValue::String(Some("v".into()))));
    }
    // An update is diffed against the version row's values: one column.
    let mut am = row(2, 222);
    am.clocks = Set("clocks again".into());
    am.update(&t.db).await?;
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 1);
    ensure_eq!(c[0].op, Op::Update);
    ensure_eq!(cols(&c[0]), vec!["clocks"]);
    ensure_eq!(
        col(&c[0], "clocks"),
        Some(&SqValue::String(Some("clocks again".into())))
    );
    namesakes::Entity::delete_by_id(1i64).exec(&t.db).await?;
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 1);
    ensure_eq!(c[0].op, Op::Delete);
    ensure_eq!(c[0].pk, vec![("id".to_owned(), SqValue::BigInt(Some(1)))]);
    t.drop().await
}

/// A key the table holds in another form than its version row's key
/// (a date-time with an offset, kept as written in a SQLite text column
/// while the state is keyed by its UTC instant; a date-time written by
/// raw SQL with a `T`): an update is sealed as an update of the column
/// written, a delete as a delete. Found by the state's key, not by the
/// stored text.
async fn keys_stored_otherwise_than_their_states_seal_updates_and_deletes(t: TestDb) -> TestResult {
    t.create_table(keyed_by_offset::Entity).await?;
    t.create_table(keyed_by_time::Entity).await?;
    let r = Replica::builder(t.db.clone())
        .register::<keyed_by_offset::Entity>()
        .register::<keyed_by_time::Entity>()
        .open()
        .await?;
    write_rows_of_stored_forms(&t).await?;
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 2, "{c:?}");
    ensure!(c.iter().all(|c| c.op == Op::Insert), "{c:?}");
    notes_edited_then_deleted(&t, &r, false).await?;
    t.drop().await
}

/// A row keyed by a date-time with an offset (kept as written in a SQLite
/// text column, while its state is keyed by its UTC instant), and one
/// keyed by a date-time written by raw SQL with a `T`.
async fn write_rows_of_stored_forms(t: &TestDb) -> TestResult {
    let k = chrono::FixedOffset::east_opt(3600)
        .ok_or("offset")?
        .with_ymd_and_hms(2031, 2, 3, 4, 5, 6)
        .unwrap();
    keyed_by_offset::ActiveModel {
        k: Set(k),
        note: Set("first".into()),
    }
    .insert(&t.db)
    .await?;
    t.db.execute_unprepared(
        "INSERT INTO keyed_by_time (k, note) VALUES ('2031-02-03T04:05:06', 'first')",
    )
    .await?;
    Ok(())
}

/// Every note of the rows of [`write_rows_of_stored_forms`] (and of
/// `rowid_key`'s, if `rowid`) edited, then every row deleted: each edit
/// is captured as an update of the note alone and each delete as a
/// delete, once.
async fn notes_edited_then_deleted(t: &TestDb, r: &Replica, rowid: bool) -> TestResult {
    let n = if rowid { 3 } else { 2 };
    keyed_by_offset::Entity::update_many()
        .col_expr(keyed_by_offset::Column::Note, Expr::value("second"))
        .exec(&t.db)
        .await?;
    keyed_by_time::Entity::update_many()
        .col_expr(keyed_by_time::Column::Note, Expr::value("second"))
        .exec(&t.db)
        .await?;
    if rowid {
        rowid_key::Entity::update_many()
            .col_expr(rowid_key::Column::Note, Expr::value("second"))
            .exec(&t.db)
            .await?;
    }
    let c = captured(r).await?;
    ensure_eq!(c.len(), n, "{c:?}");
    for change in &c {
        ensure_eq!(change.op, Op::Update, "{change:?}");
        ensure_eq!(cols(change), vec!["note"], "{change:?}");
    }
    keyed_by_offset::Entity::delete_many().exec(&t.db).await?;
    keyed_by_time::Entity::delete_many().exec(&t.db).await?;
    if rowid {
        rowid_key::Entity::delete_many().exec(&t.db).await?;
    }
    let c = captured(r).await?;
    ensure_eq!(c.len(), n, "{c:?}");
    ensure!(c.iter().all(|c| c.op == Op::Delete), "{c:?}");
    ensure!(captured(r).await?.is_empty(), "nothing left to capture");
    Ok(())
}

/// A key column named `rowid` takes SQLite's name of a row's number:
/// sealing reads and deletes markers by another of its names, and an
/// insert, an update and a delete are each sealed once.
async fn a_key_named_rowid_is_captured(t: TestDb) -> TestResult {
    t.create_table(rowid_key::Entity).await?;
    let r = Replica::builder(t.db.clone())
        .register::<rowid_key::Entity>()
        .open()
        .await?;
    rowid_key::ActiveModel {
        rowid: Set("a".into()),
        note: Set("first".into()),
    }
    .insert(&t.db)
    .await?;
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 1, "{c:?}");
    ensure_eq!(c[0].op, Op::Insert);
    ensure_eq!(
        c[0].pk,
        vec![("rowid".to_owned(), SqValue::String(Some("a".into())))]
    );
    rowid_key::Entity::update_many()
        .col_expr(rowid_key::Column::Note, Expr::value("second"))
        .exec(&t.db)
        .await?;
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 1, "{c:?}");
    ensure_eq!(cols(&c[0]), vec!["note"]);
    rowid_key::Entity::delete_many().exec(&t.db).await?;
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 1, "{c:?}");
    ensure_eq!(c[0].op, Op::Delete);
    ensure!(captured(&r).await?.is_empty(), "nothing left to capture");
    t.drop().await
}

/// Rows written before tidesync was installed, under keys of several
/// stored forms (a date-time with its offset, one written by raw SQL with
/// a `T`) and a key named `rowid`: a table never captured is marked whole
/// by one statement that copies each key as stored, and each row is then
/// captured once, later updated and deleted under the same key, and not
/// found again by the next reconcile.
async fn rows_of_odd_keys_marked_whole_are_captured_once(t: TestDb) -> TestResult {
    t.create_table(keyed_by_offset::Entity).await?;
    t.create_table(keyed_by_time::Entity).await?;
    t.create_table(rowid_key::Entity).await?;
    write_rows_of_stored_forms(&t).await?;
    rowid_key::ActiveModel {
        rowid: Set("a".into()),
        note: Set("first".into()),
    }
    .insert(&t.db)
    .await?;
    let r = Replica::builder(t.db.clone())
        .register::<keyed_by_offset::Entity>()
        .register::<keyed_by_time::Entity>()
        .register::<rowid_key::Entity>()
        .open()
        .await?;
    let found = r.reconcile().await?;
    ensure_eq!(found.marked, 3, "{found:?}");
    ensure_eq!(found.marked_whole.len(), 3, "{found:?}");
    let c = captured(&r).await?;
    ensure_eq!(c.len(), 3, "{c:?}");
    ensure!(c.iter().all(|c| c.op == Op::Insert), "{c:?}");
    ensure_eq!(r.reconcile().await?.marked, 0, "captured rows match");
    notes_edited_then_deleted(&t, &r, true).await?;
    ensure_eq!(r.reconcile().await?.marked, 0, "nothing left to reconcile");
    t.drop().await
}
