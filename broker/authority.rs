//! A hint for clients that send the socket path as the HTTP/2 `:authority`.
//!
//! grpcurl before 1.8.10, grpcio 1.57+ and grpc-java do that on `unix:`
//! targets; h2 refuses such a request with PROTOCOL_ERROR and says why only
//! in a debug event. This layer watches h2's debug events for that refusal
//! and logs one warning (at most one a minute) that says what to change.
use argsbroker::logging::ExtraLayer;
use argsbroker::throttle::Throttle;
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer};

const QUIET: Duration = Duration::from_secs(60);

pub struct AuthorityHint {
    throttle: Throttle,
}

impl AuthorityHint {
    /// The layer, seeing only `h2::server`'s events at debug and above: the
    /// refusal is logged there, and that module logs nothing per frame (h2's
    /// per-frame debug events live in `h2::codec`, and stay disabled).
    pub fn layer() -> ExtraLayer {
        let hint = Self {
            throttle: Throttle::new(QUIET),
        };
        hint.with_filter(Targets::new().with_target("h2::server", Level::DEBUG))
            .boxed()
    }
}

impl<S: Subscriber> Layer<S> for AuthorityHint {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        let Some(at) = message.0.find("malformed authority (") else {
            return;
        };
        if self.throttle.ready().is_none() {
            return;
        }
        // h2 prints the value as a byte string literal: b"/tmp/b.sock"
        let raw = message.0[at + "malformed authority (".len()..]
            .split(')')
            .next()
            .unwrap_or_default();
        let authority = raw.strip_prefix('b').unwrap_or(raw);
        tracing::warn!(
            "refused a request whose HTTP/2 :authority is {authority}, not a host name; \
             clients on a unix socket must send \"localhost\": grpcurl -authority localhost, \
             grpcio option (\"grpc.default_authority\", \"localhost\"), grpc-java overrideAuthority(\"localhost\")"
        );
    }
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}
