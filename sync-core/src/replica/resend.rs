//! Sending every row state again, for a hub that lost changes: one
//! restored from a backup older than what it acknowledged.
//!
//! The acknowledged changes left the outbox long ago; what this replica
//! still knows of them is in its row states, with the clock of each
//! column's value and of the row's last delete. Each state goes out again
//! as changes carrying those clocks (one per clock: a change has one), so
//! the hub merges them as it merged the originals: what it still holds
//! wins where it is newer, what it lost comes back. Every state goes, not
//! only those this replica wrote: a device whose changes the hub lost may
//! never sync again, and a column this replica wrote alone could not make
//! a row the hub lost whole. Bases are left out, so no merge of these is
//! taken for a concurrent edit. A column with a conflict held here goes
//! out with the conflict's remote value and clock, which the hub held (the
//! local value is not settled yet: sent, it would win the hub over by its
//! clock, and taking the remote value here later would send nothing).

use std::collections::BTreeMap;

use sea_orm::{ConnectionTrait, DatabaseTransaction, TransactionTrait, Value};

use super::Replica;
use super::conflicts::held_remotes;
use super::entity::TableHandle;
use super::seal_state::SealState;
use super::tables::{LOCAL_META, OUTBOX};
use super::versions;
use crate::model::change::{Change, Op, TableSpec};
use crate::model::clock::Hlc;
use crate::model::error::Result;
use crate::model::merge::RowState;
use crate::model::value::pk_key;
use crate::store::codec::db_sequence;

/// Row states read at a time.
const PAGE: u64 = 500;

impl Replica {
    /// Queue every row state in the outbox again (see the
    /// [module docs](self)) and remove the metadata `forget`, in one local
    /// transaction under the capture lock: a crash leaves either both or
    /// neither. Returns how many changes were queued.
    pub(crate) async fn resend_states(&self, forget: &[&str]) -> Result<usize> {
        let tx = self.connection().begin().await?;
        let mut state = SealState::lock_and_load(&tx).await?;
        let mut queued = 0;
        // Rows in registration order (parents first), deletes after them
        // in reverse order (children first).
        let mut deletes = Vec::new();
        for table in self.handles() {
            queued += queue_table(&tx, table.as_ref(), &mut state, &mut deletes).await?;
        }
        for (spec, dead) in deletes.into_iter().rev() {
            let changes: Vec<Change> = dead
                .into_iter()
                .map(|(pk, hlc)| state_change(&mut state, spec, pk, Op::Delete, Vec::new(), hlc))
                .collect();
            queued += changes.len();
            queue(&tx, &changes).await?;
        }
        LOCAL_META.remove(&tx, forget).await?;
        state.save(&tx).await?;
        tx.commit().await?;
        Ok(queued)
    }
}

/// Deleted rows of a table: key and the clock of the delete.
type Dead<'s> = (&'s TableSpec, Vec<(Vec<(String, Value)>, Hlc)>);

/// Queue the live rows of `spec`, page by page; collect its deleted ones.
async fn queue_table<'s>(
    tx: &DatabaseTransaction,
    table: &'s dyn TableHandle,
    state: &mut SealState,
    deletes: &mut Vec<Dead<'s>>,
) -> Result<usize> {
    let spec = table.spec();
    let mut versions = versions::open(tx, table).await?;
    let mut queued = 0;
    let mut dead = Vec::new();
    let mut after: Option<Vec<Value>> = None;
    loop {
        let page = versions.page(tx, after.as_deref(), false, PAGE).await?;
        let full = page.len() as u64 >= PAGE;
        after = page.last().map(|(k, _)| k.clone());
        let keys: Vec<String> = page.iter().map(|(k, _)| pk_key(k)).collect::<Result<_>>()?;
        let held = held_remotes(tx, &spec.name, &keys).await?;
        let mut changes = Vec::new();
        for ((pk, mut row), key) in page.into_iter().zip(keys) {
            let pk: Vec<(String, Value)> = spec.pk_names().into_iter().zip(pk).collect();
            if !row.is_live() {
                if let Some(d) = row.deleted_at {
                    dead.push((pk, d));
                }
                continue;
            }
            for c in &spec.columns {
                if let Some((value, clock)) = held.get(&(key.clone(), c.name.clone())) {
                    row.vals.insert(c.name.clone(), value.clone());
                    row.clocks.insert(c.name.clone(), *clock);
                }
            }
            changes.extend(row_changes(state, spec, pk, row));
        }
        queued += changes.len();
        queue(tx, &changes).await?;
        if !full {
            break;
        }
    }
    deletes.push((spec, dead));
    Ok(queued)
}

/// A live row's state as changes: its delete, if it has one; an insert of
/// every column at the oldest clock of its columns (a hub that lost the
/// row gets it whole, whatever the batch boundaries: a NOT NULL column
/// set at a later clock is in it too); then an update per later clock with
/// the columns of that clock, which gives each column its own clock back.
/// Merged, these give the hub the state's values and clocks; a column the
/// hub holds at a clock between the insert's and the column's own keeps
/// its value until the update that follows.
fn row_changes(
    state: &mut SealState,
    spec: &TableSpec,
    pk: Vec<(String, Value)>,
    row: RowState,
) -> Vec<Change> {
    let mut by_clock: BTreeMap<Hlc, Vec<(String, Value)>> = BTreeMap::new();
    for (column, value) in &row.vals {
        if let Some(clock) = row.clocks.get(column) {
            by_clock
                .entry(*clock)
                .or_default()
                .push((column.clone(), value.clone()));
        }
    }
    let mut out = Vec::with_capacity(by_clock.len() + 1);
    if let Some(d) = row.deleted_at {
        out.push(state_change(
            state,
            spec,
            pk.clone(),
            Op::Delete,
            Vec::new(),
            d,
        ));
    }
    let Some(oldest) = by_clock.keys().next().copied() else {
        return out;
    };
    by_clock.remove(&oldest);
    let whole: Vec<(String, Value)> = spec
        .columns
        .iter()
        .filter_map(|c| row.vals.get(&c.name).map(|v| (c.name.clone(), v.clone())))
        .collect();
    out.push(state_change(
        state,
        spec,
        pk.clone(),
        Op::Insert,
        whole,
        oldest,
    ));
    for (clock, columns) in by_clock {
        out.push(state_change(
            state,
            spec,
            pk.clone(),
            Op::Update,
            columns,
            clock,
        ));
    }
    out
}

/// A change of this replica's next sequence, with the clock `hlc` it had.
fn state_change(
    state: &mut SealState,
    spec: &TableSpec,
    pk: Vec<(String, Value)>,
    op: Op,
    columns: Vec<(String, Value)>,
    hlc: Hlc,
) -> Change {
    let id = state.next_id();
    Change {
        id,
        table: spec.name.clone(),
        pk,
        op,
        columns,
        hlc,
        base: Vec::new(),
    }
}

/// Append `changes` to the outbox.
async fn queue(tx: &DatabaseTransaction, changes: &[Change]) -> Result<()> {
    let rows = changes
        .iter()
        .map(|c| Ok((vec![db_sequence(c.id.seq)?.into()], c)))
        .collect::<Result<Vec<_>>>()?;
    for q in OUTBOX.inserts(tx.get_database_backend(), rows)? {
        tx.execute_raw(q).await?;
    }
    Ok(())
}
