//! A snapshot of the hub's rows, page by page, for bootstrapping a new
//! replica: per table in name order, the users' rows that carry their
//! states (see `users`) in position order up to the snapshot's bound, then
//! the version rows (see `versions`: rows gone, and live rows kept there)
//! in key order; then the states still in `_tidesync_hub_rows_v1`.

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, Value};

use super::log;
use super::states;
use super::tables::{HUB_KEYS, HUB_ROWS_V1};
use super::users::UserRows;
use super::versions::{self, HUB_VERSIONS};
use super::visible::Visible;
use crate::dialect;
use crate::model::change::{ColumnSpec, TableSpec};
use crate::model::clock::NodeId;
use crate::model::error::{Error, Result};
use crate::model::merge::RowState;
use crate::model::protocol::{Cursor, SnapshotPage, SnapshotRow};
use crate::model::value::{approx_size, parse_pk_key, pk_key};
use crate::store::ddl::existing_columns;
use crate::store::rows::{STATE_COLUMNS, StoredState, key_text};
use crate::store::version_table::{ROW_META, Versions};

/// Where a snapshot page starts (a page's `next`, as the JSON of one of
/// these, with the snapshot's bound last where it has one: see
/// [`Token::parse`]).
enum Token {
    /// At the beginning: the states of format 1 left in
    /// `_tidesync_hub_rows_v1`, if any, then the version tables.
    Start,
    /// In `_tidesync_hub_rows_v1`, after the row `(tbl, pk)` (`pk` as
    /// stored): `["rows", tbl, pk]`.
    Rows(String, String),
    /// At the first version table: `["v"]`.
    Versions,
    /// In the users' table of `table`, after the row at the position
    /// `after` (their rows that carry their states are read first, in
    /// position order up to the snapshot's bound; see `users`): `["u",
    /// table, after]`.
    Users { table: String, after: u64 },
    /// In the version table of `table`, after the key `key` (its text,
    /// `pk_key`): `["v", table, key]`.
    Versioned { table: String, key: Vec<Value> },
}

impl Token {
    /// The token `after` names, and the snapshot's bound it holds: the
    /// hub's cursor when its first page was read. The rows the users'
    /// tables carry are read in position order up to it: a row changed
    /// after it (perhaps one read already, now at a later position) is
    /// the pull's after the bootstrap, which starts there. A token of an
    /// earlier release of this one has none (the page's cursor is taken:
    /// at worst a row is read twice, which merging makes harmless).
    fn parse(after: Option<&str>) -> Result<(Token, Option<u64>)> {
        let Some(after) = after else {
            return Ok((Token::Start, None));
        };
        let bad = || Error::Config(format!("snapshot token `{after}` is not one a hub gave"));
        let mut token: Vec<serde_json::Value> = serde_json::from_str(after).map_err(|_| bad())?;
        use serde_json::Value as J;
        let bound = match token.last() {
            Some(J::Number(n))
                if token.len() != 3 || !matches!(&token[0], J::String(u) if u == "u") =>
            {
                let n = n.as_u64().ok_or_else(bad)?;
                token.pop();
                Some(n)
            }
            _ => None,
        };
        let token = match token.as_slice() {
            [J::String(v), J::String(table), J::String(key)] if v == "v" => Ok(Token::Versioned {
                table: table.clone(),
                key: parse_pk_key(key).map_err(|_| bad())?,
            }),
            [J::String(v), J::String(tbl), J::String(pk)] if v == "rows" => {
                Ok(Token::Rows(tbl.clone(), pk.clone()))
            }
            [J::String(v)] if v == "v" => Ok(Token::Versions),
            [J::String(u), J::String(table), J::Number(after)] if u == "u" => Ok(Token::Users {
                table: table.clone(),
                after: after.as_u64().ok_or_else(bad)?,
            }),
            [J::String(v)] if v == "rows" => Ok(Token::Start),
            // A token of a hub before version tables (`[tbl, key]` or
            // `[tbl, key, 1]`, in the order of all states by key text):
            // the states have moved since, and the bootstrap starts over
            // (refused on resume, it does).
            _ => Err(Error::Config(format!(
                "snapshot token `{after}` is of an earlier release of the hub: the snapshot starts over"
            ))),
        }?;
        match (&token, bound) {
            (Token::Users { .. }, None) => return Err(bad()),
            // In a table's version rows, of a release before the users'
            // rows carried states: resumed here, the rows that the users'
            // rows carry now would be passed over (this release reads
            // them first, and not among the version rows). It starts over.
            (Token::Versioned { .. }, None) => {
                return Err(Error::Config(format!(
                    "snapshot token `{after}` is of an earlier release of the hub: the snapshot starts over"
                )));
            }
            _ => {}
        }
        Ok((token, bound))
    }

