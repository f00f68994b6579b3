//! Checks the options and the annotated fn, collecting every mistake before reporting.
//!
//! Each error is spanned at the token the user has to change and says what to write
//! instead. Type rules that a macro cannot decide (is this alias a `Result`? does this
//! argument implement `Serialize`?) are left to the compiler, through bounds in the runtime's
//! `__private` module that the generated code puts at the user's tokens.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{
    Block, Expr, ExprAsync, ExprCall, FnArg, GenericArgument, Ident, ItemFn, Lit, LitBool, LitInt,
    LitStr, Pat, Path, PathArguments, ReturnType, Stmt, Type, TypeParamBound, UnOp,
};

use crate::parse::{RawOption, RawOptions, RawValue};

/// The options `#[idempotent]` accepts, in the order the docs list them.
const OPTIONS: [&str; 12] = [
    "key",
    "scope",
    "ttl",
    "failure_ttl",
    "lock_timeout",
    "wait_timeout",
    "skip",
    "fingerprint",
    "service",
    "on_error",
    "validate_fingerprint",
    "crate",
];

/// The longest duration the runtime accepts, in seconds: 100 years (`idem::MAX_DURATION`).
const MAX_SECONDS: u64 = 100 * 365 * 24 * 3600;

/// The checked options.
#[derive(Default)]
pub struct Options {
    /// `key = ..`.
    pub key: Option<Expr>,
    /// `scope = ".."`.
    pub scope: Option<LitStr>,
    /// `ttl = ..`.
    pub ttl: Option<DurationValue>,
    /// `failure_ttl = ..`.
    pub failure_ttl: Option<DurationValue>,
    /// Where `failure_ttl` is named, for the error when nothing is recorded.
    failure_ttl_name: Option<Span>,
    /// `lock_timeout = ..`.
    pub lock_timeout: Option<DurationValue>,
    /// `wait_timeout = ..`.
    pub wait_timeout: Option<DurationValue>,
    /// `skip(..)`.
    pub skip: Vec<Ident>,
    /// `fingerprint = ..`.
    pub fingerprint: Option<Expr>,
    /// `service = ..`.
    pub service: Option<Expr>,
    /// `on_error = ".."`, with the span of its value.
    pub on_error: Option<(ErrorMode, Span)>,
    /// `validate_fingerprint = ..`.
    pub validate_fingerprint: Option<LitBool>,
    /// `crate = ".."`.
    pub krate: Option<Path>,
}

/// A duration option.
pub enum DurationValue {
    /// Whole seconds, checked here.
    Seconds(u64, Span),
    /// A `Duration` expression, checked by the compiler and at run time.
    Expr(Expr),
}

/// The `on_error` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorMode {
    /// Every error frees the key.
    Release,
    /// Every error is recorded and replayed.
    Record,
    /// The error's `Classify` implementation decides.
    Classify,
}

/// The annotated fn, as the expansion needs it.
pub struct Function {
    /// Where the body is.
    pub shape: Shape,
    /// The declared `Ok`-and-`Err` return type.
    pub ret: Type,
    /// The argument bindings that are fingerprinted unless skipped, in order.
    pub params: Vec<Ident>,
    /// Whether the fn takes `self` in some form, so that `Self` names its type.
    pub receiver: bool,
}

/// Where the body to run once is.
pub enum Shape {
    /// An `async fn`: its block.
    Async,
    /// A fn that `#[async_trait]` has already rewritten into `Box::pin(async move { .. })`:
    /// that async block, the last statement of the fn.
    AsyncTrait,
}

