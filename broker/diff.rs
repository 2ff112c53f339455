//! What changed between two revisions of the document, by path, for the
//! status page's history: keys added, removed, or whose value changed,
//! each named by its RFC 6901 pointer with the old and new values as
//! compact JSON text.
//!
//! Bounded so that a huge document cannot make the page expensive: a
//! document larger than [`MAX_DOCUMENT_BYTES`] is not compared at all, at
//! most [`MAX_CHANGES`] changes are listed (the rest are counted), and each
//! value's text is cut at [`MAX_VALUE_BYTES`]. Objects are compared key by
//! key; any other value (arrays included) is compared whole.
use serde::Serialize;
use serde_json::{Map, Value};

/// Documents larger than this are not compared.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Changes listed per diff; more are counted in [`Diff::omitted`].
pub const MAX_CHANGES: usize = 100;
/// A value's JSON text is cut after this many bytes (at a character
/// boundary) and ends with `…`.
pub const MAX_VALUE_BYTES: usize = 200;

/// One revision against the one before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// The revision compared against (the retained one before).
    pub against: u64,
    /// The changes, in the newer document's key order, then the removals
    /// in the older one's.
    pub changes: Vec<Change>,
    /// Changes found past [`MAX_CHANGES`] and not listed.
    pub omitted: usize,
    /// Why the documents were not compared (too large, not JSON), if they were not.
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Change {
    Added {
        path: String,
        new: Option<String>,
    },
    Removed {
        path: String,
        old: Option<String>,
    },
    Changed {
        path: String,
        old: Option<String>,
        new: Option<String>,
    },
}

/// `new` (a revision's compact JSON text) against `old` (the text of the
/// revision `against`, before it). With `values` false, the changes name
/// paths only (their `old` and `new` are `None`).
pub fn diff(against: u64, old: &[u8], new: &[u8], values: bool) -> Diff {
    let skipped = |why: String| Diff {
        against,
        changes: Vec::new(),
        omitted: 0,
        skipped: Some(why),
    };
    let largest = old.len().max(new.len());
    if largest > MAX_DOCUMENT_BYTES {
        return skipped(format!(
            "not compared: a document of {largest} bytes is over the page's limit of {MAX_DOCUMENT_BYTES}"
        ));
    }
    let (old, new) = match (
        argsbroker::document::parse_value(old),
        argsbroker::document::parse_value(new),
    ) {
        (Ok(old), Ok(new)) => (old, new),
        (Err(err), _) | (_, Err(err)) => return skipped(format!("not compared: {err}")),
    };
    let mut found = Found {
        values,
        ..Found::default()
    };
    compare(&mut String::new(), &old, &new, &mut found);
    Diff {
        against,
        changes: found.listed,
        omitted: found.omitted,
        skipped: None,
    }
}

#[derive(Default)]
struct Found {
    listed: Vec<Change>,
    omitted: usize,
    values: bool,
}

impl Found {
    /// Lists the change `make` builds (given how to show a value), or only
    /// counts it past [`MAX_CHANGES`], without building it.
    fn push(&mut self, make: impl FnOnce(&dyn Fn(&Value) -> Option<String>) -> Change) {
        if self.listed.len() >= MAX_CHANGES {
            self.omitted += 1;
            return;
        }
        let values = self.values;
        let show = move |value: &Value| values.then(|| text(value));
        self.listed.push(make(&show));
    }
}

fn compare(path: &mut String, old: &Value, new: &Value, found: &mut Found) {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => compare_objects(path, old, new, found),
        _ if old == new => {}
        _ => found.push(|show| Change::Changed {
            path: path.clone(),
            old: show(old),
            new: show(new),
        }),
    }
}

fn compare_objects(
    path: &mut String,
    old: &Map<String, Value>,
    new: &Map<String, Value>,
    found: &mut Found,
) {
    for (key, value) in new {
        let len = path.len();
        push_token(path, key);
        match old.get(key) {
            Some(before) => compare(path, before, value, found),
            None => found.push(|show| Change::Added {
                path: path.clone(),
                new: show(value),
            }),
        }
        path.truncate(len);
    }
    for (key, value) in old.iter().filter(|(key, _)| !new.contains_key(*key)) {
        let len = path.len();
        push_token(path, key);
        found.push(|show| Change::Removed {
            path: path.clone(),
            old: show(value),
        });
        path.truncate(len);
    }
}

/// `/key` with RFC 6901's escapes (`~` as `~0`, `/` as `~1`).
fn push_token(path: &mut String, key: &str) {
    path.push('/');
    path.push_str(&key.replace('~', "~0").replace('/', "~1"));
}

