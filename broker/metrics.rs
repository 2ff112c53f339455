//! `broker --metrics-listen HOST:PORT`: `GET /metrics`, the broker in
//! Prometheus's terms (OpenMetrics text, by the `prometheus-client` crate,
//! as the worker's own `/metrics`), on the listener that also serves the
//! status page (`GET /`, see [`crate::page`]).
//!
//! What the serving paths touch is kept to atomics: a write bumps one
//! counter, a WatchArgs or Follow stream one gauge when it opens and when it
//! ends, and GetArgs nothing at all. Everything else (the revision, the
//! followers, the backend's contact) is read when scraped, from the store's
//! current snapshot (one atomic load) and the followers' list (the lock that
//! Follow reports take, never one of the read paths).
//!
//! Every label set is bounded: methods and results are fixed lists, `info`
//! has one series, and `follower_applied_revision` has one series per
//! follower connected at the scrape (remade at every scrape, so a follower
//! that left is gone from the next one).
use crate::followers::Followers;
use crate::page::{self, Page};
use crate::storage::Storage;
use crate::storage::WriteError;
use anyhow::Context;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::{text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use tonic::Code;

/// What a scrape answers with: OpenMetrics, which Prometheus asks for first.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The writes, as the `method` label names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Write {
    SetArgs,
    PatchArgs,
    Rollback,
}

impl Write {
    const ALL: [Write; 3] = [Write::SetArgs, Write::PatchArgs, Write::Rollback];

    fn name(self) -> &'static str {
        match self {
            Self::SetArgs => "SetArgs",
            Self::PatchArgs => "PatchArgs",
            Self::Rollback => "Rollback",
        }
    }

    /// The write a gRPC method name (`SetArgs`) is, if it is one.
    pub fn of_method(method: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == method)
    }
}