/// Collects errors so that all are reported at once.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    /// Adds an error at `span`.
    pub fn at(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    /// Adds an error.
    pub fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// All errors, if any.
    pub fn finish(self) -> Result<(), syn::Error> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Checks the options against each other and against the fn.
pub fn options(raw: RawOptions, function: Option<&Function>, errors: &mut Errors) -> Options {
    let mut options = Options::default();
    let mut seen: Vec<String> = Vec::new();
    for option in raw.0 {
        let name = option.name.to_string();
        if seen.contains(&name) && OPTIONS.contains(&name.as_str()) {
            errors.at(
                option.name.span(),
                format!("`{name}` is set more than once; keep one"),
            );
            continue;
        }
        seen.push(name.clone());
        one_option(&mut options, option, errors);
    }

    if let (Some(_), Some(first)) = (&options.fingerprint, options.skip.first()) {
        errors.at(
            first.span(),
            "`skip` has no effect with `fingerprint = ..`, which replaces the arguments; remove one",
        );
    }
    if let Some(name) = options.failure_ttl_name {
        let records = matches!(
            options.on_error,
            Some((ErrorMode::Record | ErrorMode::Classify, _))
        );
        if !records {
            errors.at(
                name,
                "`failure_ttl` is how long a recorded error is kept, and this fn records no \
                 error: add `on_error = \"record\"` (or `\"classify\"`), or remove `failure_ttl`",
            );
        }
    }
    if let Some(function) = function {
        check_skip(&options.skip, function, errors);
    }
    options
}

fn one_option(options: &mut Options, option: RawOption, errors: &mut Errors) {
    let RawOption { name, value } = option;
    let text = name.to_string();
    if !OPTIONS.contains(&text.as_str()) {
        errors.at(name.span(), unknown_option(&text));
        return;
    }
    let expr = match value {
        RawValue::List(names, _) if text == "skip" => {
            options.skip = names.into_iter().collect();
            return;
        }
        RawValue::List(_, span) => {
            errors.at(span, format!("write `{text} = ..`, not `{text}(..)`"));
            return;
        }
        RawValue::Expr(expr) if text == "skip" => {
            errors.at(expr.span(), "write `skip(arg, other_arg)`, not `skip = ..`");
            return;
        }
        RawValue::Expr(expr) => expr,
    };
    match text.as_str() {
        "key" => options.key = Some(expr),
        "fingerprint" => options.fingerprint = Some(expr),
        "service" => options.service = Some(expr),
        "ttl" => options.ttl = duration("ttl", expr, errors),
        "failure_ttl" => {
            options.failure_ttl_name = Some(name.span());
            options.failure_ttl = duration("failure_ttl", expr, errors);
        }
        "lock_timeout" => options.lock_timeout = duration("lock_timeout", expr, errors),
        "wait_timeout" => options.wait_timeout = duration("wait_timeout", expr, errors),
        "scope" => options.scope = scope(expr, errors),
        "on_error" => options.on_error = on_error(expr, errors),
        "validate_fingerprint" => match expr {
            Expr::Lit(syn::ExprLit {
                lit: Lit::Bool(flag),
                ..
            }) => options.validate_fingerprint = Some(flag),
            other => errors.at(
                other.span(),
                "`validate_fingerprint` takes `true` or `false`",
            ),
        },
        "crate" => options.krate = krate(expr, errors),
        _ => unreachable!("every name in OPTIONS is matched above"),
    }
}

fn unknown_option(name: &str) -> String {
    let list = OPTIONS.map(|o| format!("`{o}`")).join(", ");
    match closest(name, &OPTIONS) {
        Some(close) => {
            format!("unknown option `{name}`; did you mean `{close}`? The options are: {list}")
        }
        None => format!("unknown option `{name}`; the options are: {list}"),
    }
}

/// The candidate within two edits of `word`, if any.
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

fn duration(name: &str, expr: Expr, errors: &mut Errors) -> Option<DurationValue> {
    let hint = format!(
        "write whole seconds (`{name} = 86400`) or a `Duration` expression \
         (`{name} = std::time::Duration::from_millis(1500)`)"
    );
    match &expr {
        Expr::Lit(literal) => match &literal.lit {
            Lit::Int(int) => {
                if let Some(message) = unit_suffix(name, int) {
                    errors.at(int.span(), message);
                    return None;
                }
                let Ok(seconds) = int.base10_parse::<u64>() else {
                    errors.at(int.span(), format!("`{name}` is too large; {hint}"));
                    return None;
                };
                if seconds == 0 {
                    errors.at(
                        int.span(),
                        format!(
                            "`{name} = 0` is not allowed: a duration must be at least one \
                             second here; {hint}"
                        ),
                    );
                    return None;
                }
                if seconds > MAX_SECONDS {
                    errors.at(
                        int.span(),
                        format!(
                            "`{name} = {seconds}` is more than the supported maximum of \
                             {MAX_SECONDS} seconds (100 years)"
                        ),
                    );
                    return None;
                }
                Some(DurationValue::Seconds(seconds, int.span()))
            }
            Lit::Str(text) => {
                errors.at(
                    text.span(),
                    format!("`{name}` takes a number, not a string; {hint}"),
                );
                None
            }
            Lit::Float(float) => {
                errors.at(
                    float.span(),
                    format!("`{name}` takes whole seconds, not a fraction; {hint}"),
                );
                None
            }
            other => {
                errors.at(other.span(), format!("`{name}` takes a duration; {hint}"));
                None
            }
        },
        Expr::Unary(unary) if matches!(unary.op, UnOp::Neg(_)) => {
            errors.at(unary.span(), format!("`{name}` cannot be negative; {hint}"));
            None
        }
        _ => Some(DurationValue::Expr(expr)),
    }
}

/// Why an integer's suffix is refused, if it is: a plain integer type (`86400u64`) is
/// still a number of seconds, but a unit (`24h`, `500ms`) is not something Rust or idem
/// reads, and ignoring it would silently change the duration.
fn unit_suffix(name: &str, int: &LitInt) -> Option<String> {
    const INTEGER_TYPES: [&str; 12] = [
        "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
    ];
    let suffix = int.suffix();
    if suffix.is_empty() || INTEGER_TYPES.contains(&suffix) {
        return None;
    }
    let digits = int.base10_digits();
    let seconds_per_unit = match suffix {
        "s" | "sec" | "secs" | "second" | "seconds" => Some(1),
        "m" | "min" | "mins" | "minute" | "minutes" => Some(60),
        "h" | "hr" | "hrs" | "hour" | "hours" => Some(3600),
        "d" | "day" | "days" => Some(24 * 3600),
        "w" | "week" | "weeks" => Some(7 * 24 * 3600),
        _ => None,
    };
    let instead = match (suffix, seconds_per_unit) {
        ("ms" | "millis", _) => {
            format!("write `{name} = std::time::Duration::from_millis({digits})`")
        }
        (_, Some(1)) => format!(
            "write `{name} = {digits}` or `{name} = std::time::Duration::from_secs({digits})`"
        ),
        (_, Some(per_unit)) => {
            let total = digits
                .parse::<u64>()
                .ok()
                .and_then(|count| count.checked_mul(per_unit));
            match total {
                Some(total) => format!(
                    "write `{name} = {total}` or `{name} = \
                     std::time::Duration::from_secs({digits} * {per_unit})`"
                ),
                None => format!(
                    "write `{name} = std::time::Duration::from_secs({digits} * {per_unit})`"
                ),
            }
        }
        (_, None) => format!(
            "write whole seconds (`{name} = 86400`) or a `Duration` expression \
             (`{name} = std::time::Duration::from_secs(24 * 3600)`)"
        ),
    };
    Some(format!(
        "`{name}` takes whole seconds or a `Duration`, not a number with the unit `{suffix}`; \
         {instead}"
    ))
}

fn scope(expr: Expr, errors: &mut Errors) -> Option<LitStr> {
    let Expr::Lit(syn::ExprLit {
        lit: Lit::Str(text),
        ..
    }) = expr
    else {
        errors.at(
            expr.span(),
            "`scope` takes a string literal, such as `scope = \"payments::charge\"`",
        );
        return None;
    };
    let value = text.value();
    let problem = if value.is_empty() {
        Some("is empty")
    } else if value.chars().any(char::is_control) {
        Some("contains a control character")
    } else if value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace) {
        Some("starts or ends with whitespace")
    } else {
        None
    };
    match problem {
        Some(problem) => {
            errors.at(
                text.span(),
                format!("the scope {problem}; use a stable name such as \"payments::charge\""),
            );
            None
        }
        None => Some(text),
    }
}

