//! The hub's change log, as releases before hub schema version 5 wrote
//! it (a row per applied change, its values as typed JSON): no longer
//! written, and kept under another name (see `tables::retire_log`). It
//! answers for the positions before batch records (the id at a position,
//! a change pushed again); the hub's sequence (its tip) is here too.

use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Alias, Expr, ExprTrait};

use super::tables::{CHANGES, HUB_META};
use super::visible::Visible;
use crate::model::change::ChangeId;
use crate::model::error::{Error, Result};
use crate::model::protocol::Cursor;
use crate::store::codec::{db_sequence, sequence};

/// The last hub sequence committed.
pub(super) async fn tip<C: ConnectionTrait>(db: &C) -> Result<u64> {
    let next_seq = HUB_META
        .read(db, "next_seq")
        .await
        .map_err(Error::or_offline)?;
    let next_seq: u64 = next_seq.and_then(|s| s.parse().ok()).unwrap_or(1);
    Ok(next_seq.saturating_sub(1))
}

/// About how many bytes of values a pull page holds at most (beyond its
/// first change): as much as one write statement binds.
pub(super) const PAGE_BYTES: usize = crate::store::write::MAX_BYTES;

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
