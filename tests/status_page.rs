//! The broker's read-only status page on `--metrics-listen` (issue 20's
//! "See it"): `/status.json` byte for byte with two real workers, one of
//! which rejects a revision with `worker --schema`; the page in a real
//! headless browser (Debian's `chromium`; tests/prerequisites installs it)
//! showing the followers, their states and the history's diffs, with every
//! name, reason and key that holds markup shown as text; and the page's
//! canary section, rendered from the canary member's sample shape and from
//! a real canary (its followers applied, rejected with the reason, not
//! ready, gone; selected followers marked in the followers table); and
//! diffs without values when `--reader-uid` restricts reading.
mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const ARGS: &str = r#"{"port": 8080, "name": "a"}"#;
/// Revision 2: `/port` changes to a string the strict worker's schema
/// refuses (markup, too), a key with markup is added, `/name` is removed.
const PATCH: &str = r#"{"port": "<script>alert(1)</script>", "<b>": true, "name": null}"#;
const SCHEMA: &str = r#"{"type": "object", "properties": {"port": {"type": "integer"}}}"#;
/// A follower whose name is markup (a client may call itself anything).
const SCRIPT_NAME: &str = "<script>alert('name')</script>";

fn uid() -> u32 {
    // SAFETY: getuid(2) cannot fail.
    unsafe { libc::getuid() }
}

/// A broker with `--metrics-listen`, a plain worker and a strict one
/// (`--schema`), all ready at revision 1.
struct Fleet {
    site: Site,
    schema: PathBuf,
    _broker: Proc,
    port: u16,
    plain: Proc,
    strict: Proc,
}

impl Fleet {
    fn start() -> Self {
        let site = Site::new(ARGS);
        let schema = site.path("worker.schema.json");
        std::fs::write(&schema, SCHEMA).expect("write the schema");
        let broker = site.start_broker_with(&["--metrics-listen", "127.0.0.1:0"]);
        let port = broker.metrics_port();
        let plain = site.start_worker();
        let mut strict = site.worker_cmd(ANY_PORT, false);
        strict.arg("--schema").arg(&schema);
        let strict = site.spawn_worker(strict);
        Self {
            site,
            schema,
            _broker: broker,
            port,
            plain,
            strict,
        }
    }

    /// What the strict worker says when it rejects revision 2.
    fn reason(&self) -> String {
        format!(
            "the document does not satisfy the schema {}: /port: \"<script>alert(1)</script>\" is not of type \"integer\"",
            self.schema.display()
        )
    }

    /// `/status.json`, parsed.
    fn status(&self) -> serde_json::Value {
        let answer = get(self.port, "/status.json");
        assert_eq!(answer.status, 200, "{answer:?}");
        serde_json::from_str(&answer.body).expect("status.json is JSON")
    }

    /// Waits until the page lists `n` followers and every one has reported
    /// on revision 2: applied it, or (the strict worker) rejected it.
    fn wait_for_reports(&self, n: usize) {
        eventually("every follower's report on revision 2", || {
            let status = self.status();
            let followers = status["followers"].as_array()?;
            (status["revision"] == 2
                && followers.len() == n
                && followers
                    .iter()
                    .all(|f| f["applied_revision"] == 2 || f["rejected_revision"] == 2))
            .then_some(())
        });
    }
}

/// The broker's ListFollowers and ListRevisions, to check the page against.
fn listed(socket: &Path) -> (Vec<argsbroker::pb::Follower>, Vec<argsbroker::pb::Revision>) {
    grpc(|| async {
        let mut broker = argsbroker::client::connect(socket).await.expect("connect");
        let followers = broker
            .list_followers(argsbroker::pb::ListFollowersRequest {})
            .await
            .expect("ListFollowers")
            .into_inner()
            .followers;
        let revisions = broker
            .list_revisions(argsbroker::pb::ListRevisionsRequest::default())
            .await
            .expect("ListRevisions")
            .into_inner()
            .revisions;
        (followers, revisions)
    })
}

