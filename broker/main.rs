//! `broker`: owns the args file and serves it over gRPC on a Unix socket;
//! with a subcommand, a command-line client of a running broker.
mod authority;
mod cli;
mod history;
mod reload;
mod server;
mod service;
mod socket;
mod store;
mod supervisor;

use anyhow::Context;
use argsbroker::DEFAULT_SOCKET;
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

const AFTER_HELP: &str = "\
Every flag can also be set by its ARGSBROKER_* variable.

Signals: SIGINT/SIGTERM stop the broker cleanly; SIGHUP re-reads the args file.

Exit status: 0 on success or a clean shutdown; 1 on any error, described in one
line on stderr; 2 for a usage error; 3 for a revision conflict
(--expected-revision is not current); 4 when a pointer or revision names nothing.";

/// Serve one shared, live, exact set of args to every worker process on this host.
///
/// The args file must hold a JSON object. The broker serves it as
/// argsbroker.v1.ArgsBroker over gRPC on a Unix socket (mode 0600), with
/// server reflection and grpc.health.v1.Health, until SIGINT or SIGTERM.
/// With a subcommand (get, set, patch, watch, history, rollback) it is a
/// client of a running broker instead.
#[derive(Debug, Parser)]
#[command(name = "broker", version, after_help = AFTER_HELP, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<cli::Command>,

    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The args file: a JSON object. Numbers, key order and Unicode are served exactly.
    #[arg(long, value_name = "FILE", env = "ARGSBROKER_ARGS", required = true)]
    args: Option<PathBuf>,

    /// The Unix socket to serve on.
    #[arg(long, value_name = "PATH", env = "ARGSBROKER_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,

    /// Where revisions are kept across restarts [default: FILE.state beside the args file]
    #[arg(long, value_name = "DIR", env = "ARGSBROKER_STATE_DIR")]
    state_dir: Option<PathBuf>,

    /// The largest document accepted, in bytes (the file and every write).
    #[arg(long, value_name = "BYTES", env = "ARGSBROKER_MAX_ARGS_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_args_bytes: usize,

    /// How many revisions to retain for history, rollback and watch replays (at least 1).
    #[arg(
        long,
        value_name = "N",
        env = "ARGSBROKER_HISTORY",
        default_value_t = 100
    )]
    history: usize,

    /// The most bytes of documents to retain in history; the current revision always stays.
    #[arg(long, value_name = "BYTES", env = "ARGSBROKER_HISTORY_BYTES", default_value_t = 64 * 1024 * 1024)]
    history_bytes: usize,

    /// Serve the file and refuse every write (FAILED_PRECONDITION); change the file and send SIGHUP instead.
    #[arg(long, env = "ARGSBROKER_READ_ONLY")]
    read_only: bool,

    /// Follow the args file on disk and publish each valid change as a new revision.
    #[arg(long, env = "ARGSBROKER_WATCH")]
    watch: bool,

    /// Also run N worker processes sharing --http (0: the broker alone). Each is restarted if it dies.
    #[arg(
        long,
        value_name = "N",
        env = "ARGSBROKER_WORKERS",
        default_value_t = 0,
        requires = "http"
    )]
    workers: usize,

    /// The HTTP address the workers share (SO_REUSEPORT), with --workers.
    #[arg(long, value_name = "HOST:PORT", env = "ARGSBROKER_HTTP")]
    http: Option<std::net::SocketAddr>,

    /// The worker executable [default: `worker` beside this broker's executable]
    #[arg(long, value_name = "PATH", env = "ARGSBROKER_WORKER_BIN")]
    worker_bin: Option<PathBuf>,

    /// With --workers: how long workers get to finish in-flight requests on shutdown before SIGKILL, in seconds.
    #[arg(long, value_name = "SECONDS", env = "ARGSBROKER_GRACEFUL_TIMEOUT", default_value = "10", value_parser = argsbroker::cmdline::seconds)]
    graceful_timeout: Duration,

    /// Extra arguments for every worker, after `--` (e.g. -- --cache-file /var/cache/args.json).
    #[arg(last = true, value_name = "WORKER-ARGS")]
    worker_args: Vec<std::ffi::OsString>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    argsbroker::logging::init(Some(authority::AuthorityHint::layer()));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            return fail(
                &anyhow::Error::new(err).context("cannot start the async runtime"),
                1,
            )
        }
    };
    let result = match cli.command {
        Some(command) => runtime.block_on(cli::run(command)),
        None => runtime
            .block_on(serve(cli.serve))
            .map_err(cli::Failure::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => fail(&failure.error, failure.code),
    }
}

