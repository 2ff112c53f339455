//! The supervisor: `broker --workers N --http HOST:PORT` runs the broker and
//! N `worker` processes sharing one port (SO_REUSEPORT), restarts a worker
//! that dies (with a backoff that grows while it keeps crashing), and stops
//! them all gracefully on shutdown.
//!
//! It refuses to start on an address another process already holds (with
//! SO_REUSEPORT its workers would silently share the port with a stranger),
//! and stops, with the worker's own error, when a worker's first start fails
//! for a reason a restart cannot fix (exit status 1 or 2 before it was ever
//! ready: a bad flag, an address it cannot listen on). Workers' stderr passes
//! through the supervisor, which keeps each one's error line for that.
//!
//! Workers are forked from the thread that drives the supervisor future,
//! which is the process's main thread: PR_SET_PDEATHSIG fires when the
//! *thread* that forked a child exits, so forking from a runtime thread that
//! might later retire would kill healthy workers. With it, a supervisor killed
//! by SIGKILL takes its workers down (they get SIGTERM and drain).
use anyhow::Context;
use std::collections::HashSet;
use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// A worker's end: its slot, pid, exit status, and its last error line.
type Exit = (usize, u32, std::io::Result<ExitStatus>, Option<String>);

/// A worker that lived at least this long was not crash-looping.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(10);

pub struct Plan {
    pub workers: usize,
    pub http: SocketAddr,
    pub worker_bin: PathBuf,
    pub socket: PathBuf,
    pub worker_args: Vec<OsString>,
    pub graceful_timeout: Duration,
}

/// One worker slot: the process in it now, and how it has been doing.
struct Slot {
    pid: Option<u32>,
    started: Instant,
    crashes: u32,
    /// Whether a worker in this slot has ever reported ready.
    was_ready: bool,
}

impl Plan {
    /// `worker_bin` defaults to the worker beside this executable (see
    /// [`sibling_worker`]); it must exist before anything starts.
    pub fn new(
        workers: usize,
        http: SocketAddr,
        worker_bin: Option<PathBuf>,
        socket: PathBuf,
        worker_args: Vec<OsString>,
        graceful_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let worker_bin = match worker_bin {
            Some(bin) => bin,
            None => sibling_worker(
                &std::env::current_exe().context("cannot find this executable's path")?,
            ),
        };
        if !worker_bin.is_file() {
            anyhow::bail!(
                "cannot find the worker executable at {} (build it, or point --worker-bin at it)",
                worker_bin.display()
            );
        }
        Ok(Self {
            workers,
            http,
            worker_bin,
            socket,
            worker_args,
            graceful_timeout,
        })
    }
}

/// The whole stack: the broker (`serve`, given the future that stops it)
/// and the workers following it. On `shutdown` the workers stop first,
/// then the broker they were following; systemd hears READY=1 once every
/// worker is ready.
pub async fn run_stack<F>(
    plan: Plan,
    serve: impl FnOnce(Pin<Box<dyn Future<Output = ()> + Send>>) -> F,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    let (stop_broker, broker_stops) = tokio::sync::oneshot::channel::<()>();
    let broker = serve(Box::pin(async {
        let _ = broker_stops.await;
    }));
    // Joined, not spawned: the supervisor must run on this (the main) thread.
    let workers = async {
        let result = run(plan, shutdown, argsbroker::sd_notify::ready).await;
        let _ = stop_broker.send(());
        result
    };
    let (broker, workers) = tokio::join!(broker, workers);
    workers.and(broker)
}