/// `/status.json` is exactly the broker's revision, its two workers (the
/// plain one ready at revision 2, the strict one behind at 1 with its
/// rejection and reason), `canary: null`, and the history newest first with
/// revision 2's diff against revision 1 by path.
#[test]
fn status_json_has_the_followers_their_states_and_the_history_with_its_diff() {
    let fleet = Fleet::start();
    let revision = fleet.site.patch(PATCH, Some(1)).expect("patch").revision;
    assert_eq!(revision, 2);
    fleet.wait_for_reports(2);

    // Read twice, the page and the broker's own lists: a figure taken from
    // timing (applied_after_micros) settles once every report is in, so the
    // two are compared until they agree (or the time is up, then shown).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (answer, expected) = loop {
        let (answer, expected) = status_and_expected(&fleet);
        if answer.body == expected || std::time::Instant::now() >= deadline {
            break (answer, expected);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(answer.body, expected);
}

/// `/status.json` as served, and what it must be given the broker's own
/// ListFollowers and ListRevisions read right after it.
fn status_and_expected(fleet: &Fleet) -> (HttpResponse, String) {
    let answer = get(fleet.port, "/status.json");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("cache-control"), Some("no-store"));

    let current = fleet.site.current();
    let (followers, revisions) = listed(&fleet.site.socket());
    let [plain, strict] = followers.as_slice() else {
        panic!("two followers: {followers:?}")
    };
    let [first, second] = revisions.as_slice() else {
        panic!("two revisions: {revisions:?}")
    };
    let expected = serde_json::json!({
        "revision": 2,
        "sha256": current.sha256,
        "lineage": current.lineage,
        "backend": format!("file {}", fleet.site.args().display()),
        "backend_connected": true,
        "backend_error": "",
        "canary": null,
        "followers": [
            {
                "name": format!("worker 127.0.0.1:{}", fleet.plain.http_port()),
                "host": "",
                "pid": fleet.plain.pid(),
                "uid": uid(),
                "applied_revision": 2,
                "rejected_revision": 0,
                "rejected_reason": "",
                "connected_since_unix_millis": plain.connected_since_unix_millis,
                "applied_after_micros": plain.applied_after_micros,
                "as_of_unix_millis": 0,
                "stale": false,
                "lag": 0,
                "state": "applied",
                "ready": true,
                "canary": false,
            },
            {
                "name": format!("worker 127.0.0.1:{}", fleet.strict.http_port()),
                "host": "",
                "pid": fleet.strict.pid(),
                "uid": uid(),
                "applied_revision": 1,
                "rejected_revision": 2,
                "rejected_reason": fleet.reason(),
                "connected_since_unix_millis": strict.connected_since_unix_millis,
                "applied_after_micros": null,
                "as_of_unix_millis": 0,
                "stale": false,
                "lag": 1,
                "state": "rejected",
                "ready": false,
                "canary": false,
            },
        ],
        "history": [
            {
                "revision": 2,
                "unix_millis": second.unix_millis,
                "source": "patch",
                "writer_uid": uid(),
                "size_bytes": r#"{"port":"<script>alert(1)</script>","<b>":true}"#.len(),
                "sha256": current.sha256,
                "note": "",
                "diff": {
                    "against": 1,
                    "changes": [
                        {"op": "changed", "path": "/port", "old": "8080", "new": "\"<script>alert(1)</script>\""},
                        {"op": "added", "path": "/<b>", "new": "true"},
                        {"op": "removed", "path": "/name", "old": "\"a\""},
                    ],
                    "omitted": 0,
                    "skipped": null,
                },
            },
            {
                "revision": 1,
                "unix_millis": first.unix_millis,
                "source": "file",
                "writer_uid": null,
                "size_bytes": r#"{"port":8080,"name":"a"}"#.len(),
                "sha256": first.sha256,
                "note": "",
                "diff": null,
            },
        ],
        "history_error": null,
    });
    (answer, expected.to_string())
}

