//! A prototype of the next format's hot paths, in bench code only (the
//! library does not use it): what push and pull cost when the replica keeps
//! one fixed-width version row per row instead of an outbox and shadows,
//! and the hub one version row per row instead of a log and row states.
//!
//! It is a floor with the work around it: the dirty-marker triggers are
//! tidesync's, and sealing, merging per column and the hub's sequence are
//! done as the redesign would do them, set by set. What it leaves out:
//! conflict policies other than last-writer-wins, refusals of values a
//! dialect cannot hold, key changes, access control, and every check of
//! the real push (clashing ids, clocks too far ahead, halts). It is here to
//! show how far the format goes before that work is written, not to stand
//! in for it.
//!
//! The replica (SQLite):
//! - `_p_d`: the dirty markers, written by triggers of tidesync's shape
//!   (key, version, wall time, whether a row with the key went);
//! - `_p_v`: per row the local sequence of its last local change, its
//!   delete clock, one 16-byte clock per column (wall microseconds,
//!   counter, node ordinal) and one 8-byte hash per column (what capture
//!   diffs against instead of a copy of the values);
//! - `_p_meta`: next sequence, clock, pull cursor.
//!
//! A push seals a page of markers in one local transaction (one query
//! joins markers, rows and version rows; one upsert of version rows; one
//! delete of the markers), then sends the changes: on the hub one
//! transaction reserves a range of hub sequences, reads the version rows
//! of the keys, writes the rows that win (one upsert per set of columns)
//! and their version rows, and records the batch (origin, first and last
//! sequence, a digest per change) in one row. A pull reads version rows
//! after its cursor joined with the hub's rows, and writes rows and version
//! rows locally in one transaction per page.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sea_orm::sea_query::{
    Alias, Expr, ExprTrait, IntoIden, OnConflict, Order, Query, SimpleExpr, ValueTuple,
};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, QueryResult, Statement,
    TransactionTrait, Value,
};

use super::Res;

/// The synced columns of the contacts table after its key, in order.
const COLS: [&str; 6] = ["name", "email", "phone", "company", "notes", "updated_at"];
/// Bytes of one column's clock.
const CLOCK: usize = 16;

/// A hybrid clock as the version rows hold it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Clock {
    wall: u64,
    counter: u32,
    node: u32,
}

impl Clock {
    fn put(self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.wall.to_be_bytes());
        out[8..12].copy_from_slice(&self.counter.to_be_bytes());
        out[12..16].copy_from_slice(&self.node.to_be_bytes());
    }

    fn get(b: &[u8]) -> Clock {
        let n = |r: std::ops::Range<usize>| b[r].iter().fold(0u64, |a, &x| a << 8 | u64::from(x));
        Clock {
            wall: n(0..8),
            counter: n(8..12) as u32,
            node: n(12..16) as u32,
        }
    }

    fn bytes(self) -> Vec<u8> {
        let mut b = vec![0; CLOCK];
        self.put(&mut b);
        b
    }
}

/// The node's clock and sequence while it seals.
struct Stamp {
    node: u32,
    last: Clock,
    next_seq: i64,
}

impl Stamp {
    fn tick(&mut self, wall_us: u64) -> Clock {
        self.last = match wall_us > self.last.wall {
            true => Clock {
                wall: wall_us,
                counter: 0,
                node: self.node,
            },
            false => Clock {
                counter: self.last.counter + 1,
                node: self.node,
                ..self.last
            },
        };
        self.last
    }
}

/// FNV-1a over a column's value: what capture compares instead of the
/// value itself.
/// (The design asks for a keyed 128-bit hash; FNV-1a costs less, so the
/// prototype's time is if anything short of the design's by the
/// difference.)
fn hash(v: &Value) -> u64 {
    let (tag, bytes): (u8, Vec<u8>) = match v {
        Value::String(Some(s)) => (1, s.as_bytes().to_vec()),
        Value::ChronoDateTimeUtc(Some(t)) => (2, t.timestamp_micros().to_be_bytes().to_vec()),
        Value::Bytes(Some(b)) => (3, b.clone()),
        _ => (0, Vec::new()),
    };
    std::iter::once(tag)
        .chain(bytes)
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
}

/// The synced values of a row read through a `LEFT JOIN`, or `None` when
/// the row is not there (`name` is `NOT NULL`).
fn read_vals(r: &QueryResult) -> Res<Option<Vec<Value>>> {
    let Some(name) = r.try_get::<Option<String>>("", "name")? else {
        return Ok(None);
    };
    Ok(Some(vec![
        Value::String(Some(name)),
        Value::String(r.try_get::<Option<String>>("", "email")?),
        Value::String(r.try_get::<Option<String>>("", "phone")?),
        Value::String(r.try_get::<Option<String>>("", "company")?),
        Value::String(r.try_get::<Option<String>>("", "notes")?),
        Value::ChronoDateTimeUtc(
            r.try_get::<Option<chrono::DateTime<chrono::Utc>>>("", "updated_at")?,
        ),
    ]))
}

