//! The args document: a JSON object, parsed once and kept exact.
//!
//! Numbers keep every digit (`serde_json` with `arbitrary_precision`), keys
//! keep their order (`preserve_order`) and strings keep their Unicode. The
//! document is held as compact JSON text prepared once, which is what every
//! reader is handed, and parsed on demand for pointers and patches.
use crate::pointer::{self, PointerError};
use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// Why some text is not an args document.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("the document is empty: expected a JSON object")]
    Empty,
    #[error(
        "not UTF-8 at line {line} column {column} (byte 0x{byte:02x}): JSON text must be UTF-8"
    )]
    NotUtf8 {
        line: usize,
        column: usize,
        byte: u8,
    },
    #[error("invalid JSON at line {line} column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("the top level is {0}: expected a JSON object")]
    NotAnObject(&'static str),
    #[error("duplicate key {key:?} at line {line} column {column}: a key may appear only once in an object")]
    DuplicateKey {
        key: String,
        line: usize,
        column: usize,
    },
    /// A `\uXXXX` escape of half a UTF-16 surrogate pair, without its other half.
    #[error("lone UTF-16 surrogate {escape} at line {line} column {column}")]
    LoneSurrogate {
        escape: String,
        line: usize,
        column: usize,
    },
}

/// The deepest nesting of arrays and objects a document or patch may have;
/// the top-level object is level 1. (serde_json's parser refuses the next
/// level, before it could overflow the stack.)
pub const MAX_DEPTH: usize = 127;

/// A JSON object: its compact text and content hash, computed once, and
/// its parsed tree, built only when a pointer lookup or a patch needs it.
///
/// The tree is not kept from parsing: with key order and exact numbers it
/// takes about 15 times the text's memory, and serving the whole document
/// (the common read) needs only the text.
#[derive(Debug, Clone)]
pub struct Document {
    json: Bytes,
    sha256: String,
    tree: OnceLock<Value>,
}

impl Document {
    /// Parses `text` as an args document. A leading UTF-8 byte order mark is
    /// skipped (editors on some systems write one); an object that repeats a
    /// key is refused, naming the key; nesting deeper than [`MAX_DEPTH`]
    /// levels is refused by the parser rather than overflowing the stack.
    pub fn parse(text: &[u8]) -> Result<Self, DocumentError> {
        Self::from_value(parse_value(text)?)
    }

    /// Wraps a value that must be a JSON object.
    pub fn from_value(value: Value) -> Result<Self, DocumentError> {
        if !value.is_object() {
            return Err(DocumentError::NotAnObject(kind(&value)));
        }
        // Serializing a `Value` cannot fail: its keys are strings.
        let json = Bytes::from(value.to_string());
        let sha256 = sha256_hex(&json);
        Ok(Self {
            json,
            sha256,
            tree: OnceLock::new(),
        })
    }

    /// A document as a broker sent it: compact text and its hash, which the
    /// broker made with [`Document::parse`]. The text is only validated (no
    /// tree is built, nothing is re-serialized or re-hashed), so following a
    /// large document costs one light pass per revision.
    pub fn from_broker(json: Bytes, sha256: String) -> Result<Self, DocumentError> {
        serde_json::from_slice::<serde::de::IgnoredAny>(&json).map_err(|e| document_error(&e))?;
        if json.first() != Some(&b'{') {
            let value: Value = serde_json::from_slice(&json).map_err(|e| document_error(&e))?;
            return Err(DocumentError::NotAnObject(kind(&value)));
        }
        Ok(Self {
            json,
            sha256,
            tree: OnceLock::new(),
        })
    }

    /// The parsed document, built on first use and kept for this document's life.
    pub fn value(&self) -> &Value {
        self.tree.get_or_init(|| self.to_value())
    }

    /// A fresh parsed copy of the document, for changing (a merge patch).
    pub fn to_value(&self) -> Value {
        // Cannot fail: the text is serde_json's own output for a value that
        // passed the same parser and limits, or was validated by it (from_broker).
        serde_json::from_slice(&self.json).expect("the compact text of a document is valid JSON")
    }

