//! The serde form of a sea-query [`ColumnType`], which sea-query itself
//! cannot serialise: used as `#[serde(with = "crate::model::column_type")]`
//! on `ColumnSpec::ty`, so a `TableSpec` can travel and be stored. (Named,
//! not linked: `change` uses this module, so this one does not use it.)
//!
//! # Wire format
//!
//! This is a wire format, read by peers of other versions: **variants may
//! be added, never renamed or reshaped.** (A peer that does not know a new
//! variant refuses it with an error.)
//!
//! Externally tagged, with snake_case tags. A type without parameters is a
//! plain string; one with parameters is an object of one key, its tag:
//!
//! | `ColumnType`                  | JSON                                              |
//! |-------------------------------|---------------------------------------------------|
//! | `Char(Some(3))` / `Char(None)`| `{"char":3}` / `{"char":null}`                    |
//! | `String(StringLen::N(40))`    | `{"string":{"n":40}}`                             |
//! | `String(StringLen::Max)`      | `{"string":"max"}`                                |
//! | `String(StringLen::None)`     | `{"string":"none"}`                               |
//! | `Text`, `Blob`                | `"text"`, `"blob"`                                |
//! | `TinyInteger` … `BigInteger`  | `"tiny_integer"`, `"small_integer"`, `"integer"`, `"big_integer"` |
//! | `TinyUnsigned` … `BigUnsigned`| `"tiny_unsigned"`, `"small_unsigned"`, `"unsigned"`, `"big_unsigned"` |
//! | `Float`, `Double`             | `"float"`, `"double"`                             |
//! | `Decimal(Some((20, 4)))`      | `{"decimal":[20,4]}` (`{"decimal":null}` for `None`) |
//! | `DateTime`, `Timestamp`       | `"date_time"`, `"timestamp"`                      |
//! | `TimestampWithTimeZone`       | `"timestamp_with_time_zone"`                      |
//! | `Time`, `Date`, `Year`        | `"time"`, `"date"`, `"year"`                      |
//! | `Interval(Some(DayToSecond), Some(6))` | `{"interval":["day_to_second",6]}` (either may be `null`) |
//! | `Binary(16)`                  | `{"binary":16}`                                   |
//! | `VarBinary(len)`              | `{"var_binary":…}`, `len` as for `string`         |
//! | `Bit(Some(8))`, `VarBit(8)`   | `{"bit":8}` (`{"bit":null}`), `{"var_bit":8}`     |
//! | `Boolean`                     | `"boolean"`                                       |
//! | `Money(Some((19, 2)))`        | `{"money":[19,2]}` (`{"money":null}`)             |
//! | `Json`, `JsonBinary`, `Uuid`  | `"json"`, `"json_binary"`, `"uuid"`               |
//! | `Custom(name)`                | `{"custom":"name"}`                               |
//! | `Enum { name, variants }`     | `{"enum":{"name":"mood","variants":["happy","sad"]}}` |
//! | `Array(inner)`                | `{"array":…}`, `inner` in this same form          |
//! | `Vector(Some(3))`             | `{"vector":3}` (`{"vector":null}`)                |
//! | `Cidr`, `Inet`, `MacAddr`     | `"cidr"`, `"inet"`, `"mac_addr"`                  |
//! | `LTree`                       | `"ltree"`                                         |
//!
//! The interval fields ([`PgInterval`]) are snake_case too: `"year"`,
//! `"month"`, `"day"`, `"hour"`, `"minute"`, `"second"`,
//! `"year_to_month"`, `"day_to_hour"`, `"day_to_minute"`,
//! `"day_to_second"`, `"hour_to_minute"`, `"hour_to_second"`,
//! `"minute_to_second"`. Identifiers (`custom`, `enum`) are their text.
//!
//! `ColumnType` is `#[non_exhaustive]`: a variant a later sea-query adds,
//! until it is given a form here, fails to serialise with an error naming
//! it.

