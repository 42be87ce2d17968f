//! PostgreSQL: `ON CONFLICT` upserts, one trigger function per table,
//! `pg_backend_pid()` sessions, enum types, custom plans and `ANALYZE`.

use sea_orm::sea_query::{ColumnType, Expr, ExprTrait, SimpleExpr, Value};

use sea_orm::DbBackend;

use super::triggers::{Capture, Gone, Trigger, Upsert, marker_upsert};
use super::values::{above_i64, year_of};
use super::{Dialect, Place};
use crate::model::change::TableSpec;
use crate::model::error::{ErrorKind, Result};

/// PostgreSQL.
pub(super) struct Postgres;

impl Dialect for Postgres {
    fn column_type(&self, ty: &ColumnType, _key: bool) -> ColumnType {
        match ty {
            ColumnType::Enum { name, .. } => ColumnType::Custom(name.clone()),
            // sqlx binds and reads `i8` only as PostgreSQL's one-byte "char".
            ColumnType::TinyInteger => ColumnType::custom("\"char\""),
            other => other.clone(),
        }
    }

    fn marker_key_type(&self, ty: &ColumnType) -> ColumnType {
        match ty {
            ColumnType::Enum { name, .. } => ColumnType::Custom(name.clone()),
            other => other.clone(),
        }
    }

