//! Typed values: the checks that hold on every database, exact comparison
//! for diffs, and the canonical text form of a primary key.
//!
//! Values travel as sea-query [`Value`]s serialised with their type tag
//! (`{"Int":1}`, `{"Decimal":"1.50"}`), so a change can be replayed without
//! the entity compiled in. What one database cannot hold is the dialect's
//! business.

use sea_orm::sea_query::{ColumnType, StringLen, Value};

use crate::model::error::{Error, Result};

/// Refuse a value that no database would keep as it is: a NaN or infinite
/// float (null in typed JSON, NULL in SQLite), or a string longer than the
/// column's declared length.
pub(crate) fn check_portable(
    table: &str,
    column: &str,
    ty: Option<&ColumnType>,
    value: &Value,
) -> Result<()> {
    let fail = |reason: &str| Err(Error::unrepresentable(table, column, render(value), reason));
    match value {
        Value::Float(Some(f)) if !f.is_finite() => {
            fail("NaN and infinities are not portable between databases")
        }
        Value::Double(Some(f)) if !f.is_finite() => {
            fail("NaN and infinities are not portable between databases")
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

/// Rough size of a value once bound or stored as typed JSON, in bytes (for
/// batching by size; bytes count four times, as JSON spells them out).
pub(crate) fn approx_size(v: &Value) -> usize {
    match v {
        Value::String(Some(s)) => s.len(),
        Value::Bytes(Some(b)) => b.len() * 4,
        Value::Json(Some(j)) => j.to_string().len(),
        _ => 16,
    }
}

/// Whether a value is SQL NULL (a JSON `null` is a value, not NULL).
pub(crate) fn is_null(v: &Value) -> bool {
    *v == v.as_null()
}

/// Exact equality for diffs: floats compare by bit pattern (so `-0.0` differs
/// from `0.0`), everything else by value.
pub(crate) fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(Some(x)), Value::Float(Some(y))) => x.to_bits() == y.to_bits(),
        (Value::Double(Some(x)), Value::Double(Some(y))) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// A value for humans in an error message: short, with its type.
pub(crate) fn render(value: &Value) -> String {
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

/// The canonical text of a primary key: its typed values as JSON, each in
/// one form per value, so that equal keys give equal text whatever database
/// read them (it identifies the row in the row-state tables). A decimal
/// loses its trailing zeros (`1.5000` from a `DECIMAL(20,4)` is `1.5`); a
/// date-time with an offset is taken to UTC (PostgreSQL returns
/// `timestamptz` at `+00:00`).
pub(crate) fn pk_key(values: &[Value]) -> Result<String> {
    if !values.iter().any(needs_canonical_form) {
        return Ok(serde_json::to_string(values)?);
    }
    let canonical: Vec<Value> = values.iter().map(canonical).collect();
    Ok(serde_json::to_string(&canonical)?)
}

/// The text of a key as a database compares it, whatever the variants of
/// its values: a date-time in UTC, in local time or with an offset is one
/// instant, a `char` is a one-character string. Two keys with the same
/// identity are one row of a table, however two entities type its key
/// (one device's `DateTime<Utc>`, another's `DateTime<FixedOffset>`).
pub(crate) fn key_identity(values: &[Value]) -> Result<String> {
    let same: Vec<Value> = values.iter().map(one_variant).collect();
    pk_key(&same)
}

/// `v` in the variant every other variant of its kind maps to: a
/// date-time with an offset, a string (see [`key_identity`]).
fn one_variant(v: &Value) -> Value {
    match v {
        Value::ChronoDateTimeUtc(t) => {
            Value::ChronoDateTimeWithTimeZone(t.map(|t| t.fixed_offset()))
        }
        Value::ChronoDateTimeLocal(t) => Value::ChronoDateTimeWithTimeZone(
            t.map(|t| t.with_timezone(&chrono::Utc).fixed_offset()),
        ),
        Value::Char(c) => Value::String(c.map(String::from)),
        other => other.clone(),
    }
}

/// The text two values stamped alike are settled by (the greater wins;
/// see `RowState::set`): the typed text of the
/// value in one variant and one form, so that a database that gives a
/// value back in its column's form (PostgreSQL a `timestamptz` in UTC, a
/// `DECIMAL(p,s)` at its scale, an integer as the widest of its kind)
/// settles a tie as the device that wrote it does.
pub(crate) fn tie_text(v: &Value) -> serde_json::Result<String> {
    let widest = match one_variant(v) {
        Value::TinyInt(x) => Value::BigInt(x.map(i64::from)),
        Value::SmallInt(x) => Value::BigInt(x.map(i64::from)),
        Value::Int(x) => Value::BigInt(x.map(i64::from)),
        Value::TinyUnsigned(x) => Value::BigUnsigned(x.map(u64::from)),
        Value::SmallUnsigned(x) => Value::BigUnsigned(x.map(u64::from)),
        Value::Unsigned(x) => Value::BigUnsigned(x.map(u64::from)),
        Value::Float(x) => Value::Double(x.map(f64::from)),
        other => other,
    };
    crate::model::typed::to_text(&canonical(&widest))
}

/// The one form of each value of a key (see [`pk_key`]): what tidesync
/// binds to find or write a key in its own tables, so that a key stored as
/// text (SQLite: a decimal, a date-time with its offset) compares equal to
/// the same key read back another way.
pub(crate) fn canonical_key(values: &[Value]) -> Vec<Value> {
    values.iter().map(canonical).collect()
}

/// Whether a key value has more than one form.
fn needs_canonical_form(v: &Value) -> bool {
    matches!(
        v,
        Value::Decimal(Some(_)) | Value::ChronoDateTimeWithTimeZone(Some(_))
    )
}

/// The one form of a key value.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Decimal(Some(d)) => Value::Decimal(Some(d.normalize())),
        Value::ChronoDateTimeWithTimeZone(Some(t)) => {
            Value::ChronoDateTimeWithTimeZone(Some(t.with_timezone(&chrono::Utc).fixed_offset()))
        }
        other => other.clone(),
    }
}

/// A time value cut to whole microseconds, if it holds a finer part:
/// PostgreSQL and MySQL keep microseconds (they round or cut the rest),
/// SQLite keeps what it is given, so a finer value would differ between
/// replicas. `None` for any other value, and for a time already whole.
pub(crate) fn to_micros(v: &Value) -> Option<Value> {
    use chrono::Timelike;
    fn cut<T: Timelike>(t: &T) -> Option<T> {
        let ns = t.nanosecond();
        (!ns.is_multiple_of(1000))
            .then(|| t.with_nanosecond(ns - ns % 1000))
            .flatten()
    }
    Some(match v {
        Value::ChronoDateTime(Some(t)) => Value::ChronoDateTime(Some(cut(t)?)),
        Value::ChronoDateTimeUtc(Some(t)) => Value::ChronoDateTimeUtc(Some(cut(t)?)),
        Value::ChronoDateTimeLocal(Some(t)) => Value::ChronoDateTimeLocal(Some(cut(t)?)),
        Value::ChronoDateTimeWithTimeZone(Some(t)) => {
            Value::ChronoDateTimeWithTimeZone(Some(cut(t)?))
        }
        Value::ChronoTime(Some(t)) => Value::ChronoTime(Some(cut(t)?)),
        _ => return None,
    })
}

/// Parse [`pk_key`] text back into typed values.
pub(crate) fn parse_pk_key(key: &str) -> Result<Vec<Value>> {
    Ok(serde_json::from_str(key)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key is bound in its one form, value by value: a decimal without
    /// trailing zeros, a date-time with an offset at UTC, the rest as is.
    #[test]
    fn a_key_is_bound_in_its_one_form() {
        use std::str::FromStr;
        let d = |s: &str| Value::Decimal(Some(rust_decimal::Decimal::from_str(s).unwrap()));
        let t = chrono::DateTime::parse_from_rfc3339("2026-12-06T10:00:00+02:00").unwrap();
        let key = [
            d("1.50"),
            Value::ChronoDateTimeWithTimeZone(Some(t)),
            Value::Int(Some(3)),
        ];
        let one = canonical_key(&key);
        assert_eq!(
            one,
            vec![
                d("1.5"),
                Value::ChronoDateTimeWithTimeZone(Some(
                    chrono::DateTime::parse_from_rfc3339("2026-12-06T08:00:00+00:00").unwrap()
                )),
                Value::Int(Some(3)),
            ]
        );
        assert_eq!(pk_key(&one).unwrap(), pk_key(&key).unwrap());
        // Equal values compare equal in any form: the forms themselves.
        match (&one[0], &one[1]) {
            (Value::Decimal(Some(d)), Value::ChronoDateTimeWithTimeZone(Some(t))) => {
                assert_eq!(d.scale(), 1);
                assert_eq!(t.offset().local_minus_utc(), 0);
            }
            other => panic!("{other:?}"),
        }
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
    fn times_are_cut_to_whole_microseconds() {
        use chrono::{NaiveDate, TimeZone, Timelike, Utc};
        let t = NaiveDate::from_ymd_opt(2026, 12, 2)
            .unwrap()
            .and_hms_nano_opt(12, 0, 0, 123_456_789)
            .unwrap();
        let whole = NaiveDate::from_ymd_opt(2026, 12, 2)
            .unwrap()
            .and_hms_nano_opt(12, 0, 0, 123_456_000)
            .unwrap();
        assert_eq!(
            to_micros(&Value::ChronoDateTime(Some(t))),
            Some(Value::ChronoDateTime(Some(whole)))
        );
        assert_eq!(to_micros(&Value::ChronoDateTime(Some(whole))), None);
        let utc = Utc.from_utc_datetime(&t);
        assert_eq!(
            to_micros(&Value::ChronoDateTimeUtc(Some(utc))),
            Some(Value::ChronoDateTimeUtc(Some(
                Utc.from_utc_datetime(&whole)
            )))
        );
        let off = utc.fixed_offset();
        assert!(matches!(
            to_micros(&Value::ChronoDateTimeWithTimeZone(Some(off))),
            Some(Value::ChronoDateTimeWithTimeZone(Some(o))) if o.timestamp_subsec_nanos() == 123_456_000
        ));
        let local = utc.with_timezone(&chrono::Local);
        assert!(matches!(
            to_micros(&Value::ChronoDateTimeLocal(Some(local))),
            Some(Value::ChronoDateTimeLocal(Some(l))) if l.timestamp_subsec_nanos() == 123_456_000
        ));
        assert_eq!(
            to_micros(&Value::ChronoTime(Some(t.time()))),
            Some(Value::ChronoTime(Some(whole.time())))
        );
        assert_eq!(to_micros(&Value::ChronoDateTime(None)), None);
        assert_eq!(to_micros(&Value::BigInt(Some(5))), None);
        // A leap second keeps its place.
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_001)
            .unwrap();
        assert!(matches!(
            to_micros(&Value::ChronoDateTime(Some(leap))),
            Some(Value::ChronoDateTime(Some(l))) if l.nanosecond() == 1_500_000_000
        ));
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

    /// Equal keys, one text: a decimal's scale and a date-time's offset do
    /// not count.
    #[test]
    fn one_instant_is_one_key_identity_whatever_its_variant() {
        use chrono::{FixedOffset, TimeZone, Utc};
        let utc = Utc.with_ymd_and_hms(2031, 2, 3, 4, 5, 6).unwrap();
        let east = utc.with_timezone(&FixedOffset::east_opt(3600).unwrap());
        let a = key_identity(&[Value::ChronoDateTimeUtc(Some(utc))]).unwrap();
        let b = key_identity(&[Value::ChronoDateTimeWithTimeZone(Some(east))]).unwrap();
        assert_eq!(a, b);
        assert_ne!(
            a,
            key_identity(&[Value::ChronoDateTimeUtc(Some(
                utc + chrono::Duration::seconds(1)
            ))])
            .unwrap()
        );
        assert_eq!(
            key_identity(&[Value::Char(Some('k'))]).unwrap(),
            key_identity(&[Value::String(Some("k".into()))]).unwrap()
        );
    }

    #[test]
    fn equal_keys_have_one_text() {
        use rust_decimal::Decimal;
        let d = |m, s| Value::Decimal(Some(Decimal::new(m, s)));
        assert_eq!(
            pk_key(&[d(15, 1)]).unwrap(),
            pk_key(&[d(15000, 4)]).unwrap()
        );
        assert_ne!(pk_key(&[d(15, 1)]).unwrap(), pk_key(&[d(16, 1)]).unwrap());
        let utc = chrono::DateTime::parse_from_rfc3339("2026-01-02T01:04:05.5Z").unwrap();
        let local = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05.5+02:00").unwrap();
        let t = |v| Value::ChronoDateTimeWithTimeZone(Some(v));
        assert_eq!(pk_key(&[t(utc)]).unwrap(), pk_key(&[t(local)]).unwrap());
        let key = pk_key(&[d(15000, 4), Value::Int(Some(1))]).unwrap();
        assert_eq!(
            parse_pk_key(&key).unwrap(),
            vec![d(15, 1), Value::Int(Some(1))]
        );
    }

    #[test]
    fn render_truncates_long_values() {
        let s = render(&Value::String(Some("x".repeat(500))));
        assert!(s.len() < 120 && s.ends_with("(502 characters)"), "{s}");
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
}
