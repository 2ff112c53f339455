//! argsbroker: one shared, live, exact set of arguments for every worker
//! process on a host.
//!
//! A `broker` process owns a JSON object (the args) and serves it over gRPC on
//! a Unix-domain socket; worker processes fetch it at startup, cache it and
//! follow every change. This library is what a Rust service embeds to be such
//! a worker; the `broker` and `worker` binaries are built on it.
//!
//! Layout:
//! - [`pb`]: the generated `argsbroker.v1` protobuf types and gRPC stubs
//!   (`pb::Args` is [`wire::Args`], whose JSON text is shared `Bytes`).
//! - [`document`]: the args document, parsed once and kept exact.
//! - [`pointer`]: RFC 6901 JSON pointers into a document.
//! - [`schema`]: a JSON Schema every document must satisfy (`broker --schema`).
//! - [`client`]: connect to a broker and follow its args with a lock-free cache.
//! - [`durable`]: atomic, fsynced file replacement that can be undone.
//! - [`frame`]: a gRPC response message encoded once and sent many times.
//! - [`sd_notify`]: systemd readiness notification.
//! - [`sys`]: every libc call, as a safe function with its reason.
//! - [`throttle`]: one warning of a kind at most once a period.
//! - [`logging`], [`cmdline`], [`shutdown`]: what both binaries share at their edges.
//!
//! # Example: an axum app that serves the live args
//! ```no_run
//! use argsbroker::client::{self, Snapshot};
//! use axum::{extract::State, routing::get, Router};
//! use std::time::Duration;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // Wait up to 10 s for the broker, then follow it in the background.
//! let args = client::follow("/run/argsbroker.sock", Duration::from_secs(10), |s: Snapshot| s).await?;
//! let app = Router::new()
//!     .route("/model", get(|State(args): State<client::Live<Snapshot>>| async move {
//!         // One pointer load; no RPC and no lock per request.
//!         let snapshot = args.load();
//!         snapshot.document.get("/model/path").ok().flatten().map(|v| v.to_string()).unwrap_or_default()
//!     }))
//!     .with_state(args);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

pub mod client;
pub mod cmdline;
pub mod document;
pub mod durable;
pub mod frame;
pub mod http_serve;
pub mod logging;
pub mod pointer;
pub mod quiet;
pub mod schema;
pub mod sd_notify;
pub mod shutdown;
pub mod sys;
pub mod throttle;
pub mod wire;

/// The generated protobuf types and gRPC stubs for `argsbroker.v1`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("argsbroker.v1");
    pub use crate::wire::Args;

    /// The encoded descriptor set of `proto/`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("argsbroker_descriptor");
}

/// The gRPC metadata key a revision conflict (FAILED_PRECONDITION) carries:
/// the current revision, so that clients need not parse the message.
pub const CONFLICT_METADATA: &str = "argsbroker-current-revision";

/// The default socket path of the broker, shared by every command line.
pub const DEFAULT_SOCKET: &str = "/tmp/argsbroker.sock";

/// Locks a mutex whose value a panic cannot leave half-written (a plain
/// value replaced whole, a list, a unit guard): a holder's panic is carried
/// on past rather than turned into a panic of every later caller.
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An error and its causes on one line, as the binaries print it. A cause
/// whose text the line already ends with is not repeated.
pub fn one_line(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}
