//! The many-hosts backend: the document lives in etcd at one key, as compact
//! JSON text, and every host's broker serves its own in-memory snapshot of it.
//!
//! Revisions are etcd's (the key's `mod_revision`), so one revision names one
//! document on every host; the lineage is the cluster id and the key's
//! `create_revision`, so a key made again or a cluster rebuilt is a new
//! lineage. Writes are etcd transactions that compare the key's revision, and
//! are acknowledged only once etcd committed them. A follow task reads the key,
//! then watches it from the next revision; after a disconnect or a compaction
//! it reads again and goes on. The newest snapshot is kept in the state
//! directory as the last-known-good copy, served when a broker starts while
//! etcd is out of reach.
mod canary;

use super::admit::Source;
use super::admit::{satisfies, Change, EndCanary, Limits, Plan, Write};
pub use super::error::EtcdError;
use super::file::ArgsFile;
use super::{Canary, Contact, Head, Published, WriteError};
use crate::canary::CanaryRecord;
use argsbroker::document::Document;
use argsbroker::lock;
use argsbroker::pb;
use argsbroker::schema::Schema;
use canary::{canary_key, Kept, Observed, Parts, Value, FORCED};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, KvClient, ResponseHeader,
    TlsOptions, Txn, TxnOp, WatchOptions,
};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// What etcd spends on a request beyond the document: the key, the
/// transaction's compares and framing. Kept generous.
const REQUEST_OVERHEAD: usize = 4 * 1024;

/// The largest etcd response the broker decodes (a watch response may carry
/// several revisions of a document at etcd's request limit).
const MAX_DECODING_BYTES: usize = 256 * 1024 * 1024;

/// How often a write that loses a compare-and-set race to another host is
/// merged again before it gives up.
const MAX_ATTEMPTS: usize = 64;

/// How long a request that could not be sent waits before it is sent again.
const UNSENT_PAUSE: Duration = Duration::from_millis(20);

/// How often, per endpoint, a request that could not be sent is sent again.
const UNSENT_TRIES_PER_ENDPOINT: usize = 3;

/// The last-known-good copy's file, in the state directory.
const LAST_KNOWN_GOOD: &str = "etcd-last-known-good";

/// How the broker reaches etcd, from its flags.
pub struct Config {
    pub endpoints: Vec<String>,
    pub key: String,
    /// The `--args` file, read at start: it creates the key if etcd has none.
    pub seed: Option<ArgsFile>,
    pub state_dir: PathBuf,
    /// How long a broker with no last-known-good copy waits for etcd at start.
    pub startup_timeout: Duration,
    /// How long one etcd request may take.
    pub timeout: Duration,
    /// etcd's `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// `--max-args-bytes`, `--history` (how many revisions ListRevisions
    /// walks back), `--schema` (what every value must satisfy).
    pub limits: Arc<Limits>,
    pub tls: Option<Tls>,
    pub user: Option<(String, String)>,
}

/// PEM files for etcd's TLS.
pub struct Tls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Why the broker cannot start on etcd.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read {what} {path}: {source}")]
    ReadPem {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Client(String),
    #[error("etcd at {endpoints} is out of reach ({reason}) after --startup-timeout {timeout:?}, and the state directory {state_dir} holds no last-known-good copy to serve")]
    Unreachable {
        endpoints: String,
        reason: String,
        timeout: Duration,
        state_dir: PathBuf,
    },
    #[error("the key {key} does not exist in etcd at {endpoints}; give --args FILE to create it")]
    NoKey { key: String, endpoints: String },
    #[error("etcd at {endpoints} did not accept the user {user}: {reason} (check --etcd-user, and the password in --etcd-password-file or ARGSBROKER_ETCD_PASSWORD)")]
    Credentials {
        user: String,
        endpoints: String,
        reason: String,
    },
    #[error("etcd at {endpoints} refused to read the key {key}: {reason}")]
    Refused {
        key: String,
        endpoints: String,
        reason: String,
    },
    #[error(
        "the value of {key} in etcd (revision {revision}) is not a valid args document: {reason}"
    )]
    InvalidValue {
        key: String,
        revision: u64,
        reason: String,
    },
    #[error("the args file {path} cannot seed etcd: it is {size} bytes, over the limit of {max} bytes that etcd accepts in one request (--etcd-max-request-bytes {request_bytes})")]
    SeedTooLarge {
        path: PathBuf,
        size: usize,
        max: usize,
        request_bytes: usize,
    },
}

/// How an etcd request failed, as far as the broker can tell.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The request never reached etcd, or etcd refused it before doing anything.
    Unreachable(String),
    /// No connection to the member the client picked: nothing was sent, and
    /// another member may answer the same request.
    Unsent(String),
    /// The request may have reached etcd and may still be committed.
    Unconfirmed(String),
    PermissionDenied(String),
    /// etcd refused to create the key from the seed file (a user that may only read it).
    CreateDenied(String),
    /// A read at a revision etcd no longer keeps.
    Compacted,
    /// Over etcd's own request limit.
    TooLarge(String),
    /// etcd has no such key.
    NoKey,
    Other(String),
}

impl Failure {
    pub(crate) fn of(err: etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        match err {
            E::GRpcStatus(status) => {
                let message = status.message().to_owned();
                match status.code() {
                    tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                        Self::PermissionDenied(message)
                    }
                    // etcd's ErrAuthFailed and ErrUserEmpty (auth is on and
                    // no user was given) come as INVALID_ARGUMENT.
                    tonic::Code::InvalidArgument
                        if message.contains("authentication failed")
                            || message.contains("user name is empty") =>
                    {
                        Self::PermissionDenied(message)
                    }
                    tonic::Code::OutOfRange if message.contains("compacted") => Self::Compacted,
                    // Over etcd's --max-request-bytes (ErrRequestTooLarge).
                    tonic::Code::InvalidArgument if message.contains("request is too large") => {
                        Self::TooLarge(message)
                    }
                    tonic::Code::Unavailable if message.starts_with("tcp connect error") => {
                        Self::Unsent(message)
                    }
                    // Refused before anything was done. Not a connection
                    // lost mid-request ("error reading a body from
                    // connection"): that write may have been committed.
                    tonic::Code::Unavailable
                        if message.contains("error trying to connect")
                            || message.contains("no leader") =>
                    {
                        Self::Unreachable(message)
                    }
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                        Self::Unconfirmed(message)
                    }
                    // The client's own errors ("transport error", "operation
                    // was canceled"): the cause (e.g. a TLS alert) is in the source.
                    tonic::Code::Cancelled | tonic::Code::Unknown => {
                        Self::Unconfirmed(match std::error::Error::source(&status) {
                            Some(source) => argsbroker::one_line(source),
                            None => message,
                        })
                    }
                    _ => Self::Other(message),
                }
            }
            E::TransportError(err) => Self::Unreachable(argsbroker::one_line(&err)),
            E::IoError(err) => Self::Unreachable(err.to_string()),
            other => Self::Other(other.to_string()),
        }
    }

    pub(crate) fn reason(&self) -> String {
        match self {
            Self::Unreachable(reason)
            | Self::Unsent(reason)
            | Self::Unconfirmed(reason)
            | Self::PermissionDenied(reason)
            | Self::CreateDenied(reason)
            | Self::TooLarge(reason)
            | Self::Other(reason) => reason.clone(),
            Self::Compacted => "the revision was compacted".to_owned(),
            Self::NoKey => "no key".to_owned(),
        }
    }
}

