//! Defaults with a String key, raw field names and `enum_name` in skipped
//! columns, and `no_behavior` with a hand-written behaviour and `crate`
//! through a re-export. (`hooks` and `single_writer`: see hooks.rs.)

// Entities as applications write them: `pub` items in modules.
#![allow(unreachable_pub)]

mod note {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "notes")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub slug: String,
        pub body: String,
        #[syncable(skip)]
        pub r#type: Option<String>,
        #[syncable(skip)]
        #[sea_orm(enum_name = "Draft")]
        pub local_draft: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

mod settings {
    use sea_orm::entity::prelude::*;

    pub mod sync {
        pub use tidesync::*;
    }

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, tidesync::Syncable)]
    #[sea_orm(table_name = "settings")]
    #[syncable(no_behavior, crate = "self::sync")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        pub value: Json,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[async_trait::async_trait]
    impl ActiveModelBehavior for ActiveModel {
        async fn before_save<C>(self, db: &C, _insert: bool) -> Result<Self, DbErr>
        where
            C: ConnectionTrait,
        {
            tidesync::validate_active_model(&self, db.get_database_backend())?;
            Ok(self)
        }
    }
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
    assert_eq!(<note::Entity as Syncable>::POLICY, ConflictPolicy::Lww);
    // `r#type` is `Column::Type`; `enum_name` renames the variant, and with
    // it SeaORM's default SQL name.
    assert_eq!(skipped::<note::Entity>(), ["type", "draft"]);
    let _: [note::Column; 2] = [note::Column::Type, note::Column::Draft];
    assert!(skipped::<settings::Entity>().is_empty());
}
