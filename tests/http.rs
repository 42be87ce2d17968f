//! The hub over HTTP with accounts, on every hub dialect: each user's rows
//! stay theirs on push and pull, bad credentials and bad bodies are
//! refused with the documented status and nothing read or written.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::device::{Device, device_on};
use common::entities::{labels, notes, notes_by_body};
use common::http::TestServer;
use common::{BoxError, TestDb, TestResult, run};
use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait, QueryOrder, Set};
use sync_http::{HttpBackend, HubServer};
use tidesync::hub::{Hub, RejectPolicy, SqlHub};
use tidesync::{Change, ChangeId, Error, Hlc, NodeId, Op};
use uuid::Uuid;

fn main() -> std::process::ExitCode {
    let trials = trials![
        each_user_pulls_and_bootstraps_only_their_rows,
        a_user_cannot_write_another_users_rows,
        a_refused_change_halts_under_halt,
        a_key_another_user_took_is_parked_even_under_halt,
        a_key_the_database_takes_for_another_overwrites_nothing,
        a_server_that_never_saw_the_install_names_keys_as_the_hub,
        first_installs_at_once_record_the_key_of_the_table_made,
        rows_made_offline_before_the_first_sync_are_kept,
        pages_are_read_ahead_only_for_the_request_that_comes_next,
        bad_credentials_get_401_and_nothing_is_read_or_written,
        oversized_malformed_and_unknown_version_bodies_are_refused,
        a_large_push_goes_in_halves_under_a_small_limit,
        a_push_of_more_changes_than_the_server_takes_goes_in_halves,
        a_row_the_database_refused_is_refused_for_the_rest_of_the_push,
        undeclared_and_redeclared_tables_are_refused_at_install,
        the_authorization_rule_refuses_what_it_names,
        an_unreachable_server_is_offline,
        the_hubs_own_tables_and_new_tables_are_refused_when_closed,
        a_user_cannot_push_under_another_users_device_identity,
        another_devices_install_does_not_change_how_this_ones_pushes_merge,
        installs_cannot_reach_other_tables_or_inject_sql,
        forged_keys_and_doubled_columns_are_refused,
        a_devices_spec_cannot_retype_a_key_nor_alias_it,
        a_refused_install_records_nothing_and_takes_no_app_table,
        one_change_too_large_halts_and_the_sync_still_pulls,
        another_users_change_ids_are_not_told,
        snapshot_tokens_tell_nothing_of_other_users_rows,
        random_and_mutated_bodies_never_break_the_server,
        a_slow_client_does_not_block_others,
        requests_without_an_account_are_bounded_too,
        tokens_never_appear_in_logs,
        jwts_sign_in_their_subject_until_they_expire,
        a_renewed_token_keeps_a_device_syncing,
        a_restored_hub_is_found_from_another_users_entry,
    ];
    logs::capture();
    run(trials)
}

/// Everything the servers of this process log, to check what it holds.
mod logs {
    use std::io::Write;
    use std::sync::{Mutex, OnceLock};

    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

