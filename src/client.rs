//! Connect to a broker over its Unix socket and follow its args.
//!
//! [`follow`] waits for the broker (with backoff, up to a deadline), takes the
//! first snapshot, then keeps a background task on `WatchArgs` that swaps a
//! shared pointer on each new revision. Readers call [`Live::load`]: one
//! atomic pointer load, no lock and no RPC per read. When the broker goes
//! away, the last snapshot stays and the task reconnects with jittered,
//! capped exponential backoff.
use crate::document::{Document, DocumentError};
use crate::pb::{self, args_broker_client::ArgsBrokerClient};
use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Streaming;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The args service's gRPC name, whose health says whether the broker is in
/// touch with its backend.
const ARGS_SERVICE: &str = "argsbroker.v1.ArgsBroker";

/// Reports not yet sent to the broker; each states the whole position, and
/// there is one per revision at most.
const REPORTS_QUEUED: usize = 16;

/// What can go wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected to; `kind` says why when the
    /// system did (no such file, connection refused, permission denied).
    #[error("cannot connect to the broker at {path}: {reason}")]
    Connect {
        path: PathBuf,
        reason: String,
        kind: Option<std::io::ErrorKind>,
    },
    #[error("the broker at {path} answered: {status}")]
    Rpc {
        path: PathBuf,
        status: tonic::Status,
    },
    #[error("the broker at {path} closed the watch before sending a snapshot")]
    EmptyWatch { path: PathBuf },
    #[error("revision {revision} from the broker at {path} was rejected: {reason}")]
    Rejected {
        path: PathBuf,
        revision: u64,
        reason: String,
    },
    #[error("the broker at {path} sent a document that is not valid: {source}")]
    BadDocument {
        path: PathBuf,
        source: DocumentError,
    },
    #[error("{0} is not a socket")]
    NotASocket(PathBuf),
    #[error("no broker answered at {path} within {waited:?} (last error: {last})")]
    Unreachable {
        path: PathBuf,
        waited: Duration,
        last: Box<ClientError>,
    },
}

/// Opens a gRPC channel to the broker at `socket`.
///
/// The channel's `:authority` is `localhost`, not the socket path: the
/// broker's HTTP/2 layer refuses a path there as a malformed authority.
pub async fn connect(socket: impl AsRef<Path>) -> Result<ArgsBrokerClient<Channel>, ClientError> {
    let channel = channel(socket.as_ref()).await?;
    // The broker bounds the document size; the client takes what it is sent.
    Ok(ArgsBrokerClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// A gRPC channel to the broker's socket (see [`connect`]).
async fn channel(path: &Path) -> Result<Channel, ClientError> {
    let path = path.to_path_buf();
    if std::fs::metadata(&path).is_ok_and(|m| !m.file_type().is_socket()) {
        return Err(ClientError::NotASocket(path));
    }
    let connector_path = path.clone();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = connector_path.clone();
            async move {
                // Woken for reading only: see `quiet`.
                Ok::<_, std::io::Error>(TokioIo::new(
                    crate::quiet::QuietStream::connect(path).await?,
                ))
            }
        }))
        .await
        .map_err(|err| connect_error(path, &err));
    channel
}

/// Says why a connection failed in a few words, from the system's error
/// under tonic's: `no such file`, `connection refused`, `permission denied`.
fn connect_error(path: PathBuf, err: &tonic::transport::Error) -> ClientError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            let reason = match io.kind() {
                std::io::ErrorKind::NotFound => "no such file".to_owned(),
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
                _ => io.to_string(),
            };
            return ClientError::Connect {
                path,
                reason,
                kind: Some(io.kind()),
            };
        }
        cause = c.source();
    }
    ClientError::Connect {
        path,
        reason: crate::one_line(err),
        kind: None,
    }
}

/// One revision of the args, as a client holds it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The broker's revision of this document.
    pub revision: u64,
    /// The lineage the revision belongs to (the broker's state); empty when
    /// not known (a broker or cache file from before lineages).
    pub lineage: String,
    /// The document, parsed and with its compact text.
    pub document: Document,
}

