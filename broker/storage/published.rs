//! What readers see: the current revision as one immutable snapshot, swapped
//! whole when a new revision is published.
//!
//! Readers load the current snapshot with one atomic pointer load; watchers
//! follow a `watch` channel that holds only the newest snapshot, so a slow
//! watcher skips revisions instead of making the broker buffer them.
use arc_swap::ArcSwap;
use argsbroker::document::Document;
use argsbroker::frame::Frame;
use argsbroker::pb;
use std::sync::Arc;
use tokio::sync::watch;

/// One revision of the document as it is published to readers, with the
/// reply every reader is handed.
#[derive(Debug)]
pub struct Published {
    pub revision: u64,
    pub document: Document,
    /// The whole-document `Args`, built once per revision.
    pub reply: pb::Args,
    /// The same reply as a gRPC response body carries it, encoded once.
    pub frame: Frame,
}

impl Published {
    pub fn new(revision: u64, document: Document, lineage: &str) -> Self {
        let reply = pb::Args {
            revision,
            json: document.json().clone(),
            sha256: document.sha256().to_owned(),
            not_modified: false,
            lineage: lineage.to_owned(),
        };
        Self {
            revision,
            document,
            frame: Frame::new(&reply),
            reply,
        }
    }
}

/// The published snapshot and its watchers. Engines publish; the service
/// reads.
pub struct Head {
    current: ArcSwap<Published>,
    watch: watch::Sender<Arc<Published>>,
}

impl Head {
    pub fn new(first: Arc<Published>) -> Self {
        Self {
            current: ArcSwap::new(first.clone()),
            watch: watch::Sender::new(first),
        }
    }

    /// The current snapshot: one atomic load, no lock.
    pub fn current(&self) -> arc_swap::Guard<Arc<Published>> {
        self.current.load()
    }

    pub fn current_full(&self) -> Arc<Published> {
        self.current.load_full()
    }

    /// A receiver that sees the current snapshot, then only the newest one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.watch.subscribe()
    }

    /// Makes `snapshot` the one every reader gets. The caller orders
    /// publications (one committer, or the etcd engine's lock).
    pub fn publish(&self, snapshot: Arc<Published>) {
        self.current.store(snapshot.clone());
        self.watch.send_replace(snapshot);
        // Parsing a document briefly takes about 15 times its size, and glibc
        // keeps freed memory in its arenas: without this the broker's resident
        // size would track its largest parse, not what it holds (for a 1 MiB
        // document, 20 MiB instead of 7).
        argsbroker::sys::release_freed_memory();
    }
}
