//! Values each database would store as something else: refused with table,
//! column and value instead of being silently changed.

use chrono::Datelike;
use sea_orm::sea_query::{ColumnType, Value};
use sea_orm::{
    ActiveModelTrait, ActiveValue, ColumnTrait, DbBackend, DbErr, EntityName, IdenStatic, Iterable,
};

use super::Dialect;
use crate::model::error::{Error, Result};
use crate::model::syncable::Syncable;
use crate::model::value::{check_portable, render};

/// Refuse a value that `dialect` (the database it is about to be written
/// to, if known) would store as something else, or that some database
/// would (NaN, a string over its column's length: see
/// [`check_portable`]).
pub(crate) fn check_value(
    table: &str,
    column: &str,
    ty: Option<&ColumnType>,
    value: &Value,
    dialect: Option<&dyn Dialect>,
) -> Result<()> {
    if let Some(reason) = dialect.and_then(|d| d.refuses(value)) {
        return Err(Error::unrepresentable(table, column, render(value), reason));
    }
    check_portable(table, column, ty, value)
}

/// Whether a float is `-0.0` (which some databases store as `0`).
pub(super) fn is_negative_zero(value: &Value) -> bool {
    match value {
        Value::Float(Some(f)) => f.to_bits() == (-0.0f32).to_bits(),
        Value::Double(Some(f)) => f.to_bits() == (-0.0f64).to_bits(),
        _ => false,
    }
}

/// Whether an unsigned integer is beyond a signed 64-bit integer.
pub(super) fn above_i64(value: &Value) -> bool {
    matches!(value, Value::BigUnsigned(Some(v)) if *v > i64::MAX as u64)
}

/// The year of a date or date-time value (a date-time with an offset by its
/// UTC year).
pub(super) fn year_of(value: &Value) -> Option<i32> {
    match value {
        Value::ChronoDate(Some(d)) => Some(d.year()),
        Value::ChronoDateTime(Some(d)) => Some(d.year()),
        Value::ChronoDateTimeUtc(Some(d)) => Some(d.year()),
        Value::ChronoDateTimeWithTimeZone(Some(d)) => Some(d.naive_utc().year()),
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
    let dialect = super::of(backend).map_err(|e| DbErr::Custom(format!("tidesync: {e}")))?;
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
            Some(dialect),
        )
        .and_then(|()| check_binding(table, col.as_str(), &value, dialect))
        .map_err(|e| DbErr::Custom(format!("tidesync: {e}")))?;
    }
    Ok(())
}

/// What SeaORM's own binding cannot write even where the column could hold
/// it (see [`Dialect::refuses_binding`]).
fn check_binding(table: &str, column: &str, value: &Value, dialect: &dyn Dialect) -> Result<()> {
    match dialect.refuses_binding(value) {
        Some(reason) => Err(Error::unrepresentable(table, column, render(value), reason)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::sea_query::StringLen;

    /// [`super::check_value`] on a database kind (`None`: unknown).
    fn check_value(
        table: &str,
        column: &str,
        ty: Option<&ColumnType>,
        value: &Value,
        kind: Option<DbBackend>,
    ) -> Result<()> {
        let dialect = kind.map(|k| super::super::of(k).unwrap());
        super::check_value(table, column, ty, value, dialect)
    }

    /// [`super::check_binding`] on a database kind.
    fn check_binding(table: &str, column: &str, value: &Value, kind: DbBackend) -> Result<()> {
        super::check_binding(table, column, value, super::super::of(kind).unwrap())
    }

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
            "t.x: cannot store -0: SQLite stores -0.0 as 0"
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

        impl crate::model::syncable::Syncable for Entity {}
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