impl Snapshot {
    fn from_reply(path: &Path, args: pb::Args) -> Result<Self, ClientError> {
        let document = Document::from_broker(args.json, args.sha256).map_err(|source| {
            ClientError::BadDocument {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Ok(Self {
            revision: args.revision,
            lineage: args.lineage,
            document,
        })
    }
}

/// The live args: a value prepared from each snapshot, swapped atomically
/// when a new revision arrives. Cloning shares the same cache.
pub struct Live<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<T> {
    current: ArcSwap<T>,
    revision: AtomicU64,
    /// Lineage and content hash of the current value (written by the one
    /// following task, with `current`).
    served: ArcSwap<Served>,
    connected: AtomicBool,
    /// Whether the broker is in touch with where the args live (etcd), as
    /// its health service says; true for a broker serving a file.
    backend_connected: AtomicBool,
    /// Milliseconds since the Unix epoch of the last message from the broker.
    last_contact_ms: AtomicU64,
    /// The revision again, for those who wait for one (see
    /// [`Live::revision_at_least`]); sent after `current` is stored.
    revisions: tokio::sync::watch::Sender<u64>,
    /// The last revision this follower's validation rejected, until a
    /// newer one is applied.
    rejected: arc_swap::ArcSwapOption<Rejected>,
}

/// A revision the follower did not apply, and why; it keeps serving the
/// one before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub revision: u64,
    pub reason: String,
}

/// Checks a new revision before it is served: `Err(reason)` rejects it.
pub type Validate = Arc<dyn Fn(&Snapshot) -> Result<(), String> + Send + Sync>;

/// How a follower presents itself to the broker, and what it accepts.
#[derive(Clone, Default)]
pub struct FollowOptions {
    /// Shown in `broker status` (the broker adds the pid and uid), and what
    /// a canary selects this follower by (`--canary 25%` hashes it,
    /// `name=GLOB` matches it): give each process its own, the same across
    /// restarts. A selected follower gets the canary's candidate like any
    /// newer revision ([`Live::revision`] says which it serves). Default:
    /// this program's name.
    pub name: Option<String>,
    /// Run on each new revision before it is served; a rejected revision
    /// is not served, and the broker is told why.
    pub validate: Option<Validate>,
}

impl FollowOptions {
    fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            std::env::args_os()
                .next()
                .and_then(|arg0| {
                    Path::new(&arg0)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                })
                .unwrap_or_else(|| "follower".to_owned())
        })
    }
}

impl<T> Shared<T> {
    /// Holding `first`, prepared, as if just heard from a broker.
    fn holding(first: Snapshot, prepare: impl FnOnce(Snapshot) -> T) -> Self {
        Self {
            revision: AtomicU64::new(first.revision),
            revisions: tokio::sync::watch::Sender::new(first.revision),
            served: ArcSwap::from_pointee(Served::of(&first)),
            current: ArcSwap::from_pointee(prepare(first)),
            connected: AtomicBool::new(true),
            backend_connected: AtomicBool::new(true),
            last_contact_ms: AtomicU64::new(now_ms()),
            rejected: arc_swap::ArcSwapOption::empty(),
        }
    }
}

impl<T> Live<T> {
    /// A `Live` that holds `snapshot` (prepared once) for good and reports
    /// itself connected: no broker, no background task. For in-process tests
    /// of what readers do with the args (the worker's HTTP surface); a `Live`
    /// that has lost its broker is [`follow_from`] with a socket nobody serves.
    pub fn fixed(snapshot: Snapshot, prepare: impl FnOnce(Snapshot) -> T) -> Self {
        Self {
            shared: Arc::new(Shared::holding(snapshot, prepare)),
        }
    }

    /// The current value: one atomic load, no lock.
    pub fn load(&self) -> arc_swap::Guard<Arc<T>> {
        self.shared.current.load()
    }

    /// The revision of the current value.
    pub fn revision(&self) -> u64 {
        self.shared.revision.load(Ordering::Acquire)
    }

    /// The lineage of the current value: the id of the broker's state it
    /// came from (empty if not known).
    pub fn lineage(&self) -> Arc<str> {
        self.shared.served.load().lineage.clone()
    }

    /// Whether the watch on the broker is up right now.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// The newest revision this follower rejected (its validation failed),
    /// unless a newer one was applied since.
    pub fn rejected(&self) -> Option<Arc<Rejected>> {
        self.shared.rejected.load_full()
    }

    /// Whether the broker was, when last heard from, in touch with where the
    /// args live: false while its etcd is out of reach (it serves the last
    /// revision etcd sent). Always true for a broker serving a file.
    pub fn backend_connected(&self) -> bool {
        self.shared.backend_connected.load(Ordering::Acquire)
    }

