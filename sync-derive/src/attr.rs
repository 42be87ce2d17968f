//! Attribute parsing: `#[syncable(...)]` into raw options, strictly (unknown
//! and repeated keys are errors), and the few `#[sea_orm(...)]` keys we need,
//! leniently (SeaORM owns that attribute and reports its own errors).

use proc_macro2::{Span, TokenTree};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, ExprLit, Lit, LitStr, Meta, Token};

use crate::ctxt::Ctxt;

/// Our attribute.
const SYNCABLE: &str = "syncable";
/// SeaORM's attribute.
const SEA_ORM: &str = "sea_orm";

const CONFLICT: &str = "conflict";
const SINGLE_WRITER: &str = "single_writer";
const OWNER: &str = "owner";
const SHARED: &str = "shared";
const HOOKS: &str = "hooks";
const NO_BEHAVIOR: &str = "no_behavior";
const CRATE: &str = "crate";
const SKIP: &str = "skip";

const CONTAINER_KEYS_HELP: &str = "expected one of `conflict`, `single_writer`, `owner`, \
     `shared`, `hooks`, `no_behavior`, `crate` (fields take `skip`)";
const FIELD_KEYS_HELP: &str = "the only field key is `skip`; `conflict`, `single_writer`, \
     `owner`, `shared`, `hooks`, `no_behavior` and `crate` go on the struct";

/// `#[syncable(conflict = "...")]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Conflict {
    /// `"lww"`, the default.
    #[default]
    Lww,
    /// `"merge"`.
    Merge,
    /// `"manual"`.
    Manual,
}

impl Conflict {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "lww" => Some(Conflict::Lww),
            "merge" => Some(Conflict::Merge),
            "manual" => Some(Conflict::Manual),
            _ => None,
        }
    }

    /// The `ConflictPolicy` variant this maps to.
    pub(crate) fn variant(self) -> &'static str {
        match self {
            Conflict::Lww => "Lww",
            Conflict::Merge => "Merge",
            Conflict::Manual => "Manual",
        }
    }
}

/// Container options from `#[syncable(...)]` on the struct. Flags keep the
/// span of their key so later checks can point at it.
#[derive(Debug, Default)]
pub(crate) struct Container {
    /// `conflict = "..."`.
    pub(crate) conflict: Conflict,
    /// `single_writer`.
    pub(crate) single_writer: Option<Span>,
    /// `owner = "..."`: the Rust name of the field holding the owning user,
    /// checked against the fields later.
    pub(crate) owner: Option<LitStr>,
    /// `shared`.
    pub(crate) shared: Option<Span>,
    /// `hooks`.
    pub(crate) hooks: Option<Span>,
    /// `no_behavior`.
    pub(crate) no_behavior: Option<Span>,
    /// `crate = "..."`.
    pub(crate) krate: Option<syn::Path>,
}

impl Container {
    /// Parses every `#[syncable(...)]` among the struct's attributes.
    pub(crate) fn from_attrs(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut out = Container::default();
        let mut seen = Seen::default();
        for_each_key(cx, attrs, |meta| {
            if !seen.first(cx, &meta) {
                return Ok(());
            }
            if meta.path.is_ident(CONFLICT) {
                if let Some(lit) = string_value(cx, &meta, CONFLICT, "conflict = \"merge\"")? {
                    match Conflict::from_name(&lit.value()) {
                        Some(conflict) => out.conflict = conflict,
                        None => cx.error(
                            lit.span(),
                            format_args!("unknown conflict policy {:?}", lit.value()),
                            "expected one of \"lww\", \"merge\", \"manual\"",
                        ),
                    }
                }
            } else if meta.path.is_ident(SINGLE_WRITER) {
                out.single_writer = flag(cx, &meta, SINGLE_WRITER);
            } else if meta.path.is_ident(OWNER) {
                out.owner = string_value(cx, &meta, OWNER, "owner = \"owner_id\"")?;
            } else if meta.path.is_ident(SHARED) {
                out.shared = flag(cx, &meta, SHARED);
            } else if meta.path.is_ident(HOOKS) {
                out.hooks = flag(cx, &meta, HOOKS);
            } else if meta.path.is_ident(NO_BEHAVIOR) {
                out.no_behavior = flag(cx, &meta, NO_BEHAVIOR);
            } else if meta.path.is_ident(CRATE) {
                if let Some(lit) = string_value(cx, &meta, CRATE, "crate = \"::tidesync\"")? {
                    match lit.parse::<syn::Path>() {
                        Ok(path) => out.krate = Some(path),
                        Err(_) => cx.error(
                            lit.span(),
                            format_args!("`crate` must be a path, found {:?}", lit.value()),
                            "name where tidesync's runtime is reachable, e.g. \
                             crate = \"::tidesync\" or crate = \"my_app::sync\"",
                        ),
                    }
                }
            } else {
                unknown_key(cx, &meta, "on the struct", CONTAINER_KEYS_HELP);
            }
            Ok(())
        });
        out
    }
}