    struct Sink;

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(l) = LOGS.get() {
                l.lock().unwrap().extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Log every event at debug level and above into memory.
    pub(crate) fn capture() {
        LOGS.get_or_init(|| Mutex::new(Vec::new()));
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            // Plain text whatever the environment (`user=alice`, not
            // colour codes between the name and the value).
            .with_ansi(false)
            .with_writer(|| Sink)
            .try_init();
    }

    /// What was logged so far.
    pub(crate) fn text() -> String {
        LOGS.get()
            .map(|l| String::from_utf8_lossy(&l.lock().unwrap()).into_owned())
            .unwrap_or_default()
    }
}

/// A server on `hub` with `policy`, sharing nothing undeclared.
async fn serve(hub: &TestDb, policy: RejectPolicy) -> Result<Arc<TestServer>, BoxError> {
    let sql = SqlHub::new(hub.connect_again().await?).with_policy(policy);
    TestServer::start(HubServer::new(sql).await?).await
}

/// A device of `user` (notes and labels) through `server`.
async fn device(server: &Arc<TestServer>, user: &str, tag: &str) -> Result<Device, BoxError> {
    let hub: Arc<dyn Hub> = Arc::new(server.device(user).await?);
    device_on(hub, tag, |b| {
        b.register::<notes::Entity>().register::<labels::Entity>()
    })
    .await
}

async fn note(d: &Device, owner: &str, body: &str) -> Result<Uuid, BoxError> {
    let id = Uuid::new_v4();
    note_row(id, owner, body).insert(d.db()).await?;
    Ok(id)
}

/// The note `id` of `owner`, to insert or update.
fn note_row(id: Uuid, owner: &str, body: &str) -> notes::ActiveModel {
    notes::ActiveModel {
        id: Set(id),
        owner: Set(owner.into()),
        body: Set(body.into()),
    }
}

async fn label(d: &Device, name: &str) -> Result<Uuid, BoxError> {
    let id = Uuid::new_v4();
    labels::ActiveModel {
        id: Set(id),
        name: Set(name.into()),
    }
    .insert(d.db())
    .await?;
    Ok(id)
}

/// The notes of a database as (owner, body), sorted.
async fn notes_of<C: ConnectionTrait>(db: &C) -> Result<Vec<(String, String)>, BoxError> {
    let mut out: Vec<(String, String)> = notes::Entity::find()
        .order_by_asc(notes::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(|m| (m.owner, m.body))
        .collect();
    out.sort();
    Ok(out)
}

async fn labels_of<C: ConnectionTrait>(db: &C) -> Result<Vec<String>, BoxError> {
    let mut out: Vec<String> = labels::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|m| m.name)
        .collect();
    out.sort();
    Ok(out)
}

fn pair(owner: &str, body: &str) -> (String, String) {
    (owner.to_owned(), body.to_owned())
}

/// A hub restored from a backup is found by a device whose cursor sits on
/// another user's entry. The device keeps the id of the entry at its
/// cursor and compares it with the hub's; another user's entry is told to
/// it only as a fingerprint (not its id), which the restore and the writes
/// after it change all the same. Before, nothing was told, nothing was
/// compared, and the device never got a change logged after the restore
/// at a position it had pulled before.
async fn a_restored_hub_is_found_from_another_users_entry(hub: TestDb) -> TestResult {
    let server = serve(&hub, RejectPolicy::Park).await?;
    let a1 = device(&server, "alice", "a1").await?;
    let a2 = device(&server, "alice", "a2").await?;
    let b1 = device(&server, "bob", "b1").await?;
    label(&a1, "before").await?;
    a1.engine.sync_now().await?;
    a2.engine.sync_now().await?;
    note(&b1, "bob", "bob's first").await?;
    b1.engine.sync_now().await?;
    a1.engine.sync_now().await?;
    hub.back_up("bk_").await?;
    // a1's cursor ends on bob's second note, lost by the restore.
    note(&b1, "bob", "bob's second").await?;
    b1.engine.sync_now().await?;
    a1.engine.sync_now().await?;
    hub.restore("bk_").await?;
    // Logged where bob's second note was.
    label(&a2, "after").await?;
    let r = a2.engine.sync_now().await?;
    ensure!(r.rejected.is_empty() && r.halted.is_none(), "{r:?}");
    let r = a1.engine.sync_now().await?;
    ensure!(
        r.hub_behind.is_some(),
        "a1 finds the hub's log rewritten at its cursor: {r:?}"
    );
    a1.engine.sync_now().await?;
    ensure_eq!(
        labels_of(a1.db()).await?,
        vec!["after".to_owned(), "before".to_owned()]
    );
    Ok(())
}

async fn each_user_pulls_and_bootstraps_only_their_rows(hub: TestDb) -> TestResult {
    let server = serve(&hub, RejectPolicy::Park).await?;
    let a1 = device(&server, "alice", "a1").await?;
    let a2 = device(&server, "alice", "a2").await?;
    let b1 = device(&server, "bob", "b1").await?;
    note(&a1, "alice", "alice's first").await?;
    label(&a1, "work").await?;
    note(&b1, "bob", "bob's first").await?;
    label(&b1, "home").await?;
    for d in [&a1, &b1, &a2, &a1, &b1] {
        let r = d.engine.sync_now().await?;
        ensure!(r.rejected.is_empty() && r.halted.is_none(), "{r:?}");
    }
    // Pulls: each user's notes, everybody's labels.
    ensure_eq!(
        notes_of(a2.db()).await?,
        vec![pair("alice", "alice's first")]
    );
    ensure_eq!(notes_of(b1.db()).await?, vec![pair("bob", "bob's first")]);
    for d in [&a1, &a2, &b1] {
        ensure_eq!(
            labels_of(d.db()).await?,
            vec!["home".to_owned(), "work".to_owned()]
        );
    }
    // One user's two devices converge.
    note(&a2, "alice", "alice's second").await?;
    a2.engine.sync_now().await?;
    a1.engine.sync_now().await?;
    b1.engine.sync_now().await?;
    let alices = vec![
        pair("alice", "alice's first"),
        pair("alice", "alice's second"),
    ];
    ensure_eq!(notes_of(a1.db()).await?, alices);
    ensure_eq!(notes_of(b1.db()).await?, vec![pair("bob", "bob's first")]);
    // A new device bootstraps (in pages of one row) only its user's rows.
    let local = TestDb::create(common::Dialect::Sqlite, "b2").await?;
    let replica = tidesync::Replica::builder(local.db.clone())
        .register::<notes::Entity>()
        .register::<labels::Entity>()
        .create_tables()
        .open()
        .await?;
    let b2 = Device {
        engine: tidesync::SyncEngine::new(replica, Arc::new(server.device("bob").await?))
            .with_batch_size(1),
        local,
    };
    b2.engine.sync_now().await?;
    ensure_eq!(notes_of(b2.db()).await?, vec![pair("bob", "bob's first")]);
    ensure_eq!(
        labels_of(b2.db()).await?,
        vec!["home".to_owned(), "work".to_owned()]
    );
    // The hub holds all of it.
    ensure_eq!(notes_of(&hub.db).await?.len(), 3);
    Ok(())
}

/// A change of `table` by `origin` at `seq`.
fn change(origin: NodeId, seq: u64, op: Op, id: Uuid, columns: &[(&str, &str)]) -> Change {
    let now = chrono::Utc::now().timestamp_micros() as u64;
    Change {
        id: ChangeId { origin, seq },
        table: "notes".into(),
        pk: vec![("id".into(), sea_orm::Value::Uuid(Some(id)))],
        op,
        columns: columns
            .iter()
            .map(|(n, v)| {
                (
                    (*n).to_owned(),
                    sea_orm::Value::String(Some((*v).to_owned())),
                )
            })
            .collect(),
        hlc: Hlc {
            physical: now,
            logical: 0,
            node: origin,
        },
        base: Vec::new(),
    }
}

async fn a_user_cannot_write_another_users_rows(hub: TestDb) -> TestResult {
    let server = serve(&hub, RejectPolicy::Park).await?;
    let alice = device(&server, "alice", "alice").await?;
    let kept = note(&alice, "alice", "alice's").await?;
    alice.engine.sync_now().await?;
    let before = notes_of(&hub.db).await?;
    // Bob's device, speaking the protocol itself.
    let bob = server.device("bob").await?;
    let spec = tidesync::table_spec::<notes::Entity>();
    bob.install(&[spec]).await?;
    let me = NodeId::random();
    let other = Uuid::new_v4();
    let mine = Uuid::new_v4();
    let batch = vec![
        // Creates a row of another user.
        change(
            me,
            1,
            Op::Insert,
            other,
            &[("id", ""), ("owner", "alice"), ("body", "forged")],
        ),
        // Edits, re-creates and deletes alice's row.
        change(me, 2, Op::Update, kept, &[("body", "defaced")]),
        change(
            me,
            3,
            Op::Insert,
            kept,
            &[("owner", "bob"), ("body", "taken")],
        ),
        change(me, 4, Op::Delete, kept, &[]),
        // Creates his own row, then gives it to alice.
        change(
            me,
            5,
            Op::Insert,
            mine,
            &[("owner", "bob"), ("body", "bob's")],
        ),
        change(me, 6, Op::Update, mine, &[("owner", "alice")]),
        // An update of a row the hub never had.
        change(me, 7, Op::Update, Uuid::new_v4(), &[("body", "nowhere")]),
    ];
    // The insert of `other` with its key column as a string is refused by
    // validation anyway: give it its real key.
    let mut batch = batch;
    batch[0].columns.retain(|(n, _)| n != "id");
    batch[0]
        .columns
        .insert(0, ("id".into(), sea_orm::Value::Uuid(Some(other))));
    for c in &mut batch[2..=4] {
        if c.op == Op::Insert {
            let id = c.pk[0].1.clone();
            c.columns.insert(0, ("id".into(), id));
        }
    }
    let ack = bob.push(&batch).await?;
    let parked: Vec<u64> = ack.parked.iter().map(|r| r.id.seq).collect();
    ensure_eq!(parked, vec![1, 2, 3, 4, 6, 7]);
    ensure_eq!(ack.acknowledged.len(), 7);
    for r in &ack.parked {
        ensure!(r.reason.contains("refused to user `bob`"), "{r:?}");
        ensure!(
            !r.reason.contains("alice"),
            "a reason names another user: {r:?}"
        );
    }
    // Nothing of the refused changes reached the hub's table: alice's row
    // as it was, bob's own row as he made it.
    let mut after = before.clone();
    after.push(pair("bob", "bob's"));
    after.sort();
    ensure_eq!(notes_of(&hub.db).await?, after);
    // Alice's device sees her row unchanged and nothing of bob's.
    alice.engine.sync_now().await?;
    ensure_eq!(notes_of(alice.db()).await?, vec![pair("alice", "alice's")]);
    // Bob pulls only his row.
    let pulled = bob.pull(tidesync::hub::Cursor(0), 100).await?;
    ensure!(
        pulled
            .changes
            .iter()
            .all(|c| c.id.origin == tidesync::hub::STATE_ORIGIN
                && c.hlc.node == me
                && c.table == "notes"),
        "{pulled:?}"
    );
    ensure_eq!(pulled.changes.len(), 1);
    ensure_eq!(
        pulled.next_id,
        Some(tidesync::ChangeId { origin: me, seq: 5 }),
        "the change applied at his cursor, his own"
    );
    // The rows changed since 0, as a device pulls them: his one row.
    let rows = bob
        .pull_states(tidesync::hub::Cursor(0), 100, NodeId::random())
        .await?;
    ensure_eq!(rows.rows.len(), 1, "{rows:?}");
    ensure_eq!(rows.next, pulled.next);
    let (_, page) = bob.snapshot(None, 100).await?;
    ensure_eq!(page.rows.len(), 1);
    Ok(())
}

async fn a_refused_change_halts_under_halt(hub: TestDb) -> TestResult {
    let server = serve(&hub, RejectPolicy::Halt).await?;
    let bob = device(&server, "bob", "bob").await?;
    note(&bob, "bob", "fine").await?;
    // Captured in its own pass: one pass orders changes by key.
    bob.engine.replica().capture().await?;
    note(&bob, "alice", "forged").await?;
    bob.engine.replica().capture().await?;
    note(&bob, "bob", "after").await?;
    let r = bob.engine.sync_now().await?;
    let halted = r.halted.ok_or("the forged note did not halt the stream")?;
    ensure!(halted.reason.contains("another user"), "{halted:?}");
    // The first note went; the forged one and the one after wait.
    ensure_eq!(notes_of(&hub.db).await?, vec![pair("bob", "fine")]);
    ensure_eq!(bob.engine.replica().pending_count().await?, 2);
    Ok(())
}

/// Keys are one space for every user: when another user took a key first
/// (a natural key, a guessed one), this user's row of that key is refused,
/// parked whatever the policy and reported, and the rest of the stream
/// goes on. Halting would let the other user stop it for good.
async fn a_key_another_user_took_is_parked_even_under_halt(hub: TestDb) -> TestResult {
    let server = serve(&hub, RejectPolicy::Halt).await?;
    let alice = device(&server, "alice", "alice").await?;
    let bob = device(&server, "bob", "bob").await?;
    // Alice writes offline: a note whose key bob takes before she syncs,
    // and notes after it.
    let taken = note(&alice, "alice", "alice's, taken").await?;
    alice.engine.replica().capture().await?;
    note(&alice, "alice", "after 1").await?;
    alice.engine.replica().capture().await?;
    note_row(taken, "bob", "bob's").insert(bob.db()).await?;
    let r = bob.engine.sync_now().await?;
    ensure!(r.halted.is_none() && r.rejected.is_empty(), "{r:?}");
    // An edit of the taken row, pushed after it.
    note_row(taken, "alice", "alice's, edited")
        .update(alice.db())
        .await?;
    alice.engine.replica().capture().await?;
    note(&alice, "alice", "after 2").await?;
    let r = alice.engine.sync_now().await?;
    ensure!(
        r.halted.is_none(),
        "the taken key halted alice's stream: {r:?}"
    );
    ensure!(
        !r.rejected.is_empty()
            && r.rejected
                .iter()
                .all(|x| x.reason.contains("another user") || x.reason.contains("earlier change")),
        "{r:?}"
    );
    ensure_eq!(alice.engine.replica().pending_count().await?, 0);
    // Bob's row as he wrote it; alice's other notes arrived.
    ensure_eq!(
        notes_of(&hub.db).await?,
        vec![
            pair("alice", "after 1"),
            pair("alice", "after 2"),
            pair("bob", "bob's"),
        ]
    );
    // A forged note (a row created for another user) still halts: only a
    // key another user holds is parked whatever the policy.
    note(&alice, "bob", "forged").await?;
    let r = alice.engine.sync_now().await?;
    let halted = r.halted.ok_or("the forged note did not halt the stream")?;
    ensure!(halted.reason.contains("another user"), "{halted:?}");
    Ok(())
}

async fn rows_made_offline_before_the_first_sync_are_kept(hub: TestDb) -> TestResult {
    let server = serve(&hub, RejectPolicy::Halt).await?;
    // A device that has never reached the hub writes first.
    let a1 = device(&server, "alice", "a1").await?;
    for i in 0..20 {
        note(&a1, "alice", &format!("offline {i}")).await?;
    }
    let r = a1.engine.sync_now().await?;
    ensure!(r.halted.is_none() && r.rejected.is_empty(), "{r:?}");
    ensure_eq!(r.pushed, 20);
    let a2 = device(&server, "alice", "a2").await?;
    a2.engine.sync_now().await?;
    ensure_eq!(notes_of(a2.db()).await?.len(), 20);
    Ok(())
}

/// Requests to `endpoint` the servers of this process answered for `user`.
fn answered(endpoint: &str, user: &str) -> usize {
    let (endpoint, user) = (format!("endpoint=\"{endpoint}\""), format!("user={user} "));
    logs::text()
        .lines()
        .filter(|l| l.contains(&endpoint) && l.contains(&user))
        .count()
}

/// Wait until the servers answered `n` requests to `endpoint` for `user`.
async fn until_answered(endpoint: &str, user: &str, n: usize) -> TestResult {
    for _ in 0..500 {
        if answered(endpoint, user) >= n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!(
        "{user}: {} {endpoint} requests, expected {n}",
        answered(endpoint, user)
    )
    .into())
}

/// `HttpBackend` asks for the next page of a pull or a snapshot as soon
/// as a page's answer names it, and hands it over only for the request
/// that comes next: not after a request of another kind (a standing, with
/// which every sync starts: the page would be older than that sync), and
/// not under another token (the page is another user's).
async fn pages_are_read_ahead_only_for_the_request_that_comes_next(hub: TestDb) -> TestResult {
    let server = serve(&hub, RejectPolicy::Halt).await?;
    let user = format!("reader-{}", Uuid::new_v4().simple());
    let writer = device(&server, &user, "writer").await?;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(note(&writer, &user, &format!("v1 {i}")).await?);
    }
    writer.engine.sync_now().await?;
    let reader = installed(&server, &user).await?;
    let body_of = |page: &tidesync::hub::SnapshotPage| -> Result<String, BoxError> {
        let row = page.rows.first().ok_or("an empty page")?;
        match row.state.vals.get("body") {
            Some(sea_orm::Value::String(Some(b))) => Ok(b.clone()),
            other => Err(format!("body {other:?}").into()),
        }
    };

    // The first page: its answer names the second, which is asked for at
    // once, before the device asks.
    let base = answered("snapshot", &user);
    let (_, first) = reader.snapshot(None, 1).await?;
    let second = first.next.clone().ok_or("one page only")?;
    until_answered("snapshot", &user, base + 2).await?;
    // Asked for now, it is the one read ahead (no request of its own; the
    // third is read ahead in turn).
    let (_, page) = reader.snapshot(Some(second.clone()), 1).await?;
    let third = page.next.clone().ok_or("two pages only")?;
    until_answered("snapshot", &user, base + 3).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    ensure_eq!(answered("snapshot", &user), base + 3);

    // The third page was read before this edit; a standing comes between:
    // the page is asked for again, and no longer holds the row as it was
    // (the snapshot holds the rows as they were when it started: a row
    // edited since is the pull's after it).
    let read_ahead = body_of(&page);
    ensure!(
        matches!(&read_ahead, Ok(b) if b.starts_with("v1")),
        "{read_ahead:?}"
    );
    // The third page's row: the one neither of the first two held.
    let id_of = |p: &tidesync::hub::SnapshotPage| -> Option<Uuid> {
        p.rows.first().and_then(|r| match r.pk.first() {
            Some((_, sea_orm::Value::Uuid(Some(u)))) => Some(*u),
            _ => None,
        })
    };
    let seen = [id_of(&first), id_of(&page)];
    let third_row = *ids
        .iter()
        .find(|id| !seen.contains(&Some(**id)))
        .ok_or("the third page's row")?;
    note_row(third_row, &user, "v2").update(writer.db()).await?;
    writer.engine.sync_now().await?;
    reader.standing(NodeId::random(), None).await?;
    let (_, page) = reader.snapshot(Some(third.clone()), 1).await?;
    ensure!(page.rows.is_empty(), "asked for again: {page:?}");

    // Read ahead under this user's token, asked for under another's: not
    // handed over (the other user's request for this user's token is
    // refused).
    let (_, first) = reader.snapshot(None, 1).await?;
    let second = first.next.clone().ok_or("one page only")?;
    let before = answered("snapshot", &user);
    until_answered("snapshot", &user, before + 1).await?;
    reader.backend.set_token(server.token("mallory").await?)?;
    match reader.snapshot(Some(second), 1).await {
        Ok((_, page)) => return Err(format!("mallory got {user}'s page {page:?}").into()),
        Err(Error::Config(_)) => {}
        Err(e) => return Err(format!("expected a refusal, got {e}").into()),
    }

    // Pull pages are read ahead too.
    reader.backend.set_token(server.token(&user).await?)?;
    let pulls = answered("pull", &user);
    let page = reader.pull(tidesync::hub::Cursor(0), 1).await?;
    ensure_eq!(page.changes.len(), 1);
    until_answered("pull", &user, pulls + 2).await?;
    Ok(())
}

