//! Planner help: custom plans for key lookups, and fresh statistics when a
//! table has grown (both only where the dialect needs them).

use sea_orm::ConnectionTrait;

use crate::dialect::{self, Place};
use crate::model::error::Result;

/// Whether a count grew past a power of two, from 1024 on: when the tables
/// it counts deserve fresh statistics (see [`analyze`]).
pub(crate) fn crossed_doubling(before: u64, after: u64) -> bool {
    after >= 1024 && Ord::max(before, 1).ilog2() != after.ilog2()
}

/// Refresh the statistics of these tables where the dialect keeps them
/// (PostgreSQL): each `(table, columns)`, an empty list for every column.
///
/// Autovacuum analyzes eventually, but not during a first large push or
/// pull, and some servers run without it; callers analyze when their count
/// of rows written [`crossed_doubling`], which costs a few analyses in all.
/// Version tables need statistics of their key columns only: leaving out
/// the long values and clocks makes the analysis several times cheaper. A failure is not an error of the
/// caller's work, which has committed: it is ignored, and the next doubling
/// tries again.
pub(crate) async fn analyze<C: ConnectionTrait>(db: &C, tables: &[(Place<'_>, &[&str])]) {
    let Some(sql) = dialect::of_db(db).ok().and_then(|d| d.analyze(tables)) else {
        return;
    };
    // Ignored on purpose, see above.
    let _ = db.execute_unprepared(&sql).await;
}

/// Plan every statement for its own parameters until the end of the
/// transaction `db` is in, where the dialect needs it (PostgreSQL). Each
/// transaction that looks up row states by key runs it once, before the
/// first lookup: the replica's capture, pull and resolve transactions when
/// they take the capture lock, its reconcile pages, the hub's push.
pub(crate) async fn custom_plans<C: ConnectionTrait>(db: &C) -> Result<()> {
    if let Some(sql) = dialect::of_db(db)?.plan_hint() {
        db.execute_unprepared(sql).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_at_every_doubling() {
        assert!(!crossed_doubling(1, 501));
        assert!(!crossed_doubling(501, 1001));
        assert!(crossed_doubling(1001, 1501));
        assert!(!crossed_doubling(1501, 2001));
        assert!(crossed_doubling(2001, 2501));
        assert!(crossed_doubling(0, 100_000));
        let doublings = (0..200u64)
            .filter(|i| crossed_doubling(1 + i * 500, 1 + (i + 1) * 500))
            .count();
        assert_eq!(doublings, 7, "1k, 2k, ... 64k of 100k");
    }
}
