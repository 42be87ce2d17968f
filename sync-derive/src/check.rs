//! The rules a syncable entity must follow, checked on the model; each
//! broken rule is reported at its own span.

use syn::ext::IdentExt;

use crate::ast::{Container, Field};
use crate::ctxt::Ctxt;

/// Runs every check, reporting into `cx`.
pub(crate) fn check(cx: &Ctxt, cont: &Container<'_>) {
    check_primary_key(cx, cont);
    for field in &cont.fields {
        check_skip(cx, field);
    }
    check_behavior(cx, cont);
    check_ownership(cx, cont);
}

/// A primary key exists, and is not auto-increment unless the entity has a
/// single writer.
fn check_primary_key(cx: &Ctxt, cont: &Container<'_>) {
    let Some(key) = cont.primary_keys().next() else {
        cx.error(
            cont.ident.span(),
            format_args!("`{}` has no primary key", cont.ident),
            "tidesync identifies a row by its primary key on every replica: mark the key \
             column with #[sea_orm(primary_key, auto_increment = false)]",
        );
        return;
    };
    if cont.auto_increment() && cont.attrs.single_writer.is_none() {
        cx.error(
            key.ident.span(),
            format_args!(
                "auto-increment primary key `{}` cannot be synced between several writers",
                key.ident
            ),
            "two replicas inserting offline would mint the same key; mint keys on the client \
             (e.g. Uuid with #[sea_orm(primary_key, auto_increment = false)]), \
             or declare the entity #[syncable(single_writer)]",
        );
    }
}

/// `skip` only on a nullable, non-key column.
fn check_skip(cx: &Ctxt, field: &Field<'_>) {
    let Some(skip) = field.attrs.skip else {
        return;
    };
    if !field.is_column() {
        cx.error(
            skip,
            format_args!(
                "`{}` is not a column (#[sea_orm(ignore)]), so there is nothing to skip",
                field.ident
            ),
            "remove #[syncable(skip)]: ignored fields are never stored, hence never synced",
        );
    } else if field.sea_orm.primary_key {
        cx.error(
            skip,
            format_args!("primary key `{}` cannot be #[syncable(skip)]", field.ident),
            "the primary key identifies the row on every replica; it must be synced",
        );
    } else if !field.is_option() {
        cx.error_spanned_by(
            field.ty,
            format_args!("local-only column `{}` must be an Option", field.ident),
            "rows pulled from other devices carry no value for a local-only column, \
             so it must be nullable: use Option<T>",
        );
    }
}

/// `hooks` needs the generated behaviour that `no_behavior` turns off.
fn check_behavior(cx: &Ctxt, cont: &Container<'_>) {
    if let (Some(_), Some(no_behavior)) = (cont.attrs.hooks, cont.attrs.no_behavior) {
        cx.error(
            no_behavior,
            "`hooks` and `no_behavior` cannot be used together",
            "`hooks` calls your `impl SyncHooks` from the ActiveModelBehavior that the derive \
             generates, and `no_behavior` turns that off: keep `hooks`, or keep `no_behavior` and \
             call `tidesync::validate_active_model` from your own `before_save`",
        );
    }
}

/// At most as many fields are listed in the help of an unknown `owner`.
const MAX_LISTED_FIELDS: usize = 8;

/// `owner` and `shared` exclude each other, and `owner` names a field that is
/// a synced column.
fn check_ownership(cx: &Ctxt, cont: &Container<'_>) {
    if let (Some(_), Some(shared)) = (&cont.attrs.owner, cont.attrs.shared) {
        cx.error(
            shared,
            "`owner` and `shared` cannot be used together",
            "with `owner` each row belongs to the user its owner column names, with `shared` \
             every user reads every row: keep one",
        );
    }
    let Some(owner) = &cont.attrs.owner else {
        return;
    };
    let name = owner.value();
    let Some(field) = cont.field_named(&name) else {
        cx.error(
            owner.span(),
            format_args!("`owner` names no field of `{}`: {name:?}", cont.ident),
            unknown_owner_help(cont, &name),
        );
        return;
    };
    if !field.is_column() {
        cx.error(
            owner.span(),
            format_args!(
                "owner field `{}` is not a column (#[sea_orm(ignore)])",
                field.ident
            ),
            "the owning user must be stored in each row: name a column's field",
        );
    } else if field.attrs.skip.is_some() {
        cx.error(
            owner.span(),
            format_args!(
                "owner field `{}` is a local-only column (#[syncable(skip)])",
                field.ident
            ),
            format_args!(
                "a local-only column is never synced, so the hub could not see who owns the \
                 row: remove #[syncable(skip)] from `{}`, or name another field",
                field.ident
            ),
        );
    }
}