async fn bad_credentials_get_401_and_nothing_is_read_or_written(hub: TestDb) -> TestResult {
    let server = serve(&hub, RejectPolicy::Park).await?;
    let alice = device(&server, "alice", "alice").await?;
    note(&alice, "alice", "secret").await?;
    alice.engine.sync_now().await?;
    let revoked = server.token("alice").await?;
    ensure_eq!(server.server.tokens().revoke(&revoked).await?, 1);
    let good = server.token("alice").await?;
    let wrong = {
        let mut t = good.clone();
        let last = t.pop().unwrap();
        t.push(if last == '0' { '1' } else { '0' });
        t
    };
    let client = reqwest::Client::new();
    let body = serde_json::json!({"cursor": 0, "limit": 100}).to_string();
    for (what, auth) in [
        ("no token", None),
        ("a wrong token", Some(format!("Bearer {wrong}"))),
        ("a revoked token", Some(format!("Bearer {revoked}"))),
        ("a token of another shape", Some("Bearer hello".to_owned())),
        ("no bearer", Some(good.clone())),
    ] {
        let mut req = client
            .post(format!("{}/v1/pull", server.url))
            .body(body.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await?;
        ensure_eq!(resp.status().as_u16(), 401);
        let text = resp.text().await?;
        ensure!(
            text.contains("unauthorized") && !text.contains("secret"),
            "{what}: {text}"
        );
    }
    // Through the backend: Unauthorized, for every method; nothing written.
    let logged = log_size(&hub).await?;
    let forged = HttpBackend::new(&server.url, wrong)?;
    let spec = tidesync::table_spec::<notes::Entity>();
    ensure!(
        matches!(forged.install(&[spec]).await, Err(Error::Unauthorized(_))),
        "install"
    );
    let c = change(NodeId::random(), 1, Op::Delete, Uuid::new_v4(), &[]);
    ensure!(
        matches!(forged.push(&[c]).await, Err(Error::Unauthorized(_))),
        "push"
    );
    ensure!(
        matches!(
            forged.pull(tidesync::hub::Cursor(0), 10).await,
            Err(Error::Unauthorized(_))
        ),
        "pull"
    );
    ensure!(
        matches!(
            forged
                .pull_states(tidesync::hub::Cursor(0), 10, NodeId::random())
                .await,
            Err(Error::Unauthorized(_))
        ),
        "pull of states"
    );
    ensure!(
        matches!(forged.snapshot(None, 10).await, Err(Error::Unauthorized(_))),
        "snapshot"
    );
    ensure_eq!(log_size(&hub).await?, logged);
    // Revoking a user revokes all of their tokens, the device's as well.
    ensure!(
        server.server.tokens().revoke("alice").await? >= 2,
        "revoke by user"
    );
    note(&alice, "alice", "after revoke").await?;
    let e = alice
        .engine
        .sync_now()
        .await
        .err()
        .ok_or("synced after revoke")?;
    ensure!(matches!(e, Error::Unauthorized(_)), "{e}");
    ensure_eq!(log_size(&hub).await?, logged);
    Ok(())
}

async fn log_size(hub: &TestDb) -> Result<i64, BoxError> {
    let row = hub
        .db
        .query_one_raw(sea_orm::Statement::from_string(
            hub.backend(),
            "SELECT COUNT(*) AS n FROM _tidesync_batches",
        ))
        .await?
        .ok_or("no count")?;
    Ok(row.try_get("", "n")?)
}

async fn oversized_malformed_and_unknown_version_bodies_are_refused(hub: TestDb) -> TestResult {
    let sql = SqlHub::new(hub.connect_again().await?);
    let server = TestServer::start(HubServer::new(sql).await?.max_body_bytes(64 * 1024)).await?;
    let token = server.token("alice").await?;
    HttpBackend::new(&server.url, token.clone())?
        .install(&[tidesync::table_spec::<notes::Entity>()])
        .await?;
    let client = reqwest::Client::new();
    let post = |path: &str| {
        client
            .post(format!("{}{path}", server.url))
            .bearer_auth(&token)
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    // Over the limit, declared: answered before a byte of the body is sent.
    let head = format!(
        "POST /v1/push HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-length: 100000000\r\n\r\n"
    );
    ensure_eq!(raw_status(&server.url, &head, false).await?, 413);
    // Over the limit, streamed without a length: refused once the limit
    // is passed, however much more comes.
    let head = format!(
        "POST /v1/push HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         transfer-encoding: chunked\r\n\r\n"
    );
    ensure_eq!(raw_status(&server.url, &head, true).await?, 413);
    // Small, but decompressing past the limit.
    let bomb = zstd::bulk::compress(&vec![b' '; 10 << 20], 3)?;
    let r = post("/v1/push")
        .header("content-encoding", "zstd")
        .body(bomb)
        .send()
        .await?;
    ensure_eq!(status(r), 413);
    // Malformed, truncated, of the wrong shape, not zstd, unknown encoding.
    let good = serde_json::json!({"cursor": 0, "limit": 5}).to_string();
    for (body, encoding, expect) in [
        ("{not json".to_owned(), None, 400),
        (good[..good.len() - 3].to_owned(), None, 400),
        (r#"{"cursor": "x", "limit": 5}"#.to_owned(), None, 400),
        (good.clone(), Some("zstd"), 400),
        (good.clone(), Some("br"), 415),
    ] {
        let mut req = post("/v1/pull").body(body.clone());
        if let Some(e) = encoding {
            req = req.header("content-encoding", e);
        }
        ensure_eq!(status(req.send().await?), expect);
    }
    // Unknown protocol versions, by path and by header: a clear error.
    let r = post("/v2/pull").body(good.clone()).send().await?;
    ensure_eq!(r.status().as_u16(), 400);
    let text = r.text().await?;
    ensure!(
        text.contains("unsupported-version") && text.contains("protocol 1"),
        "{text}"
    );
    let r = post("/v1/pull")
        .header("tidesync-protocol", "7")
        .body(good.clone())
        .send()
        .await?;
    ensure_eq!(r.status().as_u16(), 400);
    // A good request still works, and the server is healthy.
    ensure_eq!(status(post("/v1/pull").body(good).send().await?), 200);
    ensure_eq!(
        client
            .get(format!("{}/health", server.url))
            .send()
            .await?
            .status()
            .as_u16(),
        200
    );
    Ok(())
}

async fn a_large_push_goes_in_halves_under_a_small_limit(hub: TestDb) -> TestResult {
    let sql = SqlHub::new(hub.connect_again().await?);
    let server = TestServer::start(HubServer::new(sql).await?.max_body_bytes(8 * 1024)).await?;
    let a1 = device(&server, "alice", "a1").await?;
    for i in 0..200 {
        // Random bodies: compression cannot bring them under the limit.
        note(&a1, "alice", &format!("{i} {}", Uuid::new_v4())).await?;
    }
    let r = a1.engine.sync_now().await?;
    ensure!(r.halted.is_none() && r.rejected.is_empty(), "{r:?}");
    ensure_eq!(r.pushed, 200);
    ensure_eq!(notes_of(&hub.db).await?.len(), 200);
    Ok(())
}

/// A backend of `user` on `server` with the notes and labels installed.
async fn installed(server: &Arc<TestServer>, user: &str) -> Result<common::http::Device, BoxError> {
    let backend = server.device(user).await?;
    backend
        .install(&[
            tidesync::table_spec::<notes::Entity>(),
            tidesync::table_spec::<labels::Entity>(),
        ])
        .await?;
    Ok(backend)
}

/// The insert of note `id` of `owner` by `origin` at `seq`.
fn new_note(origin: NodeId, seq: u64, id: Uuid, owner: &str, body: &str) -> Change {
    let mut c = change(
        origin,
        seq,
        Op::Insert,
        id,
        &[("owner", owner), ("body", body)],
    );
    c.columns
        .insert(0, ("id".into(), sea_orm::Value::Uuid(Some(id))));
    c
}

/// A change the hub's database refuses (a unique value another row holds)
/// leaves its row refused for the rest of the push: a delete of it that
/// follows is parked too, not logged as an ownerless tombstone of a row
/// the hub never had (which would hold the key for every user).
async fn a_row_the_database_refused_is_refused_for_the_rest_of_the_push(hub: TestDb) -> TestResult {
    let server = serve(&hub, RejectPolicy::Park).await?;
    let user = format!("dup-{}", Uuid::new_v4().simple());
    let d = device(&server, &user, "d").await?;
    note(&d, &user, "taken").await?;
    d.engine.sync_now().await?;
    hub.db
        .execute_unprepared("CREATE UNIQUE INDEX notes_body_unique ON notes (body)")
        .await?;
    let logged = log_size(&hub).await?;
    let backend = installed(&server, &user).await?;
    let origin = NodeId::random();
    let insert = |seq, id| new_note(origin, seq, id, &user, "taken");
    // The second insert keeps the batch refused as a whole (an insert and
    // a delete of one row merge to nothing), so it goes change by change.
    let (id, other) = (Uuid::new_v4(), Uuid::new_v4());
    let batch = [
        insert(1, id),
        change(origin, 2, Op::Delete, id, &[]),
        insert(3, other),
    ];
    let ack = backend.push(&batch).await?;
    ensure!(ack.halted.is_none(), "{ack:?}");
    ensure_eq!(ack.parked.len(), 3, "{ack:?}");
    ensure_eq!(log_size(&hub).await?, logged);
    ensure_eq!(notes_of(&hub.db).await?, vec![pair(&user, "taken")]);
    Ok(())
}

/// A push of more changes than a server takes at once (`MAX_PUSH`) gets
/// `413`, and the client pushes it in halves: all of it arrives. The cap
/// bounds how long one push holds the hub's sequence lock (a batch with a
/// refused change goes change by change, each in a savepoint).
async fn a_push_of_more_changes_than_the_server_takes_goes_in_halves(hub: TestDb) -> TestResult {
    let server = serve(&hub, RejectPolicy::Park).await?;
    let user = format!("bulk-{}", Uuid::new_v4().simple());
    let backend = installed(&server, &user).await?;
    let origin = NodeId::random();
    let n = sync_http::server::MAX_PUSH as u64 + 1;
    let batch: Vec<Change> = (1..=n)
        .map(|seq| new_note(origin, seq, Uuid::new_v4(), &user, &format!("bulk {seq}")))
        .collect();
    let ack = backend.push(&batch).await?;
    ensure!(ack.parked.is_empty() && ack.halted.is_none(), "{ack:?}");
    ensure_eq!(ack.acknowledged.len() as u64, n);
    ensure_eq!(notes_of(&hub.db).await?.len() as u64, n);
    ensure!(
        logs::text().lines().any(|l| l.contains("endpoint=\"push\"")
            && l.contains(&format!("user={user} "))
            && l.contains("status=413")),
        "no push of {user} was refused for its size"
    );
    Ok(())
}

async fn undeclared_and_redeclared_tables_are_refused_at_install(hub: TestDb) -> TestResult {
    let server = serve(&hub, RejectPolicy::Park).await?;
    let alice = server.device("alice").await?;
    let undeclared = tidesync::table_spec::<common::entities::contacts::Entity>();
    let e = alice
        .install(&[undeclared])
        .await
        .err()
        .ok_or("installed")?;
    ensure!(
        matches!(&e, Error::Config(m) if m.contains("declares no ownership") && m.contains("contacts")),
        "{e}"
    );
    alice
        .install(&[tidesync::table_spec::<notes::Entity>()])
        .await?;
    let other = tidesync::table_spec::<notes_by_body::Entity>();
    let e = alice.install(&[other]).await.err().ok_or("installed")?;
    ensure!(
        matches!(&e, Error::Config(m) if m.contains("cannot change who reads")),
        "{e}"
    );
    // A table an operator installed directly without owners (its record
    // `undeclared`): a device declaring it shared, or owned by a column of
    // its choice, is refused (it would read every row, or split them as it
    // likes), and the record stays.
    let direct = SqlHub::new(hub.connect_again().await?);
    let undeclared = tidesync::table_spec::<common::entities::contacts::Entity>();
    direct.install(std::slice::from_ref(&undeclared)).await?;
    for declared in [
        tidesync::Ownership::Shared,
        tidesync::Ownership::Owner("name".to_owned()),
    ] {
        let spec = tidesync::TableSpec {
            ownership: declared.clone(),
            ..undeclared.clone()
        };
        let e = alice
            .install(std::slice::from_ref(&spec))
            .await
            .err()
            .ok_or_else(|| format!("a device declared `contacts` {declared}"))?;
        ensure!(
            matches!(&e, Error::Config(m) if m.contains("records no owners")),
            "{e}"
        );
    }
    let record = common::read_meta_of(&hub.db, "_tidesync_hub_access", "contacts").await?;
    ensure_eq!(record.as_deref(), Some("undeclared"));
    Ok(())
}

async fn the_authorization_rule_refuses_what_it_names(hub: TestDb) -> TestResult {
    let sql = SqlHub::new(hub.connect_again().await?).with_policy(RejectPolicy::Park);
    let rule: Arc<tidesync::hub::Authorize> = Arc::new(|user: &str, c: &Change| {
        if c.table == "labels" && user != "admin" {
            return Err("only admin edits labels".into());
        }
        Ok(())
    });
    let server = TestServer::start(HubServer::new(sql).await?.with_authorization(rule)).await?;
    let bob = device(&server, "bob", "bob").await?;
    let admin = device(&server, "admin", "admin").await?;
    label(&bob, "bob's label").await?;
    note(&bob, "bob", "bob's note").await?;
    label(&admin, "official").await?;
    let r = bob.engine.sync_now().await?;
    ensure_eq!(r.rejected.len(), 1);
    ensure!(
        r.rejected[0].reason.contains("only admin edits labels"),
        "{r:?}"
    );
    admin.engine.sync_now().await?;
    bob.engine.sync_now().await?;
    ensure_eq!(
        labels_of(bob.db()).await?,
        vec!["bob's label".to_owned(), "official".to_owned()]
    );
    ensure_eq!(labels_of(&hub.db).await?, vec!["official".to_owned()]);
    ensure_eq!(notes_of(&hub.db).await?, vec![pair("bob", "bob's note")]);
    Ok(())
}

async fn an_unreachable_server_is_offline(hub: TestDb) -> TestResult {
    let server = serve(&hub, RejectPolicy::Park).await?;
    let token = server.token("alice").await?;
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", closed.local_addr()?);
    drop(closed);
    let backend = HttpBackend::builder(&url, token)
        .timeout(Duration::from_secs(5))
        .build()?;
    let e = backend
        .install(&[tidesync::table_spec::<notes::Entity>()])
        .await
        .err()
        .ok_or("reached a closed port")?;
    ensure!(matches!(e, Error::Offline(_)), "{e}");
    ensure!(
        !format!("{e:?}").contains("tsk_"),
        "the token is in the error: {e:?}"
    );
    Ok(())
}

/// The status a server answers to `head`, followed (if `stream`) by an
/// endless chunked body of spaces: the request is written on a raw
/// connection, so the answer may come before the body ends.
async fn raw_status(url: &str, head: &str, stream: bool) -> Result<u16, BoxError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let conn = tokio::net::TcpStream::connect(addr).await?;
    let (mut rd, mut wr) = conn.into_split();
    wr.write_all(head.as_bytes()).await?;
    let writer = tokio::spawn(async move {
        if stream {
            let chunk = format!("400\r\n{}\r\n", " ".repeat(1024));
            // Until the server stops reading (at most 1 GB).
            for _ in 0..(1 << 20) {
                if wr.write_all(chunk.as_bytes()).await.is_err() {
                    break;
                }
            }
        }
        wr
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        while !answer.windows(2).any(|w| w == b"\r\n") {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    writer.abort();
    read.map_err(|_| "no answer in 20 s")??;
    let line = String::from_utf8_lossy(&answer);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {line:?}"))?;
    Ok(status)
}

async fn the_hubs_own_tables_and_new_tables_are_refused_when_closed(hub: TestDb) -> TestResult {
    let server = serve(&hub, RejectPolicy::Park).await?;
    let alice = server.device("alice").await?;
    let mut own = tidesync::table_spec::<labels::Entity>();
    own.name = "_tidesync_tokens".into();
    let e = alice
        .install(&[own])
        .await
        .err()
        .ok_or("installed a hub table")?;
    ensure!(
        matches!(&e, Error::Config(m) if m.contains("hub's own")),
        "{e}"
    );
    // A server closed to new tables takes only the tables the hub has.
    let sql = SqlHub::new(hub.connect_again().await?);
    let closed = TestServer::start(HubServer::new(sql).await?.new_tables(false)).await?;
    let bob = closed.device("bob").await?;
    let e = bob
        .install(&[tidesync::table_spec::<notes::Entity>()])
        .await
        .err()
        .ok_or("a closed server took a new table")?;
    ensure!(
        matches!(&e, Error::Config(m) if m.contains("no new tables")),
        "{e}"
    );
    alice
        .install(&[tidesync::table_spec::<notes::Entity>()])
        .await?;
    bob.install(&[tidesync::table_spec::<notes::Entity>()])
        .await?;
    // Nor columns: a device whose entity has one more is refused there,
    // and the hub's table stays as it was (an open server adds it).
    let mut wider = tidesync::table_spec::<notes::Entity>();
    let mut extra = wider.columns.last().cloned().ok_or("no columns")?;
    extra.name = "squatted".into();
    extra.nullable = true;
    wider.columns.push(extra);
    let e = bob
        .install(std::slice::from_ref(&wider))
        .await
        .err()
        .ok_or("a closed server added a column")?;
    ensure!(
        matches!(&e, Error::Config(m) if m.contains("nor columns") && m.contains("`squatted`")),
        "{e}"
    );
    let has_column = |db: sea_orm::DatabaseConnection| async move {
        let sql = "SELECT squatted FROM notes";
        db.query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql,
        ))
        .await
        .is_ok()
    };
    ensure!(
        !has_column(hub.connect_again().await?).await,
        "the column was added"
    );
    alice.install(std::slice::from_ref(&wider)).await?;
    ensure!(
        has_column(hub.connect_again().await?).await,
        "an open server did not add it"
    );
    bob.install(std::slice::from_ref(&wider)).await?;
    Ok(())
}

/// Every way `token` could carry `secret` (its text, hex or base64 decoded
/// bytes), or `None`.
fn leaked(token: &str, secrets: &[Vec<u8>]) -> Option<String> {
    fn hex(s: &str) -> Option<Vec<u8>> {
        let s = s.as_bytes();
        if !s.len().is_multiple_of(2) {
            return None;
        }
        s.chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
            .collect()
    }
    fn base64(s: &str) -> Option<Vec<u8>> {
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in s.trim_end_matches('=').bytes() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' | b'-' => 62,
                b'/' | b'_' => 63,
                _ => return None,
            };
            bits = (bits << 6) | u32::from(v);
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
            }
        }
        Some(out)
    }
    let lower = token.to_ascii_lowercase();
    let forms = [
        Some(lower.clone().into_bytes()),
        hex(&lower),
        base64(token),
        // A token in parts (`a.b`): each part decoded.
    ];
    let parts = token
        .split(['.', ':', '~'])
        .flat_map(|p| [hex(&p.to_ascii_lowercase()), base64(p)]);
    for bytes in forms.into_iter().chain(parts).flatten() {
        for s in secrets {
            if bytes.windows(s.len()).any(|w| w.eq_ignore_ascii_case(s)) {
                return Some(String::from_utf8_lossy(s).into_owned());
            }
        }
    }
    None
}