    /// Zero while the watch is up; otherwise how long ago the broker was last
    /// heard from (how stale the served args may be).
    pub fn since_last_contact(&self) -> Duration {
        if self.is_connected() {
            return Duration::ZERO;
        }
        let last = self.shared.last_contact_ms.load(Ordering::Acquire);
        Duration::from_millis(now_ms().saturating_sub(last))
    }

    /// Waits, without polling, until the revision served is at least `min`
    /// and returns it (at once if it already is). Bound it with a timeout:
    /// it waits for as long as no such revision arrives.
    pub async fn revision_at_least(&self, min: u64) -> u64 {
        let mut revisions = self.shared.revisions.subscribe();
        // The sender lives in `shared`, which `self` holds: the channel
        // cannot close while this waits.
        let reached = revisions
            .wait_for(|revision| *revision >= min)
            .await
            .map(|revision| *revision);
        reached.unwrap_or_else(|_| self.revision())
    }
}

/// Waits up to `startup_timeout` for the broker at `socket`, takes its
/// current args, and follows every newer revision in a background task that
/// ends once every [`Live`] handle is dropped.
///
/// `prepare` runs once per revision, so that whatever readers need (an HTTP
/// body, a typed config) is built once and not per read.
pub async fn follow<T, F>(
    socket: impl AsRef<Path>,
    startup_timeout: Duration,
    prepare: F,
) -> Result<Live<T>, ClientError>
where
    T: Send + Sync + 'static,
    F: Fn(Snapshot) -> T + Send + Sync + 'static,
{
    follow_with(socket, startup_timeout, FollowOptions::default(), prepare).await
}

/// [`follow`], naming this follower to the broker and checking each
/// revision with `options.validate` before it is served. The first
/// revision must pass (`ClientError::Rejected` otherwise); a later one that
/// fails is not served, and the broker (`broker status`, a write waiting
/// with `--wait`) is told which and why.
pub async fn follow_with<T, F>(
    socket: impl AsRef<Path>,
    startup_timeout: Duration,
    options: FollowOptions,
    prepare: F,
) -> Result<Live<T>, ClientError>
where
    T: Send + Sync + 'static,
    F: Fn(Snapshot) -> T + Send + Sync + 'static,
{
    let path = socket.as_ref().to_path_buf();
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    let name = options.name();
    let (first, watches) = loop {
        match open_watch(&path, &name, None).await {
            Ok(opened) => break opened,
            // Waiting cannot help: the broker never replaces a file that is not a socket.
            Err(err @ ClientError::NotASocket(_)) => return Err(err),
            Err(err) if started.elapsed() >= startup_timeout => {
                return Err(ClientError::Unreachable {
                    path,
                    waited: startup_timeout,
                    last: Box::new(err),
                });
            }
            Err(err) => {
                tracing::debug!(%err, "broker not ready yet");
                let left = startup_timeout.saturating_sub(started.elapsed());
                tokio::time::sleep(backoff.next().min(left)).await;
            }
        }
    };
    if let Some(validate) = &options.validate {
        if let Err(reason) = validate(&first) {
            return Err(ClientError::Rejected {
                path,
                revision: first.revision,
                reason,
            });
        }
    }
    Ok(start(path, first, Some(watches), options, prepare))
}

/// Serves `initial` (say, a snapshot cached on disk) right away, marked as
/// not connected, and keeps trying to reach the broker at `socket` in the
/// background; a newer revision from the broker replaces it.
pub fn follow_from<T, F>(socket: impl AsRef<Path>, initial: Snapshot, prepare: F) -> Live<T>
where
    T: Send + Sync + 'static,
    F: Fn(Snapshot) -> T + Send + Sync + 'static,
{
    follow_from_with(socket, initial, FollowOptions::default(), prepare)
}

/// [`follow_from`] with [`FollowOptions`] (see [`follow_with`]).
pub fn follow_from_with<T, F>(
    socket: impl AsRef<Path>,
    initial: Snapshot,
    options: FollowOptions,
    prepare: F,
) -> Live<T>
where
    T: Send + Sync + 'static,
    F: Fn(Snapshot) -> T + Send + Sync + 'static,
{
    let live = start(
        socket.as_ref().to_path_buf(),
        initial,
        None,
        options,
        prepare,
    );
    live.shared.connected.store(false, Ordering::Release);
    live
}

