//! Fixtures for the unit tests of every layer: clocks and table specs.

use sea_orm::sea_query::ColumnType;

use crate::model::change::{ColumnSpec, TableSpec};
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
