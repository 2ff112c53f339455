//! The worker on its own: following a broker whose state was replaced
//! (lineage), SIGHUP, the HTTP bounds (slowloris, idle keep-alive, running
//! out of file descriptors), host names for --listen, and what its errors say.
mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// The `"lineage"` of a `/readyz` answer.
fn readyz_lineage(port: u16) -> String {
    let answer = get(port, "/readyz");
    assert_eq!(answer.status, 200);
    let value: serde_json::Value = serde_json::from_str(&answer.body).expect("/readyz is JSON");
    value["lineage"].as_str().expect("a lineage").to_owned()
}

/// A broker restarted on another args file (so another state directory)
/// on the same socket serves revision 1 of another lineage: the worker
/// adopts it at once, says so, and shows the new lineage in /readyz.
#[test]
fn a_new_lineage_is_adopted_at_once() {
    let a = Site::new(r#"{"from": "a"}"#);
    let b = Site::new(r#"{"from": "b"}"#);
    let broker_a = a.start_broker();
    let lineage_a = get_args(&a.socket()).lineage;
    assert_eq!(lineage_a.len(), 32, "{lineage_a:?}");
    let port = free_port();
    let worker = a.start_worker(port, false);
    assert_eq!(get(port, "/args").body, r#"{"args":{"from":"a"}}"#);
    assert_eq!(
        get(port, "/readyz").body,
        format!(
            r#"{{"status":"ready","revision":1,"connected":true,"since_last_contact_ms":0,"lineage":"{lineage_a}","backend_connected":true}}"#
        )
    );

    broker_a.signal(libc::SIGKILL);
    drop(broker_a);
    // b's broker on a's socket path: same revision (1), another document and lineage.
    let mut cmd = Command::new(BROKER);
    cmd.arg("--args")
        .arg(b.args())
        .arg("--socket")
        .arg(a.socket());
    let _broker_b = a.spawn_broker(cmd);
    let lineage_b = get_args(&a.socket()).lineage;
    assert_ne!(lineage_a, lineage_b);

    let answer = eventually("the worker to serve b's document", || {
        Some(get(port, "/args")).filter(|r| r.body == r#"{"args":{"from":"b"}}"#)
    });
    assert_eq!(answer.header("x-args-revision"), Some("1"));
    let line = worker.log_line("the broker's args have a new lineage");
    assert!(
        line.contains(" WARN ")
            && line.contains(
                "the broker's args have a new lineage (its state was reset or replaced); serving its revision 1"
            ),
        "{line}"
    );
    eventually("/readyz to show the new lineage", || {
        Some(()).filter(|_| readyz_lineage(port) == lineage_b)
    });
}

/// The cache file keeps the lineage; a worker started from it follows the
/// broker within that lineage.
#[test]
fn the_cache_file_keeps_the_lineage() {
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    let lineage = get_args(&site.socket()).lineage;
    let cache = site.path("cache.json");
    let port = free_port();
    let mut cmd = site.worker_cmd(port, false);
    cmd.arg("--cache-file").arg(&cache);
    let _worker = site.spawn_worker(cmd, port);
    let cached = eventually("the cache file", || std::fs::read_to_string(&cache).ok());
    assert_eq!(
        cached,
        format!("{{\"revision\":1,\"lineage\":\"{lineage}\",\"args\":{{\"a\":1}}}}\n")
    );
}

/// A standalone worker given SIGHUP says there is nothing to reload and keeps serving.
#[test]
fn sighup_to_a_worker_is_logged_and_ignored() {
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    let port = free_port();
    let mut worker = site.start_worker(port, false);
    worker.signal(libc::SIGHUP);
    let line = worker.log_line("SIGHUP");
    assert!(
        line.contains(" INFO ")
            && line.ends_with(
                "SIGHUP: a worker has nothing to reload; send SIGHUP to the broker to reload the args file"
            ),
        "{line}"
    );
    assert!(worker.is_running(), "{}", worker.log());
    assert_eq!(get(port, "/args").body, r#"{"args":{"a":1}}"#);
    assert_eq!(worker.stop().code(), Some(0));
}

/// The first bytes of a request, never finished.
const PARTIAL: &[u8] = b"GET /args HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";

/// Waits for the server to close `stream`: EOF or a reset.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                return false
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Whether the server has not closed `stream` yet (nothing to read, no EOF).
fn still_open(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    let open = matches!(stream.peek(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock);
    stream.set_nonblocking(false).unwrap();
    open
}

/// 500 connections that send part of a request and hold: a normal request
/// is still answered, and every one of them is closed by the worker once
/// --header-timeout has passed (never before).
#[test]
fn slowloris_connections_are_closed_after_the_header_timeout() {
    raise_nofile(4096);
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    let port = free_port();
    let mut cmd = site.worker_cmd(port, false);
    cmd.args(["--header-timeout", "1"]);
    let worker = site.spawn_worker(cmd, port);

    let mut slow: Vec<(TcpStream, Instant)> = (0..500)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            stream.write_all(PARTIAL).expect("send part of a request");
            (stream, Instant::now())
        })
        .collect();

    let asked = Instant::now();
    let answer = get(port, "/args");
    let took = asked.elapsed();
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"args":{"a":1}}"#)
    );
    let open = slow.iter().filter(|(s, _)| still_open(s)).count();
    eprintln!(
        "GET /args with 500 slowloris connections: {took:?}; {open} of them still open after it"
    );

    for (stream, sent) in &mut slow {
        assert!(
            closed_by_server(stream),
            "a slowloris connection was not closed"
        );
        // Its head began no earlier than `sent`: the bound is one second.
        assert!(
            sent.elapsed() >= Duration::from_secs(1),
            "closed before --header-timeout"
        );
    }
    assert!(
        worker.log().lines().all(|l| !l.contains("ERROR")),
        "{}",
        worker.log()
    );
    assert_eq!(get(port, "/args").status, 200);
}

/// Reads one HTTP/1.1 response with a Content-Length from a kept-alive connection.
fn read_response(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("read a response");
        assert!(n > 0, "the connection closed before a whole response");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .expect("content-length")
                .parse()
                .unwrap();
            if body.len() >= length {
                return text;
            }
        }
    }
}