/// A value's compact JSON text, cut at [`MAX_VALUE_BYTES`].
fn text(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > MAX_VALUE_BYTES {
        let mut cut = MAX_VALUE_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(old: &str, new: &str) -> Vec<Change> {
        let diff = diff(1, old.as_bytes(), new.as_bytes(), true);
        assert_eq!((diff.omitted, diff.skipped), (0, None));
        diff.changes
    }

    #[test]
    fn names_added_removed_and_changed_keys_by_pointer() {
        assert_eq!(
            changes(
                r#"{"a":1,"gone":true,"m":{"x":"1","y":[1,2]},"a/b~c":0}"#,
                r#"{"a":1,"m":{"x":"2","y":[1,2,3],"z":null},"a/b~c":1,"new":{"k":[]}}"#
            ),
            vec![
                Change::Changed {
                    path: "/m/x".into(),
                    old: Some(r#""1""#.into()),
                    new: Some(r#""2""#.into())
                },
                Change::Changed {
                    path: "/m/y".into(),
                    old: Some("[1,2]".into()),
                    new: Some("[1,2,3]".into())
                },
                Change::Added {
                    path: "/m/z".into(),
                    new: Some("null".into())
                },
                Change::Changed {
                    path: "/a~1b~0c".into(),
                    old: Some("0".into()),
                    new: Some("1".into())
                },
                Change::Added {
                    path: "/new".into(),
                    new: Some(r#"{"k":[]}"#.into())
                },
                Change::Removed {
                    path: "/gone".into(),
                    old: Some("true".into())
                },
            ]
        );
    }

    #[test]
    fn numbers_are_compared_and_shown_exactly() {
        assert_eq!(
            changes(
                r#"{"n":123456789012345678901234567890,"f":1.0}"#,
                r#"{"n":123456789012345678901234567891,"f":1.0}"#
            ),
            vec![Change::Changed {
                path: "/n".into(),
                old: Some("123456789012345678901234567890".into()),
                new: Some("123456789012345678901234567891".into())
            }]
        );
    }

    #[test]
    fn equal_documents_and_a_new_key_order_have_no_changes() {
        assert_eq!(changes(r#"{"a":1,"b":2}"#, r#"{"a":1,"b":2}"#), vec![]);
        assert_eq!(changes(r#"{"a":1,"b":2}"#, r#"{"b":2,"a":1}"#), vec![]);
    }

    #[test]
    fn the_changes_listed_and_each_value_are_bounded() {
        let old: Map<String, Value> = (0..MAX_CHANGES + 7)
            .map(|i| (format!("k{i}"), Value::from(i)))
            .collect();
        let new: Map<String, Value> = (0..MAX_CHANGES + 7)
            .map(|i| (format!("k{i}"), Value::from(i + 1)))
            .collect();
        let diff = diff(
            4,
            Value::Object(old).to_string().as_bytes(),
            Value::Object(new).to_string().as_bytes(),
            true,
        );
        assert_eq!(diff.against, 4);
        assert_eq!((diff.changes.len(), diff.omitted), (MAX_CHANGES, 7));

        let long = "é".repeat(MAX_VALUE_BYTES);
        let found = changes(r#"{"s":""}"#, &format!(r#"{{"s":"{long}"}}"#));
        let Change::Changed { new, .. } = &found[0] else {
            panic!("{found:?}")
        };
        // The opening quote, then as many two-byte characters as fit.
        assert_eq!(
            new.as_deref(),
            Some(format!("\"{}…", "é".repeat((MAX_VALUE_BYTES - 1) / 2)).as_str())
        );
    }

    #[test]
    fn documents_over_the_limit_are_not_compared() {
        let big = format!(r#"{{"s":"{}"}}"#, "x".repeat(MAX_DOCUMENT_BYTES));
        let diff = diff(2, br#"{"s":""}"#, big.as_bytes(), true);
        assert_eq!(diff.changes, vec![]);
        assert_eq!(
            diff.skipped.as_deref(),
            Some(
                format!(
                    "not compared: a document of {} bytes is over the page's limit of {MAX_DOCUMENT_BYTES}",
                    big.len()
                )
                .as_str()
            )
        );
    }

    #[test]
    fn without_values_only_paths_are_named() {
        let diff = diff(1, br#"{"a":1,"b":2}"#, br#"{"a":2,"c":3}"#, false);
        assert_eq!(
            serde_json::to_string(&diff).expect("serializable"),
            r#"{"against":1,"changes":[{"op":"changed","path":"/a","old":null,"new":null},{"op":"added","path":"/c","new":null},{"op":"removed","path":"/b","old":null}],"omitted":0,"skipped":null}"#
        );
    }

    #[test]
    fn serializes_each_change_with_its_op() {
        let diff = diff(1, br#"{"a":1,"b":2}"#, br#"{"a":"<script>","c":3}"#, true);
        assert_eq!(
            serde_json::to_string(&diff).expect("serializable"),
            r#"{"against":1,"changes":[{"op":"changed","path":"/a","old":"1","new":"\"<script>\""},{"op":"added","path":"/c","new":"3"},{"op":"removed","path":"/b","old":"2"}],"omitted":0,"skipped":null}"#
        );
    }
}
