//! Where the document lives: the args file (one host, [`Store`]) or etcd
//! (many hosts, [`EtcdStore`]). Both publish the same [`Published`]
//! snapshots, so reads and watches are served from memory the same way.
#[cfg(feature = "etcd")]
use crate::etcd::EtcdStore;
use crate::store::{Published, Store, WriteError};
use argsbroker::pb;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;

#[derive(Clone)]
pub enum Backend {
    File(Arc<Store>),
    #[cfg(feature = "etcd")]
    Etcd(Arc<EtcdStore>),
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

impl Backend {
    /// The current snapshot: one atomic load, no lock.
    pub fn current(&self) -> arc_swap::Guard<Arc<Published>> {
        match self {
            Self::File(store) => store.current(),
            #[cfg(feature = "etcd")]
            Self::Etcd(store) => store.current(),
        }
    }

    /// A receiver that sees the current snapshot, then only the newest one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        match self {
            Self::File(store) => store.subscribe(),
            #[cfg(feature = "etcd")]
            Self::Etcd(store) => store.subscribe(),
        }
    }

    pub fn max_args_bytes(&self) -> usize {
        match self {
            Self::File(store) => store.max_args_bytes(),
            #[cfg(feature = "etcd")]
            Self::Etcd(store) => store.max_args_bytes(),
        }
    }

    /// `None` for a file, which is always at hand.
    pub fn contact(&self) -> Option<watch::Receiver<Contact>> {
        match self {
            Self::File(_) => None,
            #[cfg(feature = "etcd")]
            Self::Etcd(store) => Some(store.contact()),
        }
    }

    /// The backend in a few words: `file /etc/app/args.json`, `etcd URLS key KEY`.
    pub fn describe(&self) -> String {
        match self {
            Self::File(store) => format!("file {}", store.args_path().display()),
            #[cfg(feature = "etcd")]
            Self::Etcd(store) => store.describe(),
        }
    }

    pub async fn set(
        &self,
        json: &str,
        expected: Option<u64>,
        uid: Option<u32>,
    ) -> Result<Arc<Published>, WriteError> {
        match self {
            Self::File(store) => store.set(json, expected, uid).await,
            #[cfg(feature = "etcd")]
            Self::Etcd(store) => store.set(json, expected).await,
        }
    }

    pub async fn patch(
        &self,
        merge_patch: &str,
        expected: Option<u64>,
        uid: Option<u32>,
    ) -> Result<Arc<Published>, WriteError> {
        match self {
            Self::File(store) => store.patch(merge_patch, expected, uid).await,
            #[cfg(feature = "etcd")]
            Self::Etcd(store) => store.patch(merge_patch, expected).await,
        }
    }

    pub async fn rollback(
        &self,
        to_revision: u64,
        expected: Option<u64>,
        uid: Option<u32>,
    ) -> Result<Arc<Published>, WriteError> {
        match self {
            Self::File(store) => store.rollback(to_revision, expected, uid).await,
            #[cfg(feature = "etcd")]
            Self::Etcd(store) => store.rollback(to_revision, expected).await,
        }
    }

    /// The retained revisions, oldest first.
    pub async fn revisions(&self) -> Result<Vec<pb::Revision>, WriteError> {
        match self {
            Self::File(store) => Ok(store.revisions()),
            #[cfg(feature = "etcd")]
            Self::Etcd(store) => store.revisions().await,
        }
    }

    /// The retained revisions after `revision`, oldest first, or `None` if
    /// some revision after it is no longer retained.
    pub async fn revisions_after(&self, revision: u64) -> Option<Vec<pb::Args>> {
        match self {
            Self::File(store) => store.revisions_after(revision),
            #[cfg(feature = "etcd")]
            Self::Etcd(store) => store.revisions_after(revision).await,
        }
    }
}
