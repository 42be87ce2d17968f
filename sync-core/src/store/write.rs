//! Writing replicated rows into a table described by a [`TableSpec`],
//! without the entity compiled in: the hub's tables and a replica's pulled
//! changes go through here.
//!
//! Rows are written in batches: one multi-row upsert per table and column
//! set (bounded in rows, parameters and bytes), one multi-row delete per
//! table. Every value is checked against the target dialect first, so a value
//! it cannot hold is refused with table, column and value instead of being
//! truncated.

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex};

use sea_orm::sea_query::{
    Alias, Expr, ExprTrait, InsertStatement, OnConflict, OptionEnum, Query, SimpleExpr,
};
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

use crate::dialect::{self, Dialect, Place, check_value};
use crate::model::change::{ColumnSpec, TableSpec};
use crate::model::error::{Error, Result};
use crate::model::merge::RowState;
use crate::model::value::approx_size;

/// Largest number of rows in one statement.
pub(crate) const MAX_ROWS: usize = 500;
/// Largest number of bound parameters in one statement (SQLite allows
/// 32766, PostgreSQL and MySQL 65535).
const MAX_PARAMS: usize = 30_000;
/// Approximate largest statement, in bytes of bound values (MariaDB's
/// default max_allowed_packet is 16 MiB).
pub(crate) const MAX_BYTES: usize = 4 << 20;

/// The value bound to write `value` into `column` of `table` on the
/// dialect `d`, after checking the dialect can hold it (the expression
/// around it is [`Dialect::shape`]).
pub(crate) fn bound_value(
    table: &str,
    column: &ColumnSpec,
    value: &Value,
    d: &dyn Dialect,
) -> Result<Value> {
    check_value(table, &column.name, Some(&column.ty), value, Some(d))?;
    let value = match value {
        // An enum read from a model comes as `Value::Enum` or a string:
        // write its text (the dialect casts it to the type where needed).
        Value::Enum(e) => enum_text(e),
        // So is each of an array of them, bound as an array of texts.
        #[cfg(feature = "postgres")]
        Value::Array(sea_orm::sea_query::ArrayType::Enum(_), items) => Value::Array(
            sea_orm::sea_query::ArrayType::String,
            items.as_ref().map(|items| {
                Box::new(
                    items
                        .iter()
                        .map(|v| match v {
                            Value::Enum(e) => enum_text(e),
                            v => v.clone(),
                        })
                        .collect(),
                )
            }),
        ),
        v => v.clone(),
    };
    Ok(d.bind_value(&column.ty, value))
}

/// The text of an enum value.
fn enum_text(e: &OptionEnum) -> Value {
    match e {
        OptionEnum::Some(e) => Value::String(Some(e.value.to_string())),
        OptionEnum::None(_) => Value::String(None),
    }
}

/// The expression that writes `value` into `column` of `table` on the
/// dialect `d`, after checking the dialect can hold it.
pub(crate) fn value_expr(
    table: &str,
    column: &ColumnSpec,
    value: &Value,
    d: &dyn Dialect,
) -> Result<SimpleExpr> {
    Ok(d.shape(&column.ty, Expr::val(bound_value(table, column, value, d)?)))
}

/// The condition "the key is one of `keys`", each value written as the
/// dialect writes it to the key column (a PostgreSQL enum cast to its type,
/// a MySQL date-time after 2038 as a `DATETIME`), so that it finds the row
/// holding that exact key.
pub(crate) fn keys_match(spec: &TableSpec, keys: &[Vec<Value>], d: &dyn Dialect) -> SimpleExpr {
    let write = |key: &[Value]| -> Vec<SimpleExpr> {
        spec.pk
            .iter()
            .zip(key)
            .map(|(c, v)| d.write_value(&c.ty, v.clone()))
            .collect()
    };
    if let [key] = spec.pk.as_slice() {
        Expr::col(Alias::new(&key.name)).is_in(keys.iter().flat_map(|k| write(k)))
    } else {
        Expr::tuple(spec.pk.iter().map(|c| Expr::col(Alias::new(&c.name))))
            .is_in(keys.iter().map(|k| Expr::tuple(write(k))))
    }
}