use sea_orm::sea_query::{ColumnType, DynIden, PgInterval, RcOrArc, StringLen};
use serde::de::Deserializer;
use serde::ser::{Error as _, Serializer};
use serde::{Deserialize, Serialize};

/// Serialise `ty` in the wire form; an error for a variant without one.
pub(crate) fn serialize<S: Serializer>(ty: &ColumnType, s: S) -> Result<S::Ok, S::Error> {
    Wire::from_column_type(ty)
        .map_err(S::Error::custom)?
        .serialize(s)
}

/// Read a column type in the wire form.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ColumnType, D::Error> {
    Wire::deserialize(d).map(Wire::into_column_type)
}

/// The wire form of [`ColumnType`], variant for variant.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Wire {
    Char(Option<u32>),
    String(Len),
    Text,
    Blob,
    TinyInteger,
    SmallInteger,
    Integer,
    BigInteger,
    TinyUnsigned,
    SmallUnsigned,
    Unsigned,
    BigUnsigned,
    Float,
    Double,
    Decimal(Option<(u32, u32)>),
    DateTime,
    Timestamp,
    TimestampWithTimeZone,
    Time,
    Date,
    Year,
    Interval(Option<Interval>, Option<u32>),
    Binary(u32),
    VarBinary(Len),
    Bit(Option<u32>),
    VarBit(u32),
    Boolean,
    Money(Option<(u32, u32)>),
    Json,
    JsonBinary,
    Uuid,
    Custom(String),
    Enum {
        name: String,
        variants: Vec<String>,
    },
    Array(Box<Wire>),
    Vector(Option<u32>),
    Cidr,
    Inet,
    MacAddr,
    #[serde(rename = "ltree")]
    LTree,
}

/// The wire form of [`StringLen`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Len {
    N(u32),
    Max,
    None,
}

/// The wire form of [`PgInterval`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Interval {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    YearToMonth,
    DayToHour,
    DayToMinute,
    DayToSecond,
    HourToMinute,
    HourToSecond,
    MinuteToSecond,
}

impl Wire {
    /// The wire form of `ty`, or why it has none.
    fn from_column_type(ty: &ColumnType) -> Result<Wire, String> {
        Ok(match ty {
            ColumnType::Char(n) => Wire::Char(*n),
            ColumnType::String(len) => Wire::String(Len::from_string_len(*len)),
            ColumnType::Text => Wire::Text,
            ColumnType::Blob => Wire::Blob,
            ColumnType::TinyInteger => Wire::TinyInteger,
            ColumnType::SmallInteger => Wire::SmallInteger,
            ColumnType::Integer => Wire::Integer,
            ColumnType::BigInteger => Wire::BigInteger,
            ColumnType::TinyUnsigned => Wire::TinyUnsigned,
            ColumnType::SmallUnsigned => Wire::SmallUnsigned,
            ColumnType::Unsigned => Wire::Unsigned,
            ColumnType::BigUnsigned => Wire::BigUnsigned,
            ColumnType::Float => Wire::Float,
            ColumnType::Double => Wire::Double,
            ColumnType::Decimal(p) => Wire::Decimal(*p),
            ColumnType::DateTime => Wire::DateTime,
            ColumnType::Timestamp => Wire::Timestamp,
            ColumnType::TimestampWithTimeZone => Wire::TimestampWithTimeZone,
            ColumnType::Time => Wire::Time,
            ColumnType::Date => Wire::Date,
            ColumnType::Year => Wire::Year,
            ColumnType::Interval(fields, precision) => Wire::Interval(
                fields.as_ref().map(Interval::from_pg).transpose()?,
                *precision,
            ),
            ColumnType::Binary(n) => Wire::Binary(*n),
            ColumnType::VarBinary(len) => Wire::VarBinary(Len::from_string_len(*len)),
            ColumnType::Bit(n) => Wire::Bit(*n),
            ColumnType::VarBit(n) => Wire::VarBit(*n),
            ColumnType::Boolean => Wire::Boolean,
            ColumnType::Money(p) => Wire::Money(*p),
            ColumnType::Json => Wire::Json,
            ColumnType::JsonBinary => Wire::JsonBinary,
            ColumnType::Uuid => Wire::Uuid,
            ColumnType::Custom(name) => Wire::Custom(name.to_string()),
            ColumnType::Enum { name, variants } => Wire::Enum {
                name: name.to_string(),
                variants: variants.iter().map(ToString::to_string).collect(),
            },
            ColumnType::Array(inner) => Wire::Array(Box::new(Wire::from_column_type(inner)?)),
            ColumnType::Vector(n) => Wire::Vector(*n),
            ColumnType::Cidr => Wire::Cidr,
            ColumnType::Inet => Wire::Inet,
            ColumnType::MacAddr => Wire::MacAddr,
            ColumnType::LTree => Wire::LTree,
            other => return Err(format!("column type {other:?} has no serialised form")),
        })
    }

