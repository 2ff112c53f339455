//! A JSON Schema that every args document must satisfy (`broker --schema`).
//!
//! The schema is one self-contained file, draft 2020-12 unless its `$schema`
//! names another draft. Nothing is fetched: a `$ref` to anything outside the
//! file is refused when the schema is loaded. A document is checked against
//! it as a whole, and every violation is reported with the JSON pointer of
//! the place in the document it is about.
use crate::document::{parse_value, DocumentError};
use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why a schema file cannot be used. Each says which file, on one line.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read the schema file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the schema file {path} is empty: expected a JSON Schema")]
    Empty { path: PathBuf },
    #[error("the schema file {path} is not JSON: {source}")]
    NotJson {
        path: PathBuf,
        source: DocumentError,
    },
    #[error("the schema file {path} is not a valid JSON Schema: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// A compiled JSON Schema, and the file it came from.
pub struct Schema {
    path: PathBuf,
    validator: jsonschema::Validator,
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schema")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Schema {
    /// Reads and compiles the schema at `path`.
    pub fn load(path: &Path) -> Result<Self, SchemaError> {
        let text = std::fs::read(path).map_err(|source| SchemaError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_slice(path, &text)
    }

    /// Compiles `text` as the schema of `path` (which is only named in errors).
    pub fn from_slice(path: &Path, text: &[u8]) -> Result<Self, SchemaError> {
        let value = parse_value(text).map_err(|source| match source {
            DocumentError::Empty => SchemaError::Empty {
                path: path.to_path_buf(),
            },
            source => SchemaError::NotJson {
                path: path.to_path_buf(),
                source,
            },
        })?;
        let invalid = |reason: String| SchemaError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        if !value.is_object() && !value.is_boolean() {
            return Err(invalid(format!(
                "the top level is {}: a schema is an object or a boolean",
                crate::document::kind(&value)
            )));
        }
        // A schema that breaks its own meta-schema is refused with every
        // violation, in the same form as a document's.
        let meta = jsonschema::meta::validator_for(&value)
            .map_err(|err| invalid(one_violation(&err).to_string()))?;
        let errors = violations(meta.iter_errors(&value));
        if !errors.is_empty() {
            return Err(invalid(errors.to_string()));
        }
        let validator = jsonschema::options()
            .build(&value)
            .map_err(|err| invalid(one_violation(&err).to_string()))?;
        Ok(Self {
            path: path.to_path_buf(),
            validator,
        })
    }

    /// The file the schema was read from, as it was named.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every way `instance` fails the schema, if it does.
    pub fn check(&self, instance: &Value) -> Result<(), Violations> {
        let found = violations(self.validator.iter_errors(instance));
        match found.is_empty() {
            true => Ok(()),
            false => Err(found),
        }
    }
}

/// One way a document fails a schema: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// The JSON pointer of the place in the document; the whole document is `/`.
    pub pointer: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pointer, self.message)
    }
}

/// Every violation of one check, ordered by pointer, then message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violations(Vec<Violation>);

/// How many violations a message lists; the rest are counted.
pub const MAX_SHOWN: usize = 20;

/// The longest a violation's message is shown, in characters: a message
/// quotes the value it is about, which can be a whole object.
pub const MAX_MESSAGE_CHARS: usize = 300;

