//! A column's *value kind*: which sea-query `Value` variant the entity's
//! field holds ([`ArrayType`], as SeaORM's `ModelTrait::get_value_type`
//! gives it), and its serde form as a `ColumnSpec` travels.
//!
//! A column type alone does not say which variant a value read from the
//! database is: a `timestamp with time zone` is a `DateTime<Utc>` in one
//! entity and a `DateTime<FixedOffset>` in another, a `decimal` may be a
//! `Decimal` or an integer type. Values travel with their variant, and
//! two values of different variants are different values. So whoever reads
//! a synced table without the entity compiled in (a version table's key,
//! and, in the next storage format, a hub reading its users' tables) reads
//! each column as its kind.
//!
//! # Wire format
//!
//! Like the column type's, **variants may be added, never renamed**: the
//! variant's name in snake_case (`"int"`, `"big_int"`, `"string"`,
//! `"chrono_date_time_utc"`, `"decimal"`), and `{"enum":"<type name>"}`
//! for a PostgreSQL enum. A kind this release has no form for (a variant
//! of a feature tidesync does not enable, such as the `time` crate's) is
//! written `null`; a form this release does not know (a later release's)
//! reads as none. A column without a kind is read as its column type's
//! usual kind ([`default_kind`]).

use sea_orm::sea_query::{ArrayType, ColumnType};
use sea_orm::{QueryResult, Value};
use serde::de::{Deserializer, IgnoredAny};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// The kinds with a wire form, variant for variant.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Wire {
    Bool,
    TinyInt,
    SmallInt,
    Int,
    BigInt,
    TinyUnsigned,
    SmallUnsigned,
    Unsigned,
    BigUnsigned,
    Float,
    Double,
    String,
    Char,
    Bytes,
    Json,
    ChronoDate,
    ChronoTime,
    ChronoDateTime,
    ChronoDateTimeUtc,
    ChronoDateTimeLocal,
    ChronoDateTimeWithTimeZone,
    Uuid,
    Decimal,
    Enum(String),
}

impl Wire {
    fn of(kind: &ArrayType) -> Option<Wire> {
        Some(match kind {
            ArrayType::Bool => Wire::Bool,
            ArrayType::TinyInt => Wire::TinyInt,
            ArrayType::SmallInt => Wire::SmallInt,
            ArrayType::Int => Wire::Int,
            ArrayType::BigInt => Wire::BigInt,
            ArrayType::TinyUnsigned => Wire::TinyUnsigned,
            ArrayType::SmallUnsigned => Wire::SmallUnsigned,
            ArrayType::Unsigned => Wire::Unsigned,
            ArrayType::BigUnsigned => Wire::BigUnsigned,
            ArrayType::Float => Wire::Float,
            ArrayType::Double => Wire::Double,
            ArrayType::String => Wire::String,
            ArrayType::Char => Wire::Char,
            ArrayType::Bytes => Wire::Bytes,
            ArrayType::Json => Wire::Json,
            ArrayType::ChronoDate => Wire::ChronoDate,
            ArrayType::ChronoTime => Wire::ChronoTime,
            ArrayType::ChronoDateTime => Wire::ChronoDateTime,
            ArrayType::ChronoDateTimeUtc => Wire::ChronoDateTimeUtc,
            ArrayType::ChronoDateTimeLocal => Wire::ChronoDateTimeLocal,
            ArrayType::ChronoDateTimeWithTimeZone => Wire::ChronoDateTimeWithTimeZone,
            ArrayType::Uuid => Wire::Uuid,
            ArrayType::Decimal => Wire::Decimal,
            #[cfg(feature = "postgres")]
            ArrayType::Enum(name) => Wire::Enum(name.to_string()),
            // Variants of features tidesync does not enable (the `time`
            // crate, BigDecimal, network types), and enums in a build
            // without PostgreSQL.
            #[allow(unreachable_patterns)]
            _ => return None,
        })
    }

