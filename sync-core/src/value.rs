//! Typed values: the checks that keep a value from being silently changed by
//! a dialect, exact comparison for diffs, and the canonical text form of a
//! primary key.
//!
//! Values travel as sea-query [`Value`]s serialised with their type tag
//! (`{"Int":1}`, `{"Decimal":"1.50"}`), so a change can be replayed without
//! the entity compiled in.

use chrono::Datelike;
use sea_orm::sea_query::{ColumnType, StringLen, Value};
use sea_orm::{
    ActiveModelTrait, ActiveValue, ColumnTrait, DbBackend, DbErr, EntityName, IdenStatic, Iterable,
};

use crate::error::{Error, Result};
use crate::syncable::Syncable;

/// Refuse a value that some dialect would store as something else:
/// NaN or infinite floats (null in typed JSON, NULL in SQLite), a `u64` above
/// `i64::MAX` on PostgreSQL or SQLite (sea-query-sqlx would panic binding
/// it), or a string longer than the column's declared length.
///
/// `backend` is the database the value is about to be written to, if known;
/// the checks that hold on every dialect apply either way.
pub fn check_value(
    table: &str,
    column: &str,
    ty: Option<&ColumnType>,
    value: &Value,
    backend: Option<DbBackend>,
) -> Result<()> {
    let fail = |reason: &str| Err(Error::unrepresentable(table, column, render(value), reason));
    match value {
        Value::Float(Some(f))
            if f.to_bits() == (-0.0f32).to_bits()
                && matches!(backend, Some(DbBackend::Sqlite | DbBackend::MySql)) =>
        {
            fail("SQLite and MySQL store -0.0 as 0")
        }
        Value::Double(Some(f))
            if f.to_bits() == (-0.0f64).to_bits()
                && matches!(backend, Some(DbBackend::Sqlite | DbBackend::MySql)) =>
        {
            fail("SQLite and MySQL store -0.0 as 0")
        }
        Value::Float(Some(f)) if !f.is_finite() => {
            fail("NaN and infinities are not portable between databases")
        }
        Value::Double(Some(f)) if !f.is_finite() => {
            fail("NaN and infinities are not portable between databases")
        }
        Value::BigUnsigned(Some(v))
            if *v > i64::MAX as u64
                && matches!(backend, Some(DbBackend::Postgres | DbBackend::Sqlite)) =>
        {
            fail("PostgreSQL and SQLite store integers as signed 64-bit (max 9223372036854775807)")
        }
        Value::ChronoDate(Some(d)) => check_year(d.year(), backend).map_or(Ok(()), |r| fail(&r)),
        Value::ChronoDateTime(Some(d)) => {
            check_year(d.year(), backend).map_or(Ok(()), |r| fail(&r))
        }
        Value::ChronoDateTimeUtc(Some(d)) => {
            check_year(d.year(), backend).map_or(Ok(()), |r| fail(&r))
        }
        Value::ChronoDateTimeWithTimeZone(Some(d)) => {
            check_year(d.naive_utc().year(), backend).map_or(Ok(()), |r| fail(&r))
        }
        Value::Decimal(Some(d)) if backend == Some(DbBackend::Sqlite) && !decimal_fits_f64(d) => {
            fail(
                "SQLite stores decimals as 8-byte floats (SeaORM reads them through f64), which cannot hold this one exactly",
            )
        }
        Value::String(Some(s)) if s.contains('\0') && backend == Some(DbBackend::Postgres) => {
            fail("PostgreSQL text cannot contain NUL characters")
        }
        Value::String(Some(s)) => {
            let max = match ty {
                Some(ColumnType::String(StringLen::N(n))) | Some(ColumnType::Char(Some(n))) => {
                    Some(*n as usize)
                }
                _ => None,
            };
            match max {
                Some(max) if s.chars().count() > max => {
                    fail(&format!("longer than the column's {max} characters"))
                }
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// Whether a decimal survives SQLite: stored as REAL, read back by SeaORM
/// through `f64` and `Decimal::try_from`.
fn decimal_fits_f64(d: &rust_decimal::Decimal) -> bool {
    use rust_decimal::prelude::ToPrimitive;
    d.to_f64()
        .and_then(|f| rust_decimal::Decimal::try_from(f).ok())
        .is_some_and(|back| back == *d)
}

/// The reason a year is out of `backend`'s range for dates and date-times.
fn check_year(year: i32, backend: Option<DbBackend>) -> Option<String> {
    match backend {
        Some(DbBackend::MySql) if !(1000..=9999).contains(&year) => {
            Some("MySQL dates and date-times run from year 1000 to 9999".into())
        }
        Some(DbBackend::Postgres) if year < -4712 => {
            Some("PostgreSQL dates start in 4713 BC".into())
        }
        _ => None,
    }
}

/// Validate every set value of an active model before SeaORM writes it.
/// Called by the `ActiveModelBehavior` that `#[derive(Syncable)]` generates;
/// call it yourself from `before_save` if you opted out with
/// `#[syncable(no_behavior)]`, or on each model before a bulk insert.
///
/// # Errors
/// A [`DbErr::Custom`] whose message names table, column and value.
pub fn validate_active_model<A>(am: &A, backend: DbBackend) -> std::result::Result<(), DbErr>
where
    A: ActiveModelTrait,
    A::Entity: Syncable,
{
    let entity = A::Entity::default();
    let table = entity.table_name();
    for col in <A::Entity as sea_orm::EntityTrait>::Column::iter() {
        let value = match am.get(col) {
            ActiveValue::Set(v) | ActiveValue::Unchanged(v) => v,
            ActiveValue::NotSet => continue,
        };
        let def = col.def();
        check_value(
            table,
            col.as_str(),
            Some(def.get_column_type()),
            &value,
            Some(backend),
        )
        .and_then(|()| check_binding(table, col.as_str(), &value, backend))
        .map_err(|e| DbErr::Custom(format!("tidesync: {e}")))?;
    }
    Ok(())
}

/// What SeaORM's own binding cannot write even where the column could hold
/// it: sqlx sends a `DateTime<Utc>` to MySQL as a TIMESTAMP, whose range
/// ends in January 2038 (tidesync's own writes send it as DATETIME).
fn check_binding(table: &str, column: &str, value: &Value, backend: DbBackend) -> Result<()> {
    if let (Value::ChronoDateTimeUtc(Some(t)), DbBackend::MySql) = (value, backend) {
        let ts = t.timestamp();
        if !(1..=2_147_483_647).contains(&ts) {
            return Err(Error::unrepresentable(
                table,
                column,
                render(value),
                "SeaORM sends UTC date-times to MySQL as TIMESTAMP (1970-01-01 00:00:01 to 2038-01-19 03:14:07 UTC)",
            ));
        }
    }
    Ok(())
}

/// Rough size of a value once bound or stored as typed JSON, in bytes (for
/// batching by size; bytes count four times, as JSON spells them out).
pub fn approx_size(v: &Value) -> usize {
    match v {
        Value::String(Some(s)) => s.len(),
        Value::Bytes(Some(b)) => b.len() * 4,
        Value::Json(Some(j)) => j.to_string().len(),
        _ => 16,
    }
}

/// Exact equality for diffs: floats compare by bit pattern (so `-0.0` differs
/// from `0.0`), everything else by value.
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(Some(x)), Value::Float(Some(y))) => x.to_bits() == y.to_bits(),
        (Value::Double(Some(x)), Value::Double(Some(y))) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// A value for humans in an error message: short, with its type.
pub fn render(value: &Value) -> String {
    let s = match value {
        Value::Float(Some(f)) => format!("{f}"),
        Value::Double(Some(f)) => format!("{f}"),
        Value::BigUnsigned(Some(v)) => format!("{v}"),
        Value::String(Some(s)) => format!("{s:?}"),
        other => format!("{other:?}"),
    };
    if s.chars().count() > 80 {
        let head: String = s.chars().take(77).collect();
        format!("{head}... ({} characters)", s.chars().count())
    } else {
        s
    }
}

/// The canonical text of a primary key: its typed values as JSON.
/// Equal keys give equal text, so it serves as a key in metadata tables.
pub fn pk_key(values: &[Value]) -> Result<String> {
    Ok(serde_json::to_string(values)?)
}

/// Parse [`pk_key`] text back into typed values.
pub fn parse_pk_key(key: &str) -> Result<Vec<Value>> {
    Ok(serde_json::from_str(key)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_and_infinity_are_refused_with_table_column_value() {
        let e = check_value("t", "score", None, &Value::Double(Some(f64::NAN)), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.score: cannot store NaN: NaN and infinities are not portable between databases"
        );
        assert!(check_value("t", "f", None, &Value::Float(Some(f32::INFINITY)), None).is_err());
        assert!(check_value("t", "f", None, &Value::Double(Some(-0.0)), None).is_ok());
        assert!(check_value("t", "f", None, &Value::Double(None), None).is_ok());
    }

    #[test]
    fn u64_above_i64_max_only_refused_where_it_cannot_be_bound() {
        let big = Value::BigUnsigned(Some(u64::MAX));
        assert!(check_value("t", "n", None, &big, Some(DbBackend::Postgres)).is_err());
        assert!(check_value("t", "n", None, &big, Some(DbBackend::Sqlite)).is_err());
        assert!(check_value("t", "n", None, &big, Some(DbBackend::MySql)).is_ok());
        let max = Value::BigUnsigned(Some(i64::MAX as u64));
        assert!(check_value("t", "n", None, &max, Some(DbBackend::Sqlite)).is_ok());
    }

    #[test]
    fn string_length_counts_characters() {
        let ty = ColumnType::String(StringLen::N(3));
        let ok = Value::String(Some("日本語".into()));
        let long = Value::String(Some("abcd".into()));
        assert!(check_value("t", "s", Some(&ty), &ok, None).is_ok());
        let e = check_value("t", "s", Some(&ty), &long, None).unwrap_err();
        assert!(e.to_string().contains("\"abcd\""), "{e}");
        assert!(e.to_string().contains("3 characters"), "{e}");
    }

    #[test]
    fn dates_outside_a_dialect_are_refused_there_only() {
        let d = Value::ChronoDate(chrono::NaiveDate::from_ymd_opt(999, 12, 31));
        let e = check_value("t", "born", None, &d, Some(DbBackend::MySql)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("t.born: cannot store ChronoDate(Some(0999-12-31))"),
            "{e}"
        );
        assert!(check_value("t", "born", None, &d, Some(DbBackend::Postgres)).is_ok());
        assert!(check_value("t", "born", None, &d, Some(DbBackend::Sqlite)).is_ok());
        let far = Value::ChronoDateTime(
            chrono::NaiveDate::from_ymd_opt(-5000, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0)),
        );
        assert!(check_value("t", "at", None, &far, Some(DbBackend::Postgres)).is_err());
    }

    #[test]
    fn negative_zero_differs_from_zero() {
        assert!(!same_value(
            &Value::Double(Some(0.0)),
            &Value::Double(Some(-0.0))
        ));
        assert!(same_value(
            &Value::Double(Some(1.5)),
            &Value::Double(Some(1.5))
        ));
        assert!(same_value(&Value::Int(None), &Value::Int(None)));
        assert!(!same_value(&Value::Int(Some(1)), &Value::Int(None)));
    }

    #[test]
    fn pk_key_round_trips_typed_values() {
        let pk = vec![
            Value::Uuid(Some(uuid::Uuid::nil())),
            Value::BigInt(Some(-4)),
            Value::String(Some("ä".into())),
        ];
        let key = pk_key(&pk).unwrap();
        assert_eq!(parse_pk_key(&key).unwrap(), pk);
        assert!(parse_pk_key("[{\"Nope\":1}]").is_err());
    }

    #[test]
    fn render_truncates_long_values() {
        let s = render(&Value::String(Some("x".repeat(500))));
        assert!(s.len() < 120 && s.ends_with("(502 characters)"), "{s}");
    }

    const BACKENDS: [Option<DbBackend>; 4] = [
        None,
        Some(DbBackend::Postgres),
        Some(DbBackend::MySql),
        Some(DbBackend::Sqlite),
    ];

    /// The backends (of [`BACKENDS`]) that refuse `value` in a column of
    /// type `ty`.
    fn refused_by(ty: Option<&ColumnType>, value: &Value) -> Vec<Option<DbBackend>> {
        BACKENDS
            .into_iter()
            .filter(|b| check_value("t", "c", ty, value, *b).is_err())
            .collect()
    }

    const NONE: [Option<DbBackend>; 0] = [];

    #[test]
    fn negative_zero_is_refused_where_it_would_become_zero() {
        let lite_and_my = [Some(DbBackend::MySql), Some(DbBackend::Sqlite)];
        assert_eq!(refused_by(None, &Value::Float(Some(-0.0))), lite_and_my);
        assert_eq!(refused_by(None, &Value::Double(Some(-0.0))), lite_and_my);
        for v in [
            Value::Float(Some(0.0)),
            Value::Double(Some(0.0)),
            Value::Float(Some(-1.5)),
            Value::Double(Some(-1.5)),
            Value::Float(None),
        ] {
            assert_eq!(refused_by(None, &v), NONE, "{v:?}");
        }
        let e = check_value(
            "t",
            "x",
            None,
            &Value::Double(Some(-0.0)),
            Some(DbBackend::Sqlite),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.x: cannot store -0: SQLite and MySQL store -0.0 as 0"
        );
    }

    #[test]
    fn nan_and_infinities_are_refused_everywhere() {
        for v in [
            Value::Float(Some(f32::NAN)),
            Value::Float(Some(f32::NEG_INFINITY)),
            Value::Double(Some(f64::NAN)),
            Value::Double(Some(f64::INFINITY)),
        ] {
            assert_eq!(refused_by(None, &v), BACKENDS, "{v:?}");
        }
        assert_eq!(refused_by(None, &Value::Float(Some(f32::MAX))), NONE);
        assert_eq!(refused_by(None, &Value::Double(Some(f64::MIN))), NONE);
    }

    #[test]
    fn u64_refused_from_just_above_i64_max() {
        let pg_and_lite = [Some(DbBackend::Postgres), Some(DbBackend::Sqlite)];
        let above = Value::BigUnsigned(Some(i64::MAX as u64 + 1));
        assert_eq!(refused_by(None, &above), pg_and_lite);
        for v in [i64::MAX as u64, 0] {
            assert_eq!(refused_by(None, &Value::BigUnsigned(Some(v))), NONE, "{v}");
        }
    }

    #[test]
    fn decimals_are_refused_on_sqlite_only_when_a_double_cannot_hold_them() {
        use std::str::FromStr;
        let dec = |s: &str| Value::Decimal(Some(rust_decimal::Decimal::from_str(s).unwrap()));
        for fits in ["1.50", "-0.25", "123456.789", "0"] {
            assert_eq!(refused_by(None, &dec(fits)), NONE, "{fits}");
        }
        for lossy in ["12345678901234567890.123", "0.1234567890123456789"] {
            assert_eq!(
                refused_by(None, &dec(lossy)),
                [Some(DbBackend::Sqlite)],
                "{lossy}"
            );
        }
    }

    #[test]
    fn nul_characters_are_refused_on_postgres_only() {
        let v = Value::String(Some("a\0b".into()));
        assert_eq!(refused_by(None, &v), [Some(DbBackend::Postgres)]);
        assert_eq!(refused_by(None, &Value::String(Some("ab".into()))), NONE);
    }

    #[test]
    fn strings_may_fill_but_not_pass_the_declared_length() {
        let s = |n: usize| Value::String(Some("é".repeat(n)));
        for ty in [
            ColumnType::String(StringLen::N(3)),
            ColumnType::Char(Some(3)),
        ] {
            assert_eq!(refused_by(Some(&ty), &s(3)), NONE, "{ty:?}");
            assert_eq!(refused_by(Some(&ty), &s(0)), NONE, "{ty:?}");
            assert_eq!(refused_by(Some(&ty), &s(4)), BACKENDS, "{ty:?}");
        }
        // No declared length, or no known type: no limit.
        for ty in [
            Some(ColumnType::String(StringLen::None)),
            Some(ColumnType::Text),
            Some(ColumnType::Char(None)),
            None,
        ] {
            assert_eq!(refused_by(ty.as_ref(), &s(1000)), NONE, "{ty:?}");
        }
    }

    #[test]
    fn years_are_checked_against_each_dialects_range() {
        let my = [Some(DbBackend::MySql)];
        let pg_and_my = [Some(DbBackend::Postgres), Some(DbBackend::MySql)];
        let date = |y: i32| chrono::NaiveDate::from_ymd_opt(y, 6, 1).unwrap();
        let at = |y: i32| date(y).and_hms_opt(12, 0, 0).unwrap();
        let kinds = |y: i32| {
            [
                Value::ChronoDate(Some(date(y))),
                Value::ChronoDateTime(Some(at(y))),
                Value::ChronoDateTimeUtc(Some(at(y).and_utc())),
                Value::ChronoDateTimeWithTimeZone(Some(at(y).and_utc().fixed_offset())),
            ]
        };
        for (year, refused) in [
            (-4713, &pg_and_my[..]),
            (-4712, &my[..]),
            (999, &my[..]),
            (1000, &NONE[..]),
            (2024, &NONE[..]),
            (9999, &NONE[..]),
            (10_000, &my[..]),
        ] {
            for v in kinds(year) {
                assert_eq!(refused_by(None, &v), refused, "{v:?}");
            }
        }
        // A date-time with an offset is checked by its UTC year.
        let new_year = chrono::NaiveDate::from_ymd_opt(1000, 1, 1)
            .unwrap()
            .and_hms_opt(0, 30, 0)
            .unwrap()
            .and_local_timezone(chrono::FixedOffset::east_opt(3600).unwrap())
            .unwrap();
        let v = Value::ChronoDateTimeWithTimeZone(Some(new_year));
        assert_eq!(refused_by(None, &v), my);
        let e =
            check_value("t", "at", None, &kinds(-5000)[0], Some(DbBackend::Postgres)).unwrap_err();
        assert!(
            e.to_string().ends_with("PostgreSQL dates start in 4713 BC"),
            "{e}"
        );
        let e = check_value("t", "at", None, &kinds(999)[1], Some(DbBackend::MySql)).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("MySQL dates and date-times run from year 1000 to 9999"),
            "{e}"
        );
    }

    #[test]
    fn seaorm_utc_date_times_fit_mysql_timestamps_only() {
        let at = |ts: i64| Value::ChronoDateTimeUtc(chrono::DateTime::from_timestamp(ts, 0));
        for ok in [1, 1_700_000_000, 2_147_483_647] {
            assert!(
                check_binding("t", "c", &at(ok), DbBackend::MySql).is_ok(),
                "{ok}"
            );
        }
        for bad in [0, -1, 2_147_483_648] {
            let e = check_binding("t", "c", &at(bad), DbBackend::MySql).unwrap_err();
            assert!(e.to_string().starts_with("t.c: cannot store"), "{e}");
            for other in [DbBackend::Postgres, DbBackend::Sqlite] {
                assert!(check_binding("t", "c", &at(bad), other).is_ok());
            }
        }
    }

    #[test]
    fn sizes_are_text_lengths_and_four_per_byte() {
        assert_eq!(approx_size(&Value::String(Some("héllo".into()))), 6);
        assert_eq!(approx_size(&Value::Bytes(Some(vec![0; 10]))), 40);
        let json = serde_json::json!({"a": [1, 2]});
        assert_eq!(
            approx_size(&Value::Json(Some(Box::new(json.clone())))),
            json.to_string().len()
        );
        assert_eq!(approx_size(&Value::BigInt(Some(1))), 16);
        assert_eq!(approx_size(&Value::String(None)), 16);
    }

    #[test]
    fn floats_are_the_same_by_bit_pattern() {
        let f = |x: f32| Value::Float(Some(x));
        let d = |x: f64| Value::Double(Some(x));
        assert!(!same_value(&f(0.0), &f(-0.0)));
        assert!(same_value(&f(2.5), &f(2.5)));
        assert!(!same_value(&f(2.5), &f(3.5)));
        // An unchanged NaN is no change (NaN != NaN as floats).
        assert!(same_value(&d(f64::NAN), &d(f64::NAN)));
        assert!(same_value(&f(f32::NAN), &f(f32::NAN)));
        assert!(!same_value(&d(1.0), &d(2.0)));
        assert!(!same_value(&Value::Int(Some(1)), &Value::BigInt(Some(1))));
    }

    #[test]
    fn render_keeps_up_to_80_characters() {
        // A string renders quoted: 78 characters in quotes make 80.
        let fits = Value::String(Some("é".repeat(78)));
        assert_eq!(render(&fits), format!("\"{}\"", "é".repeat(78)));
        let long = render(&Value::String(Some("é".repeat(79))));
        assert_eq!(long, format!("\"{}... (81 characters)", "é".repeat(76)));
        assert_eq!(render(&Value::Double(Some(1.5))), "1.5");
        assert_eq!(render(&Value::Int(None)), "Int(None)");
    }

    mod note {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "notes")]
        pub(super) struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub id: i32,
            pub score: f64,
            #[sea_orm(column_type = "String(StringLen::N(3))")]
            pub code: String,
            pub at: ChronoDateTimeUtc,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub(super) enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}

        impl crate::syncable::Syncable for Entity {}
    }

    #[test]
    fn active_models_are_checked_column_by_column_before_saving() {
        use sea_orm::ActiveValue::{NotSet, Set, Unchanged};
        let ok = note::ActiveModel {
            id: Set(1),
            score: Set(1.5),
            code: Unchanged("abc".into()),
            at: NotSet,
        };
        assert!(validate_active_model(&ok, DbBackend::Postgres).is_ok());
        let nan = note::ActiveModel {
            score: Set(f64::NAN),
            ..ok.clone()
        };
        assert_eq!(
            validate_active_model(&nan, DbBackend::Sqlite).unwrap_err(),
            DbErr::Custom(
                "tidesync: notes.score: cannot store NaN: NaN and infinities are not portable between databases"
                    .into()
            )
        );
        // The column's declared length.
        let long = note::ActiveModel {
            code: Set("abcd".into()),
            ..ok.clone()
        };
        assert!(validate_active_model(&long, DbBackend::Postgres).is_err());
        // SeaORM's own binding of UTC date-times on MySQL.
        let late = note::ActiveModel {
            at: Set(chrono::DateTime::from_timestamp(2_147_483_648, 0).unwrap()),
            ..ok
        };
        let e = validate_active_model(&late, DbBackend::MySql).unwrap_err();
        assert!(e.to_string().contains("notes.at: cannot store"), "{e}");
        assert!(validate_active_model(&late, DbBackend::Postgres).is_ok());
    }
}
