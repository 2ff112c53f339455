//! The worker's HTTP surface. Every answer about the args is read from the
//! live cache with one pointer load; `GET /args` hands out a body and headers
//! prepared once per revision.
//!
//! Requests are only ever GETs (and HEADs, answered like GET without the
//! body): no handler reads a body, so one that is sent is never buffered;
//! other methods get 405. A pointer longer than
//! `MAX_POINTER_BYTES` gets 414 (hyper answers 414 itself past 64 KiB), and
//! request data that appears in an answer is in a JSON string, escaped.
use argsbroker::client::{Live, Snapshot};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;

pub const X_ARGS_REVISION: HeaderName = HeaderName::from_static("x-args-revision");
/// Present (`true`) while the worker has lost its broker and serves its last args.
pub const X_ARGS_STALE: HeaderName = HeaderName::from_static("x-args-stale");
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

pub fn app(live: Live<Prepared>) -> Router {
    Router::new()
        .route("/args", get(whole))
        .route("/args/", get(at_pointer_root))
        .route("/args/{*pointer}", get(at_pointer))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(live)
}

async fn whole(State(live): State<Live<Prepared>>, request: HeaderMap) -> Response {
    let prepared = live.load();
    let response = if prepared.matches(&request) {
        (StatusCode::NOT_MODIFIED, prepared.headers()).into_response()
    } else {
        (
            prepared.headers(),
            [(CONTENT_TYPE, JSON)],
            prepared.body.clone(),
        )
            .into_response()
    };
    mark_stale(&live, response)
}

/// `/args/` is the pointer `/`: the key "" at the top level.
async fn at_pointer_root(live: State<Live<Prepared>>, request: HeaderMap) -> Response {
    at_pointer(live, Ok(Path(String::new())), request).await
}

async fn at_pointer(
    State(live): State<Live<Prepared>>,
    rest: Result<Path<String>, PathRejection>,
    request: HeaderMap,
) -> Response {
    // axum's own rejection text quotes the request; answer in our words.
    let Ok(Path(rest)) = rest else {
        let body = serde_json::json!({
            "error": "the path is not a JSON pointer: its percent-encoding does not decode to UTF-8"
        });
        return (
            StatusCode::BAD_REQUEST,
            [(CONTENT_TYPE, JSON)],
            body.to_string(),
        )
            .into_response();
    };
    if rest.len() >= MAX_POINTER_BYTES {
        let body = serde_json::json!({
            "error": format!("the JSON pointer is {} bytes; at most {MAX_POINTER_BYTES}", rest.len() + 1)
        });
        return (
            StatusCode::URI_TOO_LONG,
            [(CONTENT_TYPE, JSON)],
            body.to_string(),
        )
            .into_response();
    }
    let prepared = live.load();
    let pointer = format!("/{rest}");
    let response = match prepared.snapshot.document.get(&pointer) {
        Ok(Some(_)) if prepared.matches(&request) => {
            (StatusCode::NOT_MODIFIED, prepared.headers()).into_response()
        }
        Ok(Some(value)) => (
            prepared.headers(),
            [(CONTENT_TYPE, JSON)],
            value.to_string(),
        )
            .into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            &format!("no value at JSON pointer {pointer:?}"),
            &pointer,
        ),
        Err(err) => error(StatusCode::BAD_REQUEST, &err.to_string(), &pointer),
    };
    mark_stale(&live, response)
}

/// Adds `X-Args-Stale: true` while the broker is out of reach.
fn mark_stale(live: &Live<Prepared>, mut response: Response) -> Response {
    if !live.is_connected() {
        response
            .headers_mut()
            .insert(X_ARGS_STALE, HeaderValue::from_static("true"));
    }
    response
}

/// A JSON error body; serde_json escapes whatever the request put in it.
fn error(status: StatusCode, message: &str, pointer: &str) -> Response {
    let body = serde_json::json!({ "error": message, "pointer": pointer }).to_string();
    (status, [(CONTENT_TYPE, JSON)], body).into_response()
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
    });
    ([(CONTENT_TYPE, JSON)], body.to_string()).into_response()
}

#[cfg(test)]
mod tests;