    fn kind(self) -> Option<ArrayType> {
        Some(match self {
            Wire::Bool => ArrayType::Bool,
            Wire::TinyInt => ArrayType::TinyInt,
            Wire::SmallInt => ArrayType::SmallInt,
            Wire::Int => ArrayType::Int,
            Wire::BigInt => ArrayType::BigInt,
            Wire::TinyUnsigned => ArrayType::TinyUnsigned,
            Wire::SmallUnsigned => ArrayType::SmallUnsigned,
            Wire::Unsigned => ArrayType::Unsigned,
            Wire::BigUnsigned => ArrayType::BigUnsigned,
            Wire::Float => ArrayType::Float,
            Wire::Double => ArrayType::Double,
            Wire::String => ArrayType::String,
            Wire::Char => ArrayType::Char,
            Wire::Bytes => ArrayType::Bytes,
            Wire::Json => ArrayType::Json,
            Wire::ChronoDate => ArrayType::ChronoDate,
            Wire::ChronoTime => ArrayType::ChronoTime,
            Wire::ChronoDateTime => ArrayType::ChronoDateTime,
            Wire::ChronoDateTimeUtc => ArrayType::ChronoDateTimeUtc,
            Wire::ChronoDateTimeLocal => ArrayType::ChronoDateTimeLocal,
            Wire::ChronoDateTimeWithTimeZone => ArrayType::ChronoDateTimeWithTimeZone,
            Wire::Uuid => ArrayType::Uuid,
            Wire::Decimal => ArrayType::Decimal,
            #[cfg(feature = "postgres")]
            Wire::Enum(name) => ArrayType::Enum(Box::new(name.as_str().into())),
            #[cfg(not(feature = "postgres"))]
            Wire::Enum(_) => return None,
        })
    }
}

/// Serialise a kind in the wire form (`null` for none, or one without a
/// form).
pub(crate) fn serialize<S: Serializer>(kind: &Option<ArrayType>, s: S) -> Result<S::Ok, S::Error> {
    kind.as_ref().and_then(Wire::of).serialize(s)
}

/// Read a kind in the wire form; a form this release does not know reads
/// as none.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ArrayType>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Maybe {
        Known(Option<Wire>),
        Unknown(IgnoredAny),
    }
    Ok(match Maybe::deserialize(d)? {
        Maybe::Known(w) => w.and_then(Wire::kind),
        Maybe::Unknown(_) => None,
    })
}

/// The kind a column of type `ty` usually holds (the field type SeaORM's
/// code generator picks for it), for a column whose spec names none: a
/// spec from a release before kinds, or a kind without a form. `None` for
/// a type with no usual kind (arrays, network types, custom types).
pub(crate) fn default_kind(ty: &ColumnType) -> Option<ArrayType> {
    Some(match ty {
        ColumnType::Char(_) | ColumnType::String(_) | ColumnType::Text => ArrayType::String,
        ColumnType::TinyInteger => ArrayType::TinyInt,
        ColumnType::SmallInteger => ArrayType::SmallInt,
        ColumnType::Integer => ArrayType::Int,
        ColumnType::BigInteger => ArrayType::BigInt,
        ColumnType::TinyUnsigned => ArrayType::TinyUnsigned,
        ColumnType::SmallUnsigned => ArrayType::SmallUnsigned,
        ColumnType::Unsigned => ArrayType::Unsigned,
        ColumnType::BigUnsigned => ArrayType::BigUnsigned,
        ColumnType::Float => ArrayType::Float,
        ColumnType::Double => ArrayType::Double,
        ColumnType::Decimal(_) | ColumnType::Money(_) => ArrayType::Decimal,
        ColumnType::DateTime | ColumnType::Timestamp => ArrayType::ChronoDateTime,
        ColumnType::TimestampWithTimeZone => ArrayType::ChronoDateTimeWithTimeZone,
        ColumnType::Time => ArrayType::ChronoTime,
        ColumnType::Date => ArrayType::ChronoDate,
        ColumnType::Year => ArrayType::Int,
        ColumnType::Binary(_) | ColumnType::VarBinary(_) | ColumnType::Blob => ArrayType::Bytes,
        ColumnType::Boolean => ArrayType::Bool,
        ColumnType::Json | ColumnType::JsonBinary => ArrayType::Json,
        ColumnType::Uuid => ArrayType::Uuid,
        #[cfg(feature = "postgres")]
        ColumnType::Enum { name, .. } => {
            ArrayType::Enum(Box::new(name.to_string().as_str().into()))
        }
        #[cfg(not(feature = "postgres"))]
        ColumnType::Enum { .. } => ArrayType::String,
        _ => return None,
    })
}