/// `/` is the page (its script and style from this listener), other paths
/// are a 404 and other methods a 405, each with one line; `/metrics` is
/// still the metrics.
#[test]
fn the_listener_serves_the_page_and_refuses_other_paths_and_methods() {
    let site = Site::new(ARGS);
    let broker = site.start_broker_with(&["--metrics-listen", "127.0.0.1:0"]);
    let port = broker.metrics_port();

    let page = get(port, "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        page.header("content-security-policy")
            .is_some_and(|csp| csp.starts_with("default-src 'none'; script-src 'self';")),
        "{page:?}"
    );
    assert!(
        page.body.contains(r#"<script src="page.js"></script>"#),
        "{}",
        page.body
    );
    let script = get(port, "/page.js");
    assert_eq!(
        (script.status, script.header("content-type")),
        (200, Some("text/javascript; charset=utf-8"))
    );
    let style = get(port, "/page.css");
    assert_eq!(
        (style.status, style.header("content-type")),
        (200, Some("text/css; charset=utf-8"))
    );
    let metrics = get(port, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("\nargsbroker_broker_revision 1\n"),
        "{}",
        metrics.body
    );

    let missing = get(port, "/nothing-here");
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (404, "not found\n")
    );
    for (method, path) in [
        ("POST", "/status.json"),
        ("PUT", "/"),
        ("DELETE", "/metrics"),
    ] {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
        )
        .expect("send a request");
        let response = read_response(&mut stream);
        assert!(
            response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{method} {path}: {response}"
        );
        assert!(
            response
                .ends_with("\r\n\r\nmethod not allowed: this listener is read-only (GET only)\n"),
            "{method} {path}: {response}"
        );
    }
}

/// With `--reader-uid` (reading the args is restricted to some users), the
/// page's diffs name the changed paths only: whoever reaches the HTTP
/// address does not read values the socket would refuse them.
#[test]
fn with_readers_restricted_the_diffs_show_paths_without_values() {
    let site = Site::new(ARGS);
    let reader = NOBODY.to_string();
    let broker =
        site.start_broker_with(&["--metrics-listen", "127.0.0.1:0", "--reader-uid", &reader]);
    let port = broker.metrics_port();
    assert_eq!(site.patch(PATCH, Some(1)).expect("patch").revision, 2);
    let answer = get(port, "/status.json");
    assert_eq!(answer.status, 200, "{answer:?}");
    let status: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
    assert_eq!(
        status["history"][0]["diff"],
        serde_json::json!({
            "against": 1,
            "changes": [
                {"op": "changed", "path": "/port", "old": null, "new": null},
                {"op": "added", "path": "/<b>", "new": null},
                {"op": "removed", "path": "/name", "old": null},
            ],
            "omitted": 0,
            "skipped": null,
        })
    );
    assert!(!answer.body.contains("alert(1)"), "{}", answer.body);
}

