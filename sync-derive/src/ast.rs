//! The model the derive works on: the struct's options and its fields, with
//! what SeaORM's `DeriveEntityModel` makes of them (column names, primary
//! key, auto-increment) worked out the way SeaORM 2.0.4 does.

use heck::ToUpperCamelCase;
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::{Data, DeriveInput, Fields, Ident, Type};

use crate::attr;
use crate::ctxt::Ctxt;

/// Key types SeaORM never treats as auto-increment by default
/// (sea-orm-macros `NOT_AUTO_INCRE_TYPE_SUFFIX`).
const NOT_AUTO_INCREMENT_SUFFIXES: [&str; 2] = ["String", "Uuid"];

/// Keywords SeaORM escapes as raw identifiers in `Column` variant names
/// (sea-orm-macros `RUST_KEYWORDS`).
const RUST_KEYWORDS: [&str; 49] = [
    "as", "async", "await", "break", "const", "continue", "dyn", "else", "enum", "extern", "false",
    "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref",
    "return", "static", "struct", "super", "trait", "true", "type", "union", "unsafe", "use",
    "where", "while", "abstract", "become", "box", "do", "final", "macro", "override", "priv",
    "try", "typeof", "unsized", "virtual", "yield",
];

/// Keywords SeaORM escapes with a trailing `_` (sea-orm-macros
/// `RUST_SPECIAL_KEYWORDS`).
const RUST_SPECIAL_KEYWORDS: [&str; 3] = ["crate", "Self", "self"];

/// The `Model` struct.
pub(crate) struct Container<'a> {
    /// The struct's name (`Model`).
    pub(crate) ident: &'a Ident,
    /// `#[syncable(...)]` on the struct.
    pub(crate) attrs: attr::Container,
    /// Its fields, in order.
    pub(crate) fields: Vec<Field<'a>>,
}

/// One field of the `Model`.
pub(crate) struct Field<'a> {
    /// The field's name.
    pub(crate) ident: &'a Ident,
    /// The field's type.
    pub(crate) ty: &'a Type,
    /// `#[syncable(...)]` on the field.
    pub(crate) attrs: attr::Field,
    /// What we read from `#[sea_orm(...)]` on the field.
    pub(crate) sea_orm: attr::SeaOrmField,
}

impl<'a> Container<'a> {
    /// Builds the model, reporting attribute errors into `cx`. `None` (with an
    /// error reported) when the input is not a struct with named fields.
    pub(crate) fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        let attrs = attr::Container::from_attrs(cx, &input.attrs);
        let named = match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(named) => Some(named),
                Fields::Unnamed(_) | Fields::Unit => {
                    not_a_model(cx, &input.ident);
                    None
                }
            },
            Data::Enum(data) => {
                not_a_model(cx, data.enum_token);
                None
            }
            Data::Union(data) => {
                not_a_model(cx, data.union_token);
                None
            }
        }?;
        let fields = named
            .named
            .iter()
            .filter_map(|field| {
                Some(Field {
                    ident: field.ident.as_ref()?,
                    ty: &field.ty,
                    attrs: attr::Field::from_attrs(cx, &field.attrs),
                    sea_orm: attr::SeaOrmField::from_attrs(&field.attrs),
                })
            })
            .collect();
        Some(Container {
            ident: &input.ident,
            attrs,
            fields,
        })
    }

    /// The primary-key fields (SeaORM's `PrimaryKey` variants).
    pub(crate) fn primary_keys(&self) -> impl Iterator<Item = &Field<'a>> {
        self.fields
            .iter()
            .filter(|f| f.is_column() && f.sea_orm.primary_key)
    }

    /// The field whose Rust name is `name` (raw identifiers match without
    /// their `r#`), e.g. the one `owner = "..."` names.
    pub(crate) fn field_named(&self, name: &str) -> Option<&Field<'a>> {
        let name = name.trim_start_matches("r#");
        self.fields.iter().find(|f| f.ident.unraw() == name)
    }

    /// What SeaORM 2.0.4's generated `PrimaryKeyTrait::auto_increment()`
    /// returns, computed as sea-orm-macros `derives/entity_model.rs` does:
    /// one flag for the whole entity, set by the last explicit
    /// `auto_increment = ...` on any field (even an ignored one), else by the
    /// first non-ignored key field whose type (inside `Option<>`) ends with
    /// `String` or `Uuid` (to `false`); then `flag && one key`, or `one key`
    /// when nothing set it.
    pub(crate) fn auto_increment(&self) -> bool {
        let mut auto_increment = None;
        let mut keys = 0;
        for field in &self.fields {
            if let Some(explicit) = field.sea_orm.auto_increment {
                auto_increment = Some(explicit);
            }
            if !field.is_column() || !field.sea_orm.primary_key {
                continue;
            }
            keys += 1;
            if auto_increment.is_none() {
                let ty = type_string(field.ty);
                if NOT_AUTO_INCREMENT_SUFFIXES.iter().any(|s| ty.ends_with(s)) {
                    auto_increment = Some(false);
                }
            }
        }
        match auto_increment {
            Some(value) => value && keys == 1,
            None => keys == 1,
        }
    }
}