fn a(name: &str) -> Alias {
    Alias::new(name)
}

/// The replica's tables and its capture triggers (tidesync's shape), on a
/// SQLite file that has the contacts table.
pub(super) async fn replica(db: &DatabaseConnection) -> Res<()> {
    db.execute_unprepared(
        "CREATE TABLE _p_applying (session INTEGER PRIMARY KEY); \
         CREATE TABLE _p_d (id BLOB PRIMARY KEY, ver INTEGER NOT NULL, \
         wall_us INTEGER NOT NULL, gone INTEGER NOT NULL); \
         CREATE TABLE _p_v (id BLOB PRIMARY KEY, seq INTEGER NOT NULL, del BLOB, \
         clocks BLOB NOT NULL, hashes BLOB NOT NULL) WITHOUT ROWID; \
         CREATE INDEX _p_v_seq ON _p_v (seq); \
         CREATE TABLE _p_meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL); \
         INSERT INTO _p_meta VALUES ('next_seq', 1), ('wall', 0), ('counter', 0), \
         ('acked', 0), ('cursor', 0)",
    )
    .await?;
    let now = "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)";
    let when = "WHEN NOT EXISTS (SELECT 1 FROM _p_applying)";
    for (event, row, gone) in [
        ("INSERT", "NEW", 0),
        ("UPDATE", "NEW", 0),
        ("DELETE", "OLD", 1),
    ] {
        db.execute_unprepared(&format!(
            "CREATE TRIGGER _p_{event} AFTER {event} ON contacts {when} BEGIN \
             INSERT INTO _p_d (id, ver, wall_us, gone) VALUES ({row}.id, 1, {now}, {gone}) \
             ON CONFLICT (id) DO UPDATE SET ver = _p_d.ver + 1, wall_us = excluded.wall_us, \
             gone = CASE WHEN excluded.gone > 0 THEN _p_d.ver + 1 ELSE _p_d.gone END; END"
        ))
        .await?;
    }
    Ok(())
}

/// The hub's tables for the contacts table `table`: its version rows, its
/// sequence, its record of pushed batches.
pub(super) async fn hub(db: &DatabaseConnection, table: &str) -> Res<()> {
    let (key, blob, int) = match db.get_database_backend() {
        DbBackend::Postgres => ("uuid", "bytea", "bigint"),
        DbBackend::MySql => ("binary(16)", "blob", "bigint"),
        _ => ("blob", "blob", "integer"),
    };
    let q = quote(db);
    let versions = q(&format!("{table}_v"));
    for sql in [
        format!(
            "CREATE TABLE {versions} (id {key} NOT NULL PRIMARY KEY, hub_seq {int} NOT NULL, \
             del {blob}, clocks {blob} NOT NULL)"
        ),
        format!(
            "CREATE UNIQUE INDEX {} ON {versions} (hub_seq)",
            q(&format!("{table}_v_seq"))
        ),
        format!(
            "CREATE TABLE {} (k varchar(16) NOT NULL PRIMARY KEY, v {int} NOT NULL)",
            q(&format!("{table}_meta"))
        ),
        format!(
            "INSERT INTO {} (k, v) VALUES ('seq', 0)",
            q(&format!("{table}_meta"))
        ),
        format!(
            "CREATE TABLE {} (origin {int} NOT NULL, first_seq {int} NOT NULL, \
             last_seq {int} NOT NULL, hub_first {int} NOT NULL, digests {blob} NOT NULL, \
             PRIMARY KEY (origin, first_seq))",
            q(&format!("{table}_batches"))
        ),
    ] {
        db.execute_unprepared(&sql).await?;
    }
    Ok(())
}

fn quote(db: &DatabaseConnection) -> impl Fn(&str) -> String + use<> {
    let mysql = db.get_database_backend() == DbBackend::MySql;
    move |n: &str| match mysql {
        true => format!("`{n}`"),
        false => format!("\"{n}\""),
    }
}

/// One sealed change: the row's key, its local sequence and clock, the
/// columns it sets (a bit each) with the row's values, or a delete.
struct Sealed {
    id: uuid::Uuid,
    seq: i64,
    clock: Clock,
    mask: u32,
    vals: Option<Vec<Value>>,
}

/// The replica's metadata, read once per transaction.
async fn meta(tx: &DatabaseTransaction) -> Res<HashMap<String, i64>> {
    let rows = tx
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT k, v FROM _p_meta",
        ))
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("", "k")?, r.try_get("", "v")?)))
        .collect()
}

/// Store `pairs` in the replica's metadata, in one statement.
async fn meta_set(tx: &DatabaseTransaction, pairs: &[(&str, i64)]) -> Res<()> {
    let mut q = Query::insert();
    q.into_table(a("_p_meta"))
        .columns([a("k"), a("v")])
        .on_conflict(OnConflict::column(a("k")).update_column(a("v")).to_owned());
    for (k, v) in pairs {
        q.values_panic([(*k).into(), (*v).into()]);
    }
    tx.execute(&q).await?;
    Ok(())
}

