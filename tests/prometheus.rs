//! `broker --metrics-listen`: the broker's `GET /metrics` line by line, what
//! an address it cannot have says, and a real Prometheus (Debian's
//! `prometheus`; tests/prerequisites installs it) scraping a broker and two
//! workers and answering queries with the revision each of them serves.
mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The lines of the broker's `/metrics` answer.
fn scrape(port: u16) -> Vec<String> {
    let answer = get(port, "/metrics");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(answer.body.ends_with("# EOF\n"), "{}", answer.body);
    answer.body.lines().map(str::to_owned).collect()
}

/// Waits until the broker's `/metrics` has every line of `wanted`.
fn scrape_until(port: u16, wanted: &[String]) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    let last = loop {
        let lines = scrape(port);
        if wanted.iter().all(|w| lines.contains(w)) {
            return lines;
        }
        if Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let missing: Vec<&String> = wanted.iter().filter(|w| !last.contains(w)).collect();
    panic!(
        "/metrics never had {missing:?}; the last scrape:\n{}",
        last.join("\n")
    );
}

#[test]
fn the_broker_metrics_say_revision_writes_followers_and_backend() {
    let site = Site::new(r#"{"a": 1}"#);
    let broker = site.start_broker_with(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = broker.metrics_port();
    let first = site.current();
    let lines = scrape(metrics);
    for line in [
        "argsbroker_broker_revision 1".to_owned(),
        format!(
            r#"argsbroker_broker_info{{lineage="{}",sha256="{}",backend="file {}"}} 1"#,
            first.lineage,
            first.sha256,
            site.args().display()
        ),
        r#"argsbroker_broker_writes_total{method="PatchArgs",result="ok"} 0"#.to_owned(),
        r#"argsbroker_broker_writes_total{method="PatchArgs",result="conflict"} 0"#.to_owned(),
        r#"argsbroker_broker_writes_total{method="Rollback",result="not_found"} 0"#.to_owned(),
        "argsbroker_broker_watchers 0".to_owned(),
        "argsbroker_broker_followers 0".to_owned(),
        "argsbroker_broker_followers_at_current_revision 0".to_owned(),
        "argsbroker_broker_followers_behind 0".to_owned(),
        "argsbroker_broker_follower_apply_seconds_count 0".to_owned(),
        "argsbroker_broker_backend_connected 1".to_owned(),
        "argsbroker_broker_backend_disconnects_total 0".to_owned(),
    ] {
        assert!(
            lines.contains(&line),
            "no {line:?} in:\n{}",
            lines.join("\n")
        );
    }
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("argsbroker_broker_follower_applied_revision{")),
        "{lines:?}"
    );

    // A worker follows (one Follow stream), then a write and a conflicting one.
    let mut worker = site.start_worker();
    let http = worker.http_port();
    let follower = format!(r#"name="worker 127.0.0.1:{http}",pid="{}""#, worker.pid());
    scrape_until(
        metrics,
        &[
            "argsbroker_broker_followers 1".to_owned(),
            "argsbroker_broker_watchers 1".to_owned(),
            format!("argsbroker_broker_follower_applied_revision{{{follower}}} 1"),
        ],
    );
    assert_eq!(
        site.patch(r#"{"b": 2}"#, Some(1)).expect("patch").revision,
        2
    );
    let conflict = site.patch(r#"{"c": 3}"#, Some(1)).expect_err("a conflict");
    assert_eq!(conflict.0, tonic::Code::FailedPrecondition);
    let lines = scrape_until(
        metrics,
        &[
            "argsbroker_broker_revision 2".to_owned(),
            r#"argsbroker_broker_writes_total{method="PatchArgs",result="ok"} 1"#.to_owned(),
            r#"argsbroker_broker_writes_total{method="PatchArgs",result="conflict"} 1"#.to_owned(),
            r#"argsbroker_broker_writes_total{method="SetArgs",result="ok"} 0"#.to_owned(),
            "argsbroker_broker_followers 1".to_owned(),
            "argsbroker_broker_followers_at_current_revision 1".to_owned(),
            "argsbroker_broker_followers_behind 0".to_owned(),
            format!("argsbroker_broker_follower_applied_revision{{{follower}}} 2"),
            // The worker was connected when revision 2 was published.
            "argsbroker_broker_follower_apply_seconds_count 1".to_owned(),
            "argsbroker_broker_backend_connected 1".to_owned(),
        ],
    );
    let writes: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("argsbroker_broker_writes_total{") && !l.ends_with(" 0"))
        .collect();
    assert_eq!(writes.len(), 2, "{writes:?}");

    // The follower that left is gone from the next scrape.
    assert!(worker.stop().success());
    let lines = scrape_until(
        metrics,
        &[
            "argsbroker_broker_followers 0".to_owned(),
            "argsbroker_broker_watchers 0".to_owned(),
        ],
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("argsbroker_broker_follower_applied_revision{")),
        "{lines:?}"
    );
}

#[test]
fn a_metrics_address_in_use_stops_the_broker_with_one_line() {
    let site = Site::new(r#"{"a": 1}"#);
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = held.local_addr().expect("addr");
    let (code, _, stderr) = run(site
        .broker_cmd()
        .args(["--metrics-listen", &addr.to_string()]));
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "broker: error: --metrics-listen {addr}: {addr} is already in use by another process\n"
        )
    );
    assert!(!exists(&site.socket()), "the socket was left behind");
    assert!(
        !exists(&site.path("args.json.state")),
        "the state was touched"
    );

    let (code, _, stderr) = run(site.broker_cmd().args(["--metrics-listen", "127.0.0.1"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--metrics-listen"), "{stderr}");
}

/// Debian's Prometheus, run by this test alone: its own config, data and
/// port in `dir`.
fn start_prometheus(dir: &Path, targets: &[u16]) -> (Proc, u16) {
    let bin = std::env::var("ARGSBROKER_PROMETHEUS").unwrap_or_else(|_| "prometheus".to_owned());
    let targets: Vec<String> = targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: argsbroker\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .expect("write prometheus.yml");
    let mut cmd = Command::new(&bin);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        // The kernel picks the port; Prometheus logs it
        // (`msg="Listening on" address=127.0.0.1:PORT`).
        .arg("--web.listen-address=127.0.0.1:0");
    if let Err(err) = Command::new(&bin).arg("--version").output() {
        panic!("cannot run {bin}: {err} (install Debian's prometheus; tests/prerequisites does)");
    }
    let mut proc = Proc::spawn(cmd, dir.join("prometheus.log"));
    let port = proc.bound_port(r#"msg="Listening on" address="#);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(proc.is_running(), "prometheus exited: {}", proc.log());
        if try_get(port, "/-/ready", &[]).is_some_and(|r| r.status == 200) {
            return (proc, port);
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never ready: {}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An instant query's answer: each series' `instance` and value.
fn query(prometheus: u16, expr: &str) -> BTreeMap<String, String> {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let expr_query = utf8_percent_encode(expr, NON_ALPHANUMERIC);
    let answer = get(prometheus, &format!("/api/v1/query?query={expr_query}"));
    assert_eq!(answer.status, 200, "{answer:?}");
    let body = match answer.header("transfer-encoding") {
        Some(te) if te.eq_ignore_ascii_case("chunked") => dechunk(&answer.body),
        _ => answer.body.clone(),
    };
    let value: serde_json::Value = serde_json::from_str(&body).expect("the query answer is JSON");
    assert_eq!(value["status"], "success", "{body}");
    let result = value["data"]["result"].as_array().expect("a result vector");
    result
        .iter()
        .map(|series| {
            let instance = series["metric"]["instance"].as_str().expect("an instance");
            let value = series["value"][1].as_str().expect("a value");
            (instance.to_owned(), value.to_owned())
        })
        .collect()
}

/// An HTTP/1.1 chunked body, put back together.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// Polls `expr` until it answers `wanted`, within a minute.
fn query_until(prometheus: u16, expr: &str, wanted: &BTreeMap<String, String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = query(prometheus, expr);
        if &got == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{expr}: Prometheus answers {got:?}, not {wanted:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn prometheus_scrapes_the_broker_and_the_workers() {
    let site = Site::new(r#"{"a": 1}"#);
    let mut broker = site.start_broker_with(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = broker.metrics_port();
    let mut workers = [site.start_worker(), site.start_worker()];
    let [one, two] = workers.each_ref().map(Proc::http_port);
    let (mut prometheus, port) = start_prometheus(site.dir.path(), &[metrics, one, two]);

    let at = |revision: &str, ports: &[u16]| -> BTreeMap<String, String> {
        ports
            .iter()
            .map(|p| (format!("127.0.0.1:{p}"), revision.to_owned()))
            .collect()
    };
    query_until(port, "up", &at("1", &[metrics, one, two]));
    query_until(port, "argsbroker_broker_revision", &at("1", &[metrics]));
    query_until(port, "argsbroker_worker_revision", &at("1", &[one, two]));

    assert_eq!(site.patch(r#"{"b": 2}"#, None).expect("patch").revision, 2);
    query_until(port, "argsbroker_broker_revision", &at("2", &[metrics]));
    query_until(port, "argsbroker_worker_revision", &at("2", &[one, two]));
    query_until(
        port,
        r#"argsbroker_broker_writes_total{method="PatchArgs",result="ok"}"#,
        &at("1", &[metrics]),
    );
    query_until(port, "argsbroker_broker_followers", &at("2", &[metrics]));

    assert!(prometheus.stop().success(), "{}", prometheus.log());
    for worker in &mut workers {
        assert!(worker.stop().success());
    }
    assert!(broker.stop().success());
}

/// `--metrics-listen` has the worker's protections: a request head that
/// trickles in is cut at `--metrics-header-timeout` (never before), an idle
/// keep-alive connection at `--metrics-idle-timeout`, and scrapes are
/// answered meanwhile.
#[test]
fn the_metrics_listener_closes_slow_heads_and_idle_connections() {
    let site = Site::new(r#"{"a": 1}"#);
    let broker = site.start_broker_with(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--metrics-header-timeout",
        "1",
        "--metrics-idle-timeout",
        "2",
    ]);
    let port = broker.metrics_port();

    let mut slow = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .expect("part of a request");
    let sent = Instant::now();
    assert_eq!(get(port, "/metrics").status, 200);
    assert!(closed_by_server(&mut slow), "the slow head was not cut");
    assert!(
        sent.elapsed() >= Duration::from_secs(1),
        "cut before --metrics-header-timeout"
    );

    let mut idle = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    idle.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("a request");
    let response = read_response(&mut idle);
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    let answered = Instant::now();
    assert!(
        closed_by_server(&mut idle),
        "the idle connection stayed open"
    );
    assert!(
        answered.elapsed() >= Duration::from_secs(2),
        "closed before --metrics-idle-timeout"
    );
    assert!(
        broker.log().lines().all(|l| !l.contains("ERROR")),
        "{}",
        broker.log()
    );
}

/// Past `--metrics-max-connections`, a new connection waits in the listen
/// backlog (no file descriptor, no answer) until one closes; then it is
/// answered.
#[test]
fn the_metrics_listener_caps_its_connections() {
    let site = Site::new(r#"{"a": 1}"#);
    let broker = site.start_broker_with(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--metrics-max-connections",
        "3",
    ]);
    let port = broker.metrics_port();
    // The kernel hands connections over in the order they came: these three
    // take the three places.
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    for stream in &mut held {
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("a request");
        let response = read_response(stream);
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    }
    let mut fourth = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    fourth
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("a request");
    fourth
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("a read timeout");
    let mut byte = [0u8; 1];
    let waited = fourth.read(&mut byte);
    assert!(
        matches!(&waited, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the fourth connection was answered past the cap: {waited:?}"
    );
    drop(held.pop());
    let response = read_response(&mut fourth);
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
}

/// `broker SUBCOMMAND --socket SOCKET ARGS...`, to its end.
fn broker_cli(site: &Site, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(BROKER);
    cmd.arg(args[0])
        .arg("--socket")
        .arg(site.socket())
        .args(&args[1..]);
    run(&mut cmd)
}

/// The canary's gauges: 0 while none runs; during one, the candidate and
/// stable revisions and how its selected followers stand (one applied the
/// candidate, one rejected it); the bake clock's series only while it runs.
#[test]
fn the_canary_gauges_follow_a_canary_from_start_to_abort_and_a_bake() {
    let site = Site::new(r#"{"v": 1}"#);
    let schema = site.path("strict.json");
    std::fs::write(&schema, r#"{"properties": {"v": {"maximum": 1}}}"#).unwrap();
    let broker = site.start_broker_with(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = broker.metrics_port();
    let none = [
        "argsbroker_broker_canary_running 0".to_owned(),
        "argsbroker_broker_canary_candidate_revision 0".to_owned(),
        "argsbroker_broker_canary_stable_revision 0".to_owned(),
        "argsbroker_broker_canary_selected_followers 0".to_owned(),
        "argsbroker_broker_canary_selected_applied 0".to_owned(),
        "argsbroker_broker_canary_selected_rejected 0".to_owned(),
    ];
    let no_bake_series = |lines: &[String]| {
        !lines
            .iter()
            .any(|l| l.starts_with("argsbroker_broker_canary_bake_seconds_left{"))
    };
    let lines = scrape(metrics);
    for line in &none {
        assert!(
            lines.contains(line),
            "no {line:?} in:\n{}",
            lines.join("\n")
        );
    }
    assert!(no_bake_series(&lines), "{lines:?}");

    let named = |name: &str, extra: &[&str]| {
        let mut cmd = site.worker_cmd(ANY_PORT, false);
        cmd.arg("--name").arg(name).args(extra);
        site.spawn_worker(cmd)
    };
    let _plain = named("canary-plain", &[]);
    let _strict = named("canary-strict", &["--schema", schema.to_str().unwrap()]);
    let _other = named("other", &[]);
    scrape_until(metrics, &["argsbroker_broker_followers 3".to_owned()]);

    let (code, _, err) = broker_cli(
        &site,
        &["patch", "--canary", "name=canary-*", r#"{"v": 2}"#],
    );
    assert_eq!(code, 0, "{err}");
    let lines = scrape_until(
        metrics,
        &[
            "argsbroker_broker_canary_running 1".to_owned(),
            "argsbroker_broker_canary_candidate_revision 2".to_owned(),
            "argsbroker_broker_canary_stable_revision 1".to_owned(),
            "argsbroker_broker_canary_selected_followers 2".to_owned(),
            "argsbroker_broker_canary_selected_applied 1".to_owned(),
            "argsbroker_broker_canary_selected_rejected 1".to_owned(),
            // Plain readers and the unselected follower keep revision 1.
            "argsbroker_broker_revision 1".to_owned(),
        ],
    );
    assert!(no_bake_series(&lines), "without --bake: {lines:?}");

    let (code, _, err) = broker_cli(&site, &["abort"]);
    assert_eq!(code, 0, "{err}");
    let mut ended = none.to_vec();
    ended.push("argsbroker_broker_revision 3".to_owned());
    scrape_until(metrics, &ended);

    // With --bake, once the one selected follower applied the candidate:
    // the seconds left, labelled with the candidate.
    let (code, _, err) = broker_cli(
        &site,
        &[
            "patch",
            "--canary",
            "name=canary-plain",
            "--bake",
            "1h",
            r#"{"v": 0}"#,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let lines = scrape_until(
        metrics,
        &[
            "argsbroker_broker_canary_candidate_revision 4".to_owned(),
            "argsbroker_broker_canary_selected_applied 1".to_owned(),
        ],
    );
    let left: f64 = eventually("the bake clock's series", || {
        let lines = scrape(metrics);
        let line = lines
            .iter()
            .find(|l| {
                l.starts_with(r#"argsbroker_broker_canary_bake_seconds_left{candidate="4"} "#)
            })?
            .clone();
        line.rsplit(' ').next()?.parse().ok()
    });
    assert!(left > 0.0 && left <= 3600.0, "{left} in {lines:?}");
}