    /// The token's text, with the snapshot's `bound` last.
    fn text(&self, bound: u64) -> Result<String> {
        Ok(match self {
            Token::Start => serde_json::to_string(&("rows", bound))?,
            Token::Rows(tbl, pk) => serde_json::to_string(&("rows", tbl, pk, bound))?,
            Token::Versions => serde_json::to_string(&("v", bound))?,
            Token::Versioned { table, key } => {
                serde_json::to_string(&("v", table, pk_key(key)?, bound))?
            }
            Token::Users { table, after } => serde_json::to_string(&("u", table, after, bound))?,
        })
    }
}

/// A page being filled.
struct Filling<'v> {
    page: SnapshotPage,
    bytes: usize,
    /// Rows still wanted.
    left: u64,
    visible: Option<&'v Visible>,
}

impl Filling<'_> {
    /// Add a row, unless `visible` passes it over; `false` when the page
    /// is full of bytes before it (the row is not added: the next page
    /// starts at it).
    fn add(&mut self, table: &str, pk: Vec<(String, Value)>, state: RowState) -> bool {
        if self
            .visible
            .is_some_and(|v| !v.shows_row(table, &pk, &state))
        {
            return true;
        }
        // A page of at most about `PAGE_BYTES` of values (and at least one
        // row): rows of megabytes do not make answers of gigabytes.
        let size = state.vals.values().map(approx_size).sum::<usize>() + 64;
        if !self.page.rows.is_empty() && self.bytes + size > log::PAGE_BYTES {
            return false;
        }
        self.bytes += size;
        self.page.rows.push(SnapshotRow {
            table: table.to_owned(),
            pk,
            state,
        });
        true
    }
}

