//! Turning dirty markers into typed changes.
//!
//! A marker says "row `pk` was written"; the change is the difference
//! between the row as it is now and its last captured state (the *shadow*
//! in `_tidesync_rows`). Sealing a batch is one local transaction: read the
//! markers, the rows and the shadows, append the changes to the outbox with
//! their sequence numbers and clocks, update the shadows, delete the
//! markers that were not rewritten meanwhile, and persist the clock. A crash
//! at any point leaves either the markers or the changes, never neither.

use std::collections::HashMap;
use std::marker::PhantomData;

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query, SimpleExpr, ValueTuple};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, IdenStatic, Iterable, ModelTrait,
    PrimaryKeyToColumn, PrimaryKeyTrait, QueryFilter, QueryOrder, QuerySelect, TryGetableMany,
    Value,
};

use crate::change::{Change, ChangeId, ColumnBase, ColumnSpec, Op, TableSpec};
use crate::clock::{HlcClock, NodeId};
use crate::error::{Error, Result};
use crate::merge::RowState;
use crate::schema::{self, OUTBOX, ROWS};
use crate::store;
use crate::syncable::Syncable;
use crate::value::{check_value, pk_key, same_value};

/// A dirty marker read back from a dirty table.
#[derive(Debug, Clone)]
pub(crate) struct Marker {
    pub(crate) pk: Vec<Value>,
    pub(crate) ver: i64,
    pub(crate) wall_us: i64,
}

/// A row of a synced table: key values and synced column values (in
/// [`TableSpec::columns`] order).
pub(crate) type RowImage = (Vec<Value>, Vec<Value>);

/// The entity-specific half of capture, type-erased so a replica can hold
/// tables of different entities.
#[async_trait::async_trait]
pub(crate) trait TableHandle: Send + Sync {
    fn spec(&self) -> &TableSpec;