    /// The compact JSON text, prepared once; cloning it is a reference count.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// The compact JSON text as a `str`.
    pub fn json_str(&self) -> &str {
        // Validated as UTF-8 JSON when the document was made.
        std::str::from_utf8(&self.json).unwrap_or_default()
    }

    /// Lowercase hex SHA-256 of [`Document::json`].
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The value at an RFC 6901 pointer, `Ok(None)` if it names nothing.
    pub fn get(&self, pointer: &str) -> Result<Option<&Value>, PointerError> {
        pointer::lookup(self.value(), pointer)
    }
}

/// Parses any JSON value (a document, or a merge patch) with the same rules
/// as [`Document::parse`].
pub fn parse_value(text: &[u8]) -> Result<Value, DocumentError> {
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(DocumentError::Empty);
    }
    if let Err(e) = std::str::from_utf8(text) {
        let valid = &text[..e.valid_up_to()];
        let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        return Err(DocumentError::NotUtf8 {
            line: 1 + valid.iter().filter(|b| **b == b'\n').count(),
            column: 1 + valid.len() - line_start,
            byte: text[e.valid_up_to()],
        });
    }
    // A first pass that only looks for repeated keys: serde_json's `Value`
    // keeps the last of them silently, and reading the keys ourselves keeps
    // clear of the private representation `arbitrary_precision` gives numbers.
    // Its errors are the parser's own, so a syntax error reads the same.
    let error =
        |e: serde_json::Error| lone_surrogate(text, &e).unwrap_or_else(|| document_error(&e));
    serde_json::from_slice::<UniqueKeys>(text).map_err(error)?;
    serde_json::from_slice(text).map_err(error)
}

/// serde_json reports half a surrogate pair as `lone leading surrogate in
/// hex escape` (even for a trailing half) or `unexpected end of hex escape`
/// (for a leading half at the end of a string), at the end of the escape or
/// after it. This finds the escape itself in `text`, and where it begins.
fn lone_surrogate(text: &[u8], e: &serde_json::Error) -> Option<DocumentError> {
    let message = syntax_message(e);
    let lead = 0xD800..=0xDBFF;
    let trail = 0xDC00..=0xDFFF;
    // The six bytes of a `\uXXXX` escape that ends at `end`, and its value.
    let escape_at = |end: usize| -> Option<(usize, u32)> {
        let start = end.checked_sub(5)?;
        let bytes = text.get(start..=end)?;
        if !bytes.starts_with(b"\\u") {
            return None;
        }
        let hex = std::str::from_utf8(&bytes[2..]).ok()?;
        Some((start, u32::from_str_radix(hex, 16).ok()?))
    };
    let line_start = match e.line() {
        0 | 1 => 0,
        n => {
            text.iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .nth(n - 2)?
                .0
                + 1
        }
    };
    // serde_json's column is the 1-based byte of the last one it read.
    let last = line_start + e.column().checked_sub(1)?;
    let start = match message.as_str() {
        "lone leading surrogate in hex escape" => match escape_at(last)? {
            (start, value) if trail.contains(&value) => start,
            (start, _) => match escape_at(start.checked_sub(1)?)? {
                (start, value) if lead.contains(&value) => start,
                _ => return None,
            },
        },
        "unexpected end of hex escape" => {
            [1, 2]
                .iter()
                .filter_map(|back| escape_at(last.checked_sub(*back)?))
                .find(|(_, value)| lead.contains(value))?
                .0
        }
        _ => return None,
    };
    Some(DocumentError::LoneSurrogate {
        escape: String::from_utf8_lossy(&text[start..start + 6]).into_owned(),
        line: e.line(),
        column: start - line_start + 1,
    })
}

