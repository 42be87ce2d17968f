// The primary key cannot be local-only.
use sea_orm::entity::prelude::*;
use tidesync::Syncable;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
#[sea_orm(table_name = "contacts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    #[syncable(skip)]
    pub id: Uuid,
    pub name: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

fn main() {}