/// The version rows of `ids` in `table`: clocks, delete clock and, where
/// the table has them, hashes.
async fn held_versions(
    tx: &DatabaseTransaction,
    table: &str,
    ids: impl Iterator<Item = uuid::Uuid>,
    with_hashes: bool,
) -> Res<HashMap<uuid::Uuid, Held>> {
    let mut cols = vec![a("id"), a("del"), a("clocks")];
    if with_hashes {
        cols.push(a("hashes"));
    }
    let q = Query::select()
        .columns(cols)
        .from(a(table))
        .and_where(Expr::col(a("id")).is_in(ids.map(Value::from)))
        .to_owned();
    let mut held = HashMap::new();
    for r in tx.query_all(&q).await? {
        let hashes = match with_hashes {
            true => Some(r.try_get("", "hashes")?),
            false => None,
        };
        held.insert(
            r.try_get("", "id")?,
            Held {
                clocks: r.try_get("", "clocks")?,
                del: r.try_get("", "del")?,
                hashes,
            },
        );
    }
    Ok(held)
}

/// A version row as read by [`held_versions`].
struct Held {
    clocks: Vec<u8>,
    del: Option<Vec<u8>>,
    hashes: Option<Vec<u8>>,
}

impl Held {
    /// Clocks and delete clock, as [`merge`] takes them.
    fn as_held(&self) -> (&[u8], Option<&[u8]>) {
        (&self.clocks, self.del.as_deref())
    }
}

