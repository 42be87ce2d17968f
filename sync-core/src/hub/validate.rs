//! Checking a pushed change against the hub before applying it: the table
//! and its columns must be known, the key must match, every value must fit
//! the hub's dialect, and an insert must set every NOT NULL column.

use crate::dialect::{Dialect, check_value};
use sea_orm::Value;

use crate::model::change::{Change, Op, TableSpec};
use crate::model::value::same_value;

/// Why `change` cannot be applied to the hub's `spec` (`None`: the table is
/// unknown) on the dialect `d`, if it cannot.
pub(crate) fn validate(
    change: &Change,
    spec: Option<&TableSpec>,
    d: &dyn Dialect,
) -> Result<(), String> {
    let Some(spec) = spec else {
        return Err(format!("table `{}` is not known to the hub", change.table));
    };
    let names: Vec<&str> = change.pk.iter().map(|(n, _)| n.as_str()).collect();
    let want: Vec<&str> = spec.pk.iter().map(|c| c.name.as_str()).collect();
    if names != want {
        return Err(format!(
            "{}: key columns {names:?} do not match the hub's {want:?}",
            spec.name
        ));
    }
    if let Some(dup) = twice(&change.columns) {
        return Err(format!("{}.{dup}: the column is set twice", spec.name));
    }
    for (name, key) in &change.pk {
        if let Some((_, v)) = change.columns.iter().find(|(n, _)| n == name)
            && !same_value(v, key)
        {
            return Err(format!(
                "{}.{name}: the change sets the key column to another value than its key",
                spec.name
            ));
        }
    }
    for (name, value) in change.pk.iter().chain(&change.columns) {
        if let Value::Json(Some(j)) = value
            && depth(j) > MAX_JSON_DEPTH
        {
            return Err(format!(
                "{}.{name}: JSON nested deeper than {MAX_JSON_DEPTH} levels",
                spec.name
            ));
        }
        let Some(col) = spec.column(name) else {
            return Err(format!(
                "{}.{name}: no such column on the hub (schema drift?)",
                spec.name
            ));
        };
        check_value(&spec.name, name, Some(&col.ty), value, Some(d)).map_err(|e| e.to_string())?;
    }
    let missing = spec
        .columns
        .iter()
        .find(|c| !c.nullable && !change.columns.iter().any(|(n, _)| *n == c.name));
    if let (Op::Insert, Some(c)) = (change.op, missing) {
        return Err(format!(
            "{}.{}: insert without a value for a NOT NULL column",
            spec.name, c.name
        ));
    }
    Ok(())
}

/// How deep a JSON value may nest: a change, a pulled page and a snapshot
/// page wrap it in a few more levels, and JSON readers stop at 128.
pub(crate) const MAX_JSON_DEPTH: usize = 64;

/// How deep `v` nests (a scalar is 1).
fn depth(v: &serde_json::Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 1)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            serde_json::Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            serde_json::Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    max
}

/// Why `change` is refused for its clock, if it is stamped more than
/// `max_skew_us` ahead of the hub's clock `now_us` (both in microseconds
/// since the epoch): its device's clock is wrong, and every device that
/// merged it would carry that time on for ever.
pub(crate) fn check_clock(change: &Change, now_us: u64, max_skew_us: u64) -> Result<(), String> {
    let ahead = change.hlc.physical.saturating_sub(now_us);
    if ahead <= max_skew_us {
        return Ok(());
    }
    Err(format!(
        "{}: change {} is stamped {} s ahead of the hub's clock (at most {} s allowed): \
         the clock of device {} is wrong; the change stays queued on the device until it is fixed",
        change.table,
        change.id,
        ahead / 1_000_000,
        max_skew_us / 1_000_000,
        change.id.origin
    ))
}

