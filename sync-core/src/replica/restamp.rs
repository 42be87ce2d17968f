//! Stamping again the changes a wrong clock stamped in the future, once the
//! clock is right.
//!
//! A device whose clock ran ahead stamps its writes with that time, and its
//! hybrid clock then never goes below it (a clock must not go back). The
//! hub refuses such changes (they would win every later edit of their
//! columns), and they stay queued. Once the device's clock is right again,
//! waiting for real time to catch up would keep them (and every later
//! write, stamped after them) refused for as long as the clock was ahead.
//! Instead the replica stamps them again at its present time: each write
//! counts as made now, when it first can be sent. Its row states take the
//! new stamps too, and its clock goes back to the latest stamp that is not
//! in the future.

use std::collections::HashMap;
use std::sync::Arc;

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, DatabaseTransaction, TransactionTrait, Value};

use super::Replica;
use super::entity::TableHandle;
use super::seal_state::SealState;
use super::tables::{LOCAL_META, OUTBOX};
use super::versions;
use crate::model::change::ColumnBase;
use crate::model::clock::{Hlc, HlcClock, NodeId, wall_clock_us};
use crate::model::error::Result;
use crate::model::merge::RowState;
use crate::store::codec::{db_sequence, sequence};

/// Row states read at a time.
const PAGE: u64 = 500;

impl Replica {
    /// Stamp again, at the present time, every pending change and row-state
    /// clock of this replica stamped after `limit_us` (see the
    /// [module docs](self)), in one local transaction under the capture
    /// lock. Returns how many pending changes were stamped again.
    pub(crate) async fn restamp_ahead(&self, limit_us: u64) -> Result<usize> {
        let tx = self.connection().begin().await?;
        let mut state = SealState::lock_and_load(&tx).await?;
        let outbox = outbox_clocks(&tx).await?;
        let states = all_states(&tx, self.handles()).await?;
        // The clock goes back to the latest stamp that is not ahead.
        let wall = wall_clock_us();
        let mut base = Hlc {
            physical: Ord::min(wall, limit_us),
            logical: 0,
            node: state.node,
        };
        // Every clock it holds, and the latest it pulled: a pulled write
        // that lost here to a change stamped ahead left no clock in the
        // row states, and the change stamped again must still beat it
        // (even when the hub took it beyond the bound it sets now: the
        // change then stays refused, loud, instead of losing).
        let known = outbox
            .iter()
            .map(|(_, h, _)| *h)
            .chain(
                states
                    .iter()
                    .flat_map(|(_, _, s)| s.clocks.values().copied().chain(s.deleted_at)),
            )
            .filter(|h| h.physical <= limit_us)
            .chain(state.seen);
        for h in known {
            base = Ord::max(
                base,
                Hlc {
                    node: state.node,
                    ..h
                },
            );
        }
        state.clock = HlcClock::new(state.node, Some(base));
        // Pending changes, in order; the same write keeps one new stamp in
        // the row state. Stamps of this replica, under its present identity
        // or one it renewed (its changes keep their stamps); the outbox
        // also holds other devices' clocks after row states were sent
        // again to a restored hub (see `resend`), which stay as they are.
        let former = former_ids(&tx).await?;
        let own = |h: &Hlc| h.node == state.node || former.contains(&h.node);
        let mine = |h: &Hlc| h.physical > limit_us && own(h);
        let mut new: HashMap<Hlc, Hlc> = HashMap::new();
        for (_, h, _) in outbox.iter().filter(|(_, h, _)| mine(h)) {
            new.insert(*h, state.clock.tick(wall));
        }
        // Each change's new stamp, and the bases that named an old one (a
        // second edit of a column made while the clock was ahead: its base
        // is the first).
        for (seq, h, base) in &outbox {
            let mut base = base.clone();
            let mut moved = false;
            for b in &mut base {
                if let Some(n) = b.clock.and_then(|c| new.get(&c)) {
                    b.clock = Some(*n);
                    moved = true;
                }
            }
            let stamp = new.get(h);
            if stamp.is_none() && !moved {
                continue;
            }
            let mut q = Query::update();
            q.table(Alias::new(OUTBOX.name))
                .and_where(Expr::col(Alias::new("seq")).eq(db_sequence(*seq)?));
            if let Some(s) = stamp {
                q.value(Alias::new("hlc"), s.to_string());
            }
            if moved {
                q.value(Alias::new("base"), serde_json::to_string(&base)?);
            }
            tx.execute(&q).await?;
        }
        let mut moved_states: Vec<Vec<(Vec<Value>, RowState)>> =
            vec![Vec::new(); self.handles().len()];
        for (table, key, mut s) in states {
            let mut moved = false;
            // A pending change's stamp, or another of this identity's
            // (a write already overwritten by a later one here).
            let mut again = |h: &mut Hlc| {
                if let Some(n) = new.get(h) {
                    *h = *n;
                    moved = true;
                } else if h.physical > limit_us && h.node == state.node {
                    *h = *new.entry(*h).or_insert_with(|| state.clock.tick(wall));
                    moved = true;
                }
            };
            s.clocks.values_mut().for_each(&mut again);
            if let Some(d) = s.deleted_at.as_mut() {
                again(d);
            }
            if moved {
                moved_states[table].push((key, s));
            }
        }
        for (handle, moved) in self.handles().iter().zip(&moved_states) {
            if moved.is_empty() {
                continue;
            }
            let mut versions = versions::open(&tx, handle.as_ref()).await?;
            let moved: Vec<(&[Value], &RowState)> =
                moved.iter().map(|(k, s)| (k.as_slice(), s)).collect();
            versions.save(&tx, &moved).await?;
        }
        state.save(&tx).await?;
        tx.commit().await?;
        Ok(outbox.iter().filter(|(_, h, _)| mine(h)).count())
    }
}

