//! Property-based fuzzing of the code this project wrote that reads
//! untrusted input: `Document::parse` (files and writes), JSON pointers
//! (`pointer::parse` and `lookup`) and `merge_patch`. Each target first
//! tries every input in tests/fuzz-corpus, then random and mutated inputs
//! for a bounded time: `ARGSBROKER_FUZZ_SECONDS` per target (2 by default,
//! so `cargo test` stays quick; `tests/fuzz 60` runs them for a minute).
//! A failing case's seed is saved under tests/fuzz-corpus/regressions/ and
//! tried first on every later run.
use argsbroker::document::{self, Document};
use argsbroker::pointer::{self, PointerError};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError, TestRunner};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus")
}

fn corpus_lines(name: &str) -> Vec<String> {
    std::fs::read_to_string(corpus().join(name))
        .expect("corpus file")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn corpus_documents() -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus().join("documents"))
        .expect("corpus documents")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read(f).expect("corpus document"))
        .collect()
}

/// Runs `test` on inputs from `strategy` until the time budget is spent,
/// in batches with fresh random seeds. Returns how many cases ran.
fn fuzz<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> u64
where
    S::Value: std::fmt::Debug,
{
    let seconds: f64 = std::env::var("ARGSBROKER_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let regressions = corpus().join("regressions").join(format!("{name}.txt"));
    let leaked: &'static str =
        Box::leak(regressions.to_string_lossy().into_owned().into_boxed_str());
    let config = ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(leaked))),
        ..ProptestConfig::default()
    };
    let mut cases = 0;
    while Instant::now() < deadline {
        let mut runner = TestRunner::new(config.clone());
        if let Err(failure) = runner.run(&strategy, &test) {
            panic!("{name}: {failure}");
        }
        cases += u64::from(config.cases);
    }
    eprintln!("fuzz {name}: {cases} cases in {seconds} s");
    cases
}

// ------------------------------------------------------------------ inputs

/// Any JSON number, as text: huge, tiny, negative, with exponents.
fn number() -> impl Strategy<Value = String> {
    "-?(0|[1-9][0-9]{0,40})(\\.[0-9]{1,30})?([eE][+-]?[0-9]{1,4})?"
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number().prop_map(|n| serde_json::from_str(&n).expect("a JSON number")),
        "[a-c~/\\\\\"\u{0}-\u{1f}é✓😀]{0,6}".prop_map(Value::String),
    ]
}

/// Keys from a small alphabet (so patches and pointers hit them), with the
/// characters pointers must escape.
fn key() -> impl Strategy<Value = String> {
    "[ab~/0-]{0,3}"
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 64, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..5)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::vec((key(), json_value()), 0..6)
        .prop_map(|entries| Value::Object(entries.into_iter().collect()))
}

/// A JSON text written by hand, so that it can repeat keys (which a
/// `Value` cannot hold) and spell them with `\u` escapes.
#[derive(Debug, Clone)]
enum Tree {
    Leaf(String),
    Array(Vec<Tree>),
    /// (key, spell it with \u escapes, value)
    Object(Vec<(String, bool, Tree)>),
}

impl Tree {
    fn text(&self, out: &mut String, space: &str) {
        match self {
            Tree::Leaf(text) => out.push_str(text),
            Tree::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                        out.push_str(space);
                    }
                    item.text(out, space);
                }
                out.push(']');
            }
            Tree::Object(entries) => {
                out.push('{');
                out.push_str(space);
                for (i, (key, escaped, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                        out.push_str(space);
                    }
                    if *escaped {
                        out.push('"');
                        for unit in key.encode_utf16() {
                            out.push_str(&format!("\\u{unit:04x}"));
                        }
                        out.push('"');
                    } else {
                        out.push_str(&serde_json::to_string(key).expect("a string"));
                    }
                    out.push(':');
                    out.push_str(space);
                    value.text(out, space);
                }
                out.push_str(space);
                out.push('}');
            }
        }
    }

    /// The first key repeated within one object, depth first.
    fn repeated_key(&self) -> Option<&str> {
        match self {
            Tree::Leaf(_) => None,
            Tree::Array(items) => items.iter().find_map(Tree::repeated_key),
            Tree::Object(entries) => {
                let mut seen = std::collections::HashSet::new();
                for (key, _, value) in entries {
                    if !seen.insert(key.as_str()) {
                        return Some(key);
                    }
                    if let Some(k) = value.repeated_key() {
                        return Some(k);
                    }
                }
                None
            }
        }
    }
}

fn entry<S: Strategy<Value = Tree>>(value: S) -> impl Strategy<Value = (String, bool, Tree)> {
    ("[abé]{0,2}", any::<bool>(), value)
}