/// The snapshot a row a page, through `first` and `second` in turn: its
/// rows and the tokens followed.
async fn walk(
    first: &dyn Hub,
    second: &dyn Hub,
) -> Result<(Vec<tidesync::hub::SnapshotRow>, Vec<String>), BoxError> {
    let mut after: Option<String> = None;
    let mut rows = Vec::new();
    let mut tokens = Vec::new();
    for page in 0.. {
        ensure!(page < 50, "the snapshot never ends");
        let via = if page % 2 == 0 { first } else { second };
        let (_, got) = via.snapshot(after.clone(), 1).await?;
        rows.extend(got.rows);
        match got.next {
            Some(next) => {
                tokens.push(next.clone());
                after = Some(next);
            }
            None => break,
        }
    }
    Ok((rows, tokens))
}

/// A user walking the snapshot page by page learns nothing of another
/// user's rows from the `next` tokens (neither their table nor their key),
/// a token works only for the user it was given to, and any server on the
/// hub database takes the tokens of another.
async fn snapshot_tokens_tell_nothing_of_other_users_rows(hub: TestDb) -> TestResult {
    let server = serve(&hub, RejectPolicy::Park).await?;
    let other = serve(&hub, RejectPolicy::Park).await?;
    let a = device(&server, "alice", "alice").await?;
    let mut hers = Vec::new();
    for i in 0..4 {
        hers.push(note(&a, "alice", &format!("alice-secret-diagnosis-{i}")).await?);
    }
    let r = a.engine.sync_now().await?;
    ensure!(r.rejected.is_empty() && r.halted.is_none(), "{r:?}");
    let b = device(&server, "bob", "bob").await?;
    let his = note(&b, "bob", "bob's").await?;
    let r = b.engine.sync_now().await?;
    ensure!(r.rejected.is_empty() && r.halted.is_none(), "{r:?}");
    // What must not be told: alice's keys in every form, her name, her
    // text.
    let mut secrets: Vec<Vec<u8>> = vec![b"alice".to_vec(), b"secret".to_vec()];
    for id in &hers {
        secrets.push(id.to_string().into_bytes());
        secrets.push(id.simple().to_string().into_bytes());
        secrets.push(id.as_bytes().to_vec());
    }
    let specs = [
        tidesync::table_spec::<notes::Entity>(),
        tidesync::table_spec::<labels::Entity>(),
    ];
    // Bob walks the snapshot a row at a time, every other page through the
    // other server.
    let bob = server.device("bob").await?;
    bob.install(&specs).await?;
    let bob_there = other.device("bob").await?;
    bob_there.install(&specs).await?;
    let (rows, tokens) = walk(&bob, &bob_there).await?;
    ensure!(!tokens.is_empty(), "the walk did not follow a token");
    for t in &tokens {
        if let Some(s) = leaked(t, &secrets) {
            return Err(format!("bob's token {t} tells {s:?}").into());
        }
    }
    let keys = |rows: &[tidesync::hub::SnapshotRow]| {
        let mut keys: Vec<_> = rows
            .iter()
            .map(|r| (r.table.clone(), r.pk.clone()))
            .collect();
        keys.sort_by_key(|k| format!("{k:?}"));
        keys
    };
    let note_keys = |ids: &[Uuid]| {
        let mut keys: Vec<_> = ids
            .iter()
            .map(|id| {
                (
                    "notes".to_owned(),
                    vec![("id".to_owned(), sea_orm::Value::Uuid(Some(*id)))],
                )
            })
            .collect();
        keys.sort_by_key(|k| format!("{k:?}"));
        keys
    };
    ensure_eq!(keys(&rows), note_keys(&[his]));
    // Alice walks hers the same way; her tokens are refused to bob.
    let alice = server.device("alice").await?;
    alice.install(&specs).await?;
    let alice_there = other.device("alice").await?;
    alice_there.install(&specs).await?;
    let (rows, tokens) = walk(&alice_there, &alice).await?;
    ensure_eq!(keys(&rows), note_keys(&hers));
    let token = tokens
        .last()
        .ok_or("alice's walk followed no token")?
        .clone();
    for via in [&bob, &bob_there] {
        match via.snapshot(Some(token.clone()), 1).await {
            Err(Error::Offline(e)) => return Err(format!("offline: {e}").into()),
            Err(_) => {}
            Ok(page) => {
                return Err(format!("bob read with alice's token: {page:?}").into());
            }
        }
    }
    // A token changed by one character, and a plain one naming a row, are
    // refused.
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
    let plain = serde_json::to_string(&("notes", format!("[{{\"Uuid\":\"{}\"}}]", hers[0]), 1))?;
    for bad in [String::from_utf8(forged)?, plain] {
        ensure!(
            alice.snapshot(Some(bad.clone()), 1).await.is_err(),
            "{bad} was taken"
        );
    }
    // A device whose bootstrap was cut off before the hub sealed its
    // tokens resumes after a plain one: refused, it starts over.
    let info = bob.install(&specs).await?;
    let b2 = device(&server, "bob", "b2").await?;
    let progress = serde_json::json!({
        "start": 0,
        "after": serde_json::to_string(&("labels", "[]", 1))?,
    });
    b2.db()
        .execute_raw(sea_orm::Statement::from_sql_and_values(
            b2.db().get_database_backend(),
            "INSERT INTO _tidesync_meta (\"key\", \"value\") VALUES (?, ?)",
            [
                format!("bootstrap:{}", info.hub_id).into(),
                progress.to_string().into(),
            ],
        ))
        .await?;
    b2.engine.sync_now().await?;
    ensure_eq!(notes_of(b2.db()).await?, vec![pair("bob", "bob's")]);
    Ok(())
}