/// Runs the workers until `shutdown` completes, then stops them: SIGTERM,
/// up to `graceful_timeout` to finish in-flight requests, then SIGKILL.
/// `all_ready` is called once, when every worker has reported ready.
pub async fn run(
    mut plan: Plan,
    shutdown: impl Future<Output = ()>,
    all_ready: impl FnOnce(),
) -> anyhow::Result<()> {
    // Port 0: the kernel picks the port, and this process holds it (bound
    // with SO_REUSEPORT, never listening, so it is sent no connection) for
    // as long as it runs: every worker, restarted ones too, joins that one
    // port, and no other process can take it while no worker is up.
    let _held = match plan.http.port() {
        0 => {
            let (held, bound) = hold_a_port(plan.http)?;
            plan.http = bound;
            Some(held)
        }
        _ => {
            probe(plan.http)?;
            None
        }
    };
    // Workers report readiness as systemd services do: READY=1 on a datagram
    // socket named by NOTIFY_SOCKET, here one in the abstract namespace.
    let notify_name = format!("argsbroker-supervisor-{}", std::process::id());
    let notify = std::os::unix::net::UnixDatagram::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(notify_name.as_bytes())?,
    )?;
    notify.set_nonblocking(true)?;
    let notify = tokio::net::UnixDatagram::from_std(notify)?;
    let notify_env = OsString::from(format!("@{notify_name}"));

    let (exits_tx, mut exits) = mpsc::unbounded_channel::<Exit>();
    let mut slots: Vec<Slot> = Vec::with_capacity(plan.workers);
    for index in 0..plan.workers {
        let mut child = spawn(&plan, index, &notify_env)?;
        let errors = forward_stderr(&mut child);
        slots.push(Slot {
            pid: child.id(),
            started: Instant::now(),
            crashes: 0,
            was_ready: false,
        });
        watch_exit(index, child, errors, exits_tx.clone());
    }
    tracing::info!(workers = plan.workers, http = %plan.http, "started the workers");

    let mut ready: HashSet<u32> = HashSet::new();
    let mut all_ready = Some(all_ready);
    let mut restarts: Vec<(Instant, usize)> = Vec::new();
    let mut buf = [0u8; 256];
    let mut fatal: Option<anyhow::Error> = None;
    tokio::pin!(shutdown);
    loop {
        let next_restart = restarts.iter().map(|(at, _)| *at).min();
        tokio::select! {
            _ = &mut shutdown => break,
            received = notify.recv(&mut buf) => {
                let Ok(len) = received else { continue };
                if let Some(pid) = ready_pid(&buf[..len]) {
                    ready.insert(pid);
                    for slot in slots.iter_mut().filter(|s| s.pid == Some(pid)) {
                        slot.was_ready = true;
                    }
                    let live: HashSet<u32> = slots.iter().filter_map(|s| s.pid).collect();
                    if live.iter().all(|pid| ready.contains(pid)) && live.len() == plan.workers {
                        if let Some(all_ready) = all_ready.take() {
                            tracing::info!(workers = plan.workers, "all workers ready on http://{}", plan.http);
                            all_ready();
                        }
                    }
                }
            }
            Some((index, pid, status, error_line)) = exits.recv() => {
                if slots[index].pid != Some(pid) {
                    continue;
                }
                // A READY=1 sent just before the exit may still be queued.
                while let Ok(len) = notify.try_recv(&mut buf) {
                    if let Some(ready_pid) = ready_pid(&buf[..len]) {
                        ready.insert(ready_pid);
                        for slot in slots.iter_mut().filter(|s| s.pid == Some(ready_pid)) {
                            slot.was_ready = true;
                        }
                    }
                }
                let slot = &mut slots[index];
                slot.pid = None;
                let config_error = matches!(&status, Ok(s) if matches!(s.code(), Some(1 | 2)));
                if config_error && !slot.was_ready {
                    let reason = match error_line {
                        Some(line) => format!(": {line}"),
                        None => String::new(),
                    };
                    fatal = Some(anyhow::anyhow!(
                        "worker {index} {} before it was ready{reason}",
                        describe(&status)
                    ));
                    break;
                }
                ready.remove(&pid);
                slot.crashes = if slot.started.elapsed() >= HEALTHY_RUN { 1 } else { slot.crashes + 1 };
                let delay = retry_delay(slot.crashes);
                let when = if delay.is_zero() { "now".to_owned() } else { format!("in {delay:?}") };
                tracing::warn!(
                    worker = index,
                    pid,
                    "worker {index} (pid {pid}) {}; restarting it {when}{}",
                    describe(&status),
                    if slot.crashes > 1 { format!(" ({} exits in a row within {HEALTHY_RUN:?} of starting)", slot.crashes) } else { String::new() },
                );
                restarts.push((Instant::now() + delay, index));
            }
            _ = sleep_until(next_restart) => {
                let now = Instant::now();
                let (due, later): (Vec<_>, Vec<_>) = restarts.into_iter().partition(|(at, _)| *at <= now);
                restarts = later;
                for (_, index) in due {
                    match spawn(&plan, index, &notify_env) {
                        Ok(mut child) => {
                            slots[index].pid = child.id();
                            let errors = forward_stderr(&mut child);
                            slots[index].started = Instant::now();
                            tracing::info!(worker = index, pid = child.id(), "restarted worker {index}");
                            watch_exit(index, child, errors, exits_tx.clone());
                        }
                        Err(err) => {
                            let delay = retry_delay(slots[index].crashes + 1);
                            slots[index].crashes += 1;
                            tracing::error!(worker = index, "cannot start worker {index}: {}; retrying in {delay:?}", argsbroker::one_line(err.as_ref()));
                            restarts.push((Instant::now() + delay, index));
                        }
                    }
                }
            }
        }
    }

    // Shutdown: SIGTERM every worker, wait for them, SIGKILL stragglers.
    let mut running: HashSet<u32> = slots.iter().filter_map(|s| s.pid).collect();
    tracing::info!(workers = running.len(), "stopping the workers");
    for pid in &running {
        signal(*pid, libc::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + plan.graceful_timeout;
    while !running.is_empty() {
        match tokio::time::timeout_at(deadline, exits.recv()).await {
            Ok(Some((_, pid, _, _))) => {
                running.remove(&pid);
            }
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    workers = running.len(),
                    "workers still running after {:?}; killing them",
                    plan.graceful_timeout
                );
                for pid in &running {
                    signal(*pid, libc::SIGKILL);
                }
                while !running.is_empty() {
                    match exits.recv().await {
                        Some((_, pid, _, _)) => running.remove(&pid),
                        None => break,
                    };
                }
            }
        }
    }
    match fatal {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Refuses an address another process holds: bound without SO_REUSEPORT,
/// the probe fails whether the holder set SO_REUSEPORT or not (workers of
/// ours would join a holder that did). SO_REUSEADDR lets it ignore
/// connections of an earlier run lingering in TIME_WAIT.
fn probe(addr: SocketAddr) -> anyhow::Result<()> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .map_err(|e| anyhow::anyhow!("cannot make a socket to check {addr}: {e}"))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| anyhow::anyhow!("cannot make a socket to check {addr}: {e}"))?;
    match socket.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            anyhow::bail!("{addr} is already in use by another process")
        }
        Err(e) => anyhow::bail!("cannot listen on {addr}: {e}"),
    }
}