/// An object (the top level of a document) of hand-written values.
fn tree() -> impl Strategy<Value = Tree> {
    let leaf = leaf().prop_map(|v| Tree::Leaf(v.to_string()));
    let value = leaf.prop_recursive(4, 48, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Tree::Array),
            prop::collection::vec(entry(inner), 0..4).prop_map(Tree::Object),
        ]
    });
    prop::collection::vec(entry(value), 0..4).prop_map(Tree::Object)
}

/// A corpus input with a few random byte edits.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let edits = prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 0..6);
    (prop::sample::select(seeds), edits).prop_map(|(mut bytes, edits)| {
        for (at, kind, byte) in edits {
            let i = if bytes.is_empty() {
                0
            } else {
                at.index(bytes.len())
            };
            match kind {
                0 => bytes.insert(i, byte),
                1 if !bytes.is_empty() => {
                    bytes.remove(i);
                }
                _ if !bytes.is_empty() => bytes[i] = byte,
                _ => bytes.push(byte),
            }
        }
        bytes
    })
}

// ------------------------------------------------------------------ document

/// What must hold for any bytes handed to Document::parse.
fn check_document(bytes: &[u8]) -> Result<(), TestCaseError> {
    match Document::parse(bytes) {
        Ok(doc) => {
            // The compact text is the document: it parses back to itself.
            let again = Document::parse(doc.json())
                .map_err(|e| TestCaseError::fail(format!("compact text refused: {e}")))?;
            prop_assert_eq!(again.json_str(), doc.json_str());
            prop_assert_eq!(again.sha256(), doc.sha256());
            prop_assert!(doc.value().is_object());
            // serde_json accepts the same text and sees the same value.
            let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            let plain: Value = serde_json::from_slice(text).map_err(|e| {
                TestCaseError::fail(format!("accepted what serde_json refuses: {e}"))
            })?;
            prop_assert_eq!(&plain, doc.value());
            // The args file is written by indenting the compact text, with no
            // tree: it must match serde_json's pretty printer exactly.
            let indented = String::from_utf8(argsbroker::document::pretty(doc.json()))
                .map_err(|e| TestCaseError::fail(format!("pretty text is not UTF-8: {e}")))?;
            let expected = serde_json::to_string_pretty(doc.value()).unwrap_or_default() + "\n";
            prop_assert_eq!(indented, expected);
            // A broker's text, as a client takes it, is the same document.
            let taken = Document::from_broker(doc.json().clone(), doc.sha256().to_owned())
                .map_err(|e| TestCaseError::fail(format!("from_broker refused: {e}")))?;
            prop_assert_eq!(taken.value(), doc.value());
        }
        Err(err) => {
            let message = err.to_string();
            prop_assert!(
                !message.is_empty() && !message.contains('\n'),
                "not one line: {:?}",
                message
            );
        }
    }
    Ok(())
}

/// Document::parse on the corpus, arbitrary bytes and mutated corpus files:
/// it never panics, what it accepts is an object that round-trips through
/// its compact text, and what it refuses is explained in one line.
#[test]
fn fuzz_document_parse() {
    let seeds = corpus_documents();
    assert!(seeds.len() >= 20, "the corpus is missing");
    for seed in &seeds {
        check_document(seed)
            .unwrap_or_else(|e| panic!("corpus {:?}: {e}", String::from_utf8_lossy(seed)));
    }
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        mutated(seeds),
        json_object().prop_map(|v| v.to_string().into_bytes()),
    ];
    fuzz("document_parse", bytes, |b| check_document(&b));
}

/// Hand-written texts that may repeat keys: refused exactly when some object
/// repeats a key (compared after unescaping), and that key is named.
#[test]
fn fuzz_duplicate_keys() {
    fuzz(
        "duplicate_keys",
        (tree(), prop::sample::select(vec!["", " ", "\n  "])),
        |(tree, space)| {
            let mut text = String::new();
            tree.text(&mut text, space);
            match (Document::parse(text.as_bytes()), tree.repeated_key()) {
                (Ok(doc), None) => {
                    let plain: Value = serde_json::from_str(&text).expect("valid JSON");
                    prop_assert_eq!(&plain, doc.value());
                }
                (Err(document::DocumentError::DuplicateKey { key, .. }), Some(want)) => {
                    prop_assert_eq!(key, want)
                }
                (got, want) => prop_assert!(false, "{text}: got {got:?}, repeated key {want:?}"),
            }
            Ok(())
        },
    );
}

