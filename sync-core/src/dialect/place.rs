//! Where a table is: a PostgreSQL schema and a name.
//!
//! A synced table's sync name (what changes and row states carry) is its
//! name alone; where it lives is each side's own affair. On PostgreSQL an
//! entity's `schema_name` puts it in that schema, and every statement on
//! the table itself (its DDL, its capture triggers, the writes that apply
//! pulled or pushed rows, catalog reads) names it with the schema.
//! tidesync's own tables (metadata, row states, dirty markers) stay in the
//! connection's search path, where the replica or hub keeps all of them;
//! a dirty-marker table is named after the sync name, which is unique.
//! MySQL and SQLite have no schemas in that sense (a MySQL "schema" is
//! another database): there the table is the one of that name.

use sea_orm::sea_query::{Alias, IntoIden, SchemaName, TableName, TableRef};

use super::Dialect;
use crate::model::change::TableSpec;

/// A table's schema (`None`: the search path) and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Place<'a> {
    /// The schema, where the dialect has schemas and the table names one.
    pub(crate) schema: Option<&'a str>,
    /// The table's name.
    pub(crate) name: &'a str,
}

impl<'a> Place<'a> {
    /// One of tidesync's own tables: in the search path.
    pub(crate) fn own(name: &'a str) -> Self {
        Place { schema: None, name }
    }

    /// A synced table, as the dialect `d` names it.
    pub(crate) fn of(d: &dyn Dialect, spec: &'a TableSpec) -> Self {
        Place {
            schema: spec.schema.as_deref().filter(|_| d.has_schemas()),
            name: &spec.name,
        }
    }

    /// The table for sea-query statements.
    pub(crate) fn table_ref(self) -> TableRef {
        let schema = self
            .schema
            .map(|s| SchemaName(None, Alias::new(s).into_iden()));
        TableRef::Table(TableName(schema, Alias::new(self.name).into_iden()), None)
    }

    /// The table in SQL text, quoted by `d`.
    pub(crate) fn quoted(self, d: &dyn Dialect) -> String {
        match self.schema {
            Some(s) => format!("{}.{}", d.quote(s), d.quote(self.name)),
            None => d.quote(self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::of;
    use crate::model::testing::{column, table};
    use sea_orm::DbBackend;
    use sea_orm::sea_query::{
        ColumnType, MysqlQueryBuilder, PostgresQueryBuilder, Query, SqliteQueryBuilder,
    };

    fn spec(schema: Option<&str>) -> TableSpec {
        TableSpec {
            schema: schema.map(str::to_owned),
            ..table(
                "no\"tes",
                &["id"],
                vec![column("id", ColumnType::Integer, false)],
            )
        }
    }

    #[test]
    fn only_postgres_names_the_schema() {
        let s = spec(Some("c\"rm"));
        let pg = Place::of(of(DbBackend::Postgres).unwrap(), &s);
        assert_eq!(pg.schema, Some("c\"rm"));
        assert_eq!(
            pg.quoted(of(DbBackend::Postgres).unwrap()),
            r#""c""rm"."no""tes""#
        );
        let q = Query::select()
            .column(Alias::new("id"))
            .from(pg.table_ref())
            .to_owned();
        assert_eq!(
            q.to_string(PostgresQueryBuilder),
            r#"SELECT "id" FROM "c""rm"."no""tes""#
        );
        for kind in [DbBackend::MySql, DbBackend::Sqlite] {
            let d = of(kind).unwrap();
            let p = Place::of(d, &s);
            assert_eq!(p, Place::own("no\"tes"), "{kind:?}");
            let q = Query::select()
                .column(Alias::new("id"))
                .from(p.table_ref())
                .to_owned();
            let sql = match kind {
                DbBackend::MySql => q.to_string(MysqlQueryBuilder),
                _ => q.to_string(SqliteQueryBuilder),
            };
            assert!(!sql.contains("rm"), "{sql}");
        }
    }

    #[test]
    fn a_table_without_a_schema_is_in_the_search_path() {
        let d = of(DbBackend::Postgres).unwrap();
        let s = spec(None);
        let p = Place::of(d, &s);
        assert_eq!(p, Place::own("no\"tes"));
        assert_eq!(p.quoted(d), r#""no""tes""#);
    }
}