/// How a write ended, as the `result` label says it: a fixed list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Conflict,
    Invalid,
    Schema,
    TooLarge,
    NotFound,
    ReadOnly,
    Unavailable,
    Denied,
    Missing,
    OutsideEdit,
    Error,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Conflict => "conflict",
            Self::Invalid => "invalid",
            Self::Schema => "schema",
            Self::TooLarge => "too_large",
            Self::NotFound => "not_found",
            Self::ReadOnly => "read_only",
            Self::Unavailable => "unavailable",
            Self::Denied => "denied",
            Self::Missing => "missing",
            Self::OutsideEdit => "outside_edit",
            Self::Error => "error",
        }
    }

    /// A store's refusal, one result per kind of [`WriteError`].
    pub fn of_error(err: &WriteError) -> Self {
        match err {
            WriteError::Conflict { .. } => Self::Conflict,
            WriteError::ReadOnly(_) => Self::ReadOnly,
            WriteError::Invalid(_) | WriteError::PatchNotAnObject(_) => Self::Invalid,
            WriteError::Schema(_) => Self::Schema,
            WriteError::TooLarge { .. } => Self::TooLarge,
            WriteError::NotRetained { .. } => Self::NotFound,
            WriteError::OutsideEdit(..) => Self::OutsideEdit,
            WriteError::Save(_) | WriteError::Stopping => Self::Error,
            WriteError::CanaryRunning { .. }
            | WriteError::NoCanary
            | WriteError::NotTheCandidate { .. } => Self::Conflict,
            WriteError::CanaryUnchanged { .. } | WriteError::NoFollowerSelected { .. } => {
                Self::Invalid
            }
            #[cfg(feature = "etcd")]
            WriteError::Etcd(err) => {
                use crate::storage::etcd::EtcdError as E;
                match err {
                    E::TooLarge { .. } | E::RefusedAsTooLarge { .. } => Self::TooLarge,
                    E::Unreachable { .. } | E::Unconfirmed { .. } | E::ReadUnreachable { .. } => {
                        Self::Unavailable
                    }
                    E::Denied { .. } | E::ReadDenied { .. } | E::CanaryNeedsRange { .. } => {
                        Self::Denied
                    }
                    E::Missing { .. } => Self::Missing,
                    E::Compacted | E::NoRevision | E::KeptChanging { .. } | E::Other { .. } => {
                        Self::Error
                    }
                }
            }
        }
    }

    /// A request refused before it reached the store (it could not be
    /// decoded, or the caller may not write), by its gRPC code.
    pub fn of_code(code: Code) -> Self {
        match code {
            Code::Ok => Self::Ok,
            Code::InvalidArgument | Code::Unimplemented => Self::Invalid,
            Code::ResourceExhausted => Self::TooLarge,
            Code::PermissionDenied => Self::Denied,
            Code::Unavailable => Self::Unavailable,
            _ => Self::Error,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    method: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    lineage: String,
    sha256: String,
    backend: String,
}

/// The candidate a bake clock runs for (one series at most: remade at every scrape).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CandidateLabels {
    candidate: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FollowerLabels {
    name: String,
    pid: u32,
}

/// The running canary (all 0 while none runs; see [`Metrics::new`]).
#[derive(Default)]
struct CanaryGauges {
    running: Gauge,
    candidate: Gauge<u64, AtomicU64>,
    stable: Gauge<u64, AtomicU64>,
    selected: Gauge,
    applied: Gauge,
    rejected: Gauge,
    bake_left: Family<CandidateLabels, Gauge<f64, AtomicU64>>,
}

/// The broker's metrics, registered once, shared by the service (which
/// counts) and the scrape (which reads the rest).
pub struct Metrics {
    registry: Registry,
    revision: Gauge<u64, AtomicU64>,
    info: Family<InfoLabels, Gauge>,
    writes: Family<WriteLabels, Counter>,
    watchers: Gauge,
    followers: Gauge,
    at_current: Gauge,
    behind: Gauge,
    applied: Family<FollowerLabels, Gauge<u64, AtomicU64>>,
    backend_connected: Gauge,
    backend_disconnects: Counter,
    canary: CanaryGauges,
    /// One scrape at a time: the gauges are set, then encoded, together.
    scrape: Mutex<()>,
}

impl Metrics {
    /// `apply_seconds`: the followers' histogram (see [`crate::followers::Followers::apply_seconds`]).
    pub fn new(apply_seconds: Histogram) -> Self {
        let mut registry = Registry::with_prefix("argsbroker_broker");
        let revision = Gauge::<u64, AtomicU64>::default();
        let info = Family::<InfoLabels, Gauge>::default();
        let writes = Family::<WriteLabels, Counter>::default();
        let watchers = Gauge::default();
        let followers = Gauge::default();
        let at_current = Gauge::default();
        let behind = Gauge::default();
        let applied = Family::<FollowerLabels, Gauge<u64, AtomicU64>>::default();
        let backend_connected = Gauge::default();
        let backend_disconnects = Counter::default();
        registry.register(
            "revision",
            "The revision of the args this broker serves",
            revision.clone(),
        );
        registry.register(
            "info",
            "The lineage and SHA-256 of the args this broker serves, and its backend (always 1)",
            info.clone(),
        );
        registry.register(
            "writes",
            "Writes (SetArgs, PatchArgs, Rollback) by method and result; ok means committed",
            writes.clone(),
        );
        registry.register(
            "watchers",
            "Open WatchArgs and Follow streams",
            watchers.clone(),
        );
        registry.register(
            "followers",
            "Followers connected on Follow streams",
            followers.clone(),
        );
        // Followers by applied revision would be a label per revision, a
        // set of series that grows without bound as revisions are made (and
        // each stale one stays in Prometheus until it ages out). Two
        // gauges say what matters: who has the current revision, who not.
        registry.register(
            "followers_at_current_revision",
            "Followers that report having applied the current revision",
            at_current.clone(),
        );
        registry.register(
            "followers_behind",
            "Followers that report an older revision than the current one",
            behind.clone(),
        );
        // One histogram for every follower: a label per follower would
        // keep a series for each one that ever connected.
        registry.register(
            "follower_apply_seconds",
            "From a revision's publication here to a follower's report that it applied it (followers connected before it was published)",
            apply_seconds,
        );
        registry.register(
            "follower_applied_revision",
            "The revision each connected follower reports having applied",
            applied.clone(),
        );
        registry.register(
            "backend_connected",
            "1 while the backend is in reach (always, for a file), 0 while etcd is out of reach",
            backend_connected.clone(),
        );
        registry.register(
            "backend_disconnects",
            "Times the backend went out of reach (etcd; a start without it counts once)",
            backend_disconnects.clone(),
        );
        let canary = CanaryGauges::default();
        registry.register(
            "canary_running",
            "1 while a canary runs (a candidate revision goes to the followers its selector picks), else 0",
            canary.running.clone(),
        );
        registry.register(
            "canary_candidate_revision",
            "The running canary's candidate revision (0 while none runs)",
            canary.candidate.clone(),
        );
        registry.register(
            "canary_stable_revision",
            "The revision every follower outside the running canary and every plain reader gets (0 while none runs)",
            canary.stable.clone(),
        );
        registry.register(
            "canary_selected_followers",
            "Connected followers the running canary selects",
            canary.selected.clone(),
        );
        registry.register(
            "canary_selected_applied",
            "Selected followers that report having applied the candidate",
            canary.applied.clone(),
        );
        registry.register(
            "canary_selected_rejected",
            "Selected followers that report having rejected the candidate",
            canary.rejected.clone(),
        );
        // Only while a bake clock runs: a 0 would say "promoting now".
        registry.register(
            "canary_bake_seconds_left",
            "With --bake, while every selected follower has applied the candidate: seconds until the broker promotes it (absent otherwise)",
            canary.bake_left.clone(),
        );
        // The results every broker can give, made now so that they show
        // (as 0) before the first of them.
        for write in Write::ALL {
            let mut results = vec![Outcome::Ok, Outcome::Conflict, Outcome::Denied];
            match write {
                Write::Rollback => results.push(Outcome::NotFound),
                _ => results.push(Outcome::Invalid),
            }
            for result in results {
                let _ = writes.get_or_create(&WriteLabels {
                    method: write.name(),
                    result: result.name(),
                });
            }
        }
        Self {
            registry,
            revision,
            info,
            writes,
            watchers,
            followers,
            at_current,
            behind,
            applied,
            backend_connected,
            backend_disconnects,
            canary,
            scrape: Mutex::new(()),
        }
    }

    /// Counts one write's end.
    pub fn write(&self, write: Write, outcome: Outcome) {
        let labels = WriteLabels {
            method: write.name(),
            result: outcome.name(),
        };
        self.writes.get_or_create(&labels).inc();
    }

    /// Counts an open watch until the returned guard is dropped.
    pub fn watching(&self) -> Watching {
        self.watchers.inc();
        Watching(self.watchers.clone())
    }

    /// The exposition: the gauges as the store and followers are now, then every metric.
    pub fn scrape(
        &self,
        store: &Storage,
        followers: &Followers,
    ) -> Result<String, std::fmt::Error> {
        let _one = argsbroker::lock(&self.scrape);
        let current = store.current();
        self.revision.set(current.revision);
        let info = InfoLabels {
            lineage: current.reply.lineage.clone(),
            sha256: current.reply.sha256.clone(),
            backend: store.describe(),
        };
        if self.info.get(&info).is_none() {
            self.info.clear();
            self.info.get_or_create(&info).set(1);
        }
        let census = followers.census(current.revision);
        self.followers.set(census.followers.len() as i64);
        self.at_current.set(census.at_current as i64);
        self.behind.set(census.behind as i64);
        self.applied.clear();
        for (name, pid, applied) in census.followers {
            self.applied
                .get_or_create(&FollowerLabels { name, pid })
                .set(applied);
        }
        let (connected, disconnects) = match store.contact() {
            Some(contact) => {
                let contact = contact.borrow();
                (contact.connected, contact.disconnects)
            }
            None => (true, 0),
        };
        self.backend_connected.set(connected.into());
        let counted = self.backend_disconnects.get();
        if disconnects > counted {
            self.backend_disconnects.inc_by(disconnects - counted);
        }
        self.canary.set(store, followers);
        let mut out = String::new();
        text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl CanaryGauges {
    /// As the running canary (if any) and its selected followers are now.
    fn set(&self, store: &Storage, followers: &Followers) {
        self.bake_left.clear();
        let Some(canary) = store.canary() else {
            for gauge in [&self.running, &self.selected, &self.applied, &self.rejected] {
                gauge.set(0);
            }
            self.candidate.set(0);
            self.stable.set(0);
            return;
        };
        let candidate = canary.candidate.revision;
        let selected = crate::bake::selected(&canary, followers, canary.record.stable_revision);
        let applied = selected
            .iter()
            .filter(|f| f.applied_revision >= candidate)
            .count();
        let rejected = selected
            .iter()
            .filter(|f| f.applied_revision < candidate && f.rejected_revision >= candidate)
            .count();
        self.running.set(1);
        self.candidate.set(candidate);
        self.stable.set(canary.record.stable_revision);
        self.selected.set(selected.len() as i64);
        self.applied.set(applied as i64);
        self.rejected.set(rejected as i64);
        if let Some(left) = crate::bake::describe(&canary, followers).bake_left_ms {
            self.bake_left
                .get_or_create(&CandidateLabels { candidate })
                .set(left as f64 / 1000.0);
        }
    }
}

/// An open WatchArgs or Follow stream, counted while it lives.
pub struct Watching(Gauge);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Binds `--metrics-listen` now, so that an address that cannot be had
/// stops the broker before it serves.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = match std::net::TcpListener::bind(addr) {
        Ok(listener) => listener,
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            anyhow::bail!("--metrics-listen {addr}: {addr} is already in use by another process")
        }
        Err(err) => anyhow::bail!("--metrics-listen {addr}: cannot listen on {addr}: {err}"),
    };
    listener
        .set_nonblocking(true)
        .with_context(|| format!("--metrics-listen {addr}: cannot use the bound address"))?;
    Ok(listener)
}