/// Multi-row inserts of one shape (table, columns, the expression around
/// each column's parameter, conflict clause), bound from vectors of values.
///
/// Building a statement through sea-query makes an expression per value,
/// clones the values into the tree and renders it again for every
/// statement; for a page of thousands of rows that costs about as much as
/// the database takes to write them. An `Inserts` renders the text once per
/// row count, with a placeholder per value in the shape the dialect writes
/// its column (a PostgreSQL enum's cast), keeps it for the process (up to
/// [`TEXT_CACHE_BYTES`]), and moves each statement's values in.
pub(crate) struct Inserts {
    backend: DbBackend,
    /// The statement without rows: table, columns, conflict clause.
    template: InsertStatement,
    /// The expression around each column's parameter.
    shapes: Vec<SimpleExpr>,
    /// The text of a one-row statement, with the backend: the key of this
    /// shape's texts in the cache.
    key: String,
}

/// How many bytes of statement text [`Inserts`] keeps for the process;
/// past it the cache starts again empty.
const TEXT_CACHE_BYTES: usize = 8 << 20;

/// Statement texts of [`Inserts`]: by shape, then by row count; and their
/// bytes.
type TextCache = (HashMap<String, HashMap<usize, String>>, usize);

static TEXTS: LazyLock<Mutex<TextCache>> = LazyLock::new(Mutex::default);

/// The parameter of a statement's text (its value is not used).
pub(crate) fn placeholder() -> SimpleExpr {
    Expr::val(Value::Bool(None))
}

impl Inserts {
    /// Inserts on `template` (table, columns and conflict clause, no
    /// rows), each column's parameter inside its expression of `shapes`
    /// (see [`Dialect::shape`]; [`placeholder`] where it is bare).
    pub(crate) fn new(
        backend: DbBackend,
        template: InsertStatement,
        shapes: Vec<SimpleExpr>,
    ) -> Inserts {
        let mut i = Inserts {
            backend,
            template,
            shapes,
            key: String::new(),
        };
        i.key = format!("{backend:?}\n{}", i.render(1));
        i
    }

    /// Inserts on `template` whose `columns` parameters are all bare.
    pub(crate) fn plain(backend: DbBackend, template: InsertStatement, columns: usize) -> Inserts {
        Inserts::new(backend, template, vec![placeholder(); columns])
    }

    /// Inserts of the rows of `spec`'s columns `cols` on the dialect `d`:
    /// each column's parameter in its type's shape.
    /// Inserts of the rows of `spec`'s columns `cols` on the dialect `d`,
    /// then `beside` more columns: each column's parameter in its type's
    /// shape, the others bare.
    fn of_columns(
        d: &dyn Dialect,
        template: InsertStatement,
        cols: &[&ColumnSpec],
        beside: usize,
    ) -> Inserts {
        let shapes = cols
            .iter()
            .map(|c| d.shape(&c.ty, placeholder()))
            .chain(std::iter::repeat_n(placeholder(), beside))
            .collect();
        Inserts::new(d.backend(), template, shapes)
    }

    fn render(&self, rows: usize) -> String {
        let mut q = self.template.clone();
        for _ in 0..rows {
            q.values_panic(self.shapes.iter().cloned());
        }
        self.backend.build(&q).sql
    }

    /// The text of a statement of `rows` rows.
    fn text(&self, rows: usize) -> String {
        let cache = TEXTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(t) = cache.0.get(&self.key).and_then(|m| m.get(&rows)) {
            return t.clone();
        }
        drop(cache);
        let text = self.render(rows);
        let mut cache = TEXTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.1 + text.len() + self.key.len() > TEXT_CACHE_BYTES {
            *cache = TextCache::default();
        }
        // Counted once per shape and text (another caller may have put
        // the same text in meanwhile).
        let (texts, bytes) = &mut *cache;
        let shape = texts.entry(self.key.clone()).or_insert_with(|| {
            *bytes += self.key.len();
            HashMap::new()
        });
        if shape.insert(rows, text.clone()).is_none() {
            *bytes += text.len();
        }
        text
    }

    /// The statements that insert `rows` (each its values in column order,
    /// with its approximate size in bytes), in order: at most 500 rows,
    /// 30 000 parameters and about 4 MiB of values each (a row larger than
    /// that alone).
    ///
    /// # Errors
    /// [`Error::Corrupt`] for a row without one value per column.
    pub(crate) fn statements(
        &self,
        rows: impl IntoIterator<Item = (Vec<Value>, usize)>,
    ) -> Result<Vec<Statement>> {
        let cols = self.shapes.len();
        let most = MAX_ROWS.min(MAX_PARAMS / cols.max(1)).max(1);
        let mut out = Vec::new();
        let mut values: Vec<Value> = Vec::new();
        let (mut n, mut bytes) = (0usize, 0usize);
        for (row, size) in rows {
            if row.len() != cols {
                return Err(Error::Corrupt(format!(
                    "a row of {} values for {cols} columns",
                    row.len()
                )));
            }
            if n > 0 && (n >= most || bytes + size > MAX_BYTES) {
                out.push(self.statement(n, std::mem::take(&mut values)));
                n = 0;
                bytes = 0;
            }
            if values.is_empty() {
                values.reserve(most.min(64) * cols);
            }
            values.extend(row);
            n += 1;
            bytes += size;
        }
        if n > 0 {
            out.push(self.statement(n, values));
        }
        Ok(out)
    }

