//! The store: the one current snapshot of the args, and the only place that
//! changes it.
//!
//! Readers load the current snapshot with one atomic pointer load; watchers
//! follow a `watch` channel that holds only the newest snapshot, so a slow
//! watcher skips revisions instead of making the broker buffer them. Writers
//! take a lock, check the expected revision, make the new document durable,
//! and only then publish it.
use crate::durable;
use arc_swap::ArcSwap;
use argsbroker::document::{Document, DocumentError};
use argsbroker::pb;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{watch, Mutex};

/// One revision of the document, with the reply every reader is handed.
#[derive(Debug)]
pub struct Snapshot {
    pub revision: u64,
    pub document: Document,
    /// The whole-document `Args`, built once per revision.
    pub reply: pb::Args,
}

impl Snapshot {
    fn new(revision: u64, document: Document) -> Self {
        let reply = pb::Args {
            revision,
            json: document.json_str().to_owned(),
            sha256: document.sha256().to_owned(),
            not_modified: false,
        };
        Self {
            revision,
            document,
            reply,
        }
    }
}

/// Why the store cannot open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot read the args file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the args file {path} is a directory, not a file")]
    IsDirectory { path: PathBuf },
    #[error("the args file {path} is {size} bytes, over the limit of {max} (--max-args-bytes)")]
    TooLarge {
        path: PathBuf,
        size: u64,
        max: usize,
    },
    #[error("the args file {path}: {source}")]
    Invalid {
        path: PathBuf,
        source: DocumentError,
    },
    #[error("the revision state {path}: {message}")]
    State { path: PathBuf, message: String },
}

/// Why a write was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "revision conflict: expected revision {expected}, but the current revision is {current}"
    )]
    Conflict { expected: u64, current: u64 },
    #[error("{0}")]
    Invalid(DocumentError),
    #[error("the patch would make the top level {0}: the args must stay a JSON object")]
    PatchNotAnObject(&'static str),
    #[error("the document would be {size} bytes, over the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("could not save the args to disk: {0}")]
    Io(io::Error),
}

/// Where the revision of the file's content is kept across restarts:
/// `{"revision": N, "sha256": "..."}`, written after the args file.
#[derive(Debug, Serialize, Deserialize)]
struct RevisionState {
    revision: u64,
    sha256: String,
}

pub struct Store {
    current: ArcSwap<Snapshot>,
    watch: watch::Sender<Arc<Snapshot>>,
    args_path: PathBuf,
    revision_path: PathBuf,
    max_bytes: usize,
    write_lock: Mutex<()>,
}

