//! The worker's life, from its flags to its exit: follow the broker (or
//! start from the cache file), listen, serve until SIGINT or SIGTERM, and
//! give requests in flight `graceful_timeout` to finish.
use crate::{cache, http};
use anyhow::Context;
use argsbroker::client::{self, Live};
use socket2::{Domain, Socket, Type};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// What the command line asks for (see `Cli` for each flag).
#[derive(Debug)]
pub struct Config {
    pub broker: PathBuf,
    pub listen: SocketAddr,
    pub reuse_port: bool,
    pub startup_timeout: Duration,
    pub cache_file: Option<PathBuf>,
    pub graceful_timeout: Duration,
    pub bounds: argsbroker::http_serve::Bounds,
    /// Threads serving HTTP: one is a current-thread runtime.
    pub threads: u16,
    pub http: http::Options,
    /// Revisions that do not satisfy it are rejected, not served.
    pub schema: Option<PathBuf>,
    /// `--name`: how the broker lists (and a canary selects) this worker.
    pub name: Option<String>,
}

/// Runs the worker to its end: 0 after a clean shutdown, 1 after an error
/// (described in one line on stderr).
pub fn run(config: Config) -> ExitCode {
    argsbroker::logging::init(None);
    let runtime = match config.threads {
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
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(err),
    }
}

fn fail(err: anyhow::Error) -> ExitCode {
    eprintln!("worker: error: {}", argsbroker::one_line(err.as_ref()));
    ExitCode::FAILURE
}

/// Holds the args, listens, and serves until a shutdown signal.
async fn serve(config: Config) -> anyhow::Result<()> {
    ignore_sighup()?;
    // Bound first, so that the name the broker lists this worker under
    // carries the port it serves (`--listen HOST:0` lets the kernel pick
    // one). Listening waits until the args are held, because with
    // SO_REUSEPORT the kernel hands connections to any listening worker.
    let cannot = || format!("cannot listen on {}", config.listen);
    let socket = bind(config.listen, config.reuse_port).with_context(cannot)?;
    let local = socket
        .local_addr()
        .with_context(cannot)?
        .as_socket()
        .with_context(|| format!("{}: the bound address is not an IP address", cannot()))?;
    let live = hold_args(&config, local).await?;
    let listener = listen(socket).with_context(cannot)?;
    tracing::info!(
        listen = %local,
        broker = %config.broker.display(),
        revision = live.revision(),
        "serving args on http://{local}/args"
    );
    argsbroker::sd_notify::ready();
    let graceful_timeout = config.graceful_timeout;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = argsbroker::shutdown::signal();
    let server = argsbroker::http_serve::run(
        listener,
        http::app_with(live, config.http),
        config.bounds,
        async move {
            shutdown.await;
            tracing::info!("shutting down; finishing in-flight requests");
            let _ = stop_tx.send(());
        },
    );
    tokio::select! {
        _ = server => {}
        _ = async { let _ = stop_rx.await; tokio::time::sleep(graceful_timeout).await } => {
            tracing::warn!("requests still in flight after {graceful_timeout:?}; exiting");
        }
    }
    Ok(())
}

/// The args from the broker (waiting up to `startup_timeout`), followed from
/// then on; or, if the broker cannot be reached and there is a cache file,
/// the cached args while reconnecting in the background. Every revision is
/// saved to the cache file.
async fn hold_args(config: &Config, local: SocketAddr) -> anyhow::Result<Live<http::Prepared>> {
    let saver = config.cache_file.clone().map(cache::Writer::start);
    let prepare = move |snapshot: client::Snapshot| {
        if let Some(cache) = &saver {
            cache.save(&snapshot);
        }
        http::Prepared::new(snapshot)
    };
    let validate = match &config.schema {
        Some(path) => {
            let schema = argsbroker::schema::Schema::load(path)?;
            let shown = path.display().to_string();
            let check: client::Validate = Arc::new(move |snapshot: &client::Snapshot| {
                schema
                    .check(snapshot.document.value())
                    .map_err(|violations| {
                        format!("the document does not satisfy the schema {shown}: {violations}")
                    })
            });
            Some(check)
        }
        None => None,
    };
    let options = client::FollowOptions {
        name: Some(
            match (&config.name, std::env::var("ARGSBROKER_WORKER_INDEX")) {
                (Some(name), _) => name.clone(),
                // One of `broker --workers`: they share the port.
                (None, Ok(index)) => format!("worker {local} #{index}"),
                (None, Err(_)) => format!("worker {local}"),
            },
        ),
        validate,
    };
    let followed = client::follow_with(
        &config.broker,
        config.startup_timeout,
        options.clone(),
        prepare.clone(),
    );
    match followed.await {
        Ok(live) => Ok(live),
        Err(err @ client::ClientError::Unreachable { .. }) => {
            let Some(path) = &config.cache_file else {
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
                    Ok(client::follow_from_with(
                        &config.broker,
                        snapshot,
                        options,
                        prepare,
                    ))
                }
                Err(cache_err) => {
                    tracing::error!(
                        "ignoring the cache file: {}",
                        argsbroker::one_line(&cache_err)
                    );
                    Err(err.into())
                }
            }
        }
        Err(client::ClientError::NotASocket(path)) => anyhow::bail!(
            "{} is not a socket; --broker must name the broker's --socket",
            path.display()
        ),
        Err(err) => Err(err.into()),
    }
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

/// A socket bound to `addr` (the kernel picks the port for port 0), not
/// listening yet: nothing is accepted on it, and with `--reuse-port` the
/// kernel sends nothing its way.
fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

fn listen(socket: Socket) -> std::io::Result<tokio::net::TcpListener> {
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(socket.into())
}