    fn statement(&self, rows: usize, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(self.backend, self.text(rows), values)
    }
}

/// The multi-row upserts that write `rows` into `spec`'s table on
/// the dialect `d`: one per column set, each bounded in rows, parameters and
/// bytes. Pure, so the SQL of each dialect can be checked without a
/// database (what [`row_statements`] writes where upserts are kept).
#[cfg(test)]
fn upsert_statements(
    spec: &TableSpec,
    rows: &[&RowState],
    d: &dyn Dialect,
) -> Result<Vec<Statement>> {
    write_statements(
        spec,
        rows.iter().map(|r| (*r, Vec::new())),
        &[],
        d,
        Conflict::Update,
    )
}

/// The statements that write `rows` (each with whether its row exists in
/// the table now) into `spec`'s table on the dialect `d`: upserts, except
/// for new rows where `plain_new` (a replica's table, which the application
/// writes too) or where the dialect's upsert fires on any unique index
/// (MySQL's `ON DUPLICATE KEY UPDATE`): there a new row is a plain insert,
/// so that a collision fails instead of updating the row that holds the
/// value (on PostgreSQL, a row the application inserted meanwhile, which
/// the upsert waited for).
pub(crate) fn row_statements(
    spec: &TableSpec,
    rows: &[(&RowState, bool)],
    d: &dyn Dialect,
    plain_new: bool,
) -> Result<Vec<Statement>> {
    row_statements_beside(
        spec,
        rows.iter().map(|(r, e)| (*r, *e, Vec::new())).collect(),
        &[],
        d,
        plain_new,
    )
}

/// [`row_statements`] of rows that each also write the columns `beside`
/// (after the spec's columns), with their values in that order beside each
/// row's state: a hub's users' table keeps each row's metadata so (see
/// [`crate::store::version_table::ROW_META`]).
pub(crate) fn row_statements_beside(
    spec: &TableSpec,
    rows: Vec<(&RowState, bool, Vec<Value>)>,
    beside: &[&str],
    d: &dyn Dialect,
    plain_new: bool,
) -> Result<Vec<Statement>> {
    if !plain_new && !d.upsert_takes_any_unique() {
        let all = rows.into_iter().map(|(r, _, b)| (r, b));
        return write_statements(spec, all, beside, d, Conflict::Update);
    }
    let (existing, new): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(_, e, _)| *e);
    let mut out = write_statements(
        spec,
        existing.into_iter().map(|(r, _, b)| (r, b)),
        beside,
        d,
        Conflict::Update,
    )?;
    out.extend(write_statements(
        spec,
        new.into_iter().map(|(r, _, b)| (r, b)),
        beside,
        d,
        Conflict::Fail,
    )?);
    Ok(out)
}

/// What an insert of [`write_statements`] does with a row whose key the
/// table holds.
#[derive(Clone, Copy)]
enum Conflict {
    /// Update it (an upsert on the key).
    Update,
    /// Fail (a plain insert).
    Fail,
}

