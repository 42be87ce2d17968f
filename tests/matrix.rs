//! The dialect matrix (invariant 5): a value written on any dialect reads
//! back equal on any other. For each of the 9 pairs (local SQLite,
//! PostgreSQL, MySQL × hub SQLite, PostgreSQL, MySQL) rows of every type,
//! with extremes, go from the first local through the hub to a second local
//! of another dialect, and are compared column by column: floats by bit
//! pattern, and every value in the exact form each dialect is known to give
//! back (see [`kept`]: the offset of a date-time and the scale of a decimal
//! depend on the dialect). Values the hub's dialect cannot hold are refused
//! by name.
//!
//! Also: a table read through its spec alone (`ColumnSpec::read`, as a
//! hub without the entity reads) gives the values the entity reads, on
//! every dialect, for every type and both extremes.

mod common;

use std::sync::Arc;

use chrono::{FixedOffset, NaiveDate, NaiveTime, TimeZone, Utc};
use common::entities::{big_unsigned, kitchen_sink, unsigned_ints};
use common::{BoxError, Dialect, TestDb, TestResult, multi_trial, run};
use kitchen_sink::Mood;
use rust_decimal::Decimal;
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, IntoActiveModel, QueryOrder};
use tidesync::hub::{RejectPolicy, SqlHub};
use tidesync::{Replica, SyncEngine};

fn main() -> std::process::ExitCode {
    let mut trials = Vec::new();
    for (i, local) in Dialect::ALL.iter().enumerate() {
        for hub in Dialect::ALL {
            let second = Dialect::ALL[(i + 1) % 3];
            trials.extend(multi_trial(
                &format!(
                    "matrix::{}_via_{}_hub_to_{}",
                    local.name(),
                    hub.name(),
                    second.name()
                ),
                vec![*local, hub, second],
                |dbs| Box::pin(round_trip(dbs)),
            ));
        }
    }
    for d in Dialect::ALL {
        trials.push(common::trial_direct(
            d,
            "matrix::columns_read_by_spec_as_the_entity_reads_them",
            |db| Box::pin(read_by_spec(db)),
        ));
    }
    run(trials)
}

fn big_text() -> String {
    // 1 MB of text with emoji, CJK and combining marks.
    let unit = "tide 🌊 潮汐 e\u{301}\u{323} Ω ";
    let mut s = String::with_capacity(1 << 20);
    while s.len() < (1 << 20) {
        s.push_str(unit);
    }
    s
}

