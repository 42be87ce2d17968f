//! Holding a capture pass still at a known point, on the servers: a
//! transaction of another connection inserts the outbox row the pass is
//! about to write, so the pass waits on that row's lock until it ends.

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, Statement, TransactionTrait,
};

use super::{BoxError, Dialect, TestDb};

/// Begin a transaction on `conn` that holds the outbox sequence the next
/// change will take (PostgreSQL and MySQL): a capture pass blocks on its
/// outbox insert until the transaction rolls back.
pub async fn hold_next_outbox_seq(
    t: &TestDb,
    conn: &DatabaseConnection,
) -> Result<DatabaseTransaction, BoxError> {
    let seq: i64 = super::read_meta(&t.db, "next_seq")
        .await?
        .ok_or("next_seq")?
        .parse()?;
    let blocker = conn.begin().await?;
    blocker
        .execute_raw(Statement::from_sql_and_values(
            t.backend(),
            match t.dialect {
                Dialect::MySql => {
                    "INSERT INTO _tidesync_outbox (seq, tbl, pk, op, payload, hlc) VALUES (?, 'x', 'x', 'x', 'x', 'x')"
                }
                _ => {
                    "INSERT INTO _tidesync_outbox (seq, tbl, pk, op, payload, hlc) VALUES ($1, 'x', 'x', 'x', 'x', 'x')"
                }
            },
            [seq.into()],
        ))
        .await?;
    Ok(blocker)
}

/// Whether a capture pass of this test's database is inside its outbox
/// insert (PostgreSQL and MySQL only): it has read its markers, rows and
/// states, and it cannot finish the insert while another transaction holds
/// an uncommitted row with the same sequence number.
/// Whether a capture pass is waiting on its outbox insert.
pub async fn pass_in_outbox_insert(t: &TestDb) -> Result<bool, BoxError> {
    let sql = match t.dialect {
        Dialect::Postgres => {
            "SELECT COUNT(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND state = 'active' \
             AND query LIKE 'INSERT INTO \"\\_tidesync\\_outbox\"%'"
        }
        // MariaDB does not list a transaction waiting on a duplicate key in
        // INNODB_TRX reliably; the process list shows the statement.
        _ => {
            "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST \
             WHERE DB = DATABASE() AND COMMAND IN ('Query', 'Execute') \
             AND INFO LIKE 'INSERT INTO `\\_tidesync\\_outbox`%'"
        }
    };
    let row =
        t.db.query_one_raw(Statement::from_string(t.backend(), sql))
            .await?
            .ok_or("COUNT returned no row")?;
    Ok(row.try_get::<i64>("", "n")? > 0)
}

/// Whether a session of this test's database waits for a row lock
/// (PostgreSQL and MySQL).
pub async fn a_session_waits_for_a_lock(t: &TestDb) -> Result<bool, BoxError> {
    let sql = match t.dialect {
        Dialect::Postgres => {
            "SELECT COUNT(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'"
        }
        // MariaDB's INNODB_TRX does not always say LOCK WAIT: any statement
        // still running but this one is waiting.
        _ => {
            "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST \
             WHERE DB = DATABASE() AND COMMAND IN ('Query', 'Execute') \
             AND INFO NOT LIKE '%PROCESSLIST%'"
        }
    };
    let row =
        t.db.query_one_raw(Statement::from_string(t.backend(), sql))
            .await?
            .ok_or("COUNT returned no row")?;
    Ok(row.try_get::<i64>("", "n")? > 0)
}

/// Wait until a session of this test's database waits for a row lock.
pub async fn until_a_session_waits_for_a_lock(t: &TestDb) -> Result<(), BoxError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !a_session_waits_for_a_lock(t).await? {
        if std::time::Instant::now() > deadline {
            let sql = match t.dialect {
                Dialect::Postgres => {
                    "SELECT string_agg(state || ' ' || coalesce(wait_event_type, '') || ' ' || query, ' | ') AS n FROM pg_stat_activity WHERE datname = current_database()"
                }
                _ => {
                    "SELECT GROUP_CONCAT(CONCAT(COMMAND, ' ', COALESCE(STATE, ''), ' ', COALESCE(INFO, '')) SEPARATOR ' | ') AS n FROM information_schema.PROCESSLIST WHERE DB = DATABASE()"
                }
            };
            let sessions =
                t.db.query_one_raw(Statement::from_string(t.backend(), sql))
                    .await?
                    .and_then(|r| r.try_get::<Option<String>>("", "n").ok().flatten())
                    .unwrap_or_default();
            return Err(format!("no session ever waited for a lock; sessions: {sessions}").into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(())
}
