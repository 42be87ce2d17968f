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
        rows_made_offline_before_the_first_sync_are_kept,
        bad_credentials_get_401_and_nothing_is_read_or_written,
        oversized_malformed_and_unknown_version_bodies_are_refused,
        a_large_push_goes_in_halves_under_a_small_limit,
        undeclared_and_redeclared_tables_are_refused_at_install,
        the_authorization_rule_refuses_what_it_names,
        an_unreachable_server_is_offline,
    ];
    run(trials)
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
    notes::ActiveModel {
        id: Set(id),
        owner: Set(owner.into()),
        body: Set(body.into()),
    }
    .insert(d.db())
    .await?;
    Ok(id)
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
            .all(|c| c.id.origin == me && c.id.seq == 5),
        "{pulled:?}"
    );
    ensure_eq!(pulled.changes.len(), 1);
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
            "SELECT COUNT(*) AS n FROM _tidesync_changes",
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
