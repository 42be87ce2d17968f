//! MySQL and MariaDB: backtick quoting, `ON DUPLICATE KEY` upserts, one
//! trigger per event (checked before creation: `CREATE TRIGGER` cannot skip
//! an existing one), `CONNECTION_ID()` sessions, UTF-8 tables and long
//! types, dates from year 1000 to 9999.

use sea_orm::sea_query::{
    ColumnType, ExprTrait, SimpleExpr, StringLen, TableCreateStatement, Value,
};

use sea_orm::DbBackend;

use super::Dialect;
use super::triggers::{Capture, Trigger, marker_insert, per_event};
use super::values::{is_negative_zero, year_of};
use crate::model::change::TableSpec;
use crate::model::error::ErrorKind;

/// MySQL and MariaDB.
pub(super) struct MySql;

impl Dialect for MySql {
    fn quote(&self, ident: &str) -> String {
        format!("`{}`", ident.replace('`', "``"))
    }

    /// `TEXT` stops at 64 KiB.
    fn long_text(&self) -> ColumnType {
        ColumnType::custom("LONGTEXT")
    }

    /// `BLOB` stops at 64 KiB.
    fn long_bytes(&self) -> ColumnType {
        ColumnType::custom("LONGBLOB")
    }

    /// Microsecond date-times and times, exact decimals, long text and
    /// bytes (keys keep an indexable type), enums as `ENUM(...)`.
    fn column_type(&self, ty: &ColumnType, key: bool) -> ColumnType {
        match ty {
            ColumnType::DateTime | ColumnType::Timestamp | ColumnType::TimestampWithTimeZone => {
                ColumnType::custom("DATETIME(6)")
            }
            ColumnType::Time => ColumnType::custom("TIME(6)"),
            ColumnType::Decimal(None) => ColumnType::Decimal(Some((65, 28))),
            ColumnType::String(StringLen::None)
            | ColumnType::String(StringLen::Max)
            | ColumnType::Text
                if !key =>
            {
                ColumnType::custom("LONGTEXT")
            }
            ColumnType::String(StringLen::Max) | ColumnType::Text => {
                ColumnType::String(StringLen::N(255))
            }
            ColumnType::Blob | ColumnType::VarBinary(_) | ColumnType::Binary(_) if !key => {
                ColumnType::custom("LONGBLOB")
            }
            ColumnType::Enum { .. } => self.marker_key_type(ty),
            other => other.clone(),
        }
    }

