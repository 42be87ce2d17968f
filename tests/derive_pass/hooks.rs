//! `single_writer` allows an auto-increment key, and `hooks` runs the user's
//! `SyncHooks` from the generated `ActiveModelBehavior` (checked against an
//! in-memory SQLite database).

// Entities as applications write them: `pub` items in modules.
#![allow(unreachable_pub)]

mod audit {
    use sea_orm::ActiveValue::Set;
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "audit_log")]
    #[syncable(conflict = "manual", single_writer, hooks)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub line: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[async_trait::async_trait]
    impl tidesync::SyncHooks for ActiveModel {
        fn new() -> Self {
            Self {
                line: Set("(empty)".to_owned()),
                ..ActiveModelTrait::default()
            }
        }

        async fn before_save<C>(mut self, _db: &C, _insert: bool) -> Result<Self, DbErr>
        where
            C: ConnectionTrait,
        {
            if let Set(line) = &self.line {
                self.line = Set(line.trim().to_owned());
            }
            Ok(self)
        }
    }
}

use sea_orm::ActiveValue::Set;
use sea_orm::{ActiveModelBehavior, ActiveModelTrait, ConnectionTrait, Database};
use tidesync::{ConflictPolicy, Syncable};

#[tokio::main]
async fn main() {
    assert_eq!(<audit::Entity as Syncable>::POLICY, ConflictPolicy::Manual);
    const { assert!(<audit::Entity as Syncable>::SINGLE_WRITER) };
    assert!(<audit::Entity as Syncable>::skipped_columns().is_empty());

    let db = Database::connect("sqlite::memory:").await.unwrap();
    db.execute_unprepared(
        "CREATE TABLE audit_log (id INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL)",
    )
    .await
    .unwrap();

    let fresh = <audit::ActiveModel as ActiveModelBehavior>::new();
    assert_eq!(fresh.line, Set("(empty)".to_owned()));

    let mut am = fresh;
    am.line = Set("  hello  ".to_owned());
    let saved = am.insert(&db).await.unwrap();
    assert_eq!(saved.line, "hello");
    assert_eq!(saved.id, 1);
}