async fn another_users_change_ids_are_not_told(hub: TestDb) -> TestResult {
    let server = serve(&hub, RejectPolicy::Park).await?;
    let alice = device(&server, "alice", "alice").await?;
    note(&alice, "alice", "hers").await?;
    alice.engine.sync_now().await?;
    let bob = server.device("bob").await?;
    bob.install(&[tidesync::table_spec::<notes::Entity>()])
        .await?;
    let batch = bob.pull(tidesync::hub::Cursor(0), 100).await?;
    ensure!(batch.changes.is_empty(), "{batch:?}");
    ensure!(
        batch.next > tidesync::hub::Cursor(0),
        "the cursor did not move past alice's change"
    );
    // Told only a fingerprint of it: not its id, and the same each time
    // (the device compares it at its next sync to find a restored hub).
    let theirs = alice.engine.replica().node_id();
    let told = batch.next_id.ok_or("nothing told at the cursor")?;
    ensure!(
        told.seq == 0 && told.origin != theirs,
        "bob was told {told:?} of alice's change"
    );
    let standing = bob.standing(NodeId::random(), Some(batch.next)).await?;
    ensure_eq!(standing.at, Some(told));
    // A pull of row states tells the same, and no row.
    let rows = bob
        .pull_states(tidesync::hub::Cursor(0), 100, NodeId::random())
        .await?;
    ensure!(rows.rows.is_empty(), "{rows:?}");
    ensure_eq!((rows.next, rows.next_id), (batch.next, Some(told)));
    // Alice is told the id of her own change.
    let hers = server.device("alice").await?;
    hers.install(&[tidesync::table_spec::<notes::Entity>()])
        .await?;
    let standing = hers.standing(NodeId::random(), Some(batch.next)).await?;
    ensure!(standing.at.is_some(), "{standing:?}");
    Ok(())
}

/// How many fuzz cases per endpoint (`TIDESYNC_FUZZ_CASES`, default 60).
fn fuzz_cases() -> usize {
    std::env::var("TIDESYNC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

async fn random_and_mutated_bodies_never_break_the_server(hub: TestDb) -> TestResult {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("TIDESYNC_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let sql = SqlHub::new(hub.connect_again().await?).with_policy(RejectPolicy::Park);
    let server = TestServer::start(HubServer::new(sql).await?.max_body_bytes(256 * 1024)).await?;
    // Real bodies to mutate: a device's install, push, pull and snapshot.
    let alice = device(&server, "alice", "alice").await?;
    for i in 0..5 {
        note(&alice, "alice", &format!("note {i}")).await?;
        label(&alice, &format!("label {i}")).await?;
    }
    alice.engine.replica().capture().await?;
    let pending = alice.engine.replica().pending(100).await?;
    // Alice's device has pushed once: its identity is hers.
    alice.engine.sync_now().await?;
    for i in 5..10 {
        note(&alice, "alice", &format!("note {i}")).await?;
    }
    let token = server.token("mallory").await?;
    let specs = vec![
        tidesync::table_spec::<notes::Entity>(),
        tidesync::table_spec::<labels::Entity>(),
    ];
    let valid: Vec<(&str, Vec<u8>)> = vec![
        (
            "install",
            serde_json::to_vec(&serde_json::json!({ "tables": specs }))?,
        ),
        (
            "push",
            serde_json::to_vec(&serde_json::json!({ "changes": pending }))?,
        ),
        (
            "standing",
            serde_json::to_vec(&serde_json::json!({ "origin": NodeId::random(), "at": 3 }))?,
        ),
        (
            "pull",
            serde_json::to_vec(&serde_json::json!({ "cursor": 0, "limit": 50 }))?,
        ),
        (
            "states",
            serde_json::to_vec(
                &serde_json::json!({ "cursor": 0, "limit": 50, "excluding": NodeId::random() }),
            )?,
        ),
        (
            "snapshot",
            serde_json::to_vec(&serde_json::json!({ "after": null, "limit": 50 }))?,
        ),
    ];
    let client = reqwest::Client::new();
    let mut seen = std::collections::BTreeMap::new();
    for (endpoint, body) in &valid {
        for case in 0..fuzz_cases() {
            let mutated = mutate(&mut rng, body, case);
            let zstd = rng.random_bool(0.2);
            let payload = if zstd {
                zstd::bulk::compress(&mutated, 1)?
            } else {
                mutated.clone()
            };
            let mut req = client
                .post(format!("{}/v1/{endpoint}", server.url))
                .bearer_auth(&token)
                .body(payload);
            if zstd {
                req = req.header("content-encoding", "zstd");
            }
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            *seen.entry((*endpoint, status)).or_insert(0) += 1;
            ensure!(
                matches!(status, 200 | 400 | 403 | 409 | 413 | 422),
                "seed {seed}: {endpoint} case {case} got {status}: {}\nbody: {}",
                resp.text().await.unwrap_or_default(),
                String::from_utf8_lossy(&mutated[..mutated.len().min(2000)])
            );
        }
    }
    // Still serving, and alice's own device still syncs.
    let r = alice.engine.sync_now().await?;
    ensure!(r.halted.is_none(), "seed {seed}: {r:?}");
    ensure_eq!(notes_of(&hub.db).await?.len(), 10);
    eprintln!("fuzz seed {seed}: {seen:?}");
    Ok(())
}

/// A mutation of `body`: random bytes, a flipped, cut, repeated or
/// inserted stretch, or a JSON value swapped for another.
fn mutate(rng: &mut impl rand::Rng, body: &[u8], case: usize) -> Vec<u8> {
    let mut out = body.to_vec();
    match case % 6 {
        0 => (0..rng.random_range(0..200))
            .map(|_| rng.random())
            .collect(),
        1 => {
            for _ in 0..rng.random_range(1..8) {
                if out.is_empty() {
                    break;
                }
                let i = rng.random_range(0..out.len());
                out[i] = rng.random();
            }
            out
        }
        2 => {
            out.truncate(rng.random_range(0..out.len().max(1)));
            out
        }
        3 => {
            let i = rng.random_range(0..out.len().max(1));
            let junk: &[u8] = [
                &b"null"[..],
                b"-1",
                b"1e999",
                b"\"\\u0000\"",
                b"[[[[",
                b"{}",
                b"18446744073709551616",
                b"\"\xff\xfe\"",
            ][rng.random_range(0..8)];
            out.splice(i..i, junk.iter().copied());
            out
        }
        4 => {
            // Swap a JSON number or string for another kind of value.
            let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
                return out;
            };
            let replacement = [
                serde_json::json!(null),
                serde_json::json!(-1),
                serde_json::json!(u64::MAX),
                serde_json::json!("x"),
                serde_json::json!([]),
                serde_json::json!({"String": "x"}),
                serde_json::json!("a".repeat(10_000)),
            ][rng.random_range(0..7)]
            .clone();
            swap_random(rng, &mut v, replacement);
            serde_json::to_vec(&v).unwrap_or(out)
        }
        _ => {
            // A stretch repeated: long bodies, deep nesting.
            let i = rng.random_range(0..out.len().max(1));
            let j = (i + rng.random_range(1..64)).min(out.len());
            let stretch = out[i..j].to_vec();
            for _ in 0..rng.random_range(1..50) {
                out.splice(i..i, stretch.iter().copied());
            }
            out
        }
    }
}

/// Replace one value somewhere inside `v`.
fn swap_random(rng: &mut impl rand::Rng, v: &mut serde_json::Value, with: serde_json::Value) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            let k = m
                .keys()
                .nth(rng.random_range(0..m.len()))
                .cloned()
                .unwrap_or_default();
            if rng.random_bool(0.3) {
                m.insert(k, with);
            } else if let Some(inner) = m.get_mut(&k) {
                swap_random(rng, inner, with);
            }
        }
        serde_json::Value::Array(a) if !a.is_empty() => {
            let i = rng.random_range(0..a.len());
            if rng.random_bool(0.3) {
                a[i] = with;
            } else {
                swap_random(rng, &mut a[i], with);
            }
        }
        other => *other = with,
    }
}

async fn a_slow_client_does_not_block_others(hub: TestDb) -> TestResult {
    let sql = SqlHub::new(hub.connect_again().await?);
    let server = TestServer::start(
        HubServer::new(sql)
            .await?
            .body_timeout(Duration::from_secs(2)),
    )
    .await?;
    let token = server.token("slow").await?;
    // More clients than the server answers at once, all of one user, that
    // announce a body and send ten bytes of it: the user's cap holds them,
    // not the server's.
    let clients = sync_http::server::MAX_IN_FLIGHT + 6;
    let mut slow = Vec::new();
    for _ in 0..clients {
        let addr = server.url.trim_start_matches("http://").to_owned();
        let head = format!(
            "POST /v1/push HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
             content-length: 1000\r\n\r\n{{\"changes\""
        );
        slow.push(tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut conn = tokio::net::TcpStream::connect(addr).await?;
            conn.write_all(head.as_bytes()).await?;
            let mut answer = vec![0u8; 64];
            let n = conn.read(&mut answer).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer[..n]).into_owned())
        }));
    }
    // Meanwhile a device syncs, quickly.
    let a1 = device(&server, "alice", "a1").await?;
    note(&a1, "alice", "not blocked").await?;
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), a1.engine.sync_now()).await??;
    ensure!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    ensure_eq!(notes_of(&hub.db).await?, vec![pair("alice", "not blocked")]);
    // The slow ones within the user's cap are answered 408 once their time
    // is up; the rest 503 at once.
    let (mut timed_out, mut refused) = (0, 0);
    for s in slow {
        let answer = tokio::time::timeout(Duration::from_secs(20), s).await???;
        if answer.contains(" 408 ") {
            timed_out += 1;
        } else if answer.contains(" 503 ") {
            refused += 1;
        } else {
            return Err(format!("neither 408 nor 503: {answer}").into());
        }
    }
    ensure_eq!(
        (timed_out, refused),
        (
            sync_http::server::MAX_IN_FLIGHT_PER_USER,
            clients - sync_http::server::MAX_IN_FLIGHT_PER_USER
        )
    );
    Ok(())
}

