//! Compile tests for `#[derive(Syncable)]`: entities that must be rejected,
//! each with its expected diagnostics (`tests/compile_fail/*.stderr`), and
//! entities that must compile (`tests/derive_pass`).
//!
//! Regenerate the `.stderr` files with `TRYBUILD=overwrite` after changing a
//! message, and read the diff.

#[test]
fn derive_compile() {
    let t = trybuild::TestCases::new();
    t.pass("tests/derive_pass/*.rs");
    t.compile_fail("tests/compile_fail/*.rs");
}