/// The key's identity in one etcd cluster: what a lineage is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Incarnation {
    cluster_id: u64,
    create_revision: i64,
    /// The random id a broker wrote beside the key when it made the key
    /// (see [`Meta`]); none for a key made by another client.
    id: Option<u128>,
}

impl Incarnation {
    fn lineage(self) -> String {
        match self.id {
            Some(id) => format!("etcd-{id:032x}"),
            None => format!("etcd-{:016x}-{}", self.cluster_id, self.create_revision),
        }
    }

    fn same_key(self, cluster_id: u64, create_revision: i64) -> bool {
        self.cluster_id == cluster_id && self.create_revision == create_revision
    }
}

/// What a broker writes beside the key (at `KEY\0argsbroker`) in the same
/// transaction as each revision: who made it, and the lineage's random id.
/// The random id tells a key made again apart from the one before even on
/// a cluster rebuilt with the same token, where the cluster id and the
/// key's `create_revision` may be the same again.
#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    /// 32 hex digits, made with the key; empty for a key another client made.
    lineage: String,
    /// The key's `create_revision`; 0 in the transaction that makes the key
    /// (whose revision that will be).
    key_created: i64,
    writer_uid: Option<u32>,
    source: Source,
    unix_millis: u64,
    /// For people, in the history: "canary to 2 followers (2)", "aborted
    /// canary 12: looks slow".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    note: String,
    /// This revision started a canary (its candidate).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    canary: bool,
}

impl Meta {
    fn parse(kv: &KeyValue) -> Option<Self> {
        serde_json::from_slice(kv.value()).ok()
    }

    /// The lineage id this record gives the key incarnation of `key`, if it
    /// was written for that incarnation.
    fn id_for(&self, meta: &KeyValue, key: &KeyValue) -> Option<u128> {
        let ours = match self.key_created {
            0 => meta.mod_revision() == key.create_revision(),
            created => created == key.create_revision(),
        };
        ours.then(|| u128::from_str_radix(&self.lineage, 16).ok())
            .flatten()
    }
}

/// `KEY\0argsbroker`: inside the range `[KEY, KEY\x01)`, which no other key
/// a user names is likely to be, so one range read or watch sees both.
fn meta_key(key: &str) -> String {
    format!("{key}\0argsbroker")
}

fn range_end(key: &str) -> String {
    format!("{key}\x01")
}

/// Whether this broker's etcd user may read and write the meta record
/// beside the key. A user granted the key alone (`etcdctl role
/// grant-permission ROLE readwrite KEY`) may not: the broker then works
/// with the key alone (no writer uids in the history; the lineage from the
/// cluster id and the key's create revision), and says so once.
struct MetaAccess {
    read: AtomicBool,
    write: AtomicBool,
}

impl MetaAccess {
    fn new() -> Self {
        Self {
            read: AtomicBool::new(true),
            write: AtomicBool::new(true),
        }
    }

    fn reads(&self) -> bool {
        self.read.load(Ordering::Relaxed)
    }

    fn writes(&self) -> bool {
        self.write.load(Ordering::Relaxed)
    }

    /// A range read of `[KEY, KEY\x01)` if the meta record may be read.
    fn range(&self, key: &str) -> Option<GetOptions> {
        self.reads()
            .then(|| GetOptions::new().with_range(range_end(key)))
    }

    /// Stops reading (`write` false) or writing the meta record after etcd
    /// refused it; true if it was in use (so the request is worth again).
    fn refused(&self, key: &str, write: bool, reason: &str) -> bool {
        // Not a user without a name or with a wrong password: a user that
        // may not touch what was asked (etcd's ErrPermissionDenied).
        if !reason.contains("permission denied") {
            return false;
        }
        let flag = if write { &self.write } else { &self.read };
        let was = flag.swap(false, Ordering::Relaxed);
        if was {
            tracing::debug!(key, %reason, write, "etcd refused the record beside the key");
        }
        was
    }

    /// Says once, when the broker serves, that it works with the key alone.
    fn tell(&self, key: &str) {
        if self.reads() && self.writes() {
            return;
        }
        tracing::warn!(
            key,
            "etcd does not let the broker's user {} the record beside the key ({}): going on with the key alone (no writer uids in the history; a lineage from the cluster id). Grant the user the key's range to keep them: etcdctl role grant-permission ROLE readwrite KEY --prefix=true",
            if self.reads() { "write" } else { "read" },
            meta_key(key).replace('\0', "\\0")
        );
    }
}

/// What a broker published last: the key incarnation of its snapshot, and
/// the etcd revision of the state it showed (a read's, a watch event's or a
/// write's), so that an older state seen later changes nothing.
struct View {
    incarnation: Incarnation,
    at: i64,
}

pub struct EtcdEngine {
    client: Client,
    key: String,
    /// The endpoints, comma-separated, for messages.
    endpoints: String,
    timeout: Duration,
    max_request_bytes: usize,
    limits: Arc<Limits>,
    head: Arc<Head>,
    /// Held while a snapshot is published: what was published last.
    view: Mutex<View>,
    meta: MetaAccess,
    contact: watch::Sender<Contact>,
    state_dir: PathBuf,
    /// `--etcd-user` and its password (the newest one etcd took, when a
    /// password file is followed), and whether etcd took them yet.
    user: Mutex<Option<(String, String)>>,
    authenticated: AtomicBool,
}

