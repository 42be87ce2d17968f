//! A push: one hub transaction per batch of one origin's changes, under the
//! sequence lock. The fast path merges and writes the whole batch with
//! multi-row statements; when the hub refuses a change, the transaction
//! rolls back and the careful path goes change by change, each in a
//! savepoint, to halt or park exactly the refused ones.

use sea_orm::sea_query::{
    Alias, CommonTableExpression, Expr, ExprTrait, InsertStatement, Query, SubQueryStatement,
    UnionType, WithClause,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, TransactionTrait};

use super::access::{Account, BatchOwners};
use super::batches;
use super::held;
use super::merge::Merge;
use super::resent;
use super::tables::hub_version_table;
use super::tables::{HUB_COLUMNS, HUB_META, HUB_SCHEMA_VERSION, PEERS, REJECTED};
use super::validate::{check_clock, validate};
use crate::dialect::{self, Dialect, Place};
use crate::model::change::{Change, TableSpec};
use crate::model::clock::NodeId;
use crate::model::error::{Error, Result};
use crate::model::protocol::{ClockAhead, PushAck, RejectPolicy, Rejection};
use crate::model::value::pk_key;
use crate::store::codec::{db_sequence, sequence};
use crate::store::stats::{analyze, crossed_doubling};
use crate::store::version_table::{ROW_META, ordinal};
use crate::store::versions::Ordinals;

/// Apply a batch of one origin's changes, in its order, at most once each.
///
/// # Errors
/// [`Error::Config`] for a batch of several origins or out of order;
/// [`Error::Offline`] when the hub cannot be reached.
pub(super) async fn push(
    db: &DatabaseConnection,
    specs: &[TableSpec],
    policy: RejectPolicy,
    max_skew_us: u64,
    batch: &[Change],
    account: Option<&Account>,
) -> Result<PushAck> {
    let Some(origin) = check_batch(batch)? else {
        return Ok(PushAck::default());
    };
    let push = Push {
        db,
        dialect: dialect::of_db(db)?,
        specs,
        policy,
        max_skew_us,
        origin,
        account,
    };
    // Fast path: every change valid, the whole batch at once, deletes
    // first (a delete may free a unique value an insert of the batch takes:
    // capture logs the insert first), then upserts first (an update may
    // move a child away from a parent the batch deletes). If the hub
    // refuses both, roll back and go through it change by change.
    for deletes_first in [true, false] {
        if let Some(ack) = push.once(batch, false, deletes_first).await? {
            return Ok(ack);
        }
    }
    push.once(batch, true, true)
        .await?
        .ok_or_else(|| Error::Corrupt("the careful push fell back".into()))
}

/// The origin of a batch (`None` for an empty one).
///
/// # Errors
/// [`Error::Config`] for a batch of several origins or out of sequence
/// order.
fn check_batch(batch: &[Change]) -> Result<Option<NodeId>> {
    let Some(first) = batch.first() else {
        return Ok(None);
    };
    let origin = first.id.origin;
    if batch.iter().any(|c| c.id.origin != origin) {
        return Err(Error::Config(
            "a push batch must come from one origin".into(),
        ));
    }
    if batch.windows(2).any(|w| w[1].id.seq <= w[0].id.seq) {
        return Err(Error::Config(
            "a push batch must be in increasing sequence order".into(),
        ));
    }
    Ok(Some(origin))
}

/// One push of one origin's batch.
struct Push<'a> {
    db: &'a DatabaseConnection,
    dialect: &'static dyn Dialect,
    specs: &'a [TableSpec],
    policy: RejectPolicy,
    max_skew_us: u64,
    origin: NodeId,
    /// The user pushing, through a hub that serves accounts.
    account: Option<&'a Account>,
}

/// Why the hub refuses a change before trying it.
struct Refusal {
    reason: String,
    /// A stamp too far ahead of the hub's clock: halt whatever the policy
    /// (the change must stay with its device, not be parked and
    /// acknowledged).
    clock: Option<ClockAhead>,
    /// Parked whatever the policy (a row of another user; see
    /// [`access`](super::access)).
    parked_always: bool,
}

