//! The `#[idempotent]` attribute of idem. Use it through the `idem` crate, which documents
//! it and re-exports the runtime the generated code calls.
//!
//! The attribute is read in three passes, one module each: `parse` reads the options as
//! written, `validate` checks them and the fn (collecting every mistake), and `expand`
//! rewrites the fn's body.

mod expand;
mod parse;
mod validate;

use proc_macro::TokenStream;

/// Makes an `async fn` run once per key and replay its stored result to every retry.
///
/// See the `idem` crate's documentation for the options and guarantees.
#[proc_macro_attribute]
pub fn idempotent(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(attr.into(), item.into()).into()
}