    /// InnoDB indexes at most 3072 bytes of a key, and counts each
    /// character of a `VARCHAR` key column as 4 bytes (utf8mb4).
    fn key_refusal(&self, spec: &TableSpec) -> Option<String> {
        let sizes: Vec<(&str, u64)> = spec
            .pk
            .iter()
            .map(|c| (c.name.as_str(), key_bytes(&self.column_type(&c.ty, true))))
            .collect();
        let total: u64 = sizes.iter().map(|(_, n)| n).sum();
        if total <= MAX_KEY_BYTES {
            return None;
        }
        let columns: Vec<String> = sizes
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| format!("`{c}` up to {n} bytes"))
            .collect();
        Some(format!(
            "table `{}`: MySQL indexes at most {MAX_KEY_BYTES} bytes of a primary key, and its key \
             takes {} (utf8mb4 text: 4 bytes a character): declare the key shorter (a single \
             text key at most {} characters)",
            spec.name,
            columns.join(", "),
            MAX_KEY_BYTES / 4,
        ))
    }

    fn marker_key_type(&self, ty: &ColumnType) -> ColumnType {
        match ty {
            ColumnType::Enum { variants, .. } => {
                let v: Vec<String> = variants
                    .iter()
                    .map(|v| v.to_string().replace('\'', "''"))
                    .collect();
                ColumnType::custom(format!("ENUM('{}')", v.join("', '")))
            }
            other => other.clone(),
        }
    }

    /// UTF-8 throughout (`utf8mb4`, binary collation), so payloads and keys
    /// keep every character whatever the database's default.
    fn table_options(&self, table: &mut TableCreateStatement) {
        table.character_set("utf8mb4").collate("utf8mb4_bin");
    }

    fn columns_query(&self) -> &'static str {
        "SELECT COLUMN_NAME AS name FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?"
    }

    fn key_types_query(&self) -> Option<&'static str> {
        Some(
            "SELECT COLUMN_NAME AS name, COLUMN_TYPE AS ty FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        )
    }

    fn triggers(&self, c: &Capture<'_>) -> Vec<Trigger> {
        let q = |s: &str| self.quote(s);
        let (ver, wall, gone) = (q("ver"), q("wall_us"), q("gone"));
        let mark = |row: &str, flag: &str| {
            format!(
                // MySQL assigns left to right: `ver` is the new version
                // by the time `gone` reads it.
                "{} ON DUPLICATE KEY UPDATE {ver} = {ver} + 1, {wall} = VALUES({wall}), \
                 {gone} = IF(VALUES({gone}) > 0, {ver}, {gone})",
                marker_insert(c, row, flag, q, NOW_US)
            )
        };
        per_event(c, q, mark, "    ")
            .map(|(event, suffix, body)| {
                let name = (c.name)(suffix);
                Trigger {
                    sql: format!(
                        "CREATE TRIGGER {} AFTER {event} ON {} FOR EACH ROW\n\
                         BEGIN\n\
                         \x20 IF NOT EXISTS (SELECT 1 FROM {} WHERE {} = {}) THEN\n\
                         {body}\
                         \x20 END IF;\n\
                         END",
                        q(&name),
                        c.table.quoted(self),
                        c.own(c.applying, q),
                        q("session"),
                        self.session_expr(),
                    ),
                    name,
                }
            })
            .collect()
    }

    fn triggers_query(&self) -> Option<&'static str> {
        Some(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS \
             WHERE TRIGGER_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = ?",
        )
    }

    fn session_expr(&self) -> &'static str {
        "CONNECTION_ID()"
    }

    fn now_us(&self) -> &'static str {
        NOW_US
    }

    /// MariaDB does not serve a row-value comparison from an index as a
    /// range, but does the equivalent `OR` form.
    fn after(&self, columns: [SimpleExpr; 2], values: [Value; 2]) -> SimpleExpr {
        let [a, b] = columns;
        let [x, y] = values;
        a.clone().gt(x.clone()).or(a.eq(x).and(b.gt(y)))
    }

    fn locks_rows(&self) -> bool {
        true
    }

    fn upsert_takes_any_unique(&self) -> bool {
        true
    }

    /// sqlx would send a UTC date-time as a TIMESTAMP (whose range ends in
    /// 2038): send it as a DATETIME.
    fn bind_value(&self, _ty: &ColumnType, value: Value) -> Value {
        match value {
            Value::ChronoDateTimeUtc(t) => Value::ChronoDateTime(t.map(|t| t.naive_utc())),
            v => v,
        }
    }

    fn backend(&self) -> DbBackend {
        DbBackend::MySql
    }

    fn refuses(&self, value: &Value) -> Option<&'static str> {
        match value {
            _ if is_negative_zero(value) => Some("MySQL stores -0.0 as 0"),
            _ if year_of(value).is_some_and(|y| !(1000..=9999).contains(&y)) => {
                Some("MySQL dates and date-times run from year 1000 to 9999")
            }
            _ => None,
        }
    }

    /// sqlx sends a `DateTime<Utc>` to MySQL as a TIMESTAMP, whose range
    /// ends in January 2038 (tidesync's own writes send it as DATETIME).
    fn refuses_binding(&self, value: &Value) -> Option<&'static str> {
        match value {
            Value::ChronoDateTimeUtc(Some(t)) if !(1..=2_147_483_647).contains(&t.timestamp()) => {
                Some(
                    "SeaORM sends UTC date-times to MySQL as TIMESTAMP (1970-01-01 00:00:01 to 2038-01-19 03:14:07 UTC)",
                )
            }
            _ => None,
        }
    }

    fn error_kind(&self, code: &str, _message: &str) -> Option<ErrorKind> {
        Some(match code {
            "1062" | "1586" => ErrorKind::UniqueViolation,
            "1451" | "1452" | "1216" | "1217" => ErrorKind::ForeignKeyViolation,
            "1048" | "1364" => ErrorKind::NotNullViolation,
            "3819" | "4025" => ErrorKind::CheckViolation,
            "1406" | "1264" => ErrorKind::DataTooLong,
            "1213" | "1205" => ErrorKind::Serialization,
            "1053" | "1927" | "2006" | "2013" => ErrorKind::Connection,
            _ => return None,
        })
    }
}

/// The most bytes InnoDB indexes of one key (row formats `DYNAMIC` and
/// `COMPRESSED`, the default since MySQL 5.7 and MariaDB 10.2).
const MAX_KEY_BYTES: u64 = 3072;

