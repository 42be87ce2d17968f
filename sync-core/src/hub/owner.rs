//! Who owns a row of a table with owners: the text of its owner column,
//! compared with the user an account signs in (see `access`).

use sea_orm::Value;
use sea_orm::sea_query::ColumnType;

use crate::model::change::TableSpec;
use crate::model::merge::RowState;

/// Whether a column of this type can name an owner.
pub(super) fn owner_type(ty: &ColumnType) -> bool {
    matches!(
        ty,
        ColumnType::Char(_)
            | ColumnType::String(_)
            | ColumnType::Text
            | ColumnType::TinyInteger
            | ColumnType::SmallInteger
            | ColumnType::Integer
            | ColumnType::BigInteger
            | ColumnType::TinyUnsigned
            | ColumnType::SmallUnsigned
            | ColumnType::Unsigned
            | ColumnType::BigUnsigned
            | ColumnType::Uuid
    )
}

/// The user an owner column's value names (`None` for NULL or a value
/// that names no user).
pub(super) fn owner_text(v: &Value) -> Option<String> {
    match v {
        Value::String(Some(s)) => Some(s.clone()),
        Value::Char(Some(c)) => Some(c.to_string()),
        Value::TinyInt(Some(n)) => Some(n.to_string()),
        Value::SmallInt(Some(n)) => Some(n.to_string()),
        Value::Int(Some(n)) => Some(n.to_string()),
        Value::BigInt(Some(n)) => Some(n.to_string()),
        Value::TinyUnsigned(Some(n)) => Some(n.to_string()),
        Value::SmallUnsigned(Some(n)) => Some(n.to_string()),
        Value::Unsigned(Some(n)) => Some(n.to_string()),
        Value::BigUnsigned(Some(n)) => Some(n.to_string()),
        Value::Uuid(Some(u)) => Some(u.to_string()),
        _ => None,
    }
}

/// The owner of a row of a table with owners: its owner column in the
/// state, or in the key; empty (nobody's) when it has none.
pub(super) fn owner_of_row(column: &str, pk: &[(String, Value)], state: &RowState) -> String {
    state
        .vals
        .get(column)
        .or_else(|| pk.iter().find(|(n, _)| n == column).map(|(_, v)| v))
        .and_then(owner_text)
        .unwrap_or_default()
}

/// The owner of a row of `spec`'s table as the log records it: `None` for
/// a table without owners.
pub(super) fn owner_of(
    spec: &TableSpec,
    pk: &[(String, Value)],
    state: &RowState,
) -> Option<String> {
    spec.ownership
        .column()
        .map(|column| owner_of_row(column, pk, state))
}
