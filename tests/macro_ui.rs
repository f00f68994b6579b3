//! Compile-time behaviour of `#[idempotent]`: what compiles, and the pinned diagnostics
//! for what does not. Regenerate the `.stderr` files with `TRYBUILD=overwrite` and review
//! the diff.

#[test]
fn accepted_forms_compile() {
    trybuild::TestCases::new().pass("tests/ui/pass/*.rs");
}

#[test]
fn mistakes_are_reported_at_the_users_tokens() {
    trybuild::TestCases::new().compile_fail("tests/ui/fail/*.rs");
}
