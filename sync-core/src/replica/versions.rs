//! The replica's row states (schema version 2): one version table per
//! synced table, `_ts_v_<table>`, with its column ordinals in
//! `_tidesync_columns` (see [`crate::store::version_table`]).

use sea_orm::ConnectionTrait;

use super::entity::TableHandle;
use super::tables::{COLUMNS, version_table};
use crate::model::error::Result;
pub(crate) use crate::store::version_table::Versions;
use crate::store::version_table::{KeyReader, VersionTables};
use crate::store::versions::Ordinals;

/// Where a replica keeps its version tables.
pub(crate) const REPLICA_VERSIONS: VersionTables = VersionTables {
    name: version_table,
    register: COLUMNS,
    positions: false,
    specs: false,
};

/// The version table of `handle`'s table, with its column register read;
/// keys are read through the entity (any type it has, exactly as it reads
/// it).
pub(crate) async fn open<'a, C: ConnectionTrait>(
    db: &C,
    handle: &'a dyn TableHandle,
) -> Result<Versions<'a>> {
    let read: KeyReader<'a> = std::sync::Arc::new(move |r| handle.read_key(r));
    Ok(Versions::open(db, REPLICA_VERSIONS, handle.spec())
        .await?
        .with_key_reader(read))
}

/// Give `columns` of `table` the next ordinals in the replica's register,
/// where they have none, and return the table's register.
pub(crate) async fn register<C: ConnectionTrait>(
    db: &C,
    table: &str,
    columns: &[String],
) -> Result<Ordinals> {
    crate::store::version_table::register(db, COLUMNS, table, columns, None).await
}
