//! The one check every candidate document passes (size, parse, schema), and
//! the plan of a write: what it makes of the current document.
pub use super::error::Unsatisfied;
use super::error::WriteError;
use crate::canary::Selector;
use argsbroker::document::{Document, DocumentError};
use argsbroker::schema::Schema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What every document must be, whichever engine keeps it.
pub struct Limits {
    pub max_args_bytes: usize,
    /// `--history`: how many revisions are retained.
    pub history: usize,
    /// `--history-bytes` (the file engine's bound on retained bytes).
    pub history_bytes: usize,
    pub read_only: bool,
    /// `--schema`: what every document must satisfy.
    pub schema: Option<Arc<Schema>>,
}

/// The one check of `--schema`, on every document that is to become the
/// next revision: a write's result, an args file read at start or reloaded,
/// a value from etcd. The parsed tree is made for the check and dropped
/// after it, so a published document does not keep one.
pub fn satisfies(schema: Option<&Schema>, document: &Document) -> Result<(), Unsatisfied> {
    let Some(schema) = schema else {
        return Ok(());
    };
    schema
        .check(&document.to_value())
        .map_err(|violations| Unsatisfied {
            schema: schema.path().to_path_buf(),
            violations,
        })
}

/// `current` with an RFC 7386 merge patch applied.
pub fn merge(current: &Document, patch: &serde_json::Value) -> Result<Document, WriteError> {
    let mut value = current.to_value();
    argsbroker::document::merge_patch(&mut value, patch);
    Document::from_value(value).map_err(|e| match e {
        DocumentError::NotAnObject(kind) => WriteError::PatchNotAnObject(kind),
        other => WriteError::Invalid(other),
    })
}

/// How a revision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    File,
    Set,
    Patch,
    Rollback,
    /// The stable document again, ending a canary.
    Abort,
    /// A canary's candidate made the revision everyone gets (a record of the
    /// journal, merged into the candidate's entry: not a revision).
    Promote,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Set => "set",
            Source::Patch => "patch",
            Source::Rollback => "rollback",
            Source::Abort => "abort",
            Source::Promote => "promote",
        }
    }
}

/// Who asked for a change, for the history.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub source: Source,
    pub uid: Option<u32>,
}

/// What a write asks for, parsed and checked for size before it waits for
/// its turn.
pub enum Change {
    /// The whole document (a set, or a rollback's retained revision).
    Set(Document),
    /// An RFC 7386 merge patch, applied to whatever the base is.
    Patch(serde_json::Value),
}

pub struct Write {
    pub change: Change,
    pub expected: Option<u64>,
    pub origin: Origin,
    /// Start a canary with the result instead of giving it to everyone.
    pub canary: Option<CanaryStart>,
    /// Abort a running canary first, instead of being refused.
    pub force: bool,
}

/// Promote or abort the running canary (if it is `candidate`, when given).
pub struct EndCanary {
    pub candidate: Option<u64>,
    pub uid: Option<u32>,
    /// Why, for an abort's history note.
    pub reason: String,
}

/// A canary to start: whom it selects, and how long it bakes (0: by hand).
pub struct CanaryStart {
    pub selector: Selector,
    /// For `N`: the followers chosen now.
    pub chosen: Vec<String>,
    pub bake_ms: u32,
}

/// What a write makes of its base.
pub enum Plan {
    /// The result is the base document: no new revision.
    Unchanged,
    Next(Document),
}

impl Write {
    /// Plans this write on `base` (revision `revision`): checks the
    /// expected revision, applies the change, and admits the result (its
    /// size, then, if it differs from the base, the schema).
    pub fn plan(
        &self,
        revision: u64,
        base: &Document,
        limits: &Limits,
    ) -> Result<Plan, WriteError> {
        if let Some(expected) = self.expected {
            if expected != revision {
                return Err(WriteError::Conflict {
                    expected,
                    current: revision,
                });
            }
        }
        let next = match &self.change {
            Change::Set(document) => document.clone(),
            Change::Patch(patch) => merge(base, patch)?,
        };
        check_size(limits, "the result would be", next.json().len())?;
        if next.sha256() == base.sha256() {
            return Ok(Plan::Unchanged);
        }
        satisfies(limits.schema.as_deref(), &next).map_err(WriteError::Schema)?;
        Ok(Plan::Next(next))
    }
}

/// `what` ("the document is", "the patch is", "the result would be") of
/// `size` bytes fits `--max-args-bytes`.
pub fn check_size(limits: &Limits, what: &'static str, size: usize) -> Result<(), WriteError> {
    if size > limits.max_args_bytes {
        return Err(WriteError::TooLarge {
            what,
            size,
            max: limits.max_args_bytes,
        });
    }
    Ok(())
}
