//! Merging pushed changes into the hub's row states inside the push
//! transaction, and writing what changed: the users' rows, the states and
//! the log, each statement built while the database writes the one before.

use std::borrow::Cow;
use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DatabaseTransaction, Statement, Value};

use super::log;
use super::owner;
use super::referral::{self, RowId};
use super::states::load_states;
use crate::dialect::Dialect;
use crate::model::change::{Change, ChangeId, TableSpec};
use crate::model::conflict::{self, ColumnConflict};
use crate::model::error::{Error, Result};
use crate::model::merge::RowState;
use crate::model::syncable::ConflictPolicy;
use crate::model::value::{parse_pk_key, pk_key};
use crate::store::rows::Referred;
use crate::store::write::{delete_rows, execute_all, execute_while, row_statements};

/// The states of the rows a call touches, as they were before it.
type Before = HashMap<RowId, RowState>;

/// What a push transaction (or one savepoint of it) has merged so far.
pub(super) struct Merge<'a> {
    tx: &'a DatabaseTransaction,
    dialect: &'static dyn Dialect,
    specs: &'a [TableSpec],
    /// The next hub sequence to assign.
    pub(super) next_seq: u64,
    states: HashMap<RowId, RowState>,
    /// The log entry each state takes values from, and which (see
    /// [`rows::StoredState`]).
    referred: HashMap<RowId, Referred>,
    /// Concurrent edits held back (manual and custom policies), by the
    /// change that met them.
    pub(super) held: Vec<(ChangeId, Vec<ColumnConflict>)>,
    /// Concurrent edits settled by the clock (merge policy).
    pub(super) settled: Vec<ColumnConflict>,
    /// Delete the rows that die before writing the others (children
    /// first): a delete may free a unique value a write of the same call
    /// takes. Else after (an upsert may move a child away from a parent the
    /// call deletes).
    pub(super) deletes_first: bool,
    /// Write rows the hub holds no live state of as plain inserts, on
    /// every dialect (a push under an account): the database's key
    /// equality can be coarser than the states' (`'ab '` and `'ab'` in a
    /// PostgreSQL `char(4)`, times finer than a microsecond, `-0.0`), and
    /// an upsert of such a key would overwrite another user's row past
    /// the ownership check, as it would a row an operator put in an
    /// adopted table. A plain insert fails there, and the change is
    /// refused.
    pub(super) plain_new: bool,
}