/// The most bytes a value of a key column of type `ty` (as created on
/// MySQL) takes in an index: text at 4 bytes a character (utf8mb4), bytes
/// as declared; 255 where sea-query leaves the length to MySQL's default;
/// 0 for the types of a few bytes, which count for little.
fn key_bytes(ty: &ColumnType) -> u64 {
    let len = |l: &StringLen| match l {
        StringLen::N(n) => u64::from(*n),
        StringLen::None | StringLen::Max => 255,
    };
    match ty {
        ColumnType::String(l) => 4 * len(l),
        ColumnType::Char(n) => 4 * n.map_or(1, u64::from),
        ColumnType::VarBinary(l) => len(l),
        ColumnType::Binary(n) => u64::from(*n),
        _ => 0,
    }
}

/// Current wall time in microseconds.
const NOW_US: &str = "CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)";

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::sea_query::{Alias, IntoIden, MysqlQueryBuilder, Query, Table};

    #[test]
    fn enums_are_inline_and_tables_utf8() {
        let mood = ColumnType::Enum {
            name: Alias::new("mood").into_iden(),
            variants: vec![
                Alias::new("glad").into_iden(),
                Alias::new("it's").into_iden(),
            ],
        };
        let inline = ColumnType::custom("ENUM('glad', 'it''s')");
        assert_eq!(MySql.marker_key_type(&mood), inline);
        assert_eq!(MySql.column_type(&mood, true), inline);
        assert_eq!(MySql.marker_key_type(&ColumnType::Text), ColumnType::Text);
        assert_eq!(MySql.long_text(), ColumnType::custom("LONGTEXT"));
        let mut t = Table::create();
        t.table(Alias::new("t"))
            .col(sea_orm::sea_query::ColumnDef::new(Alias::new("a")).integer());
        MySql.table_options(&mut t);
        assert_eq!(
            t.to_string(MysqlQueryBuilder),
            "CREATE TABLE `t` ( `a` int ) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        );
        assert_eq!(
            MySql.column_type(&ColumnType::Time, false),
            ColumnType::custom("TIME(6)")
        );
    }

    #[test]
    fn catalog_queries_and_session() {
        // No schemas: a table is named alone (see `Place`).
        assert!(!MySql.has_schemas());
        assert_eq!(MySql.schema_query(), None);
        assert_eq!(MySql.schema_exists_query(), None);
        let place = crate::dialect::Place {
            schema: Some("s"),
            name: "t",
        };
        assert_eq!(MySql.catalog_name(place), "t");
        assert_eq!(
            MySql.columns_query(),
            "SELECT COLUMN_NAME AS name FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?"
        );
        assert_eq!(
            MySql.triggers_query(),
            Some(
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS \
                 WHERE TRIGGER_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = ?"
            )
        );
        assert_eq!(MySql.session_expr(), "CONNECTION_ID()");
        assert_eq!(
            MySql.now_us(),
            "CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)"
        );
        assert!(MySql.locks_rows());
        // ON DUPLICATE KEY UPDATE fires on any unique index: new rows are
        // plain inserts.
        assert!(MySql.upsert_takes_any_unique());
        assert_eq!(
            MySql.key_types_query(),
            Some(
                "SELECT COLUMN_NAME AS name, COLUMN_TYPE AS ty FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?"
            )
        );
        assert_eq!(MySql.unique_columns_query(), None);
        assert_eq!(MySql.plan_hint(), None);
        assert_eq!(MySql.plan_hint_expr(), None);
        assert!(!MySql.writes_in_with());
        assert_eq!(MySql.type_exists_query(), None);
    }

    #[test]
    fn key_bytes_count_text_at_four_bytes_a_character_and_bytes_as_declared() {
        use sea_orm::sea_query::StringLen;
        assert_eq!(key_bytes(&ColumnType::String(StringLen::N(10))), 40);
        assert_eq!(key_bytes(&ColumnType::String(StringLen::None)), 4 * 255);
        assert_eq!(key_bytes(&ColumnType::Char(Some(7))), 28);
        assert_eq!(key_bytes(&ColumnType::Char(None)), 4);
        assert_eq!(key_bytes(&ColumnType::VarBinary(StringLen::N(9))), 9);
        assert_eq!(key_bytes(&ColumnType::VarBinary(StringLen::Max)), 255);
        assert_eq!(key_bytes(&ColumnType::Binary(33)), 33);
        assert_eq!(key_bytes(&ColumnType::BigInteger), 0);
    }

    #[test]
    fn utc_date_times_are_written_as_datetime() {
        let at = chrono::DateTime::from_timestamp(3_000_000_000, 0).unwrap();
        let q = Query::select()
            .expr(MySql.write_value(
                &ColumnType::TimestampWithTimeZone,
                Value::ChronoDateTimeUtc(Some(at)),
            ))
            .to_owned();
        assert_eq!(
            q.to_string(MysqlQueryBuilder),
            "SELECT '2065-01-24 05:20:00.000000'"
        );
    }
}
