//! Merging pushed changes into the hub's row states inside the push
//! transaction, and writing what changed, each statement built while the
//! database writes the one before: a live row's state into its users' row
//! (see `users`), a gone row's into its version table (see `versions`).

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use sea_orm::{DatabaseTransaction, Statement, Value};

use super::owner;
use super::users::{UserRows, carries};
use super::versions::HUB_VERSIONS;
use crate::dialect::Dialect;
use crate::model::change::{Change, ChangeId, TableSpec};
use crate::model::clock::NodeId;
use crate::model::conflict::{self, ColumnConflict};
use crate::model::error::{Error, Result};
use crate::model::merge::RowState;
use crate::model::syncable::ConflictPolicy;
use crate::model::value::{parse_pk_key, pk_key};
use crate::store::version_table::{Position, ROW_META, Versions, sole_after};
use crate::store::versions::Ordinals;
use crate::store::write::{delete_rows, execute_while, row_statements_beside};

/// What a call holds of each row of the hub, by table then key text: a
/// row is found by `(&str, &str)` without building its id.
type Rows<T> = FxHashMap<String, FxHashMap<String, T>>;

/// The states of the rows a call touches, as they were before it.
type Before = Rows<RowState>;

/// What `rows` holds of the row `key` of `table`.
fn row<'m, T>(rows: &'m Rows<T>, table: &str, key: &str) -> Option<&'m T> {
    rows.get(table)?.get(key)
}

/// The rows of `table` in `rows`, added if absent.
fn table_rows<'m, T>(rows: &'m mut Rows<T>, table: &str) -> &'m mut FxHashMap<String, T> {
    if !rows.contains_key(table) {
        rows.insert(table.to_owned(), FxHashMap::default());
    }
    rows.get_mut(table).expect("just inserted")
}

/// What a push transaction (or one savepoint of it) has merged so far.
pub(super) struct Merge<'a> {
    tx: &'a DatabaseTransaction,
    dialect: &'static dyn Dialect,
    specs: &'a [TableSpec],
    /// The next hub sequence to assign.
    pub(super) next_seq: u64,
    states: Rows<RowState>,
    /// The origin each loaded row records as its sole writer, if any (see
    /// `Position::sole`), kept up to date as the call writes.
    soles: Rows<Option<NodeId>>,
    /// Whether each loaded row has a version row, kept up to date as the
    /// call writes: a row gone, a row a users' row cannot carry (see
    /// [`carries`]), a live row of a release before users' rows carried
    /// states. A live row written into its users' row alone has its
    /// version row deleted.
    in_versions: Rows<bool>,
    /// The version table of each table loaded from, by name.
    versions: HashMap<String, Versions<'a>>,
    /// Column registers read already in this transaction, by table: a
    /// version table opened for one of them takes it instead of reading
    /// it again. Another server may register columns after (without the
    /// sequence lock, an install), and a savepoint of this merge may
    /// have: a version table whose register misses a column looks it up
    /// again, at registration and at reading.
    pub(super) registers: HashMap<String, Ordinals>,
    /// Concurrent edits held back (manual and custom policies), by the
    /// change that met them.
    pub(super) held: Vec<(ChangeId, Vec<ColumnConflict>)>,
    /// Concurrent edits settled by the clock (merge policy).
    pub(super) settled: Vec<ColumnConflict>,
    /// The origin sequence and digest of each change applied, in the order
    /// of their hub sequences (see `batches`).
    applied: Vec<(u64, [u8; 16])>,
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

/// The rows a finished [`Merge`] held, kept only to be dropped.
pub(super) struct Spent {
    _states: Rows<RowState>,
    _soles: Rows<Option<NodeId>>,
    _in_versions: Rows<bool>,
}

