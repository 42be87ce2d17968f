//! Pulls of row states: the rows changed after a cursor, read from the
//! version tables by the position each row records (the log position of
//! its latest change), each at its latest state.
//!
//! A row changed again takes a new position, so reading the positions
//! after a cursor reads every row changed after it, once. The tip is read
//! first: positions are given and committed under the sequence lock, so
//! every position up to it is visible to the reads that follow, and a
//! row that moves past it meanwhile is read by the next pull.
//!
//! A row without a position is found by none. Every row has one once an
//! install of this release has upgraded the hub (it gives them before
//! the server serves, and pushes give them): a row without one is on a
//! hub no install of this release has upgraded yet, or was written by a
//! server of a development build of hub schema version 3, which does not
//! check the version, still running. The pull fails then, naming both,
//! rather than pass the row over (the log, which releases before hub
//! schema version 5 wrote, no longer holds what pushes write).

use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query, SimpleExpr};

use super::log::{self, PAGE_BYTES};
use super::tables::hub_version_table;
use super::users::UserRows;
use super::versions::{HUB_VERSIONS, versioned};
use super::visible::Visible;
use crate::dialect::Place;
use crate::model::change::TableSpec;
use crate::model::clock::NodeId;
use crate::model::error::{Error, Result};
use crate::model::protocol::{Cursor, SnapshotRow, StatePage, Unreadable};
use crate::model::value::approx_size;
use crate::store::ddl::existing_columns;
use crate::store::version_table::{AtPosition, ROW_META, Versions};

/// Rows whose `sole` column (the origin whose pushes set every column
/// and the delete) is not `me`: the rows a replica does not already hold
/// as its own pushes left them, which pulls and snapshots send it.
pub(super) fn not_set_whole_by(sole: Expr, me: NodeId) -> SimpleExpr {
    sole.clone().is_null().or(sole.ne(me.to_string()))
}

/// Up to `limit` rows changed after `cursor`, leaving out those whose
/// every column `skip`'s pushes set and those `visible` does not show. `specs` are
/// the tables as installed (others are read as the hub records their keys).
pub(super) async fn read<C: ConnectionTrait>(
    db: &C,
    seen: &Seen,
    specs: &[TableSpec],
    cursor: Cursor,
    limit: u64,
    skip: Option<NodeId>,
    visible: Option<&Visible>,
) -> Result<StatePage> {
    let limit = Ord::min(Ord::max(limit, 1), i64::MAX as u64);
    let mut page = StatePage {
        next: cursor,
        ..StatePage::default()
    };
    let tip = log::tip(db).await?;
    if tip <= cursor.0 {
        return Ok(page);
    }
    let tables = versioned(db, specs).await.map_err(Error::or_offline)?;
    if !positioned(db, seen, &tables).await {
        return Err(Error::Corrupt(
            "a version table of this hub holds rows without a position, which a pull would \
             pass over: no install of this release has upgraded the hub yet, or a server of an \
             earlier build that does not give them (hub schema version 3) is writing to it. \
             Stop such a server, then install (a server of this release installs as it starts): \
             the install gives the rows their positions"
                .into(),
        ));
    }
    let d = crate::dialect::of_db(db)?;
    let mut found: Vec<(&TableSpec, AtPosition)> = Vec::new();
    for spec in &tables {
        // The rows `skip` did not set whole, and `visible`'s, as the
        // columns `sole` and `owner` record them.
        let filter = |sole: &str, owner: &str| -> Option<Option<SimpleExpr>> {
            let mut filter = skip.map(|me| not_set_whole_by(Expr::col(Alias::new(sole)), me));
            if let Some(v) = visible {
                match v.rows_of(&spec.name, owner)? {
                    None => {}
                    Some(mine) => {
                        filter = Some(match filter {
                            Some(f) => f.and(mine),
                            None => mine,
                        })
                    }
                }
            }
            Some(filter)
        };
        let Some(of_versions) = filter("sole", "owner") else {
            continue;
        };
        let of_users = filter(ROW_META[3], ROW_META[4]).flatten();
        let mut versions = Versions::open(db, HUB_VERSIONS, spec)
            .await
            .map_err(Error::or_offline)?;
        let rows = versions
            .after(db, cursor.0, tip, limit, of_versions)
            .await
            .map_err(Error::or_offline)?;
        // The users' rows that carry their state, and the version rows
        // at other positions: a row at one position in both (written by
        // a development build that wrote both places) is read from its
        // users' row, unless that one cannot be read there.
        let users = match carries_states(db, seen, spec).await? {
            true => UserRows::new(d, spec)
                .after(db, versions.ordinals(), cursor.0, tip, limit, of_users)
                .await
                .map_err(Error::or_offline)?,
            false => Vec::new(),
        };
        let mut by_position: std::collections::BTreeMap<u64, AtPosition> =
            rows.into_iter().map(|r| (r.hub_seq, r)).collect();
        for r in users {
            let version_row_reads = by_position.get(&r.hub_seq).is_some_and(|v| v.row.is_ok());
            if r.row.is_ok() || !version_row_reads {
                by_position.insert(r.hub_seq, r);
            }
        }
        // Each read gave its first `limit` rows: the first `limit` of
        // both are all read up to the last of them.
        found.extend(
            by_position
                .into_values()
                .take(usize::try_from(limit).unwrap_or(usize::MAX))
                .map(|r| (spec, r)),
        );
    }
    found.sort_by_key(|(_, r)| r.hub_seq);
    // Each table gave its first `limit` rows: as many in all, and the
    // rows after the last of them may be anywhere.
    let mut full = found.len() as u64 >= limit;
    found.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let mut bytes = 0;
    for (spec, r) in found {
        let (key, state) = match r.row {
            Ok(row) => row,
            // A row recorded without an owner, of a table with owners, is
            // this user's only if its state says so: unread, it is passed
            // over (as another user's row), never sent.
            Err(_) if visible.is_some_and(|v| r.owner.is_none() && !v.shows_table(&spec.name)) => {
                page.next = Cursor(r.hub_seq);
                continue;
            }
            Err((e, raw)) => {
                // Stop at it: the replica decides to halt or to park it.
                page.unreadable = Some(Unreadable {
                    position: Cursor(r.hub_seq),
                    table: spec.name.clone(),
                    raw,
                    reason: format!(
                        "the hub's row at position {} of `{}` cannot be read: {e}",
                        r.hub_seq, spec.name
                    ),
                });
                full = true;
                break;
            }
        };
        let pk: Vec<(String, sea_orm::Value)> =
            spec.pk.iter().map(|c| c.name.clone()).zip(key).collect();
        if let Some(v) = visible
            && r.owner.is_none()
            && !v.shows_table(&spec.name)
            && !v.shows_row(&spec.name, &pk, &state)
        {
            // Recorded without an owner (before its table had owners): the
            // user's if its row is now. Passed over, unread.
            page.next = Cursor(r.hub_seq);
            continue;
        }
        // A page of at most about `PAGE_BYTES` of values (and at least
        // one row): rows of megabytes do not make answers of gigabytes.
        let size = state.vals.values().map(approx_size).sum::<usize>() + 64;
        if !page.rows.is_empty() && bytes + size > PAGE_BYTES {
            full = true;
            break;
        }
        bytes += size;
        page.next = Cursor(r.hub_seq);
        page.rows.push(SnapshotRow {
            table: spec.name.clone(),
            pk,
            state,
        });
    }
    if !full {
        page.next = Cursor(tip);
    }
    page.next_id = log::id_at(db, page.next, visible).await?;
    Ok(page)
}

