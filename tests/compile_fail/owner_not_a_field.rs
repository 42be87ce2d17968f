// `owner` names a field of the struct by its Rust name.
use sea_orm::entity::prelude::*;
use tidesync::Syncable;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
#[sea_orm(table_name = "notes")]
#[syncable(owner = "user")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: i64,
    pub body: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

fn main() {}