/// The identities this replica had before it renewed its own (see
/// `Replica::renew_identity`).
pub(crate) async fn former_ids(tx: &DatabaseTransaction) -> Result<Vec<NodeId>> {
    let text = LOCAL_META.read(tx, FORMER_IDS).await?.unwrap_or_default();
    text.split_whitespace().map(str::parse).collect()
}

/// The metadata key of [`former_ids`]: the ids, separated by spaces.
pub(crate) const FORMER_IDS: &str = "former_ids";

/// Sequence, stamp and bases of every pending change, in order.
async fn outbox_clocks(tx: &DatabaseTransaction) -> Result<Vec<(u64, Hlc, Vec<ColumnBase>)>> {
    let q = Query::select()
        .columns(["seq", "hlc", "base"].map(Alias::new))
        .from(Alias::new(OUTBOX.name))
        .order_by(Alias::new("seq"), Order::Asc)
        .to_owned();
    let mut out = Vec::new();
    for r in tx.query_all(&q).await? {
        let hlc: String = r.try_get("", "hlc")?;
        let base: Option<String> = r.try_get("", "base")?;
        let base = base
            .map(|b| serde_json::from_str(&b))
            .transpose()?
            .unwrap_or_default();
        out.push((sequence(&r, "seq")?, hlc.parse()?, base));
    }
    Ok(out)
}

/// Every row state of the registered tables: the table's place in
/// `tables`, the key, the state.
async fn all_states(
    tx: &DatabaseTransaction,
    tables: &[Arc<dyn TableHandle>],
) -> Result<Vec<(usize, Vec<Value>, RowState)>> {
    let mut out = Vec::new();
    for (i, table) in tables.iter().enumerate() {
        let mut versions = versions::open(tx, table.as_ref()).await?;
        let mut after: Option<Vec<Value>> = None;
        loop {
            let page = versions.page(tx, after.as_deref(), false, PAGE).await?;
            let full = page.len() as u64 >= PAGE;
            after = page.last().map(|(k, _)| k.clone());
            out.extend(page.into_iter().map(|(k, s)| (i, k, s)));
            if !full {
                break;
            }
        }
    }
    Ok(out)
}
