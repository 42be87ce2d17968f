//! SQLite: `ON CONFLICT` upserts, one trigger per event that skips every
//! write while tidesync applies (one writer at a time), no row locks,
//! decimals stored as 8-byte floats.

use sea_orm::sea_query::{ColumnType, Value};

use super::Dialect;
use super::triggers::{Capture, Trigger, marker_upsert, per_event};
use super::values::{above_i64, is_negative_zero};
use crate::model::error::ErrorKind;

/// SQLite.
pub(super) struct Sqlite;

impl Dialect for Sqlite {
    fn column_type(&self, ty: &ColumnType, _key: bool) -> ColumnType {
        ty.clone()
    }

    fn marker_key_type(&self, ty: &ColumnType) -> ColumnType {
        ty.clone()
    }

    fn columns_query(&self) -> &'static str {
        "SELECT name FROM pragma_table_info(?)"
    }

    fn triggers(&self, c: &Capture<'_>) -> Vec<Trigger> {
        let q = |s: &str| self.quote(s);
        let mark = |row: &str| marker_upsert(c, row, q, NOW_US, &q("ver"), "excluded");
        per_event(mark, "  ")
            .map(|(event, suffix, body)| {
                let name = (c.name)(suffix);
                Trigger {
                    sql: format!(
                        "CREATE TRIGGER IF NOT EXISTS {} AFTER {event} ON {}\n\
                         WHEN NOT EXISTS (SELECT 1 FROM {})\n\
                         BEGIN\n{body}END",
                        q(&name),
                        q(c.table),
                        q(c.applying),
                    ),
                    name,
                }
            })
            .collect()
    }

    /// One writer at a time, and the applying row is never committed.
    fn session_expr(&self) -> &'static str {
        "0"
    }

    fn now_us(&self) -> &'static str {
        NOW_US
    }

    /// A write transaction locks the whole database.
    fn locks_rows(&self) -> bool {
        false
    }

    fn refuses(&self, value: &Value) -> Option<&'static str> {
        match value {
            _ if is_negative_zero(value) => Some("SQLite stores -0.0 as 0"),
            _ if above_i64(value) => {
                Some("SQLite stores integers as signed 64-bit (max 9223372036854775807)")
            }
            Value::Decimal(Some(d)) if !decimal_fits_f64(d) => Some(
                "SQLite stores decimals as 8-byte floats (SeaORM reads them through f64), which cannot hold this one exactly",
            ),
            _ => None,
        }
    }

    fn error_kind(&self, code: &str, message: &str) -> Option<ErrorKind> {
        Some(match code {
            "2067" | "1555" => ErrorKind::UniqueViolation,
            "787" => ErrorKind::ForeignKeyViolation,
            "1299" => ErrorKind::NotNullViolation,
            "275" => ErrorKind::CheckViolation,
            "5" | "6" | "261" | "517" => ErrorKind::Serialization,
            _ if message.contains("database is locked") => ErrorKind::Serialization,
            _ => return None,
        })
    }
}

/// Current wall time in microseconds.
const NOW_US: &str = "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)";

/// Whether a decimal survives SQLite: stored as REAL, read back by SeaORM
/// through `f64` and `Decimal::try_from`.
fn decimal_fits_f64(d: &rust_decimal::Decimal) -> bool {
    use rust_decimal::prelude::ToPrimitive;
    d.to_f64()
        .and_then(|f| rust_decimal::Decimal::try_from(f).ok())
        .is_some_and(|back| back == *d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_the_entitys_and_nothing_is_locked() {
        let text = ColumnType::Text;
        assert_eq!(Sqlite.column_type(&text, false), text);
        assert_eq!(Sqlite.marker_key_type(&ColumnType::Uuid), ColumnType::Uuid);
        assert_eq!(
            Sqlite.columns_query(),
            "SELECT name FROM pragma_table_info(?)"
        );
        assert_eq!(Sqlite.session_expr(), "0");
        assert_eq!(
            Sqlite.now_us(),
            "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)"
        );
        assert!(!Sqlite.locks_rows());
        assert_eq!(Sqlite.triggers_query(), None);
    }
}
