//! Conflicts: two replicas edited the same column of the same row without
//! having seen each other's edit. Pure decisions, no I/O.
//!
//! A change of a table whose policy detects conflicts carries the *base* of
//! each column it sets: the value and clock that column had on the replica
//! when it was edited. Applying it where the column's clock differs from
//! that base means someone else changed the column meanwhile: a concurrent
//! edit. What happens then is the entity's policy:
//!
//! | policy | concurrent edit of a column |
//! |---|---|
//! | `lww` | not looked for: the later clock wins |
//! | `merge` | the later clock wins, and the conflict is reported as settled |
//! | `manual` | the incoming edit of that column is held back (not applied, not passed on); the replica that made it stores a conflict with base, local and remote values until the user resolves it |
//! | custom | as `manual`, then the entity's [`Resolver`] settles it on that replica |
//!
//! Columns changed on one side only are never conflicts: they are applied
//! under every policy. A delete against a concurrent update follows one rule
//! on every node and under every policy: the delete wins unless the update
//! is later (see [`crate::model::merge`]).

use sea_orm::sea_query::Value;
use serde::{Deserialize, Serialize};

use crate::model::change::{Change, Op};
use crate::model::clock::Hlc;
use crate::model::merge::RowState;
use crate::model::syncable::ConflictPolicy;

/// A column edited concurrently on two replicas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnConflict {
    /// Table.
    pub table: String,
    /// Primary key, column by column.
    #[serde(with = "crate::model::typed::columns")]
    pub pk: Vec<(String, Value)>,
    /// The column.
    pub column: String,
    /// What the column held before both edits, if known.
    #[serde(with = "crate::model::typed::option")]
    pub base: Option<Value>,
    /// The edit being applied (on a hub: the pushing replica's).
    #[serde(with = "crate::model::typed::value")]
    pub local: Value,
    /// Its clock.
    pub local_clock: Hlc,
    /// The edit already there.
    #[serde(with = "crate::model::typed::value")]
    pub remote: Value,
    /// Its clock.
    pub remote_clock: Hlc,
}

/// How a conflict is settled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Resolution {
    /// Keep this replica's value: it becomes a new change that wins.
    KeepLocal,
    /// Take the other replica's value.
    TakeRemote,
    /// Write this value instead (a merge of the two, say); it becomes a new
    /// change that wins.
    Value(Value),
}

/// A user-supplied conflict resolver for one entity
/// (`ReplicaBuilder::resolver`). It must be pure: no I/O, same answer for
/// the same input.
pub trait Resolver: Send + Sync {
    /// Settle a conflict, or return `None` to leave it for the user.
    fn resolve(&self, conflict: &ColumnConflict) -> Option<Resolution>;
}

impl<F> Resolver for F
where
    F: Fn(&ColumnConflict) -> Option<Resolution> + Send + Sync,
{
    fn resolve(&self, conflict: &ColumnConflict) -> Option<Resolution> {
        self(conflict)
    }
}

/// Whether an edit whose base clock is `base` meets a concurrent edit in a
/// state whose clock for the column is `current`.
pub(crate) fn is_concurrent(current: Option<Hlc>, base: Option<Hlc>) -> bool {
    current.is_some() && current != base
}

/// The outcome of merging a change under a policy.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Merged {
    /// Columns of the change held back (`manual` and custom policies): the
    /// change as passed on to other replicas leaves them out. Every other
    /// column was applied.
    pub held: Vec<String>,
    /// Conflicts met: settled by the clock (`merge`) or held (`manual`).
    pub conflicts: Vec<ColumnConflict>,
    /// Whether the state changed.
    pub changed: bool,
}

