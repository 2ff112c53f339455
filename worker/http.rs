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
mod error;
mod stale;

pub use error::HttpError;
pub use stale::StaleLayer;

use argsbroker::client::{Live, Snapshot};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::handler::Handler;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;

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

/// The worker's router. The answers of `/args` and `/args/...` are marked
/// stale by [`StaleLayer`]; a path that is no pointer at all (not UTF-8, too
/// long) is refused by [`pointer`] before the args are read, so that refusal
/// is not marked.
pub fn app(live: Live<Prepared>) -> Router {
    let stale = StaleLayer::new(live.clone());
    Router::new()
        .route("/args", get(whole.layer(stale.clone())))
        .route("/args/", get(at_pointer_root.layer(stale.clone())))
        .route(
            "/args/{*pointer}",
            get(at_pointer.layer(stale)).route_layer(middleware::from_fn(pointer)),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(live)
}

async fn whole(State(live): State<Live<Prepared>>, request: HeaderMap) -> Response {
    let prepared = live.load();
    if prepared.matches(&request) {
        (StatusCode::NOT_MODIFIED, prepared.headers()).into_response()
    } else {
        (
            prepared.headers(),
            [(CONTENT_TYPE, JSON)],
            prepared.body.clone(),
        )
            .into_response()
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
    request: HeaderMap,
) -> Result<Response, HttpError> {
    at_pointer(live, Extension(Pointer("/".to_owned())), request).await
}

async fn at_pointer(
    State(live): State<Live<Prepared>>,
    Extension(Pointer(pointer)): Extension<Pointer>,
    request: HeaderMap,
) -> Result<Response, HttpError> {
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

/// Ready whenever args are held, which is always once the worker listens.
async fn readyz(State(live): State<Live<Prepared>>) -> Response {
    let body = serde_json::json!({
        "status": "ready",
        "revision": live.revision(),
        "connected": live.is_connected(),
        "since_last_contact_ms": live.since_last_contact().as_millis() as u64,
        "lineage": &*live.lineage(),
        "backend_connected": live.backend_connected(),
    });
    ([(CONTENT_TYPE, JSON)], body.to_string()).into_response()
}

#[cfg(test)]
mod tests;
