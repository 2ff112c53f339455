//! `GET /metrics`: the worker in Prometheus's terms (OpenMetrics text, by
//! the `prometheus-client` crate).
//!
//! The gauges are read from the live args when scraped. Requests are counted
//! by [`CountLayer`], one per route: the label sets a route answers most
//! (`200`, and `304` on the args) are made once, when the router is built,
//! and their counters kept, so counting one of those is one atomic increment
//! (the family's map, behind a lock, is looked up only for other statuses).
use super::Prepared;
use argsbroker::client::Live;
use axum::http::StatusCode;
use axum::response::Response;
use pin_project_lite::pin_project;
use prometheus_client::encoding::{text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tower::{Layer, Service};

/// What a scrape answers with. Prometheus (2.x and later) asks for
/// OpenMetrics first, and this is what `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The routes requests are counted under: templates, not paths, so that
/// pointers cannot grow the number of series.
pub mod route {
    pub const ARGS: &str = "/args";
    pub const POINTER: &str = "/args/{pointer}";
    pub const READYZ: &str = "/readyz";
    pub const HEALTHZ: &str = "/healthz";
    pub const METRICS: &str = "/metrics";
    /// Any path the worker does not serve.
    pub const OTHER: &str = "other";
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    lineage: String,
    sha256: String,
}

/// The worker's metrics, registered once.
pub struct Metrics {
    registry: Registry,
    revision: Gauge<u64, AtomicU64>,
    info: Family<InfoLabels, Gauge>,
    connected: Gauge,
    since_contact: Gauge<f64, AtomicU64>,
    requests: Family<RequestLabels, Counter>,
    /// One scrape at a time: the gauges are set, then encoded, together.
    scrape: Mutex<()>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("argsbroker_worker");
        let revision = Gauge::<u64, AtomicU64>::default();
        let info = Family::<InfoLabels, Gauge>::default();
        let connected = Gauge::default();
        let since_contact = Gauge::<f64, AtomicU64>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "revision",
            "The revision of the args this worker serves",
            revision.clone(),
        );
        registry.register(
            "info",
            "The lineage and SHA-256 of the args this worker serves (always 1)",
            info.clone(),
        );
        registry.register(
            "broker_connected",
            "1 while the watch on the broker is up, 0 while the broker is out of reach",
            connected.clone(),
        );
        registry.register(
            "seconds_since_broker_contact",
            "0 while connected; otherwise seconds since the broker was last heard from",
            since_contact.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template and status",
            requests.clone(),
        );
        Self {
            registry,
            revision,
            info,
            connected,
            since_contact,
            requests,
            scrape: Mutex::new(()),
        }
    }

    /// The counters of one route (see [`route`]), for its [`CountLayer`].
    pub fn route(&self, route: &'static str) -> CountLayer {
        let counter = |status: u16| {
            self.requests
                .get_or_create_owned(&RequestLabels { route, status })
        };
        let not_modified = matches!(route, route::ARGS | route::POINTER).then(|| counter(304));
        let ok = (route != route::OTHER).then(|| counter(200));
        CountLayer {
            counters: Arc::new(RouteCounters {
                route,
                ok,
                not_modified,
                requests: self.requests.clone(),
            }),
        }
    }

    /// The exposition: the gauges as `live` is now, then every metric.
    pub fn scrape(&self, live: &Live<Prepared>) -> Result<String, std::fmt::Error> {
        let _one = argsbroker::lock(&self.scrape);
        let prepared = live.load();
        let snapshot = &prepared.snapshot;
        self.revision.set(snapshot.revision);
        let info = InfoLabels {
            lineage: snapshot.lineage.clone(),
            sha256: snapshot.document.sha256().to_owned(),
        };
        if self.info.get(&info).is_none() {
            self.info.clear();
            self.info.get_or_create(&info).set(1);
        }
        self.connected.set(live.is_connected().into());
        self.since_contact
            .set(live.since_last_contact().as_millis() as f64 / 1000.0);
        let mut out = String::new();
        text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// One route's request counters.
struct RouteCounters {
    route: &'static str,
    ok: Option<Counter>,
    not_modified: Option<Counter>,
    requests: Family<RequestLabels, Counter>,
}

impl RouteCounters {
    fn count(&self, status: StatusCode) {
        let kept = match status {
            StatusCode::OK => self.ok.as_ref(),
            StatusCode::NOT_MODIFIED => self.not_modified.as_ref(),
            _ => None,
        };
        match kept {
            Some(counter) => {
                counter.inc();
            }
            None => {
                let labels = RequestLabels {
                    route: self.route,
                    status: status.as_u16(),
                };
                self.requests.get_or_create(&labels).inc();
            }
        }
    }
}

/// Counts the answers of the service it wraps, under one route.
#[derive(Clone)]
pub struct CountLayer {
    counters: Arc<RouteCounters>,
}

impl<S> Layer<S> for CountLayer {
    type Service = Count<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Count {
            inner,
            counters: self.counters.clone(),
        }
    }
}

/// The service [`CountLayer`] makes.
#[derive(Clone)]
pub struct Count<S> {
    inner: S,
    counters: Arc<RouteCounters>,
}

impl<S, R> Service<R> for Count<S>
where
    S: Service<R, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = CountFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        CountFuture {
            inner: self.inner.call(request),
            counters: self.counters.clone(),
        }
    }
}

pin_project! {
    /// The answer of the wrapped service, counted once it is ready.
    pub struct CountFuture<F> {
        #[pin]
        inner: F,
        counters: Arc<RouteCounters>,
    }
}

impl<F, E> Future for CountFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        this.counters.count(response.status());
        Poll::Ready(Ok(response))
    }
}
