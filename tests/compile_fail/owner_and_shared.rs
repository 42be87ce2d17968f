// Rows have an owner or are shared, not both.
use sea_orm::entity::prelude::*;
use tidesync::Syncable;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
#[sea_orm(table_name = "notes")]
#[syncable(owner = "owner_id", shared)]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub owner_id: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

fn main() {}