    fn custom_types(&self, spec: &TableSpec) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for c in &spec.columns {
            if let ColumnType::Enum { name, variants } = &c.ty {
                let labels: Vec<String> = variants
                    .iter()
                    .map(|v| format!("'{}'", v.to_string().replace('\'', "''")))
                    .collect();
                let sql = format!(
                    "CREATE TYPE {} AS ENUM ({})",
                    self.quote(&name.to_string()),
                    labels.join(", ")
                );
                out.push((name.to_string(), sql));
            }
        }
        out
    }

    fn type_exists_query(&self) -> Option<&'static str> {
        Some("SELECT 1 AS one FROM pg_type WHERE typname = $1")
    }

    fn key_types_query(&self) -> Option<&'static str> {
        Some(
            "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS ty \
             FROM pg_attribute a WHERE a.attrelid = to_regclass($1) \
             AND a.attnum > 0 AND NOT a.attisdropped",
        )
    }

    fn has_schemas(&self) -> bool {
        true
    }

    /// The quoted, schema-qualified name, which `to_regclass` reads as
    /// the statements on the table do (NULL for a missing table, so the
    /// queries return no rows).
    fn catalog_name(&self, place: Place<'_>) -> String {
        place.quoted(self)
    }

    fn schema_exists_query(&self) -> Option<&'static str> {
        Some("SELECT 1 AS one FROM pg_namespace WHERE nspname = $1")
    }

    fn schema_query(&self) -> Option<&'static str> {
        Some(
            "SELECT n.nspname::text AS name FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
        )
    }

    fn columns_query(&self) -> &'static str {
        "SELECT a.attname::text AS name FROM pg_attribute a \
         WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum"
    }

    /// One function marks the old row (updates, deletes) and the new row
    /// (inserts, updates); one row-level trigger runs it after every write.
    fn triggers(&self, c: &Capture<'_>) -> Vec<Trigger> {
        let q = |s: &str| self.quote(s);
        // In PL/pgSQL a bare column name would be ambiguous: qualify it.
        let existing = |column: &str| format!("{}.{}", q(c.markers), q(column));
        let upsert = Upsert {
            now_us: NOW_US,
            existing: &existing,
            excluded: "EXCLUDED",
        };
        let mark = |row: &str, gone: &str| marker_upsert(c, row, gone, q, &upsert);
        // The old row is gone after a delete, or an update of the key.
        let old_gone = format!(
            "CASE WHEN TG_OP = 'DELETE' THEN 1 WHEN {} THEN 0 ELSE 1 END",
            c.same_key(q)
        );
        let func = (c.name)("fn");
        let trigger = (c.name)("cap");
        vec![
            Trigger {
                sql: format!(
                    "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $tidesync$\n\
                     BEGIN\n\
                     \x20 IF EXISTS (SELECT 1 FROM {} WHERE {} = {}) THEN RETURN NULL; END IF;\n\
                     \x20 IF TG_OP <> 'INSERT' THEN {}; END IF;\n\
                     \x20 IF TG_OP <> 'DELETE' THEN {}; END IF;\n\
                     \x20 RETURN NULL;\n\
                     END\n$tidesync$",
                    q(&func),
                    c.own(c.applying, q),
                    q("session"),
                    self.session_expr(),
                    mark("OLD", &old_gone),
                    mark("NEW", &c.gone(Gone::No, q)),
                ),
                name: func.clone(),
            },
            Trigger {
                sql: format!(
                    "CREATE OR REPLACE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} \
                     FOR EACH ROW EXECUTE FUNCTION {}()",
                    q(&trigger),
                    c.table.quoted(self),
                    q(&func)
                ),
                name: trigger,
            },
        ]
    }

    fn session_expr(&self) -> &'static str {
        "pg_backend_pid()"
    }

    fn now_us(&self) -> &'static str {
        NOW_US
    }

    /// `pk = ANY(array)` with the keys in one parameter, which a custom plan
    /// (see [`Dialect::plan_hint`]) serves as a lookup on both key columns.
    fn key_in(&self, keys: &[String]) -> Result<SimpleExpr> {
        Ok(Expr::cust_with_values(
            r#""pk" = ANY(ARRAY(SELECT jsonb_array_elements_text($1::jsonb)))"#,
            [serde_json::to_string(keys)?],
        ))
    }

    /// sqlx prepares a statement once per connection, and after five runs
    /// PostgreSQL may switch to a generic plan made while a table was still
    /// small (a scan), and keep it as the table grows: every batch would
    /// then read the whole table to look up its 500 keys. Custom plans see
    /// the table as it is (measured at 100k row states: 3 ms per 500 keys,
    /// against 70-1500 ms for the cached scan).
    fn plan_hint(&self) -> Option<&'static str> {
        Some("SET LOCAL plan_cache_mode = force_custom_plan")
    }

    fn writes_in_with(&self) -> bool {
        true
    }

    fn plan_hint_expr(&self) -> Option<&'static str> {
        Some("set_config('plan_cache_mode', 'force_custom_plan', true)")
    }

    /// Without statistics the planner takes `tbl = '<table>'` in a
    /// row-state lookup to match a few rows, scans them all and filters by
    /// key: every batch then reads every state of the table.
    fn analyze(&self, tables: &[(Place<'_>, &[&str])]) -> Option<String> {
        if tables.is_empty() {
            return None;
        }
        let targets: Vec<String> = tables
            .iter()
            .map(|(t, cols)| {
                if cols.is_empty() {
                    t.quoted(self)
                } else {
                    let cols: Vec<String> = cols.iter().map(|c| self.quote(c)).collect();
                    format!("{} ({})", t.quoted(self), cols.join(", "))
                }
            })
            .collect();
        Some(format!("ANALYZE {}", targets.join(", ")))
    }

    fn locks_rows(&self) -> bool {
        true
    }

    fn names_ignore_case(&self) -> bool {
        false
    }

    fn read_key_column(&self, ty: &ColumnType, column: &str) -> SimpleExpr {
        match ty {
            ColumnType::Enum { .. } => Expr::col(sea_orm::sea_query::Alias::new(column))
                .cast_as(sea_orm::sea_query::Alias::new("text")),
            _ => Expr::col(sea_orm::sea_query::Alias::new(column)),
        }
    }

    fn shape(&self, ty: &ColumnType, param: SimpleExpr) -> SimpleExpr {
        match ty {
            ColumnType::Enum { name, .. } => param.as_enum(name.clone()),
            // An array of enum values is bound as an array of their texts
            // (see `store::write::bound_value`) and cast to the enum's
            // array type, as SeaORM writes it.
            ColumnType::Array(inner) => match inner.as_ref() {
                ColumnType::Enum { name, .. } => {
                    param.as_enum(sea_orm::sea_query::Alias::new(format!("{name}[]")))
                }
                _ => param,
            },
            _ => param,
        }
    }

    fn backend(&self) -> DbBackend {
        DbBackend::Postgres
    }

    fn refuses(&self, value: &Value) -> Option<&'static str> {
        match value {
            _ if above_i64(value) => {
                Some("PostgreSQL stores integers as signed 64-bit (max 9223372036854775807)")
            }
            Value::String(Some(s)) if s.contains('\0') => {
                Some("PostgreSQL text cannot contain NUL characters")
            }
            _ if year_of(value).is_some_and(|y| y < -4712) => {
                Some("PostgreSQL dates start in 4713 BC")
            }
            _ => None,
        }
    }

    fn error_kind(&self, code: &str, _message: &str) -> Option<ErrorKind> {
        Some(match code {
            "23505" => ErrorKind::UniqueViolation,
            "23503" => ErrorKind::ForeignKeyViolation,
            "23502" => ErrorKind::NotNullViolation,
            "23514" => ErrorKind::CheckViolation,
            "22001" | "22003" => ErrorKind::DataTooLong,
            "40001" | "40P01" | "55P03" => ErrorKind::Serialization,
            "08000" | "08003" | "08006" | "57P01" | "57P02" | "57P03" => ErrorKind::Connection,
            _ => return None,
        })
    }
}