    /// The column type this wire form describes.
    fn into_column_type(self) -> ColumnType {
        match self {
            Wire::Char(n) => ColumnType::Char(n),
            Wire::String(len) => ColumnType::String(len.into_string_len()),
            Wire::Text => ColumnType::Text,
            Wire::Blob => ColumnType::Blob,
            Wire::TinyInteger => ColumnType::TinyInteger,
            Wire::SmallInteger => ColumnType::SmallInteger,
            Wire::Integer => ColumnType::Integer,
            Wire::BigInteger => ColumnType::BigInteger,
            Wire::TinyUnsigned => ColumnType::TinyUnsigned,
            Wire::SmallUnsigned => ColumnType::SmallUnsigned,
            Wire::Unsigned => ColumnType::Unsigned,
            Wire::BigUnsigned => ColumnType::BigUnsigned,
            Wire::Float => ColumnType::Float,
            Wire::Double => ColumnType::Double,
            Wire::Decimal(p) => ColumnType::Decimal(p),
            Wire::DateTime => ColumnType::DateTime,
            Wire::Timestamp => ColumnType::Timestamp,
            Wire::TimestampWithTimeZone => ColumnType::TimestampWithTimeZone,
            Wire::Time => ColumnType::Time,
            Wire::Date => ColumnType::Date,
            Wire::Year => ColumnType::Year,
            Wire::Interval(fields, precision) => {
                ColumnType::Interval(fields.map(Interval::into_pg), precision)
            }
            Wire::Binary(n) => ColumnType::Binary(n),
            Wire::VarBinary(len) => ColumnType::VarBinary(len.into_string_len()),
            Wire::Bit(n) => ColumnType::Bit(n),
            Wire::VarBit(n) => ColumnType::VarBit(n),
            Wire::Boolean => ColumnType::Boolean,
            Wire::Money(p) => ColumnType::Money(p),
            Wire::Json => ColumnType::Json,
            Wire::JsonBinary => ColumnType::JsonBinary,
            Wire::Uuid => ColumnType::Uuid,
            Wire::Custom(name) => ColumnType::Custom(DynIden::from(name)),
            Wire::Enum { name, variants } => ColumnType::Enum {
                name: DynIden::from(name),
                variants: variants.into_iter().map(DynIden::from).collect(),
            },
            Wire::Array(inner) => ColumnType::Array(RcOrArc::new(inner.into_column_type())),
            Wire::Vector(n) => ColumnType::Vector(n),
            Wire::Cidr => ColumnType::Cidr,
            Wire::Inet => ColumnType::Inet,
            Wire::MacAddr => ColumnType::MacAddr,
            Wire::LTree => ColumnType::LTree,
        }
    }
}

impl Len {
    fn from_string_len(len: StringLen) -> Len {
        match len {
            StringLen::N(n) => Len::N(n),
            StringLen::Max => Len::Max,
            StringLen::None => Len::None,
        }
    }

    fn into_string_len(self) -> StringLen {
        match self {
            Len::N(n) => StringLen::N(n),
            Len::Max => StringLen::Max,
            Len::None => StringLen::None,
        }
    }
}