/// What a push reads first (see [`Push::head`]).
struct Head {
    /// `next_seq` and `schema_version` of the hub's metadata.
    meta: std::collections::HashMap<String, String>,
    progress: OriginProgress,
    now_us: u64,
    /// The column registers of the batch's tables, by table.
    registers: std::collections::HashMap<String, Ordinals>,
}

/// Where the origin's stream stands at the hub.
struct OriginProgress {
    /// Its changes up to this sequence are applied.
    applied: u64,
    /// Whether the hub has a progress row for it.
    known: bool,
}

impl Push<'_> {
    /// One push transaction. The fast path (`careful` false) gives up
    /// (rolls back, `None`) at the first change the hub refuses; the careful
    /// path finds the ones that cannot be applied and halts or parks them.
    /// `deletes_first`: see [`Merge::deletes_first`].
    async fn once(
        &self,
        batch: &[Change],
        careful: bool,
        deletes_first: bool,
    ) -> Result<Option<PushAck>> {
        let tx = self
            .db
            .begin()
            .await
            .map_err(|e| Error::from(e).or_offline())?;
        // The sequence lock: held until commit, so hub sequences commit in order.
        HUB_META
            .lock(&tx, "next_seq")
            .await
            .map_err(Error::or_offline)?;
        let Head {
            meta,
            mut progress,
            now_us,
            registers,
        } = self.head(&tx, batch).await?;
        let start_seq: u64 = meta
            .get("next_seq")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Corrupt("hub next_seq".into()))?;
        // Read under the lock: a server of this release still running
        // after a later one raised the version stops here, instead of
        // writing what the later release no longer reads.
        let version: i64 = meta
            .get("schema_version")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if version > HUB_SCHEMA_VERSION {
            return Err(Error::Config(format!(
                "the hub's schema version is {version}, newer than this release's \
                 {HUB_SCHEMA_VERSION}: a server of a later release upgraded it; upgrade this one"
            )));
        }
        let mut ack = PushAck::default();
        // Delivered before (a re-sent batch): acknowledged, never re-applied,
        // with the conflicts they raised.
        let (done, todo): (Vec<&Change>, Vec<&Change>) =
            batch.iter().partition(|c| c.id.seq <= progress.applied);
        // Only if it is the change applied under its id: another device
        // may have used this origin id (see `resent`). Those before the
        // first that is not are acknowledged; nothing else is applied.
        let clash = resent::clash(&tx, self.origin, &done).await?;
        let done = match &clash {
            Some((i, _)) => &done[..*i],
            None => &done[..],
        };
        ack.acknowledged.extend(done.iter().map(|c| c.id));
        let seqs: Vec<u64> = done.iter().map(|c| c.id.seq).collect();
        if self.specs.iter().any(|s| s.policy.holds_conflicts()) {
            ack.conflicts = held::of(&tx, self.origin, &seqs).await?;
        }
        // Those parked when first pushed: reported again with their reason.
        ack.parked = resent::parked(&tx, self.origin, &seqs).await?;
        if let Some((_, clashed)) = clash {
            tx.commit().await.map_err(|e| Error::from(e).or_offline())?;
            ack.clashed = Some(clashed);
            return Ok(Some(ack));
        }
        let mut verdicts: Vec<Option<Refusal>> =
            todo.iter().map(|c| self.refusal(c, now_us)).collect();
        let mut merge = Merge::new(&tx, self.dialect, self.specs, start_seq);
        merge.registers = registers;
        merge.plain_new = self.account.is_some();
        merge.deletes_first = deletes_first;
        if let Some(account) = self.account {
            self.account_refusals(account, &mut merge, &todo, &mut verdicts)
                .await?;
        }
        if !careful && verdicts.iter().all(Option::is_none) {
            // No savepoint: a failure rolls back the transaction and the
            // caller goes again, carefully.
            match merge.write(&todo).await {
                Ok(()) => {}
                Err(e) if e.is_retryable() => return Err(e.or_offline()),
                Err(_) => {
                    drop(merge);
                    tx.rollback()
                        .await
                        .map_err(|e| Error::from(e).or_offline())?;
                    return Ok(None);
                }
            }
            ack.acknowledged.extend(todo.iter().map(|c| c.id));
            progress.applied = todo.last().map_or(progress.applied, |c| c.id.seq);
        } else {
            self.careful(&tx, &mut merge, &todo, verdicts, &mut ack, &mut progress)
                .await?;
        }
        let (next_seq, held, settled, applied, spent) = merge.outcome();
        // The merge's rows are freed while the database records the batch
        // and commits.
        let finishing = async {
            if !held.is_empty() {
                held::keep(&tx, &held).await?;
            }
            let record = batches::record(self.origin, start_seq, &applied)?;
            self.finish(tx, record, &progress, next_seq).await
        };
        let (finished, ()) = tokio::join!(biased; finishing, async move { drop(spent) });
        finished?;
        if crossed_doubling(start_seq, next_seq) {
            // The row states are looked up by key, and the log is read by
            // a range of its key that the planner must know the size of:
            // without statistics it guesses a few hundred rows and reads
            // the whole range from the cursor to the tip, then sorts it,
            // for each page of a pull (19 ms instead of 0.2 ms a page at
            // 50k entries). The users' tables too, which hold live rows'
            // states: without statistics a push's lookup of 500 keys
            // scans the table (4.6 ms a batch on average over the first
            // 50k rows, more than the upsert of the rows).
            let names: Vec<String> = self
                .specs
                .iter()
                .map(|s| hub_version_table(&s.name))
                .collect();
            // And each row's position, by which pulls read them.
            let keys = |position: &'static str| -> Vec<Vec<&str>> {
                self.specs
                    .iter()
                    .map(|s| {
                        s.pk.iter()
                            .map(|c| c.name.as_str())
                            .chain([position])
                            .collect()
                    })
                    .collect()
            };
            let (version_keys, user_keys) = (keys("hub_seq"), keys(ROW_META[0]));
            let tables: Vec<(Place<'_>, &[&str])> = names
                .iter()
                .zip(&version_keys)
                .map(|(n, k)| (Place::own(n), k.as_slice()))
                .chain(
                    self.specs
                        .iter()
                        .zip(&user_keys)
                        .map(|(s, k)| (Place::of(self.dialect, s), k.as_slice())),
                )
                .collect();
            analyze(self.db, &tables).await;
        }
        ack.conflicts.extend(held.into_iter().flat_map(|(_, c)| c));
        ack.settled = settled;
        Ok(Some(ack))
    }

    /// The careful path: one change at a time, each in a savepoint, to find
    /// the ones that cannot be applied; park them or halt at the first.
    async fn careful(
        &self,
        tx: &DatabaseTransaction,
        merge: &mut Merge<'_>,
        todo: &[&Change],
        verdicts: Vec<Option<Refusal>>,
        ack: &mut PushAck,
        progress: &mut OriginProgress,
    ) -> Result<()> {
        // Under an account, the rows whose write the database refused in
        // this push (and whether that refusal is parked whatever the
        // policy): the batch's later changes of one were judged against an
        // owner its refused insert would have recorded, and are refused
        // with it (a delete would log a tombstone of a row the hub never
        // had, holding its key for every user).
        let mut failed: std::collections::HashMap<(String, String), bool> =
            std::collections::HashMap::new();
        let row_of = |c: &Change| -> Result<(String, String)> {
            let values: Vec<_> = c.pk.iter().map(|(_, v)| v.clone()).collect();
            Ok((c.table.clone(), pk_key(&values)?))
        };
        for (c, verdict) in todo.iter().zip(verdicts) {
            let clock = verdict.as_ref().and_then(|v| v.clock);
            let mut parked_always = verdict.as_ref().is_some_and(|v| v.parked_always);
            let earlier = match (&verdict, self.account) {
                (None, Some(_)) if !failed.is_empty() => failed.get(&row_of(c)?).copied(),
                _ => None,
            };
            let reason = match verdict {
                Some(v) => Some(v.reason),
                None if earlier.is_some() => {
                    parked_always = earlier == Some(true);
                    Some(format!(
                        "{}: an earlier change of this row in the same push was refused",
                        c.table
                    ))
                }
                None => {
                    let sp = tx.begin().await?;
                    let mut sub = merge.nested(&sp);
                    match sub.write(&[*c]).await {
                        Ok(()) => {
                            merge.absorb(sub);
                            sp.commit().await?;
                            None
                        }
                        Err(e) if e.is_retryable() => return Err(e.or_offline()),
                        Err(e) => {
                            drop(sub);
                            sp.rollback().await?;
                            // Under an account, a value the database holds
                            // already (a key it takes for another, as
                            // MySQL's `'k '` for `'k'`; a unique value) is
                            // parked whatever the policy, as a row another
                            // user holds is: a halt there would let another
                            // user stop this one's stream for good.
                            if self.account.is_some()
                                && e.kind() == crate::model::error::ErrorKind::UniqueViolation
                            {
                                parked_always = true;
                            }
                            if self.account.is_some() {
                                failed.insert(row_of(c)?, parked_always);
                            }
                            Some(format!("{}: {e}", c.table))
                        }
                    }
                }
            };
            if let Some(reason) = reason {
                let rejection = Rejection {
                    id: c.id,
                    table: c.table.clone(),
                    reason,
                };
                if (self.policy == RejectPolicy::Park || parked_always) && clock.is_none() {
                    park(tx, c, &rejection.reason).await?;
                    ack.parked.push(rejection);
                } else {
                    ack.halted = Some(rejection);
                    ack.clock_ahead = clock;
                    break;
                }
            }
            ack.acknowledged.push(c.id);
            progress.applied = c.id.seq;
        }
        Ok(())
    }

    /// Why the hub refuses `c` before trying it, if it does: a change
    /// stamped too far ahead of the hub's clock, or one that does not fit
    /// the hub's tables.
    fn refusal(&self, c: &Change, now_us: u64) -> Option<Refusal> {
        if let Err(reason) = check_clock(c, now_us, self.max_skew_us) {
            let clock = ClockAhead {
                id: c.id,
                stamped_us: c.hlc.physical,
                hub_now_us: now_us,
                max_skew_us: self.max_skew_us,
            };
            return Some(Refusal {
                reason,
                clock: Some(clock),
                parked_always: false,
            });
        }
        let spec = self.specs.iter().find(|s| s.name == c.table);
        validate(c, spec, self.dialect).err().map(|reason| Refusal {
            reason,
            clock: None,
            parked_always: false,
        })
    }

    /// Refuse the changes `account` may not make, checked in order against
    /// the rows' states (loaded into `merge`, which writes them next).
    async fn account_refusals(
        &self,
        account: &Account,
        merge: &mut Merge<'_>,
        todo: &[&Change],
        verdicts: &mut [Option<Refusal>],
    ) -> Result<()> {
        let keyed = todo
            .iter()
            .map(|c| {
                let values: Vec<_> = c.pk.iter().map(|(_, v)| v.clone()).collect();
                Ok((*c, pk_key(&values)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut batch = BatchOwners::default();
        // A key of another variant than its column takes is refused before
        // any state is looked up by it: bound, it may not even compare with
        // the column (text for a PostgreSQL `uuid`).
        for ((c, key), verdict) in keyed.iter().zip(verdicts.iter_mut()) {
            let Some(spec) = self.specs.iter().find(|s| s.name == c.table) else {
                continue;
            };
            if verdict.is_none()
                && super::access::key_types(spec, c).is_err()
                && let Some(r) = account.refusal(spec, c, key, None, &mut batch)
            {
                *verdict = Some(Refusal {
                    reason: r.reason,
                    clock: None,
                    parked_always: r.parked_always,
                });
            }
        }
        // Only the changes not refused already, of installed tables: a
        // refused change's key may not even bind (the check refused it).
        let wanted: Vec<(&Change, String)> = keyed
            .iter()
            .zip(verdicts.iter())
            .filter(|((c, _), v)| v.is_none() && self.specs.iter().any(|s| s.name == c.table))
            .map(|(k, _)| k.clone())
            .collect();
        // Each key whose state cannot be looked up (a key the database
        // takes for another row's, see `Versions::load_keyed`; a value its
        // column refuses), with why: refused as the database refuses a row
        // of a key another user holds. Looked up in a savepoint, so that a
        // failed lookup leaves the push's transaction usable.
        let mut unreadable: std::collections::HashMap<(String, String), Error> =
            std::collections::HashMap::new();
        if let Err(e) = load_in_savepoint(merge, &wanted).await {
            if e.is_retryable() {
                return Err(e);
            }
            for k in &wanted {
                if let Err(e) = load_in_savepoint(merge, std::slice::from_ref(k)).await {
                    if e.is_retryable() {
                        return Err(e);
                    }
                    unreadable.insert((k.0.table.clone(), k.1.clone()), e);
                }
            }
        }
        for ((c, key), verdict) in keyed.iter().zip(verdicts.iter_mut()) {
            if verdict.is_some() {
                continue;
            }
            let Some(spec) = self.specs.iter().find(|s| s.name == c.table) else {
                continue;
            };
            if let Some(e) = unreadable.get(&(c.table.clone(), key.clone())) {
                *verdict = Some(Refusal {
                    reason: format!("{}: {e}", c.table),
                    clock: None,
                    parked_always: true,
                });
                continue;
            }
            let state = merge.state(&c.table, key);
            if let Some(r) = account.refusal(spec, c, key, state, &mut batch) {
                *verdict = Some(Refusal {
                    reason: r.reason,
                    clock: None,
                    parked_always: r.parked_always,
                });
            }
        }
        Ok(())
    }

    /// What a push reads under the sequence lock, in one statement: the
    /// hub's next sequence and schema version, how far the origin's
    /// stream was applied before this push, the hub database's clock
    /// (microseconds since the epoch), and the column registers of the
    /// tables `batch` writes (read after the lock, so as fresh as a read
    /// at each table's first write; see [`Merge::registers`]). On
    /// PostgreSQL it also asks for custom plans (see
    /// [`Dialect::plan_hint`]).
    async fn head(&self, tx: &DatabaseTransaction, batch: &[Change]) -> Result<Head> {
        let applied = Query::select()
            .column(Alias::new("applied_seq"))
            .from(Alias::new(PEERS))
            .and_where(Expr::col(Alias::new("origin")).eq(self.origin.to_string()))
            .to_owned();
        let hint = self.dialect.plan_hint_expr();
        let mut q = Query::select()
            .columns([Alias::new("key"), Alias::new("value")])
            .expr_as(
                sea_orm::sea_query::SimpleExpr::SubQuery(None, Box::new(applied.into())),
                Alias::new("applied"),
            )
            .expr_as(Expr::cust(self.dialect.now_us()), Alias::new("now"))
            .expr_as(Expr::cust("NULL"), Alias::new("spec"))
            .from(Alias::new(HUB_META.0))
            .and_where(Expr::col(Alias::new("key")).is_in(["next_seq", "schema_version"]))
            .to_owned();
        if let Some(hint) = hint {
            q.expr_as(Expr::cust(hint), Alias::new("hint"));
        }
        let mut tables: Vec<&str> = Vec::new();
        for c in batch {
            if !tables.contains(&c.table.as_str()) && self.specs.iter().any(|s| s.name == c.table) {
                tables.push(&c.table);
            }
        }
        if !tables.is_empty() {
            // `now` is NULL in the register's rows, `applied` is the
            // column's ordinal and `spec` its spec.
            let mut register = Query::select()
                .columns(["tbl", "col", "ord"].map(Alias::new))
                .expr(Expr::cust("NULL"))
                .column(Alias::new("spec"))
                .from(Alias::new(HUB_COLUMNS))
                .and_where(Expr::col(Alias::new("tbl")).is_in(tables.iter().copied()))
                .to_owned();
            if hint.is_some() {
                register.expr(Expr::cust("NULL"));
            }
            q.union(UnionType::All, register);
        }
        let rows = tx.query_all(&q).await?;
        let mut meta = std::collections::HashMap::with_capacity(2);
        let mut head = None;
        let mut pairs: std::collections::HashMap<String, Vec<(String, u16)>> =
            std::collections::HashMap::with_capacity(tables.len());
        let mut specs: std::collections::HashMap<String, Vec<(String, String)>> =
            std::collections::HashMap::with_capacity(tables.len());
        for r in &rows {
            let key: String = r.try_get("", "key")?;
            let value: String = r.try_get("", "value")?;
            let now: Option<i64> = r.try_get("", "now")?;
            let Some(now) = now else {
                let ord: i64 = r.try_get("", "applied")?;
                let ord = ordinal(HUB_COLUMNS, &key, ord)?;
                if let Some(spec) = r.try_get::<Option<String>>("", "spec")? {
                    specs
                        .entry(key.clone())
                        .or_default()
                        .push((value.clone(), spec));
                }
                pairs.entry(key).or_default().push((value, ord));
                continue;
            };
            if head.is_none() {
                let applied: Option<i64> = r.try_get("", "applied")?;
                let progress = match applied {
                    Some(_) => OriginProgress {
                        applied: sequence(r, "applied")?,
                        known: true,
                    },
                    None => OriginProgress {
                        applied: 0,
                        known: false,
                    },
                };
                head = Some((progress, now));
            }
            meta.insert(key, value);
        }
        let (progress, now) =
            head.ok_or_else(|| Error::Corrupt("the hub's metadata has no next_seq".into()))?;
        // A table with no row in the register gets an empty one: read
        // after the lock, it has no column yet.
        let registers = tables
            .iter()
            .map(|t| {
                let p = pairs.remove(*t).unwrap_or_default();
                let s = specs.remove(*t).unwrap_or_default();
                ((*t).to_owned(), Ordinals::new(p).with_specs(t, s))
            })
            .collect();
        Ok(Head {
            meta,
            progress,
            now_us: u64::try_from(now).unwrap_or(0),
            registers,
        })
    }

    /// Write the batch's `record`, the origin's progress and the next hub
    /// sequence, and commit. Where the dialect [writes in
    /// `WITH`](Dialect::writes_in_with) the three are one statement.
    async fn finish(
        &self,
        tx: DatabaseTransaction,
        record: Option<InsertStatement>,
        progress: &OriginProgress,
        next_seq: u64,
    ) -> Result<()> {
        let next = Query::update()
            .table(Alias::new(HUB_META.0))
            .value(Alias::new("value"), next_seq.to_string())
            .and_where(Expr::col(Alias::new("key")).eq("next_seq"))
            .to_owned();
        let applied = match progress.applied {
            0 => None,
            _ => Some(applied_statement(self.origin, progress)?),
        };
        if self.dialect.writes_in_with() && (record.is_some() || applied.is_some()) {
            // Not without a part: sea-query panics on an empty `WITH`.
            let mut with = WithClause::new();
            let parts = record
                .map(SubQueryStatement::from)
                .into_iter()
                .chain(applied);
            for (i, part) in parts.enumerate() {
                with.cte(
                    CommonTableExpression::new()
                        .query(part)
                        .table_name(Alias::new(format!("w{i}")))
                        .to_owned(),
                );
            }
            tx.execute(&next.with(with)).await?;
        } else {
            if let Some(record) = record {
                tx.execute(&record).await?;
            }
            match applied {
                Some(SubQueryStatement::InsertStatement(q)) => {
                    tx.execute(&q).await?;
                }
                Some(SubQueryStatement::UpdateStatement(q)) => {
                    tx.execute(&q).await?;
                }
                _ => {}
            }
            tx.execute(&next).await?;
        }
        tx.commit().await.map_err(|e| Error::from(e).or_offline())
    }
}

/// Load the states of `keyed` into `merge` inside a savepoint: a failure
/// (a key its column refuses, one the database takes for another's) is
/// rolled back, and the transaction goes on.
async fn load_in_savepoint(merge: &mut Merge<'_>, keyed: &[(&Change, String)]) -> Result<()> {
    let sp = merge.tx().begin().await?;
    let mut sub = merge.nested(&sp);
    let loaded = sub.load(keyed).await;
    match loaded {
        Ok(()) => {
            merge.absorb(sub);
            sp.commit().await?;
            Ok(())
        }
        Err(e) => {
            drop(sub);
            sp.rollback().await?;
            Err(e)
        }
    }
}

/// The last sequence of `origin` the hub holds (applied or parked), 0 for
/// an origin it never heard of.
pub(super) async fn applied<C: ConnectionTrait>(db: &C, origin: NodeId) -> Result<u64> {
    Ok(applied_row(db, origin).await?.unwrap_or(0))
}

/// The origin's progress row, if it has one.
async fn applied_row<C: ConnectionTrait>(db: &C, origin: NodeId) -> Result<Option<u64>> {
    let row = db
        .query_one(
            &Query::select()
                .column(Alias::new("applied_seq"))
                .from(Alias::new(PEERS))
                .and_where(Expr::col(Alias::new("origin")).eq(origin.to_string()))
                .to_owned(),
        )
        .await?;
    row.map(|r| sequence(&r, "applied_seq")).transpose()
}

/// The statement that records that `origin`'s changes up to
/// `progress.applied` are applied: an update of its progress row, or an
/// insert of its first.
fn applied_statement(origin: NodeId, progress: &OriginProgress) -> Result<SubQueryStatement> {
    let seq = db_sequence(progress.applied)?;
    Ok(if progress.known {
        Query::update()
            .table(Alias::new(PEERS))
            .value(Alias::new("applied_seq"), seq)
            .and_where(Expr::col(Alias::new("origin")).eq(origin.to_string()))
            .to_owned()
            .into()
    } else {
        Query::insert()
            .into_table(Alias::new(PEERS))
            .columns([Alias::new("origin"), Alias::new("applied_seq")])
            .values_panic([origin.to_string().into(), seq.into()])
            .to_owned()
            .into()
    })
}

/// Park a refused change in the rejected-changes table, with the reason.
async fn park<C: ConnectionTrait>(db: &C, change: &Change, reason: &str) -> Result<()> {
    let q = Query::insert()
        .into_table(Alias::new(REJECTED))
        .columns(["origin", "origin_seq", "tbl", "change", "reason"].map(Alias::new))
        .values_panic([
            change.id.origin.to_string().into(),
            db_sequence(change.id.seq)?.into(),
            change.table.clone().into(),
            serde_json::to_string(change)?.into(),
            reason.into(),
        ])
        .to_owned();
    db.execute(&q).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::change::{ChangeId, Op};
    use crate::model::testing::hlc;

    fn change(node: u8, seq: u64) -> Change {
        Change {
            id: ChangeId {
                origin: NodeId([node; 16]),
                seq,
            },
            table: "t".into(),
            pk: vec![],
            op: Op::Delete,
            columns: vec![],
            hlc: hlc(seq, node),
            base: vec![],
        }
    }

    #[test]
    fn a_batch_is_one_origins_in_increasing_order() {
        assert_eq!(check_batch(&[]).unwrap(), None);
        let one = [change(1, 4), change(1, 5), change(1, 9)];
        assert_eq!(check_batch(&one).unwrap(), Some(NodeId([1; 16])));
        let mixed = [change(1, 4), change(2, 5)];
        assert!(matches!(check_batch(&mixed), Err(Error::Config(m)) if m.contains("one origin")));
        for bad in [[change(1, 5), change(1, 5)], [change(1, 6), change(1, 5)]] {
            assert!(
                matches!(check_batch(&bad), Err(Error::Config(m)) if m.contains("increasing")),
                "{bad:?}"
            );
        }
    }
}
