//! Every way the storage can fail, in one place: why a write was refused
//! (whichever engine keeps the document; nothing changed, except where a
//! variant says it may have), and why an engine cannot open. The engines
//! import these; this module imports no engine.
use argsbroker::document::DocumentError;
use argsbroker::schema::Violations;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// A document that fails `--schema`: which schema, and every violation.
#[derive(Debug, thiserror::Error)]
#[error("does not satisfy the schema {}: {violations}", schema.display())]
pub struct Unsatisfied {
    pub schema: PathBuf,
    pub violations: Violations,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "revision conflict: expected revision {expected}, but the current revision is {current}"
    )]
    Conflict { expected: u64, current: u64 },
    /// With what to do instead.
    #[error("the broker is read-only (--read-only): {0}")]
    ReadOnly(&'static str),
    #[error("{0}")]
    Invalid(DocumentError),
    #[error("the patch would make the top level {0}: the args must stay a JSON object")]
    PatchNotAnObject(&'static str),
    /// The document that would be the next revision fails `--schema`.
    #[error("the document {0}")]
    Schema(Unsatisfied),
    /// `what`: "the document is", "the patch is" or "the result would be".
    #[error("{what} {size} bytes, over the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        size: usize,
        max: usize,
    },
    #[error("revision {wanted} is not retained (retained: {oldest} to {newest})")]
    NotRetained {
        wanted: u64,
        oldest: u64,
        newest: u64,
    },
    /// The file engine could not make the change durable.
    #[error(transparent)]
    Save(#[from] SaveFailed),
    /// Someone else changed the args file, and what they wrote is not valid.
    #[error("the args file was changed by someone else and cannot be loaded ({0}); fix or restore it (the broker serves revision {1}), then write again")]
    OutsideEdit(Arc<OpenError>, u64),
    /// etcd refused the write, or could not be asked.
    #[cfg(feature = "etcd")]
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("the broker is stopping; nothing was changed")]
    Stopping,
    #[error("a canary runs (candidate revision {candidate} to {selector}): promote or abort it first, or write with --force, which aborts it")]
    CanaryRunning { candidate: u64, selector: String },
    #[error("no canary runs")]
    NoCanary,
    #[error("revision {expected} is not the candidate (the candidate is revision {candidate})")]
    NotTheCandidate { expected: u64, candidate: u64 },
    #[error("the canary's document is the stable one (revision {stable}): nothing to try")]
    CanaryUnchanged { stable: u64 },
    #[error("--canary {selector} selects none of the {followers} followers connected; nothing was changed")]
    NoFollowerSelected { selector: String, followers: usize },
}

/// Why the engine cannot open (or reload) the args file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot read the args file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the args file {path} is a directory, not a file")]
    IsDirectory { path: PathBuf },
    #[error("the args file {path} is not a regular file (it is {kind})")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("the args file {path} is {size} bytes, over the limit of {max} (--max-args-bytes)")]
    TooLarge {
        path: PathBuf,
        size: u64,
        max: usize,
    },
    #[error("the args file {path} is {size} bytes as compact JSON, over the limit of {max} (--max-args-bytes)")]
    TooLargeCompact {
        path: PathBuf,
        size: usize,
        max: usize,
    },
    #[error("the args file {path}: {source}")]
    Invalid {
        path: PathBuf,
        source: DocumentError,
    },
    #[error("the args file {path} {unsatisfied}")]
    Schema {
        path: PathBuf,
        unsatisfied: Unsatisfied,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("the journal {path} holds a record that cannot be read ({message}); move the journal away to start a new lineage")]
    Record { path: PathBuf, message: String },
    #[error("the history entry {path} (from an older broker) cannot be read ({message}); move it away to continue without it")]
    Legacy { path: PathBuf, message: String },
    #[error(
        "cannot create the state directory {path}: {source} (choose another with --state-dir)"
    )]
    StateDir { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Lineage(#[from] LineageError),
    #[error(transparent)]
    Save(#[from] SaveFailed),
    #[error("the broker is stopping")]
    Stopping,
}

/// A change that could not be made durable: nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("could not save revision {revision}: {error}; nothing was changed")]
pub struct SaveFailed {
    pub revision: u64,
    pub error: SaveError,
}

/// A file that could not be written, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", path.display(), argsbroker::durable::reason(error))]
pub struct SaveError {
    pub path: PathBuf,
    pub error: io::Error,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the journal {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("the journal {path} is damaged at byte {offset} ({why}) with whole records after it; move it away (and the args file becomes revision 1 of a new lineage) or restore it from a backup")]
    Damaged {
        path: PathBuf,
        offset: u64,
        why: &'static str,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    #[error("cannot read the lineage file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot create the lineage file {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("the lineage file {path} is damaged (expected 32 hex digits); move it away to start a new lineage")]
    Damaged { path: PathBuf },
}

#[cfg(feature = "etcd")]
/// Why etcd did not take a write (or a read of the history).
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("{what} {size} bytes, over the limit of {max} bytes that etcd accepts in one request (--etcd-max-request-bytes {request_bytes})")]
    TooLarge {
        what: &'static str,
        size: usize,
        max: usize,
        request_bytes: usize,
    },
    #[error("etcd at {endpoints} is out of reach ({reason}); nothing was changed")]
    Unreachable { endpoints: String, reason: String },
    #[error("etcd at {endpoints} did not confirm the write ({reason}); it may still be committed: read the args to see")]
    Unconfirmed { endpoints: String, reason: String },
    #[error("etcd refused the write to {key}: {reason}")]
    Denied { key: String, reason: String },
    #[error("etcd at {endpoints} is out of reach ({reason})")]
    ReadUnreachable { endpoints: String, reason: String },
    #[error("etcd refused to read {key}: {reason}")]
    ReadDenied { key: String, reason: String },
    #[error("the key {key} is not in etcd (deleted?); `broker set` makes it again")]
    Missing { key: String },
    #[error("etcd at {endpoints} refused the write as too large ({reason}): its --max-request-bytes is below this broker's --etcd-max-request-bytes {request_bytes}; nothing was changed")]
    RefusedAsTooLarge {
        endpoints: String,
        reason: String,
        request_bytes: usize,
    },
    #[error("etcd compacted the revision read")]
    Compacted,
    #[error("a canary with etcd keeps its record beside the key {key}, which the broker's etcd user may not read or write; grant it the key's range: etcdctl role grant-permission ROLE readwrite {key} --prefix=true")]
    CanaryNeedsRange { key: String },
    #[error("etcd committed the write but sent no revision")]
    NoRevision,
    #[error(
        "the key {key} kept changing under this write ({attempts} attempts); nothing was changed"
    )]
    KeptChanging { key: String, attempts: usize },
    #[error("etcd at {endpoints}: {reason}")]
    Other { endpoints: String, reason: String },
}
