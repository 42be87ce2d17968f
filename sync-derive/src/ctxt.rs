//! Error collector: every stage reports into one [`Ctxt`] so the user sees all
//! mistakes of one derive at once, each at its own span (serde_derive
//! `internals/ctxt.rs`).

use std::cell::RefCell;
use std::fmt::Display;
use std::thread;

use proc_macro2::Span;
use quote::ToTokens;

/// Prefix of every message, so the user knows which derive is talking.
const PREFIX: &str = "tidesync: ";

/// Help attached to syntax errors that syn reports inside `#[syncable(...)]`.
const SYNTAX_HELP: &str =
    "the syntax is #[syncable(key = \"value\", flag, ...)], e.g. #[syncable(conflict = \"merge\")]";

/// Collects errors; must be consumed with [`Ctxt::check`] (dropping it
/// unchecked panics, which catches a stage that forgot to report).
pub(crate) struct Ctxt {
    /// `None` once checked.
    errors: RefCell<Option<Vec<syn::Error>>>,
}

impl Ctxt {
    /// An empty collector.
    pub(crate) fn new() -> Self {
        Ctxt {
            errors: RefCell::new(Some(Vec::new())),
        }
    }

    /// Records an error at `span`; `help` becomes the message's `help:` line.
    pub(crate) fn error(&self, span: Span, msg: impl Display, help: impl Display) {
        self.push(syn::Error::new(span, message(msg, help)));
    }

    /// Records an error spanning all of `obj`'s tokens.
    pub(crate) fn error_spanned_by(
        &self,
        obj: impl ToTokens,
        msg: impl Display,
        help: impl Display,
    ) {
        self.push(syn::Error::new_spanned(
            obj.into_token_stream(),
            message(msg, help),
        ));
    }

    /// Records a parse error from syn, adding the prefix and a `help:` line to
    /// each message that has none.
    pub(crate) fn syn_error(&self, err: syn::Error) {
        for e in err {
            let text = e.to_string();
            if text.starts_with(PREFIX) {
                self.push(e);
            } else {
                self.error(e.span(), text, SYNTAX_HELP);
            }
        }
    }

    /// Consumes the collector: `Err` with every recorded error combined, if any.
    pub(crate) fn check(self) -> syn::Result<()> {
        let errors = self.errors.borrow_mut().take().expect("Ctxt checked twice");
        let mut errors = errors.into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for rest in errors {
            combined.combine(rest);
        }
        Err(combined)
    }

    fn push(&self, err: syn::Error) {
        self.errors
            .borrow_mut()
            .as_mut()
            .expect("Ctxt used after check")
            .push(err);
    }
}

impl Drop for Ctxt {
    fn drop(&mut self) {
        if !thread::panicking() && self.errors.borrow().is_some() {
            panic!("sync-derive: Ctxt dropped without check()");
        }
    }
}

/// `tidesync: {msg}` then a blank line and `help: {help}`.
fn message(msg: impl Display, help: impl Display) -> String {
    format!("{PREFIX}{msg}\n\nhelp: {help}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_checks_ok() {
        assert!(Ctxt::new().check().is_ok());
    }

    #[test]
    fn errors_are_combined_in_order() {
        let cx = Ctxt::new();
        cx.error(Span::call_site(), "first", "do a");
        cx.error(Span::call_site(), "second", "do b");
        let msgs: Vec<String> = cx
            .check()
            .unwrap_err()
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            msgs,
            [
                "tidesync: first\n\nhelp: do a",
                "tidesync: second\n\nhelp: do b"
            ]
        );
    }

    #[test]
    fn syn_errors_get_a_help_line() {
        let cx = Ctxt::new();
        cx.syn_error(syn::Error::new(Span::call_site(), "expected `,`"));
        let msg = cx.check().unwrap_err().to_string();
        assert!(
            msg.starts_with("tidesync: expected `,`\n\nhelp: the syntax is"),
            "{msg}"
        );
    }

    #[test]
    #[should_panic(expected = "without check")]
    fn unchecked_panics() {
        let _cx = Ctxt::new();
    }
}