/// Field options from `#[syncable(...)]` on a field.
#[derive(Debug, Default)]
pub(crate) struct Field {
    /// `skip`: a local-only column.
    pub(crate) skip: Option<Span>,
}

impl Field {
    /// Parses every `#[syncable(...)]` among the field's attributes.
    pub(crate) fn from_attrs(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut out = Field::default();
        let mut seen = Seen::default();
        for_each_key(cx, attrs, |meta| {
            if !seen.first(cx, &meta) {
                return Ok(());
            }
            if meta.path.is_ident(SKIP) {
                out.skip = flag(cx, &meta, SKIP);
            } else {
                unknown_key(cx, &meta, "on a field", FIELD_KEYS_HELP);
            }
            Ok(())
        });
        out
    }
}

/// What we read from a field's `#[sea_orm(...)]`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SeaOrmField {
    /// `primary_key`.
    pub(crate) primary_key: bool,
    /// `auto_increment = true/false`, the last one given.
    pub(crate) auto_increment: Option<bool>,
    /// `enum_name = "..."`: the `Column` variant's name.
    pub(crate) enum_name: Option<String>,
    /// `ignore`: the field is not a column.
    pub(crate) ignore: bool,
}

impl SeaOrmField {
    /// Reads the keys we need and passes over everything else, including
    /// values we cannot parse; never fails.
    pub(crate) fn from_attrs(attrs: &[Attribute]) -> Self {
        let mut out = SeaOrmField::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident(SEA_ORM)) {
            // An error here is a malformed attribute that SeaORM reports.
            let _ = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("primary_key") {
                    out.primary_key = true;
                } else if meta.path.is_ident("ignore") {
                    out.ignore = true;
                } else if meta.path.is_ident("auto_increment")
                    && let Some(Lit::Bool(b)) = lit_value(&meta)
                {
                    out.auto_increment = Some(b.value);
                } else if meta.path.is_ident("enum_name")
                    && let Some(Lit::Str(s)) = lit_value(&meta)
                {
                    out.enum_name = Some(s.value());
                }
                skip_value(&meta);
                Ok(())
            });
        }
        out
    }
}

/// Runs `f` on each key of each `#[syncable(...)]` in `attrs`, reporting
/// malformed attributes and syntax errors into `cx`.
fn for_each_key(
    cx: &Ctxt,
    attrs: &[Attribute],
    mut f: impl FnMut(ParseNestedMeta<'_>) -> syn::Result<()>,
) {
    for attr in attrs.iter().filter(|a| a.path().is_ident(SYNCABLE)) {
        match &attr.meta {
            Meta::List(list) if list.tokens.is_empty() => continue,
            Meta::List(_) => {}
            Meta::Path(_) | Meta::NameValue(_) => {
                cx.error_spanned_by(
                    attr,
                    "expected a list of options: #[syncable(...)]",
                    "e.g. #[syncable(conflict = \"merge\")] on the struct, \
                     #[syncable(skip)] on a field",
                );
                continue;
            }
        }
        if let Err(err) = attr.parse_nested_meta(&mut f) {
            cx.syn_error(err);
        }
    }
}

/// Keys already given, across all `#[syncable]` attributes of one item.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    /// `true` the first time a key is seen; on a repeat, reports it, skips
    /// its value and returns `false`.
    fn first(&mut self, cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> bool {
        let name = key_name(meta);
        if self.0.contains(&name) {
            cx.error_spanned_by(
                &meta.path,
                format_args!("duplicate `{name}` in #[syncable(...)]"),
                format_args!("each key may be given once; remove this `{name}`"),
            );
            skip_value(meta);
            false
        } else {
            self.0.push(name);
            true
        }
    }
}

fn key_name(meta: &ParseNestedMeta<'_>) -> String {
    meta.path.to_token_stream().to_string().replace(' ', "")
}

fn unknown_key(cx: &Ctxt, meta: &ParseNestedMeta<'_>, place: &str, help: &str) {
    cx.error_spanned_by(
        &meta.path,
        format_args!(
            "unknown key `{}` in #[syncable(...)] {place}",
            key_name(meta)
        ),
        help,
    );
    skip_value(meta);
}

/// A flag: the key alone. A value after it is reported and skipped.
fn flag(cx: &Ctxt, meta: &ParseNestedMeta<'_>, name: &str) -> Option<Span> {
    if meta.input.is_empty() || meta.input.peek(Token![,]) {
        return Some(meta.path.span());
    }
    cx.error_spanned_by(
        &meta.path,
        format_args!("`{name}` is a flag and takes no value"),
        format_args!("write it alone: #[syncable({name})]"),
    );
    skip_value(meta);
    None
}

/// `key = "string"`. A missing or non-string value is reported and `None`
/// returned; `Err` only for a syntax error.
fn string_value(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    name: &str,
    example: &str,
) -> syn::Result<Option<LitStr>> {
    if !meta.input.peek(Token![=]) {
        cx.error_spanned_by(
            &meta.path,
            format_args!("`{name}` needs a value"),
            format_args!("write {example}"),
        );
        skip_value(meta);
        return Ok(None);
    }
    let mut expr = meta.value()?.parse::<Expr>()?;
    // A literal passed through a `macro_rules!` fragment arrives wrapped in
    // an invisible group.
    while let Expr::Group(g) = expr {
        expr = *g.expr;
    }
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(Some(lit)),
        other => {
            cx.error_spanned_by(
                other,
                format_args!("`{name}` takes a string literal"),
                format_args!("write {example}"),
            );
            Ok(None)
        }
    }
}