/// Debian's Chromium, headless, with a profile of its own in `dir`.
fn chromium(dir: &Path, args: &[&str]) -> String {
    let bin = std::env::var("ARGSBROKER_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    if let Err(err) = Command::new(&bin).arg("--version").output() {
        panic!("cannot run {bin}: {err} (install Debian's chromium; tests/prerequisites does)");
    }
    let profile = dir.join("chromium-profile");
    let out = dir.join("chromium.out");
    let mut cmd = Command::new(&bin);
    cmd.args(["--headless", "--disable-gpu", "--no-sandbox"])
        .arg(format!("--user-data-dir={}", profile.display()))
        // Long enough in the page's own (virtual) time for its script to
        // fetch status.json and render it; network waits do not count.
        .arg("--virtual-time-budget=5000")
        .args(args)
        .env("HOME", dir);
    let log = dir.join("chromium.log");
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out).expect("create chromium.out"))
        .stderr(std::fs::File::create(&log).expect("create chromium.log"));
    // A Proc, so that it is killed (by pid) if the test fails first.
    let mut proc = Proc {
        child: cmd.spawn().expect("spawn chromium"),
        log,
    };
    // A browser's first start on a busy machine can take a while.
    let deadline = Instant::now() + Duration::from_secs(120);
    while proc.is_running() {
        assert!(
            Instant::now() < deadline,
            "chromium did not finish: {}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = proc.wait();
    assert!(status.success(), "chromium failed: {}", proc.log());
    std::fs::read_to_string(out).expect("chromium's output")
}

/// The page as the browser rendered it (`--dump-dom`), once its script has
/// loaded the JSON.
fn rendered(dir: &Path, url: &str) -> String {
    let dom = chromium(dir, &["--dump-dom", url]);
    assert!(
        dom.contains(r#"<p id="updated" class="quiet">updated "#),
        "the page never loaded its JSON:\n{dom}"
    );
    dom
}

/// A screenshot of `url` in `dir`, checked to be a PNG of some substance;
/// also copied to `$ARGSBROKER_SCREENSHOT_DIR`, if set, for a person to look at.
fn screenshot(dir: &Path, url: &str, name: &str) {
    let png = dir.join(name);
    chromium(
        dir,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,1000",
            url,
        ],
    );
    let bytes = std::fs::read(&png).expect("the screenshot was written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // A blank 1280x1000 page compresses to a few KiB; tables and text do not.
    assert!(
        bytes.len() > 20_000,
        "a {} byte screenshot: blank?",
        bytes.len()
    );
    if let Ok(keep) = std::env::var("ARGSBROKER_SCREENSHOT_DIR") {
        std::fs::create_dir_all(&keep).expect("create $ARGSBROKER_SCREENSHOT_DIR");
        std::fs::copy(&png, Path::new(&keep).join(name)).expect("copy the screenshot");
    }
}

/// A follower run by this test, named `name`, for as long as it is held.
struct NamedFollower {
    _live: argsbroker::client::Live<argsbroker::client::Snapshot>,
    _runtime: tokio::runtime::Runtime,
}

fn named_follower(socket: &Path, name: &str) -> NamedFollower {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let options = argsbroker::client::FollowOptions {
        name: Some(name.to_owned()),
        validate: None,
    };
    let live = runtime
        .block_on(argsbroker::client::follow_with(
            socket,
            PATIENCE,
            options,
            |snapshot| snapshot,
        ))
        .expect("follow the broker");
    NamedFollower {
        _live: live,
        _runtime: runtime,
    }
}

/// In Chromium the page shows every follower with its state (the strict
/// worker rejected revision 2, with the schema's reason), the history with
/// revision 2's diff, and nothing from a name, reason or key as markup.
#[test]
fn the_page_in_chromium_shows_the_followers_their_states_and_the_diff() {
    let fleet = Fleet::start();
    let _named = named_follower(&fleet.site.socket(), SCRIPT_NAME);
    assert_eq!(fleet.site.patch(PATCH, Some(1)).expect("patch").revision, 2);
    fleet.wait_for_reports(3);
    let dir = fleet.site.dir.path();
    let url = format!("http://127.0.0.1:{}/", fleet.port);
    let dom = rendered(dir, &url);

    let strict_port = fleet.strict.http_port();
    let escaped_reason = fleet.reason().replace('<', "&lt;").replace('>', "&gt;");
    let summary = r#"<p id="followers-summary">2 of 3 followers serve revision 2.</p>"#;
    let plain_row = format!(
        r#"<tr data-state="applied"><td>worker 127.0.0.1:{}</td><td>(this broker)</td><td class="num">{}</td><td class="num">{}</td><td class="num">2</td><td class="num">0</td><td><span class="badge state-applied">applied</span></td><td><span class="badge state-ready">ready</span></td><td></td>"#,
        fleet.plain.http_port(),
        fleet.plain.pid(),
        uid()
    );
    let strict_row = format!(
        r#"<tr data-state="rejected"><td>worker 127.0.0.1:{strict_port}</td><td>(this broker)</td><td class="num">{}</td><td class="num">{}</td><td class="num">1</td><td class="num">1</td><td><span class="badge state-rejected">rejected</span></td><td><span class="badge state-not_ready">not ready</span></td><td><span class="bad">revision 2: <span class="reason">{escaped_reason}</span></span></td>"#,
        fleet.strict.pid(),
        uid()
    );
    let named_row = format!(
        r#"<tr data-state="applied"><td>&lt;script&gt;alert('name')&lt;/script&gt;</td><td>(this broker)</td><td class="num">{}</td>"#,
        std::process::id()
    );
    let diff = concat!(
        r#"<caption class="quiet">against revision 1: 3 changes</caption>"#,
        r#"<thead><tr><th>Change</th><th>Path</th><th>Old</th><th>New</th></tr></thead><tbody>"#,
        r#"<tr class="op-changed"><td>changed</td><td class="mono">/port</td><td class="old"><span class="value mono">8080</span></td><td class="new"><span class="value mono">"&lt;script&gt;alert(1)&lt;/script&gt;"</span></td></tr>"#,
        r#"<tr class="op-added"><td>added</td><td class="mono">/&lt;b&gt;</td><td></td><td class="new"><span class="value mono">true</span></td></tr>"#,
        r#"<tr class="op-removed"><td>removed</td><td class="mono">/name</td><td class="old"><span class="value mono">"a"</span></td><td></td></tr>"#,
        "</tbody>"
    );
    for wanted in [
        r#"<p id="summary">revision <strong id="revision">2</strong> · sha256 "#,
        r#"<section id="canary" hidden="">"#,
        summary,
        &plain_row,
        &strict_row,
        &named_row,
        diff,
        r#"<p class="quiet">The first retained revision: nothing before it to compare with.</p>"#,
    ] {
        assert!(dom.contains(wanted), "no {wanted}\nin the page:\n{dom}");
    }
    // The page's own script is the one script element: no name, reason
    // or key became one.
    assert_eq!(dom.matches("<script").count(), 1, "{dom}");
    assert_eq!(dom.matches("<b>").count(), 0, "{dom}");

    screenshot(dir, &url, "status-page.png");
}

/// A stand-in for the broker's HTTP listener serving the page's own files
/// and a fixed `/status.json` (the canary member's sample shape, which the
/// broker's unit test pins), until the returned guard is dropped.
fn serve_sample(status_json: &'static str) -> (u16, impl Drop) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::spawn(move || {
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => answer_sample(stream, status_json),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(err) => panic!("accept: {err}"),
            }
        }
    });
    struct Stop(
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        Option<std::thread::JoinHandle<()>>,
    );
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(thread) = self.1.take() {
                let _ = thread.join();
            }
        }
    }
    (port, Stop(stop, Some(thread)))
}

