//! `broker`: owns the args file and serves it over gRPC on a Unix socket.
mod authority;
mod durable;
mod server;
mod service;
mod socket;
mod store;

use anyhow::Context;
use argsbroker::DEFAULT_SOCKET;
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Serve one shared, live, exact set of args to every worker process on this host.
///
/// The args file must hold a JSON object. The broker serves it as
/// argsbroker.v1.ArgsBroker over gRPC on a Unix socket (mode 0600), with
/// server reflection and grpc.health.v1.Health, until SIGINT or SIGTERM.
#[derive(Debug, Parser)]
#[command(
    name = "broker",
    version,
    after_help = "Every flag can also be set by its ARGSBROKER_* variable.\n\nExit status: 0 after a clean shutdown; 1 on any error, described in one line on stderr; 2 for a usage error."
)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The args file: a JSON object. Numbers, key order and Unicode are served exactly.
    #[arg(long, value_name = "FILE", env = "ARGSBROKER_ARGS")]
    args: PathBuf,

    /// The Unix socket to serve on.
    #[arg(long, value_name = "PATH", env = "ARGSBROKER_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,

    /// Where the revision of the args is kept across restarts [default: FILE.state beside the args file]
    #[arg(long, value_name = "DIR", env = "ARGSBROKER_STATE_DIR")]
    state_dir: Option<PathBuf>,

    /// The largest document accepted, in bytes (the file and every write).
    #[arg(long, value_name = "BYTES", env = "ARGSBROKER_MAX_ARGS_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_args_bytes: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    argsbroker::logging::init(Some(authority::AuthorityHint::layer()));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => return fail(anyhow::Error::new(err).context("cannot start the async runtime")),
    };
    match runtime.block_on(serve(cli.serve)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(err),
    }
}

fn fail(err: anyhow::Error) -> ExitCode {
    eprintln!("broker: error: {}", argsbroker::one_line(err.as_ref()));
    ExitCode::FAILURE
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let state_dir = args
        .state_dir
        .unwrap_or_else(|| default_state_dir(&args.args));
    let store = Arc::new(store::Store::open(
        &args.args,
        &state_dir,
        args.max_args_bytes,
    )?);
    let std_listener = socket::bind(&args.socket)?;
    let listener =
        tokio::net::UnixListener::from_std(std_listener).context("cannot use the bound socket")?;
    tracing::info!(
        socket = %args.socket.display(),
        args = %args.args.display(),
        revision = store.current().revision,
        "serving"
    );
    let result = server::run(listener, store, shutdown_signal()).await;
    if let Err(err) = std::fs::remove_file(&args.socket) {
        tracing::warn!(socket = %args.socket.display(), %err, "could not remove the socket");
    }
    result?;
    tracing::info!("stopped");
    Ok(())
}

/// `args.json` keeps its revision in `args.json.state/`.
fn default_state_dir(args: &Path) -> PathBuf {
    let mut name = args
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".state");
    args.with_file_name(name)
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the broker with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