fn start<T, F>(
    path: PathBuf,
    first: Snapshot,
    watches: Option<Watches>,
    options: FollowOptions,
    prepare: F,
) -> Live<T>
where
    T: Send + Sync + 'static,
    F: Fn(Snapshot) -> T + Send + Sync + 'static,
{
    let shared = Arc::new(Shared::holding(first, &prepare));
    tokio::spawn(keep_following(
        Arc::downgrade(&shared),
        path,
        watches,
        options,
        prepare,
    ));
    Live { shared }
}

/// The streams a follower holds on the broker: the args (a Follow stream,
/// or WatchArgs from a broker without Follow), where this follower reports
/// what it applied, and the args service's health (NOT_SERVING while the
/// broker's etcd is out of reach; `None` from a broker without it).
struct Watches {
    args: Streaming<pb::Args>,
    reports: Option<mpsc::Sender<pb::FollowRequest>>,
    health: Option<Streaming<HealthCheckResponse>>,
}

async fn open_watch(
    path: &Path,
    name: &str,
    served: Option<pb::FollowRequest>,
) -> Result<(Snapshot, Watches), ClientError> {
    let channel = channel(path).await?;
    let mut client = ArgsBrokerClient::new(channel.clone())
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let rpc = |status| ClientError::Rpc {
        path: path.to_path_buf(),
        status,
    };
    let (reports, requests) = mpsc::channel(REPORTS_QUEUED);
    let hello = pb::FollowRequest {
        name: name.to_owned(),
        ..served.unwrap_or_default()
    };
    // The channel has room: this is its first message.
    let _ = reports.try_send(hello);
    let (mut args, reports) = match client
        .follow(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
    {
        Ok(reply) => (reply.into_inner(), Some(reports)),
        // A broker from before Follow: watch, without reports.
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            let reply = client
                .watch_args(pb::WatchArgsRequest {
                    start_revision: None,
                })
                .await
                .map_err(rpc)?;
            (reply.into_inner(), None)
        }
        Err(status) => return Err(rpc(status)),
    };
    let health = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: ARGS_SERVICE.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
        .ok();
    match args.message().await.map_err(rpc)? {
        Some(reply) => Ok((
            Snapshot::from_reply(path, reply)?,
            Watches {
                args,
                reports,
                health,
            },
        )),
        None => Err(ClientError::EmptyWatch {
            path: path.to_path_buf(),
        }),
    }
}

/// What this follower tells the broker: the revision it serves, and the
/// last one it rejected.
fn position<T>(live: &Shared<T>, name: &str) -> pb::FollowRequest {
    let served = live.served.load();
    let rejected = live.rejected.load();
    pb::FollowRequest {
        name: name.to_owned(),
        applied_revision: served.revision,
        applied_lineage: served.lineage.to_string(),
        rejected_revision: rejected.as_ref().map_or(0, |r| r.revision),
        rejected_reason: rejected
            .as_ref()
            .map(|r| r.reason.clone())
            .unwrap_or_default(),
    }
}

async fn report<T>(
    reports: &Option<mpsc::Sender<pb::FollowRequest>>,
    live: &Shared<T>,
    name: &str,
) {
    if let Some(reports) = reports {
        // A closed channel means the stream is gone: the loop reconnects.
        let _ = reports.send(position(live, name)).await;
    }
}

/// The next health status, or never if there is no health watch (or it ended).
async fn next_health(health: &mut Option<Streaming<HealthCheckResponse>>) -> Option<ServingStatus> {
    let Some(stream) = health else {
        return std::future::pending().await;
    };
    match stream.message().await {
        Ok(Some(reply)) => Some(reply.status()),
        _ => {
            *health = None;
            None
        }
    }
}