/// The first column named twice in `columns`, if any. A change sets a few
/// columns: compared pairwise up to a table's usual width (no hashing per
/// change), through a set beyond.
fn twice(columns: &[(String, Value)]) -> Option<&str> {
    if columns.len() <= 32 {
        return columns
            .iter()
            .enumerate()
            .find(|(i, (n, _))| columns[..*i].iter().any(|(m, _)| m == n))
            .map(|(_, (n, _))| n.as_str());
    }
    let mut seen = std::collections::HashSet::new();
    columns
        .iter()
        .find(|(n, _)| !seen.insert(n.as_str()))
        .map(|(n, _)| n.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect;
    use crate::model::change::ChangeId;
    use crate::model::clock::{Hlc, NodeId};
    use crate::model::testing::{column, table};

    use sea_orm::DbBackend;
    use sea_orm::sea_query::{ColumnType, Value};

    fn d(kind: DbBackend) -> &'static dyn Dialect {
        dialect::of(kind).unwrap()
    }

    fn spec() -> TableSpec {
        let columns = vec![
            column("id", ColumnType::BigUnsigned, false),
            column("name", ColumnType::Text, false),
            column("score", ColumnType::Double, true),
        ];
        table("contacts", &["id"], columns)
    }

    fn change(op: Op, id: u64, columns: &[(&str, Value)]) -> Change {
        Change {
            id: ChangeId {
                origin: NodeId([1; 16]),
                seq: 1,
            },
            table: "contacts".into(),
            pk: vec![("id".into(), Value::BigUnsigned(Some(id)))],
            op,
            columns: columns
                .iter()
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect(),
            hlc: Hlc::default(),
            base: vec![],
        }
    }

    fn name(s: &str) -> (&'static str, Value) {
        ("name", Value::String(Some(s.into())))
    }

    #[test]
    fn a_column_set_twice_is_refused_however_wide_the_change() {
        let c = change(
            Op::Update,
            1,
            &[name("a"), ("score", Value::Double(Some(1.0))), name("b")],
        );
        assert_eq!(
            validate(&c, Some(&spec()), d(DbBackend::Sqlite)),
            Err("contacts.name: the column is set twice".into())
        );
        // The first column named again is the one named, whether the
        // change is compared pairwise (up to 32 columns) or through a set.
        for width in [20, 29, 30, 31, 32, 33, 40] {
            let mut cols: Vec<(String, Value)> = (0..width)
                .map(|i| (format!("c{i}"), Value::Int(Some(i))))
                .collect();
            assert_eq!(twice(&cols), None, "{width} distinct columns");
            cols.push(("c3".into(), Value::Int(None)));
            cols.push(("c1".into(), Value::Int(None)));
            assert_eq!(twice(&cols), Some("c3"), "{width} columns, then c3 again");
        }
    }

    #[test]
    fn a_change_that_fits_passes() {
        let c = change(
            Op::Insert,
            1,
            &[("id", Value::BigUnsigned(Some(1))), name("a")],
        );
        for kind in [DbBackend::Postgres, DbBackend::MySql, DbBackend::Sqlite] {
            assert_eq!(validate(&c, Some(&spec()), d(kind)), Ok(()));
        }
        // An update sets only what changed; deletes set nothing.
        assert_eq!(
            validate(
                &change(Op::Update, 1, &[name("b")]),
                Some(&spec()),
                d(DbBackend::Sqlite)
            ),
            Ok(())
        );
        assert_eq!(
            validate(
                &change(Op::Delete, 1, &[]),
                Some(&spec()),
                d(DbBackend::Sqlite)
            ),
            Ok(())
        );
    }

    /// JSON nested `levels` deep: arrays around a number.
    fn nested(levels: usize) -> serde_json::Value {
        (1..levels).fold(serde_json::json!(1), |v, _| serde_json::json!([v]))
    }

    #[test]
    fn json_nested_up_to_the_limit_passes_and_deeper_is_refused() {
        let mut spec = spec();
        spec.columns.push(column("doc", ColumnType::Json, true));
        let with = |levels: usize| {
            let doc = Value::Json(Some(Box::new(nested(levels))));
            change(Op::Update, 1, &[("doc", doc)])
        };
        assert_eq!(depth(&nested(MAX_JSON_DEPTH)), MAX_JSON_DEPTH);
        let sqlite = d(DbBackend::Sqlite);
        assert_eq!(validate(&with(MAX_JSON_DEPTH), Some(&spec), sqlite), Ok(()));
        assert_eq!(validate(&with(2), Some(&spec), sqlite), Ok(()));
        assert_eq!(
            validate(&with(MAX_JSON_DEPTH + 1), Some(&spec), sqlite),
            Err(format!(
                "contacts.doc: JSON nested deeper than {MAX_JSON_DEPTH} levels"
            ))
        );
    }

    #[test]
    fn an_unknown_table_is_refused_by_name() {
        let c = change(Op::Delete, 1, &[]);
        assert_eq!(
            validate(&c, None, d(DbBackend::Sqlite)),
            Err("table `contacts` is not known to the hub".into())
        );
    }

    #[test]
    fn key_columns_must_match_the_hubs() {
        let mut c = change(Op::Delete, 1, &[]);
        c.pk = vec![("uid".into(), Value::BigUnsigned(Some(1)))];
        assert_eq!(
            validate(&c, Some(&spec()), d(DbBackend::Sqlite)),
            Err(r#"contacts: key columns ["uid"] do not match the hub's ["id"]"#.into())
        );
        c.pk.clear();
        assert!(validate(&c, Some(&spec()), d(DbBackend::Sqlite)).is_err());
    }

    #[test]
    fn an_unknown_column_is_schema_drift() {
        let c = change(
            Op::Update,
            1,
            &[("nickname", Value::String(Some("x".into())))],
        );
        assert_eq!(
            validate(&c, Some(&spec()), d(DbBackend::Sqlite)),
            Err("contacts.nickname: no such column on the hub (schema drift?)".into())
        );
    }

    #[test]
    fn values_are_checked_against_the_hubs_dialect() {
        let nan = change(Op::Update, 1, &[("score", Value::Double(Some(f64::NAN)))]);
        let e = validate(&nan, Some(&spec()), d(DbBackend::MySql)).unwrap_err();
        assert!(e.starts_with("contacts.score: cannot store NaN"), "{e}");
        // A key above i64::MAX fits MySQL's unsigned integers only.
        let big = change(Op::Delete, u64::MAX, &[]);
        assert!(validate(&big, Some(&spec()), d(DbBackend::MySql)).is_ok());
        for kind in [DbBackend::Postgres, DbBackend::Sqlite] {
            let e = validate(&big, Some(&spec()), d(kind)).unwrap_err();
            assert!(
                e.starts_with("contacts.id: cannot store 18446744073709551615"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_change_stamped_ahead_of_the_hub_is_refused_by_its_clock() {
        let mut c = change(Op::Delete, 1, &[]);
        c.hlc.physical = 1_000_000_000 + 300_000_000;
        let now = 1_000_000_000;
        assert_eq!(check_clock(&c, now, 300_000_000), Ok(()));
        let e = check_clock(&c, now - 1, 300_000_000).unwrap_err();
        assert!(
            e.contains("is stamped 300 s ahead of the hub's clock (at most 300 s allowed)"),
            "{e}"
        );
        assert!(
            e.contains(&format!("the clock of device {} is wrong", c.id.origin)),
            "{e}"
        );
        assert!(e.starts_with("contacts: change "), "{e}");
        // Behind the hub is never refused (devices come back after months).
        c.hlc.physical = 1;
        assert_eq!(check_clock(&c, now, 0), Ok(()));
    }

    #[test]
    fn an_insert_must_set_every_not_null_column() {
        let c = change(Op::Insert, 1, &[("id", Value::BigUnsigned(Some(1)))]);
        assert_eq!(
            validate(&c, Some(&spec()), d(DbBackend::Postgres)),
            Err("contacts.name: insert without a value for a NOT NULL column".into())
        );
        // A nullable column may be left out.
        let c = change(
            Op::Insert,
            1,
            &[("id", Value::BigUnsigned(Some(1))), name("a")],
        );
        assert!(validate(&c, Some(&spec()), d(DbBackend::Postgres)).is_ok());
    }
}
