//! Fixtures for the unit tests of every layer: clocks, table specs,
//! changes and values.

use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};
use sea_orm::sea_query::{ColumnType, Value};

use crate::model::change::{Change, ChangeId, ColumnSpec, Op, TableSpec};
use crate::model::clock::{Hlc, NodeId};
use crate::model::syncable::ConflictPolicy;

/// A clock at `physical`, logical 0, of the node whose id repeats `node`.
pub(crate) fn hlc(physical: u64, node: u8) -> Hlc {
    Hlc {
        physical,
        logical: 0,
        node: NodeId([node; 16]),
    }
}

/// A column.
pub(crate) fn column(name: &str, ty: ColumnType, nullable: bool) -> ColumnSpec {
    ColumnSpec {
        name: name.into(),
        ty,
        nullable,
        kind: None,
    }
}

/// A last-writer-wins table of `columns` keyed by the columns named `key`.
pub(crate) fn table(name: &str, key: &[&str], columns: Vec<ColumnSpec>) -> TableSpec {
    TableSpec {
        name: name.into(),
        schema: None,
        pk: key
            .iter()
            .map(|k| {
                columns
                    .iter()
                    .find(|c| c.name == *k)
                    .cloned()
                    .unwrap_or_else(|| panic!("no key column {k}"))
            })
            .collect(),
        columns,
        local_only: vec![],
        policy: ConflictPolicy::Lww,
        single_writer: false,
        ownership: Default::default(),
    }
}

/// Column clocks and values: each column of `cols` at its clock (of node
/// 7), every value `Int(1)`.
pub(crate) fn clocked(
    cols: &[(&str, u64)],
) -> (
    std::collections::BTreeMap<String, Hlc>,
    std::collections::BTreeMap<String, sea_orm::Value>,
) {
    let clocks = cols
        .iter()
        .map(|(c, t)| (c.to_string(), hlc(*t, 7)))
        .collect();
    let vals = cols
        .iter()
        .map(|(c, _)| (c.to_string(), sea_orm::Value::Int(Some(1))))
        .collect();
    (clocks, vals)
}

/// An insert of row `seq` by the node whose id repeats 7, at sequence
/// `seq`, whose one column holds a string of `bytes` bytes.
pub(crate) fn sized_change(seq: u64, bytes: usize) -> Change {
    Change {
        id: ChangeId {
            origin: NodeId([7; 16]),
            seq,
        },
        table: "t".into(),
        pk: vec![("id".into(), Value::BigInt(Some(seq as i64)))],
        op: Op::Insert,
        columns: vec![("a".into(), Value::String(Some("x".repeat(bytes))))],
        hlc: Hlc::default(),
        base: Vec::new(),
    }
}

/// A time with a fraction of a second, for [`values`].
pub(crate) fn a_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 5, 1, 2, 3)
        .unwrap()
        .checked_add_signed(chrono::Duration::microseconds(123_456))
        .unwrap()
}

/// A value of every kind a column can hold, NULLs and edge values among
/// them, each of which every stored form must give back as it was.
pub(crate) fn values() -> Vec<Value> {
    let t = a_time();
    vec![
        Value::Bool(Some(true)),
        Value::Bool(Some(false)),
        Value::Bool(None),
        Value::TinyInt(Some(-5)),
        Value::SmallInt(Some(-300)),
        Value::Int(Some(i32::MIN)),
        Value::BigInt(Some(i64::MAX)),
        Value::BigInt(None),
        Value::TinyUnsigned(Some(255)),
        Value::SmallUnsigned(Some(65535)),
        Value::Unsigned(Some(u32::MAX)),
        Value::BigUnsigned(Some(u64::MAX)),
        Value::Float(Some(-0.0)),
        Value::Float(Some(0.1)),
        Value::Double(Some(f64::MIN_POSITIVE)),
        Value::Double(Some(8.227533489012526e-10)),
        Value::Double(Some(-0.0)),
        Value::String(Some(String::new())),
        Value::String(Some("ké🌊\0\"q\"".into())),
        Value::String(None),
        Value::Char(Some('🌊')),
        Value::Bytes(Some(vec![0, 255, 1])),
        Value::Bytes(None),
        Value::Uuid(Some(uuid::Uuid::from_u128(0x0123_4567_89ab_cdef))),
        Value::Uuid(None),
        Value::Decimal(Some("-12345.67890".parse().unwrap())),
        Value::Decimal(Some("1.50".parse().unwrap())),
        Value::ChronoDate(Some(NaiveDate::from_ymd_opt(-44, 3, 15).unwrap())),
        Value::ChronoTime(Some(NaiveTime::from_hms_micro_opt(23, 59, 59, 1).unwrap())),
        Value::ChronoTime(None),
        Value::ChronoDateTime(Some(t.naive_utc())),
        Value::ChronoDateTime(None),
        Value::ChronoDateTimeUtc(Some(t)),
        Value::ChronoDateTimeUtc(None),
        Value::Json(Some(Box::new(
            serde_json::json!({"a": [1, null, 0.1, -0.0]}),
        ))),
        Value::Json(Some(Box::new(serde_json::Value::Null))),
        Value::Json(None),
    ]
}