/// Follows the open watch until it ends, then reconnects with backoff and
/// resubscribes (the first message is the broker's current snapshot); ends
/// when every `Live` handle is gone.
async fn keep_following<T, F>(
    shared: Weak<Shared<T>>,
    path: PathBuf,
    mut watches: Option<Watches>,
    options: FollowOptions,
    prepare: F,
) where
    F: Fn(Snapshot) -> T,
{
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
    let name = options.name();
    loop {
        if let Some(Watches {
            args: mut open,
            reports,
            mut health,
        }) = watches.take()
        {
            if let Some(live) = shared.upgrade() {
                report(&reports, &live, &name).await;
            }
            loop {
                let message = tokio::select! {
                    message = open.message() => message,
                    Some(status) = next_health(&mut health) => {
                        let Some(live) = shared.upgrade() else { return };
                        let connected = status != ServingStatus::NotServing;
                        if live.backend_connected.swap(connected, Ordering::AcqRel) != connected {
                            match connected {
                                true => tracing::info!("the broker is in touch with its backend again"),
                                false => tracing::warn!("the broker says it is not serving (its etcd is out of reach, or it is stopping); serving the last args"),
                            }
                        }
                        continue;
                    }
                };
                let Some(live) = shared.upgrade() else { return };
                match message {
                    Ok(Some(args)) => {
                        // `bench stages` times the arrival (trace: off by default).
                        tracing::trace!(revision = args.revision, "args received");
                        match Snapshot::from_reply(&path, args) {
                            Ok(snapshot) => {
                                if apply(&live, snapshot, &prepare, &options.validate) {
                                    report(&reports, &live, &name).await;
                                }
                            }
                            Err(err) => tracing::warn!(%err, "ignoring a snapshot"),
                        }
                    }
                    Ok(None) => {
                        tracing::warn!(path = %path.display(), "the broker ended the watch; serving the last args while reconnecting");
                        break;
                    }
                    Err(status) => {
                        tracing::warn!(path = %path.display(), %status, "lost the broker; serving the last args while reconnecting");
                        break;
                    }
                }
            }
            let Some(live) = shared.upgrade() else { return };
            live.last_contact_ms.store(now_ms(), Ordering::Release);
            live.connected.store(false, Ordering::Release);
        }
        backoff.reset();
        watches = loop {
            tokio::time::sleep(backoff.next()).await;
            let Some(live) = shared.upgrade() else { return };
            match open_watch(&path, &name, Some(position(&live, &name))).await {
                Ok((snapshot, open)) => {
                    tracing::info!(path = %path.display(), revision = snapshot.revision, "connected to the broker");
                    apply(&live, snapshot, &prepare, &options.validate);
                    break Some(open);
                }
                Err(err) => tracing::debug!(%err, "broker still unreachable"),
            }
        };
    }
}

/// What identifies the value served: enough to decide about an offered one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub revision: u64,
    pub lineage: Arc<str>,
    pub sha256: Arc<str>,
}

impl Served {
    fn of(snapshot: &Snapshot) -> Self {
        Self {
            revision: snapshot.revision,
            lineage: snapshot.lineage.as_str().into(),
            sha256: snapshot.document.sha256().into(),
        }
    }
}

/// What to do with a snapshot the broker offers, given the one served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A newer revision of the same lineage: serve it.
    Newer,
    /// The same revision and content: nothing to do.
    Same,
    /// An older revision of the same lineage: keep the newer one served.
    Older,
    /// Another lineage (the broker's state was reset or replaced), or the
    /// same revision with other content: serve the broker's at once.
    Replaced,
    /// What is served has no known lineage (an old cache file) and the
    /// broker's has one: serve the broker's.
    FirstLineage,
}

/// Within one lineage what is served never goes back; a different lineage,
/// or the same revision naming other content, is the broker's truth and is
/// adopted at once.
pub fn decide(served: &Served, offered: &Served) -> Decision {
    if served.lineage != offered.lineage {
        return if served.lineage.is_empty() {
            Decision::FirstLineage
        } else {
            Decision::Replaced
        };
    }
    match offered.revision.cmp(&served.revision) {
        std::cmp::Ordering::Greater => Decision::Newer,
        std::cmp::Ordering::Less => Decision::Older,
        std::cmp::Ordering::Equal if offered.sha256 == served.sha256 => Decision::Same,
        std::cmp::Ordering::Equal => Decision::Replaced,
    }
}