fn big_bytes() -> Vec<u8> {
    (0..(1 << 20))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Rows of extremes: maxima, minima and zeros, and one with every option
/// empty. Decimals of 28 significant digits unless SQLite is on the way
/// (SeaORM reads SQLite decimals through `f64`; tidesync refuses the rest).
fn rows(sqlite: bool) -> Vec<kitchen_sink::Model> {
    let dec = |exact: &str, f64_safe: &str| -> Decimal {
        if sqlite {
            f64_safe.parse().unwrap()
        } else {
            exact.parse().unwrap()
        }
    };
    let off = FixedOffset::east_opt(5 * 3600 + 30 * 60).unwrap();
    let max = kitchen_sink::Model {
        id: Uuid::from_u128(1),
        b: true,
        i8v: i8::MAX,
        i16v: i16::MAX,
        i32v: i32::MAX,
        i64v: i64::MAX,
        f32v: f32::MAX,
        f64v: 1e308,
        s: "plain ascii".into(),
        long: big_text(),
        date: NaiveDate::from_ymd_opt(9999, 12, 31).unwrap(),
        time: NaiveTime::from_hms_micro_opt(23, 59, 59, 999_999).unwrap(),
        dt: NaiveDate::from_ymd_opt(2999, 12, 31)
            .unwrap()
            .and_hms_micro_opt(23, 59, 59, 999_999)
            .unwrap(),
        utc: Utc.with_ymd_and_hms(2038, 1, 19, 3, 14, 6).unwrap()
            + chrono::Duration::microseconds(123_456),
        off: off.with_ymd_and_hms(2040, 6, 7, 8, 9, 10).unwrap()
            + chrono::Duration::microseconds(654_321),
        uid: Uuid::max(),
        dec: dec("1234567890.123456789012345678", "1234567890.125"), // 28 significant digits
        json: serde_json::json!({"nested": {"list": [1, 2.5, "três", null, true]}, "emoji": "🌊"}),
        bytes: big_bytes(),
        mood: Mood::Stormy,
        o_b: Some(false),
        o_i8v: Some(i8::MIN),
        o_i16v: Some(i16::MIN),
        o_i32v: Some(i32::MIN),
        o_i64v: Some(i64::MIN),
        o_f32v: Some(f32::MIN_POSITIVE),
        o_f64v: Some(-1e308),
        o_s: Some("日本語テキスト".into()),
        o_date: Some(NaiveDate::from_ymd_opt(1000, 1, 1).unwrap()),
        o_time: Some(NaiveTime::from_hms_opt(0, 0, 0).unwrap()),
        o_dt: Some(
            NaiveDate::from_ymd_opt(1970, 1, 1)
                .unwrap()
                .and_hms_micro_opt(0, 0, 0, 1)
                .unwrap(),
        ),
        o_utc: Some(Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 1).unwrap()),
        o_off: Some(
            FixedOffset::west_opt(9 * 3600)
                .unwrap()
                .with_ymd_and_hms(1999, 12, 31, 23, 59, 59)
                .unwrap(),
        ),
        o_uid: Some(Uuid::nil()),
        o_dec: Some(dec("-0.0000000000000000000000000001", "-0.5")),
        o_json: Some(serde_json::json!([])),
        o_bytes: Some(vec![0x00, 0xFF, 0x00]),
        o_mood: Some(Mood::Calm),
    };
    let zero = kitchen_sink::Model {
        id: Uuid::from_u128(2),
        b: false,
        i8v: 0,
        i16v: 0,
        i32v: 0,
        i64v: 0,
        f32v: 0.0,
        f64v: 0.0, // -0.0 keeps its sign on PostgreSQL only: refused elsewhere
        s: String::new(),
        long: String::new(),
        date: NaiveDate::from_ymd_opt(2000, 2, 29).unwrap(),
        time: NaiveTime::from_hms_micro_opt(12, 0, 0, 1).unwrap(),
        dt: NaiveDate::from_ymd_opt(2000, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap(),
        utc: Utc.with_ymd_and_hms(2026, 11, 21, 23, 59, 59).unwrap(),
        off: FixedOffset::east_opt(0)
            .unwrap()
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .unwrap(),
        uid: Uuid::nil(),
        dec: Decimal::ZERO,
        json: serde_json::json!({}),
        bytes: Vec::new(),
        mood: Mood::Calm,
        o_b: None,
        o_i8v: None,
        o_i16v: None,
        o_i32v: None,
        o_i64v: None,
        o_f32v: None,
        o_f64v: None,
        o_s: None,
        o_date: None,
        o_time: None,
        o_dt: None,
        o_utc: None,
        o_off: None,
        o_uid: None,
        o_dec: None,
        o_json: None,
        o_bytes: None,
        o_mood: None,
    };
    let mut mins = max.clone();
    mins.id = Uuid::from_u128(3);
    mins.i8v = i8::MIN;
    mins.i16v = i16::MIN;
    mins.i32v = i32::MIN;
    mins.i64v = i64::MIN;
    mins.f32v = f32::MIN;
    mins.f64v = f64::MIN;
    mins.dec = dec("-7922816251426433759354395033.5", "-1e15");
    mins.bytes = vec![0x00];
    mins.long = "x".into();
    mins.json = serde_json::json!("just a string");
    // Trailing zeros: a scale that PostgreSQL keeps and SQLite does not.
    mins.o_dec = Some(dec("1.50", "1.50"));
    vec![max, zero, mins]
}

/// What a dialect gives back for a value written into it, where that is
/// not the value exactly as written (everything else reads back exactly):
///
/// | value | SQLite | PostgreSQL | MySQL |
/// |---|---|---|---|
/// | `DateTime<FixedOffset>` | as written, offset included (text) | the instant at +00:00 (`timestamptz`) | the instant at +00:00 (`DATETIME(6)` in UTC) |
/// | `Decimal` | through `f64` (REAL): the float's shortest decimal, no trailing zeros | as written, trailing zeros included (`numeric`); zero comes back as `0` | the `DECIMAL(65,28)` text parsed: 28 decimals, fewer where 28 do not fit `Decimal`'s 96 bits |
///
/// A value travels as its origin read it: a row written on a first local
/// reads there as `kept(first, row)`, and on the hub and a second local as
/// `kept(hub, kept(first, row))` and `kept(second, kept(first, row))`.
fn kept(dialect: Dialect, row: &kitchen_sink::Model) -> kitchen_sink::Model {
    let utc = FixedOffset::east_opt(0).unwrap();
    let off = |t: chrono::DateTime<FixedOffset>| match dialect {
        Dialect::Sqlite => t,
        Dialect::Postgres | Dialect::MySql => t.with_timezone(&utc),
    };
    let mut row = row.clone();
    row.off = off(row.off);
    row.o_off = row.o_off.map(off);
    row.dec = kept_decimal(dialect, row.dec);
    row.o_dec = row.o_dec.map(|d| kept_decimal(dialect, d));
    row
}

/// The decimal column of [`kept`].
fn kept_decimal(dialect: Dialect, d: Decimal) -> Decimal {
    use rust_decimal::prelude::ToPrimitive;
    match dialect {
        Dialect::Sqlite => Decimal::try_from(d.to_f64().unwrap()).unwrap(),
        Dialect::Postgres if d.is_zero() => Decimal::ZERO,
        Dialect::Postgres => d,
        Dialect::MySql => {
            // The server's text has 28 decimals; sqlx parses it.
            let text = d.to_string();
            let (point, decimals) = match text.split_once('.') {
                Some((_, fraction)) => ("", fraction.len()),
                None => (".", 0),
            };
            format!("{text}{point}{}", "0".repeat(28 - decimals))
                .parse()
                .unwrap()
        }
    }
}

/// Whether two values are the same in the same form: floats by bit
/// pattern, date-times by instant and offset, decimals by value and scale
/// (`==` takes 1.50 for 1.5, and an instant at one offset for any other).
fn identical(a: &sea_orm::Value, b: &sea_orm::Value) -> bool {
    use sea_orm::Value as V;
    match (a, b) {
        (V::ChronoDateTimeWithTimeZone(Some(x)), V::ChronoDateTimeWithTimeZone(Some(y))) => {
            x == y && x.offset() == y.offset()
        }
        (V::Decimal(Some(x)), V::Decimal(Some(y))) => x == y && x.scale() == y.scale(),
        (V::Float(Some(x)), V::Float(Some(y))) => x.to_bits() == y.to_bits(),
        (V::Double(Some(x)), V::Double(Some(y))) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// Compare two models column by column with [`identical`].
fn diff(a: &kitchen_sink::Model, b: &kitchen_sink::Model) -> Vec<String> {
    use sea_orm::Iterable;
    kitchen_sink::Column::iter()
        .filter_map(|c| {
            let (x, y) = (a.get(c), b.get(c));
            (!identical(&x, &y)).then(|| {
                let show = |v: &sea_orm::Value| {
                    let s = format!("{v:?}");
                    if s.len() > 120 {
                        format!("{}...", &s[..120])
                    } else {
                        s
                    }
                };
                format!("{}: {} != {}", c.as_str(), show(&x), show(&y))
            })
        })
        .collect()
}

async fn read_all(db: &DatabaseConnection) -> Result<Vec<kitchen_sink::Model>, BoxError> {
    Ok(kitchen_sink::Entity::find()
        .order_by_asc(kitchen_sink::Column::Id)
        .all(db)
        .await?)
}

fn compare(what: &str, want: &[kitchen_sink::Model], got: &[kitchen_sink::Model]) -> TestResult {
    ensure_eq!(got.len(), want.len(), "{what}: row count");
    let mut problems = Vec::new();
    for (w, g) in want.iter().zip(got) {
        for d in diff(w, g) {
            problems.push(format!("{what} row {}: {d}", w.id));
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// The tables SeaORM can read on this dialect: unsigned integers are not
/// readable on PostgreSQL, `u64` only on MySQL.
async fn replica(t: &TestDb) -> Result<Replica, BoxError> {
    tidesync::create_table::<kitchen_sink::Entity, _>(&t.db).await?;
    let mut b = Replica::builder(t.db.clone()).register::<kitchen_sink::Entity>();
    if t.dialect != Dialect::Postgres {
        tidesync::create_table::<unsigned_ints::Entity, _>(&t.db).await?;
        b = b.register::<unsigned_ints::Entity>();
    }
    if t.dialect == Dialect::MySql {
        tidesync::create_table::<big_unsigned::Entity, _>(&t.db).await?;
        b = b.register::<big_unsigned::Entity>();
    }
    Ok(b.open().await?)
}

/// The hub's unsigned columns as text (SeaORM cannot read them everywhere).
async fn hub_unsigned(hub: &TestDb) -> Result<Vec<Vec<Option<String>>>, BoxError> {
    let cast = |c: &str| match hub.dialect {
        Dialect::Postgres => format!("CAST({c} AS TEXT)"),
        Dialect::MySql => format!("CAST({c} AS CHAR)"),
        Dialect::Sqlite => format!("CAST({c} AS TEXT)"),
    };
    let cols = ["u8v", "u16v", "u32v", "o_u8v", "o_u16v", "o_u32v"];
    let sql = format!(
        "SELECT {} FROM unsigned_ints ORDER BY id",
        cols.iter()
            .enumerate()
            .map(|(i, c)| format!("{} AS c{i}", cast(c)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rows = hub
        .db
        .query_all_raw(sea_orm::Statement::from_string(hub.backend(), sql))
        .await?;
    let mut out = Vec::new();
    for r in rows {
        out.push(
            (0..cols.len())
                .map(|i| r.try_get::<Option<String>>("", &format!("c{i}")))
                .collect::<Result<_, _>>()?,
        );
    }
    Ok(out)
}

async fn round_trip(mut dbs: Vec<TestDb>) -> TestResult {
    let second = dbs.pop().ok_or("second local")?;
    let hub = dbs.pop().ok_or("hub")?;
    let first = dbs.pop().ok_or("first local")?;

    let r1 = replica(&first).await?;
    let sqlite = [first.dialect, hub.dialect, second.dialect].contains(&Dialect::Sqlite);
    let want = rows(sqlite);
    for m in &want {
        let mut am = m.clone().into_active_model();
        am.id = Set(m.id);
        am.insert(&first.db).await?;
    }
    let on_first: Vec<_> = want.iter().map(|m| kept(first.dialect, m)).collect();
    compare("first local", &on_first, &read_all(&first.db).await?)?;
    let unsigned = vec![
        unsigned_ints::Model {
            id: Uuid::from_u128(1),
            u8v: u8::MAX,
            u16v: u16::MAX,
            u32v: u32::MAX,
            o_u8v: Some(0),
            o_u16v: Some(0),
            o_u32v: Some(0),
        },
        unsigned_ints::Model {
            id: Uuid::from_u128(2),
            u8v: 0,
            u16v: 0,
            u32v: 0,
            o_u8v: None,
            o_u16v: None,
            o_u32v: None,
        },
    ];
    if first.dialect != Dialect::Postgres {
        for m in &unsigned {
            let mut am = m.clone().into_active_model();
            am.id = Set(m.id);
            am.insert(&first.db).await?;
        }
    }

    let backend = Arc::new(SqlHub::new(hub.connect_again().await?).with_policy(RejectPolicy::Park));
    let e1 = SyncEngine::new(r1, backend.clone());
    let report = e1.sync_now().await?;
    ensure!(
        report.rejected.is_empty() && report.local_errors.is_empty(),
        "{report:?}"
    );
    let pushed_unsigned = if first.dialect == Dialect::Postgres {
        0
    } else {
        2
    };
    ensure_eq!(report.pushed, 3 + pushed_unsigned);
    let on_hub: Vec<_> = on_first.iter().map(|m| kept(hub.dialect, m)).collect();
    compare("hub", &on_hub, &read_all(&hub.db).await?)?;
    if pushed_unsigned > 0 {
        let s = |v: u32| Some(v.to_string());
        ensure_eq!(
            hub_unsigned(&hub).await?,
            vec![
                vec![s(255), s(65535), s(u32::MAX), s(0), s(0), s(0)],
                vec![s(0), s(0), s(0), None, None, None],
            ],
            "unsigned integers on the hub"
        );
    }

    let r2 = replica(&second).await?;
    let e2 = SyncEngine::new(r2, Arc::new(SqlHub::new(hub.connect_again().await?)));
    let report = e2.sync_now().await?;
    if second.dialect == Dialect::Postgres && first.dialect != Dialect::Postgres {
        // unsigned_ints is not registered there: its changes are parked.
        let unknown = report
            .local_errors
            .iter()
            .all(|e| matches!(e, tidesync::Error::UnknownTable(t) if t == "unsigned_ints"));
        ensure!(unknown && !report.local_errors.is_empty(), "{report:?}");
    } else {
        ensure!(report.local_errors.is_empty(), "{report:?}");
    }
    let on_second: Vec<_> = on_first.iter().map(|m| kept(second.dialect, m)).collect();
    compare("second local", &on_second, &read_all(&second.db).await?)?;
    if pushed_unsigned > 0 && second.dialect != Dialect::Postgres {
        let got = unsigned_ints::Entity::find()
            .order_by_asc(unsigned_ints::Column::Id)
            .all(&second.db)
            .await?;
        ensure_eq!(got, unsigned, "unsigned integers on the second local");
    }

    // An edit on the second local comes back to the first, exactly.
    let mut edited = want[0].clone();
    edited.f64v = f64::MIN_POSITIVE;
    edited.o_s = Some("edited ✍".into());
    edited.dec = if sqlite {
        "0.25".parse()?
    } else {
        "0.0000000000000000000000000001".parse()?
    };
    let mut am = kitchen_sink::Entity::find_by_id(edited.id)
        .one(&second.db)
        .await?
        .ok_or("row")?
        .into_active_model();
    am.f64v = Set(edited.f64v);
    am.o_s = Set(edited.o_s.clone());
    am.dec = Set(edited.dec);
    am.update(&second.db).await?;
    e2.sync_now().await?;
    e1.sync_now().await?;
    // Only the edited columns travel back, as the second local reads them.
    let mut want2 = on_first.clone();
    want2[0].f64v = edited.f64v;
    want2[0].o_s = edited.o_s.clone();
    want2[0].dec = kept_decimal(first.dialect, kept_decimal(second.dialect, edited.dec));
    compare(
        "first local after the round trip back",
        &want2,
        &read_all(&first.db).await?,
    )?;

    // Values the hub's dialect cannot hold are refused by name, not altered.
    let bad = unrepresentable_on(hub.dialect, first.dialect, sqlite);
    if let Some((column, row)) = bad {
        let mut am = row.into_active_model();
        am.id = Set(Uuid::from_u128(99));
        am.insert(&first.db).await?;
        let report = e1.sync_now().await?;
        ensure_eq!(report.rejected.len(), 1, "{report:?}");
        let reason = &report.rejected[0].reason;
        ensure!(
            reason.contains(&format!("kitchen_sink.{column}")),
            "reason names table and column: {reason}"
        );
        ensure!(
            kitchen_sink::Entity::find_by_id(Uuid::from_u128(99))
                .one(&hub.db)
                .await?
                .is_none(),
            "not on the hub"
        );
    }
    if first.dialect == Dialect::MySql && hub.dialect != Dialect::MySql {
        // u64 above i64::MAX: held by MySQL, refused by PostgreSQL and SQLite hubs.
        big_unsigned::ActiveModel {
            id: Set(Uuid::from_u128(7)),
            v: Set(u64::MAX),
            ov: Set(Some(1)),
        }
        .insert(&first.db)
        .await?;
        let report = e1.sync_now().await?;
        ensure_eq!(report.rejected.len(), 1, "{report:?}");
        let reason = &report.rejected[0].reason;
        ensure!(
            reason.contains("big_unsigned.v") && reason.contains("18446744073709551615"),
            "{reason}"
        );
    }
    if first.dialect == Dialect::MySql && hub.dialect == Dialect::MySql {
        // u64 where both ends hold it (SeaORM reads u64 on MySQL only).
        big_unsigned::ActiveModel {
            id: Set(Uuid::from_u128(8)),
            v: Set(u64::MAX),
            ov: Set(None),
        }
        .insert(&first.db)
        .await?;
        let report = e1.sync_now().await?;
        ensure!(report.rejected.is_empty(), "{report:?}");
        let got = big_unsigned::Entity::find_by_id(Uuid::from_u128(8))
            .one(&hub.db)
            .await?
            .ok_or("u64 row")?;
        ensure_eq!(got.v, u64::MAX);
    }
    first.drop().await?;
    hub.drop().await?;
    second.drop().await
}

/// A row the `hub` dialect cannot hold but the `local` one can, and the
/// column that makes it so.
fn unrepresentable_on(
    hub: Dialect,
    local: Dialect,
    sqlite: bool,
) -> Option<(&'static str, kitchen_sink::Model)> {
    let mut row = rows(sqlite).remove(1);
    match (hub, local) {
        (Dialect::Sqlite, Dialect::Postgres | Dialect::MySql) => {
            row.dec = "1234567890.123456789012345678".parse().unwrap();
            Some(("dec", row))
        }
        (Dialect::MySql, Dialect::Sqlite | Dialect::Postgres) => {
            row.date = NaiveDate::from_ymd_opt(999, 12, 31).unwrap();
            Some(("date", row))
        }
        (Dialect::Postgres, Dialect::Sqlite | Dialect::MySql) => {
            row.s = "nul \0 inside".into();
            Some(("s", row))
        }
        _ => None,
    }
}

/// Every column of every row of the kitchen sink, read through the spec
/// alone (`ColumnSpec::read`), is the value the entity's own field reads:
/// the same variant (a `DateTime<Utc>` stays one where the column type
/// alone says "with time zone") and the same value, extremes included. A
/// spec that travelled as JSON keeps its kinds; without them, the
/// column type's usual kind is another variant for `utc`.
async fn read_by_spec(t: TestDb) -> TestResult {
    let result = read_by_spec_in(&t).await;
    t.drop().await?;
    result
}

async fn read_by_spec_in(t: &TestDb) -> TestResult {
    use sea_orm::sea_query::ArrayType;
    tidesync::create_table::<kitchen_sink::Entity, _>(&t.db).await?;
    for m in rows(t.dialect == Dialect::Sqlite) {
        let mut am = m.clone().into_active_model();
        am.id = Set(m.id);
        am.insert(&t.db).await?;
    }
    let spec = tidesync::table_spec::<kitchen_sink::Entity>();
    let text = serde_json::to_string(&spec)?;
    let travelled: tidesync::TableSpec = serde_json::from_str(&text)?;
    ensure_eq!(travelled, spec, "the spec as JSON: {text}");
    let utc = spec.column("utc").ok_or("utc")?;
    ensure_eq!(utc.kind, Some(ArrayType::ChronoDateTimeUtc));
    let read = reads_as_the_entity::<kitchen_sink::Entity>(t, &travelled).await?;
    let mut bare = utc.clone();
    bare.kind = None;
    for row in &read {
        let as_usual = bare.read(row)?;
        ensure!(
            !matches!(as_usual, sea_orm::Value::ChronoDateTimeUtc(_)),
            "without its kind, `utc` reads as the usual kind of its type, not as {as_usual:?}"
        );
    }
    // Unsigned integers, where the dialect has them (SeaORM cannot read
    // u8, u16 and u32 on PostgreSQL, u64 only on MySQL).
    if t.dialect != Dialect::Postgres {
        tidesync::create_table::<unsigned_ints::Entity, _>(&t.db).await?;
        for (id, v, o) in [(1, u32::MAX, Some(0)), (2, 0, None)] {
            unsigned_ints::ActiveModel {
                id: Set(Uuid::from_u128(id)),
                u8v: Set(v as u8),
                u16v: Set(v as u16),
                u32v: Set(v),
                o_u8v: Set(o),
                o_u16v: Set(o.map(u16::from)),
                o_u32v: Set(o.map(u32::from)),
            }
            .insert(&t.db)
            .await?;
        }
        let spec = tidesync::table_spec::<unsigned_ints::Entity>();
        reads_as_the_entity::<unsigned_ints::Entity>(t, &spec).await?;
    }
    if t.dialect == Dialect::MySql {
        tidesync::create_table::<big_unsigned::Entity, _>(&t.db).await?;
        for (id, v, o) in [(1, u64::MAX, Some(0)), (2, 0, None)] {
            big_unsigned::ActiveModel {
                id: Set(Uuid::from_u128(id)),
                v: Set(v),
                ov: Set(o),
            }
            .insert(&t.db)
            .await?;
        }
        let spec = tidesync::table_spec::<big_unsigned::Entity>();
        reads_as_the_entity::<big_unsigned::Entity>(t, &spec).await?;
    }
    Ok(())
}

/// Read every column of `E`'s table through `spec` and compare with what
/// the entity reads, row by row (in key order); the rows as read.
async fn reads_as_the_entity<E>(
    t: &TestDb,
    spec: &tidesync::TableSpec,
) -> Result<Vec<sea_orm::QueryResult>, BoxError>
where
    E: EntityTrait,
    E::Column: std::str::FromStr,
{
    use sea_orm::sea_query::{Alias, ColumnType, Expr, ExprTrait, Query};
    let mut q = Query::select();
    for c in &spec.columns {
        let col = Expr::col(Alias::new(&c.name));
        // PostgreSQL enums are read as text, as SeaORM reads them.
        if t.dialect == Dialect::Postgres && matches!(c.ty, ColumnType::Enum { .. }) {
            q.expr_as(col.cast_as(Alias::new("text")), Alias::new(&c.name));
        } else {
            q.expr_as(col, Alias::new(&c.name));
        }
    }
    q.from(Alias::new(&spec.name));
    for k in &spec.pk {
        q.order_by(Alias::new(&k.name), sea_orm::Order::Asc);
    }
    let got = t.db.query_all(&q).await?;
    let mut find = E::find();
    for k in &spec.pk {
        let column: E::Column = k.name.parse().map_err(|_| k.name.clone())?;
        find = find.order_by_asc(column);
    }
    let want = find.all(&t.db).await?;
    ensure_eq!(got.len(), want.len(), "{}: rows", spec.name);
    ensure!(!want.is_empty(), "{}: no rows to compare", spec.name);
    for (row, model) in got.iter().zip(&want) {
        for c in &spec.columns {
            let column: E::Column = c.name.parse().map_err(|_| c.name.clone())?;
            let read = c.read(row)?;
            ensure!(
                read == model.get(column),
                "{}.{}: read {read:?} by the spec, the entity reads {:?}",
                spec.name,
                c.name,
                model.get(column)
            );
        }
    }
    Ok(got)
}
