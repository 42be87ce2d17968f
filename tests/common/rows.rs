//! Whole rows of `contacts`, read back for tests that compare replicas and
//! hubs column by column.

use std::collections::BTreeMap;

use sea_orm::entity::prelude::*;

use super::entities::contacts;

/// Every row of `contacts` by key, every column.
pub type Contacts = BTreeMap<Uuid, contacts::Model>;

/// Read every row of `contacts`, every column.
pub async fn contacts(db: &DatabaseConnection) -> Result<Contacts, DbErr> {
    Ok(contacts::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|m| (m.id, m))
        .collect())
}

/// The synced columns of a `contacts` row (all but the local-only
/// `last_opened`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Synced {
    pub name: String,
    pub email: Option<String>,
    pub updated_at: DateTimeUtc,
}

impl From<&contacts::Model> for Synced {
    fn from(m: &contacts::Model) -> Self {
        Synced {
            name: m.name.clone(),
            email: m.email.clone(),
            updated_at: m.updated_at,
        }
    }
}

/// The synced columns of every row.
pub fn synced(rows: &Contacts) -> BTreeMap<Uuid, Synced> {
    rows.iter().map(|(k, m)| (*k, Synced::from(m))).collect()
}

/// Whether `err` says a table does not exist (PostgreSQL 42P01, MySQL
/// 42S02, SQLite "no such table"); other errors are real failures.
pub fn is_missing_table(err: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    use sea_orm::sqlx;
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = err
    else {
        return false;
    };
    let sqlx::Error::Database(e) = &**e else {
        return false;
    };
    matches!(e.code().as_deref(), Some("42P01" | "42S02"))
        || e.message().starts_with("no such table")
}

/// The keys where two maps differ, with both sides (at most `limit`), for
/// a failure message.
pub fn differences<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    got: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
    limit: usize,
) -> String {
    let keys: std::collections::BTreeSet<&K> = got.keys().chain(want.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| got.get(k) != want.get(k))
        .map(|k| format!("  {k:?}: got {:?}, want {:?}", got.get(k), want.get(k)))
        .collect();
    let more = diffs.len().saturating_sub(limit);
    let mut out = diffs.into_iter().take(limit).collect::<Vec<_>>().join("\n");
    if more > 0 {
        out.push_str(&format!("\n  ... and {more} more"));
    }
    out
}