fn on_error(expr: Expr, errors: &mut Errors) -> Option<(ErrorMode, Span)> {
    const MODES: [&str; 3] = ["release", "record", "classify"];
    let Expr::Lit(syn::ExprLit {
        lit: Lit::Str(text),
        ..
    }) = expr
    else {
        errors.at(
            expr.span(),
            "`on_error` takes \"release\", \"record\" or \"classify\"",
        );
        return None;
    };
    let mode = match text.value().as_str() {
        "release" => ErrorMode::Release,
        "record" => ErrorMode::Record,
        "classify" => ErrorMode::Classify,
        other => {
            let hint = closest(other, &MODES)
                .map(|m| format!("did you mean \"{m}\"? "))
                .unwrap_or_default();
            errors.at(
                text.span(),
                format!(
                    "unknown `on_error` mode \"{other}\"; {hint}`on_error` takes \"release\" \
                     (the default), \"record\" or \"classify\""
                ),
            );
            return None;
        }
    };
    Some((mode, text.span()))
}

fn krate(expr: Expr, errors: &mut Errors) -> Option<Path> {
    let Expr::Lit(syn::ExprLit {
        lit: Lit::Str(text),
        ..
    }) = expr
    else {
        errors.at(
            expr.span(),
            "`crate` takes the path of the idem crate as a string, such as `crate = \"my_idem\"`",
        );
        return None;
    };
    match text.parse::<Path>() {
        Ok(path) => Some(path),
        Err(_) => {
            errors.at(
                text.span(),
                format!(
                    "\"{}\" is not a path; write the crate's path, such as `crate = \"my_idem\"`",
                    text.value()
                ),
            );
            None
        }
    }
}