    /// Up to `limit` markers in key order (the primary key's index, no
    /// sort), skipping `offset`.
    async fn markers(
        &self,
        tx: &DatabaseTransaction,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<Marker>>;

    /// The current rows with these keys (missing rows are simply absent).
    async fn rows(&self, tx: &DatabaseTransaction, pks: &[Vec<Value>]) -> Result<Vec<RowImage>>;

    /// A page of all rows in key order.
    async fn scan(
        &self,
        tx: &DatabaseTransaction,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<RowImage>>;
}

/// [`TableHandle`] for a `Syncable` entity.
pub(crate) struct EntityTable<E: Syncable> {
    spec: TableSpec,
    columns: Vec<E::Column>,
    keys: Vec<E::Column>,
    _entity: PhantomData<fn() -> E>,
}

impl<E: Syncable> EntityTable<E> {
    /// The same table under another conflict policy (a registered resolver
    /// makes it `Custom`).
    pub(crate) fn with_policy(mut self, policy: crate::syncable::ConflictPolicy) -> Self {
        self.spec.policy = policy;
        self
    }

    pub(crate) fn new() -> Self {
        let skipped: Vec<String> = E::skipped_columns()
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect();
        let keys: Vec<E::Column> = E::PrimaryKey::iter().map(|k| k.into_column()).collect();
        let columns: Vec<E::Column> = E::Column::iter()
            .filter(|c| !skipped.iter().any(|s| s == c.as_str()))
            .collect();
        let spec_of = |c: &E::Column| {
            let def = c.def();
            ColumnSpec {
                name: c.as_str().to_owned(),
                ty: def.get_column_type().clone(),
                nullable: def.is_null(),
            }
        };
        let spec = TableSpec {
            name: E::default().table_name().to_owned(),
            pk: keys.iter().map(spec_of).collect(),
            columns: columns.iter().map(spec_of).collect(),
            local_only: E::Column::iter()
                .filter(|c| skipped.iter().any(|s| s == c.as_str()))
                .map(|c| spec_of(&c))
                .collect(),
            policy: E::POLICY,
            single_writer: E::SINGLE_WRITER,
        };
        EntityTable {
            spec,
            columns,
            keys,
            _entity: PhantomData,
        }
    }

    fn image(&self, m: &E::Model) -> RowImage {
        (
            self.keys.iter().map(|c| m.get(*c)).collect(),
            self.columns.iter().map(|c| m.get(*c)).collect(),
        )
    }
}

#[async_trait::async_trait]
impl<E: Syncable> TableHandle for EntityTable<E>
where
    E::Model: Sync,
{
    fn spec(&self) -> &TableSpec {
        &self.spec
    }

    async fn markers(
        &self,
        tx: &DatabaseTransaction,
        limit: u64,
        offset: u64,
    ) -> Result<Vec<Marker>> {
        let names = self.spec.pk_names();
        let mut q = Query::select();
        q.columns(names.iter().map(Alias::new))
            .columns([Alias::new("ver"), Alias::new("wall_us")])
            .from(Alias::new(schema::dirty_table(&self.spec.name)))
            .limit(limit)
            .offset(offset);
        for n in &names {
            q.order_by(Alias::new(n), Order::Asc);
        }
        let rows = tx.query_all(&q).await?;
        rows.iter()
            .map(|r| {
                let pk = <<E::PrimaryKey as PrimaryKeyTrait>::ValueType as TryGetableMany>::try_get_many(
                    r, "", &names,
                )
                .map_err(sea_orm::DbErr::from)?;
                let pk: ValueTuple = pk.into();
                Ok(Marker {
                    pk: pk.into_iter().collect(),
                    ver: r.try_get("", "ver")?,
                    wall_us: r.try_get("", "wall_us")?,
                })
            })
            .collect()
    }

    async fn rows(&self, tx: &DatabaseTransaction, pks: &[Vec<Value>]) -> Result<Vec<RowImage>> {
        if pks.is_empty() {
            return Ok(Vec::new());
        }
        let cond = if let [key] = self.keys.as_slice() {
            // One key column: `IN (...)`.
            Condition::all().add(key.is_in(pks.iter().filter_map(|pk| pk.first().cloned())))
        } else {
            let mut any = Condition::any();
            for pk in pks {
                let mut all = Condition::all();
                for (c, v) in self.keys.iter().zip(pk) {
                    all = all.add(c.eq(v.clone()));
                }
                any = any.add(all);
            }
            any
        };
        let models = E::find().filter(cond).all(tx).await?;
        Ok(models.iter().map(|m| self.image(m)).collect())
    }

    async fn scan(
        &self,
        tx: &DatabaseTransaction,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<RowImage>> {
        let mut q = E::find();
        for c in &self.keys {
            q = q.order_by_asc(*c);
        }
        let models = q.offset(offset).limit(limit).all(tx).await?;
        Ok(models.iter().map(|m| self.image(m)).collect())
    }
}

/// Clock and sequence state of a capture transaction.
pub(crate) struct SealState {
    pub(crate) node: NodeId,
    pub(crate) clock: HlcClock,
    pub(crate) next_seq: u64,
    /// Sequence and clock as loaded.
    loaded: (u64, crate::clock::Hlc),
}

impl SealState {
    /// Take the capture lock (a row lock on PostgreSQL/MySQL, the write lock
    /// on SQLite) and load clock and sequence.
    pub(crate) async fn lock_and_load(tx: &DatabaseTransaction, node: NodeId) -> Result<Self> {
        schema::LOCAL_META.lock(tx, "next_seq").await?;
        store::custom_plans(tx).await?;
        let mut meta = schema::LOCAL_META
            .read_many(tx, &["next_seq", "hlc"])
            .await?;
        let next_seq = meta
            .remove("next_seq")
            .ok_or_else(|| Error::Corrupt("next_seq missing".into()))?;
        let next_seq = next_seq
            .parse()
            .map_err(|_| Error::Corrupt(format!("next_seq `{next_seq}` is not a number")))?;
        let last = match meta.remove("hlc") {
            Some(s) if !s.is_empty() => Some(s.parse()?),
            _ => None,
        };
        let clock = HlcClock::new(node, last);
        Ok(SealState {
            node,
            loaded: (next_seq, clock.last()),
            clock,
            next_seq,
        })
    }

    /// Persist sequence and clock, where they moved.
    pub(crate) async fn save(&self, tx: &DatabaseTransaction) -> Result<()> {
        self.save_with(tx, &[]).await
    }

    /// Persist sequence and clock where they moved, and `more` metadata,
    /// in one statement.
    pub(crate) async fn save_with(
        &self,
        tx: &DatabaseTransaction,
        more: &[(&str, &str)],
    ) -> Result<()> {
        let next_seq = self.next_seq.to_string();
        let hlc = self.clock.last().to_string();
        let mut values = more.to_vec();
        if self.next_seq != self.loaded.0 {
            values.push(("next_seq", &next_seq));
        }
        if self.clock.last() != self.loaded.1 {
            values.push(("hlc", &hlc));
        }
        schema::LOCAL_META.upsert_many(tx, &values).await
    }
}

/// What one capture pass did.
#[derive(Debug, Default)]
pub struct CaptureReport {
    /// Changes appended to the outbox.
    pub captured: usize,
    /// Markers looked at.
    pub examined: usize,
    /// Rows that could not be captured (e.g. a NaN): their markers stay and
    /// are retried by the next capture, after the row is fixed.
    pub rejected: Vec<Error>,
}

/// Diff one row against its shadow. `None` when nothing changed.
pub(crate) fn diff(
    spec: &TableSpec,
    current: Option<&[Value]>,
    shadow: Option<&RowState>,
) -> Option<(Op, Vec<(String, Value)>)> {
    let live_shadow = shadow.filter(|s| s.is_live());
    match (current, live_shadow) {
        (None, None) => None,
        (None, Some(_)) => Some((Op::Delete, Vec::new())),
        (Some(row), None) => Some((
            Op::Insert,
            spec.columns
                .iter()
                .map(|c| c.name.clone())
                .zip(row.iter().cloned())
                .collect(),
        )),
        (Some(row), Some(s)) => {
            let changed: Vec<(String, Value)> = spec
                .columns
                .iter()
                .zip(row)
                .filter(|(c, v)| s.vals.get(&c.name).is_none_or(|old| !same_value(old, v)))
                .map(|(c, v)| (c.name.clone(), v.clone()))
                .collect();
            (!changed.is_empty()).then_some((Op::Update, changed))
        }
    }
}

/// Seal up to `limit` markers of one table (skipping `offset` rejected ones).
/// Returns how many markers were read.
pub(crate) async fn seal_table(
    tx: &DatabaseTransaction,
    table: &dyn TableHandle,
    state: &mut SealState,
    limit: u64,
    offset: u64,
    phase: Phase,
    report: &mut CaptureReport,
) -> Result<Sealed> {
    let spec = table.spec();
    let markers = table.markers(tx, limit, offset).await?;
    if markers.is_empty() {
        return Ok(Sealed::default());
    }
    let mut kept = 0usize;
    let pks: Vec<Vec<Value>> = markers.iter().map(|m| m.pk.clone()).collect();
    let keys: Vec<String> = pks.iter().map(|p| pk_key(p)).collect::<Result<_>>()?;
    let mut current: HashMap<String, Vec<Value>> = HashMap::new();
    for (pk, vals) in table.rows(tx, &pks).await? {
        current.insert(pk_key(&pk)?, vals);
    }
    // Markers are keyed by row, so each row is sealed once here: its row
    // and shadow are taken out of the maps, not copied.
    let mut shadows = store::load_states(tx, ROWS, &spec.name, &keys).await?;

    let mut outbox: Vec<(Vec<SimpleExpr>, usize)> = Vec::new();
    let mut new_states: Vec<(String, RowState)> = Vec::new();
    let mut sealed_markers: Vec<ValueTuple> = Vec::new();
    let mut appended = 0usize;

    for (marker, key) in markers.iter().zip(&keys) {
        report.examined += 1;
        let row = current.get(key).map(Vec::as_slice);
        let taken = shadows.remove(key);
        let shadow = taken.as_ref();
        let diffed = diff(spec, row, shadow);
        let deferred = matches!(
            (&diffed, phase),
            (Some((Op::Delete, _)), Phase::Upserts)
                | (Some((Op::Insert | Op::Update, _)), Phase::Deletes)
        );
        if deferred {
            kept += 1;
            continue;
        }
        if let Some(bad) = row.and_then(|row| {
            spec.columns
                .iter()
                .zip(row)
                .find_map(|(c, v)| check_value(&spec.name, &c.name, Some(&c.ty), v, None).err())
        }) {
            report.rejected.push(bad);
            kept += 1;
            continue;
        }
        let mut tuple = marker.pk.clone();
        tuple.push(Value::BigInt(Some(marker.ver)));
        sealed_markers.push(ValueTuple::Many(tuple));
        let Some((op, columns)) = diffed else {
            continue;
        };
        let wall = u64::try_from(marker.wall_us).unwrap_or(0);
        let hlc = state.clock.tick(wall);
        let change = Change {
            id: ChangeId {
                origin: state.node,
                seq: state.next_seq,
            },
            table: spec.name.clone(),
            pk: spec
                .pk_names()
                .into_iter()
                .zip(marker.pk.iter().cloned())
                .collect(),
            base: if spec.policy.needs_base() {
                columns
                    .iter()
                    .map(|(c, _)| ColumnBase {
                        column: c.clone(),
                        value: shadow
                            .filter(|s| s.is_live())
                            .and_then(|s| s.vals.get(c).cloned()),
                        clock: shadow.and_then(|s| s.clocks.get(c).copied()),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            op,
            columns,
            hlc,
        };
        state.next_seq += 1;
        appended += 1;

        let size = change
            .columns
            .iter()
            .map(|(_, v)| crate::value::approx_size(v))
            .sum::<usize>()
            + 200;
        outbox.push((outbox_row(&change)?, size));
        let next = match taken {
            Some(mut next) => {
                next.apply(&change);
                next
            }
            None => RowState::of_change(change),
        };
        new_states.push((key.clone(), next));
    }

    if appended > 0 {
        // The database writes the outbox while the statements that save
        // the states are built.
        let backend = tx.get_database_backend();
        let inserts: Vec<_> = crate::apply::batched(&outbox_insert(), outbox)
            .iter()
            .map(|q| backend.build(q))
            .collect();
        let saves = crate::apply::execute_while(tx, inserts, || {
            let states: Vec<_> = new_states
                .iter()
                .map(|(k, s)| (k.as_str(), s, None))
                .collect();
            store::state_statements(ROWS, &spec.name, &states)
        })
        .await?;
        for q in saves {
            tx.execute(&q).await?;
        }
    }
    if !sealed_markers.is_empty() {
        // Only markers whose version is unchanged: a write that committed
        // after we read the row bumped `ver` and keeps its marker.
        let mut cols: Vec<SimpleExpr> = spec
            .pk
            .iter()
            .map(|c| Expr::col(Alias::new(&c.name)))
            .collect();
        cols.push(Expr::col(Alias::new("ver")));
        let del = Query::delete()
            .from_table(Alias::new(schema::dirty_table(&spec.name)))
            .and_where(Expr::tuple(cols).in_tuples(sealed_markers))
            .to_owned();
        tx.execute(&del).await?;
    }
    report.captured += appended;
    Ok(Sealed {
        read: markers.len(),
        kept,
    })
}

/// Which changes a sealing round emits. A capture pass seals inserts and
/// updates table by table in registration order (parents first), then
/// deletes in reverse order (children first), so the outbox order satisfies
/// foreign keys between synced tables whatever the batch boundaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Inserts and updates; delete markers wait.
    Upserts,
    /// Deletes; other markers wait for the next pass.
    Deletes,
}

/// What one [`seal_table`] call did with the markers it read.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sealed {
    /// Markers read.
    pub(crate) read: usize,
    /// Markers left in place (rejected, or waiting for the other phase).
    pub(crate) kept: usize,
}

/// The (phase, table) rounds of a capture pass, in the order that keeps
/// foreign keys satisfied.
pub(crate) fn phases(
    tables: &[std::sync::Arc<dyn TableHandle>],
) -> impl Iterator<Item = (Phase, &std::sync::Arc<dyn TableHandle>)> {
    tables
        .iter()
        .map(|t| (Phase::Upserts, t))
        .chain(tables.iter().rev().map(|t| (Phase::Deletes, t)))
}

/// An insert into the outbox, for [`outbox_row`]s.
pub(crate) fn outbox_insert() -> sea_orm::sea_query::InsertStatement {
    Query::insert()
        .into_table(Alias::new(OUTBOX))
        .columns(
            std::iter::once("seq")
                .chain(crate::change::STORED_COLUMNS)
                .map(Alias::new),
        )
        .to_owned()
}

/// The outbox row of a change.
pub(crate) fn outbox_row(change: &Change) -> Result<Vec<SimpleExpr>> {
    let seq =
        i64::try_from(change.id.seq).map_err(|_| Error::Corrupt("sequence overflow".into()))?;
    let mut row = vec![seq.into()];
    row.extend(change.stored_values()?);
    Ok(row)
}

/// The outbox columns to select for [`change_from_outbox`].
pub(crate) fn outbox_columns() -> impl Iterator<Item = Alias> {
    std::iter::once("seq")
        .chain(crate::change::STORED_COLUMNS)
        .map(Alias::new)
}

/// Rebuild a [`Change`] from an outbox row.
pub(crate) fn change_from_outbox(origin: NodeId, r: &sea_orm::QueryResult) -> Result<Change> {
    let seq: i64 = r.try_get("", "seq")?;
    let seq = u64::try_from(seq).map_err(|_| Error::Corrupt(format!("negative sequence {seq}")))?;
    Change::from_stored(ChangeId { origin, seq }, r)
}

/// The runtime description of a `Syncable` entity's table.
pub fn table_spec<E>() -> TableSpec
where
    E: Syncable,
    E::Model: Sync,
{
    EntityTable::<E>::new().spec
}

/// Create a `Syncable` entity's table if it is missing, with the column
/// types tidesync uses on every dialect (see
/// [`crate::schema::synced_column_type`]: microsecond date-times and
/// unbounded text on MySQL, exact decimals on SQLite, ...), creating its
/// PostgreSQL enum types first.
pub async fn create_table<E, C>(db: &C) -> Result<()>
where
    E: Syncable,
    E::Model: Sync,
    C: ConnectionTrait,
{
    schema::ensure_table(db, &table_spec::<E>()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syncable::ConflictPolicy;
    use sea_orm::sea_query::ColumnType;

    fn spec() -> TableSpec {
        let c = |n: &str| ColumnSpec {
            name: n.into(),
            ty: ColumnType::Text,
            nullable: true,
        };
        TableSpec {
            name: "t".into(),
            pk: vec![c("id")],
            columns: vec![c("id"), c("a"), c("b")],
            local_only: vec![],
            policy: ConflictPolicy::Lww,
            single_writer: false,
        }
    }

    fn s(v: &str) -> Value {
        Value::String(Some(v.into()))
    }

    fn shadow(vals: &[(&str, Value)], deleted: bool) -> RowState {
        let t = |p| crate::clock::Hlc {
            physical: p,
            ..Default::default()
        };
        RowState {
            vals: vals
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            clocks: vals.iter().map(|(k, _)| (k.to_string(), t(1))).collect(),
            deleted_at: deleted.then(|| t(2)),
        }
    }

    #[test]
    fn new_row_is_an_insert_of_every_column() {
        let (op, cols) = diff(&spec(), Some(&[s("1"), s("x"), Value::String(None)]), None).unwrap();
        assert_eq!(op, Op::Insert);
        assert_eq!(cols.len(), 3);
    }

    #[test]
    fn update_lists_only_changed_columns() {
        let sh = shadow(&[("id", s("1")), ("a", s("x")), ("b", s("y"))], false);
        let (op, cols) = diff(&spec(), Some(&[s("1"), s("x"), s("z")]), Some(&sh)).unwrap();
        assert_eq!(op, Op::Update);
        assert_eq!(cols, vec![("b".to_string(), s("z"))]);
        assert!(diff(&spec(), Some(&[s("1"), s("x"), s("y")]), Some(&sh)).is_none());
    }

    #[test]
    fn missing_row_with_live_shadow_is_a_delete() {
        let sh = shadow(&[("id", s("1"))], false);
        assert_eq!(diff(&spec(), None, Some(&sh)).unwrap().0, Op::Delete);
        let gone = shadow(&[("id", s("1"))], true);
        assert!(diff(&spec(), None, Some(&gone)).is_none());
        assert!(diff(&spec(), None, None).is_none());
    }

    #[test]
    fn row_back_after_delete_is_an_insert() {
        let gone = shadow(&[("id", s("1")), ("a", s("x"))], true);
        let (op, cols) = diff(&spec(), Some(&[s("1"), s("x"), s("y")]), Some(&gone)).unwrap();
        assert_eq!(op, Op::Insert);
        assert_eq!(cols.len(), 3);
    }

    /// A table known by its spec only: enough for [`phases`].
    struct Named(TableSpec);

    #[async_trait::async_trait]
    impl TableHandle for Named {
        fn spec(&self) -> &TableSpec {
            &self.0
        }
        async fn markers(&self, _: &DatabaseTransaction, _: u64, _: u64) -> Result<Vec<Marker>> {
            unreachable!("not read in these tests")
        }
        async fn rows(&self, _: &DatabaseTransaction, _: &[Vec<Value>]) -> Result<Vec<RowImage>> {
            unreachable!("not read in these tests")
        }
        async fn scan(&self, _: &DatabaseTransaction, _: u64, _: u64) -> Result<Vec<RowImage>> {
            unreachable!("not read in these tests")
        }
    }

    #[test]
    fn upserts_are_sealed_parents_first_and_deletes_children_first() {
        let tables: Vec<std::sync::Arc<dyn TableHandle>> = ["parent", "child", "grandchild"]
            .into_iter()
            .map(|n| {
                std::sync::Arc::new(Named(TableSpec {
                    name: n.into(),
                    ..spec()
                })) as std::sync::Arc<dyn TableHandle>
            })
            .collect();
        let rounds: Vec<(Phase, &str)> = phases(&tables)
            .map(|(p, t)| (p, t.spec().name.as_str()))
            .collect();
        assert_eq!(
            rounds,
            [
                (Phase::Upserts, "parent"),
                (Phase::Upserts, "child"),
                (Phase::Upserts, "grandchild"),
                (Phase::Deletes, "grandchild"),
                (Phase::Deletes, "child"),
                (Phase::Deletes, "parent"),
            ]
        );
        assert_eq!(phases(&[]).count(), 0);
    }

    fn change(seq: u64) -> Change {
        let node = NodeId([0x11; 16]);
        Change {
            id: ChangeId { origin: node, seq },
            table: "t".into(),
            pk: vec![("id".into(), s("1"))],
            op: Op::Update,
            columns: vec![("a".into(), s("x"))],
            hlc: crate::clock::Hlc {
                physical: 0x10,
                logical: 2,
                node,
            },
            base: vec![],
        }
    }

    #[test]
    fn a_change_is_stored_in_the_outbox_under_its_sequence() {
        use sea_orm::sea_query::SqliteQueryBuilder;
        let mut q = outbox_insert();
        q.values_panic(outbox_row(&change(7)).unwrap());
        assert_eq!(
            q.to_string(SqliteQueryBuilder),
            format!(
                r#"INSERT INTO "_tidesync_outbox" ("seq", "tbl", "pk", "op", "payload", "hlc", "base") VALUES (7, 't', '[["id",{{"String":"1"}}]]', 'update', '[["a",{{"String":"x"}}]]', '0000000000000010-00000002-{}', NULL)"#,
                "11".repeat(16)
            )
        );
        // Read back by the same columns.
        let select = Query::select()
            .columns(outbox_columns())
            .from(Alias::new(OUTBOX))
            .to_owned();
        assert_eq!(
            select.to_string(SqliteQueryBuilder),
            r#"SELECT "seq", "tbl", "pk", "op", "payload", "hlc", "base" FROM "_tidesync_outbox""#
        );
    }

    #[test]
    fn a_sequence_beyond_the_databases_integers_is_refused() {
        assert!(outbox_row(&change(i64::MAX as u64)).is_ok());
        assert!(matches!(
            outbox_row(&change(i64::MAX as u64 + 1)),
            Err(Error::Corrupt(_))
        ));
    }
}
