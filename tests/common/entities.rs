//! Entities used by the integration tests.

pub mod contacts {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "contacts")]
    #[syncable(conflict = "lww")]
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

/// Composite primary key, one part of which can change.
pub mod memberships {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "memberships")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub group_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: Uuid,
        pub role: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

/// Values some dialects cannot hold.
pub mod readings {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "readings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub value: Option<f64>,
        #[sea_orm(column_type = "String(StringLen::N(8))")]
        pub code: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

/// An unsigned 64-bit column (SeaORM cannot read u64 on SQLite at all).
pub mod counters {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "counters")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub counter: u64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

/// One column of every type SeaORM reads on all three dialects, and an
/// optional twin of each (unsigned integers are in `unsigned_ints` and
/// `big_unsigned`).
pub mod kitchen_sink {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "Enum", enum_name = "mood")]
    pub enum Mood {
        #[sea_orm(string_value = "calm")]
        Calm,
        #[sea_orm(string_value = "stormy")]
        Stormy,
    }

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "kitchen_sink")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub b: bool,
        pub i8v: i8,
        pub i16v: i16,
        pub i32v: i32,
        pub i64v: i64,
        pub f32v: f32,
        pub f64v: f64,
        pub s: String,
        #[sea_orm(column_type = "Text")]
        pub long: String,
        pub date: Date,
        pub time: Time,
        pub dt: DateTime,
        pub utc: DateTimeUtc,
        pub off: DateTimeWithTimeZone,
        pub uid: Uuid,
        pub dec: Decimal,
        pub json: Json,
        pub bytes: Vec<u8>,
        pub mood: Mood,
        pub o_b: Option<bool>,
        pub o_i8v: Option<i8>,
        pub o_i16v: Option<i16>,
        pub o_i32v: Option<i32>,
        pub o_i64v: Option<i64>,
        pub o_f32v: Option<f32>,
        pub o_f64v: Option<f64>,
        pub o_s: Option<String>,
        pub o_date: Option<Date>,
        pub o_time: Option<Time>,
        pub o_dt: Option<DateTime>,
        pub o_utc: Option<DateTimeUtc>,
        pub o_off: Option<DateTimeWithTimeZone>,
        pub o_uid: Option<Uuid>,
        pub o_dec: Option<Decimal>,
        pub o_json: Option<Json>,
        pub o_bytes: Option<Vec<u8>>,
        pub o_mood: Option<Mood>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

/// `u64`, which SeaORM reads only on MySQL.
pub mod big_unsigned {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "big_unsigned")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub v: u64,
        pub ov: Option<u64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

/// `u8`, `u16`, `u32`, which SeaORM cannot read on PostgreSQL.
pub mod unsigned_ints {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "unsigned_ints")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub u8v: u8,
        pub u16v: u16,
        pub u32v: u32,
        pub o_u8v: Option<u8>,
        pub o_u16v: Option<u16>,
        pub o_u32v: Option<u32>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

/// A parent table.
pub mod groups {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "groups")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        #[sea_orm(has_many = "super::members::Entity")]
        Members,
    }

    impl Related<super::members::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::Members.def()
        }
    }
}

/// A child table with a foreign key to `groups`.
pub mod members {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "members")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub group_id: Uuid,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        #[sea_orm(
            belongs_to = "super::groups::Entity",
            from = "Column::GroupId",
            to = "super::groups::Column::Id",
            on_delete = "Restrict"
        )]
        Group,
    }

    impl Related<super::groups::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::Group.def()
        }
    }
}

/// The same `people` table under each conflict policy.
macro_rules! people {
    ($name:ident, $policy:literal) => {
        #[doc = concat!("`people` with `conflict = \"", $policy, "\"`.")]
        pub mod $name {
            use sea_orm::entity::prelude::*;
            use tidesync::Syncable;

            #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
            #[sea_orm(table_name = "people")]
            #[syncable(conflict = $policy)]
            pub struct Model {
                #[sea_orm(primary_key, auto_increment = false)]
                pub id: Uuid,
                pub name: String,
                pub email: Option<String>,
                pub phone: Option<String>,
            }

            #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
            pub enum Relation {}
        }
    };
}

people!(people_lww, "lww");
people!(people_merge, "merge");
people!(people_manual, "manual");

/// `people` as a newer client version sees it: one more nullable column.
pub mod people_v2 {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "people")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub name: String,
        pub email: Option<String>,
        pub phone: Option<String>,
        pub nickname: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

/// A table with a second unique column (a handle moves between rows).
pub mod handles {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "handles")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        #[sea_orm(unique)]
        pub handle: String,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

/// Tables keyed by one value of a type that a marker table must hold
/// exactly: fractional seconds, a decimal with a scale, a date after 2038,
/// long text, binary.
macro_rules! keyed {
    ($name:ident, $table:literal, $ty:ty $(, $attr:meta)?) => {
        #[doc = concat!("`", $table, "`, keyed by `", stringify!($ty), "`.")]
        pub mod $name {
            use sea_orm::entity::prelude::*;
            use tidesync::Syncable;

            #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
            #[sea_orm(table_name = $table)]
            pub struct Model {
                #[sea_orm(primary_key, auto_increment = false $(, $attr)?)]
                pub k: $ty,
                pub note: String,
            }

            #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
            pub enum Relation {}
        }
    };
}