/// The hub's cursor now, and up to `limit` rows after the token `after` (a
/// page's `next`, valid across restarts and limits): the states of format
/// 1 still in `_tidesync_hub_rows_v1` first (an install moves a table's
/// states from there to its version table, forward in this order: a
/// bootstrap meets a moved row again, never misses it), then the version
/// tables in table name order, each in key order (see `versions`).
/// Through an account the token may name a row of another user, which the
/// page passed over: a `UserHub` hands out its tokens sealed and bound to
/// the user (see `token`), never this one.
///
/// A token of a release before version tables is refused
/// ([`Error::Config`]): the bootstrap that resumes with one starts over
/// (merging a row twice is harmless; a row left out would be missing for
/// good).
///
/// The rows whose every column `skip`'s pushes set (their `sole`) are
/// left out by the reads themselves, as pulls leave them out: a page
/// counts the rows it read, so one of fewer rows than asked is still the
/// end of a table.
pub(super) async fn page<C: ConnectionTrait>(
    db: &C,
    specs: &[TableSpec],
    after: Option<String>,
    limit: u64,
    visible: Option<&Visible>,
    skip: Option<NodeId>,
) -> Result<(Cursor, SnapshotPage)> {
    let not_skipped = |sole: Expr| skip.map(|me| super::since::not_set_whole_by(sole, me));
    let cursor = Cursor(log::tip(db).await?);
    let (token, bound) = Token::parse(after.as_deref())?;
    let bound = bound.unwrap_or(cursor.0);
    let limit = Ord::max(Ord::min(limit, i64::MAX as u64), 1);
    let mut fill = Filling {
        page: SnapshotPage::default(),
        bytes: 0,
        left: limit,
        visible,
    };
    let (mut start, mut after_key) = match token {
        Token::Start | Token::Rows(..) => {
            let after = match token {
                Token::Rows(tbl, pk) => Some((tbl, pk)),
                _ => None,
            };
            if let Some(next) = rows_page(db, specs, after, &mut fill).await? {
                return finish(cursor, fill, Some(next), bound);
            }
            (None, None)
        }
        Token::Versions => (None, None),
        Token::Versioned { table, key } => (Some(table), Some(Place::Key(key))),
        Token::Users { table, after } => (Some(table), Some(Place::Position(after))),
    };
    // Where the next page starts: after the last row read, passed over or
    // not (a page always takes its first row, so a cut page has read one).
    let mut last = Some(match (&start, &after_key) {
        (Some(table), Some(Place::Key(key))) => Token::Versioned {
            table: table.clone(),
            key: key.clone(),
        },
        (Some(table), Some(Place::Position(after))) => Token::Users {
            table: table.clone(),
            after: *after,
        },
        _ => Token::Versions,
    });
    let d = dialect::of_db(db)?;
    let tables = versions::versioned(db, specs)
        .await
        .map_err(Error::or_offline)?;
    for spec in &tables {
        // Tables before the token's are done.
        if let Some(first) = &start {
            if spec.name < *first {
                continue;
            }
            if spec.name != *first {
                after_key = None;
            }
            start = None;
        }
        let mut versions = Versions::open(db, HUB_VERSIONS, spec)
            .await
            .map_err(Error::or_offline)?;
        let names = spec.pk_names();
        let of_users = not_skipped(Expr::col(Alias::new(ROW_META[3])));
        // The users' rows that carry their states first, in position
        // order, then the version rows in key order (the rows gone, and
        // rows no push of this release has written: a row read twice is
        // merged twice, which is harmless). A row that moves from one to
        // the other meanwhile is changed after the snapshot's cursor, and
        // the pull after the bootstrap reads it.
        let after = match after_key.take() {
            Some(Place::Key(key)) => Some(key),
            Some(Place::Position(after)) => {
                if let Some(next) = users_page(
                    db,
                    d,
                    spec,
                    &mut versions,
                    after,
                    bound,
                    of_users,
                    &mut fill,
                    &mut last,
                )
                .await?
                {
                    return finish(cursor, fill, Some(next), bound);
                }
                None
            }
            None => {
                if let Some(next) = users_page(
                    db,
                    d,
                    spec,
                    &mut versions,
                    0,
                    bound,
                    of_users,
                    &mut fill,
                    &mut last,
                )
                .await?
                {
                    return finish(cursor, fill, Some(next), bound);
                }
                None
            }
        };
        // Not the version rows at a position a users' row carries (the
        // same row, read from there), nor those changed after the
        // snapshot's bound (the pull's). A row without a position is in
        // (an install gives every row one before its server serves, so
        // only a server that has not installed meets one).
        let position = || Expr::col((Alias::new(versions.name()), Alias::new("hub_seq")));
        let up_to_bound = position()
            .is_null()
            .or(position().lte(crate::store::codec::db_sequence(bound)?));
        let carried = carries(db, d, spec).await?.then(|| {
            Expr::exists(
                Query::select()
                    .expr(Expr::val(1))
                    .from_as(dialect::Place::of(d, spec).table_ref(), Alias::new("u"))
                    .and_where(
                        Expr::col((Alias::new("u"), Alias::new(ROW_META[0])))
                            .equals((Alias::new(versions.name()), Alias::new("hub_seq"))),
                    )
                    .to_owned(),
            )
            .not()
        });
        let mut filter = match carried {
            Some(c) => up_to_bound.and(c),
            None => up_to_bound,
        };
        if let Some(f) = not_skipped(Expr::col((Alias::new(versions.name()), Alias::new("sole")))) {
            filter = filter.and(f);
        }
        let asked = fill.left;
        let rows = versions
            .page_where(db, after.as_deref(), false, asked, Some(filter))
            .await
            .map_err(Error::or_offline)?;
        let got = rows.len() as u64;
        for (key, state) in rows {
            let pk: Vec<(String, Value)> = names.iter().cloned().zip(key.clone()).collect();
            if !fill.add(&spec.name, pk, state) {
                return finish(cursor, fill, last, bound);
            }
            fill.left -= 1;
            last = Some(Token::Versioned {
                table: spec.name.clone(),
                key,
            });
        }
        if got == asked {
            return finish(cursor, fill, last, bound);
        }
    }
    // The last page.
    Ok((cursor, fill.page))
}

