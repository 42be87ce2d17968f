//! The entity from the derive's documentation: client-minted key, merge
//! policy, one local-only column.

// Entities as applications write them: `pub` items in modules.
#![allow(unreachable_pub)]

mod contact {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "contacts")]
    #[syncable(conflict = "merge")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub name: String,
        pub email: Option<String>,
        #[syncable(skip)]
        pub last_opened: Option<DateTimeUtc>,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

use sea_orm::IdenStatic;
use tidesync::{ConflictPolicy, Syncable};

/// The SQL names of an entity's skipped columns.
fn skipped<E: Syncable>() -> Vec<&'static str> {
    E::skipped_columns()
        .iter()
        .map(IdenStatic::as_str)
        .collect()
}

fn main() {
    assert_eq!(<contact::Entity as Syncable>::POLICY, ConflictPolicy::Merge);
    const { assert!(!<contact::Entity as Syncable>::SINGLE_WRITER) };
    assert_eq!(skipped::<contact::Entity>(), ["last_opened"]);
}