/// Multi-row inserts of `rows` (each with its values of the columns
/// `beside`), doing `conflict` with a key the table holds.
fn write_statements<'r>(
    spec: &TableSpec,
    rows: impl Iterator<Item = (&'r RowState, Vec<Value>)>,
    beside: &[&str],
    d: &dyn Dialect,
    conflict: Conflict,
) -> Result<Vec<Statement>> {
    // Each row as its values bound in the spec's column order, with its
    // size, grouped by the set of columns present (a column added by a
    // newer client is absent from older rows). A state's values come in
    // name order: one pass beside the spec's names in that order finds
    // each column's value.
    let n = spec.columns.len();
    let mut by_name: Vec<(&str, usize)> = spec
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    by_name.sort_unstable();
    let every: Vec<usize> = (0..n).collect();
    let mut groups: BTreeMap<Vec<usize>, Vec<(Vec<Value>, usize)>> = BTreeMap::new();
    let mut slots: Vec<Option<&Value>> = vec![None; n];
    for (r, extra) in rows {
        if extra.len() != beside.len() {
            return Err(Error::Corrupt(format!(
                "a row of `{}` with {} values for {} columns beside its own",
                spec.name,
                extra.len(),
                beside.len()
            )));
        }
        slots.fill(None);
        let mut names = by_name.iter().peekable();
        for (name, v) in &r.vals {
            while names.next_if(|(c, _)| *c < name.as_str()).is_some() {}
            if let Some((_, i)) = names.next_if(|(c, _)| *c == name.as_str()) {
                slots[*i] = Some(v);
            }
        }
        let mut bytes = 0;
        let mut values = Vec::with_capacity(n + beside.len());
        for (v, c) in slots.iter().zip(&spec.columns) {
            if let Some(v) = v {
                bytes += approx_size(v);
                values.push(bound_value(&spec.name, c, v, d)?);
            }
        }
        let full = values.len() == n;
        for v in extra {
            bytes += approx_size(&v);
            values.push(v);
        }
        let row = (values, bytes);
        match groups.get_mut(every.as_slice()) {
            Some(g) if full => g.push(row),
            _ => {
                let present = (0..n).filter(|i| slots[*i].is_some()).collect();
                groups.entry(present).or_default().push(row);
            }
        }
    }
    let keys: Vec<Alias> = spec.pk.iter().map(|c| Alias::new(&c.name)).collect();
    let mut out = Vec::new();
    for (present, rows) in groups {
        let cols: Vec<&ColumnSpec> = present.iter().map(|i| &spec.columns[*i]).collect();
        if let Some(k) = spec
            .pk
            .iter()
            .find(|k| !cols.iter().any(|c| c.name == k.name))
        {
            return Err(Error::Corrupt(format!(
                "row of `{}` without key column `{}`",
                spec.name, k.name
            )));
        }
        let updates: Vec<Alias> = cols
            .iter()
            .filter(|c| !spec.pk.iter().any(|k| k.name == c.name))
            .map(|c| Alias::new(&c.name))
            .chain(beside.iter().map(|b| Alias::new(*b)))
            .collect();
        let on_conflict = if updates.is_empty() {
            OnConflict::columns(keys.clone())
                .do_nothing_on(keys.clone())
                .to_owned()
        } else {
            OnConflict::columns(keys.clone())
                .update_columns(updates)
                .to_owned()
        };
        let mut template = Query::insert();
        template.into_table(Place::of(d, spec).table_ref()).columns(
            cols.iter()
                .map(|c| Alias::new(&c.name))
                .chain(beside.iter().map(|b| Alias::new(*b))),
        );
        match conflict {
            Conflict::Update => {
                template.on_conflict(on_conflict);
            }
            Conflict::Fail => {}
        }
        out.extend(Inserts::of_columns(d, template, &cols, beside.len()).statements(rows)?);
    }
    Ok(out)
}

/// Execute statements built in advance, in order.
pub(crate) async fn execute_all<C: ConnectionTrait>(
    db: &C,
    statements: Vec<Statement>,
) -> Result<()> {
    for stmt in statements {
        db.execute_raw(stmt).await?;
    }
    Ok(())
}

/// Execute `statements` in order while `build` runs, and return what it
/// built: the first statement is sent before `build` starts, so the
/// database works on the rows while the caller builds the next statements
/// (on SQLite the statements run on sqlx's worker thread, on the servers in
/// the server's process).
pub(crate) async fn execute_while<C: ConnectionTrait, T>(
    db: &C,
    statements: Vec<Statement>,
    build: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let (wrote, built) = tokio::join!(biased; execute_all(db, statements), async { build() });
    wrote?;
    built
}

/// Lock the existing rows with these keys until the transaction ends,
/// where the dialect locks rows (a SQLite write transaction already holds
/// the whole database).
pub(crate) async fn lock_rows(
    tx: &sea_orm::DatabaseTransaction,
    d: &dyn Dialect,
    spec: &TableSpec,
    keys: &[Vec<Value>],
) -> Result<()> {
    if !d.locks_rows() || keys.is_empty() {
        return Ok(());
    }
    for chunk in keys.chunks(500) {
        let q = Query::select()
            .columns(spec.pk.iter().map(|c| Alias::new(&c.name)))
            .from(Place::of(d, spec).table_ref())
            .and_where(keys_match(spec, chunk, d))
            .lock(sea_orm::sea_query::LockType::Update)
            .to_owned();
        tx.query_all(&q).await?;
    }
    Ok(())
}