/// The rows one call writes, per table in registration order.
struct RowWrites<'s> {
    upserts: Vec<Statement>,
    deletes: Vec<(&'s TableSpec, Vec<Vec<Value>>)>,
    /// The keys whose state goes into the version table (rows gone, rows
    /// their users' row cannot carry), per table.
    versioned: Vec<(&'s str, Vec<String>)>,
    /// The version rows to delete: live rows their users' rows now carry.
    unversioned: Vec<Statement>,
    /// The keys of those version rows, per table.
    unversioned_keys: Vec<(&'s str, Vec<String>)>,
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
            states: Rows::default(),
            soles: Rows::default(),
            in_versions: Rows::default(),
            versions: HashMap::new(),
            registers: HashMap::new(),
            held: Vec::new(),
            settled: Vec::new(),
            applied: Vec::new(),
            deletes_first: true,
            plain_new: false,
        }
    }

    /// The transaction it works in.
    pub(super) fn tx(&self) -> &'a DatabaseTransaction {
        self.tx
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
            soles: self.soles.clone(),
            in_versions: self.in_versions.clone(),
            versions: self.versions.clone(),
            registers: self.registers.clone(),
            held: Vec::new(),
            settled: Vec::new(),
            applied: Vec::new(),
            deletes_first: self.deletes_first,
            plain_new: self.plain_new,
        }
    }

    /// What the push made: the next hub sequence, the conflicts held back,
    /// those settled, and the changes applied (see `batches`); and the rows
    /// it held, for the caller to free while the database works (a batch's
    /// states take a while to free).
    #[allow(clippy::type_complexity)]
    pub(super) fn outcome(
        self,
    ) -> (
        u64,
        Vec<(ChangeId, Vec<ColumnConflict>)>,
        Vec<ColumnConflict>,
        Vec<(u64, [u8; 16])>,
        Spent,
    ) {
        let spent = Spent {
            _states: self.states,
            _soles: self.soles,
            _in_versions: self.in_versions,
        };
        (self.next_seq, self.held, self.settled, self.applied, spent)
    }

    /// Take over what a committed savepoint did.
    pub(super) fn absorb(&mut self, sub: Merge<'_>) {
        self.next_seq = sub.next_seq;
        self.states = sub.states;
        self.soles = sub.soles;
        self.in_versions = sub.in_versions;
        // Its version tables are not taken: a register read here misses
        // at most the columns the savepoint registered, which a later
        // registration or read looks up again.
        self.held.extend(sub.held);
        self.settled.extend(sub.settled);
        self.applied.extend(sub.applied);
    }

    /// Merge `changes` (already validated) and write their rows and
    /// states. On error the caller rolls back.
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
        // The key values of each row.
        let mut pks: FxHashMap<(&str, &str), Vec<Value>> =
            FxHashMap::with_capacity_and_hasher(keyed.len(), Default::default());
        for (c, key) in &keyed {
            pks.entry((c.table.as_str(), key.as_str()))
                .or_insert_with(|| c.pk.iter().map(|(_, v)| v.clone()).collect());
        }
        let first_seq = self.next_seq;
        let origin = changes.first().map(|c| c.id.origin);
        self.load(&keyed).await?;
        let (before, owners) = self.merge(&keyed)?;
        // The rows whose state changed, the new ones too, their columns
        // registered (before their metadata is encoded), and their
        // positions.
        let saved = self.changed(&before)?;
        self.register(&saved).await?;
        let mut positions = positions(&keyed, &owners, first_seq);
        self.sole_positions(&mut positions, &before, origin);
        let rows = self.row_writes(&before, &saved, &positions, &pks)?;
        // The database writes the rows while the state statements are
        // built, then the states while the digests are made.
        let tx = self.tx;
        if self.deletes_first {
            for (spec, dead) in rows.deletes.iter().rev() {
                delete_rows(tx, spec, dead).await?;
            }
        }
        let (states, versions) = (&self.states, &self.versions);
        let versioned = &rows.versioned;
        let mut state_stmts = execute_while(tx, rows.upserts, || {
            state_statements(states, versions, versioned, &pks, &positions)
        })
        .await?;
        if !self.deletes_first {
            for (spec, dead) in rows.deletes.iter().rev() {
                delete_rows(tx, spec, dead).await?;
            }
        }
        state_stmts.extend(rows.unversioned);
        for (table, keys) in rows.versioned {
            let kept = table_rows(&mut self.in_versions, table);
            for k in keys {
                kept.insert(k, true);
            }
        }
        for (table, keys) in rows.unversioned_keys {
            let kept = table_rows(&mut self.in_versions, table);
            for k in keys {
                kept.insert(k, false);
            }
        }
        // The digests are made, and the states before freed, while the
        // database writes the states.
        let digests = execute_while(tx, state_stmts, move || {
            drop(before);
            keyed
                .iter()
                .map(|(c, key)| Ok((c.id.seq, super::batches::digest_keyed(c, key)?)))
                .collect::<Result<Vec<_>>>()
        })
        .await?;
        self.next_seq = first_seq + changes.len() as u64;
        self.applied.extend(digests);
        Ok(())
    }

    /// Register the columns of the states of `saved` (per table, the keys
    /// whose state changed) their tables' registers lack.
    async fn register(&mut self, saved: &[(&str, Vec<String>)]) -> Result<()> {
        for (table, keys) in saved {
            if keys.is_empty() {
                continue;
            }
            // Opened by the load, or by the load of a savepoint whose
            // merge this one absorbed.
            self.open_versions(table).await?;
            let versions = self
                .versions
                .get_mut(*table)
                .ok_or_else(|| Error::Corrupt("version table not opened".into()))?;
            let states = &self.states;
            let saved = keys
                .iter()
                .map(|k| row(states, table, k))
                .collect::<Option<Vec<&RowState>>>()
                .ok_or_else(|| Error::Corrupt("state not loaded".into()))?;
            versions.register(self.tx, saved.into_iter()).await?;
        }
        Ok(())
    }

    /// Give each position of a row whose state changed its sole writer
    /// after `origin`'s push, and keep it for the rest of the call.
    fn sole_positions(
        &mut self,
        positions: &mut FxHashMap<(&str, &str), Position>,
        before: &Before,
        origin: Option<NodeId>,
    ) {
        for ((table, key), p) in positions.iter_mut() {
            let (Some(was), Some(now), Some(o)) = (
                row(before, table, key),
                row(&self.states, table, key),
                origin,
            ) else {
                continue;
            };
            if was.same(now) {
                continue; // not saved: the row keeps its position
            }
            p.sole = sole_after(o, row(&self.soles, table, key).copied().flatten(), was, now);
            let soles = table_rows(&mut self.soles, table);
            match soles.get_mut(*key) {
                Some(sole) => *sole = p.sole,
                None => {
                    soles.insert((*key).to_owned(), p.sole);
                }
            }
        }
    }

    /// Open the version table of `table` (an installed table) unless open.
    async fn open_versions(&mut self, table: &str) -> Result<()> {
        if self.versions.contains_key(table) {
            return Ok(());
        }
        let spec = self
            .specs
            .iter()
            .find(|s| s.name == table)
            .ok_or_else(|| Error::Corrupt(format!("table `{table}` is not installed")))?;
        let v = match self.registers.remove(table) {
            Some(ords) => Versions::opened(self.tx, HUB_VERSIONS, spec, ords)?,
            None => Versions::open(self.tx, HUB_VERSIONS, spec).await?,
        };
        self.versions.insert(table.to_owned(), v);
        Ok(())
    }

    /// The state of a row, if loaded (see [`Merge::load`]).
    pub(super) fn state(&self, table: &str, key: &str) -> Option<&RowState> {
        row(&self.states, table, key)
    }

    /// Load the states of these rows not loaded yet, one query per table.
    pub(super) async fn load(&mut self, keyed: &[(&Change, String)]) -> Result<()> {
        let mut pks: Vec<(&Change, Vec<Value>)> = Vec::new();
        let mut missing: HashMap<&str, Vec<(usize, String)>> = HashMap::new();
        let mut seen: std::collections::HashSet<(&str, &str)> = std::collections::HashSet::new();
        for (c, key) in keyed {
            if row(&self.states, &c.table, key).is_none()
                && seen.insert((c.table.as_str(), key.as_str()))
            {
                missing
                    .entry(c.table.as_str())
                    .or_default()
                    .push((pks.len(), key.clone()));
                pks.push((*c, c.pk.iter().map(|(_, v)| v.clone()).collect()));
            }
        }
        let missing: HashMap<&str, Vec<(&[Value], String)>> = missing
            .into_iter()
            .map(|(t, ks)| {
                let ks = ks
                    .into_iter()
                    .map(|(i, k)| (pks[i].1.as_slice(), k))
                    .collect();
                (t, ks)
            })
            .collect();
        for (table, keys) in missing {
            self.open_versions(table).await?;
            let versions = self
                .versions
                .get_mut(table)
                .ok_or_else(|| Error::Corrupt("version table not opened".into()))?;
            let values: Vec<&[Value]> = keys.iter().map(|(v, _)| *v).collect();
            let texts: Vec<String> = keys.iter().map(|(_, k)| k.clone()).collect();
            // The users' rows first; the version table for the keys
            // without a row there that carries its state.
            let spec = self
                .specs
                .iter()
                .find(|s| s.name == table)
                .ok_or_else(|| Error::Corrupt(format!("table `{table}` is not installed")))?;
            let (mut loaded, kept) = UserRows::new(self.dialect, spec)
                .load_anywhere(self.tx, versions, &values, &texts, true)
                .await?;
            let in_versions = table_rows(&mut self.in_versions, table);
            for k in &texts {
                in_versions
                    .entry(k.clone())
                    .or_insert_with(|| kept.contains(k));
            }
            let (soles, states) = (
                table_rows(&mut self.soles, table),
                table_rows(&mut self.states, table),
            );
            for k in texts {
                let (s, sole) = loaded.remove(&k).unwrap_or_default();
                soles.entry(k.clone()).or_insert(sole);
                states.entry(k).or_insert(s);
            }
        }
        Ok(())
    }

    /// Merge the changes, in order, into the loaded states. Returns each
    /// touched row's state before, and the owner of each change's row
    /// after it (for tables with owners). The columns whose edit is a
    /// conflict are held or settled apart.
    fn merge(&mut self, keyed: &[(&Change, String)]) -> Result<(Before, Vec<Option<String>>)> {
        let mut before = Before::default();
        let mut owners = Vec::with_capacity(keyed.len());
        for (c, key) in keyed {
            let s = self
                .states
                .get_mut(&c.table)
                .and_then(|t| t.get_mut(key.as_str()))
                .ok_or_else(|| Error::Corrupt("state not loaded".into()))?;
            let was = table_rows(&mut before, &c.table);
            if !was.contains_key(key.as_str()) {
                was.insert(key.clone(), s.clone());
            }
            let spec = self.specs.iter().find(|t| t.name == c.table);
            let policy = spec.map_or(ConflictPolicy::Lww, |t| t.policy);
            let merged = conflict::merge_with_policy(s, c, policy);
            owners.push(spec.and_then(|spec| owner::owner_of(spec, &c.pk, s)));
            if merged.conflicts.is_empty() {
                continue;
            }
            if policy.holds_conflicts() {
                self.held.push((c.id, merged.conflicts));
            } else {
                self.settled.extend(merged.conflicts);
            }
        }
        Ok((before, owners))
    }

    /// The keys whose state changed from `before`, per table in
    /// registration order.
    fn changed(&self, before: &Before) -> Result<Vec<(&'a str, Vec<String>)>> {
        let mut out = Vec::with_capacity(self.specs.len());
        for spec in self.specs {
            let mut keys = Vec::new();
            for (key, old) in before.get(&spec.name).into_iter().flatten() {
                let new = row(&self.states, &spec.name, key)
                    .ok_or_else(|| Error::Corrupt("state not loaded".into()))?;
                if !old.same(new) {
                    keys.push(key.clone());
                }
            }
            out.push((spec.name.as_str(), keys));
        }
        Ok(out)
    }

    /// The rows to write of the keys `saved` (see [`Merge::changed`],
    /// registered), `pks` holding each key's values: upserts in table
    /// order (parents first), each live row with its metadata at its
    /// position (see [`ROW_META`]); deletes to run in reverse; the states
    /// that go into version tables (rows gone, rows their users' rows
    /// cannot carry, see [`carries`]), and the deletes of the version
    /// rows of the live rows their users' rows now carry. The states stay
    /// in `self.states` (not copied).
    fn row_writes(
        &self,
        before: &Before,
        saved: &[(&'a str, Vec<String>)],
        positions: &FxHashMap<(&str, &str), Position>,
        pks: &FxHashMap<(&str, &str), Vec<Value>>,
    ) -> Result<RowWrites<'a>> {
        let mut out = RowWrites {
            upserts: Vec::new(),
            deletes: Vec::new(),
            versioned: Vec::new(),
            unversioned: Vec::new(),
            unversioned_keys: Vec::new(),
        };
        for (spec, (table, keys)) in self.specs.iter().zip(saved) {
            debug_assert_eq!(spec.name, *table);
            if keys.is_empty() {
                out.deletes.push((spec, Vec::new()));
                continue;
            }
            // The users' row takes every value its state holds, those of
            // columns other devices' entities added too (by the specs the
            // register records): it is what readers read the row from.
            let versions = self
                .versions
                .get(*table)
                .ok_or_else(|| Error::Corrupt("version table not opened".into()))?;
            let wide = widened(spec, versions.ordinals());
            let (mut live, mut dead) = (Vec::new(), Vec::new());
            let (mut versioned, mut unversioned) = (Vec::new(), Vec::new());
            let mut unversioned_keys = Vec::new();
            for key in keys {
                let (Some(old), Some(new)) =
                    (row(before, table, key), row(&self.states, table, key))
                else {
                    return Err(Error::Corrupt("state not loaded".into()));
                };
                let pk = pks
                    .get(&(*table, key.as_str()))
                    .ok_or_else(|| Error::Corrupt(format!("no key values for {key}")))?;
                if new.is_live() {
                    let p = positions
                        .get(&(*table, key.as_str()))
                        .ok_or_else(|| Error::Corrupt(format!("no position for {key}")))?;
                    if !carries(self.dialect, &wide, versions.ordinals(), pk, new) {
                        // Its state in its version row alone: a users' row
                        // without metadata is read from there.
                        live.push((new, old.is_live(), Versions::no_row_meta()));
                        versioned.push(key.clone());
                        continue;
                    }
                    live.push((new, old.is_live(), versions.row_meta(new, p)?));
                    if row(&self.in_versions, table, key).copied().unwrap_or(true) {
                        unversioned.push(pk.clone());
                        unversioned_keys.push(key.clone());
                    }
                } else {
                    if old.is_live() {
                        dead.push(parse_pk_key(key)?);
                    }
                    versioned.push(key.clone());
                }
            }
            out.upserts.extend(row_statements_beside(
                &wide,
                live,
                &ROW_META,
                self.dialect,
                self.plain_new,
            )?);
            out.deletes.push((spec, dead));
            out.unversioned
                .extend(versions.delete_statements(&unversioned));
            out.versioned.push((*table, versioned));
            out.unversioned_keys.push((*table, unversioned_keys));
        }
        Ok(out)
    }
}