impl Store {
    /// Loads the args file and gives it its revision: the stored one if the
    /// content is unchanged, the next one if it changed while the broker was
    /// down (so a revision never names two documents).
    pub fn open(args_path: &Path, state_dir: &Path, max_bytes: usize) -> Result<Self, OpenError> {
        let document = read_document(args_path, max_bytes)?;
        let revision_path = state_dir.join("revision");
        let state_err = |message: String| OpenError::State {
            path: revision_path.clone(),
            message,
        };
        let stored = match std::fs::read(&revision_path) {
            Ok(bytes) => Some(
                serde_json::from_slice::<RevisionState>(&bytes).map_err(|e| {
                    state_err(format!(
                        "not a revision record ({e}); move it away to start over at revision 1"
                    ))
                })?,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(state_err(e.to_string())),
        };
        let revision = match stored {
            Some(s) if s.sha256 == document.sha256() => s.revision,
            Some(s) => s.revision + 1,
            None => 1,
        };
        std::fs::create_dir_all(state_dir).map_err(|e| OpenError::State {
            path: state_dir.to_path_buf(),
            message: e.to_string(),
        })?;
        write_revision(&revision_path, revision, &document)
            .map_err(|e| state_err(e.to_string()))?;

        let snapshot = Arc::new(Snapshot::new(revision, document));
        Ok(Self {
            current: ArcSwap::new(snapshot.clone()),
            watch: watch::Sender::new(snapshot),
            args_path: args_path.to_path_buf(),
            revision_path,
            max_bytes,
            write_lock: Mutex::new(()),
        })
    }

    /// The current snapshot: one atomic load, no lock.
    pub fn current(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// A receiver that sees the current snapshot, then only the newest one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.watch.subscribe()
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Replaces the document with `json`.
    pub async fn set(
        &self,
        json: &str,
        expected: Option<u64>,
    ) -> Result<Arc<Snapshot>, WriteError> {
        self.check_size(json.len())?;
        let next = Document::parse(json.as_bytes()).map_err(WriteError::Invalid)?;
        self.write(expected, move |_| Ok(next)).await
    }

    /// Applies an RFC 7386 merge patch to the document.
    pub async fn patch(
        &self,
        merge_patch: &str,
        expected: Option<u64>,
    ) -> Result<Arc<Snapshot>, WriteError> {
        self.check_size(merge_patch.len())?;
        let patch = argsbroker::document::parse_value(merge_patch.as_bytes())
            .map_err(WriteError::Invalid)?;
        self.write(expected, move |current| {
            let mut value = current.value().clone();
            merge_patch_into(&mut value, &patch);
            Document::from_value(value).map_err(|e| match e {
                DocumentError::NotAnObject(kind) => WriteError::PatchNotAnObject(kind),
                other => WriteError::Invalid(other),
            })
        })
        .await
    }

    fn check_size(&self, size: usize) -> Result<(), WriteError> {
        if size > self.max_bytes {
            return Err(WriteError::TooLarge {
                size,
                max: self.max_bytes,
            });
        }
        Ok(())
    }

    /// Checks the expected revision, makes the next document durable, then
    /// publishes it. A result equal to the current document is not a new revision.
    async fn write(
        &self,
        expected: Option<u64>,
        next: impl FnOnce(&Document) -> Result<Document, WriteError>,
    ) -> Result<Arc<Snapshot>, WriteError> {
        let _writer = self.write_lock.lock().await;
        let current = self.current.load_full();
        if let Some(expected) = expected {
            if expected != current.revision {
                return Err(WriteError::Conflict {
                    expected,
                    current: current.revision,
                });
            }
        }
        let document = next(&current.document)?;
        self.check_size(document.json().len())?;
        if document.sha256() == current.document.sha256() {
            return Ok(current);
        }
        let snapshot = Arc::new(Snapshot::new(current.revision + 1, document));
        let (args_path, revision_path, saving) = (
            self.args_path.clone(),
            self.revision_path.clone(),
            snapshot.clone(),
        );
        tokio::task::spawn_blocking(move || {
            // The args file first, then its revision: after a crash between
            // the two, the next start sees new content and gives it the next
            // revision, which no reader has seen yet.
            durable::write_atomic(&args_path, &pretty(saving.document.value()))?;
            write_revision(&revision_path, saving.revision, &saving.document)
        })
        .await
        .map_err(|e| WriteError::Io(io::Error::other(e)))?
        .map_err(WriteError::Io)?;
        self.current.store(snapshot.clone());
        self.watch.send_replace(snapshot.clone());
        Ok(snapshot)
    }
}

fn read_document(path: &Path, max_bytes: usize) -> Result<Document, OpenError> {
    let read_err = |source| OpenError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.is_dir() {
        return Err(OpenError::IsDirectory {
            path: path.to_path_buf(),
        });
    }
    if meta.len() > max_bytes as u64 {
        return Err(OpenError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
            max: max_bytes,
        });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    Document::parse(&bytes).map_err(|source| OpenError::Invalid {
        path: path.to_path_buf(),
        source,
    })
}

fn write_revision(path: &Path, revision: u64, document: &Document) -> io::Result<()> {
    let state = RevisionState {
        revision,
        sha256: document.sha256().to_owned(),
    };
    let mut bytes = serde_json::to_vec(&state).map_err(io::Error::other)?;
    bytes.push(b'\n');
    durable::write_atomic(path, &bytes)
}

/// The document as a person would write it: two-space indents, a final newline.
fn pretty(value: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// RFC 7386: `null` removes a key, objects merge, anything else replaces.
/// Existing keys keep their place and new keys are appended (`shift_remove`,
/// because a plain remove would move the last key into the hole).
fn merge_patch_into(target: &mut Value, patch: &Value) {
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
                merge_patch_into(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(doc: &str, patch: &str) -> String {
        let mut value: Value = serde_json::from_str(doc).unwrap();
        merge_patch_into(&mut value, &serde_json::from_str(patch).unwrap());
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
