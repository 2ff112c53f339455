//! RFC 6901 JSON pointers: `""` is the whole document, `/a/0/b~1c` walks
//! object keys and array indexes (`~1` stands for `/`, `~0` for `~`).
use serde_json::Value;

/// Why a pointer string is not a JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    #[error("invalid JSON pointer {0:?}: it must be empty or start with '/'")]
    NoLeadingSlash(String),
    #[error("invalid JSON pointer {0:?}: '~' must be followed by '0' or '1'")]
    BadEscape(String),
}

/// Splits a pointer into its unescaped reference tokens.
pub fn parse(pointer: &str) -> Result<Vec<String>, PointerError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(PointerError::NoLeadingSlash(pointer.to_owned()));
    };
    rest.split('/')
        .map(|token| unescape(token).ok_or_else(|| PointerError::BadEscape(pointer.to_owned())))
        .collect()
}

fn unescape(token: &str) -> Option<String> {
    if !token.contains('~') {
        return Some(token.to_owned());
    }
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// The value `pointer` names in `value`: `Ok(None)` when it names nothing
/// (a missing key, an index out of range, `-`, or a step into a scalar).
pub fn lookup<'v>(value: &'v Value, pointer: &str) -> Result<Option<&'v Value>, PointerError> {
    let mut here = value;
    for token in parse(pointer)? {
        let next = match here {
            Value::Object(map) => map.get(&token),
            Value::Array(items) => array_index(&token).and_then(|i| items.get(i)),
            _ => None,
        };
        match next {
            Some(v) => here = v,
            None => return Ok(None),
        }
    }
    Ok(Some(here))
}

/// An array index as RFC 6901 spells it: `0` or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let digits = token.bytes().all(|b| b.is_ascii_digit());
    if token.is_empty() || !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_unescapes_tokens() {
        assert_eq!(parse("").unwrap(), Vec::<String>::new());
        assert_eq!(parse("/").unwrap(), vec![""]);
        assert_eq!(parse("/a~1b/m~0n/~01").unwrap(), vec!["a/b", "m~n", "~1"]);
    }

    #[test]
    fn rejects_malformed_pointers() {
        assert_eq!(
            parse("a/b"),
            Err(PointerError::NoLeadingSlash("a/b".into()))
        );
        assert_eq!(parse("/a~2"), Err(PointerError::BadEscape("/a~2".into())));
        assert_eq!(parse("/a~"), Err(PointerError::BadEscape("/a~".into())));
        assert_eq!(
            parse("/x~").unwrap_err().to_string(),
            r#"invalid JSON pointer "/x~": '~' must be followed by '0' or '1'"#
        );
    }

    #[test]
    fn looks_up_rfc6901_examples() {
        let doc = json!({"foo": ["bar", "baz"], "": 0, "a/b": 1, "m~n": 8, " ": 7});
        assert_eq!(lookup(&doc, "").unwrap(), Some(&doc));
        assert_eq!(lookup(&doc, "/foo/0").unwrap(), Some(&json!("bar")));
        assert_eq!(lookup(&doc, "/").unwrap(), Some(&json!(0)));
        assert_eq!(lookup(&doc, "/a~1b").unwrap(), Some(&json!(1)));
        assert_eq!(lookup(&doc, "/m~0n").unwrap(), Some(&json!(8)));
        assert_eq!(lookup(&doc, "/ ").unwrap(), Some(&json!(7)));
    }

    #[test]
    fn missing_values_are_none() {
        let doc = json!({"foo": ["bar"], "n": 1});
        for p in [
            "/nope", "/foo/1", "/foo/-", "/foo/01", "/foo/+0", "/n/x", "/foo/0/x",
        ] {
            assert_eq!(lookup(&doc, p).unwrap(), None, "{p}");
        }
    }
}