/// A socket bound to `addr` (port 0) with SO_REUSEPORT and never listening,
/// and the address the kernel gave it.
fn hold_a_port(addr: SocketAddr) -> anyhow::Result<(socket2::Socket, SocketAddr)> {
    use socket2::{Domain, Socket, Type};
    let cannot = |e: std::io::Error| anyhow::anyhow!("cannot listen on {addr}: {e}");
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(cannot)?;
    socket.set_reuse_address(true).map_err(cannot)?;
    socket.set_reuse_port(true).map_err(cannot)?;
    socket.bind(&addr.into()).map_err(cannot)?;
    let bound = socket
        .local_addr()
        .map_err(cannot)?
        .as_socket()
        .ok_or_else(|| anyhow::anyhow!("cannot listen on {addr}: not an IP address"))?;
    Ok((socket, bound))
}

/// The pid in a `READY=1` notification.
fn ready_pid(message: &[u8]) -> Option<u32> {
    let message = String::from_utf8_lossy(message);
    if !message.lines().any(|l| l == "READY=1") {
        return None;
    }
    message
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|p| p.parse::<u32>().ok())
}

/// Copies the worker's stderr to ours line by line, and yields its error
/// line (`worker: error: ...`, or a usage error's first line) once it ends.
fn forward_stderr(child: &mut Child) -> tokio::task::JoinHandle<Option<String>> {
    let stderr = child.stderr.take();
    tokio::spawn(async move {
        match stderr {
            Some(stderr) => copy_lines(stderr).await,
            None => None,
        }
    })
}