impl Violations {
    pub fn iter(&self) -> impl Iterator<Item = &Violation> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Violations {
    /// `"/port: \"x\" is not of type \"integer\"; /: ..."`: at most
    /// [`MAX_SHOWN`] of them, each message cut at [`MAX_MESSAGE_CHARS`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, violation) in self.0.iter().take(MAX_SHOWN).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: ", violation.pointer)?;
            match violation.message.char_indices().nth(MAX_MESSAGE_CHARS) {
                None => f.write_str(&violation.message)?,
                Some((cut, _)) => write!(f, "{}...", &violation.message[..cut])?,
            }
        }
        if self.0.len() > MAX_SHOWN {
            write!(f, "; and {} more", self.0.len() - MAX_SHOWN)?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

fn one_violation(error: &jsonschema::ValidationError<'_>) -> Violation {
    let pointer = match error.instance_path().as_str() {
        "" => "/".to_owned(),
        pointer => pointer.to_owned(),
    };
    Violation {
        pointer,
        message: error.to_string(),
    }
}

fn violations<'a>(errors: impl Iterator<Item = jsonschema::ValidationError<'a>>) -> Violations {
    let mut found: Vec<Violation> = errors.map(|e| one_violation(&e)).collect();
    found.sort();
    found.dedup();
    Violations(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(text: &str) -> Result<Schema, SchemaError> {
        Schema::from_slice(Path::new("args.schema.json"), text.as_bytes())
    }

    fn check(schema_text: &str, instance: &str) -> Result<(), String> {
        let instance = parse_value(instance.as_bytes()).expect("a test instance is JSON");
        let schema = schema(schema_text).expect("a test schema is valid");
        schema.check(&instance).map_err(|v| v.to_string())
    }

    const PORT: &str = r#"{"type": "object", "properties": {"port": {"type": "integer"}}}"#;

    #[test]
    fn a_valid_document_passes() {
        assert_eq!(check(PORT, r#"{"port": 8080}"#), Ok(()));
        assert_eq!(check(PORT, r#"{}"#), Ok(()));
    }

    #[test]
    fn a_violation_names_its_pointer() {
        assert_eq!(
            check(PORT, r#"{"port": "x"}"#),
            Err(r#"/port: "x" is not of type "integer""#.to_owned())
        );
    }

    #[test]
    fn the_root_is_a_slash() {
        assert_eq!(
            check(r#"{"required": ["model"]}"#, r#"{"port": 1}"#),
            Err(r#"/: "model" is a required property"#.to_owned())
        );
    }

    #[test]
    fn every_violation_is_listed_in_pointer_order() {
        let schema = r#"{
            "properties": {
                "workers": {"type": "integer", "minimum": 1},
                "model": {"type": "object", "properties": {"path": {"type": "string"}}},
                "tags": {"items": {"type": "string"}}
            },
            "required": ["name"]
        }"#;
        let instance = r#"{"workers": 0, "model": {"path": 3}, "tags": ["a", 1, "c", 2]}"#;
        let expected = [
            r#"/: "name" is a required property"#,
            r#"/model/path: 3 is not of type "string""#,
            r#"/tags/1: 1 is not of type "string""#,
            r#"/tags/3: 2 is not of type "string""#,
            r#"/workers: 0 is less than the minimum of 1"#,
        ];
        for _ in 0..5 {
            assert_eq!(check(schema, instance), Err(expected.join("; ")));
        }
    }

    #[test]
    fn pointers_are_escaped() {
        let schema = r#"{"properties": {"a/b": {"type": "string"}, "c~d": {"type": "string"}}}"#;
        assert_eq!(
            check(schema, r#"{"a/b": 1, "c~d": 2}"#),
            Err(r#"/a~1b: 1 is not of type "string"; /c~0d: 2 is not of type "string""#.to_owned())
        );
    }

    #[test]
    fn numbers_keep_every_digit() {
        let schema = r#"{"properties": {"n": {"maximum": 18446744073709551615}}}"#;
        assert_eq!(check(schema, r#"{"n": 18446744073709551615}"#), Ok(()));
        assert_eq!(
            check(schema, r#"{"n": 18446744073709551616}"#),
            Err(
                "/n: 18446744073709551616 is greater than the maximum of 18446744073709551615"
                    .to_owned()
            )
        );
    }

    #[test]
    fn a_long_list_is_cut() {
        let schema = r#"{"additionalProperties": {"type": "string"}}"#;
        let instance = format!(
            "{{{}}}",
            (0..25)
                .map(|i| format!("\"k{i:02}\": {i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let err = check(schema, &instance).expect_err("every key violates");
        assert!(
            err.starts_with(r#"/k00: 0 is not of type "string"; "#),
            "{err}"
        );
        assert!(
            err.ends_with(r#"/k19: 19 is not of type "string"; and 5 more"#),
            "{err}"
        );
    }

    #[test]
    fn a_long_message_is_cut() {
        let schema = r#"{"properties": {"s": {"type": "integer"}}}"#;
        let long = "x".repeat(1000);
        let err = check(schema, &format!(r#"{{"s": "{long}"}}"#)).expect_err("not an integer");
        assert_eq!(
            err,
            format!("/s: \"{}...", "x".repeat(MAX_MESSAGE_CHARS - 1))
        );
    }

    #[test]
    fn a_boolean_schema_is_a_schema() {
        assert_eq!(check("true", "{}"), Ok(()));
        assert_eq!(
            check("false", "{}"),
            Err("/: False schema does not allow {}".to_owned())
        );
    }

    #[test]
    fn text_that_is_not_json_is_refused_with_line_and_column() {
        let err = schema("{\n  \"type\": \"object\",\n}").expect_err("not JSON");
        assert_eq!(
            err.to_string(),
            "the schema file args.schema.json is not JSON: invalid JSON at line 3 column 1: trailing comma"
        );
        let err = schema(" \n").expect_err("empty");
        assert_eq!(
            err.to_string(),
            "the schema file args.schema.json is empty: expected a JSON Schema"
        );
    }

    #[test]
    fn a_value_that_is_not_a_schema_is_refused() {
        let err = schema(r#"{"type": "integr"}"#).expect_err("no such type");
        assert_eq!(
            err.to_string(),
            r#"the schema file args.schema.json is not a valid JSON Schema: /type: "integr" is not valid under any of the schemas listed in the 'anyOf' keyword"#
        );
        let err = schema("[1]").expect_err("an array");
        assert_eq!(
            err.to_string(),
            "the schema file args.schema.json is not a valid JSON Schema: the top level is an array: a schema is an object or a boolean"
        );
    }

    #[test]
    fn a_reference_outside_the_file_is_refused() {
        let err = schema(r#"{"$ref": "https://example.com/args.json"}"#).expect_err("remote");
        assert_eq!(
            err.to_string(),
            "the schema file args.schema.json is not a valid JSON Schema: /: Resource 'https://example.com/args.json' is not present in a registry and retrieving it failed: `resolve-http` feature or a custom resolver is required to resolve external schemas via HTTP"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = Schema::load(Path::new("no/such/args.schema.json")).expect_err("missing");
        assert_eq!(
            err.to_string(),
            "cannot read the schema file no/such/args.schema.json: No such file or directory (os error 2)"
        );
    }
}
