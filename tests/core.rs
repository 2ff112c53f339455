//! The whole path, with the real binaries: an args file, the broker, workers.
mod common;

use argsbroker::pb;
use common::*;

/// A document that exercises exactness: big numbers, key order, Unicode.
const EXACT: &str = r#"{
  "zeta": 123456789012345678901234567890,
  "alpha": 0.123456789012345678901234567891,
  "名前": "値 ✓ \u00e9",
  "nested": {"a/b": 1, "m~n": [10, 20, {"deep": true}], "": "empty key"},
  "neg": -0.0
}"#;
const EXACT_COMPACT: &str = r#"{"zeta":123456789012345678901234567890,"alpha":0.123456789012345678901234567891,"名前":"値 ✓ é","nested":{"a/b":1,"m~n":[10,20,{"deep":true}],"":"empty key"},"neg":-0.0}"#;

/// The document comes back exactly: 30-digit numbers, key order, Unicode.
#[test]
fn document_round_trips_exactly() {
    let site = Site::new(EXACT);
    let _broker = site.start_broker();
    let args = site.get("").expect("GetArgs");
    assert_eq!(args.json, EXACT_COMPACT);
    assert_eq!(args.revision, 1);
    assert_eq!(args.sha256.len(), 64);

    let worker = site.start_worker();
    let port = worker.http_port();
    let answer = get(port, "/args");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("x-args-revision"), Some("1"));
    assert_eq!(answer.body, args_body(EXACT_COMPACT));
}

/// Pointers walk keys and indexes, with ~0/~1 escapes, over gRPC and HTTP.
#[test]
fn pointers_name_values_inside_the_document() {
    let site = Site::new(EXACT);
    let _broker = site.start_broker();
    let worker = site.start_worker();
    let port = worker.http_port();

    let cases = [
        ("/zeta", "123456789012345678901234567890"),
        ("/nested/a~1b", "1"),
        ("/nested/m~0n/1", "20"),
        ("/nested/m~0n/2/deep", "true"),
        ("/nested/", "\"empty key\""),
        ("/名前", "\"値 ✓ é\""),
    ];
    for (pointer, want) in cases {
        assert_eq!(
            site.get(pointer).expect(pointer).json,
            want,
            "GetArgs {pointer}"
        );
        let url = format!("/args{pointer}").replace(' ', "%20");
        let answer = get(port, &url);
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (200, want),
            "GET {url}"
        );
        assert_eq!(answer.header("x-args-revision"), Some("1"));
    }
    let answer = get(port, "/args/%E5%90%8D%E5%89%8D");
    assert_eq!((answer.status, answer.body.as_str()), (200, "\"値 ✓ é\""));
}

/// Two workers share one port with --reuse-port, a third has its own; all serve the file.
#[test]
fn workers_share_a_port_with_reuse_port() {
    let site = Site::new(EXACT);
    let _broker = site.start_broker();
    let mut first = site.spawn_worker(site.worker_cmd(ANY_PORT, true));
    let shared = first.http_port();
    let _second = site.start_worker_on(shared);
    let third = site.start_worker();
    let own = third.http_port();

    for port in [shared, shared, shared, own] {
        assert_eq!(get(port, "/args").body, args_body(EXACT_COMPACT));
    }
    // The port keeps answering from the second worker once the first is gone.
    first.signal(libc::SIGKILL);
    first.wait();
    for _ in 0..20 {
        assert_eq!(get(shared, "/args").body, args_body(EXACT_COMPACT));
    }
}

/// A worker started before its broker accepts nothing until the broker is up, then serves.
#[test]
fn worker_started_before_the_broker_waits_for_it() {
    let site = Site::new(EXACT);
    // Held by the test until the worker joins it, so that nothing else
    // answers on it meanwhile.
    let held = hold_port();
    let port = held.port;
    let mut cmd = site.worker_cmd(port, true);
    cmd.env("RUST_LOG", "debug");
    let mut worker = Proc::spawn(cmd, site.fresh_log("worker"));
    // It has tried and is still waiting: several attempts are logged.
    eventually("the worker to retry", || {
        (worker.log().matches("broker not ready yet").count() >= 3).then_some(())
    });
    assert!(
        worker.is_running(),
        "worker gave up early: {}",
        worker.log()
    );
    assert!(
        try_get(port, "/readyz", &[]).is_none(),
        "a worker without args must not accept connections"
    );

    let _broker = site.start_broker();
    let ready = eventually("the worker to become ready", || {
        try_get(port, "/readyz", &[])
    });
    assert_eq!(ready.status, 200);
    assert_eq!(get(port, "/args").body, args_body(EXACT_COMPACT));
}

