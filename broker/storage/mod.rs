//! Where the document lives, and the one way it changes.
//!
//! Every write takes the same path, whichever engine keeps the document:
//! admit the request (size, parse) → plan it on the current base (set,
//! merge patch or rollback; the expected revision; the result's size and
//! schema, see [`admit`]) → unchanged? → the engine commits it with a
//! compare-and-set on the base revision → the engine publishes it
//! ([`Head`]) → reply. An engine does only what differs: the file engine
//! ([`file`]) commits groups of writes to its journal with one fsync and
//! takes outside edits of the args file; the etcd engine ([`etcd`]) commits
//! each write as one etcd transaction and follows what other hosts commit.
pub mod admit;
mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod file;
mod published;

use admit::Source;
use admit::{CanaryStart, Change, EndCanary, Limits, Origin, Write};
use argsbroker::document::Document;
use argsbroker::pb;
pub use error::WriteError;
use file::FileEngine;
pub use published::{Canary, Feed, Head, Published};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;

/// How a write is to be made, beyond what it changes.
#[derive(Default)]
pub struct WriteOptions {
    /// Compare-and-set: refused unless this is the current revision.
    pub expected: Option<u64>,
    /// The writer, for the history.
    pub uid: Option<u32>,
    /// Start a canary with the result.
    pub canary: Option<CanaryStart>,
    /// Abort a running canary first instead of being refused.
    pub force: bool,
}

/// The engine that keeps the document.
#[derive(Clone)]
pub enum Engine {
    File(Arc<FileEngine>),
    #[cfg(feature = "etcd")]
    Etcd(Arc<etcd::EtcdEngine>),
}

/// The broker's view of the document: what it serves, and how it changes.
#[derive(Clone)]
pub struct Storage {
    head: Arc<Head>,
    limits: Arc<Limits>,
    engine: Engine,
}

/// Whether the broker is in touch with where the document lives (always, for
/// a file), for health, `broker status` and the workers' `/readyz`.
#[derive(Debug, Clone)]
pub struct Contact {
    pub connected: bool,
    /// Why not, when not.
    pub reason: String,
    pub since: SystemTime,
    /// How many times it was lost since the broker started (a start
    /// without it counts once), for the metrics.
    pub disconnects: u64,
}

impl Contact {
    pub fn connected() -> Self {
        Self {
            connected: true,
            reason: String::new(),
            since: SystemTime::now(),
            disconnects: 0,
        }
    }

    /// A file is at hand from the broker's start on.
    pub fn file() -> Self {
        Self {
            since: started(),
            ..Self::connected()
        }
    }
}

/// When this broker started (the first call: `serve::run` makes it early).
pub fn started() -> SystemTime {
    static STARTED: std::sync::OnceLock<SystemTime> = std::sync::OnceLock::new();
    *STARTED.get_or_init(SystemTime::now)
}

impl Storage {
    pub fn new(head: Arc<Head>, limits: Arc<Limits>, engine: Engine) -> Self {
        Self {
            head,
            limits,
            engine,
        }
    }

    /// The current snapshot: one atomic load, no lock.
    pub fn current(&self) -> arc_swap::Guard<Arc<Published>> {
        self.head.current()
    }

