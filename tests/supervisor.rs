//! One command runs the whole stack, and workers never go dark: the
//! supervisor, broker outages, the last-known-good cache, readiness.
mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `broker --workers N --http ADDR` as a user runs it.
fn stack_cmd(site: &Site, workers: usize, port: u16) -> Command {
    let mut cmd = site.broker_cmd();
    cmd.args([
        "--workers",
        &workers.to_string(),
        "--http",
        &format!("127.0.0.1:{port}"),
    ]);
    cmd
}

/// Starts the stack on a port the kernel picks and waits until that port
/// answers; [`Proc::stack_port`] is the port.
fn start_stack(site: &Site, workers: usize) -> Proc {
    let mut proc = Proc::spawn(stack_cmd(site, workers, ANY_PORT), site.fresh_log("stack"));
    let port = proc.stack_port();
    eventually("the workers to answer", || {
        assert!(proc.is_running(), "supervisor exited: {}", proc.log());
        try_get(port, "/readyz", &[]).filter(|r| r.status == 200)
    });
    eventually("every worker to be up", || {
        Some(()).filter(|_| children(proc.pid()).len() == workers)
    });
    proc
}

/// The pids whose parent is `pid` and that are not zombies.
fn children(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some((state, ppid)) = stat(child) {
            if ppid == pid && state != 'Z' {
                found.push(child);
            }
        }
    }
    found.sort();
    found
}

/// (state, parent pid) from /proc/PID/stat.
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// Sends GET /args in a loop on another thread, one request at a time,
/// counting answers and failures, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Failures>>,
}

#[derive(Debug, Default)]
struct Failures {
    /// Connections refused: the port was not answering.
    refused: Vec<String>,
    /// At the first refusal: how many sockets listened on the port (from /proc/net/tcp).
    listeners_at_first_refusal: Option<usize>,
    /// Connections that were accepted but not answered.
    unanswered: usize,
    /// When each of those was opened.
    unanswered_at: Vec<Instant>,
}

impl Load {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let (s, o) = (stop.clone(), ok.clone());
        let thread = std::thread::spawn(move || {
            let mut failures = Failures::default();
            while !s.load(Ordering::Relaxed) {
                let stream = match std::net::TcpStream::connect(("127.0.0.1", port)) {
                    Ok(stream) => stream,
                    Err(err) => {
                        if failures.refused.is_empty() {
                            failures.listeners_at_first_refusal = Some(listeners(port));
                        }
                        failures.refused.push(err.to_string());
                        continue;
                    }
                };
                let opened = Instant::now();
                match exchange(stream, "/args", &[]) {
                    Some(r) if r.status == 200 => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failures.unanswered += 1;
                        failures.unanswered_at.push(opened);
                    }
                }
            }
            failures
        });
        Self {
            stop,
            ok,
            thread: Some(thread),
        }
    }

    fn answered(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the loop; returns (answers, failures).
    fn finish(mut self) -> (usize, Failures) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.thread.take().unwrap().join().unwrap();
        (self.answered(), failures)
    }
}

/// How many TCP sockets listen on 127.0.0.1:`port` right now.
fn listeners(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == local && f[3] == "0A"
        })
        .count()
}

