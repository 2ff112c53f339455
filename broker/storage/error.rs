//! Why a write was refused, whichever engine keeps the document. Nothing
//! changed, except where a variant says it may have.
use super::admit::Unsatisfied;
#[cfg(feature = "etcd")]
use super::etcd::EtcdError;
use super::file::{OpenError, SaveFailed};
use argsbroker::document::DocumentError;
use std::sync::Arc;

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
