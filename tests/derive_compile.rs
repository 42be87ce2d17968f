//! Compile tests for `#[derive(Syncable)]`: entities that must be rejected,
//! each with its expected diagnostics (`tests/compile_fail/*.stderr`).
//! The entities that must compile (`tests/derive_pass`) are test programs
//! of their own (`derive_pass_*` in `Cargo.toml`), built with the other
//! tests: trybuild builds every dependency again in a target of its own,
//! and only checks (never builds) what must fail.
//!
//! Regenerate the `.stderr` files with `TRYBUILD=overwrite` after changing a
//! message, and read the diff.

#[test]
fn derive_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile_fail/*.rs");
}
