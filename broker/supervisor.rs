//! The supervisor: `broker --workers N --http HOST:PORT` runs the broker and
//! N `worker` processes sharing one port (SO_REUSEPORT), restarts a worker
//! that dies (with a backoff that grows while it keeps crashing), and stops
//! them all gracefully on shutdown.
//!
//! Workers are forked from the thread that drives the supervisor future,
//! which is the process's main thread: PR_SET_PDEATHSIG fires when the
//! *thread* that forked a child exits, so forking from a runtime thread that
//! might later retire would kill healthy workers. With it, a supervisor killed
//! by SIGKILL takes its workers down (they get SIGTERM and drain).
use std::collections::HashSet;
use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

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
}

/// Runs the workers until `shutdown` completes, then stops them: SIGTERM,
/// up to `graceful_timeout` to finish in-flight requests, then SIGKILL.
/// `all_ready` is called once, when every worker has reported ready.
pub async fn run(
    plan: Plan,
    shutdown: impl Future<Output = ()>,
    all_ready: impl FnOnce(),
) -> anyhow::Result<()> {
    // Workers report readiness as systemd services do: READY=1 on a datagram
    // socket named by NOTIFY_SOCKET, here one in the abstract namespace.
    let notify_name = format!("argsbroker-supervisor-{}", std::process::id());
    let notify = std::os::unix::net::UnixDatagram::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(notify_name.as_bytes())?,
    )?;
    notify.set_nonblocking(true)?;
    let notify = tokio::net::UnixDatagram::from_std(notify)?;
    let notify_env = OsString::from(format!("@{notify_name}"));

    let (exits_tx, mut exits) =
        mpsc::unbounded_channel::<(usize, u32, std::io::Result<ExitStatus>)>();
    let mut slots: Vec<Slot> = Vec::with_capacity(plan.workers);
    for index in 0..plan.workers {
        let child = spawn(&plan, index, &notify_env)?;
        slots.push(Slot {
            pid: child.id(),
            started: Instant::now(),
            crashes: 0,
        });
        watch_exit(index, child, exits_tx.clone());
    }
    tracing::info!(workers = plan.workers, http = %plan.http, "started the workers");

    let mut ready: HashSet<u32> = HashSet::new();
    let mut all_ready = Some(all_ready);
    let mut restarts: Vec<(Instant, usize)> = Vec::new();
    let mut buf = [0u8; 256];
    tokio::pin!(shutdown);
    loop {
        let next_restart = restarts.iter().map(|(at, _)| *at).min();
        tokio::select! {
            _ = &mut shutdown => break,
            received = notify.recv(&mut buf) => {
                let Ok(len) = received else { continue };
                let message = String::from_utf8_lossy(&buf[..len]);
                let pid = message.lines().find_map(|l| l.strip_prefix("MAINPID=")).and_then(|p| p.parse::<u32>().ok());
                if let (true, Some(pid)) = (message.lines().any(|l| l == "READY=1"), pid) {
                    ready.insert(pid);
                    let live: HashSet<u32> = slots.iter().filter_map(|s| s.pid).collect();
                    if live.iter().all(|pid| ready.contains(pid)) && live.len() == plan.workers {
                        if let Some(all_ready) = all_ready.take() {
                            tracing::info!(workers = plan.workers, "all workers ready on http://{}", plan.http);
                            all_ready();
                        }
                    }
                }
            }
            Some((index, pid, status)) = exits.recv() => {
                let slot = &mut slots[index];
                if slot.pid != Some(pid) {
                    continue;
                }
                slot.pid = None;
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
                        Ok(child) => {
                            slots[index].pid = child.id();
                            slots[index].started = Instant::now();
                            tracing::info!(worker = index, pid = child.id(), "restarted worker {index}");
                            watch_exit(index, child, exits_tx.clone());
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
            Ok(Some((_, pid, _))) => {
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
                        Some((_, pid, _)) => running.remove(&pid),
                        None => break,
                    };
                }
            }
        }
    }
    Ok(())
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
        .stdin(std::process::Stdio::null())
        // Their own process group: a Ctrl-C on the terminal reaches only the
        // supervisor, which then stops the workers in order.
        .process_group(0)
        .kill_on_drop(false);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) run
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The supervisor may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", plan.worker_bin.display()))
}

/// Reports the child's exit on `exits`; the wait runs on any runtime thread.
fn watch_exit(
    index: usize,
    mut child: Child,
    exits: mpsc::UnboundedSender<(usize, u32, std::io::Result<ExitStatus>)>,
) {
    let pid = child.id().unwrap_or_default();
    tokio::spawn(async move {
        let status = child.wait().await;
        let _ = exits.send((index, pid, status));
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
    // SAFETY: kill(2) on a child of ours that has not been reaped yet.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
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
}