impl Interval {
    /// The wire form of `pg`, or why it has none.
    fn from_pg(pg: &PgInterval) -> Result<Interval, String> {
        Ok(match pg {
            PgInterval::Year => Interval::Year,
            PgInterval::Month => Interval::Month,
            PgInterval::Day => Interval::Day,
            PgInterval::Hour => Interval::Hour,
            PgInterval::Minute => Interval::Minute,
            PgInterval::Second => Interval::Second,
            PgInterval::YearToMonth => Interval::YearToMonth,
            PgInterval::DayToHour => Interval::DayToHour,
            PgInterval::DayToMinute => Interval::DayToMinute,
            PgInterval::DayToSecond => Interval::DayToSecond,
            PgInterval::HourToMinute => Interval::HourToMinute,
            PgInterval::HourToSecond => Interval::HourToSecond,
            PgInterval::MinuteToSecond => Interval::MinuteToSecond,
            other => return Err(format!("interval fields {other:?} have no serialised form")),
        })
    }

    fn into_pg(self) -> PgInterval {
        match self {
            Interval::Year => PgInterval::Year,
            Interval::Month => PgInterval::Month,
            Interval::Day => PgInterval::Day,
            Interval::Hour => PgInterval::Hour,
            Interval::Minute => PgInterval::Minute,
            Interval::Second => PgInterval::Second,
            Interval::YearToMonth => PgInterval::YearToMonth,
            Interval::DayToHour => PgInterval::DayToHour,
            Interval::DayToMinute => PgInterval::DayToMinute,
            Interval::DayToSecond => PgInterval::DayToSecond,
            Interval::HourToMinute => PgInterval::HourToMinute,
            Interval::HourToSecond => PgInterval::HourToSecond,
            Interval::MinuteToSecond => PgInterval::MinuteToSecond,
        }
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::sea_query::{Alias, ColumnType, IntoIden, PgInterval, RcOrArc, StringLen};
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    use crate::model::change::TableSpec;
    use crate::model::syncable::{ConflictPolicy, Ownership};
    use crate::model::testing::{column, table};

    /// A column type in a field, as `ColumnSpec` holds it.
    #[derive(Debug, Serialize, Deserialize)]
    struct Ty(#[serde(with = "crate::model::column_type")] ColumnType);

    fn iden(s: &str) -> sea_orm::sea_query::DynIden {
        Alias::new(s).into_iden()
    }

    /// Every variant, with every shape of its parameters.
    fn every_type() -> Vec<ColumnType> {
        use ColumnType as C;
        let mut all = vec![
            C::Char(Some(3)),
            C::Char(None),
            C::String(StringLen::N(40)),
            C::String(StringLen::Max),
            C::String(StringLen::None),
            C::Text,
            C::Blob,
            C::TinyInteger,
            C::SmallInteger,
            C::Integer,
            C::BigInteger,
            C::TinyUnsigned,
            C::SmallUnsigned,
            C::Unsigned,
            C::BigUnsigned,
            C::Float,
            C::Double,
            C::Decimal(Some((20, 4))),
            C::Decimal(None),
            C::DateTime,
            C::Timestamp,
            C::TimestampWithTimeZone,
            C::Time,
            C::Date,
            C::Year,
            C::Interval(None, None),
            C::Interval(None, Some(6)),
            C::Binary(16),
            C::VarBinary(StringLen::N(64)),
            C::VarBinary(StringLen::Max),
            C::VarBinary(StringLen::None),
            C::Bit(Some(8)),
            C::Bit(None),
            C::VarBit(8),
            C::Boolean,
            C::Money(Some((19, 2))),
            C::Money(None),
            C::Json,
            C::JsonBinary,
            C::Uuid,
            C::Custom(iden("citext")),
            C::Enum {
                name: iden("mood"),
                variants: vec![iden("happy"), iden("sad")],
            },
            C::Enum {
                name: iden("empty"),
                variants: vec![],
            },
            C::Array(RcOrArc::new(C::Integer)),
            C::Array(RcOrArc::new(C::Array(RcOrArc::new(C::String(
                StringLen::N(5),
            ))))),
            C::Vector(Some(3)),
            C::Vector(None),
            C::Cidr,
            C::Inet,
            C::MacAddr,
            C::LTree,
        ];
        for fields in [
            PgInterval::Year,
            PgInterval::Month,
            PgInterval::Day,
            PgInterval::Hour,
            PgInterval::Minute,
            PgInterval::Second,
            PgInterval::YearToMonth,
            PgInterval::DayToHour,
            PgInterval::DayToMinute,
            PgInterval::DayToSecond,
            PgInterval::HourToMinute,
            PgInterval::HourToSecond,
            PgInterval::MinuteToSecond,
        ] {
            all.push(C::Interval(Some(fields), Some(3)));
        }
        all
    }

    fn to_json(ty: &ColumnType) -> serde_json::Value {
        serde_json::to_value(Ty(ty.clone())).expect("every column type serialises")
    }

    fn from_json(v: serde_json::Value) -> serde_json::Result<ColumnType> {
        serde_json::from_value::<Ty>(v).map(|t| t.0)
    }

    #[test]
    fn every_variant_round_trips() {
        for ty in every_type() {
            let text = serde_json::to_string(&Ty(ty.clone())).expect("serialises");
            let back = serde_json::from_str::<Ty>(&text).expect("reads back").0;
            // `PartialEq` of `ColumnType` compares only the variant for
            // some (`Vector`, `Year`...): the Debug text compares all.
            assert_eq!(back, ty, "{text}");
            assert_eq!(format!("{back:?}"), format!("{ty:?}"), "{text}");
        }
    }

    #[test]
    fn the_form_is_fixed() {
        let cases = [
            (
                ColumnType::String(StringLen::N(40)),
                json!({"string": {"n": 40}}),
            ),
            (ColumnType::String(StringLen::Max), json!({"string": "max"})),
            (ColumnType::Text, json!("text")),
            (ColumnType::BigInteger, json!("big_integer")),
            (
                ColumnType::TimestampWithTimeZone,
                json!("timestamp_with_time_zone"),
            ),
            (
                ColumnType::Decimal(Some((20, 4))),
                json!({"decimal": [20, 4]}),
            ),
            (ColumnType::Decimal(None), json!({"decimal": null})),
            (ColumnType::Char(Some(3)), json!({"char": 3})),
            (
                ColumnType::Interval(Some(PgInterval::DayToSecond), Some(6)),
                json!({"interval": ["day_to_second", 6]}),
            ),
            (ColumnType::Binary(16), json!({"binary": 16})),
            (
                ColumnType::VarBinary(StringLen::None),
                json!({"var_binary": "none"}),
            ),
            (
                ColumnType::Custom(iden("citext")),
                json!({"custom": "citext"}),
            ),
            (
                ColumnType::Enum {
                    name: iden("mood"),
                    variants: vec![iden("happy"), iden("sad")],
                },
                json!({"enum": {"name": "mood", "variants": ["happy", "sad"]}}),
            ),
            (
                ColumnType::Array(RcOrArc::new(ColumnType::Uuid)),
                json!({"array": "uuid"}),
            ),
            (ColumnType::Vector(Some(3)), json!({"vector": 3})),
            (ColumnType::MacAddr, json!("mac_addr")),
            (ColumnType::LTree, json!("ltree")),
        ];
        for (ty, form) in cases {
            assert_eq!(to_json(&ty), form, "{ty:?}");
            assert_eq!(from_json(form).expect("reads"), ty);
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        for bad in [
            json!("varchar"),
            json!({"string": 40}),
            json!({"string": {"n": -1}}),
            json!({"decimal": [20]}),
            json!({"interval": ["fortnight", 1]}),
            json!({"array": {"array": "nope"}}),
            json!({"enum": {"name": "mood"}}),
            json!({"text": null, "blob": null}),
            json!(42),
            json!(null),
        ] {
            assert!(from_json(bad.clone()).is_err(), "{bad} read");
        }
        assert!(serde_json::from_str::<Ty>("{\"string\":").is_err());
    }

    #[test]
    fn a_table_spec_round_trips() {
        let mut spec = table(
            "contacts",
            &["id"],
            vec![
                column("id", ColumnType::Uuid, false),
                column("name", ColumnType::String(StringLen::N(80)), false),
                column("owner_id", ColumnType::BigInteger, false),
                column("balance", ColumnType::Decimal(Some((20, 4))), true),
                column(
                    "tags",
                    ColumnType::Array(RcOrArc::new(ColumnType::Text)),
                    true,
                ),
            ],
        );
        spec.schema = Some("crm".into());
        spec.local_only = vec![column("draft", ColumnType::Text, true)];
        spec.policy = ConflictPolicy::Merge;
        spec.ownership = Ownership::Owner("owner_id".into());

        let text = serde_json::to_string(&spec).expect("serialises");
        let back: TableSpec = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, spec, "{text}");
        assert_eq!(format!("{back:?}"), format!("{spec:?}"));

        // The whole form, fixed: a peer of another version reads this.
        let col = |name: &str, ty: serde_json::Value, nullable: bool| json!({"name": name, "ty": ty, "nullable": nullable});
        let id = col("id", json!("uuid"), false);
        assert_eq!(
            serde_json::to_value(&spec).expect("serialises"),
            json!({
                "name": "contacts",
                "schema": "crm",
                "pk": [id],
                "columns": [
                    id,
                    col("name", json!({"string": {"n": 80}}), false),
                    col("owner_id", json!("big_integer"), false),
                    col("balance", json!({"decimal": [20, 4]}), true),
                    col("tags", json!({"array": "text"}), true),
                ],
                "local_only": [col("draft", json!("text"), true)],
                "policy": "merge",
                "single_writer": false,
                "ownership": {"owner": "owner_id"},
            })
        );
    }

    #[test]
    fn a_table_spec_without_the_optional_fields_reads_with_defaults() {
        let spec: TableSpec = serde_json::from_value(json!({
            "name": "notes",
            "pk": [{"name": "id", "ty": "uuid", "nullable": false}],
            "columns": [
                {"name": "id", "ty": "uuid", "nullable": false},
                {"name": "body", "ty": "text", "nullable": true},
            ],
        }))
        .expect("reads");
        let expected = table(
            "notes",
            &["id"],
            vec![
                column("id", ColumnType::Uuid, false),
                column("body", ColumnType::Text, true),
            ],
        );
        assert_eq!(spec, expected);
        assert_eq!(spec.ownership, Ownership::Undeclared);
    }

    #[test]
    fn policies_and_ownerships_have_readable_names() {
        for p in [
            ConflictPolicy::Lww,
            ConflictPolicy::Merge,
            ConflictPolicy::Manual,
            ConflictPolicy::Custom,
        ] {
            let v = serde_json::to_value(p).expect("serialises");
            assert_eq!(v, json!(p.as_str()));
            assert_eq!(
                serde_json::from_value::<ConflictPolicy>(v).expect("reads"),
                p
            );
        }
        for (o, form) in [
            (Ownership::Undeclared, json!("undeclared")),
            (Ownership::Shared, json!("shared")),
            (
                Ownership::Owner("user_id".to_owned()),
                json!({"owner": "user_id"}),
            ),
        ] {
            assert_eq!(serde_json::to_value(&o).expect("serialises"), form);
            assert_eq!(serde_json::from_value::<Ownership>(form).expect("reads"), o);
        }
        assert!(serde_json::from_value::<ConflictPolicy>(json!("LWW")).is_err());
        assert!(serde_json::from_value::<Ownership>(json!({"owner": 1})).is_err());
    }
}
