//! The worker's HTTP refusals as one type: a handler returns
//! `Result<_, HttpError>` and [`IntoResponse`] turns the error into its
//! answer, in the style of axum's error-handling example.
//!
//! Every variant is the client's mistake (a path that is no JSON pointer, or
//! one that names nothing), so none is logged. The worker has no server
//! error to answer today; one added here would be logged where it is turned
//! into a response and answered with a generic body that quotes nothing.
use argsbroker::pointer::PointerError;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

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
}

impl HttpError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotUtf8 | Self::BadPointer { .. } => StatusCode::BAD_REQUEST,
            Self::TooLong { .. } => StatusCode::URI_TOO_LONG,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
        }
    }
}

/// A JSON body `{"error": <message>}`, with `"pointer"` when the request
/// named one; serde_json escapes whatever the request put in it.
impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let error = self.to_string();
        let body = match &self {
            Self::BadPointer { pointer, .. } | Self::NotFound { pointer } => {
                serde_json::json!({ "error": error, "pointer": pointer })
            }
            Self::NotUtf8 | Self::TooLong { .. } => serde_json::json!({ "error": error }),
        };
        (self.status(), [(CONTENT_TYPE, JSON)], body.to_string()).into_response()
    }
}
