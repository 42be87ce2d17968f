//! The hub's own metadata tables. The users' tables are created by
//! [`sync_core::schema::create_table`], shared with replicas.

use sea_orm::DbBackend;
use sea_orm::sea_query::{
    Alias, ColumnDef, ColumnType, Index, StringLen, Table, TableCreateStatement,
};
use sync_core::schema::long_text;
use sync_core::store::row_state_table;

pub use sync_core::schema::{create_table, ensure_table, synced_column_type};

/// Key/value metadata of the hub: schema version, hub id, next sequence.
pub const HUB_META: &str = "_tidesync_hub_meta";
/// The change log, in hub sequence order.
pub const CHANGES: &str = "_tidesync_changes";
/// Replicated state of every row (values and per-column clocks).
pub const HUB_ROWS: &str = "_tidesync_hub_rows";
/// Per-origin progress: the last origin sequence applied.
pub const PEERS: &str = "_tidesync_peers";
/// Changes refused and parked (policy `Park`), with the reason.
pub const REJECTED: &str = "_tidesync_rejected";

fn col(name: &str, ty: ColumnType) -> ColumnDef {
    let mut c = ColumnDef::new_with_type(Alias::new(name), ty);
    c.not_null();
    c
}

/// DDL of the hub's metadata tables (`IF NOT EXISTS`).
pub fn hub_tables(backend: DbBackend) -> Vec<TableCreateStatement> {
    let text = long_text(backend);
    let v = |n| ColumnType::String(StringLen::N(n));
    vec![
        Table::create()
            .table(Alias::new(HUB_META))
            .if_not_exists()
            .col(col("key", v(64)).primary_key())
            .col(col("value", ColumnType::Text))
            .to_owned(),
        Table::create()
            .table(Alias::new(CHANGES))
            .if_not_exists()
            .col(col("hub_seq", ColumnType::BigInteger).primary_key())
            .col(col("origin", v(32)))
            .col(col("origin_seq", ColumnType::BigInteger))
            .col(col("tbl", v(64)))
            .col(col("pk", text.clone()))
            .col(col("op", v(8)))
            .col(col("payload", text.clone()))
            .col(col("hlc", v(64)))
            .col(ColumnDef::new_with_type(Alias::new("base"), text.clone()).null())
            .index(
                Index::create()
                    .name("_tidesync_changes_origin")
                    .unique()
                    .col(Alias::new("origin"))
                    .col(Alias::new("origin_seq")),
            )
            .to_owned(),
        row_state_table(backend, HUB_ROWS),
        Table::create()
            .table(Alias::new(PEERS))
            .if_not_exists()
            .col(col("origin", v(32)).primary_key())
            .col(col("applied_seq", ColumnType::BigInteger))
            .to_owned(),
        Table::create()
            .table(Alias::new(REJECTED))
            .if_not_exists()
            .col(col("origin", v(32)))
            .col(col("origin_seq", ColumnType::BigInteger))
            .col(col("tbl", v(64)))
            .col(col("change", text.clone()))
            .col(col("reason", text))
            .primary_key(
                Index::create()
                    .col(Alias::new("origin"))
                    .col(Alias::new("origin_seq")),
            )
            .to_owned(),
    ]
}
