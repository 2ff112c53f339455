//! The worker on its own: following a broker whose state was replaced
//! (lineage), SIGHUP, the HTTP bounds (slowloris, idle keep-alive, running
//! out of file descriptors), host names for --listen, and what its errors say.
mod common;

use common::*;
use std::io::{Read, Write};
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
    let worker = a.start_worker();
    let port = worker.http_port();
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
    let mut cmd = site.worker_cmd(ANY_PORT, false);
    cmd.arg("--cache-file").arg(&cache);
    let _worker = site.spawn_worker(cmd);
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
    let mut worker = site.start_worker();
    let port = worker.http_port();
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

/// 500 connections that send part of a request and hold: a normal request
/// is still answered, and every one of them is closed by the worker once
/// --header-timeout has passed (never before).
#[test]
fn slowloris_connections_are_closed_after_the_header_timeout() {
    raise_nofile(4096);
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    let mut cmd = site.worker_cmd(ANY_PORT, false);
    cmd.args(["--header-timeout", "1"]);
    let worker = site.spawn_worker(cmd);
    let port = worker.http_port();

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

/// A kept-alive connection with no new request is closed after
/// --idle-timeout, not after the (shorter) --header-timeout; one that keeps
/// sending requests is not.
#[test]
fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    let mut cmd = site.worker_cmd(ANY_PORT, false);
    cmd.args(["--header-timeout", "0.2", "--idle-timeout", "1"]);
    let worker = site.spawn_worker(cmd);
    let port = worker.http_port();

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
    let mut cmd = site.worker_cmd(ANY_PORT, false);
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
    let worker = site.spawn_worker(cmd);
    let port = worker.http_port();
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
    let mut cmd = Command::new(WORKER);
    cmd.arg("--broker")
        .arg(site.socket())
        .arg("--listen")
        .arg("localhost:0");
    let mut worker = Proc::spawn(cmd, site.fresh_log("worker"));
    let port = worker.http_port();
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
    let mut cmd = site.worker_cmd(ANY_PORT, false);
    cmd.arg("--cache-file").arg(&cache);
    let worker = site.spawn_worker(cmd);
    let port = worker.http_port();
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
    let worker = site.start_worker();
    let port = worker.http_port();
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
    let mut worker = site.start_worker();
    let port = worker.http_port();
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

/// A worker that logs when a request waits for a revision (at debug).
fn worker_logging_waits(site: &Site) -> Proc {
    let mut cmd = site.worker_cmd(ANY_PORT, false);
    cmd.env("RUST_LOG", "info,worker::http=debug");
    site.spawn_worker(cmd)
}

/// Read-your-writes: `?min_revision=N` is answered at once when the worker
/// serves N or newer; a request for a revision not there yet waits, and is
/// answered as soon as a write (made while it waits) reaches the worker.
#[test]
fn min_revision_waits_for_a_write() {
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    let worker = worker_logging_waits(&site);
    let port = worker.http_port();

    let answer = get(port, "/args?min_revision=1");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"args":{"a":1}}"#)
    );

    for (revision, uri, body) in [
        (2, "/args?min_revision=2&wait=20", r#"{"args":{"a":2}}"#),
        (3, "/args/a?min_revision=3&wait=20s", "3"),
    ] {
        let writer = std::thread::scope(|scope| {
            let writer = scope.spawn(|| {
                // The request is waiting: the worker said so.
                worker.log_line(&format!("waiting up to 20s for revision {revision}"));
                site.patch(&format!(r#"{{"a": {revision}}}"#), None)
            });
            let answer = get(port, uri);
            assert_eq!((answer.status, answer.body.as_str()), (200, body), "{uri}");
            assert_eq!(
                answer.header("x-args-revision"),
                Some(revision.to_string().as_str())
            );
            writer.join().expect("the writer thread")
        });
        assert_eq!(writer.expect("the patch").revision, revision);
    }
}

/// A revision not reached within `wait` is a 409 with the revision served;
/// bad parameters are a 400 naming the parameter.
#[test]
fn min_revision_not_reached_is_409_and_bad_parameters_400() {
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    let worker = site.start_worker();
    let port = worker.http_port();

    let asked = Instant::now();
    let answer = get(port, "/args?min_revision=5&wait=0.2");
    assert!(asked.elapsed() >= Duration::from_millis(200));
    assert_eq!(answer.status, 409);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(
        answer.body,
        r#"{"error":"revision 5 was not reached within 200ms; this worker serves revision 1","revision":1,"min_revision":5}"#
    );

    for (uri, body) in [
        (
            "/args?min_revision=abc",
            r#"{"error":"min_revision must be a revision number (0 or more), not \"abc\"","parameter":"min_revision"}"#,
        ),
        (
            "/args/a?min_revision=1&wait=-1",
            r#"{"error":"wait must be a number of seconds (2.5) or a duration with a unit (500ms, 2s), not \"-1\"","parameter":"wait"}"#,
        ),
    ] {
        let answer = get(port, uri);
        assert_eq!((answer.status, answer.body.as_str()), (400, body), "{uri}");
    }
}

/// The `/readyz` of the worker on `port`: status and JSON body.
fn readyz(port: u16) -> (u16, serde_json::Value) {
    let answer = get(port, "/readyz");
    let value = serde_json::from_str(&answer.body).expect("/readyz is JSON");
    (answer.status, value)
}

/// --max-stale: once the broker (killed with SIGKILL) has been out of reach
/// that long, /readyz is 503 and says why, while /args still answers; 200
/// again when a broker is back on the socket. A worker without the flag
/// stays ready all along.
#[test]
fn max_stale_makes_readyz_503_until_the_broker_is_back() {
    let site = Site::new(r#"{"a": 1}"#);
    let mut broker = site.start_broker();
    let mut cmd = site.worker_cmd(ANY_PORT, false);
    cmd.args(["--max-stale", "0.5"]);
    let strict = site.spawn_worker(cmd);
    let strict_port = strict.http_port();
    let lax = site.start_worker();
    let lax_port = lax.http_port();
    let lineage = site.current().lineage;

    broker.signal(libc::SIGKILL);
    broker.wait();
    let (status, body) = eventually("/readyz to be 503", || {
        Some(readyz(strict_port)).filter(|(status, _)| *status == 503)
    });
    let since = body["since_last_contact_ms"]
        .as_u64()
        .expect("milliseconds");
    assert!(since >= 500, "{body}");
    assert_eq!(
        (status, body.to_string()),
        (
            503,
            format!(
                r#"{{"status":"stale","revision":1,"connected":false,"since_last_contact_ms":{since},"lineage":"{lineage}","backend_connected":true,"reason":"the broker has been out of reach for longer than --max-stale (500ms)"}}"#
            )
        )
    );
    let answer = get(strict_port, "/args");
    assert_eq!(
        (answer.status, answer.header("x-args-stale")),
        (200, Some("true"))
    );
    // Without --max-stale: still ready after longer than that.
    let (status, body) = eventually("the other worker to be a second stale", || {
        Some(readyz(lax_port))
            .filter(|(_, body)| body["since_last_contact_ms"].as_u64() >= Some(1000))
    });
    assert_eq!(
        (status, &body["status"], &body["connected"]),
        (200, &"ready".into(), &false.into())
    );

    let _broker = site.start_broker();
    let (_, body) = eventually("/readyz to be 200 again", || {
        Some(readyz(strict_port)).filter(|(status, _)| *status == 200)
    });
    assert_eq!(
        body.to_string(),
        format!(
            r#"{{"status":"ready","revision":1,"connected":true,"since_last_contact_ms":0,"lineage":"{lineage}","backend_connected":true}}"#
        )
    );
}

/// --max-stale and ARGSBROKER_MAX_STALE take a number of seconds; anything
/// else is a usage error naming the flag.
#[test]
fn max_stale_must_be_seconds() {
    let (code, _, stderr) = run(Command::new(WORKER).arg("--max-stale=-1"));
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr.lines().next(),
        Some(
            r#"error: invalid value '-1' for '--max-stale <SECONDS>': "-1" is not a number of seconds"#
        )
    );
    let (code, _, stderr) = run(Command::new(WORKER).env("ARGSBROKER_MAX_STALE", "soon"));
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr.lines().next(),
        Some(
            r#"error: invalid value 'soon' for '--max-stale <SECONDS>': "soon" is not a number of seconds"#
        )
    );
}

/// GET /metrics after a write: the new revision, its lineage and hash, and
/// the broker connected, in OpenMetrics text.
#[test]
fn metrics_follow_a_write() {
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    let worker = site.start_worker();
    let port = worker.http_port();
    let written = site.patch(r#"{"a": 2}"#, None).expect("the patch");
    assert_eq!(written.revision, 2);
    eventually("the worker to serve revision 2", || {
        Some(get(port, "/args")).filter(|a| a.header("x-args-revision") == Some("2"))
    });
    let answer = get(port, "/metrics");
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let info = format!(
        r#"argsbroker_worker_info{{lineage="{}",sha256="{}"}} 1"#,
        written.lineage, written.sha256
    );
    for line in [
        "argsbroker_worker_revision 2",
        "argsbroker_worker_broker_connected 1",
        "argsbroker_worker_seconds_since_broker_contact 0.0",
        info.as_str(),
        "# EOF",
    ] {
        assert!(
            answer.body.lines().any(|l| l == line),
            "{line:?} in\n{}",
            answer.body
        );
    }
}
