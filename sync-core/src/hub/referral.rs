//! Which log entry a hub row state refers to: the state leaves out the
//! values that entry holds, so the log is not repeated in the states (see
//! the store's `StoredState`).

use std::borrow::Cow;
use std::collections::HashMap;

use sea_orm::{DbBackend, Statement};

use super::tables::HUB_ROWS;
use crate::model::change::Change;
use crate::model::clock::Hlc;
use crate::model::error::{Error, Result};
use crate::model::merge::RowState;
use crate::model::value::same_value;
use crate::store::rows::{self, Referral, Referred};

/// A row of the hub: (table, key text).
pub(super) type RowId = (String, String);

/// Decide which log entry each saved state refers to (the one that holds
/// most of its values: the one it referred to, or the last one logged in
/// this push for the row), record it in `referred`, and build the
/// statements that save the states. `keyed` and `logged` are the push's
/// changes with their keys, and as logged from hub sequence `first_seq` on;
/// `before` holds each saved row's state before the merge.
#[allow(clippy::too_many_arguments)]
pub(super) fn state_statements(
    states: &HashMap<RowId, RowState>,
    before: &HashMap<RowId, RowState>,
    referred: &mut HashMap<RowId, Referred>,
    saved: &[(&str, Vec<String>)],
    keyed: &[(&Change, String)],
    logged: &[Cow<'_, Change>],
    first_seq: u64,
    kind: DbBackend,
) -> Result<Vec<Statement>> {
    let mut last_entry: HashMap<(&str, &str), (u64, &Change)> = HashMap::new();
    for (seq, ((_, key), logged)) in (first_seq..).zip(keyed.iter().zip(logged)) {
        last_entry.insert(
            (logged.table.as_str(), key.as_str()),
            (seq, logged.as_ref()),
        );
    }
    let mut out = Vec::new();
    for (table, keys) in saved {
        let table: &str = table;
        let mut rows_of = Vec::with_capacity(keys.len());
        for key in keys {
            let id = (table.to_owned(), key.clone());
            let state = states
                .get(&id)
                .ok_or_else(|| Error::Corrupt("state not loaded".into()))?;
            let fresh = last_entry.get(&(table, key.as_str())).copied();
            let best = choose(state, before.get(&id), referred.get(&id), fresh);
            let names = best.as_ref().map(|(seq, cols)| {
                (
                    *seq,
                    cols.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>(),
                )
            });
            match best {
                Some(r) => referred.insert(id, r),
                None => referred.remove(&id),
            };
            rows_of.push((key, state, names));
        }
        let rows: Vec<_> = rows_of
            .iter()
            .map(|(key, state, names)| {
                let referral = names
                    .as_ref()
                    .map(|(seq, columns)| Referral { seq: *seq, columns });
                (key.as_str(), *state, referral)
            })
            .collect();
        for q in rows::state_statements(HUB_ROWS, table, &rows)? {
            out.push(kind.build(&q));
        }
    }
    Ok(out)
}

/// The entry `state` should refer to: of the one it referred to (`kept`,
/// for the columns that still hold its values) and the last one logged for
/// the row in this push (`fresh`), the one that holds more of its values
/// (the later on a tie); `None` when neither holds any.
///
/// A kept column holds the entry's value if its clock is the entry's and
/// its value is the one it had `before` the merge (taken from the entry):
/// a write stamped alike can replace the value at the same clock (see
/// `RowState::set`).
fn choose(
    state: &RowState,
    before: Option<&RowState>,
    kept: Option<&Referred>,
    fresh: Option<(u64, &Change)>,
) -> Option<Referred> {
    let unchanged = |c: &String| {
        let was = before.and_then(|b| b.vals.get(c));
        was.zip(state.vals.get(c))
            .is_some_and(|(was, now)| same_value(was, now))
    };
    let kept = kept.map(|(seq, cols)| {
        let cols: Vec<(String, Hlc)> = cols
            .iter()
            .filter(|(c, h)| state.clocks.get(c) == Some(h) && unchanged(c))
            .cloned()
            .collect();
        (*seq, cols)
    });
    let fresh = fresh.map(|(seq, c)| (seq, held_values(state, c)));
    [kept, fresh]
        .into_iter()
        .flatten()
        .filter(|(_, cols)| !cols.is_empty())
        .max_by_key(|(seq, cols)| (cols.len(), *seq))
}

/// The columns of `change` whose value and clock `state` holds: what a
/// state referring to the change's log entry can leave out.
fn held_values(state: &RowState, change: &Change) -> Vec<(String, Hlc)> {
    let mut out: Vec<(String, Hlc)> = Vec::new();
    for (c, v) in &change.columns {
        if out.iter().any(|(n, _)| n == c) {
            continue; // a column listed twice: the first value counts
        }
        let held = state.clocks.get(c) == Some(&change.hlc)
            && state.vals.get(c).is_some_and(|s| same_value(s, v));
        if held {
            out.push((c.clone(), change.hlc));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::change::{ChangeId, Op};
    use crate::model::clock::NodeId;
    use crate::model::testing;
    use sea_orm::Value;

    fn hlc(t: u64) -> Hlc {
        testing::hlc(t, 3)
    }

    fn int(v: i32) -> Value {
        Value::Int(Some(v))
    }

    fn change(t: u64, cols: &[(&str, i32)]) -> Change {
        Change {
            id: ChangeId {
                origin: NodeId([3; 16]),
                seq: t,
            },
            table: "t".into(),
            pk: vec![("id".into(), int(1))],
            op: Op::Update,
            columns: cols.iter().map(|(c, v)| (c.to_string(), int(*v))).collect(),
            hlc: hlc(t),
            base: vec![],
        }
    }

    /// A state holding `cols` as (column, value, clock).
    fn state(cols: &[(&str, i32, u64)]) -> RowState {
        let mut s = RowState::default();
        for (c, v, t) in cols {
            s.set(c, &int(*v), hlc(*t));
        }
        s
    }

    fn names(r: &Option<Referred>) -> Option<(u64, Vec<&str>)> {
        r.as_ref()
            .map(|(seq, cols)| (*seq, cols.iter().map(|(c, _)| c.as_str()).collect()))
    }

    #[test]
    fn an_entry_holds_the_columns_whose_value_and_clock_the_state_has() {
        let s = state(&[("a", 1, 5), ("b", 2, 5), ("c", 3, 7)]);
        // `b` was overwritten by a later clock, `c` never set by the entry.
        let c = change(5, &[("a", 1), ("b", 9), ("a", 4)]);
        assert_eq!(held_values(&s, &c), [("a".to_string(), hlc(5))]);
        // Same values at another clock are not the entry's.
        assert!(held_values(&s, &change(6, &[("a", 1)])).is_empty());
    }

    #[test]
    fn the_entry_holding_more_values_wins_and_the_later_on_a_tie() {
        let s = state(&[("a", 1, 5), ("b", 2, 5), ("c", 3, 9)]);
        let kept: Referred = (5, vec![("a".into(), hlc(5)), ("b".into(), hlc(5))]);
        let fresh = change(9, &[("c", 3)]);
        assert_eq!(
            names(&choose(&s, Some(&s), Some(&kept), Some((40, &fresh)))),
            Some((5, vec!["a", "b"]))
        );
        // A column the kept entry held but that changed since no longer counts.
        let s2 = state(&[("a", 1, 5), ("b", 8, 9), ("c", 3, 9)]);
        let fresh2 = change(9, &[("b", 8), ("c", 3)]);
        assert_eq!(
            names(&choose(&s2, Some(&s), Some(&kept), Some((41, &fresh2)))),
            Some((41, vec!["b", "c"]))
        );
        // A tie goes to the later entry.
        let one: Referred = (5, vec![("a".into(), hlc(5))]);
        assert_eq!(
            names(&choose(&s, Some(&s), Some(&one), Some((40, &fresh)))),
            Some((40, vec!["c"]))
        );
    }

    #[test]
    fn a_value_replaced_at_the_same_clock_is_not_the_entrys() {
        // The entry wrote a = 1 at 5; a write stamped alike replaced it
        // with 2 (same clock): the state must hold 2 itself.
        let was = state(&[("a", 1, 5), ("b", 2, 5)]);
        let now = state(&[("a", 2, 5), ("b", 2, 5)]);
        let kept: Referred = (5, vec![("a".into(), hlc(5)), ("b".into(), hlc(5))]);
        assert_eq!(
            names(&choose(&now, Some(&was), Some(&kept), None)),
            Some((5, vec!["b"]))
        );
        // Without the state before, nothing is taken for the entry's.
        assert_eq!(choose(&now, None, Some(&kept), None), None);
    }

    #[test]
    fn no_entry_when_none_holds_a_value() {
        let s = state(&[("a", 1, 5)]);
        let stale: Referred = (3, vec![("a".into(), hlc(3))]);
        assert_eq!(choose(&s, Some(&s), Some(&stale), None), None);
        assert_eq!(
            choose(&s, Some(&s), None, Some((4, &change(4, &[("a", 1)])))),
            None
        );
        assert_eq!(choose(&s, Some(&s), None, None), None);
    }
}
