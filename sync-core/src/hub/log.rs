//! The hub's change log, as releases before hub schema version 5 wrote
//! it (a row per applied change, its values as typed JSON): no longer
//! written. It answers for the positions before batch records (the id at
//! a position, a change pushed again), and serves pulls on a hub no
//! install of this release has upgraded (see `since`).

use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order};

use super::tables::{CHANGES, HUB_META};
use super::visible::Visible;
use crate::model::change::{Change, ChangeId};
use crate::model::clock::NodeId;
use crate::model::error::{Error, Result};
use crate::model::protocol::{Cursor, PullBatch};
use crate::model::value::approx_size;
use crate::store::codec::{self, db_sequence, sequence};

/// The last hub sequence committed.
pub(super) async fn tip<C: ConnectionTrait>(db: &C) -> Result<u64> {
    let next_seq = HUB_META
        .read(db, "next_seq")
        .await
        .map_err(Error::or_offline)?;
    let next_seq: u64 = next_seq.and_then(|s| s.parse().ok()).unwrap_or(1);
    Ok(next_seq.saturating_sub(1))
}

/// Up to `limit` log entries after `cursor`, leaving out `skip`'s and
/// those `visible` does not show.
///
/// Leaving entries out must not leave a gap: the tip is read first, and
/// because sequences are assigned and committed under the sequence lock,
/// every entry up to it is visible to the query that follows. When fewer
/// than `limit` entries up to the tip are left, the cursor moves to the
/// tip, past the ones left out.
pub(super) async fn read<C: ConnectionTrait>(
    db: &C,
    cursor: Cursor,
    limit: u64,
    skip: Option<NodeId>,
    visible: Option<&Visible>,
) -> Result<PullBatch> {
    let limit = Ord::min(Ord::max(limit, 1), i64::MAX as u64);
    let mut q = CHANGES.select();
    q.and_where(Expr::col(Alias::new("hub_seq")).gt(db_sequence(cursor.0)?))
        .order_by(Alias::new("hub_seq"), Order::Asc)
        .limit(limit);
    let mut tip_now = None;
    if skip.is_some() || visible.is_some() {
        let t = tip(db).await?;
        if t <= cursor.0 {
            return Ok(PullBatch {
                next: cursor,
                ..PullBatch::default()
            });
        }
        q.and_where(Expr::col(Alias::new("hub_seq")).lte(db_sequence(t)?));
        if let Some(me) = skip {
            q.and_where(Expr::col(Alias::new("origin")).ne(me.to_string()));
        }
        if let Some(v) = visible {
            q.and_where(v.condition());
        }
        tip_now = Some(t);
    }
    let rows = db
        .query_all(&q)
        .await
        .map_err(|e| Error::from(e).or_offline())?;
    let mut batch = PullBatch {
        next: cursor,
        ..PullBatch::default()
    };
    let mut full = rows.len() as u64 >= limit;
    let mut bytes = 0;
    let shown = match visible {
        Some(v) => Some(v.shown(db, &rows).await.map_err(Error::or_offline)?),
        None => None,
    };
    for (i, r) in rows.into_iter().enumerate() {
        let hub_seq = sequence(&r, "hub_seq")?;
        let show = shown.as_ref().is_none_or(|s| s[i]);
        match decode(&r) {
            Ok(c) => {
                if show {
                    // A page of at most about `PAGE_BYTES` of values (and
                    // at least one change): rows of megabytes do not make
                    // answers of gigabytes. The next page starts here.
                    let size = change_size(&c);
                    if !batch.changes.is_empty() && bytes + size > PAGE_BYTES {
                        full = true;
                        break;
                    }
                    bytes += size;
                }
                batch.next = Cursor(hub_seq);
                // Another user's change: not even its id.
                batch.next_id = match visible {
                    Some(v) if !show => Some(v.fingerprint(&r)?),
                    _ => Some(c.id),
                };
                if show {
                    batch.changes.push(c);
                }
            }
            // Not this user's: passed over, unread.
            Err(_) if !show => {
                batch.next = Cursor(hub_seq);
                batch.next_id = visible.map(|v| v.fingerprint(&r)).transpose()?;
            }
            Err(e) => {
                // Stop at it: the replica decides to halt or to park it.
                let reason = format!("change {hub_seq} of the hub log is malformed: {e}");
                batch.unreadable = Some(codec::unreadable(&r, hub_seq, reason));
                return Ok(batch);
            }
        }
    }
    if let (Some(tip), false) = (tip_now, full)
        && batch.next != Cursor(tip)
    {
        batch.next = Cursor(tip);
    }
    // As `Hub::standing` tells it later (a batch record's rule, see
    // `id_at`), whatever the entry said.
    if batch.next != cursor {
        batch.next_id = id_at(db, batch.next, visible).await?;
    }
    Ok(batch)
}

/// About how many bytes of values a pull page holds at most (beyond its
/// first change): as much as one write statement binds.
pub(super) const PAGE_BYTES: usize = crate::store::write::MAX_BYTES;

/// About how many bytes of values `c` carries.
fn change_size(c: &Change) -> usize {
    c.columns.iter().map(|(_, v)| approx_size(v)).sum::<usize>() + 64
}

/// The id of the change logged at `at`, if there is one (and `visible`
/// shows it, when given: another user's change ids are not told).
pub(super) async fn id_at<C: ConnectionTrait>(
    db: &C,
    at: Cursor,
    visible: Option<&Visible>,
) -> Result<Option<ChangeId>> {
    // A position a batch record holds: under an account, its id is told
    // to the user who pushed it, a fingerprint to the others (a batch
    // record does not say whose row a change is of, as the log does).
    if let Some(id) = super::batches::id_at(db, at.0)
        .await
        .map_err(Error::or_offline)?
    {
        let Some(v) = visible else {
            return Ok(Some(id));
        };
        let pusher = Visible::pusher(db, id.origin)
            .await
            .map_err(Error::or_offline)?;
        return Ok(Some(match pusher.as_deref() == Some(v.user()) {
            true => id,
            false => v.fingerprint_of(at.0, &id.origin.to_string(), id.seq),
        }));
    }
    let q = sea_orm::sea_query::Query::select()
        .columns(["hub_seq", "origin", "origin_seq", "owner", "tbl", "pk"].map(Alias::new))
        .from(Alias::new(CHANGES.name))
        .and_where(Expr::col(Alias::new("hub_seq")).eq(db_sequence(at.0)?))
        .to_owned();
    let Some(r) = db
        .query_one(&q)
        .await
        .map_err(|e| Error::from(e).or_offline())?
    else {
        return Ok(None);
    };
    if let Some(v) = visible
        && !v.shown(db, std::slice::from_ref(&r)).await?[0]
    {
        return Ok(Some(v.fingerprint(&r)?));
    }
    let origin: String = r.try_get("", "origin")?;
    Ok(Some(ChangeId {
        origin: origin.parse()?,
        seq: sequence(&r, "origin_seq")?,
    }))
}

/// A log entry as the change it logs.
fn decode(r: &sea_orm::QueryResult) -> Result<Change> {
    let origin: String = r.try_get("", "origin")?;
    let id = ChangeId {
        origin: origin.parse()?,
        seq: sequence(r, "origin_seq")?,
    };
    codec::decode(id, r)
}