fn check_skip(skip: &[Ident], function: &Function, errors: &mut Errors) {
    for (i, name) in skip.iter().enumerate() {
        if name == "self" {
            errors.at(
                name.span(),
                "the receiver is never fingerprinted; remove `self` from `skip`",
            );
        } else if skip[..i].contains(name) {
            errors.at(
                name.span(),
                format!("`{name}` is skipped twice; name it once"),
            );
        } else if !function.params.contains(name) {
            let params = function
                .params
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let listed = if params.is_empty() {
                "this fn has no arguments to skip".to_owned()
            } else {
                format!("the arguments are {params}")
            };
            errors.at(
                name.span(),
                format!("`skip` names `{name}`, which is not an argument; {listed}"),
            );
        }
    }
}

/// Checks the fn's shape and finds its parts.
pub fn function(item: &ItemFn, errors: &mut Errors) -> Option<Function> {
    let sig = &item.sig;
    let (shape, ret) = if sig.asyncness.is_some() {
        (
            Shape::Async,
            declared_return(&sig.output, sig.span(), errors)?,
        )
    } else if let Some(ret) = async_trait_return(item) {
        (Shape::AsyncTrait, ret)
    } else {
        errors.at(
            sig.fn_token.span,
            "`#[idempotent]` goes on an `async fn`; make this fn `async`",
        );
        return None;
    };
    if let Some(span) = not_a_result(&ret) {
        errors.at(
            span,
            "an `#[idempotent]` fn must return `Result<T, E>`: the `Ok` value is stored and \
             replayed, and idem's own errors reach the caller through `E: From<idem::Error>`",
        );
        return None;
    }
    let mut params = Vec::new();
    let mut receiver = false;
    for input in &sig.inputs {
        match input {
            FnArg::Typed(typed) => bindings(&typed.pat, &mut params),
            FnArg::Receiver(_) => receiver = true,
        }
    }
    Some(Function {
        shape,
        ret,
        params,
        receiver,
    })
}

fn declared_return(output: &ReturnType, sig: Span, errors: &mut Errors) -> Option<Type> {
    match output {
        ReturnType::Type(_, ty) => Some((**ty).clone()),
        ReturnType::Default => {
            errors.at(
                sig,
                "an `#[idempotent]` fn must return `Result<T, E>`; add a return type such as \
                 `-> Result<(), MyError>`",
            );
            None
        }
    }
}

/// The span of a return type that is certainly not a `Result`; aliases and other paths
/// are left to the compiler.
fn not_a_result(ty: &Type) -> Option<Span> {
    const NOT_RESULTS: [&str; 21] = [
        "Option", "Vec", "String", "Box", "HashMap", "BTreeMap", "bool", "char", "str", "u8",
        "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
    ];
    match ty {
        Type::Paren(inner) => not_a_result(&inner.elem),
        Type::Group(inner) => not_a_result(&inner.elem),
        Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last()?;
            NOT_RESULTS
                .contains(&last.ident.to_string().as_str())
                .then(|| ty.span())
        }
        Type::Path(_) | Type::Macro(_) | Type::Infer(_) | Type::Verbatim(_) => None,
        _ => Some(ty.span()),
    }
}

