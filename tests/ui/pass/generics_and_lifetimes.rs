//! Generics, where clauses, named and elided lifetimes and `impl Trait` arguments.
use std::borrow::Cow;
use std::fmt::Display;

use idem::idempotent;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[idempotent(key = id)]
pub async fn generic<T: Serialize + DeserializeOwned + Send>(
    id: String,
    value: T,
) -> Result<T, idem::Error> {
    let _ = id;
    Ok(value)
}

#[idempotent(key = format!("{prefix}:{id}"))]
pub async fn with_where<K, T>(prefix: K, id: u64, value: T) -> Result<Vec<T>, idem::Error>
where
    K: Display + Serialize,
    T: Serialize + DeserializeOwned + Clone,
{
    Ok(vec![value.clone(), value])
}

#[idempotent(key = id)]
pub async fn named<'a>(id: &'a str, note: &'a str) -> Result<String, idem::Error> {
    Ok(format!("{id}{note}"))
}

#[idempotent(key = id)]
pub async fn elided(id: &str, notes: &[String]) -> Result<Cow<'static, str>, idem::Error> {
    Ok(Cow::Owned(format!("{id}{}", notes.len())))
}

#[idempotent(key = id)]
pub async fn impl_trait(
    id: impl Display + Serialize,
    amount: impl Into<u64> + Serialize,
) -> Result<u64, idem::Error> {
    Ok(amount.into() + id.to_string().len() as u64)
}

#[idempotent]
pub async fn destructured(
    (a, b): (u32, u32),
    Pair { left, .. }: Pair,
    _: Unused,
) -> Result<u32, idem::Error> {
    Ok(a + b + left)
}

pub struct Pair {
    pub left: u32,
    pub right: std::cell::Cell<u32>,
}

pub struct Unused;

fn main() {}
