//! The worker's HTTP surface. Every answer about the args is read from the
//! live cache with one pointer load; `GET /args` hands out a body and headers
//! prepared once per revision.
//!
//! Requests are only ever GETs (and HEADs, answered like GET without the
//! body): no handler reads a body, so one that is sent is never buffered;
//! other methods get 405. A pointer longer than
//! `MAX_POINTER_BYTES` gets 414 (hyper answers 414 itself past 64 KiB), and
//! request data that appears in an answer is in a JSON string, escaped.
//!
//! Refusals are one type, [`HttpError`]; `X-Args-Stale` is added by one
//! layer, [`StaleLayer`], around the handlers that read the args.
//! `?min_revision=N` (read-your-writes) is in [`query`]; `/metrics` and the
//! request counters, one layer per route, in [`metrics`].
mod error;
mod metrics;
mod query;
mod stale;

pub use error::HttpError;
pub use stale::StaleLayer;

use argsbroker::client::{Live, Snapshot};
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRef, Path, RawQuery, Request, State};
use axum::handler::Handler;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use metrics::{route, Metrics};
use std::sync::Arc;
use std::time::Duration;

pub const X_ARGS_REVISION: HeaderName = HeaderName::from_static("x-args-revision");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");

/// The longest JSON pointer a request may name, in bytes after decoding.
pub const MAX_POINTER_BYTES: usize = 8 * 1024;

/// One revision, ready to serve.
pub struct Prepared {
    pub snapshot: Snapshot,
    /// `{"args": <document>}`, the body the FastAPI original answered with.
    body: Bytes,
    etag: HeaderValue,
    revision: HeaderValue,
}

impl Prepared {
    pub fn new(snapshot: Snapshot) -> Self {
        let json = snapshot.document.json();
        let mut body = Vec::with_capacity(json.len() + 10);
        body.extend_from_slice(b"{\"args\":");
        body.extend_from_slice(json);
        body.push(b'}');
        // A strong ETag from the content hash: equal content, equal tag.
        let etag = format!("\"{}\"", &snapshot.document.sha256()[..32]);
        Self {
            body: Bytes::from(body),
            etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\"")),
            revision: HeaderValue::from(snapshot.revision),
            snapshot,
        }
    }

    fn headers(&self) -> [(HeaderName, HeaderValue); 3] {
        [
            (ETAG, self.etag.clone()),
            (X_ARGS_REVISION, self.revision.clone()),
            (CACHE_CONTROL, NO_CACHE),
        ]
    }

    /// RFC 9110 `If-None-Match`: `*`, or a list of tags compared weakly.
    fn matches(&self, request: &HeaderMap) -> bool {
        let ours = self.etag.as_bytes();
        request.get_all(IF_NONE_MATCH).iter().any(|value| {
            value.as_bytes().split(|b| *b == b',').any(|tag| {
                let tag = tag.trim_ascii();
                tag == b"*" || tag.strip_prefix(b"W/").unwrap_or(tag) == ours
            })
        })
    }
}

/// What the command line sets about the HTTP answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// `/readyz` answers 503 once the broker has been out of reach this
    /// long (`--max-stale`); `None`: ready for as long as args are held.
    pub max_stale: Option<Duration>,
}

/// What the handlers share: the args, the options, the metrics.
#[derive(Clone)]
struct AppState {
    live: Live<Prepared>,
    options: Options,
    metrics: Arc<Metrics>,
}

impl FromRef<AppState> for Live<Prepared> {
    fn from_ref(state: &AppState) -> Self {
        state.live.clone()
    }
}

/// The worker's router with the default [`Options`] (the tests' router).
#[cfg(test)]
pub fn app(live: Live<Prepared>) -> Router {
    app_with(live, Options::default())
}

/// The worker's router. The answers of `/args` and `/args/...` are marked
/// stale by [`StaleLayer`]; a path that is no pointer at all (not UTF-8, too
/// long) is refused by [`pointer`] before the args are read, so that refusal
/// is not marked. Every route's answers are counted by its own layer (see
/// [`metrics`]), 405s included; paths it does not serve are counted as `other`.
pub fn app_with(live: Live<Prepared>, options: Options) -> Router {
    let stale = StaleLayer::new(live.clone());
    let metrics = Arc::new(Metrics::new());
    let pointers = metrics.route(route::POINTER);
    Router::new()
        .route(
            "/args",
            get(whole.layer(stale.clone())).layer(metrics.route(route::ARGS)),
        )
        .route(
            "/args/",
            get(at_pointer_root.layer(stale.clone())).layer(pointers.clone()),
        )
        .route(
            "/args/{*pointer}",
            get(at_pointer.layer(stale))
                .route_layer(middleware::from_fn(pointer))
                .layer(pointers),
        )
        .route(
            "/healthz",
            get(healthz).layer(metrics.route(route::HEALTHZ)),
        )
        .route("/readyz", get(readyz).layer(metrics.route(route::READYZ)))
        .route("/metrics", get(scrape).layer(metrics.route(route::METRICS)))
        .fallback(not_found.layer(metrics.route(route::OTHER)))
        .with_state(AppState {
            live,
            options,
            metrics,
        })
}

