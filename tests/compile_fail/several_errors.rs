// Every mistake is reported in one go, each at its own place.
use sea_orm::entity::prelude::*;
use tidesync::Syncable;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
#[sea_orm(table_name = "contacts")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    pub name: String,
    #[syncable(skip)]
    pub last_opened: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

fn main() {}