/// Current wall time in microseconds.
const NOW_US: &str = "(extract(epoch from clock_timestamp()) * 1000000)::bigint";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::change::ColumnSpec;
    use crate::model::syncable::ConflictPolicy;
    use sea_orm::sea_query::{Alias, IntoIden, PostgresQueryBuilder, Query, StringLen};

    fn mood() -> ColumnType {
        ColumnType::Enum {
            name: Alias::new("mood").into_iden(),
            variants: vec![
                Alias::new("glad").into_iden(),
                Alias::new("it's").into_iden(),
            ],
        }
    }

    #[test]
    fn enums_are_their_own_type_and_i8_is_char() {
        let pg = Postgres;
        assert_eq!(pg.column_type(&mood(), false), ColumnType::custom("mood"));
        assert_eq!(pg.marker_key_type(&mood()), ColumnType::custom("mood"));
        assert_eq!(
            pg.column_type(&ColumnType::TinyInteger, false),
            ColumnType::custom("\"char\"")
        );
        assert_eq!(
            pg.marker_key_type(&ColumnType::TinyInteger),
            ColumnType::TinyInteger
        );
        let text = ColumnType::String(StringLen::None);
        assert_eq!(pg.column_type(&text, true), text);
        assert_eq!(pg.long_text(), ColumnType::Text);
    }

    #[test]
    fn enum_types_are_created_first() {
        let c = |ty| ColumnSpec {
            name: "m".into(),
            ty,
            nullable: false,
            kind: None,
        };
        let spec = TableSpec {
            name: "t".into(),
            schema: None,
            pk: vec![c(ColumnType::Integer)],
            columns: vec![c(ColumnType::Integer), c(mood())],
            local_only: vec![],
            policy: ConflictPolicy::Lww,
            single_writer: false,
            ownership: Default::default(),
        };
        assert_eq!(
            Postgres.custom_types(&spec),
            [(
                "mood".to_owned(),
                r#"CREATE TYPE "mood" AS ENUM ('glad', 'it''s')"#.to_owned()
            )]
        );
        assert_eq!(
            Postgres.type_exists_query(),
            Some("SELECT 1 AS one FROM pg_type WHERE typname = $1")
        );
    }

    #[test]
    fn catalog_queries_and_session() {
        assert_eq!(
            Postgres.columns_query(),
            "SELECT a.attname::text AS name FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum"
        );
        assert!(Postgres.has_schemas());
        assert_eq!(
            Postgres.schema_exists_query(),
            Some("SELECT 1 AS one FROM pg_namespace WHERE nspname = $1")
        );
        assert_eq!(
            Postgres.schema_query(),
            Some(
                "SELECT n.nspname::text AS name FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)"
            )
        );
        let place = Place {
            schema: Some("s"),
            name: "t\"",
        };
        assert_eq!(Postgres.catalog_name(place), r#""s"."t""""#);
        assert_eq!(Postgres.catalog_name(Place::own("t")), r#""t""#);
        assert_eq!(Postgres.triggers_query(), None);
        assert_eq!(
            Postgres.key_types_query(),
            Some(
                "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS ty \
                 FROM pg_attribute a WHERE a.attrelid = to_regclass($1) \
                 AND a.attnum > 0 AND NOT a.attisdropped"
            )
        );
        assert!(!Postgres.upsert_takes_any_unique());
        assert_eq!(Postgres.unique_columns_query(), None);
        assert_eq!(Postgres.session_expr(), "pg_backend_pid()");
        assert_eq!(
            Postgres.now_us(),
            "(extract(epoch from clock_timestamp()) * 1000000)::bigint"
        );
        assert!(Postgres.locks_rows());
        assert_eq!(
            Postgres.plan_hint(),
            Some("SET LOCAL plan_cache_mode = force_custom_plan")
        );
        assert_eq!(
            Postgres.plan_hint_expr(),
            Some("set_config('plan_cache_mode', 'force_custom_plan', true)")
        );
        assert!(Postgres.writes_in_with());
    }

    #[test]
    fn enum_values_are_cast_to_their_type() {
        let q = Query::select()
            .expr(Postgres.write_value(&mood(), Value::from("glad")))
            .to_owned();
        assert_eq!(
            q.to_string(PostgresQueryBuilder),
            r#"SELECT CAST('glad' AS "mood")"#
        );
        let q = Query::select()
            .expr(Postgres.write_value(&ColumnType::Text, Value::from("glad")))
            .to_owned();
        assert_eq!(q.to_string(PostgresQueryBuilder), "SELECT 'glad'");
    }
}