/// Merge `change` into `state` under `policy`: per-column last-writer-wins,
/// except the columns whose edit meets a concurrent one, which the policy
/// settles by the clock (`merge`) or holds back (`manual`, custom). This is
/// what a hub does with each pushed change; a hub of your own calls it to
/// honour the tables' policies, logs the change without the columns in
/// [`Merged::held`], and reports [`Merged::conflicts`] in its
/// `PushAck` (`conflicts` for held columns,
/// `settled` for the others).
pub fn merge_with_policy(state: &mut RowState, change: &Change, policy: ConflictPolicy) -> Merged {
    let mut out = Merged::default();
    if change.op == Op::Delete || policy == ConflictPolicy::Lww || change.base.is_empty() {
        out.changed = state.apply(change);
        return out;
    }
    for (column, value) in &change.columns {
        let base = change.base_of(column);
        let current = state.clocks.get(column).copied();
        // The column may hold this very edit: the change was applied
        // before, under another id (a device that took a new identity
        // sends its pending changes again). An edit never meets itself;
        // the same clock with another value is another edit (two copies of
        // one device can stamp alike).
        let itself = current == Some(change.hlc)
            && state
                .vals
                .get(column)
                .is_some_and(|v| crate::model::value::same_value(v, value));
        let concurrent = !itself && is_concurrent(current, base.and_then(|b| b.clock));
        if let Some(current) = current.filter(|_| concurrent) {
            out.conflicts.push(ColumnConflict {
                table: change.table.clone(),
                pk: change.pk.clone(),
                column: column.clone(),
                base: base.and_then(|b| b.value.clone()),
                local: value.clone(),
                local_clock: change.hlc,
                remote: state
                    .vals
                    .get(column)
                    .cloned()
                    .unwrap_or(Value::String(None)),
                remote_clock: current,
            });
            if policy.holds_conflicts() {
                out.held.push(column.clone());
                continue;
            }
        }
        out.changed |= state.set(column, value, change.hlc);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::change::{ChangeId, ColumnBase};
    use crate::model::clock::NodeId;
    use crate::model::testing;

    fn hlc(t: u64, n: u8) -> Hlc {
        testing::hlc(t, n)
    }

    fn s(v: &str) -> Value {
        Value::String(Some(v.into()))
    }

    fn edit(col: &str, v: &str, t: u64, n: u8, base: Option<(&str, Hlc)>) -> Change {
        Change {
            id: ChangeId {
                origin: NodeId([n; 16]),
                seq: t,
            },
            table: "contacts".into(),
            pk: vec![("id".into(), Value::Int(Some(1)))],
            op: Op::Update,
            columns: vec![(col.into(), s(v))],
            hlc: hlc(t, n),
            base: vec![ColumnBase {
                column: col.into(),
                value: base.map(|(v, _)| s(v)),
                clock: base.map(|(_, h)| h),
            }],
        }
    }

    fn start() -> RowState {
        let mut st = RowState::default();
        st.set("phone", &s("p0"), hlc(1, 9));
        st.set("email", &s("e0"), hlc(1, 9));
        st
    }

    #[test]
    fn disjoint_columns_are_never_conflicts() {
        for policy in [ConflictPolicy::Merge, ConflictPolicy::Manual] {
            let mut st = start();
            let a = merge_with_policy(
                &mut st,
                &edit("phone", "p1", 5, 1, Some(("p0", hlc(1, 9)))),
                policy,
            );
            let b = merge_with_policy(
                &mut st,
                &edit("email", "e1", 6, 2, Some(("e0", hlc(1, 9)))),
                policy,
            );
            assert!(a.conflicts.is_empty() && b.conflicts.is_empty());
            assert_eq!(st.vals["phone"], s("p1"));
            assert_eq!(st.vals["email"], s("e1"));
        }
    }

    #[test]
    fn same_column_merge_settles_by_clock_and_reports() {
        let mut st = start();
        merge_with_policy(
            &mut st,
            &edit("phone", "later", 10, 1, Some(("p0", hlc(1, 9)))),
            ConflictPolicy::Merge,
        );
        // Made earlier, on the same base, arriving last: a conflict that loses.
        let r = merge_with_policy(
            &mut st,
            &edit("phone", "earlier", 5, 2, Some(("p0", hlc(1, 9)))),
            ConflictPolicy::Merge,
        );
        assert_eq!(r.conflicts.len(), 1);
        assert_eq!(r.conflicts[0].base, Some(s("p0")));
        assert_eq!(st.vals["phone"], s("later"));
    }

    #[test]
    fn same_column_manual_is_held_with_base_local_remote() {
        let mut st = start();
        merge_with_policy(
            &mut st,
            &edit("phone", "a", 10, 1, Some(("p0", hlc(1, 9)))),
            ConflictPolicy::Manual,
        );
        let r = merge_with_policy(
            &mut st,
            &edit("phone", "b", 20, 2, Some(("p0", hlc(1, 9)))),
            ConflictPolicy::Manual,
        );
        assert_eq!(r.held, ["phone"], "held back, not passed on");
        let c = &r.conflicts[0];
        assert_eq!(
            (c.base.clone(), c.local.clone(), c.remote.clone()),
            (Some(s("p0")), s("b"), s("a"))
        );
        assert_eq!(st.vals["phone"], s("a"), "even a later clock does not win");
    }

    #[test]
    fn an_edit_on_top_of_the_current_value_is_not_a_conflict() {
        let mut st = start();
        merge_with_policy(
            &mut st,
            &edit("phone", "a", 10, 1, Some(("p0", hlc(1, 9)))),
            ConflictPolicy::Manual,
        );
        let r = merge_with_policy(
            &mut st,
            &edit("phone", "b", 20, 2, Some(("a", hlc(10, 1)))),
            ConflictPolicy::Manual,
        );
        assert!(r.conflicts.is_empty());
        assert_eq!(st.vals["phone"], s("b"));
    }

    #[test]
    fn an_edit_applied_again_is_not_a_conflict() {
        for policy in [ConflictPolicy::Merge, ConflictPolicy::Manual] {
            let mut st = start();
            let e = edit("phone", "a", 10, 1, Some(("p0", hlc(1, 9))));
            merge_with_policy(&mut st, &e, policy);
            let mut again = e.clone();
            again.id.seq = 99;
            let r = merge_with_policy(&mut st, &again, policy);
            assert!(
                r.conflicts.is_empty() && r.held.is_empty(),
                "{policy:?}: {r:?}"
            );
            assert_eq!(st.vals["phone"], s("a"));
            // The same clock with another value (a copy's edit): a conflict.
            let mut twin = e.clone();
            twin.columns[0].1 = s("b");
            let r = merge_with_policy(&mut st, &twin, policy);
            assert_eq!(r.conflicts.len(), 1, "{policy:?}: {r:?}");
            // The same value at another clock, on the old base: another
            // edit, concurrent with the first.
            let other = edit("phone", "a", 11, 2, Some(("p0", hlc(1, 9))));
            let r = merge_with_policy(&mut st, &other, policy);
            assert_eq!(r.conflicts.len(), 1, "{policy:?}: {r:?}");
        }
    }

    #[test]
    fn lww_ignores_bases() {
        let mut st = start();
        merge_with_policy(
            &mut st,
            &edit("phone", "a", 10, 1, Some(("p0", hlc(1, 9)))),
            ConflictPolicy::Lww,
        );
        let r = merge_with_policy(
            &mut st,
            &edit("phone", "b", 20, 2, Some(("p0", hlc(1, 9)))),
            ConflictPolicy::Lww,
        );
        assert!(r.conflicts.is_empty());
        assert_eq!(st.vals["phone"], s("b"));
    }

    #[test]
    fn closures_are_resolvers() {
        let longest = |c: &ColumnConflict| -> Option<Resolution> {
            let len = |v: &Value| match v {
                Value::String(Some(s)) => s.len(),
                _ => 0,
            };
            Some(if len(&c.local) >= len(&c.remote) {
                Resolution::KeepLocal
            } else {
                Resolution::TakeRemote
            })
        };
        let c = ColumnConflict {
            table: "t".into(),
            pk: vec![],
            column: "c".into(),
            base: None,
            local: s("long value"),
            local_clock: hlc(1, 1),
            remote: s("short"),
            remote_clock: hlc(2, 2),
        };
        assert_eq!(Resolver::resolve(&longest, &c), Some(Resolution::KeepLocal));
    }

    #[test]
    fn changed_says_whether_some_column_was_applied() {
        for policy in [ConflictPolicy::Merge, ConflictPolicy::Manual] {
            let mut st = start();
            let first = edit("phone", "p1", 5, 1, Some(("p0", hlc(1, 9))));
            assert!(
                merge_with_policy(&mut st, &first, policy).changed,
                "{policy:?}"
            );
            // An earlier concurrent edit of the phone: lost under `merge`,
            // held under `manual`; either way nothing changes ...
            let lost = edit("phone", "p2", 4, 2, Some(("p0", hlc(1, 9))));
            let r = merge_with_policy(&mut st, &lost, policy);
            assert_eq!(r.conflicts.len(), 1, "{policy:?}");
            assert!(!r.changed, "{policy:?}");
            // ... unless the change also sets another column.
            let mut both = edit("email", "e1", 4, 2, Some(("e0", hlc(1, 9))));
            both.columns.insert(0, lost.columns[0].clone());
            both.base.insert(0, lost.base[0].clone());
            let r = merge_with_policy(&mut st, &both, policy);
            assert_eq!(r.conflicts.len(), 1, "{policy:?}");
            assert!(r.changed, "{policy:?}");
            assert_eq!(st.vals["phone"], s("p1"));
            assert_eq!(st.vals["email"], s("e1"));
        }
    }
}