// ------------------------------------------------------------------ pointers

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Every path to every value in `value`, as (pointer, value).
fn paths<'v>(value: &'v Value, prefix: String, out: &mut Vec<(String, &'v Value)>) {
    out.push((prefix.clone(), value));
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                paths(v, format!("{prefix}/{}", escape(k)), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                paths(v, format!("{prefix}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn check_pointer(text: &str, doc: &Value) -> Result<(), TestCaseError> {
    match pointer::parse(text) {
        Ok(tokens) => {
            // Escaping the tokens again gives back exactly the pointer.
            let again: String = tokens.iter().map(|t| format!("/{}", escape(t))).collect();
            prop_assert_eq!(&again, text);
        }
        Err(PointerError::NoLeadingSlash(p)) => {
            prop_assert_eq!(&p, text);
            prop_assert!(!text.is_empty() && !text.starts_with('/'));
        }
        Err(PointerError::BadEscape(p)) => {
            prop_assert_eq!(&p, text);
            let bad = text
                .match_indices('~')
                .any(|(i, _)| !matches!(text.as_bytes().get(i + 1), Some(b'0' | b'1')));
            prop_assert!(bad, "{text:?} has no bad escape");
        }
    }
    // Looking it up never panics, and agrees with parsing about errors.
    prop_assert_eq!(
        pointer::lookup(doc, text).is_err(),
        pointer::parse(text).is_err()
    );
    Ok(())
}

/// JSON pointers: any string parses or is refused for the right reason, and
/// parsing round-trips (escaping the tokens again gives the same text).
#[test]
fn fuzz_pointer_parse() {
    let doc: Value =
        serde_json::from_str(r#"{"a": {"b~/": [1, {"-": 2}]}, "list": [10, 20], "": 0}"#).unwrap();
    for line in corpus_lines("pointers.txt") {
        check_pointer(&line, &doc).unwrap_or_else(|e| panic!("corpus {line:?}: {e}"));
    }
    let text = prop_oneof!["[/~01a-]{0,12}", "(/[a-c~0-9-]{0,4}){0,5}", any::<String>(),];
    fuzz("pointer_parse", (text, json_value()), |(text, doc)| {
        check_pointer(&text, &doc)
    });
}

/// The pointer to every value in any document finds exactly that value.
#[test]
fn fuzz_pointer_lookup() {
    fuzz("pointer_lookup", json_value(), |value| {
        let mut all = Vec::new();
        paths(&value, String::new(), &mut all);
        for (p, want) in all {
            let got = pointer::lookup(&value, &p)
                .map_err(|e| TestCaseError::fail(format!("{p:?}: {e}")))?;
            prop_assert_eq!(got, Some(want), "{}", p);
        }
        Ok(())
    });
}

// ------------------------------------------------------------------ merge patch

/// RFC 7386 section 2, as written there, on maps without order.
fn reference_merge(target: &Value, patch: &Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut result = match target {
        Value::Object(map) => map.clone(),
        _ => serde_json::Map::new(),
    };
    for (name, value) in patch {
        if value.is_null() {
            result.shift_remove(name);
        } else {
            let merged = reference_merge(result.get(name).unwrap_or(&Value::Null), value);
            result.insert(name.clone(), merged);
        }
    }
    Value::Object(result)
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn keys(value: &Value) -> Vec<&String> {
    value
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default()
}

fn check_merge(target: &Value, patch: &Value) -> Result<(), TestCaseError> {
    let mut merged = target.clone();
    document::merge_patch(&mut merged, patch);
    // Equal, as unordered JSON, to the RFC's own algorithm.
    let want = reference_merge(target, patch);
    prop_assert_eq!(sorted(&merged), sorted(&want));
    // Applying the same patch again changes nothing.
    let mut twice = merged.clone();
    document::merge_patch(&mut twice, patch);
    prop_assert_eq!(&twice, &merged);
    // No deeper than the deeper input: the nesting limit holds for results.
    prop_assert!(depth(&merged) <= depth(target).max(depth(patch)));
    // Keys the target keeps stay in their order, before the new ones.
    if target.is_object() && patch.is_object() {
        let kept: Vec<&String> = keys(target)
            .into_iter()
            .filter(|k| merged.get(k.as_str()).is_some())
            .collect();
        let merged_keys = keys(&merged);
        prop_assert_eq!(&merged_keys[..kept.len()], &kept[..]);
    }
    Ok(())
}

/// A copy with every object's keys sorted, to compare without order.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// merge_patch agrees with RFC 7386's algorithm, is idempotent, keeps key
/// order, and never makes a result deeper than its inputs.
#[test]
fn fuzz_merge_patch() {
    let target: Value =
        serde_json::from_str(r#"{"a": {"a": {"b": 1}}, "": [1], "b": null}"#).unwrap();
    for line in corpus_lines("patches.txt") {
        let patch: Value = serde_json::from_str(&line).expect("corpus patch");
        check_merge(&target, &patch).unwrap_or_else(|e| panic!("corpus {line:?}: {e}"));
    }
    fuzz(
        "merge_patch",
        (json_value(), json_value()),
        |(target, patch)| check_merge(&target, &patch),
    );
}