/// Seal a page of up to `page` markers (see the module doc). `acked` is written in
/// the same transaction. An empty page when no marker is left.
async fn seal_once(
    local: &DatabaseConnection,
    node: u32,
    acked: i64,
    page: u64,
) -> Res<Option<Vec<Sealed>>> {
    let tx = local.begin().await?;
    let m = meta(&tx).await?;
    let get = |k: &str| m.get(k).copied().ok_or(format!("no `{k}` in _p_meta"));
    let mut stamp = Stamp {
        node,
        last: Clock {
            wall: get("wall")? as u64,
            counter: get("counter")? as u32,
            node,
        },
        next_seq: get("next_seq")?,
    };
    // Markers, rows and version rows in one query.
    let mut q = Query::select();
    q.expr_as(Expr::col((a("m"), a("id"))), a("id"))
        .columns([
            (a("m"), a("ver")),
            (a("m"), a("wall_us")),
            (a("m"), a("gone")),
        ])
        .columns(COLS.map(|c| (a("c"), a(c))))
        .columns([
            (a("v"), a("clocks")),
            (a("v"), a("hashes")),
            (a("v"), a("del")),
        ])
        .from_as(a("_p_d"), a("m"))
        .join_as(
            sea_orm::sea_query::JoinType::LeftJoin,
            a("contacts"),
            a("c"),
            Expr::col((a("c"), a("id"))).equals((a("m"), a("id"))),
        )
        .join_as(
            sea_orm::sea_query::JoinType::LeftJoin,
            a("_p_v"),
            a("v"),
            Expr::col((a("v"), a("id"))).equals((a("m"), a("id"))),
        )
        .order_by((a("m"), a("id")), Order::Asc)
        .limit(page);
    let rows = tx.query_all(&q).await?;
    let mut sealed = Vec::with_capacity(rows.len());
    let mut versions = Query::insert();
    versions
        .into_table(a("_p_v"))
        .columns(["id", "seq", "del", "clocks", "hashes"].map(a))
        .on_conflict(
            OnConflict::column(a("id"))
                .update_columns(["seq", "del", "clocks", "hashes"].map(a))
                .to_owned(),
        );
    let mut markers = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: uuid::Uuid = r.try_get("", "id")?;
        let ver: i64 = r.try_get("", "ver")?;
        let wall: i64 = r.try_get("", "wall_us")?;
        let gone: i64 = r.try_get("", "gone")?;
        markers.push(ValueTuple::Two(id.into(), ver.into()));
        let clocks: Option<Vec<u8>> = r.try_get("", "clocks")?;
        let hashes: Option<Vec<u8>> = r.try_get("", "hashes")?;
        let dead: Option<Vec<u8>> = r.try_get("", "del")?;
        // What the row's version row becomes: the changed columns, the
        // clocks and hashes, the delete, the values to send.
        let (mask, c, h, del, vals) = match read_vals(r)? {
            Some(vals) => {
                let now: Vec<u64> = vals.iter().map(hash).collect();
                // A row that went (here, or by a pulled delete) and is
                // back is new whole, even with the values it had.
                let mask = match (&hashes, gone, &dead) {
                    (Some(h), 0, None) => now
                        .iter()
                        .enumerate()
                        .filter(|(i, x)| h[i * 8..i * 8 + 8] != x.to_be_bytes())
                        .fold(0u32, |m, (i, _)| m | 1 << i),
                    _ => (1 << COLS.len()) - 1,
                };
                if mask == 0 {
                    continue;
                }
                let c = clocks.unwrap_or_else(|| vec![0; CLOCK * COLS.len()]);
                let h: Vec<u8> = now.iter().flat_map(|x| x.to_be_bytes()).collect();
                (mask, c, h, false, Some(vals))
            }
            None => match (clocks, hashes, dead) {
                (Some(c), Some(h), None) => (0, c, h, true, None),
                // Never sealed, or dead already.
                _ => continue,
            },
        };
        let clock = stamp.tick(wall as u64);
        let mut c = c;
        for i in (0..COLS.len()).filter(|i| mask & 1 << i != 0) {
            clock.put(&mut c[i * CLOCK..(i + 1) * CLOCK]);
        }
        let seq = stamp.next_seq;
        stamp.next_seq += 1;
        versions.values_panic([
            id.into(),
            seq.into(),
            Value::Bytes(del.then(|| clock.bytes())).into(),
            c.into(),
            h.into(),
        ]);
        sealed.push(Sealed {
            id,
            seq,
            clock,
            mask,
            vals,
        });
    }
    if rows.is_empty() {
        meta_set(&tx, &[("acked", acked)]).await?;
        tx.commit().await?;
        return Ok(None);
    }
    if !sealed.is_empty() {
        tx.execute(&versions).await?;
    }
    let del = Query::delete()
        .from_table(a("_p_d"))
        .and_where(Expr::tuple([Expr::col(a("id")), Expr::col(a("ver"))]).in_tuples(markers))
        .to_owned();
    tx.execute(&del).await?;
    meta_set(
        &tx,
        &[
            ("next_seq", stamp.next_seq),
            ("wall", stamp.last.wall as i64),
            ("counter", i64::from(stamp.last.counter)),
            ("acked", acked),
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(Some(sealed))
}

/// Seal pages of markers until one has changes to send (a page can hold
/// only writes that changed nothing), or none is left.
async fn seal(local: &DatabaseConnection, node: u32, acked: i64, page: u64) -> Res<Vec<Sealed>> {
    loop {
        match seal_once(local, node, acked, page).await? {
            Some(sealed) if sealed.is_empty() => {}
            Some(sealed) => return Ok(sealed),
            None => return Ok(Vec::new()),
        }
    }
}

/// Push every marker of `local` into the hub's contacts table `table`:
/// seal a page of `page_rows` markers, send it, take the next. The number of
/// changes and the time.
pub(super) async fn push(
    local: &DatabaseConnection,
    hub: &DatabaseConnection,
    table: &str,
    node: u32,
    page_rows: u64,
) -> Res<(u64, Duration)> {
    let started = Instant::now();
    let mut acked = 0;
    let mut sent = 0;
    // The hub applies a page while the next one is sealed.
    let mut inflight: Option<(tokio::task::JoinHandle<Res<()>>, i64)> = None;
    loop {
        let page = seal(local, node, acked, page_rows).await?;
        if let Some((applying, last)) = inflight.take() {
            applying.await??;
            acked = last;
        }
        let Some(last) = page.last().map(|s| s.seq) else {
            break;
        };
        sent += page.len() as u64;
        let (hub, table) = (hub.clone(), table.to_owned());
        let applying = tokio::spawn(async move { apply_on_hub(&hub, &table, node, &page).await });
        inflight = Some((applying, last));
    }
    if acked > 0 {
        // The last acknowledgement, in a transaction of its own.
        let tx = local.begin().await?;
        meta_set(&tx, &[("acked", acked)]).await?;
        tx.commit().await?;
    }
    Ok((sent, started.elapsed()))
}

/// The rows to write for a page of changes: per set of winning columns,
/// the rows (whole) that set them; and the keys to delete.
#[derive(Default)]
struct Writes {
    upserts: HashMap<u32, Vec<(uuid::Uuid, Vec<Value>)>>,
    deletes: Vec<uuid::Uuid>,
}

/// Execute `w` on `tx`: one multi-row upsert per set of columns, one
/// delete.
async fn write_rows(tx: &DatabaseTransaction, table: &str, w: Writes) -> Res<()> {
    for (mask, rows) in w.upserts {
        // Whole rows (a row new here is inserted whole; the key's other
        // columns are `NOT NULL`), the winning columns set on a conflict.
        let cols: Vec<usize> = (0..COLS.len()).filter(|i| mask & 1 << i != 0).collect();
        let mut q = Query::insert();
        q.into_table(a(table))
            .columns(std::iter::once("id").chain(COLS).map(a));
        for (id, vals) in rows {
            let mut row: Vec<SimpleExpr> = vec![id.into()];
            row.extend(vals.into_iter().map(SimpleExpr::from));
            q.values_panic(row);
        }
        q.on_conflict(
            OnConflict::column(a("id"))
                .update_columns(cols.iter().map(|&i| a(COLS[i]).into_iden()))
                .to_owned(),
        );
        tx.execute(&q).await?;
    }
    if !w.deletes.is_empty() {
        let q = Query::delete()
            .from_table(a(table))
            .and_where(Expr::col(a("id")).is_in(w.deletes.into_iter().map(Value::from)))
            .to_owned();
        tx.execute(&q).await?;
    }
    Ok(())
}

/// What merging one row's incoming clocks into its held version row gives
/// (per column the greater clock, for the delete the greater clock; the
/// row lives when some column's clock is after the delete).
struct Merged {
    clocks: Vec<u8>,
    del: Option<Clock>,
    /// The columns the incoming side won.
    won: u32,
    /// Whether the row lives after the merge, and whether it lived before.
    live: bool,
    was_live: bool,
}

/// Merge `incoming` (a clock per column, zero for a column it does not
/// set, and a delete clock) into `held` (a version row's clocks and delete
/// clock, `None` for a row never seen).
fn merge(
    incoming: &[Clock],
    incoming_del: Option<Clock>,
    held: Option<(&[u8], Option<&[u8]>)>,
) -> Merged {
    let none = Clock::default();
    let mut clocks = held.map_or_else(|| vec![0; CLOCK * COLS.len()], |(c, _)| c.to_vec());
    let held_del = held.and_then(|(_, d)| d.map(Clock::get));
    let newest = |c: &[u8]| {
        (0..COLS.len())
            .map(|i| Clock::get(&c[i * CLOCK..]))
            .max()
            .unwrap_or(none)
    };
    let lives = |c: &[u8], d: Option<Clock>| {
        let n = newest(c);
        n > none && d.is_none_or(|d| n > d)
    };
    let was_live = held.is_some_and(|(c, _)| lives(c, held_del));
    let mut won = 0;
    for (i, theirs) in incoming.iter().enumerate() {
        if *theirs > Clock::get(&clocks[i * CLOCK..]) {
            won |= 1 << i;
            theirs.put(&mut clocks[i * CLOCK..(i + 1) * CLOCK]);
        }
    }
    let del = Ord::max(held_del, incoming_del);
    let live = lives(&clocks, del);
    Merged {
        clocks,
        del,
        won,
        live,
        was_live,
    }
}

/// Apply a page of sealed changes on the hub in one transaction.
async fn apply_on_hub(
    hub: &DatabaseConnection,
    table: &str,
    node: u32,
    page: &[Sealed],
) -> Res<()> {
    let q = quote(hub);
    let kind = hub.get_database_backend();
    let tx = hub.begin().await?;
    let n = page.len() as i64;
    let meta = q(&format!("{table}_meta"));
    let first = match kind {
        DbBackend::MySql => {
            let r = tx
                .query_one_raw(Statement::from_string(
                    kind,
                    format!("SELECT v FROM {meta} WHERE k = 'seq' FOR UPDATE"),
                ))
                .await?
                .ok_or("no hub sequence")?;
            let v: i64 = r.try_get("", "v")?;
            tx.execute_raw(Statement::from_string(
                kind,
                format!("UPDATE {meta} SET v = v + {n} WHERE k = 'seq'"),
            ))
            .await?;
            v + 1
        }
        _ => {
            let r = tx
                .query_one_raw(Statement::from_string(
                    kind,
                    format!("UPDATE {meta} SET v = v + {n} WHERE k = 'seq' RETURNING v"),
                ))
                .await?
                .ok_or("no hub sequence")?;
            let v: i64 = r.try_get("", "v")?;
            v - n + 1
        }
    };
    // The origin's progress: changes after it are new; one at or before
    // it would be compared with the digest recorded for it (a resend, or a
    // copy of the device), which this bench never sends.
    let progress = Query::select()
        .expr_as(Expr::col(a("last_seq")).max(), a("p"))
        .from(a(&format!("{table}_batches")))
        .and_where(Expr::col(a("origin")).eq(i64::from(node)))
        .to_owned();
    let done: Option<i64> = match tx.query_one(&progress).await? {
        Some(r) => r.try_get("", "p")?,
        None => None,
    };
    if done.is_some_and(|d| page[0].seq <= d) {
        return Err(format!("change {} was pushed before", page[0].seq).into());
    }
    let versions = format!("{table}_v");
    let held = held_versions(&tx, &versions, page.iter().map(|s| s.id), false).await?;
    let mut w = Writes::default();
    let mut v = Query::insert();
    v.into_table(a(&versions))
        .columns(["id", "hub_seq", "del", "clocks"].map(a))
        .on_conflict(
            OnConflict::column(a("id"))
                .update_columns(["hub_seq", "del", "clocks"].map(a))
                .to_owned(),
        );
    let mut digests = Vec::with_capacity(page.len() * 16);
    for (i, s) in page.iter().enumerate() {
        let h = held.get(&s.id).map(Held::as_held);
        let incoming: Vec<Clock> = (0..COLS.len())
            .map(|i| match s.mask & 1 << i != 0 {
                true => s.clock,
                false => Clock::default(),
            })
            .collect();
        let m = merge(&incoming, s.vals.is_none().then_some(s.clock), h);
        match (&s.vals, m.live) {
            (Some(vals), true) if m.won != 0 || !m.was_live => {
                // A row new here (or back) is inserted whole.
                let set = if m.was_live {
                    m.won
                } else {
                    (1 << COLS.len()) - 1
                };
                w.upserts.entry(set).or_default().push((s.id, vals.clone()));
            }
            (_, false) if m.was_live => w.deletes.push(s.id),
            _ => {}
        }
        v.values_panic([
            s.id.into(),
            (first + i as i64).into(),
            Value::Bytes(m.del.map(Clock::bytes)).into(),
            m.clocks.into(),
        ]);
        let digest = s
            .vals
            .iter()
            .flatten()
            .fold(s.seq as u64 ^ u64::from(s.mask), |d, x| {
                d.rotate_left(7) ^ hash(x)
            });
        digests.extend_from_slice(&s.seq.to_be_bytes());
        digests.extend_from_slice(&digest.to_be_bytes());
    }
    write_rows(&tx, table, w).await?;
    tx.execute(&v).await?;
    let batch = Query::insert()
        .into_table(a(&format!("{table}_batches")))
        .columns(["origin", "first_seq", "last_seq", "hub_first", "digests"].map(a))
        .values_panic([
            i64::from(node).into(),
            page[0].seq.into(),
            page[page.len() - 1].seq.into(),
            first.into(),
            digests.into(),
        ])
        .to_owned();
    tx.execute(&batch).await?;
    tx.commit().await?;
    Ok(())
}

/// Pull every version row after the replica's cursor from the hub's
/// contacts table `table` into `local`, a page of `page_rows` per
/// transaction. The number of rows and the time.
pub(super) async fn pull(
    hub: &DatabaseConnection,
    table: &str,
    local: &DatabaseConnection,
    page_rows: u64,
) -> Res<(u64, Duration)> {
    let started = Instant::now();
    let mut pulled = 0;
    let cursor = {
        let tx = local.begin().await?;
        let c = meta(&tx).await?.get("cursor").copied().unwrap_or(0);
        tx.commit().await?;
        c
    };
    // The next page is read from the hub while this one is applied.
    let fetch = |cursor: i64| {
        let (hub, table) = (hub.clone(), table.to_owned());
        tokio::spawn(async move { read_page(&hub, &table, cursor, page_rows).await })
    };
    let mut ahead = fetch(cursor);
    loop {
        let (page, next) = ahead.await??;
        if page.is_empty() {
            break;
        }
        ahead = fetch(next);
        apply_locally(local, &page, next).await?;
        pulled += page.len() as u64;
    }
    Ok((pulled, started.elapsed()))
}

/// The page of up to `page_rows` version rows after `cursor`, joined with
/// their rows, and the cursor after it.
async fn read_page(
    hub: &DatabaseConnection,
    table: &str,
    cursor: i64,
    page_rows: u64,
) -> Res<(Vec<Pulled>, i64)> {
    let versions = format!("{table}_v");
    let page_q = Query::select()
        .column((a("v"), a("id")))
        .columns([
            (a("v"), a("hub_seq")),
            (a("v"), a("del")),
            (a("v"), a("clocks")),
        ])
        .columns(COLS.map(|c| (a("c"), a(c))))
        .from_as(a(&versions), a("v"))
        .join_as(
            sea_orm::sea_query::JoinType::LeftJoin,
            a(table),
            a("c"),
            Expr::col((a("c"), a("id"))).equals((a("v"), a("id"))),
        )
        .and_where(Expr::col((a("v"), a("hub_seq"))).gt(cursor))
        .order_by((a("v"), a("hub_seq")), Order::Asc)
        .limit(page_rows)
        .to_owned();
    let rows = hub.query_all(&page_q).await?;
    let next = match rows.last() {
        Some(last) => last.try_get("", "hub_seq")?,
        None => cursor,
    };
    let mut page = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: uuid::Uuid = r.try_get("", "id")?;
        let del: Option<Vec<u8>> = r.try_get("", "del")?;
        let clocks: Vec<u8> = r.try_get("", "clocks")?;
        page.push((id, del, clocks, read_vals(r)?));
    }
    Ok((page, next))
}