/// The kind a column named `name` of type `ty` is read as: `kind`, else
/// the type's usual one. (Of a `ColumnSpec`, named, not linked: `change`
/// uses this module, so this one does not use it.)
///
/// # Errors
/// [`Error::Config`] for a column with neither (an array, a network
/// type, a custom type, from a spec of a release before kinds).
pub(crate) fn kind_of(name: &str, ty: &ColumnType, kind: Option<&ArrayType>) -> Result<ArrayType> {
    kind.cloned().or_else(|| default_kind(ty)).ok_or_else(|| {
        Error::Config(format!(
            "column `{name}` of type {ty:?}: no value kind is known to read it by"
        ))
    })
}

/// The integer in column `col` of `r` as `T`, or where the driver cannot
/// read it so (PostgreSQL has neither unsigned nor one-byte integers: the
/// column is a wider signed one) as the signed integer the column holds,
/// converted.
fn integer<T>(r: &QueryResult, col: &str) -> Result<Option<T>>
where
    T: sea_orm::TryGetable + TryFrom<i64>,
{
    let first = match r.try_get::<Option<T>>("", col) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let wide = r
        .try_get::<Option<i16>>("", col)
        .map(|v| v.map(i64::from))
        .or_else(|_| r.try_get::<Option<i32>>("", col).map(|v| v.map(i64::from)))
        .or_else(|_| r.try_get::<Option<i64>>("", col));
    match wide {
        Err(_) => Err(first.into()),
        Ok(None) => Ok(None),
        Ok(Some(n)) => T::try_from(n).map(Some).map_err(|_| {
            Error::Corrupt(format!(
                "column `{col}` holds {n}, out of the range of its field's type"
            ))
        }),
    }
}