/// Delete rows by primary key.
pub(crate) async fn delete_rows<C: ConnectionTrait>(
    db: &C,
    spec: &TableSpec,
    keys: &[Vec<Value>],
) -> Result<()> {
    let d = dialect::of_db(db)?;
    for chunk in keys.chunks(MAX_ROWS) {
        let q = Query::delete()
            .from_table(Place::of(d, spec).table_ref())
            .and_where(keys_match(spec, chunk, d))
            .to_owned();
        db.execute(&q).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{column, table};
    use sea_orm::DbBackend;
    use sea_orm::sea_query::ColumnType;

    fn d(kind: DbBackend) -> &'static dyn Dialect {
        crate::dialect::of(kind).unwrap()
    }
    use crate::model::change::ColumnSpec;
    use crate::model::clock::Hlc;
    use crate::model::syncable::ConflictPolicy;
    use sea_orm::sea_query::{IntoIden, StringLen};

    fn spec() -> TableSpec {
        let columns = vec![
            column("id", ColumnType::Integer, false),
            column("name", ColumnType::String(StringLen::None), false),
            column("at", ColumnType::TimestampWithTimeZone, false),
        ];
        table("contacts", &["id"], columns)
    }

    fn row(id: i32, name: &str) -> RowState {
        let mut s = RowState::default();
        let at = chrono::DateTime::from_timestamp(2_000_000_000, 0).unwrap();
        s.set("id", &Value::Int(Some(id)), Hlc::default());
        s.set("name", &Value::String(Some(name.into())), Hlc::default());
        s.set("at", &Value::ChronoDateTimeUtc(Some(at)), Hlc::default());
        s
    }

    #[test]
    fn one_multi_row_upsert_per_dialect() {
        let (a, b) = (row(1, "a"), row(2, "b"));
        let rows = [&a, &b];
        let pg = upsert_statements(&spec(), &rows, d(DbBackend::Postgres)).unwrap();
        assert_eq!(pg.len(), 1);
        assert_eq!(
            pg[0].to_string(),
            "INSERT INTO \"contacts\" (\"id\", \"name\", \"at\") VALUES (1, 'a', '2033-05-18 03:33:20.000000 +00:00'), \
             (2, 'b', '2033-05-18 03:33:20.000000 +00:00') ON CONFLICT (\"id\") DO UPDATE SET \"name\" = \"excluded\".\"name\", \"at\" = \"excluded\".\"at\""
        );
        let my = upsert_statements(&spec(), &rows, d(DbBackend::MySql)).unwrap();
        // UTC date-times go to MySQL as DATETIME text, not TIMESTAMP.
        assert_eq!(
            my[0].to_string(),
            "INSERT INTO `contacts` (`id`, `name`, `at`) VALUES (1, 'a', '2033-05-18 03:33:20.000000'), \
             (2, 'b', '2033-05-18 03:33:20.000000') ON DUPLICATE KEY UPDATE `name` = VALUES(`name`), `at` = VALUES(`at`)"
        );
        let lite = upsert_statements(&spec(), &rows, d(DbBackend::Sqlite)).unwrap();
        assert_eq!(
            lite[0].to_string(),
            "INSERT INTO \"contacts\" (\"id\", \"name\", \"at\") VALUES (1, 'a', '2033-05-18 03:33:20.000000 +00:00'), \
             (2, 'b', '2033-05-18 03:33:20.000000 +00:00') ON CONFLICT (\"id\") DO UPDATE SET \"name\" = \"excluded\".\"name\", \"at\" = \"excluded\".\"at\""
        );
    }

    #[test]
    fn rows_with_other_columns_go_in_their_own_statement() {
        let a = row(1, "a");
        let mut b = row(2, "b");
        b.vals.remove("at");
        b.clocks.remove("at");
        let qs = upsert_statements(&spec(), &[&a, &b], d(DbBackend::Postgres)).unwrap();
        assert_eq!(qs.len(), 2);
    }

    /// Columns the table does not have (a newer client's, before and
    /// after the table's names in order) are left out; the others keep the
    /// table's order.
    #[test]
    fn columns_the_table_lacks_are_left_out() {
        let a = row(1, "a");
        let mut b = row(1, "a");
        for c in ["aa", "b", "zz"] {
            b.set(c, &Value::Int(Some(9)), Hlc::default());
        }
        for kind in [DbBackend::Postgres, DbBackend::MySql, DbBackend::Sqlite] {
            let want = upsert_statements(&spec(), &[&a], d(kind)).unwrap();
            assert_eq!(upsert_statements(&spec(), &[&b], d(kind)).unwrap(), want);
        }
    }

    #[test]
    fn a_key_only_table_does_nothing_on_conflict() {
        let mut s = spec();
        s.columns.truncate(1);
        let mut r = RowState::default();
        r.set("id", &Value::Int(Some(1)), Hlc::default());
        let q = upsert_statements(&s, &[&r], d(DbBackend::MySql)).unwrap();
        assert!(
            q[0].to_string()
                .contains("ON DUPLICATE KEY UPDATE `id` = `id`"),
            "{}",
            q[0].to_string()
        );
    }

    #[test]
    fn unrepresentable_values_are_refused_by_name() {
        let mut r = row(1, "a");
        r.set(
            "name",
            &Value::String(Some("nul\0".into())),
            Hlc {
                physical: 9,
                ..Hlc::default()
            },
        );
        let e = upsert_statements(&spec(), &[&r], d(DbBackend::Postgres)).unwrap_err();
        assert!(
            e.to_string().starts_with("contacts.name: cannot store"),
            "{e}"
        );
        assert!(upsert_statements(&spec(), &[&r], d(DbBackend::Sqlite)).is_ok());
    }

    /// The number of rows in each statement, on a table of `cols` columns.
    fn row_counts(qs: &[Statement], cols: usize) -> Vec<usize> {
        qs.iter()
            .map(|q| {
                let values = q.values.as_ref().map_or(0, |v| v.0.len());
                assert_eq!(values % cols, 0, "{q}");
                values / cols
            })
            .collect()
    }

    fn template() -> InsertStatement {
        Query::insert()
            .into_table(Alias::new("t"))
            .columns([Alias::new("v")])
            .to_owned()
    }

    /// One-value rows of the given approximate sizes.
    fn sized(sizes: &[usize]) -> Vec<(Vec<Value>, usize)> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, size)| (vec![Value::from(i as i64)], *size))
            .collect()
    }

    fn batched(rows: Vec<(Vec<Value>, usize)>) -> Vec<Statement> {
        Inserts::plain(DbBackend::Postgres, template(), 1)
            .statements(rows)
            .unwrap()
    }

    fn batch_sizes(sizes: &[usize]) -> Vec<usize> {
        row_counts(&batched(sized(sizes)), 1)
    }

    #[test]
    fn batched_splits_every_max_rows() {
        assert_eq!(batch_sizes(&[1; MAX_ROWS]), [MAX_ROWS]);
        assert_eq!(batch_sizes(&[1; MAX_ROWS + 1]), [MAX_ROWS, 1]);
        assert_eq!(batch_sizes(&[1; 2 * MAX_ROWS + 1]), [MAX_ROWS, MAX_ROWS, 1]);
    }

    #[test]
    fn batched_splits_before_a_row_that_would_pass_max_bytes() {
        let half = MAX_BYTES / 2;
        // Rows that exactly fill MAX_BYTES share a statement ...
        assert_eq!(batch_sizes(&[half, half]), [2]);
        // ... one byte more starts the next one.
        assert_eq!(batch_sizes(&[half, half + 1]), [1, 1]);
        assert_eq!(batch_sizes(&[half, half, 1]), [2, 1]);
        assert_eq!(batch_sizes(&[1, MAX_BYTES - 1, 1]), [2, 1]);
    }

    #[test]
    fn batched_never_emits_an_empty_statement() {
        assert!(batched(vec![]).is_empty());
        // A row larger than MAX_BYTES goes alone into a statement of its
        // own, first or not, and the statements keep the rows' order.
        let qs = batched(sized(&[MAX_BYTES + 1, 1, MAX_BYTES + 1]));
        assert_eq!(row_counts(&qs, 1), [1, 1, 1]);
        assert_eq!(
            qs.iter().map(|q| q.to_string()).collect::<Vec<_>>(),
            [
                "INSERT INTO \"t\" (\"v\") VALUES (0)",
                "INSERT INTO \"t\" (\"v\") VALUES (1)",
                "INSERT INTO \"t\" (\"v\") VALUES (2)",
            ]
        );
    }

    /// A table of `cols` integer columns keyed by the first, and `rows` rows
    /// of it.
    fn wide(cols: usize, rows: usize) -> (TableSpec, Vec<RowState>) {
        let names: Vec<String> = (0..cols).map(|i| format!("c{i}")).collect();
        let c = |n: &String| ColumnSpec {
            name: n.clone(),
            ty: ColumnType::BigInteger,
            nullable: false,
            kind: None,
        };
        let spec = TableSpec {
            name: "wide".into(),
            schema: None,
            pk: vec![c(&names[0])],
            columns: names.iter().map(c).collect(),
            local_only: vec![],
            policy: ConflictPolicy::Lww,
            single_writer: false,
            ownership: Default::default(),
        };
        let rows = (0..rows)
            .map(|r| {
                let mut s = RowState::default();
                for n in &names {
                    s.set(n, &Value::BigInt(Some(r as i64)), Hlc::default());
                }
                s
            })
            .collect();
        (spec, rows)
    }

    fn upsert_sizes(spec: &TableSpec, rows: &[RowState]) -> Vec<usize> {
        let rows: Vec<&RowState> = rows.iter().collect();
        let qs = upsert_statements(spec, &rows, d(DbBackend::Postgres)).unwrap();
        row_counts(&qs, spec.columns.len())
    }

    #[test]
    fn upserts_hold_at_most_max_rows() {
        let (spec, rows) = wide(2, 2 * MAX_ROWS + 1);
        assert_eq!(upsert_sizes(&spec, &rows), [MAX_ROWS, MAX_ROWS, 1]);
        assert_eq!(upsert_sizes(&spec, &rows[..MAX_ROWS]), [MAX_ROWS]);
        assert!(upsert_sizes(&spec, &[]).is_empty());
    }

    #[test]
    fn upserts_of_wide_rows_hold_at_most_max_params_values() {
        let cols = 2 * MAX_PARAMS / MAX_ROWS;
        let per = MAX_PARAMS / cols;
        assert!(per < MAX_ROWS);
        let (spec, rows) = wide(cols, per + 1);
        assert_eq!(upsert_sizes(&spec, &rows), [per, 1]);
        assert_eq!(upsert_sizes(&spec, &rows[..per]), [per]);
    }

    #[test]
    fn an_upsert_takes_rows_while_their_values_fit_in_max_bytes() {
        let s = TableSpec {
            columns: spec().columns[..2].to_vec(),
            ..spec()
        };
        // Each row: the key (an integer) and a name of `len` bytes.
        let rows = |lens: &[usize]| -> Vec<RowState> {
            lens.iter()
                .enumerate()
                .map(|(i, len)| {
                    let mut r = RowState::default();
                    r.set("id", &Value::Int(Some(i as i32)), Hlc::default());
                    r.set(
                        "name",
                        &Value::String(Some("x".repeat(*len))),
                        Hlc::default(),
                    );
                    r
                })
                .collect()
        };
        let key = crate::model::value::approx_size(&Value::Int(Some(0)));
        let half = MAX_BYTES / 2 - key;
        // Two rows fill MAX_BYTES exactly: the third goes in a new statement.
        assert_eq!(upsert_sizes(&s, &rows(&[half, half, 1])), [2, 1]);
        // One byte more than fits starts the next statement.
        assert_eq!(upsert_sizes(&s, &rows(&[half, half + 1])), [1, 1]);
        // A row larger than MAX_BYTES is still written, alone.
        assert_eq!(
            upsert_sizes(&s, &rows(&[MAX_BYTES, MAX_BYTES, 1])),
            [1, 1, 1]
        );
    }

    /// The statements bound from vectors are, text and values, the ones
    /// sea-query builds from an expression per value, on every dialect:
    /// a PostgreSQL enum inside its cast, a UTC date-time bound as MySQL's
    /// DATETIME, a full statement and the rest after it.
    #[test]
    fn bound_statements_are_the_ones_sea_query_builds() {
        let cols = [
            column("id", ColumnType::BigInteger, false),
            column(
                "mood",
                ColumnType::Enum {
                    name: Alias::new("mood").into_iden(),
                    variants: vec![
                        Alias::new("sad").into_iden(),
                        Alias::new("happy").into_iden(),
                    ],
                },
                true,
            ),
            column("at", ColumnType::TimestampWithTimeZone, true),
            column("note", ColumnType::Text, true),
        ];
        let at = chrono::DateTime::from_timestamp(2_200_000_000, 7_000).unwrap();
        let rows: Vec<Vec<Value>> = (0..MAX_ROWS as i64 + 3)
            .map(|i| {
                vec![
                    Value::BigInt(Some(i)),
                    Value::String(Some(if i % 2 == 0 { "sad" } else { "happy" }.into())),
                    Value::ChronoDateTimeUtc((i % 3 != 0).then_some(at)),
                    Value::String(Some(format!("n{i}"))),
                ]
            })
            .collect();
        for kind in [DbBackend::Postgres, DbBackend::MySql, DbBackend::Sqlite] {
            let d = d(kind);
            let mut template = Query::insert();
            template
                .into_table(Alias::new("t"))
                .columns(cols.iter().map(|c| Alias::new(&c.name)))
                .on_conflict(
                    OnConflict::column(Alias::new("id"))
                        .update_columns(cols[1..].iter().map(|c| Alias::new(&c.name)))
                        .to_owned(),
                );
            let refs: Vec<&ColumnSpec> = cols.iter().collect();
            // Twice: the second time the texts come from the cache.
            for _ in 0..2 {
                let got = Inserts::of_columns(d, template.clone(), &refs, 0)
                    .statements(rows.iter().map(|r| {
                        let values = cols
                            .iter()
                            .zip(r)
                            .map(|(c, v)| bound_value("t", c, v, d).unwrap())
                            .collect();
                        (values, 1)
                    }))
                    .unwrap();
                let want: Vec<Statement> = rows
                    .chunks(MAX_ROWS)
                    .map(|chunk| {
                        let mut q = template.clone();
                        for r in chunk {
                            q.values_panic(
                                cols.iter()
                                    .zip(r)
                                    .map(|(c, v)| value_expr("t", c, v, d).unwrap()),
                            );
                        }
                        kind.build(&q)
                    })
                    .collect();
                assert_eq!(got.len(), 2);
                assert_eq!(got, want, "{kind:?}");
            }
        }
    }

    /// A PostgreSQL array of enum values is bound as an array of their
    /// texts inside a cast to the enum's array type, as SeaORM writes it;
    /// a NULL array too.
    #[cfg(feature = "postgres")]
    #[test]
    fn arrays_of_enum_values_are_cast_to_the_enums_array_type() {
        use sea_orm::sea_query::{ArrayType, Enum, RcOrArc};
        let mood = Alias::new("mood").into_iden();
        let col = column(
            "moods",
            ColumnType::Array(RcOrArc::new(ColumnType::Enum {
                name: mood.clone(),
                variants: vec![Alias::new("sad").into_iden()],
            })),
            true,
        );
        let key = column("id", ColumnType::BigInteger, false);
        let sad = Value::Enum(OptionEnum::Some(Box::new(Enum {
            type_name: "mood".into(),
            value: "sad".into(),
        })));
        let d = d(DbBackend::Postgres);
        let template = Query::insert()
            .into_table(Alias::new("t"))
            .columns([Alias::new("id"), Alias::new("moods")])
            .to_owned();
        let rows = [
            Value::Array(
                ArrayType::Enum(Box::new("mood".into())),
                Some(Box::new(vec![sad])),
            ),
            Value::Array(ArrayType::Enum(Box::new("mood".into())), None),
        ];
        let qs = Inserts::of_columns(d, template, &[&key, &col], 0)
            .statements(rows.iter().enumerate().map(|(i, v)| {
                let values = vec![
                    Value::BigInt(Some(i as i64)),
                    bound_value("t", &col, v, d).unwrap(),
                ];
                (values, 1)
            }))
            .unwrap();
        assert_eq!(
            qs[0].sql,
            r#"INSERT INTO "t" ("id", "moods") VALUES ($1, CAST($2 AS "mood"[])), ($3, CAST($4 AS "mood"[]))"#
        );
        let values = &qs[0].values.as_ref().unwrap().0;
        assert_eq!(
            values[1],
            Value::Array(
                ArrayType::String,
                Some(Box::new(vec![Value::String(Some("sad".into()))]))
            )
        );
        assert_eq!(values[3], Value::Array(ArrayType::String, None));
    }

    #[test]
    fn a_row_of_the_wrong_width_is_refused() {
        let e = Inserts::plain(DbBackend::Sqlite, template(), 1)
            .statements([(vec![Value::from(1), Value::from(2)], 1)])
            .unwrap_err();
        assert!(matches!(e, Error::Corrupt(_)), "{e}");
    }

    /// One table and column on three backends: three texts, each taken
    /// again from the cache as it was made.
    #[test]
    fn texts_are_cached_per_shape_and_backend() {
        let lite = Inserts::plain(DbBackend::Sqlite, template(), 1);
        let my = Inserts::plain(DbBackend::MySql, template(), 1);
        let pg = Inserts::plain(DbBackend::Postgres, template(), 1);
        let rows = || vec![(vec![Value::from(1)], 1), (vec![Value::from(2)], 1)];
        let sql = |i: &Inserts| i.statements(rows()).unwrap()[0].sql.clone();
        assert_eq!(sql(&lite), "INSERT INTO \"t\" (\"v\") VALUES (?), (?)");
        assert_eq!(sql(&my), "INSERT INTO `t` (`v`) VALUES (?), (?)");
        assert_eq!(sql(&pg), "INSERT INTO \"t\" (\"v\") VALUES ($1), ($2)");
        assert_eq!(sql(&lite), "INSERT INTO \"t\" (\"v\") VALUES (?), (?)");
    }
}