/// Each token's lookup is a query of the hub database, made within one of
/// the server's slots: while the tokens table is locked (a slow database),
/// requests with made-up tokens past the server's cap get `503` at once
/// instead of piling up on the database's connections; once it answers,
/// the others get `401`. (SQLite cannot hold a lock against readers: there
/// only the `401`s are checked.)
async fn requests_without_an_account_are_bounded_too(hub: TestDb) -> TestResult {
    use sea_orm::TransactionTrait;
    use sync_http::server::MAX_IN_FLIGHT;
    let server = serve(&hub, RejectPolicy::Park).await?;
    let token = server.token("alice").await?;
    // A token of the right shape and id, with a wrong secret: looked up.
    let last = if token.ends_with('0') { '1' } else { '0' };
    let bogus = format!("{}{last}", &token[..token.len() - 1]);
    let locker = hub.connect_again().await?;
    let tx = locker.begin().await?;
    let locked = match hub.dialect {
        common::Dialect::Postgres => {
            tx.execute_unprepared("LOCK TABLE _tidesync_tokens IN ACCESS EXCLUSIVE MODE")
                .await?;
            true
        }
        common::Dialect::MySql => {
            tx.execute_unprepared("LOCK TABLES _tidesync_tokens WRITE")
                .await?;
            true
        }
        common::Dialect::Sqlite => false,
    };
    let clients = MAX_IN_FLIGHT + 6;
    let (answers, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..clients {
        let addr = server.url.trim_start_matches("http://").to_owned();
        let head = format!(
            "POST /v1/pull HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {bogus}\r\n\
             content-length: 2\r\nconnection: close\r\n\r\n{{}}"
        );
        let answers = answers.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let answer = async {
                let mut conn = tokio::net::TcpStream::connect(addr).await?;
                conn.write_all(head.as_bytes()).await?;
                let mut answer = vec![0u8; 64];
                let n = conn.read(&mut answer).await?;
                Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer[..n]).into_owned())
            };
            let _ = answers.send(answer.await.map_err(|e| e.to_string()));
        });
    }
    drop(answers);
    let status = |a: &Result<String, String>| match a {
        Ok(a) if a.contains(" 503 ") => 503,
        Ok(a) if a.contains(" 401 ") => 401,
        _ => 0,
    };
    let mut seen = Vec::new();
    if locked {
        // Those past the cap, at once; the rest wait for the database.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while seen.len() < clients - MAX_IN_FLIGHT {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(a)) => seen.push(a),
                _ => break,
            }
        }
        ensure!(
            seen.len() == clients - MAX_IN_FLIGHT && seen.iter().all(|a| status(a) == 503),
            "with the tokens table locked, {} answers came: {seen:?}",
            seen.len()
        );
    }
    if hub.dialect == common::Dialect::MySql {
        // On the connection that holds the lock (LOCK TABLES ended the
        // transaction, not the lock).
        tx.execute_unprepared("UNLOCK TABLES").await?;
    }
    tx.rollback().await?;
    while let Some(a) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await? {
        seen.push(a);
    }
    let count = |s: u16| seen.iter().filter(|a| status(a) == s).count();
    ensure_eq!(seen.len(), clients);
    ensure!(
        count(401) >= MAX_IN_FLIGHT && count(401) + count(503) == clients,
        "{seen:?}"
    );
    Ok(())
}

async fn tokens_never_appear_in_logs(hub: TestDb) -> TestResult {
    let server = serve(&hub, RejectPolicy::Park).await?;
    let token = server.token("alice").await?;
    let revoked = server.token("alice").await?;
    server.server.tokens().revoke(&revoked).await?;
    let a1 = Device {
        engine: tidesync::SyncEngine::new(
            tidesync::Replica::builder(TestDb::create(common::Dialect::Sqlite, "logs").await?.db)
                .register::<notes::Entity>()
                .create_tables()
                .open()
                .await?,
            Arc::new(HttpBackend::new(&server.url, token.clone())?),
        ),
        local: TestDb::create(common::Dialect::Sqlite, "unused").await?,
    };
    note(&a1, "alice", "logged").await.ok();
    a1.engine.sync_now().await?;
    for bad in [&revoked, &format!("{token}x"), &"tsk_nonsense".to_owned()] {
        let e = HttpBackend::new(&server.url, bad.clone())?
            .pull(tidesync::hub::Cursor(0), 10)
            .await
            .err()
            .ok_or("a bad token was taken")?;
        ensure!(
            !e.to_string().contains(bad.as_str()),
            "the error shows the token: {e}"
        );
    }
    let logs = logs::text();
    ensure!(
        logs.contains("user=alice"),
        "the server's requests were not logged"
    );
    for secret in [&token, &revoked] {
        let (_, secret_part) = secret.rsplit_once('_').ok_or("token shape")?;
        ensure!(!logs.contains(secret_part), "a token is in the logs");
    }
    let shown = format!("{:?}", HttpBackend::new(&server.url, token.clone())?);
    ensure!(!shown.contains(&token), "Debug shows the token: {shown}");
    Ok(())
}

