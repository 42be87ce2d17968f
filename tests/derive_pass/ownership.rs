//! `owner` and `shared` reach the table's runtime description; without
//! either, ownership is undeclared.

// Entities as applications write them: `pub` items in modules.
#![allow(unreachable_pub)]

mod note {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "notes")]
    #[syncable(owner = "owner_id")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub owner_id: i64,
        pub body: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

mod tag {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "tags")]
    #[syncable(shared)]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

mod draft {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "drafts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

use tidesync::{Ownership, table_spec};

fn main() {
    assert_eq!(
        table_spec::<note::Entity>().ownership,
        Ownership::Owner("owner_id".to_string())
    );
    assert_eq!(table_spec::<tag::Entity>().ownership, Ownership::Shared);
    assert_eq!(
        table_spec::<draft::Entity>().ownership,
        Ownership::Undeclared
    );
}