impl Field<'_> {
    /// `false` for `#[sea_orm(ignore)]`: not a column of the table.
    pub(crate) fn is_column(&self) -> bool {
        !self.sea_orm.ignore
    }

    /// The field's `Column` variant as `DeriveEntityModel` names it:
    /// `enum_name`, else the field name (without `r#`) in UpperCamelCase,
    /// keywords escaped. `None` for an ignored field or an `enum_name` that
    /// is no identifier (SeaORM reports that one).
    pub(crate) fn column(&self) -> Option<Ident> {
        if !self.is_column() {
            return None;
        }
        let name = match &self.sea_orm.enum_name {
            Some(name) => name.clone(),
            None => {
                let field = self.ident.to_string();
                field.trim_start_matches("r#").to_upper_camel_case()
            }
        };
        let name = if RUST_KEYWORDS.contains(&name.as_str()) {
            format!("r#{name}")
        } else if RUST_SPECIAL_KEYWORDS.contains(&name.as_str()) {
            format!("{name}_")
        } else {
            name
        };
        let mut ident: Ident = syn::parse_str(&name).ok()?;
        ident.set_span(self.ident.span());
        Some(ident)
    }

    /// `true` when the type is `Option<...>` (any path ending in `Option`
    /// with one type argument).
    pub(crate) fn is_option(&self) -> bool {
        let Type::Path(path) = self.ty else {
            return false;
        };
        path.qself.is_none()
            && path.path.segments.last().is_some_and(|last| {
                last.ident == "Option"
                    && matches!(
                        &last.arguments,
                        syn::PathArguments::AngleBracketed(args) if args.args.len() == 1
                    )
            })
    }
}

/// The type as SeaORM inspects it: tokens without whitespace, with an outer
/// `Option<...>` removed.
fn type_string(ty: &Type) -> String {
    let s: String = ty
        .to_token_stream()
        .to_string()
        .split_whitespace()
        .collect();
    match s.strip_prefix("Option<") {
        Some(inner) => inner[..inner.len() - 1].to_owned(),
        None => s,
    }
}

