//! The change model: what one captured write looks like on the wire.

use std::fmt;

use sea_orm::sea_query::{ColumnType, Value};
use serde::{Deserialize, Serialize};

use crate::model::clock::{Hlc, NodeId};
use crate::model::syncable::ConflictPolicy;

/// The global id of a change: the node that made it and its sequence number
/// there. Sequences start at 1 and have no gaps, so a hub can tell a
/// re-sent change from a new one and keep each origin's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChangeId {
    /// The node that captured the write.
    pub origin: NodeId,
    /// Position in that node's stream, from 1.
    pub seq: u64,
}

impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.origin, self.seq)
    }
}

/// What happened to the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// The row appeared (or reappeared after a delete): every synced column
    /// is in [`Change::columns`].
    Insert,
    /// Some columns changed: only those are in [`Change::columns`].
    Update,
    /// The row is gone: [`Change::columns`] is empty.
    Delete,
}

impl Op {
    /// Lower-case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }

    /// Parse [`Op::as_str`].
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "insert" => Some(Op::Insert),
            "update" => Some(Op::Update),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// One captured change of one row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Global id.
    pub id: ChangeId,
    /// Table name.
    pub table: String,
    /// Primary key, column by column, in the entity's key order.
    #[serde(with = "crate::model::typed::columns")]
    pub pk: Vec<(String, Value)>,
    /// Operation.
    pub op: Op,
    /// Changed columns with their new typed values, in entity column order.
    #[serde(with = "crate::model::typed::columns")]
    pub columns: Vec<(String, Value)>,
    /// When the write happened; every column in `columns` carries this clock.
    pub hlc: Hlc,
    /// For tables whose policy detects conflicts (`merge`, `manual`,
    /// custom): what each column in `columns` held before this edit, with
    /// that value's clock (`None` for a column never written). Empty
    /// otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub base: Vec<ColumnBase>,
}

/// A column's value and clock before an edit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnBase {
    /// Column name.
    pub column: String,
    /// The value before the edit (`None`: the column had none).
    #[serde(with = "crate::model::typed::option")]
    pub value: Option<Value>,
    /// The clock of that value (`None`: never written).
    pub clock: Option<Hlc>,
}

impl Change {
    /// The base clock recorded for `column`, if any base was recorded.
    pub fn base_of(&self, column: &str) -> Option<&ColumnBase> {
        self.base.iter().find(|b| b.column == column)
    }
}

/// A synced column as the runtime sees it.
///
/// Serialisable: `{"name":"id","ty":"uuid","nullable":false,"kind":"uuid"}`.
/// sea-query has no serde form of a column type, so `ty` has tidesync's
/// own: the variant's name in snake_case, alone (`"text"`,
/// `"big_integer"`) or as the key of its parameters
/// (`{"string":{"n":40}}`, `{"decimal":[20,4]}`, `{"array":"uuid"}`), and
/// so has `kind` (`"int"`, `"chrono_date_time_utc"`, `{"enum":"mood"}`).
/// Both are wire formats: variants may be added, never renamed (the full
/// tables are in `src/model/column_type.rs` and
/// `src/model/value_kind.rs`). `kind` may be missing (a spec of an
/// earlier release) and reads as none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnSpec {
    /// Column name in the database.
    pub name: String,
    /// SeaORM column type.
    #[serde(with = "crate::model::column_type")]
    pub ty: ColumnType,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// Which [`Value`](sea_orm::Value) variant the entity's field holds
    /// (`ModelTrait::get_value_type`): a column type alone does not say
    /// (a `timestamp with time zone` may be a `DateTime<Utc>` or a
    /// `DateTime<FixedOffset>`), and code that reads the table without the
    /// entity reads each column as its kind. `None`: the column type's
    /// usual kind (the field type SeaORM's code generator picks for it).
    #[serde(
        default,
        with = "crate::model::value_kind",
        skip_serializing_if = "Option::is_none"
    )]
    pub kind: Option<sea_orm::sea_query::ArrayType>,
}

impl ColumnSpec {
    /// This column's value in `row` (a row of a query that selects the
    /// column under its own name), as the column's kind: the value the
    /// entity's own field would read, for code that reads a synced table
    /// without the entity compiled in (a hub, a tool). A column without a
    /// kind (a spec of an earlier release) is read as its column type's
    /// usual kind (the field type SeaORM's code generator picks for it). On
    /// PostgreSQL, select an enum column as text (as SeaORM does).
    ///
    /// # Errors
    /// [`Error::Config`](super::error::Error::Config) for a column whose kind
    /// this release cannot read without the entity (an array, a network
    /// type, a kind of a feature tidesync does not enable), or with
    /// neither kind nor a usual one; a database error when the stored
    /// value does not decode as the kind.
    ///
    /// ```no_run
    /// # async fn example(db: &sea_orm::DatabaseConnection, spec: &sync_core::TableSpec) -> sync_core::Result<()> {
    /// use sea_orm::ConnectionTrait;
    /// use sea_orm::sea_query::{Alias, Query};
    ///
    /// // `spec`: `tidesync::table_spec::<contacts::Entity>()`, or one a
    /// // device installed on a hub.
    /// let q = Query::select()
    ///     .columns(spec.columns.iter().map(|c| Alias::new(&c.name)))
    ///     .from(Alias::new(&spec.name))
    ///     .to_owned();
    /// for row in db.query_all(&q).await? {
    ///     for c in &spec.columns {
    ///         println!("{} = {:?}", c.name, c.read(&row)?);
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn read(&self, row: &sea_orm::QueryResult) -> crate::model::error::Result<Value> {
        let kind = super::value_kind::kind_of(&self.name, &self.ty, self.kind.as_ref())?;
        super::value_kind::read_as(row, &self.name, &kind)
    }
}