/// `key = literal`, or `None` for anything else (lenient `#[sea_orm]` reading).
fn lit_value(meta: &ParseNestedMeta<'_>) -> Option<Lit> {
    if !meta.input.peek(Token![=]) {
        return None;
    }
    let fork = meta.input.fork();
    fork.parse::<Token![=]>().ok()?;
    fork.parse::<Lit>().ok()?;
    if fork.is_empty() || fork.peek(Token![,]) {
        meta.value().ok()?.parse::<Lit>().ok()
    } else {
        None
    }
}

/// Passes over whatever follows the key up to the next top-level comma
/// (`= value`, `(...)`, or stray tokens).
fn skip_value(meta: &ParseNestedMeta<'_>) {
    while !meta.input.is_empty() && !meta.input.peek(Token![,]) {
        if meta.input.parse::<TokenTree>().is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn container(attrs: &[Attribute]) -> (Container, Vec<String>) {
        let cx = Ctxt::new();
        let out = Container::from_attrs(&cx, attrs);
        (out, errors(cx))
    }

    fn field(attrs: &[Attribute]) -> (Field, Vec<String>) {
        let cx = Ctxt::new();
        let out = Field::from_attrs(&cx, attrs);
        (out, errors(cx))
    }

    fn errors(cx: Ctxt) -> Vec<String> {
        match cx.check() {
            Ok(()) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn container_defaults() {
        let (c, errs) = container(&[parse_quote!(#[sea_orm(table_name = "x")])]);
        assert!(errs.is_empty());
        assert_eq!(c.conflict, Conflict::Lww);
        assert!(c.single_writer.is_none() && c.hooks.is_none() && c.no_behavior.is_none());
        assert!(c.owner.is_none() && c.shared.is_none());
        assert!(c.krate.is_none());
    }

    #[test]
    fn container_all_keys() {
        let (c, errs) = container(&[
            parse_quote!(#[syncable(conflict = "manual", single_writer)]),
            parse_quote!(#[syncable(hooks, crate = "my_app::sync")]),
            parse_quote!(#[syncable()]),
        ]);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(c.conflict, Conflict::Manual);
        assert!(c.single_writer.is_some() && c.hooks.is_some());
        let krate = c.krate.unwrap();
        assert_eq!(krate.to_token_stream().to_string(), "my_app :: sync");
        let (c, errs) = container(&[parse_quote!(#[syncable(no_behavior, conflict = "merge")])]);
        assert!(errs.is_empty(), "{errs:?}");
        assert!(c.no_behavior.is_some());
        assert_eq!(c.conflict, Conflict::Merge);
        let (c, errs) = container(&[parse_quote!(#[syncable(owner = "owner_id")])]);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(c.owner.unwrap().value(), "owner_id");
        assert!(c.shared.is_none());
        let (c, errs) = container(&[parse_quote!(#[syncable(shared)])]);
        assert!(errs.is_empty(), "{errs:?}");
        assert!(c.shared.is_some() && c.owner.is_none());
    }

    #[test]
    fn unknown_and_repeated_keys_are_all_reported() {
        let (c, errs) = container(&[
            parse_quote!(#[syncable(conflict = "merge", colour = "red", skip)]),
            parse_quote!(#[syncable(conflict = "manual", lists(a, b), hooks)]),
        ]);
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(
            errs[0].starts_with("tidesync: unknown key `colour` in #[syncable(...)] on the struct")
        );
        assert!(errs[1].starts_with("tidesync: unknown key `skip`"));
        assert!(errs[2].starts_with("tidesync: duplicate `conflict`"));
        assert!(errs[3].starts_with("tidesync: unknown key `lists`"));
        assert!(errs.iter().all(|e| e.contains("\n\nhelp: ")));
        // Parsing went on past each bad key.
        assert_eq!(c.conflict, Conflict::Merge);
        assert!(c.hooks.is_some());
    }

    #[test]
    fn bad_values() {
        let (_, errs) = container(&[parse_quote!(
            #[syncable(conflict = "fifo", crate = "not a path", single_writer = true, hooks(x), conflict)]
        )]);
        assert_eq!(errs.len(), 5, "{errs:?}");
        assert_eq!(
            errs[0],
            "tidesync: unknown conflict policy \"fifo\"\n\n\
             help: expected one of \"lww\", \"merge\", \"manual\""
        );
        assert!(errs[1].starts_with("tidesync: `crate` must be a path"));
        assert!(errs[2].starts_with("tidesync: `single_writer` is a flag"));
        assert!(errs[3].starts_with("tidesync: `hooks` is a flag"));
        assert!(errs[4].starts_with("tidesync: duplicate `conflict`"));

        let (_, errs) = container(&[parse_quote!(#[syncable(conflict = lww, crate)])]);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("tidesync: `conflict` takes a string literal"));
        assert!(errs[1].starts_with("tidesync: `crate` needs a value"));

        let (c, errs) = container(&[
            parse_quote!(#[syncable(owner = owner_id, shared = true)]),
            parse_quote!(#[syncable(owner, shared(x))]),
        ]);
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert_eq!(
            errs[0],
            "tidesync: `owner` takes a string literal\n\nhelp: write owner = \"owner_id\""
        );
        assert_eq!(
            errs[1],
            "tidesync: `shared` is a flag and takes no value\n\n\
             help: write it alone: #[syncable(shared)]"
        );
        assert!(errs[2].starts_with("tidesync: duplicate `owner`"));
        assert!(errs[3].starts_with("tidesync: duplicate `shared`"));
        assert!(c.owner.is_none() && c.shared.is_none());
        let (_, errs) = container(&[parse_quote!(#[syncable(owner, shared(x))])]);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("tidesync: `owner` needs a value"));
        assert!(errs[1].starts_with("tidesync: `shared` is a flag"));
    }

    #[test]
    fn malformed_attributes() {
        let (_, errs) = container(&[
            parse_quote!(#[syncable]),
            parse_quote!(#[syncable = "lww"]),
            parse_quote!(#[syncable(conflict = )]),
        ]);
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].starts_with("tidesync: expected a list of options"));
        assert!(errs[1].starts_with("tidesync: expected a list of options"));
        assert!(errs[2].contains("\n\nhelp: the syntax is"), "{}", errs[2]);
    }

    #[test]
    fn field_keys() {
        let (f, errs) = field(&[parse_quote!(#[syncable(skip)])]);
        assert!(errs.is_empty() && f.skip.is_some());
        let (f, errs) = field(&[parse_quote!(#[doc = "x"])]);
        assert!(errs.is_empty() && f.skip.is_none());
        let (_, errs) = field(&[
            parse_quote!(#[syncable(skip, conflict = "lww")]),
            parse_quote!(#[syncable(skip)]),
        ]);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("tidesync: unknown key `conflict` in #[syncable(...)] on a field")
        );
        assert!(errs[0].ends_with("go on the struct"));
        assert!(errs[1].starts_with("tidesync: duplicate `skip`"));
    }

    #[test]
    fn sea_orm_is_read_leniently() {
        let f = SeaOrmField::from_attrs(&[
            parse_quote!(#[sea_orm(column_type = "Decimal(Some((10, 2)))", primary_key)]),
            parse_quote!(#[sea_orm(default_expr = Expr::current_timestamp(), whatever(1, 2), auto_increment = false)]),
            parse_quote!(#[sea_orm(enum_name = "Renamed", unknown_flag)]),
            parse_quote!(#[serde(rename = "x")]),
        ]);
        assert_eq!(
            f,
            SeaOrmField {
                primary_key: true,
                auto_increment: Some(false),
                enum_name: Some("Renamed".into()),
                ignore: false,
            }
        );
        // Values of the wrong kind are ignored, the last valid one wins.
        let f = SeaOrmField::from_attrs(&[parse_quote!(
            #[sea_orm(auto_increment = "yes", ignore, auto_increment = true, enum_name = 3)]
        )]);
        assert_eq!(
            f,
            SeaOrmField {
                auto_increment: Some(true),
                ignore: true,
                ..SeaOrmField::default()
            }
        );
        // Garbage never panics or errors.
        let f = SeaOrmField::from_attrs(&[parse_quote!(#[sea_orm = 1]), parse_quote!(#[sea_orm])]);
        assert_eq!(f, SeaOrmField::default());
    }
}