/// Where in a table a snapshot page starts.
enum Place {
    /// In its users' table, after this position.
    Position(u64),
    /// In its version table, after this key.
    Key(Vec<Value>),
}

/// Fill the page from the users' rows of `spec` that carry their states
/// and `filter` keeps, after the position `after` and up to `bound` (see
/// [`Token::parse`]):
/// `Some(token)` when the page is full (the next starts at the token),
/// `None` when they are all read (or the table has no such rows). `last`
/// follows the last row read.
#[allow(clippy::too_many_arguments)]
async fn users_page<C: ConnectionTrait>(
    db: &C,
    d: &'static dyn dialect::Dialect,
    spec: &TableSpec,
    versions: &mut Versions<'_>,
    after: u64,
    bound: u64,
    filter: Option<sea_orm::sea_query::SimpleExpr>,
    fill: &mut Filling<'_>,
    last: &mut Option<Token>,
) -> Result<Option<Token>> {
    if !carries(db, d, spec).await? {
        return Ok(None);
    }
    let asked = fill.left;
    let rows = UserRows::new(d, spec)
        .after(db, versions.ordinals(), after, bound, asked, filter)
        .await
        .map_err(Error::or_offline)?;
    let got = rows.len() as u64;
    let names = spec.pk_names();
    for r in rows {
        let (key, state) = match r.row {
            Ok(row) => row,
            // The version row at its position, if one reads (a hub of
            // the development build that wrote both places); else the
            // bootstrap stops at the row, naming it.
            Err((e, raw)) => {
                let at = versions
                    .after(db, r.hub_seq - 1, r.hub_seq, 1, None)
                    .await
                    .map_err(Error::or_offline)?;
                match at.into_iter().next().map(|v| v.row) {
                    Some(Ok(row)) => row,
                    _ => {
                        return Err(Error::Corrupt(format!(
                            "the hub's row at position {} of `{}` cannot be read ({raw}): {e}",
                            r.hub_seq, spec.name
                        )));
                    }
                }
            }
        };
        let pk: Vec<(String, Value)> = names.iter().cloned().zip(key).collect();
        if !fill.add(&spec.name, pk, state) {
            return Ok(last.take().or(Some(Token::Versions)));
        }
        fill.left -= 1;
        *last = Some(Token::Users {
            table: spec.name.clone(),
            after: r.hub_seq,
        });
    }
    if got == asked {
        return Ok(last.take().or(Some(Token::Versions)));
    }
    Ok(None)
}

/// Whether the users' table of `spec` has the columns of the states its
/// rows carry (see `users`).
async fn carries<C: ConnectionTrait>(
    db: &C,
    d: &'static dyn dialect::Dialect,
    spec: &TableSpec,
) -> Result<bool> {
    Ok(existing_columns(db, d, dialect::Place::of(d, spec))
        .await
        .map_err(Error::or_offline)?
        .iter()
        .any(|c| c == ROW_META[3]))
}

/// The page as it is, the next starting after `last`.
fn finish(
    cursor: Cursor,
    mut fill: Filling<'_>,
    last: Option<Token>,
    bound: u64,
) -> Result<(Cursor, SnapshotPage)> {
    fill.page.next = last.map(|t| t.text(bound)).transpose()?;
    Ok((cursor, fill.page))
}

