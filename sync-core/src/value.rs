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
}