/// With no broker, a worker exits after --startup-timeout with a line naming the socket.
#[test]
fn worker_without_a_broker_gives_up_with_a_clear_error() {
    let site = Site::new(EXACT);
    let mut cmd = site.worker_cmd(ANY_PORT, false);
    cmd.args(["--startup-timeout", "0.3"]);
    let started = std::time::Instant::now();
    let (code, _, stderr) = run(&mut cmd);
    assert_eq!(code, 1);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    let sock = site.socket().display().to_string();
    assert_eq!(
        stderr.lines().last().unwrap(),
        format!(
            "worker: error: no broker answered at {sock} within 300ms \
             (last error: cannot connect to the broker at {sock}: no such file)"
        )
    );
}

/// ETag and If-None-Match: 304 with no body when the client's copy is current.
#[test]
fn etag_and_if_none_match() {
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    let worker = site.start_worker();
    let port = worker.http_port();

    let first = get(port, "/args");
    let etag = first.header("etag").expect("an ETag").to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() == 34,
        "{etag}"
    );
    let weak = format!("W/{etag}");
    let listed = format!("\"other\", {etag}");
    for tag in [etag.as_str(), weak.as_str(), listed.as_str(), "*"] {
        let answer = get_with(port, "/args", &[("If-None-Match", tag)]);
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (304, ""),
            "If-None-Match: {tag}"
        );
        assert_eq!(answer.header("etag"), Some(etag.as_str()));
        assert_eq!(answer.header("x-args-revision"), Some("1"));
    }
    let answer = get_with(port, "/args/a", &[("If-None-Match", &etag)]);
    assert_eq!(answer.status, 304);
    let answer = get_with(port, "/args", &[("If-None-Match", "\"stale\"")]);
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"args":{"a":1}}"#)
    );

    // A new revision has a new tag, so the old one no longer matches.
    site.patch(r#"{"a": 2}"#, None).unwrap();
    let answer = eventually("the new revision", || {
        Some(get_with(port, "/args", &[("If-None-Match", &etag)])).filter(|a| a.status == 200)
    });
    assert_eq!(answer.body, r#"{"args":{"a":2}}"#);
    assert_eq!(answer.header("x-args-revision"), Some("2"));
    assert_ne!(answer.header("etag"), Some(etag.as_str()));
}

/// /healthz and /readyz answer with JSON; /readyz reports the revision and the broker link.
#[test]
fn health_and_readiness() {
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    let worker = site.start_worker();
    let port = worker.http_port();

    let health = get(port, "/healthz");
    assert_eq!(
        (health.status, health.body.as_str()),
        (200, r#"{"status":"ok"}"#)
    );
    let ready = get(port, "/readyz");
    assert_eq!(ready.status, 200);
    let body: serde_json::Value = serde_json::from_str(&ready.body).unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["revision"], 1);
    assert_eq!(body["connected"], true);
    assert_eq!(get(port, "/nothing-here").status, 404);
}

/// Opens a watch, applies `merge_patch`, and returns the first two
/// messages the watch sent: the snapshot, then the patched revision.
fn watch_across_a_patch(site: &Site, merge_patch: &str) -> (pb::Args, pb::Args) {
    grpc(|| async {
        let mut client = argsbroker::client::connect(site.socket()).await.unwrap();
        let mut stream = client
            .watch_args(pb::WatchArgsRequest {
                start_revision: None,
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        client
            .patch_args(pb::PatchArgsRequest {
                merge_patch: merge_patch.into(),
                expected_revision: None,
                ..Default::default()
            })
            .await
            .unwrap();
        let second = stream.message().await.unwrap().unwrap();
        (first, second)
    })
}

/// WatchArgs sends the current snapshot first, then each newer revision.
#[test]
fn watch_sends_the_current_snapshot_then_changes() {
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    let (first, second) = watch_across_a_patch(&site, r#"{"b": [true]}"#);
    assert_eq!(
        (first.revision, first.json_str().unwrap()),
        (1, r#"{"a":1}"#)
    );
    assert_eq!(
        (second.revision, second.json_str().unwrap()),
        (2, r#"{"a":1,"b":[true]}"#)
    );
}

/// A document of several HTTP/2 frames (200 KiB; the broker sends large
/// documents from the snapshot's own bytes) arrives whole by GetArgs, by
/// WatchArgs, before and after a change, and at a worker.
#[test]
fn a_large_document_arrives_whole_everywhere() {
    let big = |tag: &str| format!(r#"{{"blob":"{}","tag":"{tag}"}}"#, "x".repeat(200 * 1024));
    let site = Site::new(&big("one"));
    let _broker = site.start_broker();
    let worker = site.start_worker();
    let port = worker.http_port();
    assert_eq!(site.current().json, big("one"));
    let (first, second) = watch_across_a_patch(&site, r#"{"tag": "two"}"#);
    assert_eq!(
        (first.revision, first.json_str().unwrap()),
        (1, big("one").as_str())
    );
    assert_eq!(
        (second.revision, second.json_str().unwrap()),
        (2, big("two").as_str())
    );
    let now = site.current();
    assert_eq!((now.revision, now.sha256), (2, second.sha256));
    let answer = eventually("the worker to serve revision 2", || {
        Some(get(port, "/args")).filter(|a| a.header("x-args-revision") == Some("2"))
    });
    assert_eq!(answer.body, args_body(&big("two")));
}

/// Workers follow changes live.
#[test]
fn workers_follow_changes() {
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    let workers = [site.start_worker(), site.start_worker()];
    let ports = workers.each_ref().map(Proc::http_port);
    let reply = site.patch(r#"{"a": {"b": "c"}}"#, None).unwrap();
    assert_eq!(reply.revision, 2);
    for port in ports {
        let answer = eventually("the worker to serve revision 2", || {
            Some(get(port, "/args")).filter(|a| a.header("x-args-revision") == Some("2"))
        });
        assert_eq!(answer.body, r#"{"args":{"a":{"b":"c"}}}"#);
    }
}

/// SIGTERM with a watcher connected: the broker ends the watch, removes its socket and exits 0.
#[test]
fn sigterm_stops_the_broker_cleanly() {
    let site = Site::new(r#"{"a": 1}"#);
    let mut broker = site.start_broker();
    let _worker = site.start_worker();
    let status = broker.stop();
    assert_eq!(status.code(), Some(0), "{}", broker.log());
    assert!(!exists(&site.socket()), "the socket file is left behind");
}

/// A worker keeps serving when its broker dies, and picks up the restarted broker's revision.
#[test]
fn worker_outlives_its_broker_and_converges_after_restart() {
    let site = Site::new(r#"{"a": 1}"#);
    let mut broker = site.start_broker();
    let mut worker = site.start_worker();
    let port = worker.http_port();

    broker.signal(libc::SIGKILL);
    broker.wait();
    for _ in 0..20 {
        assert_eq!(get(port, "/args").body, r#"{"args":{"a":1}}"#);
    }
    assert!(worker.is_running());

    std::fs::write(site.args(), r#"{"a": 2}"#).unwrap();
    let _broker = site.start_broker();
    let answer = eventually("the worker to serve the restarted broker's args", || {
        Some(get(port, "/args")).filter(|a| a.header("x-args-revision") == Some("2"))
    });
    assert_eq!(answer.body, r#"{"args":{"a":2}}"#);
}

/// A restart with unchanged content keeps the revision; a changed file gets the next one.
#[test]
fn revisions_survive_restarts() {
    let site = Site::new(r#"{"a": 1}"#);
    let mut broker = site.start_broker();
    assert_eq!(site.patch(r#"{"a": 5}"#, None).unwrap().revision, 2);
    broker.stop();

    let mut broker = site.start_broker();
    let args = site.current();
    assert_eq!((args.revision, args.json_str().unwrap()), (2, r#"{"a":5}"#));
    broker.stop();

    std::fs::write(site.args(), "{\"a\": 6}\n").unwrap();
    let _broker = site.start_broker();
    let args = site.current();
    assert_eq!((args.revision, args.json_str().unwrap()), (3, r#"{"a":6}"#));
}

/// A socket left by a killed broker is stale and replaced; a live broker's socket is not.
#[test]
fn stale_socket_is_replaced_but_a_live_broker_is_not() {
    let site = Site::new(r#"{"a": 1}"#);
    let mut broker = site.start_broker();
    broker.signal(libc::SIGKILL);
    broker.wait();
    assert!(exists(&site.socket()), "kill -9 leaves the socket file");

    let _broker = site.start_broker();
    let (code, _, stderr) = run(&mut site.broker_cmd());
    assert_eq!(code, 1);
    assert_eq!(
        stderr.lines().last().unwrap(),
        format!(
            "broker: error: another broker is serving {}",
            site.socket().display()
        )
    );
    assert_eq!(
        site.current().json,
        r#"{"a":1}"#,
        "the first broker keeps serving"
    );
}
