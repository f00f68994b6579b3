//! Rewrites the annotated fn in place.
//!
//! The fn keeps its signature. Its body becomes: assemble the call (service, scope, key,
//! fingerprint, options), then hand the original body, wrapped in an inner `async move`
//! block typed with the declared return type, to the runtime's `__private::run`. The body is
//! not moved into a nested fn, so `self`, generics and `?` keep working and compiler errors
//! point at the user's own tokens.

use proc_macro2::{Delimiter, Group, Literal, Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{parse_quote, Ident, ItemFn, LitStr, Path, TraitItemFn, Type};

use crate::parse::RawOptions;
use crate::validate::{self, DurationValue, ErrorMode, Errors, Function, Options, Shape};

/// Expands `#[idempotent(attr)] item`. On any error it returns the item unchanged plus
/// the errors, so the rest of the crate does not drown in follow-on errors.
pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut item_fn: ItemFn = match syn::parse2(item.clone()) {
        Ok(item_fn) => item_fn,
        Err(error) => return unchanged(item.clone(), not_a_fn(&item, error)),
    };
    let mut errors = Errors::default();
    let raw = match syn::parse2::<RawOptions>(attr) {
        Ok(raw) => Some(raw),
        Err(error) => {
            errors.push(error);
            None
        }
    };
    let function = validate::function(&item_fn, &mut errors);
    let options = raw.map(|raw| validate::options(raw, function.as_ref(), &mut errors));
    if let Err(error) = errors.finish() {
        return rejected(item_fn, error);
    }
    let (Some(options), Some(function)) = (options, function) else {
        unreachable!("options and fn are checked whenever no error was collected")
    };
    rewrite(&mut item_fn, options, &function);
    item_fn.into_token_stream()
}