fn document_error(e: &serde_json::Error) -> DocumentError {
    let mut message = syntax_message(e);
    if message == "recursion limit exceeded" {
        message = format!("nesting deeper than {MAX_DEPTH} levels of arrays and objects");
    }
    // The only data error the first pass raises is a repeated key.
    if e.classify() == serde_json::error::Category::Data {
        if let Some(key) = message.strip_prefix(DUPLICATE_KEY) {
            return DocumentError::DuplicateKey {
                key: key.to_owned(),
                line: e.line(),
                column: e.column(),
            };
        }
    }
    DocumentError::Syntax {
        line: e.line(),
        column: e.column(),
        message,
    }
}

const DUPLICATE_KEY: &str = "duplicate key: ";

/// Any JSON value in which no object repeats a key; holds nothing.
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(serde::de::Error::custom(format!("{DUPLICATE_KEY}{key}")));
            }
            map.next_value::<UniqueKeys>()?;
            seen.insert(key);
        }
        Ok(UniqueKeys)
    }
}

/// Applies an RFC 7386 merge patch: `null` removes a key, objects merge,
/// anything else replaces. Existing keys keep their place and new keys are
/// appended (`shift_remove`, because a plain remove would move the last key
/// into the hole). The result is no deeper than the deeper of the two.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(map) = target {
        for (key, value) in patch {
            if value.is_null() {
                map.shift_remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Indents compact JSON text as `serde_json::to_string_pretty` would (two
/// spaces, `": "` after keys, `{}` and `[]` kept on one line), straight from
/// the text: no tree is built. `compact` must be serde_json's compact output.
pub fn pretty(compact: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(compact.len() + compact.len() / 2 + 1);
    let newline = |out: &mut Vec<u8>, depth: usize| {
        out.push(b'\n');
        out.resize(out.len() + 2 * depth, b' ');
    };
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut i = 0;
    while i < compact.len() {
        let b = compact[i];
        i += 1;
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                out.push(b);
            }
            b'{' | b'[' => {
                let close = if b == b'{' { b'}' } else { b']' };
                out.push(b);
                if compact.get(i) == Some(&close) {
                    out.push(close);
                    i += 1;
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(b);
            }
            b',' => {
                out.push(b);
                newline(&mut out, depth);
            }
            b':' => out.extend_from_slice(b": "),
            _ => out.push(b),
        }
    }
    out.push(b'\n');
    out
}

/// "a number", "an array", ...: how an error names the kind of a value.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// serde_json's message without its trailing " at line L column C".
fn syntax_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    match full.rfind(" at line ") {
        Some(i) => full[..i].to_owned(),
        None => full,
    }
}

/// Lowercase hex SHA-256 of `bytes`: a document's `sha256` of its compact text.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_numbers_order_and_unicode_exact() {
        let text = r#"{ "z": 123456789012345678901234567890, "a": 0.100000000000000000000000000001,
            "ключ": "値 ✓", "e": 1.5e300, "neg": -0 }"#;
        let doc = Document::parse(text.as_bytes()).unwrap();
        assert_eq!(
            doc.json_str(),
            r#"{"z":123456789012345678901234567890,"a":0.100000000000000000000000000001,"ключ":"値 ✓","e":1.5e+300,"neg":-0}"#
        );
        // Exponents gain an explicit sign (`1.5e300` → `1.5e+300`): the same number, every digit kept.
    }

    #[test]
    fn hash_is_of_the_compact_text() {
        let doc = Document::parse(b"{}").unwrap();
        assert_eq!(
            doc.sha256(),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn from_broker_keeps_the_text_and_hash_it_was_sent() {
        let sent = Document::parse(br#"{ "a": [1, 2.50], "b": "\u00e9" }"#).unwrap();
        let got = Document::from_broker(sent.json().clone(), sent.sha256().to_owned()).unwrap();
        assert_eq!(
            (got.json_str(), got.sha256()),
            (sent.json_str(), sent.sha256())
        );
        assert_eq!(got.value(), sent.value());
        let err = Document::from_broker(Bytes::from_static(b"[1]"), String::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the top level is an array: expected a JSON object"
        );
    }

    #[test]
    fn pretty_matches_serde_json_without_a_tree() {
        let text = br#"{"a":[1,{"b":"x,y:{}[]\"\\","c":[]},{}],"e":{},"f":{"g":[[],[1e+5]]},"h":"\u00e9"}"#;
        let document = Document::parse(text).unwrap();
        let expected = serde_json::to_string_pretty(document.value()).unwrap() + "\n";
        assert_eq!(
            String::from_utf8(pretty(document.json())).unwrap(),
            expected
        );
        assert_eq!(pretty(b"{}"), b"{}\n");
    }

    #[test]
    fn skips_a_byte_order_mark() {
        let doc = Document::parse(b"\xEF\xBB\xBF{\"a\":1}").unwrap();
        assert_eq!(doc.json_str(), r#"{"a":1}"#);
    }

    #[test]
    fn names_what_is_wrong() {
        let err = |t: &str| Document::parse(t.as_bytes()).unwrap_err().to_string();
        assert_eq!(err(""), "the document is empty: expected a JSON object");
        assert_eq!(
            err(" \n\t"),
            "the document is empty: expected a JSON object"
        );
        assert_eq!(
            err("[1]"),
            "the top level is an array: expected a JSON object"
        );
        assert_eq!(
            err("\"s\""),
            "the top level is a string: expected a JSON object"
        );
        assert_eq!(
            err("7"),
            "the top level is a number: expected a JSON object"
        );
        assert_eq!(
            err("{\n  \"a\": 1,\n  \"b\" 2\n}"),
            "invalid JSON at line 3 column 7: expected `:`"
        );
    }

    #[test]
    fn refuses_text_that_is_not_utf8() {
        let err = |t: &[u8]| Document::parse(t).unwrap_err().to_string();
        assert_eq!(
            err(b"{\n  \"a\": \"\xff\"}"),
            "not UTF-8 at line 2 column 9 (byte 0xff): JSON text must be UTF-8"
        );
        assert_eq!(
            err(b"\xEF\xBB\xBF{\"\xc3\x28\": 1}"),
            "not UTF-8 at line 1 column 3 (byte 0xc3): JSON text must be UTF-8"
        );
    }

    #[test]
    fn refuses_a_repeated_key_naming_it() {
        let err = |t: &str| Document::parse(t.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            err("{\n  \"a\": 1,\n  \"b\": {\"x\": 1, \"x\": 2}\n}"),
            r#"duplicate key "x" at line 3 column 19: a key may appear only once in an object"#
        );
        // Keys are compared after unescaping.
        assert_eq!(
            err(r#"{"a": 1, "\u0061": 2}"#),
            r#"duplicate key "a" at line 1 column 17: a key may appear only once in an object"#
        );
        // Numbers (held by arbitrary_precision as a one-key map) and equal keys in different objects are fine.
        let doc = Document::parse(br#"{"a": {"a": 1e400}, "b": [{"a": 1}, {"a": 2}]}"#).unwrap();
        assert_eq!(
            doc.json_str(),
            r#"{"a":{"a":1e+400},"b":[{"a":1},{"a":2}]}"#
        );
    }

    #[test]
    fn refuses_deep_nesting_without_overflowing() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        let err = Document::parse(deep.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid JSON at line 1 column 132: nesting deeper than 127 levels of arrays and objects"
        );
    }

    /// `depth` levels: the top-level object, then arrays.
    fn nested(depth: usize) -> String {
        format!(
            "{{\"a\":{}{}}}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    }

    #[test]
    fn nesting_limit_boundary() {
        assert_eq!(MAX_DEPTH, 127);
        let doc = Document::parse(nested(127).as_bytes()).unwrap();
        assert_eq!(doc.json_str(), nested(127));
        // The 128th level, at column 5 + 127, is the first one refused.
        for depth in [128, 129] {
            assert_eq!(
                Document::parse(nested(depth).as_bytes())
                    .unwrap_err()
                    .to_string(),
                "invalid JSON at line 1 column 132: nesting deeper than 127 levels of arrays and objects",
                "depth {depth}"
            );
        }
        // Patches have the same limit.
        assert!(parse_value(nested(127).as_bytes()).is_ok());
        assert!(parse_value(nested(128).as_bytes()).is_err());
    }

    #[test]
    fn lone_surrogates_are_named() {
        let err = |t: &str| Document::parse(t.as_bytes()).unwrap_err().to_string();
        // A trailing half alone.
        assert_eq!(
            err(r#"{"a":"\udc00"}"#),
            r#"lone UTF-16 surrogate \udc00 at line 1 column 7"#
        );
        // A leading half at the end of the string, or before something else.
        assert_eq!(
            err(r#"{"a":"\ud800"}"#),
            r#"lone UTF-16 surrogate \ud800 at line 1 column 7"#
        );
        assert_eq!(
            err(r#"{"a":"x\uD800y"}"#),
            r#"lone UTF-16 surrogate \uD800 at line 1 column 8"#
        );
        assert_eq!(
            err(r#"{"a":"\ud800\n"}"#),
            r#"lone UTF-16 surrogate \ud800 at line 1 column 7"#
        );
        // A leading half followed by an escape that is not a trailing half.
        assert_eq!(
            err(r#"{"a":"\ud800\u0041"}"#),
            r#"lone UTF-16 surrogate \ud800 at line 1 column 7"#
        );
        assert_eq!(
            err(r#"{"a":"\uDBFF\uDBFF"}"#),
            r#"lone UTF-16 surrogate \uDBFF at line 1 column 7"#
        );
        // In a key, on a later line, after multi-byte text (columns are bytes, as elsewhere).
        assert_eq!(
            err("{\n  \"é\\udc00\": 1}"),
            r#"lone UTF-16 surrogate \udc00 at line 2 column 6"#
        );
        // A whole pair is fine.
        assert_eq!(
            Document::parse(br#"{"a":"\ud83d\ude00"}"#)
                .unwrap()
                .json_str(),
            "{\"a\":\"😀\"}"
        );
    }

    fn merged(doc: &str, patch: &str) -> String {
        let mut value: Value = serde_json::from_str(doc).unwrap();
        merge_patch(&mut value, &serde_json::from_str(patch).unwrap());
        value.to_string()
    }

    #[test]
    fn merge_patch_follows_rfc7386_examples() {
        let cases = [
            (r#"{"a":"b"}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"b":"c"}"#, r#"{"a":"b","b":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"a":null}"#, r#"{}"#),
            (r#"{"a":"b","b":"c"}"#, r#"{"a":null}"#, r#"{"b":"c"}"#),
            (r#"{"a":["b"]}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"c"}"#, r#"{"a":["b"]}"#, r#"{"a":["b"]}"#),
            (
                r#"{"a":{"b":"c"}}"#,
                r#"{"a":{"b":"d","c":null}}"#,
                r#"{"a":{"b":"d"}}"#,
            ),
            (r#"{"a":[{"b":"c"}]}"#, r#"{"a":[1]}"#, r#"{"a":[1]}"#),
            (r#"{"e":null}"#, r#"{"a":1}"#, r#"{"e":null,"a":1}"#),
            (
                r#"{"a":"foo"}"#,
                r#"{"a":{"bb":{"ccc":null}}}"#,
                r#"{"a":{"bb":{}}}"#,
            ),
        ];
        for (doc, patch, want) in cases {
            assert_eq!(merged(doc, patch), want, "{doc} + {patch}");
        }
    }

    #[test]
    fn merge_patch_keeps_key_order_and_exact_numbers() {
        assert_eq!(
            merged(
                r#"{"a":1,"b":2,"c":3,"d":4}"#,
                r#"{"b":null,"a":123456789012345678901234567890,"e":5}"#
            ),
            r#"{"a":123456789012345678901234567890,"c":3,"d":4,"e":5}"#
        );
    }
}