/// The identifiers a parameter pattern binds; wildcards bind nothing and are left out,
/// since the body cannot depend on them.
fn bindings(pat: &Pat, out: &mut Vec<Ident>) {
    match pat {
        Pat::Ident(ident) => {
            out.push(ident.ident.clone());
            if let Some((_, sub)) = &ident.subpat {
                bindings(sub, out);
            }
        }
        Pat::Tuple(tuple) => tuple.elems.iter().for_each(|p| bindings(p, out)),
        Pat::TupleStruct(tuple) => tuple.elems.iter().for_each(|p| bindings(p, out)),
        Pat::Struct(fields) => fields.fields.iter().for_each(|f| bindings(&f.pat, out)),
        Pat::Slice(slice) => slice.elems.iter().for_each(|p| bindings(p, out)),
        Pat::Reference(reference) => bindings(&reference.pat, out),
        Pat::Paren(paren) => bindings(&paren.pat, out),
        Pat::Type(typed) => bindings(&typed.pat, out),
        _ => {}
    }
}

/// The `Box::pin(async move { .. })` that `#[async_trait]` leaves as a rewritten method's
/// body; `#[async_trait]` sits on the impl, so it expands before the method's attributes.
pub fn async_trait_block(block: &mut Block) -> Option<&mut ExprAsync> {
    let Some(Stmt::Expr(Expr::Call(ExprCall { func, args, .. }), None)) = block.stmts.last_mut()
    else {
        return None;
    };
    let Expr::Path(path) = &**func else {
        return None;
    };
    let segments: Vec<String> = path
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    if segments.last().map(String::as_str) != Some("pin") || args.len() != 1 {
        return None;
    }
    match args.first_mut() {
        Some(Expr::Async(block)) if block.capture.is_some() => Some(block),
        _ => None,
    }
}

/// The `R` of `Pin<Box<dyn Future<Output = R> + ..>>`, when the fn has that shape.
fn async_trait_return(item: &ItemFn) -> Option<Type> {
    let mut block = item.block.clone();
    async_trait_block(&mut block)?;
    let ReturnType::Type(_, ty) = &item.sig.output else {
        return None;
    };
    let boxed = only_generic(ty, "Pin")?;
    let Type::TraitObject(object) = only_generic(boxed, "Box")? else {
        return None;
    };
    object.bounds.iter().find_map(|bound| {
        let TypeParamBound::Trait(bound) = bound else {
            return None;
        };
        let future = bound.path.segments.last()?;
        if future.ident != "Future" {
            return None;
        }
        let PathArguments::AngleBracketed(args) = &future.arguments else {
            return None;
        };
        args.args.iter().find_map(|arg| match arg {
            GenericArgument::AssocType(assoc) if assoc.ident == "Output" => Some(assoc.ty.clone()),
            _ => None,
        })
    })
}

fn only_generic<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let Type::Path(path) = ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    args.args.iter().find_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_suggest_the_closest_option() {
        assert_eq!(closest("kee", &OPTIONS), Some("key"));
        assert_eq!(closest("tll", &OPTIONS), Some("ttl"));
        assert_eq!(closest("lock_timout", &OPTIONS), Some("lock_timeout"));
        assert_eq!(closest("frobnicate", &OPTIONS), None);
    }

    #[test]
    fn unit_suffixes_are_refused_with_what_to_write() {
        let refusal = |literal: &str| unit_suffix("ttl", &syn::parse_str(literal).unwrap());
        assert_eq!(
            refusal("24h").unwrap(),
            "`ttl` takes whole seconds or a `Duration`, not a number with the unit `h`; \
             write `ttl = 86400` or `ttl = std::time::Duration::from_secs(24 * 3600)`"
        );
        assert_eq!(
            refusal("500ms").unwrap(),
            "`ttl` takes whole seconds or a `Duration`, not a number with the unit `ms`; \
             write `ttl = std::time::Duration::from_millis(500)`"
        );
        assert!(refusal("99999999999999999999d").unwrap().ends_with(
            "write `ttl = std::time::Duration::from_secs(99999999999999999999 * 86400)`"
        ));
    }

    #[test]
    fn plain_and_integer_typed_literals_are_seconds() {
        for literal in ["86400", "86400u64", "30u32", "1_000usize"] {
            let int: LitInt = syn::parse_str(literal).unwrap();
            assert_eq!(unit_suffix("ttl", &int), None, "{literal}");
        }
    }

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("kee", "key"), 1);
        assert_eq!(edit_distance("", "ttl"), 3);
        assert_eq!(edit_distance("scope", "scope"), 0);
    }
}