/// A kept-alive connection with no new request is closed after
/// --idle-timeout, not after the (shorter) --header-timeout; one that keeps
/// sending requests is not.
#[test]
fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    let port = free_port();
    let mut cmd = site.worker_cmd(port, false);
    cmd.args(["--header-timeout", "0.2", "--idle-timeout", "1"]);
    let _worker = site.spawn_worker(cmd, port);

    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    for _ in 0..3 {
        stream
            .write_all(b"GET /args HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let response = read_response(&mut stream);
        assert!(
            response.starts_with("HTTP/1.1 200 OK\r\n")
                && response.ends_with(r#"{"args":{"a":1}}"#),
            "{response}"
        );
    }
    let answered = Instant::now();
    assert!(
        closed_by_server(&mut stream),
        "the idle connection stayed open"
    );
    assert!(
        answered.elapsed() >= Duration::from_secs(1),
        "closed before --idle-timeout"
    );
}

/// With its file descriptors exhausted, the worker logs the accept error
/// once (not once per attempt, at most once a minute), and serves again
/// once descriptors are free.
#[test]
fn running_out_of_file_descriptors_is_logged_once() {
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    let port = free_port();
    let mut cmd = site.worker_cmd(port, false);
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 32,
                rlim_max: 32,
            };
            match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    let worker = site.spawn_worker(cmd, port);
    let held: Vec<TcpStream> = (0..60)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    let line = worker.log_line("cannot accept connections");
    assert!(
        line.contains(" ERROR ")
            && line.ends_with(
                "cannot accept connections: Too many open files (os error 24); retrying every 100ms (logged at most once a minute)"
            ),
        "{line}"
    );
    drop(held);
    let answer = eventually("the worker to answer again", || try_get(port, "/args", &[]));
    assert_eq!(answer.body, r#"{"args":{"a":1}}"#);
    let errors = worker
        .log()
        .lines()
        .filter(|l| l.contains("cannot accept connections"))
        .count();
    assert_eq!(errors, 1, "{}", worker.log());
}

/// --listen takes a host name; one that does not resolve is a usage error naming the flag.
#[test]
fn listen_takes_a_host_name() {
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    let port = free_port();
    let mut cmd = Command::new(WORKER);
    cmd.arg("--broker")
        .arg(site.socket())
        .arg("--listen")
        .arg(format!("localhost:{port}"));
    let mut worker = Proc::spawn(cmd, site.fresh_log("worker"));
    let answer = eventually("the worker on localhost", || {
        assert!(worker.is_running(), "{}", worker.log());
        let stream = TcpStream::connect(("localhost", port)).ok()?;
        exchange(stream, "/args", &[])
    });
    assert_eq!(answer.body, r#"{"args":{"a":1}}"#);

    let (code, _, stderr) = run(Command::new(WORKER).args(["--listen", "localhost"]));
    assert_eq!(code, 2);
    assert_eq!(
        stderr.lines().next(),
        Some(
            r#"error: invalid value 'localhost' for '--listen <HOST:PORT>': "localhost" is not HOST:PORT (say 127.0.0.1:9880 or localhost:9880)"#
        )
    );
    let (code, _, stderr) =
        run(Command::new(WORKER).args(["--listen", "no-such-host.invalid:9880"]));
    assert_eq!(code, 2);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(r#"error: invalid value 'no-such-host.invalid:9880' for '--listen <HOST:PORT>': cannot resolve the host name "no-such-host.invalid": "#),
        "{stderr}"
    );
}

/// A cache file that cannot be written is reported with its path; the worker keeps serving.
#[test]
fn a_cache_file_that_cannot_be_written_is_named() {
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    let cache = site.path("missing-dir").join("cache.json");
    let port = free_port();
    let mut cmd = site.worker_cmd(port, false);
    cmd.arg("--cache-file").arg(&cache);
    let worker = site.spawn_worker(cmd, port);
    let line = worker.log_line("cannot write the cache file");
    assert!(
        line.contains(" WARN ")
            && line.ends_with(&format!(
                "cannot write the cache file {}: No such file or directory (os error 2); serving revision 1 anyway",
                cache.display()
            )),
        "{line}"
    );
    assert_eq!(get(port, "/args").status, 200);
}

/// Workers answer HEAD like GET, without a body.
#[test]
fn head_is_answered_without_a_body() {
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    let port = free_port();
    let _worker = site.start_worker(port, false);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"HEAD /args HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\ncontent-length: 16\r\n"), "{head}");
    assert!(head.contains("\r\nx-args-revision: 1\r\n"), "{head}");
    assert_eq!(body, "");
}