/// `spec` with the synced columns the register `ords` records a spec of
/// and `spec` lacks (columns other devices' entities added), if any.
fn widened<'s>(spec: &'s TableSpec, ords: &Ordinals) -> std::borrow::Cow<'s, TableSpec> {
    let known = |name: &str| {
        spec.columns
            .iter()
            .chain(&spec.local_only)
            .any(|c| c.name == name)
    };
    let extra: Vec<_> = ords
        .names()
        .filter(|c| !known(c))
        .filter_map(|c| ords.spec(c).cloned())
        .collect();
    if extra.is_empty() {
        return std::borrow::Cow::Borrowed(spec);
    }
    let mut wide = spec.clone();
    wide.columns.extend(extra);
    std::borrow::Cow::Owned(wide)
}

/// Each position of a row of `keyed`: the hub sequence of its last change
/// in `keyed` (the first at `first_seq`) and the owner after it (`owners`,
/// one per change); its sole writer is for [`Merge::sole_positions`].
fn positions<'k>(
    keyed: &'k [(&Change, String)],
    owners: &[Option<String>],
    first_seq: u64,
) -> FxHashMap<(&'k str, &'k str), Position> {
    let mut out: FxHashMap<(&str, &str), Position> =
        FxHashMap::with_capacity_and_hasher(keyed.len(), Default::default());
    for (i, ((c, key), owner)) in keyed.iter().zip(owners).enumerate() {
        out.insert(
            (c.table.as_str(), key.as_str()),
            Position {
                hub_seq: first_seq + i as u64,
                sole: None,
                owner: owner.clone(),
            },
        );
    }
    out
}