/// The rows one call writes, per table in registration order.
struct RowWrites<'s> {
    upserts: Vec<Statement>,
    deletes: Vec<(&'s TableSpec, Vec<Vec<Value>>)>,
    /// The keys whose state changed, per table.
    saved: Vec<(&'s str, Vec<String>)>,
}

impl<'a> Merge<'a> {
    pub(super) fn new(
        tx: &'a DatabaseTransaction,
        dialect: &'static dyn Dialect,
        specs: &'a [TableSpec],
        next_seq: u64,
    ) -> Self {
        Merge {
            tx,
            dialect,
            specs,
            next_seq,
            states: HashMap::new(),
            referred: HashMap::new(),
            held: Vec::new(),
            settled: Vec::new(),
            deletes_first: true,
            plain_new: false,
        }
    }

    /// A merge inside the savepoint `sp`, starting from what this one holds.
    pub(super) fn nested<'b>(&self, sp: &'b DatabaseTransaction) -> Merge<'b>
    where
        'a: 'b,
    {
        Merge {
            tx: sp,
            dialect: self.dialect,
            specs: self.specs,
            next_seq: self.next_seq,
            states: self.states.clone(),
            referred: self.referred.clone(),
            held: Vec::new(),
            settled: Vec::new(),
            deletes_first: self.deletes_first,
            plain_new: self.plain_new,
        }
    }

    /// Take over what a committed savepoint did.
    pub(super) fn absorb(&mut self, sub: Merge<'_>) {
        self.next_seq = sub.next_seq;
        self.states = sub.states;
        self.referred = sub.referred;
        self.held.extend(sub.held);
        self.settled.extend(sub.settled);
    }

    /// Merge `changes` (already validated) and write their rows, states and
    /// log entries. On error the caller rolls back.
    pub(super) async fn write(&mut self, changes: &[&Change]) -> Result<()> {
        let keyed = changes
            .iter()
            .map(|c| {
                Ok((
                    *c,
                    pk_key(&c.pk.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>())?,
                ))
            })
            .collect::<Result<Vec<(&Change, String)>>>()?;
        self.load(&keyed).await?;
        let (before, logged, owners) = self.merge(&keyed)?;
        let rows = self.row_writes(&before)?;
        // The database writes the rows while the state statements are
        // built, then the states while the log statements are built.
        let (tx, kind) = (self.tx, self.tx.get_database_backend());
        let first_seq = self.next_seq;
        let (states, referred) = (&self.states, &mut self.referred);
        if self.deletes_first {
            for (spec, dead) in rows.deletes.iter().rev() {
                delete_rows(tx, spec, dead).await?;
            }
        }
        let state_stmts = execute_while(tx, rows.upserts, || {
            referral::state_statements(
                states,
                &before,
                referred,
                &rows.saved,
                &keyed,
                &logged,
                first_seq,
                kind,
            )
        })
        .await?;
        if !self.deletes_first {
            for (spec, dead) in rows.deletes.iter().rev() {
                delete_rows(tx, spec, dead).await?;
            }
        }
        let log_stmts = execute_while(tx, state_stmts, || {
            log::append(&logged, &owners, first_seq, kind)
        })
        .await?;
        execute_all(tx, log_stmts).await?;
        self.next_seq = first_seq + logged.len() as u64;
        Ok(())
    }

    /// The state of a row, if loaded (see [`Merge::load`]).
    pub(super) fn state(&self, table: &str, key: &str) -> Option<&RowState> {
        self.states.get(&(table.to_owned(), key.to_owned()))
    }

    /// Load the states of these rows not loaded yet, one query per table.
    pub(super) async fn load(&mut self, keyed: &[(&Change, String)]) -> Result<()> {
        let mut missing: HashMap<&str, Vec<String>> = HashMap::new();
        for (c, key) in keyed {
            if !self.states.contains_key(&(c.table.clone(), key.clone())) {
                missing
                    .entry(c.table.as_str())
                    .or_default()
                    .push(key.clone());
            }
        }
        for (table, keys) in missing {
            let mut loaded = load_states(self.tx, table, &keys).await?;
            for k in keys {
                let (s, referred) = loaded.remove(&k).unwrap_or_default();
                let id = (table.to_owned(), k);
                if let Some(r) = referred {
                    self.referred.insert(id.clone(), r);
                }
                self.states.entry(id).or_insert(s);
            }
        }
        Ok(())
    }

    /// Merge the changes in order into the loaded states. Returns each
    /// touched row's state before, the changes as logged (without the
    /// columns whose edit is a conflict, reported apart), and the owner of
    /// each change's row after it (for tables with owners).
    #[allow(clippy::type_complexity)]
    fn merge<'c>(
        &mut self,
        keyed: &[(&'c Change, String)],
    ) -> Result<(Before, Vec<Cow<'c, Change>>, Vec<Option<String>>)> {
        let mut before: HashMap<RowId, RowState> = HashMap::new();
        let mut logged: Vec<Cow<'c, Change>> = Vec::with_capacity(keyed.len());
        let mut owners = Vec::with_capacity(keyed.len());
        for (c, key) in keyed {
            let id = (c.table.clone(), key.clone());
            let s = self
                .states
                .get_mut(&id)
                .ok_or_else(|| Error::Corrupt("state not loaded".into()))?;
            before.entry(id).or_insert_with(|| s.clone());
            let spec = self.specs.iter().find(|t| t.name == c.table);
            let policy = spec.map_or(ConflictPolicy::Lww, |t| t.policy);
            let merged = conflict::merge_with_policy(s, c, policy);
            owners.push(spec.and_then(|spec| owner::owner_of(spec, &c.pk, s)));
            if merged.conflicts.is_empty() {
                logged.push(Cow::Borrowed(*c));
                continue;
            }
            // Pass on only what was applied; report the conflicts.
            let mut passed = (*c).clone();
            passed.base.retain(|b| !merged.held.contains(&b.column));
            passed.columns.retain(|(n, _)| !merged.held.contains(n));
            logged.push(Cow::Owned(passed));
            if policy.holds_conflicts() {
                self.held.push((c.id, merged.conflicts));
            } else {
                self.settled.extend(merged.conflicts);
            }
        }
        Ok((before, logged, owners))
    }

    /// The rows to write: upserts in table order (parents first), deletes
    /// to run in reverse. The states stay in `self.states` (not copied).
    fn row_writes(&self, before: &HashMap<RowId, RowState>) -> Result<RowWrites<'a>> {
        let mut out = RowWrites {
            upserts: Vec::new(),
            deletes: Vec::new(),
            saved: Vec::new(),
        };
        let kind = self.tx.get_database_backend();
        for spec in self.specs {
            let (mut live, mut dead, mut keys) = (Vec::new(), Vec::new(), Vec::new());
            for ((table, key), old) in before.iter().filter(|((t, _), _)| *t == spec.name) {
                let new = &self.states[&(table.clone(), key.clone())];
                if old.same(new) {
                    continue;
                }
                if new.is_live() {
                    live.push((new, old.is_live()));
                } else if old.is_live() {
                    dead.push(parse_pk_key(key)?);
                }
                keys.push(key.clone());
            }
            for q in row_statements(spec, &live, self.dialect, self.plain_new)? {
                out.upserts.push(kind.build(&q));
            }
            out.deletes.push((spec, dead));
            out.saved.push((&spec.name, keys));
        }
        Ok(out)
    }
}
