//! `worker`: an HTTP worker that serves the broker's args. It fetches them
//! before it accepts any connection, then follows every change.
mod cache;
mod http;
mod serve;

use anyhow::Context;
use argsbroker::{client, DEFAULT_SOCKET};
use clap::Parser;
use socket2::{Domain, Socket, Type};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Serve the broker's args over HTTP (GET or HEAD): /args, /args/<json-pointer>, /healthz, /readyz.
///
/// The worker connects to the broker first (waiting up to --startup-timeout),
/// and listens only once it holds the args; then it follows every new
/// revision, and keeps serving the last one if the broker goes away.
#[derive(Debug, Parser)]
#[command(
    name = "worker",
    version,
    after_help = "Every flag can also be set by its ARGSBROKER_* variable.\n\nExit status: 0 after a clean shutdown; 1 on any error, described in one line on stderr; 2 for a usage error."
)]
struct Cli {
    /// The broker's Unix socket.
    #[arg(long, value_name = "PATH", env = "ARGSBROKER_SOCKET", default_value = DEFAULT_SOCKET)]
    broker: PathBuf,

    /// The HTTP address to listen on.
    #[arg(
        long,
        value_name = "HOST:PORT",
        env = "ARGSBROKER_LISTEN",
        default_value = "127.0.0.1:9880",
        value_parser = argsbroker::cmdline::host_port
    )]
    listen: SocketAddr,

    /// Share the port with other workers (SO_REUSEPORT); the kernel spreads connections among them.
    #[arg(long, env = "ARGSBROKER_REUSE_PORT")]
    reuse_port: bool,

    /// How long to wait for the broker at startup before giving up, in seconds.
    #[arg(long, value_name = "SECONDS", env = "ARGSBROKER_STARTUP_TIMEOUT", default_value = "10", value_parser = argsbroker::cmdline::seconds)]
    startup_timeout: Duration,

    /// Keep the last args in this file (written atomically on every revision); if the broker
    /// cannot be reached at startup, start from it instead of failing.
    #[arg(long, value_name = "PATH", env = "ARGSBROKER_CACHE_FILE")]
    cache_file: Option<PathBuf>,

    /// How long in-flight requests get to finish after SIGINT or SIGTERM, in seconds.
    #[arg(long, value_name = "SECONDS", env = "ARGSBROKER_GRACEFUL_TIMEOUT", default_value = "10", value_parser = argsbroker::cmdline::seconds)]
    graceful_timeout: Duration,

    /// Close a connection whose request line and headers have not all arrived this many seconds
    /// after their first byte.
    #[arg(long, value_name = "SECONDS", env = "ARGSBROKER_HEADER_TIMEOUT", default_value = "10", value_parser = argsbroker::cmdline::positive_seconds)]
    header_timeout: Duration,

    /// Close a keep-alive connection that has sent no request for this many seconds.
    #[arg(long, value_name = "SECONDS", env = "ARGSBROKER_IDLE_TIMEOUT", default_value = "60", value_parser = argsbroker::cmdline::positive_seconds)]
    idle_timeout: Duration,

    /// Threads serving HTTP in this process. One is best when several workers share a port:
    /// the kernel already spreads connections across processes, and one thread never hands
    /// work across cores.
    #[arg(long, value_name = "N", env = "ARGSBROKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    argsbroker::logging::init(None);
    let runtime = match cli.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.into())
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(err) => return fail(anyhow::Error::new(err).context("cannot start the async runtime")),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(err),
    }
}

fn fail(err: anyhow::Error) -> ExitCode {
    eprintln!("worker: error: {}", argsbroker::one_line(err.as_ref()));
    ExitCode::FAILURE
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    ignore_sighup()?;
    // The startup hook: hold the args before listening, because with
    // SO_REUSEPORT the kernel hands connections to any bound worker.
    let cache = cli.cache_file.clone().map(cache::Writer::start);
    let saver = cache.clone();
    let prepare = move |snapshot: client::Snapshot| {
        if let Some(cache) = &saver {
            cache.save(&snapshot);
        }
        http::Prepared::new(snapshot)
    };
    let startup_timeout = cli.startup_timeout;
    let live = match client::follow(&cli.broker, startup_timeout, prepare.clone()).await {
        Ok(live) => live,
        Err(err @ client::ClientError::Unreachable { .. }) => {
            let Some(path) = &cli.cache_file else {
                return Err(err.into());
            };
            match cache::read(path) {
                Ok(snapshot) => {
                    tracing::warn!(
                        cache = %path.display(),
                        revision = snapshot.revision,
                        "{}; starting from the cache file and reconnecting in the background",
                        argsbroker::one_line(&err)
                    );
                    client::follow_from(&cli.broker, snapshot, prepare)
                }
                Err(cache_err) => {
                    tracing::error!(
                        "ignoring the cache file: {}",
                        argsbroker::one_line(&cache_err)
                    );
                    return Err(err.into());
                }
            }
        }
        Err(client::ClientError::NotASocket(path)) => anyhow::bail!(
            "{} is not a socket; --broker must name the broker's --socket",
            path.display()
        ),
        Err(err) => return Err(err.into()),
    };
    let listener = listen(cli.listen, cli.reuse_port)
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(
        listen = %local,
        broker = %cli.broker.display(),
        revision = live.revision(),
        "serving args on http://{local}/args"
    );
    argsbroker::sd_notify::ready();
    let graceful_timeout = cli.graceful_timeout;
    let bounds = serve::Bounds {
        header_timeout: cli.header_timeout,
        idle_timeout: cli.idle_timeout,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = argsbroker::shutdown::signal();
    let server = serve::run(listener, http::app(live), bounds, async move {
        shutdown.await;
        tracing::info!("shutting down; finishing in-flight requests");
        let _ = stop_tx.send(());
    });
    tokio::select! {
        _ = server => {}
        _ = async { let _ = stop_rx.await; tokio::time::sleep(graceful_timeout).await } => {
            tracing::warn!("requests still in flight after {graceful_timeout:?}; exiting");
        }
    }
    Ok(())
}

/// A worker has no file to reload: SIGHUP (which would otherwise end the
/// process) is logged and ignored.
fn ignore_sighup() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!(
                "SIGHUP: a worker has nothing to reload; send SIGHUP to the broker to reload the args file"
            );
        }
    });
    Ok(())
}

fn listen(addr: SocketAddr, reuse_port: bool) -> std::io::Result<tokio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(socket.into())
}
