//! The worker's HTTP refusals as one type: a handler returns
//! `Result<_, HttpError>` and [`IntoResponse`] turns the error into its
//! answer, in the style of axum's error-handling example.
//!
//! Every variant is the client's mistake (a path that is no JSON pointer, one
//! that names nothing, a bad query parameter) or an answer the client asked
//! for (a revision not reached in time), so none is logged. The worker has no server
//! error to answer today; one added here would be logged where it is turned
//! into a response and answered with a generic body that quotes nothing.
use argsbroker::pointer::PointerError;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// 400. axum's own rejection text would quote the request; ours quotes nothing.
    #[error("the path is not a JSON pointer: its percent-encoding does not decode to UTF-8")]
    NotUtf8,
    /// 414: the pointer (decoded, with its leading `/`) is over `limit` bytes.
    #[error("the JSON pointer is {bytes} bytes; at most {limit}")]
    TooLong { bytes: usize, limit: usize },
    /// 400: not a JSON pointer (a `~` that is not `~0` or `~1`).
    #[error("{source}")]
    BadPointer {
        pointer: String,
        source: PointerError,
    },
    /// 404: a JSON pointer that names no value in the args.
    #[error("no value at JSON pointer {pointer:?}")]
    NotFound { pointer: String },
    /// 400: a query parameter whose value is not what it must be (`None`:
    /// its percent-encoding is not UTF-8, so it is not quoted).
    #[error("{}{}", expected(parameter), match value {
        Some(value) => format!(", not {value:?}"),
        None => "; its percent-encoding does not decode to UTF-8".to_owned(),
    })]
    BadParameter {
        parameter: &'static str,
        value: Option<String>,
    },
    /// 400: a query parameter given twice (which one counts is not known).
    #[error("{parameter} is given more than once")]
    RepeatedParameter { parameter: &'static str },
    /// 409: `min_revision` was not reached within `waited`.
    #[error("revision {min_revision} was not reached within {}; this worker serves revision {revision}", humantime::format_duration(*waited))]
    NotReached {
        revision: u64,
        min_revision: u64,
        waited: Duration,
    },
}

/// What a query parameter's value must be.
fn expected(parameter: &str) -> &'static str {
    match parameter {
        "wait" => "wait must be a number of seconds (2.5) or a duration with a unit (500ms, 2s)",
        _ => "min_revision must be a revision number (0 or more)",
    }
}

impl HttpError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotUtf8
            | Self::BadPointer { .. }
            | Self::BadParameter { .. }
            | Self::RepeatedParameter { .. } => StatusCode::BAD_REQUEST,
            Self::TooLong { .. } => StatusCode::URI_TOO_LONG,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::NotReached { .. } => StatusCode::CONFLICT,
        }
    }
}

/// A JSON body `{"error": <message>}`, with `"pointer"` when the request
/// named one, `"parameter"` for a bad query parameter, and `"revision"` and
/// `"min_revision"` for a revision not reached; serde_json escapes whatever
/// the request put in it.
impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let error = self.to_string();
        let body = match &self {
            Self::BadPointer { pointer, .. } | Self::NotFound { pointer } => {
                serde_json::json!({ "error": error, "pointer": pointer })
            }
            Self::BadParameter { parameter, .. } | Self::RepeatedParameter { parameter } => {
                serde_json::json!({ "error": error, "parameter": parameter })
            }
            Self::NotReached {
                revision,
                min_revision,
                ..
            } => serde_json::json!({
                "error": error,
                "revision": revision,
                "min_revision": min_revision,
            }),
            Self::NotUtf8 | Self::TooLong { .. } => serde_json::json!({ "error": error }),
        };
        (self.status(), [(CONTENT_TYPE, JSON)], body.to_string()).into_response()
    }
}
