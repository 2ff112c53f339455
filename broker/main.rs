//! `broker`: owns the args file and serves it over gRPC on a Unix socket;
//! with a subcommand, a command-line client of a running broker.
mod access;
mod authority;
mod bake;
mod canary;
mod connections;
mod ctl;
mod diff;
#[cfg(feature = "etcd")]
mod fleet_hosts;
mod follow;
mod followers;
mod lockfile;
mod metrics;
mod page;
mod parent;
mod peer;
mod reload;
mod serve;
mod server;
mod service;
mod socket;
mod storage;
mod supervisor;
#[cfg(test)]
mod tests;

use argsbroker::DEFAULT_SOCKET;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const AFTER_HELP: &str = "\
Every flag can also be set by its ARGSBROKER_* variable.

Signals: SIGINT/SIGTERM stop the broker cleanly; SIGHUP re-reads the args file.

Exit status: 0 on success or a clean shutdown; 1 on any error, described in one
line on stderr; 2 for a usage error; 3 for a revision conflict
(--expected-revision is not current); 4 when a pointer or revision names nothing;
5 when a write committed but not every follower applied it (--wait).";

/// A gRPC message is at most 4 GiB (its length is 32 bits); 64 KiB of that
/// is kept for the rest of the `Args` message around the document.
const MAX_ARGS_BYTES: u64 = u32::MAX as u64 - server::MESSAGE_OVERHEAD as u64;

