//! The [`Syncable`] trait that `#[derive(Syncable)]` implements, and the
//! runtime description of a synced table built from it.

use sea_orm::{ActiveModelTrait, ConnectionTrait, DbErr, EntityTrait};
use serde::{Deserialize, Serialize};

/// How concurrent edits of the same row are settled, declared per entity with
/// `#[syncable(conflict = "...")]`.
///
/// Serialised as its [`as_str`](ConflictPolicy::as_str) name (`"lww"`...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ConflictPolicy {
    /// Per-column last-writer-wins on the hybrid logical clock (the default).
    #[default]
    Lww,
    /// Field-level three-way merge against the last synced state.
    Merge,
    /// Concurrent edits of the same column are held for the user to resolve.
    Manual,
    /// Like `Manual`, but a `Resolver` registered for the
    /// entity settles each conflict on the replica that meets it.
    Custom,
}

impl ConflictPolicy {
    /// The name used in `#[syncable(conflict = "...")]`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::Lww => "lww",
            ConflictPolicy::Merge => "merge",
            ConflictPolicy::Manual => "manual",
            ConflictPolicy::Custom => "custom",
        }
    }

    /// Whether a concurrent edit of the same column is held back for a
    /// decision instead of being settled by the clock.
    pub fn holds_conflicts(self) -> bool {
        matches!(self, ConflictPolicy::Manual | ConflictPolicy::Custom)
    }

    /// Whether changes carry the base (value and clock before the edit) of
    /// each column they set, for conflict detection.
    pub fn needs_base(self) -> bool {
        !matches!(self, ConflictPolicy::Lww)
    }
}

/// An entity whose writes tidesync captures and replicates.
///
/// Implemented on the SeaORM `Entity` by `#[derive(Syncable)]` on its
/// `Model`; implementing it by hand is possible but the derive also checks
/// keys at compile time and generates the `ActiveModelBehavior`.
pub trait Syncable: EntityTrait {
    /// The conflict policy declared for this entity.
    const POLICY: ConflictPolicy = ConflictPolicy::Lww;

    /// `true` when only one node ever writes this table, which is the only
    /// case where an auto-increment primary key is sound.
    const SINGLE_WRITER: bool = false;

    /// Local-only columns (`#[syncable(skip)]`): never captured, never sent.
    fn skipped_columns() -> Vec<Self::Column> {
        Vec::new()
    }

    /// Who may read and write the table's rows through a hub that serves
    /// accounts (`#[syncable(owner = "...")]` or `#[syncable(shared)]`).
    /// Direct sync ignores it.
    fn ownership() -> Ownership<Self::Column> {
        Ownership::Undeclared
    }
}

/// Who a table's rows belong to, declared per entity: with
/// `#[syncable(owner = "owner_id")]` each row belongs to the user its
/// `owner_id` column names, with `#[syncable(shared)]` every user reads
/// every row. A hub serving accounts (the HTTP hub) sends each user only
/// their own rows and the shared tables', and refuses a change that
/// touches another user's row.
///
/// `C` is the column type: the entity's `Column` in [`Syncable`], the
/// column's name in a `TableSpec` (named, not linked: the crate root is
/// above the model layer, and `change` uses this module).
///
/// Serialised as `"undeclared"`, `"shared"` or `{"owner": <column>}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[serde(bound(serialize = "C: Serialize", deserialize = "C: Deserialize<'de>"))]
pub enum Ownership<C = String> {
    /// Nothing declared: a hub serving accounts refuses the table unless
    /// it is configured to share undeclared tables.
    #[default]
    Undeclared,
    /// Each row belongs to the user this column names (its value as text:
    /// a user `42` owns the rows whose integer owner column is 42).
    Owner(C),
    /// Every user reads every row, and may write them (an authorization
    /// hook on the hub can narrow that).
    Shared,
}

impl<C> Ownership<C> {
    /// The same declaration with the column mapped (to its name, say).
    pub fn map<D>(self, f: impl FnOnce(C) -> D) -> Ownership<D> {
        match self {
            Ownership::Undeclared => Ownership::Undeclared,
            Ownership::Owner(c) => Ownership::Owner(f(c)),
            Ownership::Shared => Ownership::Shared,
        }
    }
}

impl Ownership<String> {
    /// The owner column, if rows have owners.
    pub fn column(&self) -> Option<&str> {
        match self {
            Ownership::Owner(c) => Some(c),
            _ => None,
        }
    }

    /// How a hub records the declaration: `owner:<column>`, `shared` or
    /// `undeclared`.
    pub fn record(&self) -> String {
        match self {
            Ownership::Undeclared => "undeclared".into(),
            Ownership::Owner(c) => format!("owner:{c}"),
            Ownership::Shared => "shared".into(),
        }
    }

    /// Read [`Ownership::record`] back.
    pub fn from_record(s: &str) -> Option<Self> {
        match s {
            "undeclared" => Some(Ownership::Undeclared),
            "shared" => Some(Ownership::Shared),
            _ => s
                .strip_prefix("owner:")
                .filter(|c| !c.is_empty())
                .map(|c| Ownership::Owner(c.to_owned())),
        }
    }
}

impl std::fmt::Display for Ownership<String> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ownership::Undeclared => f.write_str("no owner declared"),
            Ownership::Owner(c) => write!(f, "owned by the user in column `{c}`"),
            Ownership::Shared => f.write_str("shared by every user"),
        }
    }
}

/// User hooks for a syncable entity.
///
/// `#[derive(Syncable)]` generates the entity's `ActiveModelBehavior` (SeaORM
/// allows exactly one), so an application that needs its own hooks moves them
/// from `impl ActiveModelBehavior for ActiveModel` to
/// `impl SyncHooks for ActiveModel` and adds `#[syncable(hooks)]`; the
/// generated behaviour calls these first, then tidesync's own checks.
/// The methods and their defaults mirror `ActiveModelBehavior`.
#[async_trait::async_trait]
#[allow(unused_variables)]
pub trait SyncHooks: ActiveModelTrait + Send {
    /// Called by the generated `ActiveModelBehavior::new`.
    fn new() -> Self {
        <Self as ActiveModelTrait>::default()
    }

    /// Called before insert or update, before tidesync validates the values.
    async fn before_save<C>(self, db: &C, insert: bool) -> Result<Self, DbErr>
    where
        C: ConnectionTrait,
    {
        Ok(self)
    }

    /// Called after insert or update.
    async fn after_save<C>(
        model: <Self::Entity as EntityTrait>::Model,
        db: &C,
        insert: bool,
    ) -> Result<<Self::Entity as EntityTrait>::Model, DbErr>
    where
        C: ConnectionTrait,
    {
        Ok(model)
    }

    /// Called before delete.
    async fn before_delete<C>(self, db: &C) -> Result<Self, DbErr>
    where
        C: ConnectionTrait,
    {
        Ok(self)
    }

    /// Called after delete.
    async fn after_delete<C>(self, db: &C) -> Result<Self, DbErr>
    where
        C: ConnectionTrait,
    {
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_records_read_back_and_nothing_else_does() {
        for o in [
            Ownership::Undeclared,
            Ownership::Shared,
            Ownership::Owner("owner_id".to_owned()),
            Ownership::Owner("owner:with:colons".to_owned()),
        ] {
            assert_eq!(Ownership::from_record(&o.record()), Some(o.clone()), "{o}");
        }
        for bad in ["", "owner:", "Shared", "owner", " shared"] {
            assert_eq!(Ownership::from_record(bad), None, "{bad:?}");
        }
    }
}