fn answer_sample(mut stream: TcpStream, status_json: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(clone) => clone,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // The rest of the head.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let path = request_line.split(' ').nth(1).unwrap_or("");
    let (status, content_type, body) = match path {
        "/" => (
            "200 OK",
            "text/html; charset=utf-8",
            include_str!("../broker/page/index.html"),
        ),
        "/page.js" => (
            "200 OK",
            "text/javascript; charset=utf-8",
            include_str!("../broker/page/page.js"),
        ),
        "/page.css" => (
            "200 OK",
            "text/css; charset=utf-8",
            include_str!("../broker/page/page.css"),
        ),
        "/status.json" => ("200 OK", "application/json", status_json),
        _ => ("404 Not Found", "text/plain", "not found\n"),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// With a canary running (the canary member's sample), the page shows its
/// candidate over the stable revision, the selector, progress, bake time
/// left and each selected follower's state, markup shown as text.
#[test]
fn the_page_in_chromium_renders_a_running_canary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, _server) = serve_sample(include_str!("../broker/page/canary-sample.json"));
    let url = format!("http://127.0.0.1:{port}/");
    let dom = rendered(dir.path(), &url);
    for wanted in [
        r#"<section id="canary">"#,
        concat!(
            r#"<p id="canary-summary">candidate <strong id="candidate-revision">5</strong> over stable <strong>4</strong>"#,
            r#" · selector <code>25%</code> · <span id="canary-progress">1 of 4 selected followers applied it</span>"#,
            r#" · <span id="canary-bake">bake time left 12.5 s</span> · started 2023-11-14T22:13:20.000Z</p>"#
        ),
        r#"<tr data-state="applied"><td>worker 127.0.0.1:9880</td><td>(this broker)</td><td class="num">101</td><td><span class="badge state-applied">applied</span></td><td></td></tr>"#,
        r#"<tr data-state="rejected"><td>worker &lt;b&gt;2&lt;/b&gt;</td><td>web-2</td><td class="num">102</td><td><span class="badge state-rejected">rejected</span></td><td>/port: "&lt;script&gt;" is not of type "integer"</td></tr>"#,
        r#"<tr data-state="not_ready"><td>worker 3</td><td>(this broker)</td><td class="num">103</td><td><span class="badge state-not_ready">not ready</span></td><td></td></tr>"#,
        r#"<tr data-state="gone"><td>worker 4</td><td>(this broker)</td><td class="num">104</td><td><span class="badge state-gone">gone</span></td><td></td></tr>"#,
    ] {
        assert!(dom.contains(wanted), "no {wanted}\nin the page:\n{dom}");
    }
    assert_eq!(dom.matches("<script").count(), 1, "{dom}");
    screenshot(dir.path(), &url, "status-page-canary.png");
}