/// Fill the page from the states of format 1 still in
/// `_tidesync_hub_rows_v1` (tables no install of this release has seen)
/// after the row `after`: `Some(token)` when the page is full (the next
/// starts at the token), `None` when they are all read.
async fn rows_page<C: ConnectionTrait>(
    db: &C,
    specs: &[TableSpec],
    after: Option<(String, String)>,
    fill: &mut Filling<'_>,
) -> Result<Option<Token>> {
    let d = dialect::of_db(db)?;
    if existing_columns(db, d, dialect::Place::own(HUB_ROWS_V1))
        .await
        .map_err(Error::or_offline)?
        .is_empty()
    {
        // A hub this release made: no states of format 1.
        return Ok(None);
    }
    let mut q = Query::select();
    q.column(Alias::new("tbl"))
        .columns(STATE_COLUMNS.map(Alias::new))
        .from(Alias::new(HUB_ROWS_V1))
        .order_by(Alias::new("tbl"), Order::Asc)
        .order_by(Alias::new("pk"), Order::Asc)
        .limit(fill.left);
    let mut last = after
        .as_ref()
        .map(|(t, p)| Token::Rows(t.clone(), p.clone()));
    if let Some((tbl, pk)) = &after {
        let columns = [Expr::col(Alias::new("tbl")), Expr::col(Alias::new("pk"))];
        let values = [Value::from(tbl.clone()), Value::from(pk.clone())];
        q.and_where(dialect::of_db(db)?.after(columns, values));
    }
    let rows = db
        .query_all(&q)
        .await
        .map_err(|e| Error::from(e).or_offline())?;
    let stored: Vec<Result<StoredState>> = rows.iter().map(StoredState::decode).collect();
    let seqs: Vec<u64> = stored
        .iter()
        .filter_map(|s| s.as_ref().ok().and_then(|s| s.reference))
        .collect();
    // Each entry is of one row, so one state at most refers to it.
    let mut entries = states::columns(db, &seqs)
        .await
        .map_err(Error::or_offline)?;
    let recorded = recorded_keys(db, specs, &rows).await?;
    let asked = fill.left;
    let mut cut = false;
    for (r, stored) in rows.iter().zip(stored) {
        let tbl: String = r.try_get("", "tbl")?;
        let read = stored.and_then(|stored| {
            let key = key_text(r)?;
            let entry = stored.reference.and_then(|seq| entries.remove(&seq));
            Ok((stored.fill(entry)?.0, parse_pk_key(&key)?))
        });
        let (state, values) = match read {
            Ok(read) => read,
            Err(e) => {
                // A state the install could not move either: passed over,
                // as it was left (with a warning).
                tracing::warn!(table = %tbl, error = %e, "a hub row state of format 1 cannot be read: not in the snapshot");
                fill.left -= 1;
                last = Some(Token::Rows(tbl, r.try_get::<String>("", "pk")?));
                continue;
            }
        };
        let names: Vec<String> = match specs.iter().find(|s| s.name == tbl) {
            Some(s) => s.pk_names(),
            None => match recorded.get(&tbl) {
                Some(names) => names.clone(),
                None => (0..values.len()).map(|i| format!("key{i}")).collect(),
            },
        };
        let pk: Vec<(String, Value)> = names.into_iter().zip(values).collect();
        if !fill.add(&tbl, pk, state) {
            cut = true;
            break;
        }
        // The stored key: the next page starts after it.
        fill.left -= 1;
        last = Some(Token::Rows(tbl, r.try_get::<String>("", "pk")?));
    }
    if cut || rows.len() as u64 == asked {
        // Full: the next page starts after the last row read (before any:
        // at the beginning).
        return Ok(Some(last.unwrap_or(Token::Start)));
    }
    Ok(None)
}

/// The key column names the hub records (see [`HUB_KEYS`]) for the tables
/// of `rows` that `specs` lacks: a server that has not seen this device's
/// install (another server's device, a restart) names keys as the hub
/// does, never after whichever install came last.
async fn recorded_keys<C: ConnectionTrait>(
    db: &C,
    specs: &[TableSpec],
    rows: &[sea_orm::QueryResult],
) -> Result<std::collections::HashMap<String, Vec<String>>> {
    let mut names: Vec<String> = Vec::new();
    for r in rows {
        let tbl: String = r.try_get("", "tbl")?;
        if !specs.iter().any(|s| s.name == tbl) && !names.contains(&tbl) {
            names.push(tbl);
        }
    }
    let mut out = std::collections::HashMap::new();
    if names.is_empty() {
        return Ok(out);
    }
    let named: Vec<&str> = names.iter().map(String::as_str).collect();
    let records = HUB_KEYS
        .read_many(db, &named)
        .await
        .map_err(Error::or_offline)?;
    for (table, text) in records {
        let key: Vec<ColumnSpec> = serde_json::from_str(&text).map_err(|e| {
            Error::Corrupt(format!(
                "`{}` records `{text}` for table `{table}`: {e}",
                HUB_KEYS.0
            ))
        })?;
        out.insert(table, key.into_iter().map(|c| c.name).collect());
    }
    Ok(out)
}
