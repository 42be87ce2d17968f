//! SQLite: `ON CONFLICT` upserts, one trigger per event that skips every
//! write while tidesync applies (one writer at a time), no row locks,
//! decimals stored as 8-byte floats.

use sea_orm::sea_query::{ColumnType, Value};

use sea_orm::DbBackend;

use super::Dialect;
use super::triggers::{Capture, Trigger, Upsert, marker_upsert, on_conflict, per_event};
use super::values::{above_i64, is_negative_zero};
use crate::model::error::ErrorKind;

/// SQLite.
pub(super) struct Sqlite;

impl Dialect for Sqlite {
    fn joins_keys(&self) -> bool {
        true
    }

    fn keeps_bound_forms(&self) -> bool {
        true
    }

    fn backend(&self) -> DbBackend {
        DbBackend::Sqlite
    }

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
        let upsert = Upsert {
            now_us: NOW_US,
            existing: &q,
            excluded: "excluded",
        };
        let mark = |row: &str, gone: &str| marker_upsert(c, row, gone, q, &upsert);
        let trigger = |name: String, when: String, body: String| Trigger {
            sql: format!(
                "CREATE TRIGGER IF NOT EXISTS {} {when} ON {}\n\
                 WHEN NOT EXISTS (SELECT 1 FROM {})\n\
                 BEGIN\n{body}END",
                q(&name),
                c.table.quoted(&Sqlite),
                c.own(c.applying, q),
            ),
            name,
        };
        let mut out: Vec<Trigger> = per_event(c, q, mark, "  ")
            .map(|(event, suffix, body)| trigger((c.name)(suffix), format!("AFTER {event}"), body))
            .collect();
        if !c.uniques.is_empty() {
            // `INSERT OR REPLACE` and `UPDATE OR REPLACE` delete the rows
            // that hold a unique value of the new row without firing delete
            // triggers (unless recursive triggers are on): before the write,
            // mark every row holding one; capture then sees which are gone.
            let body: String = c
                .uniques
                .iter()
                .map(|cols| format!("  {};\n", mark_holders(c, cols, q, &upsert)))
                .collect();
            let mut columns: Vec<String> = c.uniques.iter().flatten().map(|n| q(n)).collect();
            columns.sort();
            columns.dedup();
            out.push(trigger(
                (c.name)("uqi"),
                "BEFORE INSERT".into(),
                body.clone(),
            ));
            let when = format!("BEFORE UPDATE OF {}", columns.join(", "));
            out.push(trigger((c.name)("uqu"), when, body));
        }
        out
    }

    fn triggers_query(&self) -> Option<&'static str> {
        Some("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?")
    }

    fn unique_columns_query(&self) -> Option<&'static str> {
        // Per unique index but the key's: its name and its columns in
        // order (an expression's column has no name).
        Some(
            "SELECT il.name, ii.name FROM pragma_index_list(?) AS il, \
             pragma_index_info(il.name) AS ii \
             WHERE il.\"unique\" = 1 AND il.origin <> 'pk' ORDER BY il.name, ii.seqno",
        )
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

/// The marker upsert of every row holding the values of the unique
/// columns `cols` that the row `NEW` is about to take.
fn mark_holders(
    c: &Capture<'_>,
    cols: &[String],
    q: impl Fn(&str) -> String + Copy,
    u: &Upsert<'_>,
) -> String {
    let keys: Vec<String> = c.keys.iter().map(|k| format!("h.{}", q(k))).collect();
    let holds: Vec<String> = cols
        .iter()
        .map(|n| format!("h.{0} = NEW.{0}", q(n)))
        .collect();
    let names: Vec<String> = c.keys.iter().map(|k| q(k)).collect();
    format!(
        "INSERT INTO {} ({}, {}, {}, {}) SELECT {}, 1, {}, 0 FROM {} AS h WHERE {} {}",
        c.own(c.markers, q),
        names.join(", "),
        q("ver"),
        q("wall_us"),
        q("gone"),
        keys.join(", "),
        u.now_us,
        c.table.quoted(&Sqlite),
        holds.join(" AND "),
        on_conflict(c, q, u),
    )
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
        assert!(!Sqlite.has_schemas());
        assert_eq!(Sqlite.schema_query(), None);
        assert_eq!(Sqlite.schema_exists_query(), None);
        assert_eq!(Sqlite.catalog_name(crate::dialect::Place::own("t")), "t");
        assert_eq!(Sqlite.session_expr(), "0");
        assert_eq!(Sqlite.key_types_query(), None);
        assert!(!Sqlite.upsert_takes_any_unique());
        assert_eq!(
            Sqlite.unique_columns_query(),
            Some(
                "SELECT il.name, ii.name FROM pragma_index_list(?) AS il, \
                 pragma_index_info(il.name) AS ii \
                 WHERE il.\"unique\" = 1 AND il.origin <> 'pk' ORDER BY il.name, ii.seqno"
            )
        );
        assert_eq!(
            Sqlite.now_us(),
            "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)"
        );
        assert!(!Sqlite.locks_rows());
        assert_eq!(Sqlite.plan_hint_expr(), None);
        assert!(!Sqlite.writes_in_with());
        assert_eq!(
            Sqlite.triggers_query(),
            Some("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?")
        );
    }
}
