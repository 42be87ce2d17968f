//! The hub's own tables, each named and created here: its metadata, the
//! change log, the row states, per-origin progress, rejected changes and
//! held conflicts.

use sea_orm::DatabaseConnection;
use sea_orm::sea_query::{Alias, ColumnType, Index, Table, TableCreateStatement};

use crate::dialect::{self, Dialect};
use crate::model::change::TableSpec;
use crate::model::clock::NodeId;
use crate::model::error::Result;
use crate::model::protocol::HubInfo;
use crate::store::codec::ChangeTable;
use crate::store::ddl::{create, not_null, varchar};
use crate::store::meta::Meta;
use crate::store::rows::{row_state_table, upgrade_row_state_table};
use crate::store::user_tables::ensure_table;

/// Newest hub metadata schema this release reads and writes.
pub(crate) const HUB_SCHEMA_VERSION: i64 = 1;

/// Key/value metadata of the hub: schema version, hub id, next sequence.
pub(crate) const HUB_META: Meta = Meta("_tidesync_hub_meta");
/// The change log, by hub sequence, with each change's origin and origin
/// sequence.
pub(crate) const CHANGES: ChangeTable = ChangeTable {
    name: "_tidesync_changes",
    ids: &["hub_seq", "origin", "origin_seq"],
};
/// Replicated state of every row (values and per-column clocks).
pub(crate) const HUB_ROWS: &str = "_tidesync_hub_rows";
/// Per-origin progress: the last origin sequence applied.
pub(crate) const PEERS: &str = "_tidesync_peers";
/// Changes refused and parked (policy `Park`), with the reason.
pub(crate) const REJECTED: &str = "_tidesync_rejected";
/// The conflicts each applied change raised and the hub held back
/// (policies `manual` and custom), until its device has them for sure.
pub(crate) const HELD: &str = "_tidesync_held";

/// Create the hub's tables and the users' (idempotent), check the schema
/// version, and return the hub's identity (created on first install).
pub(crate) async fn install(db: &DatabaseConnection, tables: &[TableSpec]) -> Result<HubInfo> {
    for t in hub_tables(dialect::of_db(db)?) {
        create(db, t).await?;
    }
    upgrade_row_state_table(db, HUB_ROWS).await?;
    HUB_META.check_version(db, HUB_SCHEMA_VERSION).await?;
    HUB_META.insert_if_missing(db, "next_seq", "1").await?;
    HUB_META
        .insert_if_missing(db, "hub_id", &NodeId::random().to_string())
        .await?;
    for spec in tables {
        ensure_table(db, spec).await?;
    }
    let hub_id = HUB_META.require(db, "hub_id").await?;
    Ok(HubInfo { hub_id })
}

/// DDL of the hub's own tables (`IF NOT EXISTS`).
pub(crate) fn hub_tables(d: &dyn Dialect) -> Vec<TableCreateStatement> {
    let text = d.long_text();
    let mut log = CHANGES.table(
        d,
        vec![
            not_null("hub_seq", ColumnType::BigInteger)
                .primary_key()
                .to_owned(),
            not_null("origin", varchar(32)),
            not_null("origin_seq", ColumnType::BigInteger),
        ],
    );
    log.index(
        Index::create()
            .name("_tidesync_changes_origin")
            .unique()
            .col(Alias::new("origin"))
            .col(Alias::new("origin_seq")),
    );
    vec![
        HUB_META.table(),
        log,
        row_state_table(d, HUB_ROWS),
        Table::create()
            .table(Alias::new(PEERS))
            .if_not_exists()
            .col(not_null("origin", varchar(32)).primary_key())
            .col(not_null("applied_seq", ColumnType::BigInteger))
            .to_owned(),
        Table::create()
            .table(Alias::new(REJECTED))
            .if_not_exists()
            .col(not_null("origin", varchar(32)))
            .col(not_null("origin_seq", ColumnType::BigInteger))
            .col(not_null("tbl", varchar(64)))
            .col(not_null("change", text.clone()))
            .col(not_null("reason", text))
            .primary_key(
                Index::create()
                    .col(Alias::new("origin"))
                    .col(Alias::new("origin_seq")),
            )
            .to_owned(),
        Table::create()
            .table(Alias::new(HELD))
            .if_not_exists()
            .col(not_null("origin", varchar(32)))
            .col(not_null("origin_seq", ColumnType::BigInteger))
            .col(not_null("conflicts", d.long_text()))
            .primary_key(
                Index::create()
                    .col(Alias::new("origin"))
                    .col(Alias::new("origin_seq")),
            )
            .to_owned(),
    ]
}
