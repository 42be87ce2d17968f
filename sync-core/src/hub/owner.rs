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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::syncable::Ownership;
    use crate::model::testing::{column, hlc, table};

    #[test]
    fn owners_are_the_text_of_their_value() {
        let id = uuid::Uuid::from_u128(0x1234);
        for (v, text) in [
            (
                Value::String(Some("alice".into())),
                Some("alice".to_owned()),
            ),
            (Value::Int(Some(42)), Some("42".to_owned())),
            (Value::BigUnsigned(Some(7)), Some("7".to_owned())),
            (Value::Uuid(Some(id)), Some(id.to_string())),
            (Value::String(None), None),
            (Value::Double(Some(1.0)), None),
        ] {
            assert_eq!(owner_text(&v), text, "{v:?}");
        }
        assert!(owner_type(&ColumnType::Uuid) && owner_type(&ColumnType::BigInteger));
        assert!(!owner_type(&ColumnType::Double) && !owner_type(&ColumnType::Json));
    }

    #[test]
    fn a_rows_owner_comes_from_its_state_or_key_and_is_nobody_without_one() {
        let mut spec = table(
            "notes",
            &["owner", "id"],
            vec![
                column("owner", ColumnType::Text, false),
                column("id", ColumnType::Integer, false),
                column("body", ColumnType::Text, true),
            ],
        );
        let pk = vec![
            ("owner".to_owned(), Value::String(Some("bob".into()))),
            ("id".to_owned(), Value::Int(Some(1))),
        ];
        let mut state = RowState::default();
        // Not a table with owners: no owner at all.
        assert_eq!(owner_of(&spec, &pk, &state), None);
        spec.ownership = Ownership::Owner("owner".into());
        // From the key when the state has no value of it.
        assert_eq!(owner_of(&spec, &pk, &state).as_deref(), Some("bob"));
        state.set("owner", &Value::String(Some("carol".into())), hlc(1, 1));
        assert_eq!(owner_of(&spec, &pk, &state).as_deref(), Some("carol"));
        // A NULL owner is nobody's (never a user's: users are not empty).
        state.set("owner", &Value::String(None), hlc(2, 1));
        assert_eq!(owner_of(&spec, &pk, &state).as_deref(), Some(""));
        assert_eq!(
            owner_of(&spec, &[], &RowState::default()).as_deref(),
            Some("")
        );
    }
}
