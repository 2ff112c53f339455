//! What readers see: the current revision as one immutable snapshot, swapped
//! whole when a new revision is published.
//!
//! Readers load the current snapshot with one atomic pointer load; watchers
//! follow a `watch` channel that holds only the newest snapshot, so a slow
//! watcher skips revisions instead of making the broker buffer them.
use crate::canary::{CanaryRecord, Selector, Who};
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

/// A running canary: the candidate, and whom it is for.
#[derive(Debug)]
pub struct Canary {
    pub candidate: Arc<Published>,
    pub record: CanaryRecord,
    selector: Option<Selector>,
    /// With a bake time: since when every selected follower has applied the
    /// candidate and none rejected it (kept by the bake watcher).
    pub baked_since: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Canary {
    pub fn new(candidate: Arc<Published>, record: CanaryRecord) -> Self {
        // Parsed when the canary started; a record that no longer parses
        // (written by a newer broker) selects nobody.
        let selector = Selector::parse(&record.selector).ok();
        Self {
            candidate,
            record,
            selector,
            baked_since: std::sync::Mutex::new(None),
        }
    }

    pub fn selects(&self, who: Who<'_>) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|s| s.selects(&self.record.chosen, who))
    }
}

/// Documents from this size on are followed by giving freed memory back.
const RELEASE_AFTER_BYTES: usize = 64 * 1024;

/// The published snapshot and its watchers. Engines publish; the service
/// reads.
pub struct Head {
    current: ArcSwap<Published>,
    watch: watch::Sender<Arc<Published>>,
    canary: watch::Sender<Option<Arc<Canary>>>,
}

/// What one follower gets: the stable revision, or (if the running canary
/// selects it) the candidate, whichever is newer, so that neither a
/// promotion nor an abort ever takes it back to an older revision.
pub struct Feed {
    stable: watch::Receiver<Arc<Published>>,
    canary: watch::Receiver<Option<Arc<Canary>>>,
    /// Name and host; none for a plain watcher, which always gets the stable.
    who: Option<(String, String)>,
}

impl Feed {
    /// Waits for a change of the stable revision or of the canary.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        tokio::select! {
            changed = self.stable.changed() => changed,
            changed = self.canary.changed() => changed,
        }
    }

    /// What this follower gets now; marks it seen.
    pub fn current(&mut self) -> Arc<Published> {
        let stable = self.stable.borrow_and_update().clone();
        let canary = self.canary.borrow_and_update();
        match (&self.who, canary.as_ref()) {
            (Some((name, host)), Some(canary))
                if canary.candidate.revision > stable.revision
                    && canary.selects(Who { name, host }) =>
            {
                canary.candidate.clone()
            }
            _ => stable,
        }
    }
}

impl Head {
    pub fn new(first: Arc<Published>) -> Self {
        Self {
            current: ArcSwap::new(first.clone()),
            watch: watch::Sender::new(first),
            canary: watch::Sender::new(None),
        }
    }

    /// What `who` (a follower's name and host; none for a plain watcher) gets.
    pub fn feed(&self, who: Option<(String, String)>) -> Feed {
        Feed {
            stable: self.watch.subscribe(),
            canary: self.canary.subscribe(),
            who,
        }
    }

    /// The running canary, if any.
    pub fn canary(&self) -> Option<Arc<Canary>> {
        self.canary.borrow().clone()
    }

    /// Sees every start and end of a canary.
    pub fn canary_changes(&self) -> watch::Receiver<Option<Arc<Canary>>> {
        self.canary.subscribe()
    }

    /// Starts, replaces or (with `None`) ends the canary. An engine that also
    /// changes the stable revision publishes it first.
    pub fn set_canary(&self, canary: Option<Arc<Canary>>) {
        self.canary.send_replace(canary);
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
        let large = snapshot.document.json().len() >= RELEASE_AFTER_BYTES;
        self.current.store(snapshot.clone());
        self.watch.send_replace(snapshot);
        // Parsing a document briefly takes about 15 times its size, and glibc
        // keeps freed memory in its arenas: without this the broker's resident
        // size would track its largest parse, not what it holds (for a 1 MiB
        // document, 20 MiB instead of 7). Below this size the peak is small
        // and walking every arena would cost more than it returns.
        if large {
            argsbroker::sys::release_freed_memory();
        }
    }
}