/// Serve one shared, live, exact set of args to every worker process on this host.
///
/// The args file must hold a JSON object. The broker serves it as
/// argsbroker.v1.ArgsBroker over gRPC on a Unix socket (mode 0600), with
/// server reflection and grpc.health.v1.Health, until SIGINT or SIGTERM.
/// Every peer that can open the socket may read; only root, the broker's
/// own uid and --writer-uid/--writer-gid may write.
/// With a subcommand (get, set, patch, watch, history, rollback) it is a
/// client of a running broker instead.
#[derive(Debug, Parser)]
#[command(name = "broker", version, after_help = AFTER_HELP, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<ctl::Command>,

    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The args file: a JSON object. Numbers, key order and Unicode are served exactly. With --etcd-endpoints: creates the etcd key if it does not exist yet (otherwise unused).
    #[arg(
        long,
        value_name = "FILE",
        env = "ARGSBROKER_ARGS",
        required_unless_present = "etcd_endpoints"
    )]
    args: Option<PathBuf>,

    /// The Unix socket to serve on.
    #[arg(long, value_name = "PATH", env = "ARGSBROKER_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,

    /// A JSON Schema (draft 2020-12) every document must satisfy: a write that would break it is refused (INVALID_ARGUMENT), and so is an args file (at start, on reload) or an etcd value that breaks it. One self-contained file: nothing is fetched for a `$ref`.
    #[arg(long, value_name = "FILE", env = "ARGSBROKER_SCHEMA")]
    schema: Option<PathBuf>,

    /// Where revisions (with etcd: the last-known-good copy) are kept across restarts [default: FILE.state beside the args file]
    #[arg(long, value_name = "DIR", env = "ARGSBROKER_STATE_DIR")]
    state_dir: Option<PathBuf>,

    /// The largest document accepted, in bytes (the file and every write); under 4 GiB, a gRPC message's limit.
    #[arg(long, value_name = "BYTES", env = "ARGSBROKER_MAX_ARGS_BYTES", default_value_t = 16 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..=MAX_ARGS_BYTES))]
    max_args_bytes: u64,

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

    /// Follow the args file on disk and publish each valid change as a new revision: however it is replaced, through symbolic links (a Kubernetes ConfigMap or Secret mount); polled every second where inotify cannot be had.
    #[arg(long, env = "ARGSBROKER_WATCH", conflicts_with = "etcd_endpoints")]
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

    /// The HTTP address the workers share (SO_REUSEPORT), with --workers. Port 0 lets the kernel pick a free one, held for the broker's life and named by the log line `all workers ready on http://HOST:PORT`.
    #[arg(long, value_name = "HOST:PORT", env = "ARGSBROKER_HTTP", value_parser = argsbroker::cmdline::host_port)]
    http: Option<std::net::SocketAddr>,

    /// Serve Prometheus metrics (GET /metrics, OpenMetrics text) and the read-only status page (GET /, refreshed from GET /status.json) over HTTP on this address, e.g. 127.0.0.1:9881. Port 0 lets the kernel pick a free one, named by the log line `serving metrics on http://HOST:PORT/metrics`.
    #[arg(long, value_name = "HOST:PORT", env = "ARGSBROKER_METRICS_LISTEN", value_parser = argsbroker::cmdline::host_port)]
    metrics_listen: Option<std::net::SocketAddr>,

    /// With --metrics-listen: close a connection whose request line and headers have not all
    /// arrived this many seconds after their first byte (as the worker's --header-timeout).
    #[arg(long, value_name = "SECONDS", env = "ARGSBROKER_METRICS_HEADER_TIMEOUT", default_value = "10", value_parser = argsbroker::cmdline::positive_seconds)]
    metrics_header_timeout: std::time::Duration,

    /// With --metrics-listen: close a keep-alive connection that has sent no request for this
    /// many seconds (as the worker's --idle-timeout).
    #[arg(long, value_name = "SECONDS", env = "ARGSBROKER_METRICS_IDLE_TIMEOUT", default_value = "60", value_parser = argsbroker::cmdline::positive_seconds)]
    metrics_idle_timeout: std::time::Duration,

    /// With --metrics-listen: connections open at once; past that, new ones wait in the listen
    /// backlog until one closes (as the worker's --max-connections).
    #[arg(long, value_name = "N", env = "ARGSBROKER_METRICS_MAX_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    metrics_max_connections: u32,

    /// The worker executable [default: `worker` beside this broker's executable; `argsbroker-worker` beside `argsbroker-broker`]
    #[arg(long, value_name = "PATH", env = "ARGSBROKER_WORKER_BIN")]
    worker_bin: Option<PathBuf>,

    /// With --workers: how long workers get to finish in-flight requests on shutdown before SIGKILL, in seconds.
    #[arg(long, value_name = "SECONDS", env = "ARGSBROKER_GRACEFUL_TIMEOUT", default_value = "10", value_parser = argsbroker::cmdline::seconds)]
    graceful_timeout: Duration,

    /// Extra arguments for every worker, after `--` (e.g. -- --cache-file /var/cache/args.json).
    #[arg(last = true, value_name = "WORKER-ARGS")]
    worker_args: Vec<std::ffi::OsString>,

    /// The socket's permission bits, in octal; it is never more open than this, even for an instant.
    #[arg(long, value_name = "OCTAL", env = "ARGSBROKER_SOCKET_MODE", default_value = "0600", value_parser = socket_mode)]
    socket_mode: u32,

    /// Give the socket to this group (a name or a gid), e.g. with --socket-mode 0660.
    #[arg(long, value_name = "GROUP", env = "ARGSBROKER_SOCKET_GROUP", value_parser = access::parse_gid)]
    socket_group: Option<u32>,

    /// Serve from a socket directory that other users can write (they could replace the socket), with a warning.
    #[arg(long, env = "ARGSBROKER_ALLOW_UNSAFE_DIR")]
    allow_unsafe_dir: bool,

    /// Also let this user (a name or a uid) write; repeat for more. Root and the broker's own uid always may.
    #[arg(long, value_name = "USER", env = "ARGSBROKER_WRITER_UID", value_delimiter = ',', value_parser = access::parse_uid)]
    writer_uid: Vec<u32>,

    /// Also let members of this group (primary or supplementary) write; repeat for more.
    #[arg(long, value_name = "GROUP", env = "ARGSBROKER_WRITER_GID", value_delimiter = ',', value_parser = access::parse_gid)]
    writer_gid: Vec<u32>,

    /// Let only these users (and the writers) read, health and reflection included; repeat for more [default: everyone who can open the socket]
    #[arg(long, value_name = "USER", env = "ARGSBROKER_READER_UID", value_delimiter = ',', value_parser = access::parse_uid)]
    reader_uid: Vec<u32>,

    /// Let only members of these groups (and the writers) read; repeat for more.
    #[arg(long, value_name = "GROUP", env = "ARGSBROKER_READER_GID", value_delimiter = ',', value_parser = access::parse_gid)]
    reader_gid: Vec<u32>,

    /// The most connections open at once; more wait in the kernel's queue until one closes.
    #[arg(long, value_name = "N", env = "ARGSBROKER_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,

    /// Close a connection that has not sent the HTTP/2 preface within this many seconds.
    #[arg(long, value_name = "SECONDS", env = "ARGSBROKER_HANDSHAKE_TIMEOUT", default_value = "10", value_parser = argsbroker::cmdline::seconds)]
    handshake_timeout: Duration,

    /// Stop (as on SIGTERM) when the process that started the broker exits, even by SIGKILL (Linux PR_SET_PDEATHSIG); with =PID, also refuse to start if that parent (PID) is already gone.
    #[arg(long, value_name = "PID", env = "ARGSBROKER_EXIT_WITH_PARENT", num_args = 0..=1, require_equals = true, default_missing_value = "0")]
    exit_with_parent: Option<u32>,

    /// Ping a connection after this many seconds without a frame from it; close it if the ping is not answered within as long again.
    #[arg(long, value_name = "SECONDS", env = "ARGSBROKER_KEEPALIVE", default_value = "30", value_parser = argsbroker::cmdline::seconds)]
    keepalive: Duration,

    #[command(flatten)]
    etcd: EtcdArgs,
}

