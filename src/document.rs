//! The args document: a JSON object, parsed once and kept exact.
//!
//! Numbers keep every digit (`serde_json` with `arbitrary_precision`), keys
//! keep their order (`preserve_order`) and strings keep their Unicode. The
//! document is held both parsed (for pointers and patches) and as compact
//! JSON text prepared once, which is what every reader is handed.
use crate::pointer::{self, PointerError};
use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Why some text is not an args document.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("the document is empty: expected a JSON object")]
    Empty,
    #[error("invalid JSON at line {line} column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("the top level is {0}: expected a JSON object")]
    NotAnObject(&'static str),
}

/// A JSON object with its compact text and content hash, computed once.
#[derive(Debug, Clone)]
pub struct Document {
    value: Value,
    json: Bytes,
    sha256: String,
}

impl Document {
    /// Parses `text` as an args document. A leading UTF-8 byte order mark is
    /// skipped (editors on some systems write one); nesting deeper than 128
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
        let sha256 = hex(&Sha256::digest(&json));
        Ok(Self {
            value,
            json,
            sha256,
        })
    }

    /// The parsed document.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The compact JSON text, prepared once; cloning it is a reference count.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// The compact JSON text as a `str`.
    pub fn json_str(&self) -> &str {
        // `json` was produced by serde_json from a `Value`: always UTF-8.
        std::str::from_utf8(&self.json).unwrap_or_default()
    }

    /// Lowercase hex SHA-256 of [`Document::json`].
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The value at an RFC 6901 pointer, `Ok(None)` if it names nothing.
    pub fn get(&self, pointer: &str) -> Result<Option<&Value>, PointerError> {
        pointer::lookup(&self.value, pointer)
    }
}

/// Parses any JSON value (a document, or a merge patch) with the same rules
/// as [`Document::parse`].
pub fn parse_value(text: &[u8]) -> Result<Value, DocumentError> {
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(DocumentError::Empty);
    }
    serde_json::from_slice(text).map_err(|e| DocumentError::Syntax {
        line: e.line(),
        column: e.column(),
        message: syntax_message(&e),
    })
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
    fn refuses_deep_nesting_without_overflowing() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        let err = Document::parse(deep.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("recursion limit exceeded"), "{err}");
    }
}
