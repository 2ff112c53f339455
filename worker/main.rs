//! `worker`: an HTTP worker that serves the broker's args. It fetches them
//! before it accepts any connection, then follows every change.
//!
//! This file is the command line; the worker's life is `run`, its HTTP
//! surface `http`, its server loop `serve`, its cache file `cache`.
mod cache;
mod http;
mod run;

use argsbroker::DEFAULT_SOCKET;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Serve the broker's args over HTTP (GET or HEAD): /args, /args/<json-pointer>, /healthz, /readyz, /metrics.
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

    /// The HTTP address to listen on. Port 0 lets the kernel pick a free one: the log line `serving args on http://HOST:PORT/args` and `broker status` name it.
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

    /// Connections open at once; past that, new ones wait in the listen backlog until one closes
    /// (each takes a file descriptor).
    #[arg(long, value_name = "N", env = "ARGSBROKER_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,

    /// Threads serving HTTP in this process. One is best when several workers share a port:
    /// the kernel already spreads connections across processes, and one thread never hands
    /// work across cores.
    #[arg(long, value_name = "N", env = "ARGSBROKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,

    /// Answer /readyz with 503 (not ready, and why) once the broker has been out of reach for
    /// this many seconds, so that a load balancer stops sending requests to a worker whose args
    /// may be old; 200 again as soon as the broker is back. The worker keeps serving /args
    /// meanwhile (marked X-Args-Stale). Without it, /readyz is 200 for as long as args are held.
    #[arg(long, value_name = "SECONDS", env = "ARGSBROKER_MAX_STALE", value_parser = argsbroker::cmdline::seconds)]
    max_stale: Option<Duration>,

    /// A JSON Schema (draft 2020-12) every revision must satisfy before this worker serves it. A
    /// revision that does not is rejected: the worker keeps serving the one before, says so in
    /// /readyz ("rejected") and its log, and tells the broker (`broker status`, `broker patch
    /// --wait`). The first revision must satisfy it, or the worker does not start.
    #[arg(long, value_name = "FILE", env = "ARGSBROKER_WORKER_SCHEMA")]
    schema: Option<PathBuf>,

    /// The name the broker lists this worker under (`broker status`), and that a canary
    /// selects it by (`--canary 25%` hashes it, `--canary name=GLOB` matches it): give each
    /// worker its own, the same across restarts. Default: "worker HOST:PORT" (with "#INDEX"
    /// under `broker --workers`, whose workers share one port).
    #[arg(long, value_name = "NAME", env = "ARGSBROKER_WORKER_NAME")]
    name: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run::run(run::Config {
        broker: cli.broker,
        listen: cli.listen,
        reuse_port: cli.reuse_port,
        startup_timeout: cli.startup_timeout,
        cache_file: cli.cache_file,
        graceful_timeout: cli.graceful_timeout,
        bounds: argsbroker::http_serve::Bounds {
            header_timeout: cli.header_timeout,
            idle_timeout: cli.idle_timeout,
            max_connections: cli.max_connections as usize,
        },
        threads: cli.threads,
        schema: cli.schema,
        name: cli.name,
        http: http::Options {
            max_stale: cli.max_stale,
        },
    })
}
