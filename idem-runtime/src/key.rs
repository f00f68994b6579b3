//! Idempotency keys: the rules a key must follow and how it is laid out in a store.
//!
//! Keys are compared as exact bytes. idem trims nothing and does no Unicode normalisation:
//! `"é"` written precomposed and decomposed are two different keys, in every store.

use std::fmt;

/// The longest scope, in bytes.
pub const MAX_SCOPE_LEN: usize = 255;

/// An idempotency key within a scope.
///
/// The scope is a namespace: two functions that use the same key in different scopes never
/// share a record. Keys made with [`Key::new`] are in the empty scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    scope: String,
    id: String,
}

impl Key {
    /// A key in the empty scope.
    pub fn new(id: impl Into<String>) -> Self {
        Key {
            scope: String::new(),
            id: id.into(),
        }
    }

    /// A key within `scope`.
    pub fn scoped(scope: impl Into<String>, id: impl Into<String>) -> Self {
        Key {
            scope: scope.into(),
            id: id.into(),
        }
    }

    /// The scope.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The key itself, as the caller gave it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Checks the key against the rules, with `max_len` bytes at most, and its scope with
    /// [`MAX_SCOPE_LEN`] bytes at most. Scopes come from code (a fn's path, an HTTP route),
    /// not from the caller, so the key's configurable limit does not apply to them.
    pub fn validate(&self, max_len: usize) -> Result<(), KeyRule> {
        if self.id.is_empty() {
            return Err(KeyRule::Empty);
        }
        check_text(&self.id, max_len)?;
        check_text(&self.scope, MAX_SCOPE_LEN).map_err(|rule| KeyRule::Scope(Box::new(rule)))
    }

    /// The store key: `prefix`, then scope and key in an injective, brace-free layout.
    ///
    /// The layout is `<prefix>{<len>:<scope>:<key>}` where `<len>` is the byte length of the
    /// escaped scope and `%`, `{`, `}` are percent-escaped. The braces make the whole
    /// scope-and-key the Redis Cluster hash tag, so a key that contains braces lands in the
    /// slot of its own text, and no two (scope, key) pairs share a store key.
    pub fn store_key(&self, prefix: &str) -> String {
        let scope = escape(&self.scope);
        let id = escape(&self.id);
        let mut out = String::with_capacity(prefix.len() + scope.len() + id.len() + 8);
        out.push_str(prefix);
        out.push('{');
        out.push_str(itoa::Buffer::new().format(scope.len()));
        out.push(':');
        out.push_str(&scope);
        out.push(':');
        out.push_str(&id);
        out.push('}');
        out
    }
}

impl From<&str> for Key {
    fn from(id: &str) -> Self {
        Key::new(id)
    }
}

impl From<String> for Key {
    fn from(id: String) -> Self {
        Key::new(id)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scope.is_empty() {
            f.write_str(&self.id)
        } else {
            write!(f, "{}/{}", self.scope, self.id)
        }
    }
}

/// The rule a key breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRule {
    /// The key is empty.
    #[error("it is empty")]
    Empty,
    /// The key is longer than the limit.
    #[error("it is {len} bytes long, over the limit of {max} bytes")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The key contains a control character.
    #[error("it contains the control character {0:?}")]
    ControlCharacter(char),
    /// The key starts or ends with whitespace (idem does not trim keys).
    #[error("it starts or ends with whitespace, which idem does not trim")]
    EdgeWhitespace,
    /// The scope breaks a rule.
    #[error("its scope breaks a rule: {0}")]
    Scope(Box<KeyRule>),
}

fn check_text(text: &str, max_len: usize) -> Result<(), KeyRule> {
    if text.len() > max_len {
        return Err(KeyRule::TooLong {
            len: text.len(),
            max: max_len,
        });
    }
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(KeyRule::ControlCharacter(c));
    }
    let edge = |c: Option<char>| c.is_some_and(char::is_whitespace);
    if edge(text.chars().next()) || edge(text.chars().next_back()) {
        return Err(KeyRule::EdgeWhitespace);
    }
    Ok(())
}

fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.bytes().any(|b| matches!(b, b'%' | b'{' | b'}')) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out.into()
}

/// Cuts `key` to at most 300 bytes (on a character boundary) for error messages.
pub(crate) fn for_message(key: &Key) -> String {
    let text = key.to_string();
    if text.len() <= 300 {
        return text;
    }
    let mut end = 300;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_key_layout_is_pinned() {
        assert_eq!(
            Key::scoped("pay", "order-7").store_key("idempotency:"),
            "idempotency:{3:pay:order-7}"
        );
        assert_eq!(Key::new("k").store_key("p:"), "p:{0::k}");
    }

    #[test]
    fn separators_in_scope_or_key_cannot_collide() {
        let a = Key::scoped("acme:eu", "7").store_key("p:");
        let b = Key::scoped("acme", "eu:7").store_key("p:");
        assert_ne!(a, b);
    }

    #[test]
    fn braces_are_escaped_so_the_hash_tag_is_the_whole_key() {
        let key = Key::scoped("s", "{tag}x%").store_key("p:");
        assert_eq!(key, "p:{1:s:%7Btag%7Dx%25}");
        assert_eq!(key.matches('{').count(), 1);
        assert_eq!(key.matches('}').count(), 1);
    }

    #[test]
    fn escaping_is_injective_for_literal_percent_codes() {
        assert_ne!(
            Key::new("%7B").store_key("p:"),
            Key::new("{").store_key("p:")
        );
    }

    #[test]
    fn rules_are_named() {
        assert_eq!(Key::new("").validate(255), Err(KeyRule::Empty));
        assert_eq!(Key::new("k1 ").validate(255), Err(KeyRule::EdgeWhitespace));
        assert_eq!(Key::new(" k1").validate(255), Err(KeyRule::EdgeWhitespace));
        assert_eq!(
            Key::new("k\n1").validate(255),
            Err(KeyRule::ControlCharacter('\n'))
        );
        assert_eq!(
            Key::new("x".repeat(256)).validate(255),
            Err(KeyRule::TooLong { len: 256, max: 255 })
        );
        assert_eq!(Key::new("x".repeat(255)).validate(255), Ok(()));
        assert_eq!(Key::scoped("s".repeat(200), "k").validate(8), Ok(()));
        assert_eq!(
            Key::scoped("s".repeat(256), "k").validate(255),
            Err(KeyRule::Scope(Box::new(KeyRule::TooLong {
                len: 256,
                max: 255
            })))
        );
        assert_eq!(
            Key::scoped("s\t", "k").validate(255),
            Err(KeyRule::Scope(Box::new(KeyRule::ControlCharacter('\t'))))
        );
    }

    #[test]
    fn unicode_forms_are_distinct_keys() {
        let nfc = Key::new("\u{e9}");
        let nfd = Key::new("e\u{301}");
        assert_eq!(nfc.validate(255), Ok(()));
        assert_eq!(nfd.validate(255), Ok(()));
        assert_ne!(nfc.store_key("p:"), nfd.store_key("p:"));
    }
}