/// Many hosts: the document lives in etcd, and this host's broker serves a
/// live copy of it. Reads never wait for etcd.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Many hosts (etcd)")]
struct EtcdArgs {
    /// Keep the document in etcd at these endpoints (comma-separated URLs, https:// for TLS) instead of in the args file.
    #[arg(
        long,
        value_name = "URLS",
        env = "ARGSBROKER_ETCD_ENDPOINTS",
        value_delimiter = ',',
        requires = "etcd_key"
    )]
    etcd_endpoints: Vec<String>,

    /// The etcd key holding the document as compact JSON, e.g. /argsbroker/myapp.
    #[arg(long, value_name = "KEY", env = "ARGSBROKER_ETCD_KEY", requires = "etcd_endpoints", value_parser = etcd_key)]
    etcd_key: Option<String>,

    /// The CA certificate (PEM) that etcd's server certificates are checked against.
    #[arg(
        long,
        value_name = "FILE",
        env = "ARGSBROKER_ETCD_CACERT",
        requires = "etcd_endpoints"
    )]
    etcd_cacert: Option<PathBuf>,

    /// A client certificate (PEM) for etcd's --client-cert-auth, with --etcd-cert-key.
    #[arg(
        long,
        value_name = "FILE",
        env = "ARGSBROKER_ETCD_CERT",
        requires = "etcd_cert_key"
    )]
    etcd_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        env = "ARGSBROKER_ETCD_CERT_KEY",
        requires = "etcd_cert"
    )]
    etcd_cert_key: Option<PathBuf>,

    /// The etcd user; its password comes from --etcd-password-file or the ARGSBROKER_ETCD_PASSWORD variable, never from a flag.
    #[arg(
        long,
        value_name = "NAME",
        env = "ARGSBROKER_ETCD_USER",
        requires = "etcd_endpoints"
    )]
    etcd_user: Option<String>,

    /// A file holding the etcd user's password (one line; a trailing newline is ignored). Followed on disk: a rotated password (a Kubernetes Secret mount, say) is taken without a restart.
    #[arg(
        long,
        value_name = "FILE",
        env = "ARGSBROKER_ETCD_PASSWORD_FILE",
        requires = "etcd_user"
    )]
    etcd_password_file: Option<PathBuf>,

    /// How long one etcd request may take before a write fails with UNAVAILABLE, in seconds.
    #[arg(long, value_name = "SECONDS", env = "ARGSBROKER_ETCD_TIMEOUT", default_value = "5", value_parser = argsbroker::cmdline::positive_seconds)]
    etcd_timeout: Duration,

    /// etcd's --max-request-bytes: larger documents are refused by the broker (RESOURCE_EXHAUSTED) before etcd sees them.
    #[arg(long, value_name = "BYTES", env = "ARGSBROKER_ETCD_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024, value_parser = clap::value_parser!(u64).range(8192..))]
    etcd_max_request_bytes: u64,

    /// This host's name among the brokers sharing the key, in `broker status` and --wait messages [default: HOSTNAME:SOCKET]
    #[arg(
        long,
        value_name = "NAME",
        env = "ARGSBROKER_ETCD_HOST",
        requires = "etcd_endpoints"
    )]
    etcd_host: Option<String>,

    /// How long to wait for etcd at start when the state directory has no last-known-good copy to serve, in seconds.
    #[arg(long, value_name = "SECONDS", env = "ARGSBROKER_STARTUP_TIMEOUT", default_value = "10", value_parser = argsbroker::cmdline::positive_seconds)]
    startup_timeout: Duration,
}

/// An etcd key: not empty.
fn etcd_key(text: &str) -> Result<String, String> {
    match text.is_empty() {
        true => Err("the etcd key cannot be empty".to_owned()),
        false => Ok(text.to_owned()),
    }
}

/// `0660`, `660` or `0o660`: permission bits that keep the owner's read and write.
fn socket_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode > 0o777 => Err(format!(
            "{text} is not a permission mode (at most 0777; no setuid, setgid or sticky bits)"
        )),
        Ok(mode) if mode & 0o600 != 0o600 => Err(format!(
            "{text} takes read and write from the socket's owner; keep them (0600 and up)"
        )),
        Ok(mode) => Ok(mode),
        Err(_) => Err(format!("{text} is not an octal mode such as 0660")),
    }
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
        Some(command) => runtime.block_on(ctl::run(command)),
        None => runtime
            .block_on(serve::run(cli.serve))
            .map_err(ctl::Failure::from),
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