    /// A receiver that sees the current snapshot, then only the newest one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.head.subscribe()
    }

    /// What a follower named `who` (name, host) gets, or (none) a plain watcher.
    pub fn feed(&self, who: Option<(String, String)>) -> Feed {
        self.head.feed(who)
    }

    /// The running canary, if any.
    pub fn canary(&self) -> Option<Arc<Canary>> {
        self.head.canary()
    }

    /// Sees every start and end of a canary.
    pub fn canary_changes(&self) -> watch::Receiver<Option<Arc<Canary>>> {
        self.head.canary_changes()
    }

    /// Makes the running canary's candidate the revision everyone gets.
    pub async fn promote(&self, end: EndCanary) -> Result<Arc<Published>, WriteError> {
        self.check_writable("the request is", 0)?;
        match &self.engine {
            Engine::File(engine) => engine.promote(end).await,
            #[cfg(feature = "etcd")]
            Engine::Etcd(engine) => engine.promote(end).await,
        }
    }

    /// Ends the running canary: the stable document again, as a new revision.
    pub async fn abort(&self, end: EndCanary) -> Result<Arc<Published>, WriteError> {
        self.check_writable("the request is", 0)?;
        match &self.engine {
            Engine::File(engine) => engine.abort(end).await,
            #[cfg(feature = "etcd")]
            Engine::Etcd(engine) => engine.abort(end).await,
        }
    }

    pub fn max_args_bytes(&self) -> usize {
        self.limits.max_args_bytes
    }

    /// `None` for a file, which is always at hand.
    pub fn contact(&self) -> Option<watch::Receiver<Contact>> {
        match &self.engine {
            Engine::File(_) => None,
            #[cfg(feature = "etcd")]
            Engine::Etcd(engine) => Some(engine.contact()),
        }
    }

    /// The engine in a few words: `file /etc/app/args.json`, `etcd URLS key KEY`.
    pub fn describe(&self) -> String {
        match &self.engine {
            Engine::File(engine) => format!("file {}", engine.args_path().display()),
            #[cfg(feature = "etcd")]
            Engine::Etcd(engine) => engine.describe(),
        }
    }

    /// Replaces the document with `json`.
    #[cfg(test)]
    pub async fn set(
        &self,
        json: &str,
        expected: Option<u64>,
        uid: Option<u32>,
    ) -> Result<Arc<Published>, WriteError> {
        let options = WriteOptions {
            expected,
            uid,
            ..WriteOptions::default()
        };
        self.set_with(json, options).await
    }

    pub async fn set_with(
        &self,
        json: &str,
        options: WriteOptions,
    ) -> Result<Arc<Published>, WriteError> {
        self.check_writable("the document is", json.len())?;
        let next = Document::parse(json.as_bytes()).map_err(WriteError::Invalid)?;
        self.write(Change::Set(next), Source::Set, options).await
    }

    /// Applies an RFC 7386 merge patch to the document.
    #[cfg(test)]
    pub async fn patch(
        &self,
        merge_patch: &str,
        expected: Option<u64>,
        uid: Option<u32>,
    ) -> Result<Arc<Published>, WriteError> {
        let options = WriteOptions {
            expected,
            uid,
            ..WriteOptions::default()
        };
        self.patch_with(merge_patch, options).await
    }

    pub async fn patch_with(
        &self,
        merge_patch: &str,
        options: WriteOptions,
    ) -> Result<Arc<Published>, WriteError> {
        self.check_writable("the patch is", merge_patch.len())?;
        let patch = argsbroker::document::parse_value(merge_patch.as_bytes())
            .map_err(WriteError::Invalid)?;
        self.write(Change::Patch(patch), Source::Patch, options)
            .await
    }

    /// Makes a new revision with the content of a retained one.
    pub async fn rollback(
        &self,
        to_revision: u64,
        expected: Option<u64>,
        uid: Option<u32>,
    ) -> Result<Arc<Published>, WriteError> {
        let options = WriteOptions {
            expected,
            uid,
            ..WriteOptions::default()
        };
        self.rollback_with(to_revision, options).await
    }

    pub async fn rollback_with(
        &self,
        to_revision: u64,
        options: WriteOptions,
    ) -> Result<Arc<Published>, WriteError> {
        self.check_writable("the request is", 0)?;
        let document = match &self.engine {
            Engine::File(engine) => engine.retained(to_revision)?,
            #[cfg(feature = "etcd")]
            Engine::Etcd(engine) => engine.retained(to_revision).await?,
        };
        self.write(Change::Set(document), Source::Rollback, options)
            .await
    }

    async fn write(
        &self,
        change: Change,
        source: Source,
        options: WriteOptions,
    ) -> Result<Arc<Published>, WriteError> {
        let write = Write {
            change,
            expected: options.expected,
            origin: Origin {
                source,
                uid: options.uid,
            },
            canary: options.canary,
            force: options.force,
        };
        match &self.engine {
            Engine::File(engine) => engine.commit(write).await,
            #[cfg(feature = "etcd")]
            Engine::Etcd(engine) => engine.commit(write).await,
        }
    }

    fn check_writable(&self, what: &'static str, size: usize) -> Result<(), WriteError> {
        if self.limits.read_only {
            return Err(WriteError::ReadOnly(match &self.engine {
                Engine::File(_) => "change the args file and send SIGHUP",
                #[cfg(feature = "etcd")]
                Engine::Etcd(_) => "write through a broker without --read-only, or to etcd",
            }));
        }
        admit::check_size(&self.limits, what, size)?;
        #[cfg(feature = "etcd")]
        if let Engine::Etcd(engine) = &self.engine {
            engine.check_request_size(what, size)?;
        }
        Ok(())
    }

    /// The retained revisions, oldest first.
    pub async fn revisions(&self) -> Result<Vec<pb::Revision>, WriteError> {
        match &self.engine {
            Engine::File(engine) => Ok(engine.revisions()),
            #[cfg(feature = "etcd")]
            Engine::Etcd(engine) => engine.revisions().await,
        }
    }

    /// The retained revisions after `revision`, oldest first, or `None` if
    /// some revision after it is no longer retained.
    pub async fn revisions_after(&self, revision: u64) -> Option<Vec<pb::Args>> {
        match &self.engine {
            Engine::File(engine) => engine.revisions_after(revision),
            #[cfg(feature = "etcd")]
            Engine::Etcd(engine) => engine.revisions_after(revision).await,
        }
    }
}
