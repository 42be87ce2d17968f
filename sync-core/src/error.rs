//! The one error type of the core, with a [`ErrorKind`] mapped from each
//! database's native codes and a retryable/fatal split.

use sea_orm::{DbErr, RuntimeErr};

/// A `Result` with [`Error`] as its default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database answered with an error (see [`Error::kind`]).
    #[error("database error: {0}")]
    Database(#[from] DbErr),

    /// A value that the target database cannot hold exactly; the write or
    /// change is refused instead of being truncated or rounded.
    #[error("{table}.{column}: cannot store {value}: {reason}")]
    Unrepresentable {
        /// Table of the offending value.
        table: String,
        /// Column of the offending value.
        column: String,
        /// The value, rendered for humans.
        value: String,
        /// Why it cannot be stored.
        reason: String,
    },

    /// A typed value or change payload could not be (de)serialised.
    #[error("malformed change payload: {0}")]
    Payload(#[from] serde_json::Error),

    /// The sync metadata in this database was written by a newer release.
    #[error(
        "sync metadata schema version {found} is newer than this release understands ({supported})"
    )]
    SchemaVersion {
        /// Version found in the database.
        found: i64,
        /// Newest version this release can use.
        supported: i64,
    },

    /// The hub cannot be reached; nothing was lost, retry later.
    #[error("offline: {0}")]
    Offline(String),

    /// The hub refused a change and, by policy, halted its origin's stream
    /// there; the change and the ones after it stay in the outbox.
    #[error("change {id} halted at the hub: {reason}")]
    Halted {
        /// The refused change.
        id: crate::change::ChangeId,
        /// Why, naming table, column and value where there is one.
        reason: String,
    },

    /// A table that is not registered with this replica.
    #[error("table `{0}` is not registered for sync")]
    UnknownTable(String),

    /// The replica was configured in a way that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Stored sync metadata is inconsistent (a bug or a hand edit).
    #[error("corrupt sync metadata: {0}")]
    Corrupt(String),
}

/// What kind of database failure an [`Error::Database`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A unique or primary-key constraint was violated.
    UniqueViolation,
    /// A foreign-key constraint was violated.
    ForeignKeyViolation,
    /// A NOT NULL constraint was violated.
    NotNullViolation,
    /// A CHECK constraint was violated.
    CheckViolation,
    /// A value did not fit its column (too long, out of range).
    DataTooLong,
    /// Serialization failure, deadlock or busy database: try again.
    Serialization,
    /// The connection failed or the server is unreachable.
    Connection,
    /// Anything else.
    Other,
}

impl Error {
    /// Classify the error by the database's native code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Database(e) => db_err_kind(e),
            _ => ErrorKind::Other,
        }
    }

    /// `true` for a passing failure (network, lock, busy database) worth
    /// retrying as-is; `false` for an error that will recur.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Serialization | ErrorKind::Connection
        )
    }

    /// The same error, as [`Error::Offline`] when it means the server could
    /// not be reached (a connection failure); unchanged otherwise.
    pub fn or_offline(self) -> Error {
        match self.kind() {
            ErrorKind::Connection => Error::Offline(self.to_string()),
            _ => self,
        }
    }

    pub(crate) fn unrepresentable(
        table: &str,
        column: &str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Unrepresentable {
            table: table.to_owned(),
            column: column.to_owned(),
            value: value.into(),
            reason: reason.into(),
        }
    }
}

fn db_err_kind(e: &DbErr) -> ErrorKind {
    let runtime = match e {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => return ErrorKind::Connection,
        DbErr::Exec(r) | DbErr::Query(r) => r,
        _ => return ErrorKind::Other,
    };
    runtime_kind(runtime)
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
fn runtime_kind(runtime: &RuntimeErr) -> ErrorKind {
    use sea_orm::sqlx::Error as SqlxError;
    let RuntimeErr::SqlxError(sqlx) = runtime else {
        return ErrorKind::Other;
    };
    match &**sqlx {
        SqlxError::Io(_)
        | SqlxError::Tls(_)
        | SqlxError::PoolTimedOut
        | SqlxError::PoolClosed
        | SqlxError::WorkerCrashed => ErrorKind::Connection,
        SqlxError::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            code_kind(&code, db.message())
        }
        _ => ErrorKind::Other,
    }
}

#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
fn runtime_kind(_runtime: &RuntimeErr) -> ErrorKind {
    ErrorKind::Other
}

#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(dead_code)
)]
/// Map a native error code (SQLSTATE on PostgreSQL, error number on MySQL,
/// extended result code on SQLite) to an [`ErrorKind`].
pub(crate) fn code_kind(code: &str, message: &str) -> ErrorKind {
    match code {
        // PostgreSQL SQLSTATE
        "23505" => ErrorKind::UniqueViolation,
        "23503" => ErrorKind::ForeignKeyViolation,
        "23502" => ErrorKind::NotNullViolation,
        "23514" => ErrorKind::CheckViolation,
        "22001" | "22003" => ErrorKind::DataTooLong,
        "40001" | "40P01" | "55P03" => ErrorKind::Serialization,
        "08000" | "08003" | "08006" | "57P01" | "57P02" | "57P03" => ErrorKind::Connection,
        // MySQL / MariaDB error numbers
        "1062" | "1586" => ErrorKind::UniqueViolation,
        "1451" | "1452" | "1216" | "1217" => ErrorKind::ForeignKeyViolation,
        "1048" | "1364" => ErrorKind::NotNullViolation,
        "3819" | "4025" => ErrorKind::CheckViolation,
        "1406" | "1264" => ErrorKind::DataTooLong,
        "1213" | "1205" => ErrorKind::Serialization,
        "1053" | "1927" | "2006" | "2013" => ErrorKind::Connection,
        // SQLite extended result codes
        "2067" | "1555" => ErrorKind::UniqueViolation,
        "787" => ErrorKind::ForeignKeyViolation,
        "1299" => ErrorKind::NotNullViolation,
        "275" => ErrorKind::CheckViolation,
        "5" | "6" | "261" | "517" => ErrorKind::Serialization,
        _ if message.contains("database is locked") => ErrorKind::Serialization,
        _ => ErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_codes_map_to_kinds() {
        assert_eq!(code_kind("23505", ""), ErrorKind::UniqueViolation);
        assert_eq!(code_kind("1062", ""), ErrorKind::UniqueViolation);
        assert_eq!(code_kind("2067", ""), ErrorKind::UniqueViolation);
        assert_eq!(code_kind("1452", ""), ErrorKind::ForeignKeyViolation);
        assert_eq!(code_kind("40P01", ""), ErrorKind::Serialization);
        assert_eq!(code_kind("1213", ""), ErrorKind::Serialization);
        assert_eq!(code_kind("5", ""), ErrorKind::Serialization);
        assert_eq!(code_kind("42P01", ""), ErrorKind::Other);
    }

    #[test]
    fn unrepresentable_names_table_column_and_value() {
        let e = Error::unrepresentable("contacts", "score", "NaN", "not a number");
        assert_eq!(
            e.to_string(),
            "contacts.score: cannot store NaN: not a number"
        );
        assert!(!e.is_retryable());
    }
}