/// The value of column `col` in `r`, as `kind`.
pub(crate) fn read_as(r: &QueryResult, col: &str, kind: &ArrayType) -> Result<Value> {
    Ok(match kind {
        ArrayType::Bool => Value::Bool(r.try_get("", col)?),
        ArrayType::TinyInt => Value::TinyInt(integer(r, col)?),
        ArrayType::SmallInt => Value::SmallInt(r.try_get("", col)?),
        ArrayType::Int => Value::Int(r.try_get("", col)?),
        ArrayType::BigInt => Value::BigInt(r.try_get("", col)?),
        ArrayType::TinyUnsigned => Value::TinyUnsigned(integer(r, col)?),
        ArrayType::SmallUnsigned => Value::SmallUnsigned(integer(r, col)?),
        ArrayType::Unsigned => Value::Unsigned(integer(r, col)?),
        ArrayType::BigUnsigned => Value::BigUnsigned(integer(r, col)?),
        ArrayType::Float => Value::Float(r.try_get("", col)?),
        ArrayType::Double => Value::Double(r.try_get("", col)?),
        ArrayType::String => Value::String(r.try_get("", col)?),
        ArrayType::Char => {
            let s: Option<String> = r.try_get("", col)?;
            Value::Char(match s {
                None => None,
                Some(s) => {
                    let mut chars = s.chars();
                    match (chars.next(), chars.next()) {
                        (Some(ch), None) => Some(ch),
                        _ => {
                            return Err(Error::Corrupt(format!(
                                "column `{col}` holds `{s}`, not one character"
                            )));
                        }
                    }
                }
            })
        }
        ArrayType::Bytes => Value::Bytes(r.try_get("", col)?),
        ArrayType::Json => Value::Json(
            r.try_get::<Option<serde_json::Value>>("", col)?
                .map(Box::new),
        ),
        ArrayType::ChronoDate => Value::ChronoDate(r.try_get("", col)?),
        ArrayType::ChronoTime => Value::ChronoTime(r.try_get("", col)?),
        ArrayType::ChronoDateTime => Value::ChronoDateTime(r.try_get("", col)?),
        ArrayType::ChronoDateTimeUtc => Value::ChronoDateTimeUtc(r.try_get("", col)?),
        ArrayType::ChronoDateTimeLocal => Value::ChronoDateTimeLocal(r.try_get("", col)?),
        ArrayType::ChronoDateTimeWithTimeZone => {
            Value::ChronoDateTimeWithTimeZone(r.try_get("", col)?)
        }
        ArrayType::Uuid => Value::Uuid(r.try_get("", col)?),
        ArrayType::Decimal => Value::Decimal(r.try_get("", col)?),
        #[cfg(feature = "postgres")]
        ArrayType::Enum(name) => {
            let type_name = name.as_ref().clone();
            match r.try_get::<Option<String>>("", col)? {
                Some(value) => Value::Enum(sea_orm::sea_query::OptionEnum::Some(Box::new(
                    sea_orm::sea_query::Enum {
                        type_name,
                        value: value.into(),
                    },
                ))),
                None => Value::Enum(sea_orm::sea_query::OptionEnum::None(type_name)),
            }
        }
        #[allow(unreachable_patterns)]
        other => {
            return Err(Error::Config(format!(
                "column `{col}`: values of kind {other:?} cannot be read without the entity"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Holder {
        #[serde(with = "super", default)]
        kind: Option<ArrayType>,
    }

    fn wire(kind: Option<ArrayType>) -> serde_json::Value {
        serde_json::to_value(Holder { kind }).unwrap()["kind"].clone()
    }

    fn read(v: serde_json::Value) -> Option<ArrayType> {
        serde_json::from_value::<Holder>(json!({ "kind": v }))
            .unwrap()
            .kind
    }

    #[test]
    fn kinds_have_a_fixed_wire_form() {
        let pinned = [
            (ArrayType::Bool, "bool"),
            (ArrayType::TinyInt, "tiny_int"),
            (ArrayType::SmallInt, "small_int"),
            (ArrayType::Int, "int"),
            (ArrayType::BigInt, "big_int"),
            (ArrayType::TinyUnsigned, "tiny_unsigned"),
            (ArrayType::SmallUnsigned, "small_unsigned"),
            (ArrayType::Unsigned, "unsigned"),
            (ArrayType::BigUnsigned, "big_unsigned"),
            (ArrayType::Float, "float"),
            (ArrayType::Double, "double"),
            (ArrayType::String, "string"),
            (ArrayType::Char, "char"),
            (ArrayType::Bytes, "bytes"),
            (ArrayType::Json, "json"),
            (ArrayType::ChronoDate, "chrono_date"),
            (ArrayType::ChronoTime, "chrono_time"),
            (ArrayType::ChronoDateTime, "chrono_date_time"),
            (ArrayType::ChronoDateTimeUtc, "chrono_date_time_utc"),
            (ArrayType::ChronoDateTimeLocal, "chrono_date_time_local"),
            (
                ArrayType::ChronoDateTimeWithTimeZone,
                "chrono_date_time_with_time_zone",
            ),
            (ArrayType::Uuid, "uuid"),
            (ArrayType::Decimal, "decimal"),
        ];
        for (kind, text) in pinned {
            assert_eq!(wire(Some(kind.clone())), json!(text), "{kind:?}");
            assert_eq!(read(json!(text)), Some(kind));
        }
        assert_eq!(wire(None), json!(null));
        assert_eq!(read(json!(null)), None);
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn an_enum_kind_carries_its_type_name() {
        let kind = ArrayType::Enum(Box::new("mood".into()));
        assert_eq!(wire(Some(kind.clone())), json!({ "enum": "mood" }));
        assert_eq!(read(json!({ "enum": "mood" })), Some(kind));
    }

    #[test]
    fn a_form_of_a_later_release_reads_as_none() {
        assert_eq!(read(json!("time_date_time")), None);
        assert_eq!(read(json!({ "range": ["int"] })), None);
        assert_eq!(read(json!(7)), None);
        // A spec without the field at all.
        assert_eq!(
            serde_json::from_value::<Holder>(json!({})).unwrap().kind,
            None
        );
    }

    #[test]
    fn default_kinds_are_those_of_seaorms_generated_fields() {
        use sea_orm::sea_query::StringLen;
        assert_eq!(default_kind(&ColumnType::Text), Some(ArrayType::String));
        assert_eq!(
            default_kind(&ColumnType::String(StringLen::N(40))),
            Some(ArrayType::String)
        );
        assert_eq!(default_kind(&ColumnType::Integer), Some(ArrayType::Int));
        assert_eq!(
            default_kind(&ColumnType::BigInteger),
            Some(ArrayType::BigInt)
        );
        assert_eq!(
            default_kind(&ColumnType::TimestampWithTimeZone),
            Some(ArrayType::ChronoDateTimeWithTimeZone)
        );
        assert_eq!(default_kind(&ColumnType::Uuid), Some(ArrayType::Uuid));
        assert_eq!(default_kind(&ColumnType::Cidr), None);
    }
}