/// One pulled row: key, delete clock, column clocks, values (if live).
type Pulled = (uuid::Uuid, Option<Vec<u8>>, Vec<u8>, Option<Vec<Value>>);

/// Merge a pulled page into the replica in one transaction, its cursor
/// with it.
async fn apply_locally(local: &DatabaseConnection, page: &[Pulled], cursor: i64) -> Res<()> {
    let tx = local.begin().await?;
    tx.execute_unprepared("INSERT INTO _p_applying (session) VALUES (0)")
        .await?;
    // Local writes are sealed before a page is merged (the design seals
    // them first in this transaction); the bench's pullers never write,
    // so the check is what is timed.
    if tx
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT 1 AS one FROM _p_d LIMIT 1",
        ))
        .await?
        .is_some()
    {
        return Err("the prototype's puller has writes to seal".into());
    }
    let held = held_versions(&tx, "_p_v", page.iter().map(|p| p.0), true).await?;
    let mut w = Writes::default();
    let mut v = Query::insert();
    v.into_table(a("_p_v"))
        .columns(["id", "seq", "del", "clocks", "hashes"].map(a))
        .on_conflict(
            OnConflict::column(a("id"))
                .update_columns(["del", "clocks", "hashes"].map(a))
                .to_owned(),
        );
    let mut any = false;
    let mut latest = Clock::default();
    for (id, del, clocks, vals) in page {
        let h = held.get(id);
        let incoming: Vec<Clock> = (0..COLS.len())
            .map(|i| Clock::get(&clocks[i * CLOCK..]))
            .collect();
        let their_del = del.as_deref().map(Clock::get);
        latest = incoming
            .iter()
            .copied()
            .chain(their_del)
            .fold(latest, Ord::max);
        let m = merge(&incoming, their_del, h.map(Held::as_held));
        let our_del = h.and_then(|h| h.del.as_deref().map(Clock::get));
        if m.won == 0 && m.del == our_del {
            continue;
        }
        // The hashes of the values the row holds after the merge: the
        // pulled ones where they won, the local ones elsewhere.
        let mut hashes = h
            .and_then(|h| h.hashes.clone())
            .unwrap_or_else(|| vec![0; 8 * COLS.len()]);
        match (vals, m.live) {
            (Some(vals), true) => {
                let set = match m.was_live {
                    true => m.won,
                    false => (1 << COLS.len()) - 1,
                };
                if set != 0 {
                    w.upserts.entry(set).or_default().push((*id, vals.clone()));
                }
                for (i, x) in vals.iter().enumerate().filter(|(i, _)| set & 1 << i != 0) {
                    hashes[i * 8..(i + 1) * 8].copy_from_slice(&hash(x).to_be_bytes());
                }
            }
            // Gone on the hub, but a local write here is newer: the row
            // stays, and goes back with this replica's next push.
            (None, true) => {}
            (_, false) if m.was_live => w.deletes.push(*id),
            (_, false) => {}
        }
        any = true;
        v.values_panic([
            (*id).into(),
            0i64.into(),
            Value::Bytes(m.del.map(Clock::bytes)).into(),
            m.clocks.into(),
            hashes.into(),
        ]);
    }
    write_rows(&tx, "contacts", w).await?;
    if any {
        tx.execute(&v).await?;
    }
    // The local clock goes past every clock pulled.
    let m = meta(&tx).await?;
    let (wall, counter) = (
        m.get("wall").copied().unwrap_or(0),
        m.get("counter").copied().unwrap_or(0),
    );
    let mut pairs = vec![("cursor", cursor)];
    if (latest.wall as i64, i64::from(latest.counter)) > (wall, counter) {
        pairs.push(("wall", latest.wall as i64));
        pairs.push(("counter", i64::from(latest.counter)));
    }
    meta_set(&tx, &pairs).await?;
    tx.execute_unprepared("DELETE FROM _p_applying").await?;
    tx.commit().await?;
    Ok(())
}