async fn jwts_sign_in_their_subject_until_they_expire(hub: TestDb) -> TestResult {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let now = chrono::Utc::now().timestamp();
    let claims = |sub: &str, exp: i64| serde_json::json!({ "sub": sub, "exp": exp, "iss": "idp" });
    let hs = |secret: &[u8], c: &serde_json::Value| {
        encode(
            &Header::new(Algorithm::HS256),
            c,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    let sql = SqlHub::new(hub.connect_again().await?);
    let server = TestServer::start(
        HubServer::new(sql)
            .await?
            .with_jwt(sync_http::JwtKey::hs256(b"app secret").issuer("idp")),
    )
    .await?;
    let good = hs(b"app secret", &claims("alice", now + 600));
    let a1: Arc<dyn Hub> = Arc::new(HttpBackend::new(&server.url, good)?);
    let a1 = device_on(a1, "jwt", |b| {
        b.register::<notes::Entity>().register::<labels::Entity>()
    })
    .await?;
    note(&a1, "alice", "by jwt").await?;
    let r = a1.engine.sync_now().await?;
    ensure!(r.rejected.is_empty() && r.halted.is_none(), "{r:?}");
    ensure_eq!(notes_of(&hub.db).await?, vec![pair("alice", "by jwt")]);
    let spec = [tidesync::table_spec::<notes::Entity>()];
    for (what, token) in [
        ("expired", hs(b"app secret", &claims("alice", now - 600))),
        (
            "signed with another secret",
            hs(b"other secret", &claims("alice", now + 600)),
        ),
        (
            "without a subject",
            hs(b"app secret", &claims("", now + 600)),
        ),
        (
            "of another issuer",
            hs(
                b"app secret",
                &serde_json::json!({"sub": "alice", "exp": now + 600, "iss": "evil"}),
            ),
        ),
        ("unsigned", {
            let head = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
            let body = hs(b"app secret", &claims("alice", now + 600));
            format!("{head}.{}.", body.split('.').nth(1).unwrap_or_default())
        }),
    ] {
        let e = HttpBackend::new(&server.url, token)?
            .install(&spec)
            .await
            .err()
            .ok_or_else(|| format!("a JWT {what} was taken"))?;
        ensure!(matches!(e, Error::Unauthorized(_)), "{what}: {e}");
    }
    // RS256 with the provider's public key.
    let private = include_bytes!("fixtures/jwt_rs256_private.pem");
    let public = include_bytes!("fixtures/jwt_rs256_public.pem");
    let sql = SqlHub::new(hub.connect_again().await?);
    let rs = TestServer::start(
        HubServer::new(sql)
            .await?
            .with_jwt(sync_http::JwtKey::rs256_pem(public)?),
    )
    .await?;
    let token = encode(
        &Header::new(Algorithm::RS256),
        &claims("bob", now + 600),
        &EncodingKey::from_rsa_pem(private)?,
    )?;
    HttpBackend::new(&rs.url, token)?.install(&spec).await?;
    // An HS256 token made with the public key as its secret (the classic
    // algorithm confusion) is refused.
    let confused = hs(public, &claims("bob", now + 600));
    let e = HttpBackend::new(&rs.url, confused)?
        .install(&spec)
        .await
        .err()
        .ok_or("algorithm confusion was taken")?;
    ensure!(matches!(e, Error::Unauthorized(_)), "{e}");
    Ok(())
}

async fn a_renewed_token_keeps_a_device_syncing(hub: TestDb) -> TestResult {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let now = chrono::Utc::now().timestamp();
    let jwt = |exp: i64| {
        encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({ "sub": "alice", "exp": exp }),
            &EncodingKey::from_secret(b"app secret"),
        )
    };
    let sql = SqlHub::new(hub.connect_again().await?);
    let server = TestServer::start(
        HubServer::new(sql)
            .await?
            .with_jwt(sync_http::JwtKey::hs256(b"app secret")),
    )
    .await?;
    // The device's token has expired by the time it syncs.
    let backend = Arc::new(HttpBackend::new(&server.url, jwt(now - 600)?)?);
    let a1 = device_on(backend.clone(), "renewed", |b| {
        b.register::<notes::Entity>().register::<labels::Entity>()
    })
    .await?;
    note(&a1, "alice", "written offline").await?;
    let e = a1
        .engine
        .sync_now()
        .await
        .err()
        .ok_or("an expired JWT synced")?;
    ensure!(matches!(e, Error::Unauthorized(_)), "{e}");
    // Nothing written: not even the table installed.
    ensure!(
        notes_of(&hub.db).await.map_or(true, |n| n.is_empty()),
        "an expired JWT wrote"
    );
    ensure!(backend.set_token("").is_err(), "an empty token was taken");
    backend.set_token(jwt(now + 600)?)?;
    let r = a1.engine.sync_now().await?;
    ensure!(r.rejected.is_empty() && r.halted.is_none(), "{r:?}");
    ensure_eq!(
        notes_of(&hub.db).await?,
        vec![pair("alice", "written offline")]
    );
    Ok(())
}

async fn a_user_cannot_push_under_another_users_device_identity(hub: TestDb) -> TestResult {
    let server = serve(&hub, RejectPolicy::Park).await?;
    let alice = device(&server, "alice", "alice").await?;
    label(&alice, "alice's label").await?;
    alice.engine.sync_now().await?;
    // Bob learns alice's device identity from the shared label she made.
    let bob = server.device("bob").await?;
    bob.install(&[tidesync::table_spec::<labels::Entity>()])
        .await?;
    let pulled = bob.pull(tidesync::hub::Cursor(0), 100).await?;
    // (the node of its clock: a pull of changes carries no pusher's id).
    let hers = pulled.changes.first().ok_or("bob saw no label")?.hlc.node;
    // And pushes under it, far ahead of her sequence.
    let mut forged = change(hers, 1_000, Op::Insert, Uuid::new_v4(), &[]);
    forged.table = "labels".into();
    forged.columns = vec![
        ("id".into(), forged.pk[0].1.clone()),
        ("name".into(), sea_orm::Value::String(Some("forged".into()))),
    ];
    let e = bob
        .push(&[forged])
        .await
        .err()
        .ok_or("bob pushed as alice's device")?;
    ensure!(matches!(e, Error::Unauthorized(_)), "{e}");
    // Alice's next changes are applied, not taken as already delivered.
    label(&alice, "alice's second").await?;
    let r = alice.engine.sync_now().await?;
    ensure_eq!(r.pushed, 1);
    ensure_eq!(
        labels_of(&hub.db).await?,
        vec!["alice's label".to_owned(), "alice's second".to_owned()]
    );
    Ok(())
}

async fn another_devices_install_does_not_change_how_this_ones_pushes_merge(
    hub: TestDb,
) -> TestResult {
    let server = serve(&hub, RejectPolicy::Park).await?;
    let alice = device(&server, "alice", "alice").await?;
    alice.engine.sync_now().await?;
    // Bob's device (another version of the app, or a hostile one)
    // installs `notes` without its `body` column, on the same server.
    let mut narrow = tidesync::table_spec::<notes::Entity>();
    narrow.columns.retain(|c| c.name != "body");
    server.device("bob").await?.install(&[narrow]).await?;
    // Alice's pushes are still merged with her own tables.
    note(&alice, "alice", "with a body").await?;
    let r = alice.engine.sync_now().await?;
    ensure!(r.rejected.is_empty() && r.halted.is_none(), "{r:?}");
    ensure_eq!(notes_of(&hub.db).await?, vec![pair("alice", "with a body")]);
    Ok(())
}

async fn installs_cannot_reach_other_tables_or_inject_sql(hub: TestDb) -> TestResult {
    // The application's own table in the hub database.
    hub.db
        .execute_unprepared("CREATE TABLE users (id VARCHAR(36) PRIMARY KEY, role VARCHAR(20))")
        .await?;
    let server = serve(&hub, RejectPolicy::Park).await?;
    let mallory = server.device("mallory").await?;
    let shared = |name: &str| {
        let mut t = tidesync::table_spec::<labels::Entity>();
        t.name = name.into();
        t
    };
    let refused =
        |e: Option<Error>, why: &str| matches!(&e, Some(Error::Config(m)) if m.contains(why));
    let e = mallory.install(&[shared("_TIDESYNC_TOKENS")]).await.err();
    ensure!(refused(e, "hub's own"), "upper-case hub table");
    let e = mallory.install(&[shared("users")]).await.err();
    ensure!(
        refused(e, "not one of its synced tables"),
        "the app's table"
    );
    let e = mallory
        .install(&[shared("x; DROP TABLE users")])
        .await
        .err();
    ensure!(refused(e, "not a plain name"), "a table name with SQL");
    // Work without bound: one table named many times, or thousands.
    let e = mallory
        .install(&[shared("twice"), shared("TWICE")])
        .await
        .err();
    ensure!(refused(e, "named twice"), "a table named twice");
    let many: Vec<_> = (0..300).map(|i| shared(&format!("t{i}"))).collect();
    let e = mallory.install(&many).await.err();
    ensure!(refused(e, "at most 256"), "300 tables");
    let mut injected = shared("sneaky");
    injected.columns.push(tidesync::ColumnSpec {
        name: "x".into(),
        ty: sea_orm::sea_query::ColumnType::Custom(
            sea_orm::sea_query::Alias::new("text, role text").into(),
        ),
        nullable: true,
        kind: None,
    });
    let e = mallory.install(&[injected]).await.err();
    ensure!(
        refused(e, "not take from devices"),
        "a custom type with SQL"
    );
    let mut schema = shared("elsewhere");
    schema.schema = Some("public".into());
    let e = mallory.install(&[schema]).await.err();
    ensure!(refused(e, "name no schema"), "a schema");
    // Nothing was created or recorded.
    ensure!(
        !hub.table_names()
            .await?
            .iter()
            .any(|t| t == "sneaky" || t == "elsewhere"),
        "created"
    );
    // An operator's server may adopt tables made by hand.
    let sql = SqlHub::new(hub.connect_again().await?);
    let adopting =
        TestServer::start(HubServer::new(sql).await?.adopt_existing_tables(true)).await?;
    let mut users = shared("users");
    users.columns = vec![
        tidesync::ColumnSpec {
            name: "id".into(),
            ty: sea_orm::sea_query::ColumnType::Uuid,
            nullable: false,
            kind: None,
        },
        tidesync::ColumnSpec {
            name: "name".into(),
            ty: sea_orm::sea_query::ColumnType::Text,
            nullable: true,
            kind: None,
        },
    ];
    adopting.device("op").await?.install(&[users]).await?;
    Ok(())
}

async fn forged_keys_and_doubled_columns_are_refused(hub: TestDb) -> TestResult {
    let server = serve(&hub, RejectPolicy::Park).await?;
    let bob = server.device("bob").await?;
    bob.install(&[tidesync::table_spec::<notes::Entity>()])
        .await?;
    let me = NodeId::random();
    let id = Uuid::new_v4();
    let insert = |seq, columns: Vec<(&str, sea_orm::Value)>| {
        let mut c = change(me, seq, Op::Insert, id, &[]);
        c.columns = columns
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect();
        c
    };
    let s = |v: &str| sea_orm::Value::String(Some(v.to_owned()));
    let uuid = sea_orm::Value::Uuid(Some(id));
    // The owner twice, the second another user's.
    let doubled = insert(
        1,
        vec![
            ("id", uuid.clone()),
            ("owner", s("bob")),
            ("owner", s("alice")),
            ("body", s("x")),
        ],
    );
    // A key column set to another value than the key.
    let moved = insert(
        2,
        vec![
            ("id", sea_orm::Value::Uuid(Some(Uuid::new_v4()))),
            ("owner", s("bob")),
            ("body", s("x")),
        ],
    );
    // The key as text for a UUID column.
    let mut retyped = insert(3, vec![("owner", s("bob")), ("body", s("x"))]);
    retyped.pk = vec![("id".into(), s(&id.to_string()))];
    retyped.columns.insert(0, ("id".into(), s(&id.to_string())));
    let ack = bob.push(&[doubled, moved, retyped]).await?;
    ensure_eq!(ack.parked.len(), 3);
    let reasons: Vec<&str> = ack.parked.iter().map(|r| r.reason.as_str()).collect();
    ensure!(reasons[0].contains("set twice"), "{reasons:?}");
    ensure!(
        reasons[1].contains("another value than its key"),
        "{reasons:?}"
    );
    ensure!(
        reasons[2].contains("another type") || reasons[2].contains("cannot store"),
        "{reasons:?}"
    );
    ensure_eq!(notes_of(&hub.db).await?, Vec::<(String, String)>::new());
    Ok(())
}

/// A table with owners, keyed by one column `id` of type `key`.
fn owned_table(name: &str, key: sea_orm::sea_query::ColumnType) -> tidesync::TableSpec {
    use sea_orm::sea_query::ColumnType;
    let col = |n: &str, ty: ColumnType| tidesync::ColumnSpec {
        name: n.into(),
        ty,
        nullable: false,
        kind: None,
    };
    let mut t = tidesync::table_spec::<notes::Entity>();
    t.name = name.into();
    t.pk = vec![col("id", key.clone())];
    t.columns = vec![
        col("id", key),
        col("owner", ColumnType::Text),
        col("body", ColumnType::Text),
    ];
    t.ownership = tidesync::Ownership::Owner("owner".into());
    t
}

/// A change of `table`'s row `key` (its `id`), setting `columns`.
fn keyed_change(
    table: &str,
    origin: NodeId,
    seq: u64,
    op: Op,
    key: sea_orm::Value,
    columns: &[(&str, &str)],
) -> Change {
    let mut c = change(origin, seq, op, Uuid::nil(), columns);
    c.table = table.into();
    c.pk = vec![("id".into(), key.clone())];
    if op == Op::Insert {
        c.columns.insert(0, ("id".into(), key));
    }
    c
}

/// (owner, body) of every row of `table` in the hub database, sorted.
async fn owners_and_bodies(hub: &TestDb, table: &str) -> Result<Vec<(String, String)>, BoxError> {
    let q = sea_orm::Statement::from_string(
        hub.db.get_database_backend(),
        format!("SELECT owner, body FROM {table}"),
    );
    let mut out = Vec::new();
    for r in hub.db.query_all_raw(q).await? {
        out.push((r.try_get_by_index(0)?, r.try_get_by_index(1)?));
    }
    out.sort();
    Ok(out)
}

/// A device's spec decides nothing of a table's key: bob's spec with the
/// key retyped (INTEGER for the hub's BIGINT) is refused at install, and
/// with the hub's spec, a key value of another variant than the recorded
/// type's (`Int` for BIGINT, `Char` for text) is refused at push: each
/// would be another row state than alice's row, but the same database row.
async fn a_devices_spec_cannot_retype_a_key_nor_alias_it(hub: TestDb) -> TestResult {
    use sea_orm::sea_query::ColumnType;
    let server = serve(&hub, RejectPolicy::Park).await?;
    let alice = server.device("alice").await?;
    let by_int = owned_table("kv_int", ColumnType::BigInteger);
    let by_text = owned_table("kv_text", ColumnType::Text);
    alice.install(&[by_int.clone(), by_text.clone()]).await?;
    let a = NodeId::random();
    let five = sea_orm::Value::BigInt(Some(5));
    let k = sea_orm::Value::String(Some("k".into()));
    let hers = [("owner", "alice"), ("body", "hers")];
    let ack = alice
        .push(&[
            keyed_change("kv_int", a, 1, Op::Insert, five, &hers),
            keyed_change("kv_text", a, 2, Op::Insert, k, &hers),
        ])
        .await?;
    ensure!(ack.parked.is_empty() && ack.halted.is_none(), "{ack:?}");
    let bob = server.device("bob").await?;
    // The key retyped, renamed, or with another column: refused, loud.
    for (what, spec) in [
        ("retyped", owned_table("kv_int", ColumnType::Integer)),
        ("as text", owned_table("kv_int", ColumnType::Text)),
        ("renamed", {
            let mut t = by_int.clone();
            t.columns[0].name = "ident".into();
            t.pk[0].name = "ident".into();
            t
        }),
        ("widened", {
            let mut t = by_int.clone();
            t.pk.push(t.columns[2].clone());
            t
        }),
    ] {
        let e = bob.install(&[spec]).await.err();
        ensure!(
            matches!(&e, Some(Error::Config(m)) if m.contains("key")),
            "{what}: {e:?}"
        );
    }
    // With the hub's spec: values of another variant than the key's type.
    bob.install(&[by_int, by_text]).await?;
    let b = NodeId::random();
    let his = [("owner", "bob"), ("body", "bob's")];
    let int = sea_orm::Value::Int(Some(5));
    let ch = sea_orm::Value::Char(Some('k'));
    let ack = bob
        .push(&[
            keyed_change("kv_int", b, 1, Op::Insert, int.clone(), &his),
            keyed_change("kv_int", b, 2, Op::Delete, int, &[]),
            keyed_change("kv_text", b, 3, Op::Insert, ch.clone(), &his),
            keyed_change("kv_text", b, 4, Op::Delete, ch, &[]),
        ])
        .await?;
    let parked: Vec<u64> = ack.parked.iter().map(|r| r.id.seq).collect();
    ensure_eq!(parked, vec![1, 2, 3, 4]);
    for r in &ack.parked {
        // For the key's type, not only as another user's row (which a
        // value taken for the same key would also be).
        ensure!(
            r.reason.contains("refused to user `bob`") && r.reason.contains("another type"),
            "{r:?}"
        );
    }
    for t in ["kv_int", "kv_text"] {
        ensure_eq!(
            owners_and_bodies(&hub, t).await?,
            vec![pair("alice", "hers")]
        );
    }
    Ok(())
}

/// Keys the hub's database takes for another (PostgreSQL: `'ab '` for
/// `'ab'` in a `char(4)`, a time finer than a microsecond for the
/// microsecond; MySQL: `'ab '` for `'ab'` in any text key) are other row
/// states, so they pass the ownership check as new rows: the hub writes
/// such rows as plain inserts, which collide and are refused, never as
/// upserts that would overwrite alice's row. The refusal is parked even
/// under `Halt` (as for a row another user holds), so bob's stream goes
/// on; his later delete of his key has no row of his to delete.
async fn a_key_the_database_takes_for_another_overwrites_nothing(hub: TestDb) -> TestResult {
    use chrono::{TimeZone, Utc};
    use sea_orm::sea_query::ColumnType;
    let server = serve(&hub, RejectPolicy::Halt).await?;
    let alice = server.device("alice").await?;
    let by_char = owned_table("kv_char", ColumnType::Char(Some(4)));
    let by_time = owned_table("kv_time", ColumnType::TimestampWithTimeZone);
    alice.install(&[by_char.clone(), by_time.clone()]).await?;
    let at = Utc.timestamp_opt(1_700_000_000, 1_000).unwrap();
    let finer = Utc.timestamp_opt(1_700_000_000, 1_400).unwrap();
    let a = NodeId::random();
    let hers = [("owner", "alice"), ("body", "hers")];
    let ack = alice
        .push(&[
            keyed_change("kv_char", a, 1, Op::Insert, "ab".into(), &hers),
            keyed_change("kv_time", a, 2, Op::Insert, at.into(), &hers),
        ])
        .await?;
    ensure!(ack.parked.is_empty() && ack.halted.is_none(), "{ack:?}");
    let bob = server.device("bob").await?;
    bob.install(&[by_char, by_time]).await?;
    let b = NodeId::random();
    let his = [("owner", "bob"), ("body", "bob's")];
    // The inserts, then the deletes, each push on its own (in one push
    // they would cancel out before reaching the database).
    let pushes = [
        vec![
            keyed_change("kv_char", b, 1, Op::Insert, "ab ".into(), &his),
            keyed_change("kv_time", b, 2, Op::Insert, finer.into(), &his),
            keyed_change("kv_char", b, 3, Op::Insert, "zz".into(), &his),
        ],
        vec![
            keyed_change("kv_char", b, 4, Op::Delete, "ab ".into(), &[]),
            keyed_change("kv_time", b, 5, Op::Delete, finer.into(), &[]),
        ],
    ];
    for (i, push) in pushes.iter().enumerate() {
        let ack = bob.push(push).await?;
        ensure!(
            ack.halted.is_none(),
            "push {i} halted bob's stream: {ack:?}"
        );
        // Alice's rows as she wrote them, whatever became of bob's (a row
        // of its own where the database tells the keys apart).
        for t in ["kv_char", "kv_time"] {
            let rows = owners_and_bodies(&hub, t).await?;
            ensure!(
                rows.contains(&pair("alice", "hers")),
                "{t} after push {i}: alice's row was overwritten or deleted: {rows:?}"
            );
        }
    }
    ensure!(
        owners_and_bodies(&hub, "kv_char")
            .await?
            .contains(&pair("bob", "bob's")),
        "bob's next row did not arrive"
    );
    Ok(())
}

/// A bootstrap page from a server that has not seen this device's install
/// (another server took it, or this one restarted since) names each row's
/// key columns as the hub records them, not after some other install.
async fn a_server_that_never_saw_the_install_names_keys_as_the_hub(hub: TestDb) -> TestResult {
    let one = serve(&hub, RejectPolicy::Park).await?;
    let two = serve(&hub, RejectPolicy::Park).await?;
    let alice = device(&one, "alice", "alice").await?;
    note(&alice, "alice", "hers").await?;
    alice.engine.sync_now().await?;
    let balancer = common::http::Balancer::start(vec![one.url.clone(), two.url.clone()]).await?;
    let backend = HttpBackend::new(&balancer.url, one.token("alice").await?)?;
    backend
        .install(&[tidesync::table_spec::<notes::Entity>()])
        .await?;
    balancer.switch();
    let (_, page) = backend.snapshot(None, 100).await?;
    ensure_eq!(page.rows.len(), 1);
    let names: Vec<&str> = page.rows[0].pk.iter().map(|(n, _)| n.as_str()).collect();
    ensure_eq!(names, vec!["id"]);
    Ok(())
}

/// Two first installs of one table at once, one keyed by BIGINT and one
/// by text: whichever makes the table, the key the hub records is that
/// table's (the other install is refused). Recorded after the table, the
/// loser of the `CREATE TABLE` could record its key over the winner's
/// table, and every device of the winner's kind would be refused for good.
async fn first_installs_at_once_record_the_key_of_the_table_made(hub: TestDb) -> TestResult {
    use sea_orm::sea_query::ColumnType;
    let one = SqlHub::new(hub.connect_again().await?);
    let two = SqlHub::new(hub.connect_again().await?);
    one.install(&[]).await?;
    for round in 0..12 {
        let name = format!("race{round}");
        let by_int = owned_table(&name, ColumnType::BigInteger);
        let by_text = owned_table(
            &name,
            ColumnType::String(sea_orm::sea_query::StringLen::N(40)),
        );
        let (by_int, by_text) = (
            std::slice::from_ref(&by_int),
            std::slice::from_ref(&by_text),
        );
        let (a, b) = if round % 2 == 0 {
            tokio::join!(one.install(by_int), two.install(by_text))
        } else {
            let (b, a) = tokio::join!(two.install(by_text), one.install(by_int));
            (a, b)
        };
        ensure!(
            a.is_ok() != b.is_ok() || (a.is_err() && b.is_err()),
            "round {round}: both installs of other keys went through"
        );
        let record = common::read_meta_of(&hub.db, "_tidesync_hub_keys", &name).await?;
        let Some(record) = record else {
            ensure!(a.is_err() && b.is_err(), "round {round}: no key recorded");
            continue;
        };
        let sql = match hub.dialect {
            common::Dialect::Sqlite => {
                format!("SELECT type AS t FROM pragma_table_info('{name}') WHERE name = 'id'")
            }
            common::Dialect::Postgres => format!(
                "SELECT data_type::text AS t FROM information_schema.columns \
                 WHERE table_name = '{name}' AND column_name = 'id'"
            ),
            common::Dialect::MySql => format!(
                "SELECT CAST(DATA_TYPE AS CHAR) AS t FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{name}' AND COLUMN_NAME = 'id'"
            ),
        };
        let column = hub
            .db
            .query_one_raw(sea_orm::Statement::from_string(
                hub.db.get_database_backend(),
                sql,
            ))
            .await?
            .ok_or_else(|| format!("round {round}: a key recorded, no table made"))?;
        let column: String = column.try_get("", "t")?;
        let int_column = column.to_ascii_lowercase().contains("int");
        ensure!(
            record.contains("big_integer") == int_column,
            "round {round}: the hub records {record} for a table keyed by {column}"
        );
        ensure!(
            a.is_ok() == int_column,
            "round {round}: the install of the table made was refused ({a:?} / {b:?})"
        );
    }
    Ok(())
}

/// The rows of the hub's record `meta` (one of its key/value tables) for
/// `name`.
async fn records_of(hub: &TestDb, meta: &str, name: &str) -> Result<usize, BoxError> {
    let key = if hub.db.get_database_backend() == sea_orm::DbBackend::MySql {
        "`key`"
    } else {
        "\"key\""
    };
    let q = sea_orm::Statement::from_string(
        hub.db.get_database_backend(),
        format!("SELECT value FROM {meta} WHERE {key} = '{name}'"),
    );
    Ok(hub.db.query_all_raw(q).await?.len())
}

/// An install refused for its spec (a key outside the columns, no key, a
/// column twice) creates and records nothing; and a name recorded without
/// being a synced table (a failed install of an earlier release) does not
/// open the application's table of that name to devices.
async fn a_refused_install_records_nothing_and_takes_no_app_table(hub: TestDb) -> TestResult {
    use sea_orm::sea_query::ColumnType;
    let server = serve(&hub, RejectPolicy::Park).await?;
    let mallory = server.device("mallory").await?;
    let shared = |name: &str| {
        let mut t = tidesync::table_spec::<labels::Entity>();
        t.name = name.into();
        t
    };
    let mut outside = shared("app_users");
    outside.pk = vec![tidesync::ColumnSpec {
        name: "nope".into(),
        ty: ColumnType::Text,
        nullable: false,
        kind: None,
    }];
    let mut keyless = shared("app_users");
    keyless.pk.clear();
    let mut twice = shared("app_users");
    twice.columns.push(twice.columns[1].clone());
    for (what, spec) in [("outside", outside), ("keyless", keyless), ("twice", twice)] {
        let e = mallory.install(&[spec]).await.err();
        ensure!(matches!(&e, Some(Error::Config(_))), "{what}: {e:?}");
        for meta in ["_tidesync_hub_access", "_tidesync_hub_places"] {
            ensure_eq!(records_of(&hub, meta, "app_users").await?, 0);
        }
        ensure!(
            !hub.table_names().await?.iter().any(|t| t == "app_users"),
            "{what}: created"
        );
    }
    // The application's own table, made later: not a synced table.
    hub.db
        .execute_unprepared("CREATE TABLE app_users (id VARCHAR(36) PRIMARY KEY, name VARCHAR(20))")
        .await?;
    let e = mallory.install(&[shared("app_users")]).await.err();
    ensure!(
        matches!(&e, Some(Error::Config(m)) if m.contains("not one of its synced tables")),
        "{e:?}"
    );
    // A record an earlier release left of a failed install, then the
    // application's table of that name.
    hub.db
        .execute_unprepared(&format!(
            "INSERT INTO _tidesync_hub_access VALUES ('app_roles', '{}')",
            tidesync::Ownership::Shared.record()
        ))
        .await?;
    hub.db
        .execute_unprepared("CREATE TABLE app_roles (id VARCHAR(36) PRIMARY KEY, name VARCHAR(20))")
        .await?;
    let e = mallory.install(&[shared("app_roles")]).await.err();
    ensure!(
        matches!(&e, Some(Error::Config(m)) if m.contains("not one of its synced tables")),
        "{e:?}"
    );
    // A synced table, once made, is taken by the next devices.
    mallory.install(&[shared("tags")]).await?;
    server
        .device("alice")
        .await?
        .install(&[shared("tags")])
        .await?;
    Ok(())
}

async fn one_change_too_large_halts_and_the_sync_still_pulls(hub: TestDb) -> TestResult {
    let sql = SqlHub::new(hub.connect_again().await?);
    let server = TestServer::start(HubServer::new(sql).await?.max_body_bytes(16 * 1024)).await?;
    let a1 = device(&server, "alice", "a1").await?;
    let a2 = device(&server, "alice", "a2").await?;
    note(&a2, "alice", "from a2").await?;
    a2.engine.sync_now().await?;
    // A note whose random body no compression brings under the limit.
    let big: String = (0..40)
        .map(|_| Uuid::new_v4().to_string())
        .collect::<Vec<_>>()
        .join(" ")
        .repeat(20);
    note(&a1, "alice", &big).await?;
    let r = a1.engine.sync_now().await?;
    let halted = r.halted.ok_or("the large note did not halt")?;
    ensure!(
        halted.reason.contains("too large") || halted.reason.contains("large"),
        "{halted:?}"
    );
    // The sync still pulled a2's note, and the large one waits.
    ensure!(
        notes_of(a1.db()).await?.contains(&pair("alice", "from a2")),
        "a1 did not pull"
    );
    ensure_eq!(a1.engine.replica().pending_count().await?, 1);
    Ok(())
}