/// The supervisor starts N workers on one port, all serving the file's args.
#[test]
fn supervisor_starts_n_workers_on_one_port() {
    let site = Site::new(r#"{"a": 1}"#);
    let stack = start_stack(&site, 3);
    let port = stack.stack_port();
    let workers = children(stack.pid());
    assert_eq!(workers.len(), 3);
    // Every answer is the file's args, and they come from more than one worker.
    let mut answered = std::collections::HashSet::new();
    eventually("answers from two different workers", || {
        let (answer, pid) = get_from(port, "/args", &workers);
        assert_eq!(answer.body, r#"{"args":{"a":1}}"#);
        answered.extend(pid);
        (answered.len() >= 2).then_some(())
    });
}

/// A worker killed with SIGKILL is replaced, and the port keeps answering meanwhile.
#[test]
fn a_killed_worker_is_replaced_and_the_port_keeps_answering() {
    let site = Site::new(r#"{"a": 1}"#);
    let stack = start_stack(&site, 2);
    let port = stack.stack_port();
    let before = children(stack.pid());
    let load = Load::start(port);
    eventually("some answers", || Some(()).filter(|_| load.answered() > 20));
    let killed = Instant::now();
    unsafe { libc::kill(before[0], libc::SIGKILL) };
    let after = eventually("a replacement worker", || {
        Some(children(stack.pid())).filter(|c| c.len() == 2 && !c.contains(&before[0]))
    });
    let replaced = Instant::now();
    let seen = load.answered();
    eventually("answers after the restart", || {
        Some(()).filter(|_| load.answered() > seen + 20)
    });
    let (answered, failures) = load.finish();
    // The port never stopped answering. What can be lost is what the killed
    // process held when it died: the request it had taken and, while the
    // kernel closes its files one by one (an accepted connection's file may
    // close before the listening socket's, and the client reconnects at
    // once), a connection that reached its listening socket meanwhile. The
    // load is sequential, so that is a couple at most, and all of them
    // between the kill and the replacement.
    assert!(
        failures.refused.is_empty(),
        "the port refused connections: {failures:?} ({answered} answered)"
    );
    assert!(
        failures.unanswered <= 3,
        "{failures:?} ({answered} answered)"
    );
    // Opened before the kill is fine for the one in flight (it was opened
    // first, then answered never): allow what started up to 5 s before it.
    assert!(
        failures
            .unanswered_at
            .iter()
            .all(|at| *at + Duration::from_secs(5) >= killed && *at <= replaced),
        "a request failed away from the worker's death: {failures:?}"
    );
    assert!(
        after.contains(&before[1]),
        "the other worker was left alone"
    );
    let log = stack.log();
    assert!(
        log.contains(&format!(
            "worker 0 (pid {}) was killed by signal 9 (SIGKILL); restarting it now",
            before[0]
        )),
        "{log}"
    );
}

/// A worker that keeps crashing is restarted with a growing delay, and the log says so.
#[test]
fn a_crash_looping_worker_backs_off() {
    let site = Site::new(r#"{"a": 1}"#);
    // A "worker" that exits at once with status 3.
    let bin = site.path("crashing-worker");
    std::fs::write(&bin, "#!/bin/sh\nexit 3\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&bin).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cmd = stack_cmd(&site, 1, ANY_PORT);
    cmd.arg("--worker-bin").arg(&bin);
    let mut stack = Proc::spawn(cmd, site.fresh_log("stack"));
    let log = eventually("three restarts", || {
        Some(stack.log()).filter(|l| l.contains("restarting it in 200ms"))
    });
    assert!(
        log.contains("exited with status 3; restarting it in 100ms (2 exits in a row"),
        "{log}"
    );
    assert!(
        log.contains("exited with status 3; restarting it in 200ms (3 exits in a row"),
        "{log}"
    );
    assert_eq!(stack.stop().code(), Some(0));
}

/// SIGTERM stops workers, then the broker: exit 0, no process and no socket left.
#[test]
fn sigterm_leaves_nothing_behind() {
    let site = Site::new(r#"{"a": 1}"#);
    let mut stack = start_stack(&site, 3);
    let port = stack.stack_port();
    let workers = children(stack.pid());
    assert_eq!(stack.stop().code(), Some(0), "{}", stack.log());
    for pid in workers {
        assert!(!alive(pid), "worker {pid} outlived the supervisor");
    }
    assert!(!exists(&site.socket()), "the socket is left behind");
    assert!(
        try_get(port, "/readyz", &[]).is_none(),
        "the port still answers"
    );
}

/// SIGKILL of the supervisor takes its workers down with it (PR_SET_PDEATHSIG).
#[test]
fn sigkill_of_the_supervisor_leaves_no_worker() {
    let site = Site::new(r#"{"a": 1}"#);
    let mut stack = start_stack(&site, 2);
    let workers = children(stack.pid());
    stack.signal(libc::SIGKILL);
    stack.wait();
    for pid in workers {
        eventually("the worker to exit", || Some(()).filter(|_| !alive(pid)));
    }
}

/// SIGHUP on the supervisor reloads the args without restarting any worker.
#[test]
fn sighup_reloads_without_restarting_workers() {
    let site = Site::new(r#"{"a": 1}"#);
    let stack = start_stack(&site, 2);
    let port = stack.stack_port();
    let workers = children(stack.pid());
    std::fs::write(site.args(), r#"{"a": 2}"#).unwrap();
    stack.signal(libc::SIGHUP);
    let mut reloaded = std::collections::HashSet::new();
    eventually("both workers to serve the reloaded args", || {
        let (answer, pid) = get_from(port, "/args", &workers);
        if answer.body == r#"{"args":{"a":2}}"# {
            reloaded.extend(pid);
        }
        (reloaded.len() == 2).then_some(())
    });
    for _ in 0..20 {
        assert_eq!(get(port, "/args").header("x-args-revision"), Some("2"));
    }
    assert_eq!(children(stack.pid()), workers);
}

/// --workers needs --http: a usage error that says so.
#[test]
fn workers_without_http_is_a_usage_error() {
    let site = Site::new("{}");
    let (code, _, stderr) = run(site.broker_cmd().args(["--workers", "2"]));
    assert_eq!(code, 2);
    assert!(
        stderr
            .contains("the following required arguments were not provided:\n  --http <HOST:PORT>"),
        "{stderr}"
    );
}

/// kill -9 of the broker under load: zero failed requests, the stale header
/// while it is gone, and every worker on the restarted broker's revision.
#[test]
fn workers_serve_through_a_broker_crash_and_converge() {
    let site = Site::new(r#"{"a": 1}"#);
    let mut broker = site.start_broker();
    let first = site.spawn_worker(site.worker_cmd(ANY_PORT, true));
    let shared = first.http_port();
    let workers = [first, site.start_worker_on(shared), site.start_worker()];
    let own = workers[2].http_port();
    let load = Load::start(shared);
    eventually("some answers", || Some(()).filter(|_| load.answered() > 20));

    broker.signal(libc::SIGKILL);
    broker.wait();
    let answer = eventually("the stale mark", || {
        Some(get(own, "/args")).filter(|a| a.header("x-args-stale").is_some())
    });
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"args":{"a":1}}"#)
    );
    assert_eq!(answer.header("x-args-stale"), Some("true"));
    let ready = get(own, "/readyz");
    assert_eq!(
        ready.status, 200,
        "a worker serving its last args stays ready"
    );
    let body: serde_json::Value = serde_json::from_str(&ready.body).unwrap();
    assert_eq!(body["connected"], false);
    eventually("time since last contact to grow", || {
        let body: serde_json::Value = serde_json::from_str(&get(own, "/readyz").body).unwrap();
        Some(()).filter(|_| body["since_last_contact_ms"].as_u64().unwrap() > 0)
    });

    std::fs::write(site.args(), r#"{"a": 2}"#).unwrap();
    let _broker = site.start_broker();
    for port in [shared, shared, shared, own] {
        let answer = eventually("a worker to converge", || {
            Some(get(port, "/args")).filter(|a| a.header("x-args-revision") == Some("2"))
        });
        assert_eq!(answer.body, r#"{"args":{"a":2}}"#);
        assert_eq!(answer.header("x-args-stale"), None);
    }
    let (answered, failures) = load.finish();
    assert!(
        failures.refused.is_empty() && failures.unanswered == 0,
        "requests failed while the broker was down: {failures:?} ({answered} answered)"
    );
}

/// Within one lineage a worker never switches to an older revision: here a
/// broker restarted on a backup of its own state (args file and state
/// directory as they were at revision 1).
#[test]
fn a_worker_never_goes_back_to_an_older_revision() {
    let site = Site::new(r#"{"a": 1}"#);
    let mut broker = site.start_broker();
    let backup = site.path("backup");
    std::fs::create_dir(&backup).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(site.args())
        .arg(site.path("args.json.state"))
        .arg(&backup)
        .status()
        .unwrap();
    assert!(status.success());
    let worker = site.start_worker();
    let port = worker.http_port();
    for a in [2, 3] {
        grpc(|| async {
            let request = argsbroker::pb::PatchArgsRequest {
                merge_patch: format!(r#"{{"a": {a}}}"#),
                expected_revision: None,
                ..Default::default()
            };
            argsbroker::client::connect(site.socket())
                .await
                .unwrap()
                .patch_args(request)
                .await
                .unwrap();
        });
    }
    eventually("the worker to serve revision 3", || {
        Some(get(port, "/args")).filter(|a| a.header("x-args-revision") == Some("3"))
    });
    broker.stop();
    std::fs::remove_dir_all(site.path("args.json.state")).unwrap();
    std::fs::rename(backup.join("args.json"), site.args()).unwrap();
    std::fs::rename(backup.join("args.json.state"), site.path("args.json.state")).unwrap();
    // The same lineage, back at revision 1.
    let _broker = site.start_broker();
    assert_eq!(get_args(&site.socket()).revision, 1);
    worker.log_line("older revision than the one served");
    let answer = get(port, "/args");
    assert_eq!(
        (answer.header("x-args-revision"), answer.body.as_str()),
        (Some("3"), r#"{"args":{"a":3}}"#)
    );
}

/// --cache-file: a worker that cannot reach its broker starts from the cache, marked stale, then converges.
#[test]
fn cache_file_cold_start_without_a_broker() {
    let site = Site::new(r#"{"big": 123456789012345678901234567890}"#);
    let cache = site.path("cache.json");
    let mut broker = site.start_broker();
    let mut cmd = site.worker_cmd(ANY_PORT, false);
    cmd.arg("--cache-file").arg(&cache);
    let mut worker = site.spawn_worker(cmd);
    let lineage = get_args(&site.socket()).lineage;
    let cached = eventually("the cache file", || std::fs::read_to_string(&cache).ok());
    assert_eq!(
        cached,
        format!("{{\"revision\":1,\"lineage\":\"{lineage}\",\"args\":{{\"big\":123456789012345678901234567890}}}}\n")
    );
    worker.stop();
    broker.stop();

    let mut cmd = site.worker_cmd(ANY_PORT, false);
    cmd.arg("--cache-file")
        .arg(&cache)
        .args(["--startup-timeout", "0.2"]);
    let worker = site.spawn_worker(cmd);
    let port = worker.http_port();
    let answer = get(port, "/args");
    assert_eq!(
        answer.body,
        r#"{"args":{"big":123456789012345678901234567890}}"#
    );
    assert_eq!(answer.header("x-args-stale"), Some("true"));
    assert!(
        worker.log().contains("starting from the cache file"),
        "{}",
        worker.log()
    );

    std::fs::write(site.args(), r#"{"big": 1}"#).unwrap();
    let _broker = site.start_broker();
    let answer = eventually("the worker to reach the broker", || {
        Some(get(port, "/args")).filter(|a| a.header("x-args-revision") == Some("2"))
    });
    assert_eq!(
        (answer.body.as_str(), answer.header("x-args-stale")),
        (r#"{"args":{"big":1}}"#, None)
    );
    eventually("the cache file to follow", || {
        Some(()).filter(|_| {
            std::fs::read_to_string(&cache)
                .unwrap()
                .starts_with("{\"revision\":2,")
        })
    });
}

/// A corrupt cache file is reported and ignored: without a broker the worker fails as usual.
#[test]
fn corrupt_cache_file_is_reported_and_ignored() {
    let site = Site::new("{}");
    let cache = site.path("cache.json");
    std::fs::write(&cache, "{\"revision\": 3, \"args\": {\"a\": ").unwrap();
    let mut cmd = site.worker_cmd(ANY_PORT, false);
    cmd.arg("--cache-file")
        .arg(&cache)
        .args(["--startup-timeout", "0.2"]);
    let (code, _, stderr) = run(&mut cmd);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "ignoring the cache file: the cache file {} is damaged: EOF while parsing a value at line 1 column 30",
            cache.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .last()
            .unwrap()
            .starts_with("worker: error: no broker answered at "),
        "{stderr}"
    );
}

/// sd_notify: the plain broker says READY=1 once it serves; the supervisor once every worker is ready.
#[test]
fn ready_notifications_for_systemd() {
    let site = Site::new(r#"{"a": 1}"#);
    let notify_path = site.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 256];

    let mut cmd = site.broker_cmd();
    cmd.env("NOTIFY_SOCKET", &notify_path);
    let mut broker = Proc::spawn(cmd, site.fresh_log("broker"));
    let len = notify.recv(&mut buf).expect("READY=1 from the broker");
    assert_eq!(
        String::from_utf8_lossy(&buf[..len]),
        format!("READY=1\nMAINPID={}", broker.pid())
    );
    assert!(grpc(|| async {
        argsbroker::client::connect(site.socket()).await.is_ok()
    }));
    broker.stop();

    let mut cmd = stack_cmd(&site, 3, ANY_PORT);
    cmd.env("NOTIFY_SOCKET", &notify_path);
    let stack = Proc::spawn(cmd, site.fresh_log("stack"));
    let len = notify.recv(&mut buf).expect("READY=1 from the supervisor");
    assert_eq!(
        String::from_utf8_lossy(&buf[..len]),
        format!("READY=1\nMAINPID={}", stack.pid())
    );
    // Ready means every worker already listens: all three are children and the port answers.
    assert_eq!(children(stack.pid()).len(), 3);
    assert_eq!(get(stack.stack_port(), "/args").status, 200);
}

/// A worker stops on SIGTERM with exit 0 and closes its port.
#[test]
fn worker_sigterm_is_a_clean_exit() {
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    let mut worker = site.start_worker();
    let port = worker.http_port();
    assert_eq!(worker.stop().code(), Some(0));
    assert!(try_get(port, "/readyz", &[]).is_none());
}

/// An address another process holds, with or without SO_REUSEPORT: the
/// supervisor refuses at start (its workers would otherwise share the port
/// with a stranger, or restart forever) and exits 1 with one line.
#[test]
fn an_address_in_use_is_refused_at_start() {
    use socket2::{Domain, Socket, Type};
    let site = Site::new(r#"{"a": 1}"#);
    for reuse_port in [false, true] {
        let holder = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        holder.set_reuse_address(true).unwrap();
        holder.set_reuse_port(reuse_port).unwrap();
        let addr: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        holder.bind(&addr.into()).unwrap();
        holder.listen(16).unwrap();
        let port = holder
            .local_addr()
            .unwrap()
            .as_socket()
            .expect("an IP address")
            .port();
        let (code, _, stderr) = run(&mut stack_cmd(&site, 2, port));
        assert_eq!(
            (code, stderr.lines().last()),
            (
                1,
                Some(
                    format!("broker: error: 127.0.0.1:{port} is already in use by another process")
                        .as_str()
                )
            ),
            "SO_REUSEPORT {reuse_port}: {stderr}"
        );
        assert!(!stderr.contains("started the workers"), "{stderr}");
        assert!(!exists(&site.socket()), "the socket is left behind");
    }
}

/// A worker whose first start fails for a reason a restart cannot fix
/// (exit status 1 or 2 before it was ever ready) stops the supervisor with
/// that worker's error, instead of restarting it forever.
#[test]
fn a_worker_that_cannot_start_stops_the_supervisor() {
    let site = Site::new(r#"{"a": 1}"#);
    // A usage error of the real worker: exit status 2.
    let mut cmd = stack_cmd(&site, 2, ANY_PORT);
    cmd.args(["--", "--bogus"]);
    let (code, _, stderr) = run(&mut cmd);
    assert_eq!(code, 1, "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("broker: error: worker ")
            && last.ends_with(
                " exited with status 2 before it was ready: unexpected argument '--bogus' found"
            ),
        "{stderr}"
    );
    assert!(!stderr.contains("restarting it"), "{stderr}");
    assert!(!exists(&site.socket()), "the socket is left behind");

    // A worker that fails with its error line: exit status 1.
    let bin = site.path("failing-worker");
    std::fs::write(
        &bin,
        "#!/bin/sh\necho 'worker: error: cannot listen on 127.0.0.1:1: Permission denied (os error 13)' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // Another test's fork may hold the new file open for writing until it execs (ETXTBSY).
    eventually("the script to be runnable", || {
        match Command::new(&bin).output() {
            Err(err) if err.raw_os_error() == Some(libc::ETXTBSY) => None,
            Err(err) => panic!("run the script: {err}"),
            Ok(_) => Some(()),
        }
    });
    let mut cmd = stack_cmd(&site, 1, ANY_PORT);
    cmd.arg("--worker-bin").arg(&bin);
    let (code, _, stderr) = run(&mut cmd);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some("broker: error: worker 0 exited with status 1 before it was ready: cannot listen on 127.0.0.1:1: Permission denied (os error 13)"),
        "{stderr}"
    );
}

/// --http takes a host name; one that does not resolve is a usage error naming the flag.
#[test]
fn http_takes_a_host_name() {
    let site = Site::new(r#"{"a": 1}"#);
    let mut cmd = site.broker_cmd();
    cmd.args(["--workers", "1", "--http", "localhost:0"]);
    let mut stack = Proc::spawn(cmd, site.fresh_log("stack"));
    let port = stack.stack_port();
    let answer = eventually("the worker on localhost", || {
        assert!(stack.is_running(), "{}", stack.log());
        let stream = std::net::TcpStream::connect(("localhost", port)).ok()?;
        exchange(stream, "/args", &[])
    });
    assert_eq!(answer.body, r#"{"args":{"a":1}}"#);
    assert_eq!(stack.stop().code(), Some(0));

    let (code, _, stderr) = run(site
        .broker_cmd()
        .args(["--workers", "1", "--http", "localhost"]));
    assert_eq!(code, 2);
    assert_eq!(
        stderr.lines().next(),
        Some(
            r#"error: invalid value 'localhost' for '--http <HOST:PORT>': "localhost" is not HOST:PORT (say 127.0.0.1:9880 or localhost:9880)"#
        )
    );
}