/// SIGTERM: the worker stops accepting, but an answer it is still writing
/// (to a client that has not read it yet) is finished before it exits 0.
#[test]
fn sigterm_finishes_an_answer_in_flight() {
    // Far more than the socket buffers hold: the answer is still being written.
    let big = format!(r#"{{"blob": "{}"}}"#, "x".repeat(8 << 20));
    let site = Site::new(&big);
    let _broker = site.start_broker();
    let port = free_port();
    let mut worker = site.start_worker(port, false);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /args HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).unwrap();
    worker.signal(libc::SIGTERM);
    worker.log_line("shutting down; finishing in-flight requests");
    let mut raw = first.to_vec();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body.len(), (8 << 20) + r#"{"args":{"blob":""}}"#.len());
    assert_eq!(worker.wait().code(), Some(0));
}

/// A bound of zero would close every connection at once: a usage error.
#[test]
fn zero_http_bounds_are_usage_errors() {
    for flag in ["--header-timeout", "--idle-timeout"] {
        let (code, _, stderr) = run(Command::new(WORKER).args([flag, "0"]));
        assert_eq!(code, 2, "{stderr}");
        assert_eq!(
            stderr.lines().next(),
            Some(format!("error: invalid value '0' for '{flag} <SECONDS>': \"0\" is not a positive number of seconds").as_str())
        );
    }
}
