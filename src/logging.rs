//! Logging for both binaries: `tracing` to stderr, filtered by `RUST_LOG`
//! (default `info`).
use tracing_subscriber::{
    layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer, Registry,
};

/// A layer that sees events under its own filter, beside the stderr logger.
pub type ExtraLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the stderr logger, then `extra`: the logger sees each event
/// first, so an extra layer that logs from inside `on_event` cannot change
/// what the logger was going to print.
pub fn init(extra: Option<ExtraLayer>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a log file or journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .with_filter(filter);
    let mut layers: Vec<ExtraLayer> = vec![fmt.boxed()];
    layers.extend(extra);
    tracing_subscriber::registry().with(layers).init();
}
