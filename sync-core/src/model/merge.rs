//! The replicated state of one row and its merge rule: per-column
//! last-writer-wins on the hybrid logical clock, with deletes as a clock of
//! their own. Pure code, no I/O.
//!
//! A row's state is, for every synced column, the value with the greatest
//! clock seen so far, plus the greatest delete clock. The row is live when
//! some column's clock is greater than the delete clock: **a delete wins
//! unless an update of the row is later**, and an update later than a delete
//! brings the row back with the last known values of the columns it did not
//! set. Merging takes the maximum clock per column and for the delete, which
//! is commutative, associative and idempotent, so every replica that has seen
//! the same changes holds the same rows, whatever the order of arrival.

use std::collections::BTreeMap;

use sea_orm::sea_query::Value;
use serde::{Deserialize, Serialize};

use crate::model::change::{Change, Op};
use crate::model::clock::Hlc;
use crate::model::value::{same_value, tie_text};

/// Whether `value` wins over `held`, the column's value at the same clock:
/// another value with a greater [`tie_text`] (its typed encoding in one
/// form: a value read back from a database in another form settles the
/// tie alike). A state with the clock but not the value (none is made so)
/// keeps what it has.
fn wins_tie(value: &Value, held: Option<&Value>) -> bool {
    let Some(held) = held else {
        return false;
    };
    !same_value(value, held)
        && match (tie_text(value), tie_text(held)) {
            (Ok(v), Ok(h)) => v > h,
            _ => false,
        }
}

/// Replicated state of one row.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RowState {
    /// The winning value of each column.
    #[serde(with = "crate::model::typed::owned_map")]
    pub vals: BTreeMap<String, Value>,
    /// The clock of each column's winning value.
    pub clocks: BTreeMap<String, Hlc>,
    /// The latest delete of the row, if any.
    pub deleted_at: Option<Hlc>,
}

impl RowState {
    /// Whether the row exists: some column was written after the last delete.
    pub fn is_live(&self) -> bool {
        match self.deleted_at {
            None => !self.clocks.is_empty(),
            Some(d) => self.clocks.values().any(|c| *c > d),
        }
    }

    /// The greatest clock in the state.
    pub fn max_clock(&self) -> Option<Hlc> {
        self.clocks.values().copied().chain(self.deleted_at).max()
    }

    /// Merge one column write. Returns whether the state changed.
    ///
    /// The later clock wins. Two writes stamped alike with different
    /// values (two copies of one device's database, each going on from
    /// the same clock, can stamp alike) are settled by the values: the one
    /// with the greater typed encoding wins, on every replica and hub,
    /// whatever the order they arrive in.
    pub fn set(&mut self, column: &str, value: &Value, hlc: Hlc) -> bool {
        match self.clocks.get(column) {
            Some(c) if *c > hlc => false,
            Some(c) if *c == hlc && !wins_tie(value, self.vals.get(column)) => false,
            _ => {
                self.clocks.insert(column.to_owned(), hlc);
                self.vals.insert(column.to_owned(), value.clone());
                true
            }
        }
    }

    /// Merge a delete. Returns whether the state changed.
    pub fn delete(&mut self, hlc: Hlc) -> bool {
        if self.deleted_at.is_some_and(|d| d >= hlc) {
            return false;
        }
        self.deleted_at = Some(hlc);
        true
    }

    /// Merge a change. Returns whether the state changed.
    pub fn apply(&mut self, change: &Change) -> bool {
        match change.op {
            Op::Delete => self.delete(change.hlc),
            Op::Insert | Op::Update => {
                let mut changed = false;
                for (c, v) in &change.columns {
                    changed |= self.set(c, v, change.hlc);
                }
                changed
            }
        }
    }

    /// The state of a row that only `change` wrote: what [`RowState::apply`]
    /// makes of an empty state, without copying the values.
    pub fn of_change(change: Change) -> RowState {
        let mut s = RowState::default();
        match change.op {
            Op::Delete => s.deleted_at = Some(change.hlc),
            Op::Insert | Op::Update => {
                for (c, v) in change.columns {
                    // A column listed twice keeps its first value, as in
                    // `apply` (same clock).
                    if !s.vals.contains_key(&c) {
                        s.clocks.insert(c.clone(), change.hlc);
                        s.vals.insert(c, v);
                    }
                }
            }
        }
        s
    }

    /// Merge another replica's state of the same row (the join of the two).
    /// Returns whether this state changed.
    pub fn merge(&mut self, other: &RowState) -> bool {
        let mut changed = false;
        for (c, h) in &other.clocks {
            if let Some(v) = other.vals.get(c) {
                changed |= self.set(c, v, *h);
            }
        }
        if let Some(d) = other.deleted_at {
            changed |= self.delete(d);
        }
        changed
    }

