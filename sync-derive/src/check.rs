//! The rules a syncable entity must follow, checked on the model; each
//! broken rule is reported at its own span.

use crate::ast::{Container, Field};
use crate::ctxt::Ctxt;

/// Runs every check, reporting into `cx`.
pub(crate) fn check(cx: &Ctxt, cont: &Container<'_>) {
    check_primary_key(cx, cont);
    for field in &cont.fields {
        check_skip(cx, field);
    }
    check_behavior(cx, cont);
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
    }
}