/// With a query string, `?min_revision=N[&wait=D]` first (see [`query`]);
/// without one, nothing: the answer is prebuilt.
async fn whole(
    State(live): State<Live<Prepared>>,
    RawQuery(query): RawQuery,
    request: HeaderMap,
) -> Result<Response, HttpError> {
    if let Some(query) = query {
        min_revision(&live, &query).await?;
    }
    let prepared = live.load();
    Ok(if prepared.matches(&request) {
        (StatusCode::NOT_MODIFIED, prepared.headers()).into_response()
    } else {
        (
            prepared.headers(),
            [(CONTENT_TYPE, JSON)],
            prepared.body.clone(),
        )
            .into_response()
    })
}

/// Waits for the revision a query's `min_revision` names, if it names one.
async fn min_revision(live: &Live<Prepared>, query: &str) -> Result<(), HttpError> {
    match query::parse(query)? {
        Some(asked) => query::reach(live, asked).await,
        None => Ok(()),
    }
}

/// The JSON pointer a request names: `/` and the rest of its path, decoded.
#[derive(Debug, Clone)]
struct Pointer(String);

/// Middleware of `/args/{*pointer}`: refuses a path that is not a JSON
/// pointer at all (its percent-encoding is not UTF-8, or it is too long),
/// and hands the pointer on to the handler.
async fn pointer(
    rest: Result<Path<String>, PathRejection>,
    mut request: Request,
    next: Next,
) -> Result<Response, HttpError> {
    let Ok(Path(rest)) = rest else {
        return Err(HttpError::NotUtf8);
    };
    if rest.len() >= MAX_POINTER_BYTES {
        return Err(HttpError::TooLong {
            bytes: rest.len() + 1,
            limit: MAX_POINTER_BYTES,
        });
    }
    request.extensions_mut().insert(Pointer(format!("/{rest}")));
    Ok(next.run(request).await)
}

/// `/args/` is the pointer `/`: the key "" at the top level.
async fn at_pointer_root(
    live: State<Live<Prepared>>,
    query: RawQuery,
    request: HeaderMap,
) -> Result<Response, HttpError> {
    at_pointer(live, Extension(Pointer("/".to_owned())), query, request).await
}

async fn at_pointer(
    State(live): State<Live<Prepared>>,
    Extension(Pointer(pointer)): Extension<Pointer>,
    RawQuery(query): RawQuery,
    request: HeaderMap,
) -> Result<Response, HttpError> {
    if let Some(query) = query {
        min_revision(&live, &query).await?;
    }
    let prepared = live.load();
    match prepared.snapshot.document.get(&pointer) {
        Ok(Some(_)) if prepared.matches(&request) => {
            Ok((StatusCode::NOT_MODIFIED, prepared.headers()).into_response())
        }
        Ok(Some(value)) => Ok((
            prepared.headers(),
            [(CONTENT_TYPE, JSON)],
            value.to_string(),
        )
            .into_response()),
        Ok(None) => Err(HttpError::NotFound { pointer }),
        Err(source) => Err(HttpError::BadPointer { pointer, source }),
    }
}

async fn healthz() -> Response {
    ([(CONTENT_TYPE, JSON)], r#"{"status":"ok"}"#).into_response()
}

/// Ready whenever args are held, which is always once the worker listens;
/// with `--max-stale`, not ready (503, and the reason) once the broker has
/// been out of reach that long, so that a load balancer drains the worker.
async fn readyz(State(state): State<AppState>) -> Response {
    let live = &state.live;
    let connected = live.is_connected();
    let since = live.since_last_contact();
    let mut body = serde_json::json!({
        "status": "ready",
        "revision": live.revision(),
        "connected": connected,
        "since_last_contact_ms": since.as_millis() as u64,
        "lineage": &*live.lineage(),
        "backend_connected": live.backend_connected(),
    });
    let rejected = live.rejected();
    if let Some(rejected) = &rejected {
        body["rejected"] = serde_json::json!({
            "revision": rejected.revision,
            "reason": rejected.reason,
        });
    }
    let status = match state.options.max_stale {
        // Behind a revision it could not apply: let the balancer drain it.
        Some(_) if rejected.is_some() => {
            body["status"] = "stale".into();
            body["reason"] = "this worker rejected a newer revision than the one it serves".into();
            StatusCode::SERVICE_UNAVAILABLE
        }
        Some(max_stale) if !connected && since >= max_stale => {
            body["status"] = "stale".into();
            body["reason"] = format!(
                "the broker has been out of reach for longer than --max-stale ({})",
                humantime::format_duration(max_stale)
            )
            .into();
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::OK,
    };
    (status, [(CONTENT_TYPE, JSON)], body.to_string()).into_response()
}

/// `GET /metrics`: see [`metrics`].
async fn scrape(State(state): State<AppState>) -> Response {
    match state.metrics.scrape(&state.live) {
        Ok(text) => (
            [(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
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

/// Paths the worker does not serve: an empty 404, as axum's own fallback.
async fn not_found() -> StatusCode {
    StatusCode::NOT_FOUND
}

#[cfg(test)]
mod tests;