#[derive(Clone)]
struct Scraped {
    metrics: Arc<Metrics>,
    store: Storage,
    followers: Arc<Followers>,
}

/// Serves `GET /metrics` and the status page ([`crate::page`]) on
/// `listener` until `shutdown` completes, with the worker's protections
/// (`bounds`: slow heads, idle connections, a cap). Any other path is a 404,
/// any method but GET a 405, each with a one-line body.
pub async fn serve(
    listener: std::net::TcpListener,
    bounds: argsbroker::http_serve::Bounds,
    metrics: Arc<Metrics>,
    page: Arc<Page>,
    store: Storage,
    followers: Arc<Followers>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .context("cannot use the --metrics-listen address")?;
    // The address as bound: with port 0 the kernel picked the port.
    let local = listener
        .local_addr()
        .context("cannot use the --metrics-listen address")?;
    tracing::info!(listen = %local, "serving metrics on http://{local}/metrics");
    tracing::info!(listen = %local, "serving the status page on http://{local}/");
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Scraped {
            metrics,
            store,
            followers,
        })
        .merge(page::routes(page))
        .fallback(page::not_found)
        .method_not_allowed_fallback(page::method_not_allowed);
    argsbroker::http_serve::run(listener, app, bounds, shutdown).await;
    Ok(())
}

async fn scrape(State(scraped): State<Scraped>) -> Response {
    match scraped.metrics.scrape(&scraped.store, &scraped.followers) {
        Ok(text) => (
            [(
                CONTENT_TYPE,
                HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS),
            )],
            text,
        )
            .into_response(),
        Err(err) => {
            tracing::error!("cannot encode the metrics: {err}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
