//! The worker on its own: following a broker whose state was replaced
//! (lineage), SIGHUP, the HTTP bounds (slowloris, idle keep-alive, running
//! out of file descriptors), host names for --listen, and what its errors say.
mod common;

use common::*;
use std::net::TcpStream;
use std::process::Command;

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
            r#"{{"status":"ready","revision":1,"connected":true,"since_last_contact_ms":0,"lineage":"{lineage_a}"}}"#
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
