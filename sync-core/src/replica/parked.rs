//! `_tidesync_parked`: changes this replica could not apply (pulled ones)
//! or read back (its own outbox's), kept with the reason instead of lost.

use sea_orm::sea_query::{Alias, Query};
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

use super::tables::PARKED;
use crate::model::error::Result;
use crate::store::codec::db_sequence;
use crate::store::write::Inserts;

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

/// Park these changes, in multi-row statements bounded in rows and bytes.
pub(crate) async fn park<C: ConnectionTrait>(db: &C, rows: &[Parked<'_>]) -> Result<()> {
    for q in park_statements(db.get_database_backend(), rows)? {
        db.execute_raw(q).await?;
    }
    Ok(())
}

/// The inserts of [`park`].
fn park_statements(backend: DbBackend, rows: &[Parked<'_>]) -> Result<Vec<Statement>> {
    let template = Query::insert()
        .into_table(Alias::new(PARKED))
        .columns(["tbl", "pk", "origin", "seq", "payload", "reason"].map(Alias::new))
        .to_owned();
    let mut sized = Vec::with_capacity(rows.len());
    for p in rows {
        let size = p.key.len() + p.payload.len() + p.reason.len() + 100;
        let values: Vec<Value> = vec![
            p.table.into(),
            p.key.clone().into(),
            p.origin.clone().into(),
            db_sequence(p.seq)?.into(),
            p.payload.clone().into(),
            p.reason.into(),
        ];
        sized.push((values, size));
    }
    Inserts::plain(backend, template, 6).statements(sized)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::write::{MAX_BYTES, MAX_ROWS};

    fn parked(n: usize, payload: usize) -> Vec<Parked<'static>> {
        (0..n)
            .map(|i| Parked {
                table: "t",
                key: format!("[{i}]"),
                origin: "o".into(),
                seq: i as u64 + 1,
                payload: "x".repeat(payload),
                reason: "why",
            })
            .collect()
    }

    fn rows_per_statement(rows: &[Parked<'_>]) -> Vec<usize> {
        park_statements(DbBackend::Sqlite, rows)
            .unwrap()
            .iter()
            .map(|q| q.values.as_ref().unwrap().0.len() / 6)
            .collect()
    }

    /// Many changes of one row parked at once (a page of edits of a row
    /// this database cannot hold) must not make one statement too large
    /// for the database: the page would fail at every sync.
    #[test]
    fn parked_changes_are_inserted_in_bounded_statements() {
        assert!(rows_per_statement(&[]).is_empty());
        assert_eq!(rows_per_statement(&parked(3, 10)), [3]);
        assert_eq!(
            rows_per_statement(&parked(2 * MAX_ROWS + 1, 10)),
            [MAX_ROWS, MAX_ROWS, 1]
        );
        // Each row about a third of MAX_BYTES, plus its key, reason and
        // overhead: two fit in a statement, a third would pass the bound.
        assert_eq!(rows_per_statement(&parked(7, MAX_BYTES / 3)), [2, 2, 2, 1]);
        assert_eq!(rows_per_statement(&parked(5, MAX_BYTES / 3 - 120)), [3, 2]);
        // The size counts key, payload and reason: two rows whose sizes sum
        // to one byte over the bound go apart (key `[0]` and reason `why`
        // are 3 bytes each, plus 100 of overhead).
        let over = MAX_BYTES / 2 - 3 - 3 - 100 + 1;
        assert_eq!(rows_per_statement(&parked(2, over)), [1, 1]);
        assert_eq!(rows_per_statement(&parked(2, over - 1)), [2]);
    }

    #[test]
    fn a_sequence_beyond_the_databases_integers_is_refused() {
        let mut rows = parked(1, 1);
        rows[0].seq = u64::MAX;
        assert!(park_statements(DbBackend::Sqlite, &rows).is_err());
    }
}