async fn copy_lines(from: impl AsyncRead + Unpin) -> Option<String> {
    use std::io::Write;
    let mut from = BufReader::new(from);
    let mut line = Vec::new();
    let mut error: Option<String> = None;
    loop {
        line.clear();
        match from.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return error,
            Ok(_) => {}
        }
        // Ours may be closed; the worker must not block on a full pipe either way.
        let _ = std::io::stderr().lock().write_all(&line);
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if let Some(message) = text.strip_prefix("worker: error: ") {
            error = Some(message.to_owned());
        } else if let (None, Some(message)) = (&error, text.strip_prefix("error: ")) {
            error = Some(message.to_owned());
        }
    }
}

fn spawn(plan: &Plan, index: usize, notify_env: &OsString) -> anyhow::Result<Child> {
    let mut cmd = Command::new(&plan.worker_bin);
    cmd.arg("--broker")
        .arg(&plan.socket)
        .arg("--listen")
        .arg(plan.http.to_string())
        .arg("--reuse-port")
        .args(&plan.worker_args)
        .env(argsbroker::sd_notify::NOTIFY_SOCKET, notify_env)
        .env("ARGSBROKER_WORKER_INDEX", index.to_string())
        // The broker's etcd password is not the workers' business.
        .env_remove("ARGSBROKER_ETCD_PASSWORD")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        // Their own process group: a Ctrl-C on the terminal reaches only the
        // supervisor, which then stops the workers in order.
        .process_group(0)
        .kill_on_drop(false);
    argsbroker::sys::die_with_this_process(&mut cmd, libc::SIGTERM);
    cmd.spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", plan.worker_bin.display()))
}

/// Reports the child's exit on `exits`, with its error line; the wait runs
/// on any runtime thread.
fn watch_exit(
    index: usize,
    mut child: Child,
    errors: tokio::task::JoinHandle<Option<String>>,
    exits: mpsc::UnboundedSender<Exit>,
) {
    let pid = child.id().unwrap_or_default();
    tokio::spawn(async move {
        let status = child.wait().await;
        // Its stderr ends with it (unless something it started holds it open).
        let error = tokio::time::timeout(Duration::from_secs(1), errors)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        let _ = exits.send((index, pid, status, error));
    });
}

/// 0 after a healthy run, then 100 ms, 200 ms, ... up to 10 s while it keeps crashing.
fn retry_delay(crashes: u32) -> Duration {
    if crashes <= 1 {
        return Duration::ZERO;
    }
    FIRST_RETRY
        .saturating_mul(1 << (crashes - 2).min(16))
        .min(MAX_RETRY)
}

fn describe(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig} ({})", signal_name(sig)),
            _ => format!("ended ({s})"),
        },
        Err(err) => format!("could not be waited for ({err})"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

fn signal(pid: u32, sig: i32) {
    argsbroker::sys::kill(pid, sig);
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The worker installed beside `broker`: `argsbroker-broker` (the Python
/// package's name, which no other package's scripts can take) has
/// `argsbroker-worker`; any other name has `worker`.
fn sibling_worker(broker: &std::path::Path) -> PathBuf {
    let name = broker
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix("broker"))
        .filter(|prefix| !prefix.is_empty())
        .map_or_else(|| "worker".to_owned(), |prefix| format!("{prefix}worker"));
    broker.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_while_crashing_and_is_capped() {
        let delays: Vec<u64> = (1..=10)
            .map(|c| retry_delay(c).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [0, 100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]
        );
    }

    #[test]
    fn the_worker_beside_the_broker_follows_its_name() {
        let of = |p: &str| sibling_worker(std::path::Path::new(p));
        assert_eq!(of("/usr/bin/broker"), PathBuf::from("/usr/bin/worker"));
        assert_eq!(
            of("/venv/bin/argsbroker-broker"),
            PathBuf::from("/venv/bin/argsbroker-worker")
        );
        assert_eq!(of("/opt/x/my-server"), PathBuf::from("/opt/x/worker"));
    }
}
