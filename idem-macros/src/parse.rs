//! Reads the attribute's arguments into options, without judging them yet.
//!
//! Every option is `name = value` or `name(a, b)`. What the names and values mean is
//! checked in `validate`, so that all mistakes are reported together.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{parenthesized, Expr, Ident, Token};

/// One option as written.
pub struct RawOption {
    /// The option's name (`crate` is accepted as a name).
    pub name: Ident,
    /// What follows the name.
    pub value: RawValue,
}

/// What follows an option's name.
pub enum RawValue {
    /// `name = expr`.
    Expr(Expr),
    /// `name(a, b)`.
    List(Punctuated<Ident, Token![,]>, Span),
}

/// The attribute's arguments in order.
pub struct RawOptions(pub Vec<RawOption>);

impl Parse for RawOptions {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let options = Punctuated::<RawOption, Token![,]>::parse_terminated(input)?;
        Ok(RawOptions(options.into_iter().collect()))
    }
}

impl Parse for RawOption {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let name = Ident::parse_any(input).map_err(|error| {
            syn::Error::new(
                error.span(),
                "expected an option such as `key = ..`, `ttl = 86400` or `skip(arg)`",
            )
        })?;
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            RawValue::Expr(input.parse()?)
        } else if input.peek(syn::token::Paren) {
            let content;
            let paren = parenthesized!(content in input);
            let names = Punctuated::parse_terminated_with(&content, Ident::parse_any)?;
            RawValue::List(names, paren.span.join())
        } else {
            return Err(syn::Error::new(
                name.span(),
                format!("expected `{name} = ..` or `{name}(..)` after `{name}`"),
            ));
        };
        Ok(RawOption { name, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_keep_their_order_and_shapes() {
        let parsed: RawOptions =
            syn::parse_str("key = format!(\"k:{}\", id), skip(a, b), crate = \"x\"").unwrap();
        let names: Vec<String> = parsed.0.iter().map(|o| o.name.to_string()).collect();
        assert_eq!(names, ["key", "skip", "crate"]);
        assert!(matches!(parsed.0[1].value, RawValue::List(ref l, _) if l.len() == 2));
    }

    #[test]
    fn a_bare_name_is_an_error_naming_both_forms() {
        let error = syn::parse_str::<RawOptions>("key").err().unwrap();
        assert_eq!(
            error.to_string(),
            "expected `key = ..` or `key(..)` after `key`"
        );
    }
}