/// A synced table as the runtime sees it, built from a `Syncable` entity.
///
/// Serialisable, to travel and be stored: an object with a key per field
/// (the columns as [`ColumnSpec`] says, the policy as
/// [`ConflictPolicy::as_str`], the ownership `"undeclared"`, `"shared"` or
/// `{"owner":"<column>"}`). `schema`, `local_only`, `policy`,
/// `single_writer` and `ownership` may be missing, and read as their
/// defaults (none, none, `lww`, `false`, undeclared).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableSpec {
    /// Table name, without its schema: the name changes carry, unique
    /// among the tables a replica or hub registers.
    pub name: String,
    /// The PostgreSQL schema the table is in (the entity's `schema_name`),
    /// or `None` for the connection's search path. Each side places the
    /// table by its own spec: a device may keep `crm.contacts` where the
    /// hub keeps `contacts`. Dialects without schemas (MySQL, SQLite) take
    /// the table by its name in their own database: a hub there ignores
    /// it, a replica there refuses it (SeaORM itself names the table
    /// with the schema there).
    #[serde(default)]
    pub schema: Option<String>,
    /// Primary-key columns in key order.
    pub pk: Vec<ColumnSpec>,
    /// Synced columns (key columns included, local-only ones excluded), in
    /// entity order.
    pub columns: Vec<ColumnSpec>,
    /// Local-only columns (`#[syncable(skip)]`): never synced; a hub
    /// creates them nullable so its table reads like the entity.
    #[serde(default)]
    pub local_only: Vec<ColumnSpec>,
    /// Conflict policy.
    #[serde(default)]
    pub policy: ConflictPolicy,
    /// Declared single-writer.
    #[serde(default)]
    pub single_writer: bool,
    /// Whose rows these are, for a hub serving accounts.
    #[serde(default)]
    pub ownership: crate::model::syncable::Ownership,
}

impl TableSpec {
    /// The names of the key columns.
    pub fn pk_names(&self) -> Vec<String> {
        self.pk.iter().map(|c| c.name.clone()).collect()
    }

    /// The column spec by name.
    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.columns.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{column, table};

    #[test]
    fn a_change_id_shows_as_origin_colon_sequence() {
        let id = ChangeId {
            origin: NodeId([0xab; 16]),
            seq: 42,
        };
        assert_eq!(id.to_string(), format!("{}:42", "ab".repeat(16)));
    }

    #[test]
    fn operations_are_stored_by_their_lower_case_name() {
        for (op, name) in [
            (Op::Insert, "insert"),
            (Op::Update, "update"),
            (Op::Delete, "delete"),
        ] {
            assert_eq!(op.as_str(), name);
            assert_eq!(Op::parse(name), Some(op));
            // The same name as in a change's JSON.
            assert_eq!(serde_json::to_string(&op).unwrap(), format!("\"{name}\""));
        }
        for unknown in ["", "Insert", "upsert", "delete "] {
            assert_eq!(Op::parse(unknown), None, "{unknown:?}");
        }
    }

    /// A table keyed by `(tenant, id)`, declared in another order than its
    /// columns, with a local-only column.
    fn spec() -> TableSpec {
        let columns = vec![
            column("id", ColumnType::Uuid, false),
            column("tenant", ColumnType::Integer, false),
            column("body", ColumnType::Text, false),
        ];
        TableSpec {
            local_only: vec![column("draft", ColumnType::Text, false)],
            ..table("notes", &["tenant", "id"], columns)
        }
    }

    #[test]
    fn key_names_are_in_key_order() {
        assert_eq!(spec().pk_names(), ["tenant", "id"]);
        let no_key = TableSpec {
            pk: vec![],
            ..spec()
        };
        assert!(no_key.pk_names().is_empty());
    }

    #[test]
    fn columns_are_found_by_name_among_the_synced_ones() {
        let s = spec();
        assert_eq!(s.column("tenant"), Some(&s.columns[1]));
        assert_eq!(s.column("body").map(|c| &c.ty), Some(&ColumnType::Text));
        // Local-only and unknown columns are not synced.
        assert_eq!(s.column("draft"), None);
        assert_eq!(s.column("nope"), None);
    }
}
