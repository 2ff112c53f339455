//! `start_broker`: the broker's engine serving a temp directory's
//! `args.json` on `b.sock`, in this process, until dropped.
use crate::storage::admit::Limits;
use crate::storage::file::{ArgsFile, FileEngine, OpenError};
use crate::storage::{Engine, Published, Storage, WriteError};
use crate::{access, connections, server, socket};
use argsbroker::pb::{self, args_broker_client::ArgsBrokerClient};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub const DOC: &str = r#"{"a": 1, "list": [10, 20], "nested": {"k": "v"}}"#;
pub const DOC_COMPACT: &str = r#"{"a":1,"list":[10,20],"nested":{"k":"v"}}"#;

pub fn limits() -> Limits {
    Limits {
        max_args_bytes: 16 * 1024 * 1024,
        history: 100,
        history_bytes: 64 * 1024 * 1024,
        read_only: false,
        schema: None,
    }
}

/// A temp directory holding `args.json` with `args`.
pub fn site(args: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("args.json"), args).expect("write args");
    dir
}

/// The storage of one args file, and its file engine (for reloads and the
/// history, read without a round trip).
pub struct Store {
    pub storage: Storage,
    pub file: Arc<FileEngine>,
}

impl Store {
    pub fn current(&self) -> arc_swap::Guard<Arc<Published>> {
        self.storage.current()
    }

    pub async fn set(
        &self,
        json: &str,
        expected: Option<u64>,
        uid: Option<u32>,
    ) -> Result<Arc<Published>, WriteError> {
        self.storage.set(json, expected, uid).await
    }

    pub async fn patch(
        &self,
        patch: &str,
        expected: Option<u64>,
        uid: Option<u32>,
    ) -> Result<Arc<Published>, WriteError> {
        self.storage.patch(patch, expected, uid).await
    }

    pub async fn rollback(
        &self,
        to: u64,
        expected: Option<u64>,
        uid: Option<u32>,
    ) -> Result<Arc<Published>, WriteError> {
        self.storage.rollback(to, expected, uid).await
    }

    pub async fn reload(&self) -> Result<Option<Arc<Published>>, OpenError> {
        self.file.reload().await
    }

    pub fn revisions(&self) -> Vec<pb::Revision> {
        self.file.revisions()
    }

    pub fn revisions_after(&self, revision: u64) -> Option<Vec<pb::Args>> {
        self.file.revisions_after(revision)
    }
}

/// Opens the store of `dir/args.json` (state in `dir/args.json.state`).
pub fn open(dir: &Path, limits: Limits) -> Store {
    try_open(dir, limits).expect("open the store")
}

pub fn try_open(dir: &Path, limits: Limits) -> Result<Store, OpenError> {
    let args = ArgsFile::read(
        &dir.join("args.json"),
        limits.max_args_bytes,
        limits.schema.as_deref(),
    )?;
    let limits = Arc::new(limits);
    let (file, head) = FileEngine::open(args, &dir.join("args.json.state"), limits.clone())?;
    let file = Arc::new(file);
    Ok(Store {
        storage: Storage::new(head, limits, Engine::File(file.clone())),
        file,
    })
}

/// A broker serving in this process; stopped (watches ended, socket
/// removed) when dropped.
pub struct Broker {
    pub socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
}

/// Serves `dir/args.json` on `dir/b.sock`, returning once the socket is bound.
pub async fn start_broker(dir: &Path, limits: Limits) -> Broker {
    let socket = dir.join("b.sock");
    let store = open(dir, limits).storage;
    let mut claim = socket::claim(&socket, false).expect("claim the socket");
    let listener = claim
        .bind(socket::Options {
            mode: 0o600,
            group: None,
        })
        .expect("bind the socket");
    let listener = tokio::net::UnixListener::from_std(listener).expect("listener");
    let config = server::Config {
        limits: connections::Limits {
            max_connections: 100,
            handshake_timeout: Duration::from_secs(10),
        },
        keepalive: Duration::from_secs(30),
        policy: access::Policy::new(vec![], vec![], vec![], vec![]),
        rebind: None,
        followers: std::sync::Arc::new(crate::followers::Followers::new()),
        metrics: None,
        page_values: true,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _claim = claim;
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(err) = server::run(listener, store, config, shutdown).await {
            panic!("the server failed: {err}");
        }
    });
    Broker {
        socket,
        stop: Some(stop),
    }
}

impl Broker {
    pub async fn client(&self) -> ArgsBrokerClient<Channel> {
        argsbroker::client::connect(&self.socket)
            .await
            .expect("connect")
    }

    /// The whole document, by GetArgs.
    pub async fn current(&self) -> pb::Args {
        self.client()
            .await
            .get_args(pb::GetArgsRequest::default())
            .await
            .expect("GetArgs")
            .into_inner()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
