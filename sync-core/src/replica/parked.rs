//! `_tidesync_parked`: changes this replica could not apply (pulled ones)
//! or read back (its own outbox's), kept with the reason instead of lost.

use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Alias, Query};

use super::tables::PARKED;
use crate::model::error::Result;
use crate::store::codec::db_sequence;

/// One parked change.
#[derive(Debug)]
pub(crate) struct Parked<'a> {
    /// Its table, as far as it could be read.
    pub(crate) table: &'a str,
    /// Its key text (empty when it could not be read).
    pub(crate) key: String,
    /// Its origin (`snapshot` for a snapshot row).
    pub(crate) origin: String,
    /// Its sequence at the origin (0 for a snapshot row).
    pub(crate) seq: u64,
    /// The stored text of the change.
    pub(crate) payload: String,
    /// Why it was parked.
    pub(crate) reason: &'a str,
}

/// Park these changes, in one statement.
pub(crate) async fn park<C: ConnectionTrait>(db: &C, rows: &[Parked<'_>]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut q = Query::insert();
    q.into_table(Alias::new(PARKED))
        .columns(["tbl", "pk", "origin", "seq", "payload", "reason"].map(Alias::new));
    for p in rows {
        q.values_panic([
            p.table.into(),
            p.key.clone().into(),
            p.origin.clone().into(),
            db_sequence(p.seq)?.into(),
            p.payload.clone().into(),
            p.reason.into(),
        ]);
    }
    db.execute(&q).await?;
    Ok(())
}