keyed!(keyed_by_time, "keyed_by_time", DateTime);
keyed!(keyed_by_utc, "keyed_by_utc", DateTimeUtc);
keyed!(keyed_by_offset, "keyed_by_offset", DateTimeWithTimeZone);
keyed!(
    keyed_by_decimal,
    "keyed_by_decimal",
    Decimal,
    column_type = "Decimal(Some((20, 4)))"
);
keyed!(
    keyed_by_text,
    "keyed_by_text",
    String,
    column_type = "String(StringLen::N(200))"
);
keyed!(keyed_by_any_text, "keyed_by_any_text", String);
keyed!(
    keyed_by_bytes,
    "keyed_by_bytes",
    Vec<u8>,
    column_type = "VarBinary(StringLen::N(200))"
);

/// `keyed_by_enum`, keyed by a database enum whose declared order is not
/// the order of its labels' text.
pub mod keyed_by_enum {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "Enum", enum_name = "rank")]
    pub enum Rank {
        #[sea_orm(string_value = "zeta")]
        Zeta,
        #[sea_orm(string_value = "alpha")]
        Alpha,
        #[sea_orm(string_value = "mid")]
        Mid,
    }

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "keyed_by_enum")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub k: Rank,
        pub note: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

/// Tables keyed by one long value, with two more columns to edit apart,
/// under the `manual` policy (an edit of one column on two devices is held).
macro_rules! long_keyed {
    ($name:ident, $table:literal, $ty:ty, $column_type:literal) => {
        #[doc = concat!("`", $table, "`, keyed by `", $column_type, "`.")]
        pub mod $name {
            use sea_orm::entity::prelude::*;
            use tidesync::Syncable;

            #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
            #[sea_orm(table_name = $table)]
            #[syncable(conflict = "manual")]
            pub struct Model {
                #[sea_orm(primary_key, auto_increment = false, column_type = $column_type)]
                pub k: $ty,
                pub note: String,
                pub tag: String,
            }

            #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
            pub enum Relation {}
        }
    };
}

long_keyed!(
    long_bytes_key,
    "long_bytes_key",
    Vec<u8>,
    "VarBinary(StringLen::N(200))"
);
long_keyed!(
    long_text_key,
    "long_text_key",
    String,
    "String(StringLen::N(1000))"
);
// The longest text key MySQL indexes whole is 768 characters (3072 bytes
// of utf8mb4).
long_keyed!(
    long_text_key_700,
    "long_text_key_700",
    String,
    "String(StringLen::N(700))"
);

/// `people` (a key and a name, manual conflicts) in a schema of its own
/// (PostgreSQL's `schema_name`), or in none.
macro_rules! placed_people {
    ($module:ident, $($schema:literal)?) => {
        pub mod $module {
            use sea_orm::entity::prelude::*;
            use tidesync::Syncable;

            #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
            #[sea_orm(table_name = "people" $(, schema_name = $schema)?)]
            #[syncable(conflict = "manual")]
            pub struct Model {
                #[sea_orm(primary_key, auto_increment = false)]
                pub id: Uuid,
                pub name: String,
            }

            #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
            pub enum Relation {}
        }
    };
}

placed_people!(in_schema, "elsewhere");
placed_people!(in_other_schema, "other");
placed_people!(in_no_schema,);

/// `in_schema` after an upgrade that adds a nullable column.
pub mod in_schema_v2 {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "people", schema_name = "elsewhere")]
    #[syncable(conflict = "manual")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub name: String,
        pub nickname: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

/// A JSON column that may hold a JSON `null` or SQL NULL.
pub mod documents {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "documents")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub doc: Option<Json>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

/// Notes that belong to the user their `owner` names (a hub serving
/// accounts keeps each user's notes theirs).
pub mod notes {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "notes")]
    #[syncable(owner = "owner")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub owner: String,
        pub body: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

/// The same table as [`notes`] with the owner declared on another column:
/// a device cannot change who owns a table's rows.
pub mod notes_by_body {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "notes")]
    #[syncable(owner = "body")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub owner: String,
        pub body: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

/// Labels every user reads and writes.
pub mod labels {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "labels")]
    #[syncable(shared)]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

/// A table whose columns carry the names of the markers' and version
/// rows' own columns (and of the aliases sealing joins them under).
pub mod namesakes {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "namesakes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i64,
        pub ver: i64,
        pub wall_us: i64,
        pub gone: i64,
        pub clocks: String,
        pub del: Option<String>,
        pub vals: Option<i32>,
        pub m: Option<String>,
        pub t: Option<String>,
        pub v: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

/// A table whose key is named as a marker's own column.
pub mod namesake_key {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "namesake_key")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub gone: i64,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

/// A table with a column named in tidesync's own namespace.
pub mod namesake_column {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "namesake_column")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i64,
        #[sea_orm(column_name = "_tidesync_v_id")]
        pub shadow: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

/// A table keyed by a column named `rowid` (SQLite's own name for a row's
/// number, which a column of that name takes over).
pub mod rowid_key {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "rowid_key")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub rowid: String,
        pub note: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}