fn fail(err: &anyhow::Error, code: u8) -> ExitCode {
    eprintln!("broker: error: {}", argsbroker::one_line(err.as_ref()));
    ExitCode::from(code)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let Some(args_path) = args.args else {
        anyhow::bail!("--args FILE is required to serve (or give a subcommand; see --help)");
    };
    let state_dir = args
        .state_dir
        .unwrap_or_else(|| default_state_dir(&args_path));
    let limits = store::Limits {
        max_args_bytes: args.max_args_bytes,
        history: args.history,
        history_bytes: args.history_bytes,
        read_only: args.read_only,
    };
    let worker_bin = match (&args.worker_bin, args.workers) {
        (_, 0) => PathBuf::new(),
        (Some(bin), _) => bin.clone(),
        (None, _) => std::env::current_exe()
            .context("cannot find this executable's path")?
            .with_file_name("worker"),
    };
    if args.workers > 0 && !worker_bin.is_file() {
        anyhow::bail!(
            "cannot find the worker executable at {} (build it, or point --worker-bin at it)",
            worker_bin.display()
        );
    }
    let store = Arc::new(store::Store::open(&args_path, &state_dir, limits)?);
    // Reloads are set up before the socket exists: once a client can
    // connect, a SIGHUP or a change to the file is never missed.
    reload::on_sighup(store.clone()).context("cannot handle SIGHUP")?;
    let _watcher = match args.watch {
        true => Some(
            reload::watch_file(store.clone(), &args_path).context("cannot watch the args file")?,
        ),
        false => None,
    };
    let std_listener = socket::bind(&args.socket)?;
    let listener =
        tokio::net::UnixListener::from_std(std_listener).context("cannot use the bound socket")?;
    tracing::info!(
        socket = %args.socket.display(),
        args = %args_path.display(),
        revision = store.current().revision,
        read_only = args.read_only,
        watch = args.watch,
        "serving"
    );
    let result = match args.http.filter(|_| args.workers > 0) {
        None => {
            argsbroker::sd_notify::ready();
            server::run(listener, store, argsbroker::cmdline::shutdown_signal()).await
        }
        Some(http) => {
            let plan = supervisor::Plan {
                workers: args.workers,
                http,
                worker_bin,
                socket: args.socket.clone(),
                worker_args: args.worker_args,
                graceful_timeout: args.graceful_timeout,
            };
            // Workers stop first, then the broker they were following.
            let (stop_broker, broker_stops) = tokio::sync::oneshot::channel::<()>();
            let broker = server::run(listener, store, async {
                let _ = broker_stops.await;
            });
            // Joined, not spawned: the supervisor must run on this (the main) thread.
            let workers = async {
                let result = supervisor::run(
                    plan,
                    argsbroker::cmdline::shutdown_signal(),
                    argsbroker::sd_notify::ready,
                )
                .await;
                let _ = stop_broker.send(());
                result
            };
            let (broker, workers) = tokio::join!(broker, workers);
            workers.and(broker)
        }
    };
    if let Err(err) = std::fs::remove_file(&args.socket) {
        tracing::warn!(socket = %args.socket.display(), %err, "could not remove the socket");
    }
    result?;
    tracing::info!("stopped");
    Ok(())
}

/// `args.json` keeps its revisions in `args.json.state/`.
fn default_state_dir(args: &Path) -> PathBuf {
    let mut name = args
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".state");
    args.with_file_name(name)
}