/// The help for an `owner` that names no field: the field whose `Column`
/// variant it is, else the fields that could hold the owner when they are
/// few.
fn unknown_owner_help(cont: &Container<'_>, name: &str) -> String {
    let takes = "`owner` takes the Rust name of the field holding the owning user";
    if let Some(field) = cont
        .fields
        .iter()
        .find(|f| f.column().is_some_and(|c| c == name))
    {
        return format!(
            "{takes}, not its Column variant: write owner = \"{}\"",
            field.ident.unraw()
        );
    }
    let candidates: Vec<String> = cont
        .fields
        .iter()
        .filter(|f| f.is_column() && f.attrs.skip.is_none())
        .map(|f| format!("`{}`", f.ident))
        .collect();
    if candidates.is_empty() || candidates.len() > MAX_LISTED_FIELDS {
        format!("{takes} (not a Column variant or an SQL column name)")
    } else {
        format!("{takes}, one of {}", candidates.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::{DeriveInput, parse_quote};

    /// The messages (first line only) of every error the model and its checks report.
    fn errors(input: DeriveInput) -> Vec<String> {
        let cx = Ctxt::new();
        if let Some(cont) = Container::from_ast(&cx, &input) {
            check(&cx, &cont);
        }
        match cx.check() {
            Ok(()) => Vec::new(),
            Err(e) => e
                .into_iter()
                .map(|e| {
                    let msg = e.to_string();
                    assert!(msg.contains("\n\nhelp: "), "no help line: {msg}");
                    msg.lines().next().unwrap().to_owned()
                })
                .collect(),
        }
    }

    #[test]
    fn valid_entities() {
        assert_eq!(
            errors(parse_quote! {
                #[syncable(conflict = "merge")]
                struct Model {
                    #[sea_orm(primary_key, auto_increment = false)] id: Uuid,
                    name: String,
                    #[syncable(skip)] last_opened: Option<DateTimeUtc>,
                    #[sea_orm(ignore)] scratch: Vec<u8>,
                }
            }),
            Vec::<String>::new()
        );
        assert_eq!(
            errors(parse_quote! {
                #[syncable(single_writer, hooks)]
                struct Model { #[sea_orm(primary_key)] id: i32 }
            }),
            Vec::<String>::new()
        );
        // Composite keys are never auto-increment.
        assert_eq!(
            errors(parse_quote! {
                struct Model { #[sea_orm(primary_key)] a: i32, #[sea_orm(primary_key)] b: i64 }
            }),
            Vec::<String>::new()
        );
    }

    #[test]
    fn auto_increment_key_needs_single_writer() {
        assert_eq!(
            errors(parse_quote! {
                struct Model { #[sea_orm(primary_key)] id: i32, name: String }
            }),
            ["tidesync: auto-increment primary key `id` cannot be synced between several writers"]
        );
        assert_eq!(
            errors(parse_quote! {
                struct Model { #[sea_orm(primary_key, auto_increment = true)] id: Uuid }
            }),
            ["tidesync: auto-increment primary key `id` cannot be synced between several writers"]
        );
    }

    #[test]
    fn no_primary_key() {
        assert_eq!(
            errors(parse_quote! {
                struct Model { id: Uuid, #[sea_orm(primary_key, ignore)] other: Uuid }
            }),
            ["tidesync: `Model` has no primary key"]
        );
    }

    #[test]
    fn skip_rules() {
        assert_eq!(
            errors(parse_quote! {
                struct Model {
                    #[sea_orm(primary_key, auto_increment = false)]
                    #[syncable(skip)]
                    id: Uuid,
                    #[syncable(skip)] opened: DateTimeUtc,
                    #[syncable(skip)] #[sea_orm(ignore)] cache: Option<i32>,
                    #[syncable(skip)] fine: Option<i32>,
                }
            }),
            [
                "tidesync: primary key `id` cannot be #[syncable(skip)]",
                "tidesync: local-only column `opened` must be an Option",
                "tidesync: `cache` is not a column (#[sea_orm(ignore)]), so there is nothing to skip",
            ]
        );
    }

    #[test]
    fn hooks_conflict_with_no_behavior() {
        assert_eq!(
            errors(parse_quote! {
                #[syncable(hooks, no_behavior)]
                struct Model { #[sea_orm(primary_key, auto_increment = false)] id: Uuid }
            }),
            ["tidesync: `hooks` and `no_behavior` cannot be used together"]
        );
    }

    /// The full message (help included) of each error.
    fn full_errors(input: DeriveInput) -> Vec<String> {
        let cx = Ctxt::new();
        let cont = Container::from_ast(&cx, &input).expect("a model");
        check(&cx, &cont);
        match cx.check() {
            Ok(()) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn ownership_declarations() {
        assert_eq!(
            errors(parse_quote! {
                #[syncable(owner = "owner_id")]
                struct Model {
                    #[sea_orm(primary_key, auto_increment = false)] id: Uuid,
                    owner_id: i64,
                }
            }),
            Vec::<String>::new()
        );
        // Raw names match with or without `r#`; the key may own its row.
        for owner in ["type", "r#type", "id"] {
            let owner = syn::LitStr::new(owner, proc_macro2::Span::call_site());
            assert_eq!(
                errors(parse_quote! {
                    #[syncable(owner = #owner)]
                    struct Model {
                        #[sea_orm(primary_key, auto_increment = false)] id: Uuid,
                        r#type: String,
                    }
                }),
                Vec::<String>::new()
            );
        }
        assert_eq!(
            errors(parse_quote! {
                #[syncable(shared)]
                struct Model { #[sea_orm(primary_key, auto_increment = false)] id: Uuid }
            }),
            Vec::<String>::new()
        );
    }

    #[test]
    fn owner_and_shared_exclude_each_other() {
        assert_eq!(
            errors(parse_quote! {
                #[syncable(owner = "owner_id", shared)]
                struct Model {
                    #[sea_orm(primary_key, auto_increment = false)] id: Uuid,
                    owner_id: i64,
                }
            }),
            ["tidesync: `owner` and `shared` cannot be used together"]
        );
    }

    #[test]
    fn owner_must_name_a_field() {
        assert_eq!(
            full_errors(parse_quote! {
                #[syncable(owner = "user")]
                struct Model {
                    #[sea_orm(primary_key, auto_increment = false)] id: Uuid,
                    user_id: i64,
                    #[syncable(skip)] opened: Option<i64>,
                    #[sea_orm(ignore)] cache: i64,
                    r#type: String,
                }
            }),
            ["tidesync: `owner` names no field of `Model`: \"user\"\n\n\
              help: `owner` takes the Rust name of the field holding the owning user, \
              one of `id`, `user_id`, `r#type`"]
        );
        // The Column variant is recognised.
        assert_eq!(
            full_errors(parse_quote! {
                #[syncable(owner = "UserId")]
                struct Model {
                    #[sea_orm(primary_key, auto_increment = false)] id: Uuid,
                    user_id: i64,
                }
            }),
            [
                "tidesync: `owner` names no field of `Model`: \"UserId\"\n\n\
              help: `owner` takes the Rust name of the field holding the owning user, \
              not its Column variant: write owner = \"user_id\""
            ]
        );
        // Too many fields to list.
        assert_eq!(
            full_errors(parse_quote! {
                #[syncable(owner = "")]
                struct Model {
                    #[sea_orm(primary_key, auto_increment = false)] id: Uuid,
                    a: i32, b: i32, c: i32, d: i32, e: i32, f: i32, g: i32, h: i32,
                }
            }),
            ["tidesync: `owner` names no field of `Model`: \"\"\n\n\
              help: `owner` takes the Rust name of the field holding the owning user \
              (not a Column variant or an SQL column name)"]
        );
    }

    #[test]
    fn owner_must_be_a_synced_column() {
        assert_eq!(
            errors(parse_quote! {
                #[syncable(owner = "owner_id")]
                struct Model {
                    #[sea_orm(primary_key, auto_increment = false)] id: Uuid,
                    #[syncable(skip)] owner_id: Option<i64>,
                }
            }),
            ["tidesync: owner field `owner_id` is a local-only column (#[syncable(skip)])"]
        );
        assert_eq!(
            errors(parse_quote! {
                #[syncable(owner = "owner_id")]
                struct Model {
                    #[sea_orm(primary_key, auto_increment = false)] id: Uuid,
                    #[sea_orm(ignore)] owner_id: i64,
                }
            }),
            ["tidesync: owner field `owner_id` is not a column (#[sea_orm(ignore)])"]
        );
    }

    #[test]
    fn all_errors_are_reported_together() {
        assert_eq!(
            errors(parse_quote! {
                #[syncable(conflict = "fifo", hooks, no_behavior, colour)]
                struct Model {
                    #[sea_orm(primary_key)] id: i32,
                    #[syncable(skip)] opened: DateTimeUtc,
                }
            }),
            [
                "tidesync: unknown conflict policy \"fifo\"",
                "tidesync: unknown key `colour` in #[syncable(...)] on the struct",
                "tidesync: auto-increment primary key `id` cannot be synced between several writers",
                "tidesync: local-only column `opened` must be an Option",
                "tidesync: `hooks` and `no_behavior` cannot be used together",
            ]
        );
        assert_eq!(
            errors(parse_quote! {
                #[syncable(owner = "owner", shared)]
                struct Model {
                    #[sea_orm(primary_key)] id: i32,
                    #[syncable(skip)] owner: i64,
                }
            }),
            [
                "tidesync: auto-increment primary key `id` cannot be synced between several writers",
                "tidesync: local-only column `owner` must be an Option",
                "tidesync: `owner` and `shared` cannot be used together",
                "tidesync: owner field `owner` is a local-only column (#[syncable(skip)])",
            ]
        );
    }
}