/// The fn as written plus the errors. Arguments that only the attribute used (in `key`,
/// say) would otherwise be reported as unused on top of the real mistake.
fn rejected(mut item: ItemFn, error: syn::Error) -> TokenStream {
    item.attrs.push(parse_quote!(#[allow(unused_variables)]));
    unchanged(item.into_token_stream(), error)
}

fn unchanged(item: TokenStream, error: syn::Error) -> TokenStream {
    let error = error.to_compile_error();
    quote!(#item #error)
}

/// The item is not a fn with a body: say what `#[idempotent]` needs.
fn not_a_fn(item: &TokenStream, error: syn::Error) -> syn::Error {
    match syn::parse2::<TraitItemFn>(item.clone()) {
        Ok(declaration) if declaration.default.is_none() => syn::Error::new(
            declaration.sig.fn_token.span,
            "`#[idempotent]` needs the fn's body: put it on the method's implementation, \
             not on the trait's declaration",
        ),
        _ => syn::Error::new(
            error.span(),
            "`#[idempotent]` goes on an `async fn` with a body",
        ),
    }
}

fn rewrite(item: &mut ItemFn, options: Options, function: &Function) {
    let krate: Path = options
        .krate
        .clone()
        .unwrap_or_else(|| parse_quote!(::idem));
    let private = quote!(#krate::__private);
    let call_ident = Ident::new("__idem_call", Span::mixed_site());
    let call = call(&private, &call_ident, &options, function, &item.sig.ident);
    let ret = &function.ret;
    let policy = policy(&private, options.on_error, ret);

    // The calls are spanned at the return type, which `ops` also names as written: that is
    // where a return type that cannot be stored or an error type that cannot be recorded is
    // reported, with the message of the missing trait.
    let span = ret.span();
    let run = turbofish(quote!(#private::run), ret, quote!(_), span);
    let ops = turbofish(quote!(#private::ops), ret, policy, span);
    let no_args = respan(quote!(()), span);
    let ops = quote!(#ops #no_args);
    let dot_await = respan(quote!(.await), span);
    let body = |stmts: &[syn::Stmt]| -> TokenStream {
        let anchor = return_anchor(ret);
        let mut args = Group::new(
            Delimiter::Parenthesis,
            quote! {
                #call_ident, #ops, async move {
                    #anchor
                    #(#stmts)*
                }
            },
        );
        args.set_span(span);
        quote! {
            #call
            #run #args #dot_await
        }
    };
    match function.shape {
        Shape::Async => {
            let body = body(&item.block.stmts);
            item.block = parse_quote!({ #body });
            item.block.brace_token = syn::token::Brace(ret.span());
        }
        Shape::AsyncTrait => {
            let Some(block) = validate::async_trait_block(&mut item.block) else {
                unreachable!("the shape was recognised by validate::function")
            };
            let body = body(&block.block.stmts);
            block.block = parse_quote!({ #body });
            block.block.brace_token = syn::token::Brace(ret.span());
        }
    }
}

/// `let __idem_call = Call { .. };`
fn call(
    private: &TokenStream,
    call_ident: &Ident,
    options: &Options,
    function: &Function,
    fn_name: &Ident,
) -> TokenStream {
    let service = match &options.service {
        Some(expr) => quote_spanned!(expr.span()=> #private::shared(&(#expr))),
        None => quote!(#private::global()),
    };
    let scope = match &options.scope {
        Some(scope) => quote!(#private::scope(#scope)),
        None => {
            let name = LitStr::new(&fn_name.to_string(), fn_name.span());
            let path = quote!(::core::concat!(::core::module_path!(), "::", #name));
            // Methods of one name on two types in one module would otherwise share their
            // records; the attribute cannot see the impl, but `Self` names its type.
            if function.receiver {
                quote!(#private::method_scope::<Self>(#path))
            } else {
                quote!(#private::scope(#path))
            }
        }
    };
    let key = match &options.key {
        Some(expr) => quote_spanned! {expr.span()=>
            ::core::option::Option::Some(#private::key_text(&(#expr)))
        },
        None => quote!(::core::option::Option::None),
    };
    let fingerprint = match &options.fingerprint {
        Some(expr) => quote_spanned!(expr.span()=> #private::value(&(#expr))),
        None => {
            let args = function
                .params
                .iter()
                .filter(|param| !options.skip.contains(param))
                .map(|param| {
                    let name = LitStr::new(&param.to_string(), param.span());
                    quote_spanned!(param.span()=> .arg(#name, &#param))
                });
            quote!(#private::Args::new() #(#args)* .finish())
        }
    };
    let settings = call_options(private, options);
    quote! {
        let #call_ident = #private::Call {
            service: #service,
            scope: #scope,
            key: #key,
            fingerprint: #fingerprint,
            options: #settings,
        };
    }
}

/// `CallOptions::new().ttl(..)..`
fn call_options(private: &TokenStream, options: &Options) -> TokenStream {
    let mut out = quote!(#private::CallOptions::new());
    let durations = [
        ("ttl", &options.ttl),
        ("failure_ttl", &options.failure_ttl),
        ("lock_timeout", &options.lock_timeout),
        ("wait_timeout", &options.wait_timeout),
    ];
    for (name, value) in durations {
        let setter = Ident::new(name, Span::call_site());
        let value = match value {
            None => continue,
            Some(DurationValue::Seconds(seconds, span)) => {
                let seconds = Literal::u64_unsuffixed(*seconds);
                quote_spanned!(*span=> ::core::time::Duration::from_secs(#seconds))
            }
            Some(DurationValue::Expr(expr)) => {
                quote_spanned!(expr.span()=> #private::duration(#expr))
            }
        };
        out = quote!(#out.#setter(#value));
    }
    if let Some(flag) = &options.validate_fingerprint {
        out = quote!(#out.validate_fingerprint(#flag));
    }
    out
}

/// `path::<ret, rest>` with every token but those of `ret` spanned at `span`; `ret` keeps
/// its own, so that a bound it fails is reported at the whole type as written.
fn turbofish(path: TokenStream, ret: &Type, rest: TokenStream, span: Span) -> TokenStream {
    let open = respan(quote!(#path::<), span);
    let close = respan(quote!(, #rest>), span);
    quote!(#open #ret #close)
}

/// The `on_error` policy, spanned at the return type so that an error type that cannot be
/// recorded is reported there.
fn policy(private: &TokenStream, mode: Option<(ErrorMode, Span)>, ret: &Type) -> TokenStream {
    let name = match mode.map(|(mode, _)| mode) {
        None | Some(ErrorMode::Release) => "Release",
        Some(ErrorMode::Record) => "Recorded",
        Some(ErrorMode::Classify) => "Classified",
    };
    let name = Ident::new(name, ret.span());
    respan(quote!(#private::#name), ret.span())
}

/// `tokens` with every span set to `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut inner = Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                token = TokenTree::Group(inner);
            } else {
                token.set_span(span);
            }
            token
        })
        .collect()
}

/// A statement that fixes the inner block's output to the declared return type, so `?`,
/// `.into()` and coercions infer exactly as they would in the unannotated fn. It never
/// runs.
fn return_anchor(ret: &Type) -> TokenStream {
    let anchor = Ident::new("__idem_fake_return", Span::mixed_site());
    quote! {
        #[allow(
            unreachable_code,
            clippy::diverging_sub_expression,
            clippy::empty_loop,
            clippy::let_unit_value,
            clippy::needless_return
        )]
        if false {
            let #anchor: #ret = loop {};
            return #anchor;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expansion of one representative fn, pretty-printed, must match the checked-in
    /// snapshot, so that every change to the generated code is reviewed as a diff. Run with
    /// `UPDATE_EXPANSION=1` to rewrite the snapshot after an intended change.
    #[test]
    fn expansion_matches_the_snapshot() {
        let attr = quote!(
            key = format!("pay:{}", req.order_id),
            ttl = 86400,
            failure_ttl = 600,
            service = self.service,
            skip(trace),
            on_error = "record"
        );
        let item = quote! {
            /// Charges the order once.
            pub async fn charge(
                &self,
                req: ChargeRequest,
                trace: &TraceId,
            ) -> Result<Receipt, PaymentError> {
                let receipt = self.gateway.charge(&req, trace).await?;
                Ok(receipt)
            }
        };
        let method = expand(attr, item);
        let file: syn::File = syn::parse2(quote!(impl Payments { #method })).unwrap();
        let expanded = prettyplease::unparse(&file);

        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/expansion/charge.expanded.rs"
        );
        if std::env::var_os("UPDATE_EXPANSION").is_some_and(|v| v == "1") {
            std::fs::write(path, &expanded).unwrap();
        }
        let snapshot = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            snapshot == expanded,
            "the expansion changed; review it and run with UPDATE_EXPANSION=1:\n{expanded}"
        );
    }

    #[test]
    fn a_mistake_keeps_the_fn_and_adds_the_error() {
        let item = quote!(
            async fn charge(id: String) -> Result<u64, E> {
                Ok(1)
            }
        );
        let out = expand(quote!(kee = id), item).to_string();
        assert!(
            out.starts_with("# [allow (unused_variables)] async fn charge"),
            "{out}"
        );
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.contains("did you mean `key`?"), "{out}");
    }

    #[test]
    fn a_methods_default_scope_names_self_and_a_free_fns_does_not() {
        let method = quote!(
            async fn charge(&self, id: String) -> Result<u64, E> {
                Ok(1)
            }
        );
        let free = quote!(
            async fn charge(id: String) -> Result<u64, E> {
                Ok(1)
            }
        );
        let method = expand(quote!(key = id), method).to_string();
        let free = expand(quote!(key = id), free).to_string();

        assert!(method.contains("scope : :: idem :: __private :: method_scope :: < Self > ("));
        assert!(
            free.contains("scope : :: idem :: __private :: scope ("),
            "{free}"
        );
        assert!(!free.contains("Self"), "{free}");
    }
}