/// A follower that names itself, says it serves revision `applied` and
/// then never reports again (a follower still busy with the candidate),
/// for as long as it is held.
struct SilentFollower {
    _stream: tonic::Streaming<argsbroker::pb::Args>,
    runtime: tokio::runtime::Runtime,
}

impl Drop for SilentFollower {
    fn drop(&mut self) {
        // Closes its connection, so the broker sees it leave.
        let runtime = std::mem::replace(
            &mut self.runtime,
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a runtime"),
        );
        runtime.shutdown_background();
    }
}

fn silent_follower(socket: &Path, name: &str, applied: u64, lineage: &str) -> SilentFollower {
    use tokio_stream::StreamExt;
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let hello = argsbroker::pb::FollowRequest {
        name: name.to_owned(),
        applied_revision: applied,
        applied_lineage: lineage.to_owned(),
        ..Default::default()
    };
    let stream = runtime.block_on(async {
        let mut broker = argsbroker::client::connect(socket).await.expect("connect");
        let reports = tokio_stream::iter([hello]).chain(tokio_stream::pending());
        broker.follow(reports).await.expect("Follow").into_inner()
    });
    SilentFollower {
        _stream: stream,
        runtime,
    }
}

/// A real canary (`broker patch --canary name=canary-*`) over five
/// followers: one applies the candidate, one rejects it (`--schema`, with
/// the reason), one never reports it (not ready), one leaves after applying
/// it (gone), and `other` is not selected. `/status.json` has each with its
/// state, marks the selected followers, and the history notes the canary;
/// Chromium shows the same, and a screenshot is taken.
#[test]
fn a_real_canary_in_status_json_and_in_chromium_with_each_followers_state() {
    let site = Site::new(ARGS);
    let schema = site.path("worker.schema.json");
    std::fs::write(&schema, SCHEMA).expect("write the schema");
    let broker = site.start_broker_with(&["--metrics-listen", "127.0.0.1:0"]);
    let port = broker.metrics_port();
    let named = |name: &str, extra: &[&str]| {
        let mut cmd = site.worker_cmd(ANY_PORT, false);
        cmd.arg("--name").arg(name).args(extra);
        site.spawn_worker(cmd)
    };
    let applied = named("canary-applied", &[]);
    let strict = named("canary-rejected", &["--schema", schema.to_str().unwrap()]);
    let mut leaving = named("canary-gone", &[]);
    let other = named("other", &[]);
    let lineage = site.current().lineage;
    let _silent = silent_follower(&site.socket(), "canary-slow", 1, &lineage);
    let status = || {
        let answer = get(port, "/status.json");
        assert_eq!(answer.status, 200, "{answer:?}");
        serde_json::from_str::<serde_json::Value>(&answer.body).expect("status.json is JSON")
    };
    eventually("the five followers listed", || {
        (status()["followers"].as_array()?.len() == 5).then_some(())
    });

    let mut cli = Command::new(BROKER);
    cli.args(["patch", "--socket"])
        .arg(site.socket())
        .args(["--canary", "name=canary-*", PATCH]);
    let (code, _, err) = run(&mut cli);
    assert_eq!(code, 0, "{err}");
    let states = |status: &serde_json::Value| -> Option<Vec<(String, String)>> {
        let mut states: Vec<(String, String)> = status["canary"]["followers"]
            .as_array()?
            .iter()
            .map(|f| {
                let name = f["name"].as_str().unwrap_or_default().to_owned();
                (name, f["state"].as_str().unwrap_or_default().to_owned())
            })
            .collect();
        states.sort();
        Some(states)
    };
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    eventually("the gone-to-be follower to apply the candidate", || {
        let states = states(&status())?;
        states
            .contains(&pair("canary-gone", "applied"))
            .then_some(())
    });
    assert!(leaving.stop().success());
    let wanted = vec![
        pair("canary-applied", "applied"),
        pair("canary-gone", "gone"),
        pair("canary-rejected", "rejected"),
        pair("canary-slow", "not_ready"),
    ];
    let status = eventually("every selected follower's state", || {
        let status = status();
        (states(&status)? == wanted).then_some(status)
    });

    let reason = format!(
        "the document does not satisfy the schema {}: /port: \"<script>alert(1)</script>\" is not of type \"integer\"",
        schema.display()
    );
    let canary = &status["canary"];
    assert_eq!(
        (
            &canary["stable_revision"],
            &canary["candidate_revision"],
            &canary["selector"],
            &canary["bake_ms"],
            &canary["bake_millis_left"],
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!(2),
            &serde_json::json!("name=canary-*"),
            &serde_json::json!(0),
            &serde_json::Value::Null,
        )
    );
    let row = |name: &str| {
        canary["followers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        row("canary-rejected"),
        serde_json::json!({"name": "canary-rejected", "host": "", "pid": strict.pid(), "state": "rejected", "reason": reason})
    );
    assert_eq!(row("canary-applied")["pid"], applied.pid());
    assert_eq!(row("canary-gone")["pid"], leaving.pid());
    assert_eq!(row("canary-slow")["pid"], std::process::id());
    // The followers table marks the selected ones; `other` keeps revision 1.
    let marked: BTreeMap<String, (bool, u64)> = status["followers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let name = f["name"].as_str().unwrap().to_owned();
            let mark = (f["canary"] == true, f["applied_revision"].as_u64().unwrap());
            (name, mark)
        })
        .collect();
    assert_eq!(
        marked,
        BTreeMap::from([
            ("canary-applied".to_owned(), (true, 2)),
            ("canary-rejected".to_owned(), (true, 1)),
            ("canary-slow".to_owned(), (true, 1)),
            ("other".to_owned(), (false, 1)),
        ])
    );
    assert_eq!(status["revision"], 1, "the stable revision");
    assert_eq!(status["history"][0]["revision"], 2);
    assert_eq!(status["history"][0]["note"], "canary to name=canary-*");
    // The candidate's diff against the stable revision.
    assert_eq!(status["history"][0]["diff"]["against"], 1);
    assert_eq!(status["history"][0]["diff"]["changes"][0]["path"], "/port");

    let dir = site.dir.path();
    let url = format!("http://127.0.0.1:{port}/");
    let dom = rendered(dir, &url);
    let escaped_reason = reason.replace('<', "&lt;").replace('>', "&gt;");
    for wanted in [
        r#"<section id="canary">"#.to_owned(),
        concat!(
            r#"<p id="canary-summary">candidate <strong id="candidate-revision">2</strong> over stable <strong>1</strong>"#,
            r#" · selector <code>name=canary-*</code> · <span id="canary-progress">1 of 4 selected followers applied it</span>"#,
            r#" · <span id="canary-bake">no bake time: promote or abort by hand</span> · started "#
        )
        .to_owned(),
        format!(
            r#"<tr data-state="applied"><td>canary-applied</td><td>(this broker)</td><td class="num">{}</td><td><span class="badge state-applied">applied</span></td><td></td></tr>"#,
            applied.pid()
        ),
        format!(
            r#"<tr data-state="rejected"><td>canary-rejected</td><td>(this broker)</td><td class="num">{}</td><td><span class="badge state-rejected">rejected</span></td><td>{escaped_reason}</td></tr>"#,
            strict.pid()
        ),
        format!(
            r#"<tr data-state="not_ready"><td>canary-slow</td><td>(this broker)</td><td class="num">{}</td><td><span class="badge state-not_ready">not ready</span></td><td></td></tr>"#,
            std::process::id()
        ),
        format!(
            r#"<tr data-state="gone"><td>canary-gone</td><td>(this broker)</td><td class="num">{}</td><td><span class="badge state-gone">gone</span></td><td></td></tr>"#,
            leaving.pid()
        ),
        // In the followers table: a canary badge on the selected ones only.
        format!(
            r#"<tr data-state="applied"><td>canary-applied <span class="badge state-canary">canary</span></td><td>(this broker)</td><td class="num">{}</td>"#,
            applied.pid()
        ),
        format!(
            r#"<tr data-state="applied"><td>other</td><td>(this broker)</td><td class="num">{}</td>"#,
            other.pid()
        ),
        r#"<span class="note">canary to name=canary-*</span>"#.to_owned(),
    ] {
        assert!(dom.contains(&wanted), "no {wanted}\nin the page:\n{dom}");
    }
    assert_eq!(dom.matches("<script").count(), 1, "{dom}");
    screenshot(dir, &url, "status-page-real-canary.png");
}
