// The owner column is synced: a hub never sees a local-only one.
use sea_orm::entity::prelude::*;
use tidesync::Syncable;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
#[sea_orm(table_name = "notes")]
#[syncable(owner = "owner_id")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[syncable(skip)]
    pub owner_id: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

fn main() {}