impl EtcdEngine {
    /// Connects, reads the key (creating it from the seed file if etcd has
    /// none) and starts following it. With etcd out of reach, serves the
    /// last-known-good copy if the state directory has one, else waits up to
    /// the startup timeout and fails.
    pub async fn open(config: Config) -> Result<(Arc<Self>, Arc<Head>), StartError> {
        let endpoints = config.endpoints.join(",");
        if let Some(seed) = &config.seed {
            let max = config.max_request_bytes.saturating_sub(REQUEST_OVERHEAD);
            if seed.document().json().len() > max {
                return Err(StartError::SeedTooLarge {
                    path: seed.path().to_path_buf(),
                    size: seed.document().json().len(),
                    max,
                    request_bytes: config.max_request_bytes,
                });
            }
        }
        if config.tls.is_some() {
            if let Some(plain) = config.endpoints.iter().find(|e| !e.starts_with("https://")) {
                return Err(StartError::Client(format!(
                    "--etcd-cacert, --etcd-cert and --etcd-cert-key need https:// endpoints; {plain} is not one"
                )));
            }
        }
        let options = connect_options(&config)?;
        let client = Client::connect(&config.endpoints, Some(options.clone()))
            .await
            .map_err(|err| StartError::Client(format!("etcd at {endpoints}: {err}")))?;
        let schema = config.limits.schema.as_deref();
        let saved = LastKnownGood::load(&config.state_dir, &config.key, schema);
        // With a copy to serve, one try; without, up to the startup timeout.
        let deadline = match saved {
            Some(_) => Instant::now(),
            None => Instant::now() + config.startup_timeout,
        };
        let authenticated = AtomicBool::new(false);
        let meta = MetaAccess::new();
        // Why etcd was not reached, for the message if it never is.
        let mut why = String::new();
        let first = loop {
            let user = config.user.as_ref();
            match authenticate(&client, user, &authenticated, config.timeout).await {
                Err(Failure::PermissionDenied(reason)) => {
                    return Err(StartError::Credentials {
                        user: user.map(|(name, _)| name.clone()).unwrap_or_default(),
                        endpoints,
                        reason,
                    })
                }
                Err(failure) => {
                    why = telling(why, failure.reason());
                    if Instant::now() >= deadline {
                        break Err(why);
                    }
                    tracing::debug!(reason = why, "etcd not reached yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Ok(()) => {}
            }
            match read_or_seed(&client, &config, &meta, config.timeout).await {
                Ok(first) => break Ok(first),
                Err(Failure::PermissionDenied(reason)) => {
                    return Err(StartError::Refused {
                        key: config.key.clone(),
                        endpoints,
                        reason,
                    })
                }
                Err(Failure::CreateDenied(reason)) => {
                    return Err(StartError::Client(format!(
                        "etcd at {endpoints} refused to create the key {} from the args file: {reason}",
                        config.key
                    )))
                }
                Err(Failure::TooLarge(reason)) => {
                    return Err(StartError::Client(format!(
                        "etcd at {endpoints} refused to create the key {} from the args file as too large ({reason}): its --max-request-bytes is below this broker's --etcd-max-request-bytes {}",
                        config.key, config.max_request_bytes
                    )))
                }
                Err(Failure::NoKey) => {
                    return Err(StartError::NoKey {
                        key: config.key.clone(),
                        endpoints,
                    })
                }
                Err(failure) => {
                    why = telling(why, failure.reason());
                    if Instant::now() >= deadline {
                        break Err(why);
                    }
                    tracing::debug!(reason = why, "etcd not reached yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        // A canary running in etcd: its candidate, and whom it is for.
        let mut running = None;
        let mut at = 0;
        let (snapshot, incarnation, contact) = match first {
            Ok(First { parts, header }) => {
                let Some(kv) = &parts.key else {
                    return Err(StartError::NoKey {
                        key: config.key.clone(),
                        endpoints,
                    });
                };
                let meta = parts.meta.as_ref();
                let incarnation = Incarnation {
                    cluster_id: header.cluster_id(),
                    create_revision: kv.create_revision(),
                    id: meta.and_then(|m| Meta::parse(m)?.id_for(m, kv)),
                };
                at = header.revision();
                let lineage = incarnation.lineage();
                let max = config.limits.max_args_bytes;
                let invalid = |revision, reason| StartError::InvalidValue {
                    key: config.key.clone(),
                    revision,
                    reason,
                };
                let revision = kv.mod_revision() as u64;
                let stable = match parts.running() {
                    Some(kept) => {
                        let stable = kept.record.stable_revision;
                        let document = check_value(kept.stable.get().as_bytes(), max, schema)
                            .map_err(|reason| invalid(stable, reason))?;
                        match check_value(kv.value(), max, schema) {
                            Ok(candidate) => {
                                let candidate = Published::new(revision, candidate, &lineage);
                                running = Some((candidate, kept.record));
                            }
                            Err(reason) => tracing::error!(
                                key = config.key,
                                candidate = revision,
                                %reason,
                                "the canary's candidate in etcd is not a valid args document; every follower here keeps the stable revision"
                            ),
                        }
                        Published::new(stable, document, &lineage)
                    }
                    None => {
                        let document = check_value(kv.value(), max, schema)
                            .map_err(|reason| invalid(revision, reason))?;
                        Published::new(revision, document, &lineage)
                    }
                };
                (stable, incarnation, Contact::connected())
            }
            Err(reason) => match saved {
                Some(saved) => {
                    tracing::warn!(
                        endpoints,
                        %reason,
                        revision = saved.revision,
                        copy = %config.state_dir.join(LAST_KNOWN_GOOD).display(),
                        "etcd is out of reach; serving the last-known-good copy until it answers"
                    );
                    let incarnation = saved.incarnation;
                    let snapshot =
                        Published::new(saved.revision, saved.document, &incarnation.lineage());
                    let contact = Contact {
                        connected: false,
                        reason: reason.clone(),
                        since: SystemTime::now(),
                        disconnects: 1,
                    };
                    (snapshot, incarnation, contact)
                }
                None => {
                    return Err(StartError::Unreachable {
                        endpoints,
                        reason,
                        timeout: config.startup_timeout,
                        state_dir: config.state_dir.clone(),
                    })
                }
            },
        };
        let head = Arc::new(Head::new(Arc::new(snapshot)));
        if let Some((candidate, record)) = running {
            tracing::info!(
                candidate = candidate.revision,
                stable = record.stable_revision,
                selector = record.selector,
                "a canary runs: its candidate goes to the followers it selects"
            );
            head.set_canary(Some(Arc::new(Canary::new(Arc::new(candidate), record))));
        }
        let store = Arc::new(Self {
            client,
            key: config.key,
            endpoints,
            timeout: config.timeout,
            max_request_bytes: config.max_request_bytes,
            limits: config.limits,
            head: head.clone(),
            view: Mutex::new(View { incarnation, at }),
            meta,
            contact: watch::Sender::new(contact),
            state_dir: config.state_dir,
            user: Mutex::new(config.user),
            authenticated,
        });
        tokio::spawn(store.clone().keep_last_known_good());
        store.meta.tell(&store.key);
        tokio::spawn(store.clone().follow());
        Ok((store, head))
    }

    pub fn contact(&self) -> watch::Receiver<Contact> {
        self.contact.subscribe()
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    pub(crate) fn current_revision(&self) -> u64 {
        self.head.current().revision
    }

    /// What `broker status` says of the engine.
    pub fn describe(&self) -> String {
        format!("etcd {} key {}", self.endpoints, self.key)
    }

    /// The largest document etcd takes in one request.
    fn document_limit(&self) -> usize {
        self.max_request_bytes.saturating_sub(REQUEST_OVERHEAD)
    }

    /// The key incarnation of `kv` with its meta record, if it has one
    /// (read under `header`).
    fn incarnation_of(
        &self,
        kv: &KeyValue,
        meta: Option<&KeyValue>,
        header: Option<&ResponseHeader>,
    ) -> Incarnation {
        let current = lock(&self.view).incarnation;
        let cluster_id = header.map_or(current.cluster_id, |h| h.cluster_id());
        // A write by another client leaves the meta record as it was: the
        // same key keeps its id.
        let id = meta
            .and_then(|m| Meta::parse(m)?.id_for(m, kv))
            .or_else(|| {
                current
                    .same_key(cluster_id, kv.create_revision())
                    .then_some(current.id)
                    .flatten()
            });
        Incarnation {
            cluster_id,
            create_revision: kv.create_revision(),
            id,
        }
    }

    fn set_contact(&self, connected: bool, reason: String) {
        self.contact.send_if_modified(|contact| {
            if contact.connected == connected {
                return false;
            }
            if connected {
                tracing::info!(endpoints = self.endpoints, "etcd is reachable again");
            } else {
                tracing::warn!(endpoints = self.endpoints, %reason, "etcd is out of reach; serving the last revision it sent");
            }
            *contact = Contact {
                connected,
                reason,
                since: SystemTime::now(),
                disconnects: contact.disconnects + u64::from(!connected),
            };
            true
        });
    }

    /// One etcd request, bounded by the request timeout.
    pub(crate) async fn call<T>(
        &self,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, Failure> {
        bounded(self.timeout, request).await
    }

    /// One KV request, bounded by the request timeout. A request that was
    /// not sent (the client's connection to a member that is down fails at
    /// once, and the client picks that member again now and then) is sent
    /// again, to whichever member the client picks next: a few times per
    /// endpoint, so that it fails quickly when every member is down.
    pub(crate) async fn kv_call<T, F>(
        &self,
        mut request: impl FnMut(KvClient) -> F,
    ) -> Result<T, Failure>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut unsent = 0;
        let most = UNSENT_TRIES_PER_ENDPOINT * self.endpoints.split(',').count();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, request(self.kv())).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(err)) => match Failure::of(err) {
                    Failure::Unsent(_)
                        if unsent < most && Instant::now() + UNSENT_PAUSE < deadline =>
                    {
                        unsent += 1;
                        tokio::time::sleep(UNSENT_PAUSE).await;
                    }
                    failure => return Err(failure),
                },
                Err(_) => return Err(no_answer(self.timeout)),
            }
        }
    }

    pub(crate) fn kv(&self) -> KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_DECODING_BYTES)
    }

    /// Follows the key for the broker's life: reads it, then watches it from
    /// the revision after that read; after an error, marks etcd out of reach
    /// and tries again (after a compaction, at once).
    async fn follow(self: Arc<Self>) {
        let mut pause = Duration::from_millis(100);
        loop {
            match self.follow_once().await {
                Err(Failure::Compacted) => continue,
                Err(failure) => {
                    self.set_contact(false, failure.reason());
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Ok(()) => pause = Duration::from_millis(100),
            }
        }
    }

    /// Authenticates as `--etcd-user` unless that was done already.
    async fn authenticate(&self) -> Result<(), Failure> {
        let user = lock(&self.user).clone();
        authenticate(
            &self.client,
            user.as_ref(),
            &self.authenticated,
            self.timeout,
        )
        .await
    }

    /// The key's range (the key alone, if the user may read no more).
    pub(super) async fn read_key(&self) -> Result<etcd_client::GetResponse, Failure> {
        loop {
            let range = self.meta.range(&self.key);
            let read = self
                .kv_call(|mut kv| {
                    let range = range.clone();
                    async move { kv.get(self.key.as_str(), range).await }
                })
                .await;
            match read {
                Err(Failure::PermissionDenied(reason))
                    if self.meta.reads() && self.meta.refused(&self.key, false, &reason) => {}
                read => return read,
            }
        }
    }

    async fn follow_once(&self) -> Result<(), Failure> {
        self.authenticate().await?;
        let read = self.read_key().await?;
        let Some(header) = read.header() else {
            return Err(Failure::Other("etcd sent no response header".to_owned()));
        };
        let start = header.revision() + 1;
        // The range as of the newest revision taken, kept up to date by the watch.
        let mut parts = Parts::of(&self.key, read.kvs());
        match parts.key {
            Some(_) => {
                self.observe_parts(&parts, Some(header), header.revision());
            }
            None => self.key_missing(),
        }
        let mut options = WatchOptions::new().with_start_revision(start);
        let ranged = self.meta.reads();
        if ranged {
            options = options.with_range(range_end(&self.key));
        }
        let mut watch_client = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_DECODING_BYTES);
        let mut stream = self
            .call(watch_client.watch(self.key.as_str(), Some(options)))
            .await?;
        self.set_contact(true, String::new());
        loop {
            let Some(response) = stream.message().await.map_err(Failure::of)? else {
                return Err(Failure::Unreachable("the watch ended".to_owned()));
            };
            if response.canceled() {
                if response.compact_revision() > 0 {
                    tracing::info!(
                        compacted = response.compact_revision(),
                        "etcd compacted past the watch's revision; reading the key again"
                    );
                    return Err(Failure::Compacted);
                }
                let reason = response.cancel_reason();
                if ranged && reason.contains("permission denied") {
                    self.meta.refused(&self.key, false, reason);
                    // Read again at once, the key alone (as after a compaction).
                    return Err(Failure::Compacted);
                }
                return Err(Failure::Unreachable(format!(
                    "etcd cancelled the watch: {reason}"
                )));
            }
            // One transaction's changes share a revision: each revision's
            // together, then what the range holds at that revision.
            let events = response.events();
            for changes in events.chunk_by(|a, b| revision_of(a) == revision_of(b)) {
                let mut taken = false;
                for event in changes {
                    taken |= parts.take(&self.key, event);
                }
                let Some(at) = changes.first().and_then(revision_of) else {
                    continue;
                };
                match &parts.key {
                    _ if !taken => {}
                    Some(_) => {
                        self.observe_parts(&parts, response.header(), at);
                    }
                    None => self.key_missing(),
                }
            }
        }
    }

    /// Follows `--etcd-password-file` (a Kubernetes Secret mount, say), so
    /// that a rotated password is taken without a restart. A new password is
    /// tried against etcd before it replaces the one in use; one etcd does
    /// not take yet (the file changed before etcd's user did) is tried again
    /// with backoff while the old one goes on working.
    pub fn follow_password_file(self: &Arc<Self>, path: PathBuf) -> crate::follow::Following {
        let store = Arc::downgrade(self);
        let file = path.clone();
        crate::follow::follow(&path, "etcd password file", move || {
            let store = store.clone();
            let file = file.clone();
            async move {
                if let Some(store) = store.upgrade() {
                    store.take_password(&file).await;
                }
            }
        })
    }

    async fn take_password(&self, file: &Path) {
        let mut pause = Duration::from_secs(1);
        let mut told = String::new();
        loop {
            let password = match read_password(file) {
                Ok(password) => password,
                Err(err) => {
                    tracing::warn!(
                        "cannot read the etcd password file {}: {err}; keeping the password in use",
                        file.display()
                    );
                    return;
                }
            };
            let Some((name, in_use)) = lock(&self.user).clone() else {
                return;
            };
            if password == in_use {
                return;
            }
            let user = (name.clone(), password.clone());
            if !self.authenticated.load(Ordering::Acquire) {
                // Not authenticated yet: the first request uses the new one.
                *lock(&self.user) = Some(user);
                tracing::info!(
                    user = name,
                    "the etcd password file changed; using the new password"
                );
                return;
            }
            let mut client = self.client.clone();
            match bounded(self.timeout, client.update_user(Some(user.clone()))).await {
                Ok(()) => {
                    *lock(&self.user) = Some(user);
                    tracing::info!(
                        user = name,
                        "the etcd password file changed; authenticated with the new password"
                    );
                    return;
                }
                Err(failure) => {
                    let reason = failure.reason();
                    if reason != told {
                        tracing::warn!(
                            user = name,
                            "etcd did not accept the new password in {} ({reason}); trying it again, meanwhile using the one before",
                            file.display()
                        );
                        told = reason;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    fn key_missing(&self) {
        tracing::warn!(
            key = self.key,
            serving = self.head.current().revision,
            "the key is not in etcd (deleted?); still serving the last revision; `broker set` makes it again"
        );
    }

    /// Writes the newest snapshot to the state directory whenever it changes.
    async fn keep_last_known_good(self: Arc<Self>) {
        let mut updates = self.head.subscribe();
        loop {
            updates.borrow_and_update();
            // Both under the lock that publishes them, so they agree.
            let (snapshot, incarnation) = {
                let view = lock(&self.view);
                (self.head.current_full(), view.incarnation)
            };
            let dir = self.state_dir.clone();
            let key = self.key.clone();
            let saved = tokio::task::spawn_blocking(move || {
                LastKnownGood::save(&dir, &key, incarnation, &snapshot)
            })
            .await;
            if let Ok(Err(err)) = saved {
                tracing::warn!(
                    dir = %self.state_dir.display(),
                    error = %err,
                    "cannot keep the last-known-good copy"
                );
            }
            if updates.changed().await.is_err() {
                return;
            }
        }
    }

    /// The document of a retained revision (a rollback's).
    pub async fn retained(&self, revision: u64) -> Result<Document, WriteError> {
        let json = self.value_at(revision).await?;
        Document::parse(&json).map_err(WriteError::Invalid)
    }

    /// `what` of `size` bytes fits in one etcd request.
    pub fn check_request_size(&self, what: &'static str, size: usize) -> Result<(), EtcdError> {
        if size > self.document_limit() {
            return Err(EtcdError::TooLarge {
                what,
                size,
                max: self.document_limit(),
                request_bytes: self.max_request_bytes,
            });
        }
        Ok(())
    }

    /// Commits `write` as one etcd transaction comparing the key's revision
    /// with the base's, and the canary record's with what this broker saw.
    /// The base is this broker's own snapshot, so a write is one round trip;
    /// on losing a race to another host, the write is planned again on what
    /// won (unless it named the revision it expected: then that is a
    /// conflict). A set makes the key again if it was deleted.
    ///
    /// While a canary runs, a write is refused unless forced: a forced
    /// write ends the canary in its own transaction (the record goes, and
    /// the write, planned on the stable document, is the next revision); a
    /// forced canary start first aborts the running canary as a revision
    /// of its own, then starts.
    pub async fn commit(&self, write: Write) -> Result<Arc<Published>, WriteError> {
        self.authenticate().await.map_err(|f| self.write_error(f))?;
        let create = matches!(write.change, Change::Set(_)) && write.origin.source == Source::Set;
        let mut basis = self.basis();
        if let Some(expected) = write.expected {
            if expected > basis.stable.revision {
                // This host may be behind: see what etcd holds before refusing.
                basis = self.read_basis().await.map_err(|f| self.write_error(f))?;
            }
        }
        for _ in 0..MAX_ATTEMPTS {
            let running = basis.canary.clone();
            if let Some(canary) = &running {
                if !write.force {
                    return Err(WriteError::CanaryRunning {
                        candidate: canary.candidate.revision,
                        selector: canary.record.selector.clone(),
                    });
                }
                if write.canary.is_some() {
                    // The abort first, as a revision of its own, so that a
                    // follower the old canary selected and the new one does
                    // not goes forward to the stable document.
                    let end = EndCanary {
                        candidate: Some(canary.candidate.revision),
                        uid: write.origin.uid,
                        reason: FORCED.to_owned(),
                    };
                    match self.end_canary(end, false).await {
                        Ok(_) | Err(WriteError::NoCanary | WriteError::NotTheCandidate { .. }) => {}
                        Err(err) => return Err(err),
                    }
                    basis = self.basis();
                    continue;
                }
            }
            let missing = basis.key.is_none();
            if missing {
                if let Some(expected) = write.expected {
                    return Err(WriteError::Conflict {
                        expected,
                        current: basis.stable.revision,
                    });
                }
                if !create {
                    return Err(EtcdError::Missing {
                        key: self.key.clone(),
                    }
                    .into());
                }
            }
            let stable = basis.stable.clone();
            let (document, unchanged) =
                match write.plan(stable.revision, &stable.document, &self.limits)? {
                    Plan::Next(document) => (document, false),
                    Plan::Unchanged => (stable.document.clone(), true),
                };
            if unchanged && write.canary.is_some() {
                return Err(WriteError::CanaryUnchanged {
                    stable: stable.revision,
                });
            }
            self.check_request_size("the result would be", document.json().len())?;
            let record = write.canary.as_ref().map(|start| CanaryRecord {
                selector: start.selector.text().to_owned(),
                chosen: start.chosen.clone(),
                stable_revision: stable.revision,
                bake_ms: start.bake_ms,
                started_unix_millis: unix_millis(),
            });
            if record.is_some() && !(self.meta.reads() && self.meta.writes()) {
                return Err(EtcdError::CanaryNeedsRange {
                    key: self.key.clone(),
                }
                .into());
            }
            if record.is_some() {
                // The record keeps the stable document: both in one request.
                let both = document.json().len() + stable.document.json().len();
                self.check_request_size("the candidate and the stable document are", both)?;
            }
            let incarnation = lock(&self.view).incarnation;
            let create_revision = basis.key.map_or(0, |(_, created)| created);
            // Nothing to write, if etcd holds the base as this broker has it
            // (the compares confirm it).
            let unchanged = unchanged
                && running.is_none()
                && !basis.stale
                && basis.key.map(|(modified, _)| modified) == Some(stable.revision as i64);
            // Made again: a new lineage id. Otherwise the key's own, if it has one.
            let id = match missing {
                true => Some(new_lineage_id().map_err(|err| EtcdError::Other {
                    endpoints: self.endpoints.clone(),
                    reason: format!("cannot make a lineage id: {err}"),
                })?),
                false => incarnation.id,
            };
            let other = |err: serde_json::Error| EtcdError::Other {
                endpoints: self.endpoints.clone(),
                reason: err.to_string(),
            };
            let with_meta = self.meta.writes();
            let then = match unchanged {
                true => vec![],
                // The key alone: no record beside it, and so no canary.
                false if !with_meta => vec![TxnOp::put(
                    self.key.as_str(),
                    document.json().to_vec(),
                    None,
                )],
                false => {
                    let (source, note) = match (&running, &record) {
                        // Forced, and the same as the stable document: the abort is it.
                        (Some(c), _) if document.sha256() == stable.document.sha256() => (
                            Source::Abort,
                            format!("aborted canary {}: {FORCED}", c.candidate.revision),
                        ),
                        (Some(c), _) => (
                            write.origin.source,
                            format!("aborted canary {}: {FORCED}", c.candidate.revision),
                        ),
                        (None, Some(record)) => (write.origin.source, record.start_note()),
                        (None, None) => (write.origin.source, String::new()),
                    };
                    let meta = Meta {
                        lineage: id.map(|id| format!("{id:032x}")).unwrap_or_default(),
                        key_created: if missing { 0 } else { create_revision },
                        writer_uid: write.origin.uid,
                        source,
                        unix_millis: unix_millis(),
                        note,
                        canary: record.is_some(),
                    };
                    let meta = serde_json::to_vec(&meta).map_err(other)?;
                    let mut ops = vec![
                        TxnOp::put(self.key.as_str(), document.json().to_vec(), None),
                        TxnOp::put(meta_key(&self.key), meta, None),
                    ];
                    if let Some(record) = &record {
                        let kept = Kept::new(record.clone(), &stable.document).map_err(other)?;
                        let kept = serde_json::to_vec(&kept).map_err(other)?;
                        ops.push(TxnOp::put(canary_key(&self.key), kept, None));
                    } else if running.is_some() || basis.stale {
                        ops.push(TxnOp::delete(canary_key(&self.key), None));
                    }
                    ops
                }
            };
            let ranged = self.meta.reads();
            let txn = Txn::new()
                .when(basis.compares(&self.key, ranged))
                .and_then(then)
                .or_else(vec![self.read_range()]);
            let response = self
                .kv_call(|mut kv| {
                    let txn = txn.clone();
                    async move { kv.txn(txn).await }
                })
                .await;
            let response = match response {
                // Refused (nothing was done): without the record beside the
                // key, if that is what the user may not touch.
                Err(Failure::PermissionDenied(reason))
                    if (with_meta && self.meta.refused(&self.key, true, &reason))
                        || (ranged && self.meta.refused(&self.key, false, &reason)) =>
                {
                    continue;
                }
                response => response.map_err(|f| self.write_error(f))?,
            };
            if !response.succeeded() {
                // Another write won: take what etcd holds now, and go again.
                basis = self.basis_after(&response);
                continue;
            }
            if unchanged {
                return Ok(stable);
            }
            let Some(header) = response.header() else {
                return Err(EtcdError::NoRevision.into());
            };
            let incarnation = Incarnation {
                cluster_id: header.cluster_id(),
                create_revision: match missing {
                    true => header.revision(),
                    false => create_revision,
                },
                id,
            };
            let at = header.revision();
            let revision = at as u64;
            let mine = Arc::new(Published::new(
                revision,
                document.clone(),
                &incarnation.lineage(),
            ));
            if running.is_some() {
                tracing::warn!(
                    "aborted canary {}: {FORCED}",
                    running.as_ref().map_or(0, |c| c.candidate.revision)
                );
            }
            let observed = match record {
                Some(record) => Observed {
                    incarnation,
                    at,
                    stable: (stable.revision, Value::Own(stable.document.clone())),
                    candidate: Some((revision, Value::Own(document), record)),
                },
                None => Observed {
                    incarnation,
                    at,
                    stable: (revision, Value::Own(document)),
                    candidate: None,
                },
            };
            self.observe(observed);
            return Ok(mine);
        }
        Err(EtcdError::KeptChanging {
            key: self.key.clone(),
            attempts: MAX_ATTEMPTS,
        }
        .into())
    }

    /// Makes the running canary's candidate the revision everyone gets.
    pub async fn promote(&self, end: EndCanary) -> Result<Arc<Published>, WriteError> {
        self.end_canary(end, true).await
    }

    /// Ends the running canary: the stable document again, as a new revision.
    pub async fn abort(&self, end: EndCanary) -> Result<Arc<Published>, WriteError> {
        self.end_canary(end, false).await
    }

    fn write_error(&self, failure: Failure) -> WriteError {
        let endpoints = self.endpoints.clone();
        WriteError::Etcd(match failure {
            Failure::Unreachable(reason) | Failure::Unsent(reason) => {
                EtcdError::Unreachable { endpoints, reason }
            }
            Failure::Unconfirmed(reason) => EtcdError::Unconfirmed { endpoints, reason },
            Failure::PermissionDenied(reason) | Failure::CreateDenied(reason) => {
                EtcdError::Denied {
                    key: self.key.clone(),
                    reason,
                }
            }
            Failure::Compacted => EtcdError::Compacted,
            Failure::TooLarge(reason) => EtcdError::RefusedAsTooLarge {
                endpoints,
                reason,
                request_bytes: self.max_request_bytes,
            },
            Failure::NoKey => EtcdError::Missing {
                key: self.key.clone(),
            },
            Failure::Other(reason) => EtcdError::Other { endpoints, reason },
        })
    }

    /// A read (ListRevisions) that failed: as a write's, without saying
    /// what a write would have changed.
    fn read_error(&self, failure: Failure) -> WriteError {
        let endpoints = self.endpoints.clone();
        match failure {
            Failure::Unreachable(reason)
            | Failure::Unsent(reason)
            | Failure::Unconfirmed(reason) => {
                EtcdError::ReadUnreachable { endpoints, reason }.into()
            }
            Failure::PermissionDenied(reason) | Failure::CreateDenied(reason) => {
                EtcdError::ReadDenied {
                    key: self.key.clone(),
                    reason,
                }
                .into()
            }
            other => self.write_error(other),
        }
    }

    /// The key's value at `revision`, which must be one of its revisions and
    /// still retained by etcd.
    async fn value_at(&self, revision: u64) -> Result<Vec<u8>, WriteError> {
        let at = GetOptions::new().with_revision(revision as i64);
        let read = self
            .kv_call(|mut kv| {
                let at = at.clone();
                async move { kv.get(self.key.as_str(), Some(at)).await }
            })
            .await;
        match read {
            Ok(read) => {
                if let Some(kv) = read.kvs().first() {
                    if kv.mod_revision() as u64 == revision {
                        return Ok(kv.value().to_vec());
                    }
                }
            }
            Err(Failure::Compacted) => {}
            Err(failure) => return Err(self.write_error(failure)),
        }
        // Not readable at its own revision: it may still be the value at the
        // oldest revision etcd keeps, which the walk reads from there.
        let walked = self.walk(None).await.map_err(|f| self.write_error(f))?;
        if let Some(found) = walked.iter().find(|r| r.revision == revision) {
            return Ok(found.value.clone());
        }
        Err(WriteError::NotRetained {
            wanted: revision,
            oldest: walked.first().map_or(0, |r| r.revision),
            newest: walked.last().map_or(0, |r| r.revision),
        })
    }

    /// The key's revisions that etcd retains, oldest first: read back from
    /// the current one, each at the revision before the last, until the key's
    /// creation, a compaction, `--history` revisions, or revision `after`.
    async fn walk(&self, after: Option<u64>) -> Result<Vec<Retained>, Failure> {
        self.authenticate().await?;
        let current = self.head.current_full();
        let (incarnation, seen) = {
            let view = lock(&self.view);
            (view.incarnation, view.at)
        };
        let mut found = Vec::new();
        // From the state this broker shows: a running canary's candidate is
        // newer than the stable revision, and a promotion is newer than both.
        let candidate = self.head.canary().map_or(0, |c| c.candidate.revision);
        let mut at = (current.revision.max(candidate) as i64).max(seen);
        let mut newest = true;
        while found.len() < self.limits.history.max(1) && at >= incarnation.create_revision {
            if after.is_some_and(|after| at as u64 <= after) {
                break;
            }
            let mut options = GetOptions::new().with_revision(at);
            if self.meta.reads() {
                options = options.with_range(range_end(&self.key));
            }
            let read = match self
                .kv_call(|mut kv| {
                    let options = options.clone();
                    async move { kv.get(self.key.as_str(), Some(options)).await }
                })
                .await
            {
                Ok(read) => read,
                Err(Failure::Compacted) => break,
                Err(failure) => return Err(failure),
            };
            let parts = Parts::of(&self.key, read.kvs());
            let Some(kv) = &parts.key else {
                break;
            };
            if kv.create_revision() != incarnation.create_revision {
                break;
            }
            // Written with this revision, by a broker (not another client).
            let meta = parts
                .meta
                .as_ref()
                .filter(|m| m.mod_revision() == kv.mod_revision())
                .and_then(Meta::parse);
            // A canary's candidate: its record is there as long as the
            // canary runs. Read at the revision before the next one, a
            // record still there was ended by that revision (an abort, or
            // a forced write); gone, the candidate was promoted.
            let canary = match (parts.running().is_some(), &meta) {
                (true, _) if newest => Some(Candidate::Running),
                (true, _) => Some(Candidate::Aborted),
                (false, Some(meta)) if meta.canary => Some(Candidate::Promoted),
                _ => None,
            };
            found.push(Retained {
                revision: kv.mod_revision() as u64,
                value: kv.value().to_vec(),
                meta,
                canary,
            });
            at = kv.mod_revision() - 1;
            newest = false;
        }
        found.reverse();
        Ok(found)
    }

    /// ListRevisions: the retained revisions, oldest first.
    pub async fn revisions(&self) -> Result<Vec<pb::Revision>, WriteError> {
        let walked = self.walk(None).await.map_err(|f| self.read_error(f))?;
        Ok(walked
            .into_iter()
            .map(|r| {
                let document = Document::parse(&r.value);
                // A revision another client (etcdctl) wrote has no meta record.
                let (unix_millis, writer_uid, source, note) = match &r.meta {
                    Some(meta) => (
                        meta.unix_millis,
                        meta.writer_uid,
                        meta.source.as_str(),
                        meta.note.as_str(),
                    ),
                    None => (0, None, "etcd", ""),
                };
                let note = match r.canary {
                    Some(Candidate::Promoted) if note.is_empty() => "promoted".to_owned(),
                    Some(Candidate::Promoted) => format!("{note}; promoted"),
                    _ => note.to_owned(),
                };
                pb::Revision {
                    revision: r.revision,
                    unix_millis,
                    sha256: document
                        .as_ref()
                        .map(|d| d.sha256().to_owned())
                        .unwrap_or_default(),
                    size_bytes: r.value.len() as u64,
                    writer_uid,
                    source: source.to_owned(),
                    note,
                }
            })
            .collect())
    }

    /// The retained revisions after `revision`, oldest first; `None` if etcd
    /// no longer keeps all of them.
    pub async fn revisions_after(&self, revision: u64) -> Option<Vec<pb::Args>> {
        let current = self.head.current_full();
        if revision >= current.revision {
            return Some(Vec::new());
        }
        let walked = self.walk(Some(revision)).await.ok()?;
        let lineage = &current.reply.lineage;
        let mut replay = Vec::with_capacity(walked.len());
        // A candidate not promoted was never what a plain reader got.
        let given = walked
            .into_iter()
            .filter(|r| !matches!(r.canary, Some(Candidate::Running | Candidate::Aborted)));
        for r in given {
            let document = Document::parse(&r.value).ok()?;
            replay.push(pb::Args {
                revision: r.revision,
                json: document.json().clone(),
                sha256: document.sha256().to_owned(),
                not_modified: false,
                lineage: lineage.clone(),
            });
        }
        Some(replay)
    }
}

/// The etcd revision of a watch event (a delete's is the deletion's).
fn revision_of(event: &etcd_client::Event) -> Option<i64> {
    event.kv().map(KeyValue::mod_revision)
}

/// One retained revision of the key.
struct Retained {
    revision: u64,
    value: Vec<u8>,
    meta: Option<Meta>,
    /// Set on a canary's candidate.
    canary: Option<Candidate>,
}

/// What became of a canary's candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Candidate {
    Running,
    Promoted,
    /// Aborted, or replaced by a forced write.
    Aborted,
}

struct First {
    /// The key (always there), its meta and canary records.
    parts: Parts,
    header: ResponseHeader,
}

/// Reads the key; if etcd has none, creates it from the seed file (exactly
/// one of several brokers starting at once does: the create compares the
/// key's `create_revision` with 0).
async fn read_or_seed(
    client: &Client,
    config: &Config,
    meta_access: &MetaAccess,
    timeout: Duration,
) -> Result<First, Failure> {
    let mut kv_client = client
        .kv_client()
        .max_decoding_message_size(MAX_DECODING_BYTES);
    let key = config.key.as_str();
    let read = loop {
        match bounded(timeout, kv_client.get(key, meta_access.range(key))).await {
            Err(Failure::PermissionDenied(reason))
                if meta_access.reads() && meta_access.refused(key, false, &reason) => {}
            read => break read?,
        }
    };
    if let Some(first) = first(key, read) {
        if let Some(seed) = &config.seed {
            tracing::info!(
                key,
                revision = first.parts.key.as_ref().map_or(0, KeyValue::mod_revision),
                args = %seed.path().display(),
                "etcd already holds the key: the args file was not used"
            );
        }
        return Ok(first);
    }
    let Some(seed) = &config.seed else {
        return Err(Failure::NoKey);
    };
    let json = seed.document().json().to_vec();
    let id = new_lineage_id()
        .map_err(|err| Failure::Other(format!("cannot make a lineage id: {err}")))?;
    let meta = Meta {
        lineage: format!("{id:032x}"),
        key_created: 0,
        writer_uid: None,
        source: Source::File,
        unix_millis: unix_millis(),
        note: String::new(),
        canary: false,
    };
    let meta = serde_json::to_vec(&meta).map_err(|err| Failure::Other(err.to_string()))?;
    let response = loop {
        let mut then = vec![TxnOp::put(key, json.clone(), None)];
        let with_meta = meta_access.writes();
        if with_meta {
            then.push(TxnOp::put(meta_key(key), meta.clone(), None));
        }
        let txn = Txn::new()
            .when(vec![Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then(then)
            .or_else(vec![TxnOp::get(key, None)]);
        match bounded(timeout, kv_client.txn(txn)).await {
            Err(Failure::PermissionDenied(reason))
                if with_meta && meta_access.refused(key, true, &reason) => {}
            Err(Failure::PermissionDenied(reason)) => return Err(Failure::CreateDenied(reason)),
            response => break response?,
        }
    };
    let Some(header) = response.header().cloned() else {
        return Err(Failure::Other("etcd sent no response header".to_owned()));
    };
    if response.succeeded() {
        tracing::info!(key, revision = header.revision(), args = %seed.path().display(), "created the key in etcd from the args file");
    }
    // Read back what is there now: ours, or the one another broker made first.
    let read = bounded(timeout, kv_client.get(key, meta_access.range(key))).await?;
    first(key, read).ok_or(Failure::NoKey)
}

/// The key and its meta and canary records in a range read, if the key is there.
fn first(key: &str, mut read: etcd_client::GetResponse) -> Option<First> {
    let header = read.take_header()?;
    let parts = Parts::of(key, read.kvs());
    parts.key.as_ref()?;
    Some(First { parts, header })
}

/// A lineage id for a key this broker makes: 128 random bits.
fn new_lineage_id() -> std::io::Result<u128> {
    let hex = super::file::lineage::random_id()?;
    u128::from_str_radix(&hex, 16).map_err(std::io::Error::other)
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The reason to report of two failures in a row: a request cancelled or
/// cut off because its connection closed says less than the failure before
/// it (after a TLS handshake etcd refused, requests see the alert, a
/// broken pipe or a cancellation, whichever comes first).
fn telling(before: String, now: String) -> String {
    let vague = now.contains("operation was canceled") || now.contains("broken pipe");
    match vague && !before.is_empty() {
        true => before,
        false => now,
    }
}

/// The etcd user's password in `path`: its one line, without a trailing
/// newline (or CRLF).
pub fn read_password(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let password = text.strip_suffix('\n').unwrap_or(&text);
    Ok(password.strip_suffix('\r').unwrap_or(password).to_owned())
}

/// Authenticates `client` as `user` (if any) unless `done` says it was;
/// the client keeps the user for renewing its token.
async fn authenticate(
    client: &Client,
    user: Option<&(String, String)>,
    done: &AtomicBool,
    timeout: Duration,
) -> Result<(), Failure> {
    let Some(user) = user else { return Ok(()) };
    if done.load(Ordering::Acquire) {
        return Ok(());
    }
    let mut client = client.clone();
    // Anything etcd answers other than a token is a refusal of the user
    // (a wrong password, auth not enabled), not a reason to try again.
    bounded(timeout, client.update_user(Some(user.clone())))
        .await
        .map_err(|failure| match failure {
            Failure::Other(reason) => Failure::PermissionDenied(reason),
            failure => failure,
        })?;
    done.store(true, Ordering::Release);
    Ok(())
}

async fn bounded<T>(
    timeout: Duration,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(timeout, request).await {
        Ok(result) => result.map_err(Failure::of),
        Err(_) => Err(no_answer(timeout)),
    }
}

fn no_answer(timeout: Duration) -> Failure {
    Failure::Unconfirmed(format!(
        "no answer within {}",
        humantime::format_duration(timeout)
    ))
}

fn connect_options(config: &Config) -> Result<ConnectOptions, StartError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.timeout)
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
        .with_keep_alive_while_idle(true)
        // A member cut off from the others must not answer: reads would be
        // stale and watches silent.
        .with_require_leader(true);
    // The user is not given here: the client would authenticate while
    // connecting, so a broker could not start on its last-known-good copy
    // while etcd is out of reach. `authenticate` does it before the first
    // request; from then on the client renews an expired token (etcd
    // forgets its tokens when it restarts).
    if config.user.is_some() {
        options = options.with_auto_token_refresh(true);
    }
    if let Some(tls) = &config.tls {
        let mut tls_options = TlsOptions::new();
        if let Some(ca) = &tls.ca {
            let pem = read_pem("the etcd CA certificate (--etcd-cacert)", ca)?;
            tls_options = tls_options.ca_certificate(etcd_client::Certificate::from_pem(pem));
        }
        match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                let cert = read_pem("the etcd client certificate (--etcd-cert)", cert)?;
                let key = read_pem("the etcd client key (--etcd-cert-key)", key)?;
                tls_options = tls_options.identity(etcd_client::Identity::from_pem(cert, key));
            }
            (None, None) => {}
            _ => {
                return Err(StartError::Client(
                    "--etcd-cert and --etcd-cert-key go together".to_owned(),
                ))
            }
        }
        options = options.with_tls(tls_options);
    }
    Ok(options)
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, StartError> {
    std::fs::read(path).map_err(|source| StartError::ReadPem {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// A value read from etcd, as a document that satisfies `schema`; why not, in words.
fn check_value(value: &[u8], max: usize, schema: Option<&Schema>) -> Result<Document, String> {
    if value.len() > max {
        return Err(format!(
            "it is {} bytes, over the limit of {max} (--max-args-bytes)",
            value.len()
        ));
    }
    let document = Document::parse(value).map_err(|err| err.to_string())?;
    satisfies(schema, &document).map_err(|unsatisfied| format!("it {unsatisfied}"))?;
    Ok(document)
}

/// The last document the broker served, kept in its state directory:
/// a header line (key, revision, lineage parts) and the compact JSON.
struct LastKnownGood {
    revision: u64,
    incarnation: Incarnation,
    document: Document,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    key: String,
    revision: u64,
    cluster_id: u64,
    create_revision: i64,
    /// The lineage's random id, when the key has one (hex).
    #[serde(default)]
    lineage_id: Option<String>,
}

impl LastKnownGood {
    fn save(
        dir: &Path,
        key: &str,
        incarnation: Incarnation,
        snapshot: &Published,
    ) -> std::io::Result<()> {
        let header = Header {
            key: key.to_owned(),
            revision: snapshot.revision,
            cluster_id: incarnation.cluster_id,
            create_revision: incarnation.create_revision,
            lineage_id: incarnation.id.map(|id| format!("{id:032x}")),
        };
        let mut text = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
        text.push(b'\n');
        text.extend_from_slice(snapshot.document.json());
        argsbroker::durable::write_atomic(&dir.join(LAST_KNOWN_GOOD), &text)
    }

    /// The copy for `key`, if there is a readable one that satisfies
    /// `schema`; anything else is logged.
    fn load(dir: &Path, key: &str, schema: Option<&Schema>) -> Option<Self> {
        let path = dir.join(LAST_KNOWN_GOOD);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot read the last-known-good copy");
                return None;
            }
        };
        let parsed = text.iter().position(|&b| b == b'\n').and_then(|at| {
            let header: Header = serde_json::from_slice(&text[..at]).ok()?;
            let document = Document::parse(&text[at + 1..]).ok()?;
            Some((header, document))
        });
        let Some((header, document)) = parsed else {
            tracing::warn!(path = %path.display(), "the last-known-good copy is damaged; not using it");
            return None;
        };
        if header.key != key {
            tracing::warn!(path = %path.display(), copy_of = header.key, key, "the last-known-good copy is of another key; not using it");
            return None;
        }
        if let Err(unsatisfied) = satisfies(schema, &document) {
            tracing::warn!(path = %path.display(), "the last-known-good copy {unsatisfied}; not using it");
            return None;
        }
        Some(Self {
            revision: header.revision,
            incarnation: Incarnation {
                cluster_id: header.cluster_id,
                create_revision: header.create_revision,
                id: header
                    .lineage_id
                    .and_then(|id| u128::from_str_radix(&id, 16).ok()),
            },
            document,
        })
    }
}