    /// Whether two states hold the same values, clocks and delete.
    pub fn same(&self, other: &RowState) -> bool {
        self.clocks == other.clocks
            && self.deleted_at == other.deleted_at
            && self.vals.len() == other.vals.len()
            && self
                .vals
                .iter()
                .all(|(k, v)| other.vals.get(k).is_some_and(|o| same_value(v, o)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::change::ChangeId;
    use crate::model::clock::NodeId;
    use crate::model::testing;

    fn hlc(t: u64, node: u8) -> Hlc {
        testing::hlc(t, node)
    }

    fn change(op: Op, cols: &[(&str, &str)], t: u64, node: u8) -> Change {
        Change {
            id: ChangeId {
                origin: NodeId([node; 16]),
                seq: t,
            },
            table: "t".into(),
            pk: vec![("id".into(), Value::Int(Some(1)))],
            op,
            columns: cols
                .iter()
                .map(|(c, v)| (c.to_string(), Value::String(Some(v.to_string()))))
                .collect(),
            hlc: hlc(t, node),
            base: Vec::new(),
        }
    }

    fn fold(changes: &[Change]) -> RowState {
        let mut s = RowState::default();
        for c in changes {
            s.apply(c);
        }
        s
    }

    #[test]
    fn later_write_wins_per_column() {
        let a = change(Op::Insert, &[("name", "a"), ("email", "a@")], 10, 1);
        let b = change(Op::Update, &[("name", "b")], 20, 2);
        let c = change(Op::Update, &[("email", "c@")], 15, 3);
        let s = fold(&[a, b, c]);
        assert_eq!(s.vals["name"], Value::String(Some("b".into())));
        assert_eq!(s.vals["email"], Value::String(Some("c@".into())));
        assert!(s.is_live());
    }

    #[test]
    fn an_old_edit_arriving_late_loses() {
        let new = change(Op::Update, &[("name", "new")], 1_000, 2);
        let year_old = change(Op::Update, &[("name", "old")], 1, 1);
        let s = fold(&[change(Op::Insert, &[("name", "x")], 0, 1), new, year_old]);
        assert_eq!(s.vals["name"], Value::String(Some("new".into())));
    }

    /// Two copies of one device (one node id) stamp two writes of a
    /// column alike: every side settles on the same value, whatever the
    /// order of arrival; the same write again changes nothing.
    #[test]
    fn writes_stamped_alike_settle_on_one_value() {
        let x = change(Op::Update, &[("name", "x")], 5, 1);
        let y = change(Op::Update, &[("name", "y")], 5, 1);
        let xy = fold(&[x.clone(), y.clone()]);
        let yx = fold(&[y.clone(), x.clone()]);
        assert!(xy.same(&yx), "{xy:?} {yx:?}");
        assert_eq!(xy.vals["name"], Value::String(Some("y".into())));
        let mut again = xy.clone();
        assert!(!again.apply(&y) && !again.apply(&x));
        // Not a string order: the typed encoding decides, the same
        // everywhere (here `{"Int":10}` > `{"Int":9}` as text is false).
        let mut a = RowState::default();
        a.set("n", &Value::Int(Some(9)), hlc(5, 1));
        let mut b = RowState::default();
        b.set("n", &Value::Int(Some(10)), hlc(5, 1));
        let (mut ab, mut ba) = (a.clone(), b.clone());
        ab.merge(&b);
        ba.merge(&a);
        assert!(ab.same(&ba), "{ab:?} {ba:?}");
    }

    /// A tie is settled by the values, whatever form each is held in: a
    /// hub that reads a value back from its users' table holds a
    /// `timestamptz` in UTC and a `DECIMAL(p,s)` at its scale, where the
    /// device that wrote it holds its offset and its digits. Both settle
    /// on the same value. (Compared as written, `10:00+02:00` is greater
    /// than `09:00+00:00` but `08:00+00:00`, the same instant, is not.)
    #[test]
    fn a_tie_is_settled_alike_whatever_form_the_values_are_in() {
        use chrono::{DateTime, FixedOffset};
        let at = |s: &str| {
            Value::ChronoDateTimeWithTimeZone(Some(
                DateTime::<FixedOffset>::parse_from_rfc3339(s).unwrap(),
            ))
        };
        let dec = |s: &str| Value::Decimal(Some(s.parse().unwrap()));
        for (written, read_back, other) in [
            (
                at("2026-01-01T10:00:00+02:00"),
                at("2026-01-01T08:00:00+00:00"),
                at("2026-01-01T09:00:00+00:00"),
            ),
            (
                at("2026-01-01T07:00:00-02:00"),
                at("2026-01-01T09:00:00+00:00"),
                at("2026-01-01T08:30:00+00:00"),
            ),
            (dec("1.5"), dec("1.500"), dec("1.45")),
            (dec("10"), dec("10.00"), dec("10.05")),
            (dec("-2"), dec("-2.0"), dec("-10")),
            // An `i32` field in a column another entity reads as `i64`.
            (
                Value::Int(Some(9)),
                Value::BigInt(Some(9)),
                Value::Int(Some(10)),
            ),
            (
                Value::Float(Some(1.5)),
                Value::Double(Some(1.5)),
                Value::Float(Some(0.25)),
            ),
        ] {
            let settle = |held: &Value, arriving: &Value| {
                let mut s = RowState::default();
                s.set("c", held, hlc(5, 1));
                s.set("c", arriving, hlc(5, 1));
                s.vals["c"].clone()
            };
            let wins = |v: &Value| same_value(v, &written) || same_value(v, &read_back);
            let device = wins(&settle(&written, &other));
            assert_eq!(wins(&settle(&read_back, &other)), device, "{written:?}");
            assert_eq!(wins(&settle(&other, &written)), device, "{written:?}");
            assert_eq!(wins(&settle(&other, &read_back)), device, "{written:?}");
            // The two forms of one value are one value: no tie to settle.
            let mut s = RowState::default();
            s.set("c", &read_back, hlc(5, 1));
            assert!(!s.set("c", &written, hlc(5, 1)), "{written:?}");
        }
    }

    /// Two writes of one column at the same physical time and logical
    /// counter: the greater node id wins, in either order of arrival, for
    /// the column and for a delete against an update.
    #[test]
    fn equal_physical_time_is_broken_by_node() {
        let a = change(Op::Update, &[("name", "from-1")], 5, 1);
        let b = change(Op::Update, &[("name", "from-2")], 5, 2);
        for order in [[a.clone(), b.clone()], [b.clone(), a.clone()]] {
            let s = fold(&order);
            assert_eq!(s.vals["name"], Value::String(Some("from-2".into())));
            assert_eq!(s.clocks["name"], hlc(5, 2));
        }
        // The logical counter decides before the node does.
        let mut later = change(Op::Update, &[("name", "from-1, later")], 5, 1);
        later.hlc.logical = 1;
        for order in [[later.clone(), b.clone()], [b.clone(), later.clone()]] {
            assert_eq!(
                fold(&order).vals["name"],
                Value::String(Some("from-1, later".into()))
            );
        }
        // A delete and an update at the same time: the greater node wins.
        let del_1 = change(Op::Delete, &[], 5, 1);
        let del_3 = change(Op::Delete, &[], 5, 3);
        for order in [[b.clone(), del_1.clone()], [del_1, b.clone()]] {
            assert!(
                fold(&order).is_live(),
                "node 2's update beats node 1's delete"
            );
        }
        for order in [[b.clone(), del_3.clone()], [del_3, b]] {
            assert!(
                !fold(&order).is_live(),
                "node 3's delete beats node 2's update"
            );
        }
    }

    #[test]
    fn delete_wins_unless_the_update_is_later() {
        let ins = change(Op::Insert, &[("name", "x")], 1, 1);
        let del = change(Op::Delete, &[], 10, 2);
        let before = change(Op::Update, &[("name", "before")], 5, 3);
        let after = change(Op::Update, &[("name", "after")], 20, 3);
        assert!(!fold(&[ins.clone(), del.clone(), before.clone()]).is_live());
        assert!(!fold(&[before, del.clone(), ins.clone()]).is_live());
        let s = fold(&[after.clone(), ins, del]);
        assert!(s.is_live());
        assert_eq!(s.vals["name"], Value::String(Some("after".into())));
    }

    #[test]
    fn every_order_gives_the_same_state() {
        let changes = vec![
            change(Op::Insert, &[("a", "1"), ("b", "1")], 1, 1),
            change(Op::Update, &[("a", "2")], 3, 2),
            change(Op::Delete, &[], 4, 3),
            change(Op::Update, &[("b", "3")], 5, 1),
            change(Op::Update, &[("a", "4")], 2, 3),
        ];
        let expected = fold(&changes);
        // All 120 permutations.
        fn permute(v: &mut Vec<Change>, k: usize, out: &mut Vec<Vec<Change>>) {
            if k == v.len() {
                out.push(v.clone());
                return;
            }
            for i in k..v.len() {
                v.swap(k, i);
                permute(v, k + 1, out);
                v.swap(k, i);
            }
        }
        let mut all = Vec::new();
        permute(&mut changes.clone(), 0, &mut all);
        assert_eq!(all.len(), 120);
        for p in all {
            assert!(fold(&p).same(&expected));
        }
        // Applying twice changes nothing.
        let mut twice = expected.clone();
        for c in &changes {
            assert!(!twice.apply(c));
        }
    }

    #[test]
    fn the_state_of_one_change_is_its_application() {
        for c in [
            change(Op::Insert, &[("a", "1"), ("b", "2")], 3, 1),
            change(Op::Update, &[("b", "x")], 4, 2),
            change(Op::Delete, &[], 5, 3),
        ] {
            let mut applied = RowState::default();
            applied.apply(&c);
            assert_eq!(RowState::of_change(c), applied);
        }
    }

    #[test]
    fn merge_of_states_is_the_join() {
        let a = fold(&[change(Op::Insert, &[("a", "1"), ("b", "1")], 1, 1)]);
        let b = fold(&[
            change(Op::Update, &[("b", "2")], 2, 2),
            change(Op::Delete, &[], 3, 2),
        ]);
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert!(ab.same(&ba));
        assert!(!ab.is_live());
        let mut again = ab.clone();
        assert!(!again.merge(&ab));
    }

    /// A delete and a write of the same clock: the delete wins (the row is
    /// live only when a write is strictly later).
    #[test]
    fn a_delete_at_the_clock_of_the_last_write_wins() {
        let mut s = fold(&[change(Op::Insert, &[("a", "1")], 7, 1)]);
        assert!(s.is_live());
        s.delete(hlc(7, 1));
        assert!(!s.is_live());
        s.set("a", &Value::String(Some("2".into())), hlc(7, 2));
        assert!(s.is_live(), "a later write brings the row back");
        assert!(!RowState::default().is_live(), "no write, no row");
    }

    #[test]
    fn max_clock_covers_columns_and_the_delete() {
        assert_eq!(RowState::default().max_clock(), None);
        let mut s = fold(&[change(Op::Insert, &[("a", "1"), ("b", "1")], 4, 1)]);
        s.set("b", &Value::String(Some("2".into())), hlc(9, 2));
        assert_eq!(s.max_clock(), Some(hlc(9, 2)));
        s.delete(hlc(12, 3));
        assert_eq!(s.max_clock(), Some(hlc(12, 3)));
    }

    /// `apply` and `merge` report a change when any column (or the delete)
    /// moved, even if others did not: callers write back only changed rows.
    #[test]
    fn apply_and_merge_report_whether_anything_changed() {
        let mut s = fold(&[change(Op::Insert, &[("a", "1"), ("b", "1")], 5, 1)]);
        // `a` is older than what the state has, `b` newer.
        let mixed = Change {
            columns: vec![
                ("a".into(), Value::String(Some("old".into()))),
                ("b".into(), Value::String(Some("new".into()))),
            ],
            ..change(Op::Update, &[], 6, 2)
        };
        let mut older = mixed.clone();
        older.hlc = hlc(3, 2);
        assert!(!s.clone().apply(&older), "nothing newer");
        assert!(s.apply(&mixed));
        assert!(!s.apply(&mixed), "applied twice changes nothing");

        // Merging a state newer in one column only, then in the delete only.
        let base = fold(&[change(Op::Insert, &[("a", "1"), ("b", "1")], 5, 1)]);
        let mut one_column = base.clone();
        one_column.set("b", &Value::String(Some("2".into())), hlc(8, 2));
        let mut m = base.clone();
        assert!(m.merge(&one_column));
        assert_eq!(m.vals["b"], Value::String(Some("2".into())));
        let mut deleted = base.clone();
        deleted.delete(hlc(9, 3));
        let mut m = base.clone();
        assert!(m.merge(&deleted));
        assert_eq!(m.deleted_at, Some(hlc(9, 3)));
        assert!(!m.merge(&base), "an older state changes nothing");
    }

    /// `same` compares clocks, the delete and values (by value: 1.5 and
    /// 1.50 are the same decimal).
    #[test]
    fn same_compares_clocks_delete_and_values() {
        let s = fold(&[change(Op::Insert, &[("a", "1"), ("b", "1")], 5, 1)]);
        assert!(s.same(&s.clone()));
        let mut other_clock = s.clone();
        other_clock.clocks.insert("a".into(), hlc(6, 1));
        assert!(!s.same(&other_clock));
        let mut deleted = s.clone();
        deleted.deleted_at = Some(hlc(1, 1));
        assert!(!s.same(&deleted));
        let mut other_value = s.clone();
        other_value
            .vals
            .insert("a".into(), Value::String(Some("2".into())));
        assert!(!s.same(&other_value));
        let mut extra_value = s.clone();
        extra_value
            .vals
            .insert("c".into(), Value::String(Some("3".into())));
        assert!(!s.same(&extra_value));
        assert!(!extra_value.same(&s));

        let dec = |d: &str| {
            let mut s = RowState::default();
            s.set(
                "d",
                &Value::Decimal(Some(d.parse().expect("decimal"))),
                hlc(1, 1),
            );
            s
        };
        assert!(dec("1.5").same(&dec("1.50")));
        assert!(!dec("1.5").same(&dec("1.51")));
    }
}