/// The statements that save the states of `saved` (per table, the keys
/// whose state goes there) into their version tables; `pks` holds each
/// key's values.
fn state_statements(
    states: &Rows<RowState>,
    versions: &HashMap<String, Versions<'_>>,
    saved: &[(&str, Vec<String>)],
    pks: &FxHashMap<(&str, &str), Vec<Value>>,
    positions: &FxHashMap<(&str, &str), Position>,
) -> Result<Vec<Statement>> {
    let mut out = Vec::new();
    for (table, keys) in saved {
        if keys.is_empty() {
            continue;
        }
        let table: &str = table;
        let v = versions
            .get(table)
            .ok_or_else(|| Error::Corrupt("version table not opened".into()))?;
        let mut rows: Vec<(&[Value], &RowState, &Position)> = Vec::with_capacity(keys.len());
        for key in keys {
            let state =
                row(states, table, key).ok_or_else(|| Error::Corrupt("state not loaded".into()))?;
            let pk = pks
                .get(&(table, key.as_str()))
                .ok_or_else(|| Error::Corrupt(format!("no key values for {key}")))?;
            let position = positions
                .get(&(table, key.as_str()))
                .ok_or_else(|| Error::Corrupt(format!("no position for {key}")))?;
            rows.push((pk.as_slice(), state, position));
        }
        out.extend(v.positioned_statements(&rows)?);
    }
    Ok(out)
}