/// The version tables a hub has seen with every column of a position:
/// columns are never taken away, so the catalog is asked once per table.
#[derive(Debug, Default)]
pub(super) struct Seen(std::sync::Mutex<std::collections::HashSet<String>>);

impl Seen {
    fn has(&self, table: &str) -> bool {
        self.0.lock().is_ok_and(|s| s.contains(table))
    }

    fn add(&self, table: &str) {
        if let Ok(mut s) = self.0.lock() {
            s.insert(table.to_owned());
        }
    }
}

/// Whether the users' table of `spec` has the columns of its rows'
/// states ([`ROW_META`]; an install gives them to every users' table that
/// has a version table, but an operator may have dropped one).
async fn carries_states<C: ConnectionTrait>(db: &C, seen: &Seen, spec: &TableSpec) -> Result<bool> {
    let d = crate::dialect::of_db(db)?;
    let place = Place::of(d, spec);
    let name = format!("{place:?}");
    if seen.has(&name) {
        return Ok(true);
    }
    // An error is the pull's: a table taken for one without such rows
    // would have its live rows left out, and the cursor moved past them.
    let columns = existing_columns(db, d, place)
        .await
        .map_err(Error::or_offline)?;
    let carries = columns.iter().any(|c| c == ROW_META[3]);
    if carries {
        seen.add(&name);
    }
    Ok(carries)
}

/// Whether every row of `tables` has a position (their version tables
/// have every column of it, and no row lacks one).
async fn positioned<C: ConnectionTrait>(db: &C, seen: &Seen, tables: &[TableSpec]) -> bool {
    let Ok(d) = crate::dialect::of_db(db) else {
        return false;
    };
    for spec in tables {
        let name = hub_version_table(&spec.name);
        // `sole`, the column an upgrade adds last. Asked of the catalog:
        // SQLite takes a quoted name it does not know for a string.
        if !seen.has(&name) {
            match existing_columns(db, d, Place::own(&name)).await {
                Ok(columns) if columns.iter().any(|c| c == "sole") => seen.add(&name),
                _ => return false,
            }
        }
        let q = Query::select()
            .expr(Expr::val(1))
            .from(Alias::new(&name))
            .and_where(Expr::col(Alias::new("hub_seq")).is_null())
            .limit(1)
            .to_owned();
        match db.query_one(&q).await {
            Ok(None) => {}
            // A row without one, or no such column: the log reader then
            // reports any failure of the hub's.
            Ok(Some(_)) | Err(_) => return false,
        }
    }
    true
}