/// Publishes `snapshot` as [`decide`] says: within one lineage what a worker
/// serves never goes back to an older revision; one that `validate`
/// rejects is not served. Returns whether what the follower would report
/// changed (a revision applied or rejected).
fn apply<T>(
    live: &Shared<T>,
    snapshot: Snapshot,
    prepare: &impl Fn(Snapshot) -> T,
    validate: &Option<Validate>,
) -> bool {
    live.connected.store(true, Ordering::Release);
    live.last_contact_ms.store(now_ms(), Ordering::Release);
    let served = live.served.load_full();
    let offered = Served::of(&snapshot);
    let revision = snapshot.revision;
    let decision = decide(&served, &offered);
    match decision {
        Decision::Same => return false,
        Decision::Older => {
            tracing::warn!(
                served = served.revision,
                offered = revision,
                lineage = %served.lineage,
                "the broker offers an older revision than the one served; keeping the newer one"
            );
            return false;
        }
        _ => {}
    }
    if let Some(validate) = validate {
        if let Err(reason) = validate(&snapshot) {
            tracing::warn!(
                revision,
                %reason,
                serving = served.revision,
                "rejected a revision: keeping the one served"
            );
            let rejected = Rejected { revision, reason };
            let changed = live.rejected.load().as_deref() != Some(&rejected);
            live.rejected.store(Some(Arc::new(rejected)));
            return changed;
        }
    }
    match decision {
        Decision::Same | Decision::Older => {}
        Decision::Newer => tracing::debug!(revision, "args updated"),
        Decision::Replaced => tracing::warn!(
            served_revision = served.revision,
            served_lineage = %served.lineage,
            lineage = %offered.lineage,
            sha256 = %offered.sha256,
            "the broker's args have a new lineage (its state was reset or replaced); serving its revision {revision}"
        ),
        Decision::FirstLineage => tracing::info!(
            lineage = %offered.lineage,
            "the args served had no lineage; following the broker's, serving its revision {revision}"
        ),
    }
    live.current.store(Arc::new(prepare(snapshot)));
    live.served.store(Arc::new(offered));
    live.revision.store(revision, Ordering::Release);
    live.rejected.store(None);
    live.revisions.send_replace(revision);
    true
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Capped exponential backoff with full jitter, so that many workers that
/// lost the same broker do not all come back in the same millisecond.
struct Backoff {
    base: Duration,
    cap: Duration,
    current: Duration,
    seed: u64,
}

impl Backoff {
    fn new(base: Duration, cap: Duration) -> Self {
        // A random seed from the standard library's per-process hasher keys.
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            | 1;
        Self {
            base,
            cap,
            current: base,
            seed,
        }
    }

    fn reset(&mut self) {
        self.current = self.base;
    }

    /// A delay between half and all of the current step; the step doubles up to the cap.
    fn next(&mut self) -> Duration {
        // xorshift64
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let step = self.current;
        self.current = (self.current * 2).min(self.cap);
        let half = step / 2;
        half + Duration::from_nanos(self.seed % (half.as_nanos() as u64 + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jittered_and_capped() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let delays: Vec<Duration> = (0..8).map(|_| b.next()).collect();
        let steps = [10, 20, 40, 80, 100, 100, 100, 100];
        for (d, step) in delays.iter().zip(steps) {
            let step = Duration::from_millis(step);
            assert!(
                *d >= step / 2 && *d <= step,
                "{d:?} not within [{:?}, {step:?}]",
                step / 2
            );
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(10));
    }

    fn served(revision: u64, lineage: &str, sha256: &str) -> Served {
        Served {
            revision,
            lineage: lineage.into(),
            sha256: sha256.into(),
        }
    }

    #[test]
    fn adopt_or_keep() {
        let now = served(5, "aaaa", "s5");
        // Within one lineage: forward only.
        assert_eq!(decide(&now, &served(6, "aaaa", "s6")), Decision::Newer);
        assert_eq!(decide(&now, &served(5, "aaaa", "s5")), Decision::Same);
        assert_eq!(decide(&now, &served(4, "aaaa", "s4")), Decision::Older);
        // The same revision naming other content: the broker's is adopted.
        assert_eq!(decide(&now, &served(5, "aaaa", "xx")), Decision::Replaced);
        // Another lineage is adopted whatever its revision.
        assert_eq!(decide(&now, &served(1, "bbbb", "s1")), Decision::Replaced);
        assert_eq!(decide(&now, &served(5, "bbbb", "s5")), Decision::Replaced);
        assert_eq!(decide(&now, &served(9, "bbbb", "s9")), Decision::Replaced);
        // A broker from before lineages: another lineage too.
        assert_eq!(decide(&now, &served(1, "", "s1")), Decision::Replaced);
        // An old cache file (no lineage) gives way to the broker's.
        let cached = served(5, "", "s5");
        assert_eq!(
            decide(&cached, &served(1, "aaaa", "s1")),
            Decision::FirstLineage
        );
        assert_eq!(
            decide(&cached, &served(5, "aaaa", "s5")),
            Decision::FirstLineage
        );
        // Two brokers from before lineages: forward only, as before.
        assert_eq!(decide(&cached, &served(4, "", "s4")), Decision::Older);
    }
}
