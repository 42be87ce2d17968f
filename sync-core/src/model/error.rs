//! The one error type of tidesync, with an [`ErrorKind`] and a
//! retryable/fatal split. A database error's kind comes from its native
//! code, which the dialect layer maps when it converts the error.

use sea_orm::DbErr;

/// A `Result` with [`Error`] as its default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database answered with an error.
    #[error("database error: {source}")]
    Database {
        /// The error.
        source: DbErr,
        /// Its kind, by the database's native code (see [`Error::kind`]).
        kind: ErrorKind,
    },

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

    /// A table that is not registered with this replica.
    #[error("table `{0}` is not registered for sync")]
    UnknownTable(String),

    /// A pulled change (or snapshot row) this replica's own table refused
    /// to hold: a constraint the hub's table does not have, a foreign key
    /// to a row this replica lacks, a NOT NULL column the row state has no
    /// value for. It is parked in `_tidesync_parked` with the reason.
    #[error("{table} {key}: refused by this replica's table: {reason}")]
    Refused {
        /// Table of the row.
        table: String,
        /// Its key, as typed values.
        key: String,
        /// What the database said.
        reason: String,
    },

    /// The replica was configured in a way that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The hub refused the credentials (no token, a wrong, expired or
    /// revoked one): nothing was read or written. Retrying with the same
    /// credentials fails again.
    #[error("unauthorized: {0}")]
    Unauthorized(String),

    /// The hub and this release do not speak the same protocol (a version
    /// one of them does not know, or an answer this release cannot read).
    #[error("protocol: {0}")]
    Protocol(String),

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
            Error::Database { kind, .. } => *kind,
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

#[cfg(test)]
mod tests {
    use super::*;

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