fn not_a_model(cx: &Ctxt, at: impl ToTokens) {
    cx.error_spanned_by(
        at,
        "#[derive(Syncable)] only supports structs with named fields",
        "derive it on the SeaORM entity's `Model` struct, next to #[derive(DeriveEntityModel)]",
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn with_model<R>(input: DeriveInput, f: impl FnOnce(&Container<'_>) -> R) -> R {
        let cx = Ctxt::new();
        let cont = Container::from_ast(&cx, &input).expect("a model");
        let out = f(&cont);
        cx.check().expect("no errors");
        out
    }

    fn auto_increment(input: DeriveInput) -> bool {
        with_model(input, |c| c.auto_increment())
    }

    #[test]
    fn auto_increment_follows_sea_orm() {
        // An integer key is auto-increment unless told otherwise.
        assert!(auto_increment(parse_quote! {
            struct Model { #[sea_orm(primary_key)] id: i32, name: String }
        }));
        assert!(!auto_increment(parse_quote! {
            struct Model { #[sea_orm(primary_key, auto_increment = false)] id: i32 }
        }));
        // String and Uuid keys are not, even inside Option or by path.
        for ty in [
            quote::quote!(Uuid),
            quote::quote!(uuid::Uuid),
            quote::quote!(String),
            quote::quote!(Option<String>),
        ] {
            assert!(!auto_increment(parse_quote! {
                struct Model { #[sea_orm(primary_key)] id: #ty }
            }));
        }
        // ...unless explicitly auto-increment.
        assert!(auto_increment(parse_quote! {
            struct Model { #[sea_orm(primary_key, auto_increment = true)] id: Uuid }
        }));
        // Composite keys never are.
        assert!(!auto_increment(parse_quote! {
            struct Model {
                #[sea_orm(primary_key)] a: i32,
                #[sea_orm(primary_key, auto_increment = true)] b: i32,
            }
        }));
        // The flag is entity-wide: an explicit value on any field counts,
        // the last one winning, ignored fields included.
        assert!(!auto_increment(parse_quote! {
            struct Model { #[sea_orm(primary_key)] id: i32, #[sea_orm(auto_increment = false)] n: i32 }
        }));
        assert!(auto_increment(parse_quote! {
            struct Model {
                #[sea_orm(primary_key, auto_increment = false)] id: i32,
                #[sea_orm(ignore, auto_increment = true)] n: i32,
            }
        }));
        // An ignored key is no key (so `id` is the only one).
        assert!(auto_increment(parse_quote! {
            struct Model { #[sea_orm(primary_key)] id: i64, #[sea_orm(primary_key, ignore)] u: Uuid }
        }));
        // No key at all: not auto-increment.
        assert!(!auto_increment(
            parse_quote! { struct Model { name: String } }
        ));
    }

    #[test]
    fn column_names_follow_sea_orm() {
        let columns = with_model(
            parse_quote! {
                struct Model {
                    last_opened: Option<i32>,
                    r#type: String,
                    #[sea_orm(enum_name = "Renamed")] x: i32,
                    self_: i32,
                    #[sea_orm(enum_name = "r#as")] a: i32,
                    #[sea_orm(ignore)] gone: i32,
                    #[sea_orm(enum_name = "not an ident")] bad: i32,
                    html5_body: i32,
                }
            },
            |c| {
                c.fields
                    .iter()
                    .map(|f| f.column().map(|i| i.to_string()))
                    .collect::<Vec<_>>()
            },
        );
        let expected = [
            Some("LastOpened"),
            Some("Type"),
            Some("Renamed"),
            Some("Self_"),
            Some("r#as"),
            None,
            None,
            Some("Html5Body"),
        ];
        assert_eq!(columns, expected.map(|c| c.map(String::from)));
    }

    #[test]
    fn fields_by_name() {
        with_model(
            parse_quote! {
                struct Model { owner_id: i32, r#type: String, #[sea_orm(enum_name = "Who")] by: i32 }
            },
            |c| {
                let name = |n: &str| c.field_named(n).map(|f| f.ident.to_string());
                assert_eq!(name("owner_id").as_deref(), Some("owner_id"));
                assert_eq!(name("type").as_deref(), Some("r#type"));
                assert_eq!(name("r#type").as_deref(), Some("r#type"));
                assert_eq!(name("by").as_deref(), Some("by"));
                // Rust names only: not the Column variant, nor another case.
                assert_eq!(name("Who"), None);
                assert_eq!(name("OwnerId"), None);
                assert_eq!(name(""), None);
            },
        );
    }

    #[test]
    fn option_detection() {
        let options = with_model(
            parse_quote! {
                struct Model {
                    a: Option<i32>,
                    b: std::option::Option<String>,
                    c: i32,
                    d: Vec<Option<i32>>,
                    e: <X as Y>::Option,
                }
            },
            |c| c.fields.iter().map(Field::is_option).collect::<Vec<_>>(),
        );
        assert_eq!(options, [true, true, false, false, false]);
    }

    #[test]
    fn only_structs_with_named_fields() {
        let inputs: [DeriveInput; 4] = [
            parse_quote!(
                enum Model {
                    A,
                }
            ),
            parse_quote!(
                struct Model(i32);
            ),
            parse_quote!(
                struct Model;
            ),
            parse_quote!(union Model { a: i32 }),
        ];
        for input in inputs {
            let cx = Ctxt::new();
            assert!(Container::from_ast(&cx, &input).is_none());
            let err = cx.check().unwrap_err().to_string();
            assert!(
                err.starts_with("tidesync: #[derive(Syncable)] only supports structs"),
                "{err}"
            );
            assert!(err.contains("\n\nhelp: "));
        }
    }
}