/// COPY's text form of a value: `\N` for NULL, backslash, tab, newline and
/// carriage return escaped.
fn copy_text(v: &Value, out: &mut String) {
    let text = match v {
        Value::String(Some(s)) => s.as_str(),
        Value::ChronoDateTimeUtc(Some(t)) => {
            out.push_str(&t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string());
            return;
        }
        _ => {
            out.push_str("\\N");
            return;
        }
    };
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// `bytea` in COPY's text form (`\\x` and hex digits).
fn copy_bytes(b: &[u8], out: &mut String) {
    out.push_str("\\\\x");
    for x in b {
        out.push_str(&format!("{x:02x}"));
    }
}

/// One page of an initial copy, as COPY data for the hub: the rows and
/// their version rows, the hub sequence of the first one to be filled in.
struct CopyPage {
    rows: String,
    /// Per row: its key and its clocks, in COPY's text form after the
    /// hub sequence.
    versions: Vec<String>,
}

/// The initial copy of the replica `local` (a SQLite file whose contacts
/// were never synced) into the empty PostgreSQL hub `hub`, in the next
/// format: the rows read page by page in `rowid` order (a cursor SQLite
/// keeps itself), each page's version rows written locally with one base
/// clock, and the rows and version rows sent to the hub with `COPY` in one
/// transaction per page, on a task of its own so that the next page is
/// read meanwhile. The number of rows and the time.
pub(super) async fn initial_copy(
    local: &DatabaseConnection,
    hub: &DatabaseConnection,
    node: u32,
    page_rows: u64,
) -> Res<(u64, Duration)> {
    let started = Instant::now();
    let base = Clock {
        wall: chrono::Utc::now().timestamp_micros() as u64,
        counter: 0,
        node,
    };
    let clocks: Vec<u8> = std::iter::repeat_n(base.bytes(), COLS.len())
        .flatten()
        .collect();
    let mut clock_text = String::new();
    copy_bytes(&clocks, &mut clock_text);
    let mut after = 0i64;
    let mut copied = 0;
    let mut sending: Option<(tokio::task::JoinHandle<Res<i64>>, i64)> = None;
    loop {
        let q = Query::select()
            .expr_as(Expr::cust("rowid"), a("r"))
            .column(a("id"))
            .columns(COLS.map(a))
            .from(a("contacts"))
            .and_where(Expr::cust("rowid").gt(after))
            .order_by_expr(Expr::cust("rowid"), Order::Asc)
            .limit(page_rows)
            .to_owned();
        let rows = local.query_all(&q).await?;
        let Some(last) = rows.last() else {
            break;
        };
        after = last.try_get("", "r")?;
        let tx = local.begin().await?;
        let mut page = CopyPage {
            rows: String::with_capacity(rows.len() * 200),
            versions: Vec::with_capacity(rows.len()),
        };
        for chunk in rows.chunks(2000) {
            let mut v = Query::insert();
            v.into_table(a("_p_v"))
                .columns(["id", "seq", "del", "clocks", "hashes"].map(a));
            for r in chunk {
                let id: uuid::Uuid = r.try_get("", "id")?;
                let vals = read_vals(r)?.ok_or("a row without a name")?;
                let hashes: Vec<u8> = vals.iter().flat_map(|x| hash(x).to_be_bytes()).collect();
                v.values_panic([
                    id.into(),
                    0i64.into(),
                    Value::Bytes(None).into(),
                    clocks.clone().into(),
                    hashes.into(),
                ]);
                page.rows.push_str(&id.to_string());
                for x in &vals {
                    page.rows.push('\t');
                    copy_text(x, &mut page.rows);
                }
                page.rows.push('\n');
                page.versions.push(format!("{id}\t"));
            }
            tx.execute(&v).await?;
        }
        tx.commit().await?;
        copied += rows.len() as u64;
        if let Some((s, through)) = sending.take() {
            confirmed(local, through, s.await??).await?;
        }
        let (hub, clock_text) = (hub.clone(), clock_text.clone());
        let send = tokio::spawn(async move { copy_page(&hub, page, &clock_text).await });
        sending = Some((send, after));
    }
    if let Some((s, through)) = sending.take() {
        confirmed(local, through, s.await??).await?;
    }
    Ok((copied, started.elapsed()))
}

/// Record that the hub committed the rows up to `rowid`, the last of them
/// at hub sequence `hub_seq`: a copy that stops resumes after them, and
/// the replica's pull cursor moves past its own rows.
async fn confirmed(local: &DatabaseConnection, rowid: i64, hub_seq: i64) -> Res<()> {
    let tx = local.begin().await?;
    meta_set(&tx, &[("copied_through", rowid), ("cursor", hub_seq)]).await?;
    tx.commit().await?;
    Ok(())
}

/// The number of rows of `table` and a digest of every value in key
/// order, to check that two databases hold the same rows.
pub(super) async fn digest(db: &DatabaseConnection, table: &str) -> Res<(u64, u64)> {
    let q = Query::select()
        .column(a("id"))
        .columns(COLS.map(a))
        .from(a(table))
        .order_by(a("id"), Order::Asc)
        .to_owned();
    let rows = db.query_all(&q).await?;
    let mut d = 0u64;
    for r in &rows {
        let id: uuid::Uuid = r.try_get("", "id")?;
        let vals = read_vals(r)?.ok_or("a row without a name")?;
        d = vals.iter().fold(
            d.rotate_left(5) ^ hash(&Value::Bytes(Some(id.as_bytes().to_vec()))),
            |d, x| d.rotate_left(3) ^ hash(x),
        );
    }
    Ok((rows.len() as u64, d))
}

/// Send one page of an initial copy to the hub in one transaction: a range
/// of hub sequences, the rows and the version rows by `COPY`. The hub
/// sequence of its last row.
async fn copy_page(hub: &DatabaseConnection, page: CopyPage, clock_text: &str) -> Res<i64> {
    use sea_orm::sqlx;
    let pool = hub.get_postgres_connection_pool();
    let mut tx = pool.begin().await?;
    let n = page.versions.len() as i64;
    let last: i64 =
        sqlx::query_scalar("UPDATE \"contacts_meta\" SET v = v + $1 WHERE k = 'seq' RETURNING v")
            .bind(n)
            .fetch_one(&mut *tx)
            .await?;
    let mut copy = tx
        .copy_in_raw(&format!(
            "COPY \"contacts\" (id, {}) FROM STDIN",
            COLS.join(", ")
        ))
        .await?;
    copy.send(page.rows.into_bytes()).await?;
    copy.finish().await?;
    let mut versions = String::with_capacity(page.versions.len() * (60 + clock_text.len()));
    for (i, v) in page.versions.iter().enumerate() {
        versions.push_str(v);
        versions.push_str(&(last - n + 1 + i as i64).to_string());
        versions.push_str("\t\\N\t");
        versions.push_str(clock_text);
        versions.push('\n');
    }
    let mut copy = tx
        .copy_in_raw("COPY \"contacts_v\" (id, hub_seq, del, clocks) FROM STDIN")
        .await?;
    copy.send(versions.into_bytes()).await?;
    copy.finish().await?;
    tx.commit().await?;
    Ok(last)
}
