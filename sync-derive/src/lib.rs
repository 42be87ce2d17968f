//! `#[derive(Syncable)]` for tidesync.
//!
//! Use it through the facade, as `tidesync::Syncable` (the derive and the
//! trait share the name, as with serde); the generated code names the runtime
//! by absolute paths through that crate. See [`macro@Syncable`] for the
//! attributes.
//!
//! The stages follow serde_derive: `attr` parses the attributes into raw
//! options, `ast` builds the model of the struct, `check` enforces the rules
//! (every error is collected by `ctxt` and reported together), and `expand`
//! generates the code.

mod ast;
mod attr;
mod check;
mod ctxt;
mod expand;

use proc_macro::TokenStream;

/// Makes a SeaORM entity syncable.
///
/// Goes on the `Model` struct next to `DeriveEntityModel`, and generates, in
/// the same module:
///
/// - `impl tidesync::Syncable for Entity` (conflict policy, single-writer
///   flag, local-only columns, ownership);
/// - `impl ActiveModelBehavior for ActiveModel`, whose `before_save` runs
///   `tidesync::validate_active_model` (SeaORM allows one behaviour per
///   entity, so do not write your own: see `hooks` and `no_behavior`).
///
/// It also checks at compile time that rows can be identified on every
/// replica: a primary key is required, and an auto-increment one is refused
/// unless the entity is declared `single_writer`. SeaORM treats a lone integer
/// key as auto-increment unless it says `auto_increment = false`; `String`
/// and `Uuid` keys are not.
///
/// ```text
/// use sea_orm::entity::prelude::*;
/// use tidesync::Syncable;
///
/// #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
/// #[sea_orm(table_name = "contacts")]
/// #[syncable(conflict = "merge")]
/// pub struct Model {
///     #[sea_orm(primary_key, auto_increment = false)]
///     pub id: Uuid,
///     pub name: String,
///     pub email: Option<String>,
///     #[syncable(skip)]
///     pub last_opened: Option<DateTimeUtc>,
///     pub updated_at: DateTimeUtc,
/// }
///
/// #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
/// pub enum Relation {}
/// ```
///
/// (Shown as text here because this crate cannot depend on the facade; the
/// same entity is compiled by the facade's `tests/derive_pass`.)
///
/// # Attributes
///
/// `#[syncable(...)]` is strict: an unknown or repeated key is an error.
/// `#[sea_orm(...)]` is only read (`primary_key`, `auto_increment`,
/// `enum_name`, `ignore`), never checked: SeaORM owns it.
///
/// ## Container attributes
///
/// - `#[syncable(conflict = "lww" | "merge" | "manual")]`: how concurrent
///   edits of a row are settled (`tidesync::ConflictPolicy`); default
///   `"lww"`, per-column last writer wins.
/// - `#[syncable(single_writer)]`: only one node ever writes this table.
///   This is what allows an auto-increment primary key.
/// - `#[syncable(owner = "field")]`: each row belongs to the user that this
///   field's column holds (`tidesync::Ownership::Owner`); a hub serving
///   accounts sends a user only their rows and refuses changes to others'.
///   The string is the Rust name of a field of the struct (not its `Column`
///   variant or SQL name), and that field must be a synced column: neither
///   `#[syncable(skip)]` nor `#[sea_orm(ignore)]`.
/// - `#[syncable(shared)]`: every user reads (and may write) every row
///   (`tidesync::Ownership::Shared`). Cannot be combined with `owner`.
///   Without either, the table's ownership is undeclared, which a hub
///   serving accounts refuses unless configured to share such tables.
/// - `#[syncable(hooks)]`: the generated `ActiveModelBehavior` first calls
///   your `impl tidesync::SyncHooks for ActiveModel` (same methods as
///   `ActiveModelBehavior`), then tidesync's checks. Move your SeaORM hooks
///   there.
/// - `#[syncable(no_behavior)]`: generate no `ActiveModelBehavior`; you write
///   it, and call `tidesync::validate_active_model` in its `before_save`.
///   Cannot be combined with `hooks`.
/// - `#[syncable(crate = "path")]`: where the tidesync runtime is reachable,
///   for a re-export; default `::tidesync`.
///
/// ```text
/// #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
/// #[sea_orm(table_name = "audit_log")]
/// #[syncable(single_writer, hooks, crate = "my_app::sync")]
/// pub struct Model {
///     #[sea_orm(primary_key)]
///     pub id: i64,
///     pub line: String,
/// }
///
/// #[async_trait::async_trait]
/// impl my_app::sync::SyncHooks for ActiveModel {}
/// ```
///
/// ```text
/// #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
/// #[sea_orm(table_name = "notes")]
/// #[syncable(owner = "owner_id")]
/// pub struct Model {
///     #[sea_orm(primary_key, auto_increment = false)]
///     pub id: Uuid,
///     pub owner_id: i64,
///     pub body: String,
/// }
/// ```
///
/// generates `fn ownership() -> tidesync::Ownership<Column>` returning
/// `Ownership::Owner(Column::OwnerId)`; `shared` returns `Ownership::Shared`.
///
/// ## Field attributes
///
/// - `#[syncable(skip)]`: a local-only column, never captured nor sent
///   (`Syncable::skipped_columns`). It must be an `Option<T>`, since rows
///   pulled from other devices carry no value for it, and it cannot be the
///   primary key.
///
/// ```text
/// #[syncable(skip)]
/// pub last_opened: Option<DateTimeUtc>,
/// ```
#[proc_macro_derive(Syncable, attributes(syncable))]
pub fn derive_syncable(input: TokenStream) -> TokenStream {
    syn::parse2(input.into())
        .and_then(expand::derive)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
