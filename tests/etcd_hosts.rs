//! Many hosts, end to end: a real 3-member etcd cluster, and three "hosts",
//! each a real `broker --etcd-endpoints ... --etcd-key ...` with its own
//! socket and state directory, and a real `worker` following it. What one
//! host writes, every host's workers serve; compare-and-set across hosts
//! acknowledges one write per revision; losing etcd's quorum stops writes
//! quickly and loudly but never reads; a broker restarted without etcd
//! serves its last-known-good copy; a compaction while a host is cut off,
//! and etcd rebuilt from scratch, both end with every worker serving etcd's
//! document.
mod common;

use argsbroker::pb;
use common::etcd::Cluster;
use common::*;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const SEED: &str = r#"{"model":"a","n":1}"#;

/// How long a write may be retried while etcd elects a new leader.
const ELECTION: Duration = Duration::from_secs(10);

/// A reply's document as text.
/// `etcd-` and the 32 hex digits of the id a broker made with the key.
fn is_random_lineage(lineage: &str) -> bool {
    lineage
        .strip_prefix("etcd-")
        .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn text(json: &[u8]) -> &str {
    std::str::from_utf8(json).expect("the document is UTF-8")
}

/// Where the hosts' directories go: /dev/shm where there is one.
fn scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    match shm.is_dir() {
        true => shm.to_path_buf(),
        false => std::env::temp_dir(),
    }
}

/// One host: a broker on etcd with its own socket and state directory, and
/// one worker following it.
struct Host {
    site: Site,
    endpoints: String,
    key: String,
    broker: Option<Proc>,
    worker: Option<Proc>,
    /// The worker's HTTP port, once it is started (the kernel picks it).
    port: u16,
}

impl Host {
    /// A host whose broker reaches etcd at `endpoints` (comma-separated).
    fn new(endpoints: &str, key: &str) -> Self {
        Self {
            site: Site::new_in(&scratch(), SEED),
            endpoints: endpoints.to_owned(),
            key: key.to_owned(),
            broker: None,
            worker: None,
            port: 0,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.site.path("state")
    }

    fn socket(&self) -> PathBuf {
        self.site.socket()
    }

    /// `broker --args FILE --socket S --state-dir D --etcd-endpoints E --etcd-key K`.
    fn broker_cmd(&self) -> Command {
        let mut cmd = Command::new(BROKER);
        cmd.arg("--args")
            .arg(self.site.args())
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["--etcd-endpoints", &self.endpoints])
            .args(["--etcd-key", &self.key]);
        cmd
    }

    /// Starts the broker (waiting until it answers) and then the worker.
    fn start(mut self) -> Self {
        self.start_broker();
        let worker = self.site.start_worker();
        self.port = worker.http_port();
        self.worker = Some(worker);
        self
    }

    fn start_broker(&mut self) {
        let cmd = self.broker_cmd();
        self.broker = Some(self.site.spawn_broker(cmd));
    }

    fn broker_log(&self) -> String {
        self.broker.as_ref().map(Proc::log).unwrap_or_default()
    }

    fn worker_log(&self) -> String {
        self.worker.as_ref().map(Proc::log).unwrap_or_default()
    }

    /// The worker's `GET /args`: the revision header and the body.
    fn served(&self) -> (u64, String) {
        let answer = get(self.port, "/args");
        assert_eq!(answer.status, 200, "{answer:?}");
        let revision = answer
            .header("x-args-revision")
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no x-args-revision in {answer:?}"));
        (revision, answer.body)
    }

    /// The worker's `/readyz`, parsed.
    fn readyz(&self) -> serde_json::Value {
        let answer = get(self.port, "/readyz");
        serde_json::from_str(&answer.body)
            .unwrap_or_else(|err| panic!("/readyz is not JSON ({err}): {answer:?}"))
    }
}

/// Three hosts on every member of `cluster`, following the key
/// `/argsbroker/NAME`; the first creates it from its args file.
fn three_hosts(cluster: &Cluster, name: &str) -> Vec<Host> {
    let key = format!("/argsbroker/{name}");
    (0..3)
        .map(|_| Host::new(&cluster.endpoints_csv(), &key).start())
        .collect()
}

/// PatchArgs with the whole status on failure (its metadata included).
fn patch_status(
    socket: &Path,
    patch: &str,
    expected: Option<u64>,
) -> Result<pb::Args, tonic::Status> {
    grpc(|| async {
        argsbroker::client::connect(socket)
            .await
            .expect("connect")
            .patch_args(pb::PatchArgsRequest {
                merge_patch: patch.to_owned(),
                expected_revision: expected,
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    })
}

/// A patch through `host` that succeeds, retried only on UNAVAILABLE (a
/// leader election) and for at most `ELECTION`.
fn patch_retrying(host: &Host, patch: &str) -> pb::Args {
    let deadline = Instant::now() + ELECTION;
    loop {
        match patch_args(&host.socket(), patch, None) {
            Ok(args) => return args,
            Err((tonic::Code::Unavailable, message)) if Instant::now() < deadline => {
                eprintln!("retrying {patch} on UNAVAILABLE: {message}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(other) => panic!("the patch {patch} failed: {other:?}\n{}", host.broker_log()),
        }
    }
}

/// Waits until every host's broker and worker serve `revision` with the
/// document `json`, and returns the brokers' replies.
fn converge(hosts: &[Host], revision: u64, json: &str) -> Vec<pb::Args> {
    let deadline = Instant::now() + PATIENCE;
    for (i, host) in hosts.iter().enumerate() {
        while host.served() != (revision, args_body(json)) {
            assert!(
                Instant::now() < deadline,
                "host {i}'s worker serves {:?}, not revision {revision} {json}\nbroker:\n{}\nworker:\n{}",
                host.served(),
                host.broker_log(),
                host.worker_log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    hosts
        .iter()
        .map(|host| {
            let args = host.site.current();
            assert_eq!((args.revision, text(&args.json)), (revision, json));
            args
        })
        .collect()
}

/// The grpc health of `argsbroker.v1.ArgsBroker` on the broker's socket.
fn health(socket: &Path) -> tonic_health::pb::health_check_response::ServingStatus {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    grpc(|| async {
        HealthClient::new(channel_over(stream).await)
            .check(HealthCheckRequest {
                service: "argsbroker.v1.ArgsBroker".to_owned(),
            })
            .await
            .expect("a health check")
            .into_inner()
            .status()
    })
}

/// `broker status --socket S`: exit code and stdout.
fn status(host: &Host) -> (i32, String) {
    let (code, out, err) = run(Command::new(BROKER)
        .arg("status")
        .arg("--socket")
        .arg(host.socket()));
    assert!(err.is_empty(), "broker status wrote to stderr: {err}");
    (code, out)
}

/// `broker status --json` on `host`.
fn status_json(host: &Host) -> serde_json::Value {
    let (code, out, err) = run(Command::new(BROKER)
        .args(["status", "--json", "--socket"])
        .arg(host.socket()));
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).expect("JSON")
}

/// Waits until every host's `broker status` lists every host's worker at
/// `revision`: a broker shares its followers through etcd when they
/// change, and the other brokers learn of it a moment later, so one read
/// right after a write may still show an older list.
fn every_host_lists_every_worker_at(hosts: &[Host], revision: u64) {
    for (h, host) in hosts.iter().enumerate() {
        eventually(
            &format!(
                "host {h} to list {} workers at revision {revision}",
                hosts.len()
            ),
            || {
                let followers = status_json(host)["followers"].as_array()?.clone();
                (followers.len() == hosts.len()
                    && followers
                        .iter()
                        .all(|f| f["applied_revision"] == revision && f["stale"] == false))
                .then_some(())
            },
        );
    }
}

#[test]
fn a_patch_through_one_host_reaches_every_hosts_workers_within_a_second() {
    let cluster = Cluster::start(3);
    let hosts = three_hosts(&cluster, "reaches_every_host");
    let before = hosts[0].site.current();

    let patched = hosts[0]
        .site
        .patch(r#"{"n":2}"#, None)
        .expect("a patch through host A");
    let returned = Instant::now();
    let json = r#"{"model":"a","n":2}"#;
    assert_eq!(patched.json, json);
    assert!(patched.revision > before.revision);

    // Every worker, B's and C's included, serves it within a second.
    let mut pending: Vec<usize> = vec![0, 1, 2];
    let mut took = HashMap::new();
    while !pending.is_empty() {
        pending.retain(|&i| {
            if hosts[i].served() == (patched.revision, args_body(json)) {
                took.insert(i, returned.elapsed());
                return false;
            }
            true
        });
        assert!(
            returned.elapsed() < PATIENCE,
            "workers {pending:?} never served revision {}",
            patched.revision
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    for (i, took) in &took {
        assert!(
            *took < Duration::from_secs(1),
            "host {i}'s worker served the patch {took:?} after it returned"
        );
    }

    // Every broker answers GetArgs alike: etcd's revision, one lineage.
    let replies: Vec<pb::Args> = hosts.iter().map(|h| h.site.current()).collect();
    for reply in &replies {
        assert_eq!(reply.revision, patched.revision);
        assert_eq!(reply.json, json);
        assert_eq!(reply.sha256, patched.sha256);
        assert_eq!(reply.lineage, patched.lineage);
    }
    assert!(
        patched.lineage.starts_with("etcd-"),
        "lineage {:?}",
        patched.lineage
    );
    assert_eq!(
        patched.lineage, before.lineage,
        "a patch is not a new lineage"
    );
}

#[test]
fn compare_and_set_from_three_hosts_acknowledges_one_write_per_revision_and_loses_none() {
    let cluster = Cluster::start(3);
    let hosts = three_hosts(&cluster, "compare_and_set");
    let sockets: Vec<PathBuf> = hosts.iter().map(Host::socket).collect();
    let start = Arc::new(Barrier::new(3));

    let writers: Vec<_> = sockets
        .iter()
        .enumerate()
        .map(|(h, socket)| {
            let socket = socket.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut acknowledged = Vec::new();
                let mut conflicts = 0;
                for i in 0..15 {
                    let key = format!("h{h}_{i}");
                    let read = get_args(&socket).revision;
                    match patch_status(&socket, &format!(r#"{{"{key}":{i}}}"#), Some(read)) {
                        Ok(args) => {
                            assert!(args.revision > read, "{key}: {} after {read}", args.revision);
                            acknowledged.push((args.revision, key));
                        }
                        Err(status) => {
                            assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
                            let current: u64 = status
                                .metadata()
                                .get("argsbroker-current-revision")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse().ok())
                                .unwrap_or_else(|| panic!("no current revision in {status:?}"));
                            assert_ne!(current, read);
                            assert_eq!(
                                status.message(),
                                format!(
                                    "revision conflict: expected revision {read}, but the current revision is {current}"
                                )
                            );
                            conflicts += 1;
                        }
                    }
                }
                (acknowledged, conflicts)
            })
        })
        .collect();
    let mut revisions = BTreeSet::new();
    let mut keys = Vec::new();
    let mut conflicts = 0;
    for writer in writers {
        let (acknowledged, lost) = writer.join().expect("a writer thread");
        conflicts += lost;
        for (revision, key) in acknowledged {
            assert!(
                revisions.insert(revision),
                "two acknowledged writes report revision {revision}"
            );
            keys.push(key);
        }
    }
    eprintln!("{} writes acknowledged, {conflicts} conflicts", keys.len());
    assert!(!keys.is_empty());
    // Three hosts racing 15 times each: they did meet.
    assert!(conflicts > 0, "no write lost a race");

    // Every acknowledged write is in the final document, on every host.
    let last = *revisions.last().expect("a revision");
    let json = text(&hosts[0].site.current().json).to_owned();
    let replies = converge(&hosts, last, &json);
    let document: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text(&replies[0].json)).expect("JSON");
    for key in &keys {
        assert!(document.contains_key(key), "{key} was lost: {json}");
    }
    // And nothing that was refused made it in.
    assert_eq!(document.len(), 2 + keys.len(), "{json}");
}

#[test]
fn blind_patches_from_three_hosts_are_all_acknowledged_and_all_kept() {
    let cluster = Cluster::start(3);
    let hosts = three_hosts(&cluster, "blind_patches");
    let start = Arc::new(Barrier::new(3));
    let writers: Vec<_> = hosts
        .iter()
        .enumerate()
        .map(|(h, host)| {
            let socket = host.socket();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                (0..10)
                    .map(|i| {
                        let key = format!("h{h}_{i}");
                        let args = patch_args(&socket, &format!(r#"{{"{key}":{i}}}"#), None)
                            .unwrap_or_else(|err| panic!("{key}: {err:?}"));
                        (args.revision, key)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut revisions = BTreeSet::new();
    let mut keys = Vec::new();
    for writer in writers {
        for (revision, key) in writer.join().expect("a writer thread") {
            assert!(
                revisions.insert(revision),
                "two acknowledged writes report revision {revision}"
            );
            keys.push(key);
        }
    }
    assert_eq!(keys.len(), 30);
    let last = *revisions.last().expect("a revision");
    let json = text(&hosts[0].site.current().json).to_owned();
    let replies = converge(&hosts, last, &json);
    let document: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text(&replies[0].json)).expect("JSON");
    for key in &keys {
        assert!(document.contains_key(key), "{key} was lost: {json}");
    }
    assert_eq!(document.len(), 2 + 30, "{json}");
}

#[test]
fn without_an_etcd_quorum_writes_fail_fast_reads_go_on_and_every_host_recovers() {
    let mut cluster = Cluster::start(3);
    let hosts = three_hosts(&cluster, "quorum");
    let csv = cluster.endpoints_csv();
    let key = "/argsbroker/quorum";

    // One member down: the other two are a quorum; once they have a leader
    // (if the killed member led), every host's writes succeed, every time.
    cluster.kill(0);
    let mut last = patch_retrying(&hosts[0], r#"{"one_down":true}"#);
    for i in 0..5 {
        for (h, host) in hosts.iter().enumerate() {
            last = host
                .site
                .patch(&format!(r#"{{"one_down_{h}":{i}}}"#), None)
                .unwrap_or_else(|err| {
                    panic!("write {i} through host {h} with one member down: {err:?}")
                });
        }
    }
    let json = text(&last.json).to_owned();
    converge(&hosts, last.revision, &json);
    // What the hosts shared through etcd before it loses its quorum is
    // what they list while it is gone.
    every_host_lists_every_worker_at(&hosts, last.revision);

    // Two down: no quorum. A write fails with UNAVAILABLE, quickly, naming etcd.
    cluster.kill(1);
    let started = Instant::now();
    let refused = hosts[1].site.patch(r#"{"no_quorum":true}"#, None);
    let took = started.elapsed();
    let (code, message) = refused.expect_err("a write without a quorum");
    eprintln!("refused after {took:?}: {message}");
    assert_eq!(code, tonic::Code::Unavailable, "{message}");
    assert!(took < Duration::from_secs(10), "the refusal took {took:?}");
    assert!(
        message.starts_with(&format!("etcd at {csv} ")),
        "the message does not name the endpoints: {message}"
    );
    assert!(
        message.ends_with("; nothing was changed")
            || message.ends_with("; it may still be committed: read the args to see"),
        "{message}"
    );

    // Reads go on: every broker and worker serves the last revision...
    for host in &hosts {
        assert_eq!(host.site.current().revision, last.revision);
        assert_eq!(host.served(), (last.revision, args_body(&json)));
    }
    // ...and every host says etcd is out of reach.
    for (h, host) in hosts.iter().enumerate() {
        eventually(
            &format!("host {h}'s /readyz to show the backend lost"),
            || (host.readyz()["backend_connected"] == false).then_some(()),
        );
        assert_eq!(host.served(), (last.revision, args_body(&json)));
        assert_eq!(
            health(&host.socket()),
            tonic_health::pb::health_check_response::ServingStatus::NotServing
        );
        // The revision, the backend, then the followers: this host's
        // worker and, as last shared through etcd, the other two hosts',
        // which cannot be refreshed now: marked, never shown as current.
        let out = eventually(
            &format!("host {h} to mark the other hosts' lists stale"),
            || {
                let (code, out) = status(host);
                assert_eq!(code, 0, "{out}");
                (out.matches(", not refreshed since)").count() == 2).then_some(out)
            },
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 6, "{out}");
        assert_eq!(lines[2], "followers 3", "{out}");
        assert!(
            !lines[3].contains(" on ") && !lines[3].contains("STALE"),
            "{out}"
        );
        for line in &lines[4..] {
            assert!(
                line.contains(" on ") && line.contains(" (STALE: as of "),
                "{out}"
            );
        }
        let json = status_json(host);
        let followers = json["followers"].as_array().expect("followers");
        assert_eq!(followers[0]["stale"], false, "{json}");
        assert_eq!(followers[0]["as_of"], serde_json::Value::Null, "{json}");
        for f in &followers[1..] {
            assert_eq!(f["stale"], true, "{json}");
            assert!(
                f["as_of"].as_str().is_some_and(|t| t.ends_with('Z')),
                "{json}"
            );
        }
        assert_eq!(
            lines[0],
            format!(
                "revision {} sha256 {} lineage {}",
                last.revision,
                &last.sha256[..12],
                last.lineage
            )
        );
        let backend = format!("backend etcd {csv} key {key}: OUT OF REACH since ");
        assert!(lines[1].starts_with(&backend), "{out}");
        let tail = format!(
            "; serving revision {} from memory, writes fail",
            last.revision
        );
        assert!(lines[1].ends_with(&tail), "{out}");
    }

    // Both back: every host is in touch again, takes a write, and converges.
    cluster.restart(0);
    cluster.restart(1);
    for (h, host) in hosts.iter().enumerate() {
        eventually(
            &format!("host {h}'s /readyz to show the backend back"),
            || (host.readyz()["backend_connected"] == true).then_some(()),
        );
        assert_eq!(
            health(&host.socket()),
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
        let (_, out) = status(host);
        assert!(out.contains(": connected since "), "{out}");
        eventually(&format!("host {h}'s other lists current again"), || {
            let (_, out) = status(host);
            (out.lines().nth(2) == Some("followers 3") && !out.contains("STALE")).then_some(())
        });
    }
    let after = patch_retrying(&hosts[2], r#"{"back":true}"#);
    assert!(after.revision > last.revision);
    let replies = converge(&hosts, after.revision, text(&after.json));
    assert!(replies.iter().all(|r| r.lineage == last.lineage));
}

#[test]
fn a_broker_started_without_etcd_serves_its_last_known_good_copy_or_exits_naming_what_it_lacks() {
    let mut cluster = Cluster::start(3);
    let csv = cluster.endpoints_csv();
    let mut host = Host::new(&csv, "/argsbroker/last_known_good").start();
    let patched = host
        .site
        .patch(r#"{"n":7}"#, None)
        .expect("a patch while etcd is up");
    // The copy in the state directory reaches that revision.
    let copy = host.state_dir().join("etcd-last-known-good");
    eventually("the last-known-good copy of the patch", || {
        let saved = std::fs::read_to_string(&copy).ok()?;
        saved
            .ends_with(text(&patched.json))
            .then_some(())
            .filter(|()| saved.contains(&format!("\"revision\":{}", patched.revision)))
    });
    assert_eq!(host.broker.as_mut().expect("broker").stop().code(), Some(0));
    for i in 0..3 {
        cluster.kill(i);
    }

    // Started again on the same state directory: it serves the copy at once.
    host.start_broker();
    let served = host.site.current();
    assert_eq!(
        (
            served.revision,
            text(&served.json),
            served.sha256.as_str(),
            served.lineage.as_str()
        ),
        (
            patched.revision,
            text(&patched.json),
            patched.sha256.as_str(),
            patched.lineage.as_str()
        )
    );
    let broker = host.broker.as_ref().expect("broker");
    let line = broker.log_line("serving the last-known-good copy");
    assert!(
        line.contains("etcd is out of reach; serving the last-known-good copy until it answers"),
        "{line}"
    );
    assert!(
        line.contains(&format!("revision={}", patched.revision)),
        "{line}"
    );
    assert_eq!(
        health(&host.socket()),
        tonic_health::pb::health_check_response::ServingStatus::NotServing
    );
    let started = Instant::now();
    let refused = host.site.patch(r#"{"n":8}"#, None);
    let took = started.elapsed();
    let (code, message) = refused.expect_err("a write without etcd");
    assert_eq!(code, tonic::Code::Unavailable, "{message}");
    assert!(took < Duration::from_secs(10), "the refusal took {took:?}");
    eprintln!("refused after {took:?}: {message}");
    assert!(message.starts_with(&format!("etcd at {csv} ")), "{message}");
    // The worker (still running) serves it too.
    assert_eq!(
        host.served(),
        (patched.revision, args_body(text(&patched.json)))
    );

    // No copy and no etcd: exit 1 after --startup-timeout, in one line.
    let bare = Host::new(&csv, "/argsbroker/last_known_good");
    let mut cmd = bare.broker_cmd();
    cmd.args(["--startup-timeout", "2"]);
    let started = Instant::now();
    let out = common::etcd::run_bounded(cmd, Duration::from_secs(30));
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(took >= Duration::from_secs(2), "it gave up after {took:?}");
    assert!(took < Duration::from_secs(15), "it gave up after {took:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    // Every member refuses connections, so the reason is tonic's.
    assert_eq!(
        lines[0],
        format!(
            "broker: error: etcd at {csv} is out of reach (tcp connect error) after \
             --startup-timeout 2s, and the state directory {} holds no last-known-good copy to serve",
            bare.state_dir().display()
        )
    );
}

#[test]
fn a_host_cut_off_during_a_compaction_catches_up_in_the_same_lineage() {
    let mut cluster = Cluster::start(3);
    let all = cluster.endpoints();
    let key = "/argsbroker/compaction";
    let a = Host::new(&cluster.endpoints_csv(), key).start();
    let b = Host::new(&cluster.endpoints_csv(), key).start();
    // Host C reaches etcd through member 2 only.
    let c = Host::new(&all[2], key).start();
    let lineage = a.site.current().lineage;
    let (c_revision, _) = c.served();
    assert_eq!(c.readyz()["lineage"], lineage.as_str());

    cluster.kill(2);
    eventually("host C's /readyz to show the backend lost", || {
        (c.readyz()["backend_connected"] == false).then_some(())
    });
    let mut last = a.site.current();
    for step in 1..=5 {
        last = patch_retrying(&a, &format!(r#"{{"step":{step}}}"#));
    }
    assert_eq!(c.served().0, c_revision, "host C was not cut off");
    let out = cluster.etcdctl(
        &all[..1],
        &["compact", &last.revision.to_string()],
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "etcdctl compact: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("compacted revision {}\n", last.revision)
    );

    cluster.restart(2);
    let json = r#"{"model":"a","n":1,"step":5}"#;
    assert_eq!(last.json, json);
    converge(&[a, b], last.revision, json);
    eventually("host C's worker to serve the latest revision", || {
        (c.served() == (last.revision, args_body(json))).then_some(())
    });
    // The broker publishes what it read before its watch is up and it says
    // it is connected again: the worker hears of the two in that order.
    let ready = eventually("host C's worker to see its broker connected again", || {
        let ready = c.readyz();
        (ready["backend_connected"] == true).then_some(ready)
    });
    assert_eq!(ready["lineage"], lineage.as_str());
    let reply = c.site.current();
    assert_eq!(
        (reply.revision, reply.lineage.as_str()),
        (last.revision, lineage.as_str())
    );
    for (what, log) in [("broker", c.broker_log()), ("worker", c.worker_log())] {
        assert!(
            !log.contains("new lineage"),
            "host C's {what} saw a new lineage:\n{log}"
        );
    }
}

#[test]
fn etcd_rebuilt_from_scratch_and_seeded_again_is_a_new_lineage_on_every_host() {
    rebuilt_is_a_new_lineage(false);
}

/// With the same cluster token the cluster id is the same again, and the
/// key's create revision may be too: the random id each broker writes
/// beside the key when it makes it still tells the two apart.
#[test]
fn etcd_rebuilt_with_the_same_cluster_token_is_a_new_lineage_too() {
    rebuilt_is_a_new_lineage(true);
}

fn rebuilt_is_a_new_lineage(same_token: bool) {
    let mut cluster = Cluster::start(3);
    let hosts = three_hosts(&cluster, "rebuilt");
    let old = hosts[0].site.patch(r#"{"n":2}"#, None).expect("a patch");
    converge(&hosts, old.revision, text(&old.json));
    assert!(is_random_lineage(&old.lineage), "{}", old.lineage);
    // Each revision's writer and source are in etcd beside it: another
    // host's history shows them (the seed was the args file).
    let (code, out, err) = run(Command::new(BROKER)
        .arg("history")
        .arg("--socket")
        .arg(hosts[1].socket()));
    assert_eq!(code, 0, "broker history: {err}");
    let rows: Vec<(String, String, String)> = out
        .lines()
        .skip(1)
        .map(|l| {
            let r: Vec<&str> = l.split_whitespace().collect();
            (r[0].to_owned(), r[4].to_owned(), r[5].to_owned())
        })
        .collect();
    let me = unsafe { libc::getuid() }.to_string();
    assert_eq!(
        rows.last(),
        Some(&(old.revision.to_string(), me, "patch".to_owned())),
        "{out}"
    );
    assert_eq!(rows[0].2, "file", "{out}");

    cluster.wipe_and_start_again(same_token);
    // `broker set` through host B makes the key again in the new cluster.
    let fresh = r#"{"model":"b","rebuilt":true}"#;
    let file = hosts[1].site.path("fresh.json");
    std::fs::write(&file, fresh).expect("write the new document");
    let deadline = Instant::now() + ELECTION;
    let (code, out, err) = loop {
        let (code, out, err) = run(Command::new(BROKER)
            .arg("set")
            .arg("--socket")
            .arg(hosts[1].socket())
            .arg(&file));
        if code == 0 || Instant::now() >= deadline || !err.contains("out of reach") {
            break (code, out, err);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, 0, "broker set: {err}\n{}", hosts[1].broker_log());
    let made = hosts[1].site.current();
    assert_eq!(out, format!("revision {}\n", made.revision));
    assert_eq!(made.json, fresh);
    assert!(is_random_lineage(&made.lineage), "{}", made.lineage);
    assert_ne!(made.lineage, old.lineage);

    // Every worker on every host adopts the new lineage and document.
    let replies = converge(&hosts, made.revision, fresh);
    for (h, (host, reply)) in hosts.iter().zip(&replies).enumerate() {
        assert_eq!(reply.lineage, made.lineage, "host {h}");
        eventually(
            &format!("host {h}'s worker to report the new lineage"),
            || (host.readyz()["lineage"] == made.lineage.as_str()).then_some(()),
        );
    }
}

/// The fleet across hosts: each broker shares its followers through etcd,
/// `broker status` on one host lists every host's workers, and a write with
/// `--wait` through one host returns once the workers of every host serve
/// it, or names the one that lags, with its host.
#[test]
fn a_write_that_waits_waits_for_every_hosts_workers() {
    let cluster = Cluster::start(3);
    let hosts = three_hosts(&cluster, "fleet");
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("the host name")
        .trim()
        .to_owned();
    let host_name = |host: &Host| format!("{machine}:{}", host.socket().display());
    // Host A lists its own worker and, through etcd, the other two.
    let listed = eventually("host A to list all three workers", || {
        let followers = status_json(&hosts[0])["followers"].as_array()?.clone();
        (followers.len() == 3).then_some(followers)
    });
    for (i, host) in hosts.iter().enumerate() {
        let worker = host.worker.as_ref().expect("a worker");
        let entry = listed
            .iter()
            .find(|f| f["pid"] == worker.pid())
            .unwrap_or_else(|| panic!("host {i}'s worker not listed: {listed:?}"));
        assert_eq!(entry["name"], format!("worker 127.0.0.1:{}", host.port));
        let on = match i {
            0 => String::new(),
            _ => host_name(host),
        };
        assert_eq!(entry["host"], on.as_str(), "{entry}");
    }

    // --wait through A: when it returns, every host's worker serves the write.
    for round in 1..=3 {
        let patch = format!(r#"{{"round":{round}}}"#);
        let (code, out, err) = run(Command::new(BROKER)
            .args(["patch", "--wait=10", "--socket"])
            .arg(hosts[0].socket())
            .arg(&patch));
        assert_eq!(code, 0, "{err}");
        let revision: u64 = out
            .trim()
            .strip_prefix("revision ")
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("{out:?}"));
        for (i, host) in hosts.iter().enumerate() {
            let (served, body) = host.served();
            assert_eq!(served, revision, "host {i} after round {round}");
            assert!(
                body.contains(&format!(r#""round":{round}"#)),
                "host {i}: {body}"
            );
        }
    }

    // A stopped worker on host C is named, with its host.
    let lagging = &hosts[2];
    let worker = lagging.worker.as_ref().expect("a worker");
    let before = lagging.served().0;
    worker.signal(libc::SIGSTOP);
    let (code, out, err) = run(Command::new(BROKER)
        .args(["patch", "--wait=2", "--socket"])
        .arg(hosts[0].socket())
        .arg(r#"{"lag":1}"#));
    worker.signal(libc::SIGCONT);
    assert_eq!((code, out.as_str()), (5, ""), "{err}");
    // SAFETY: getuid(2) cannot fail.
    let uid = unsafe { libc::getuid() };
    assert!(
        err.ends_with(&format!(
            "is committed, but not every follower applied it: worker 127.0.0.1:{} (pid {}, uid {uid}) on {} is at revision {before} after 2s\n",
            lagging.port,
            worker.pid(),
            host_name(lagging)
        )),
        "{err}"
    );
}

/// A host killed with SIGKILL stops refreshing its shared list: the others
/// show its worker as stale (not as the current state), and a write's
/// `--wait` does not count it as applied; once its lease expires it drops out.
#[test]
fn a_host_killed_is_shown_stale_and_a_wait_never_counts_it() {
    let cluster = Cluster::start(3);
    let mut hosts = three_hosts(&cluster, "killed_host");
    eventually("host A to list all three workers, current", || {
        let json = status_json(&hosts[0]);
        let followers = json["followers"].as_array()?.clone();
        (followers.len() == 3 && followers.iter().all(|f| f["stale"] == false)).then_some(())
    });
    let worker = hosts[2].worker.as_ref().expect("a worker").pid();
    let applied = hosts[2].served().0;
    hosts[2]
        .broker
        .as_mut()
        .expect("a broker")
        .signal(libc::SIGKILL);

    // Within a few seconds (its lease renewed every second stops being
    // renewed), host A marks C's worker stale, as of its last refresh.
    let entry = eventually("host A to mark host C's worker stale", || {
        let json = status_json(&hosts[0]);
        let entry = json["followers"]
            .as_array()?
            .iter()
            .find(|f| f["pid"] == worker)?
            .clone();
        (entry["stale"] == true).then_some(entry)
    });
    assert_eq!(entry["applied_revision"], applied, "{entry}");
    let as_of = entry["as_of"].as_str().expect("as_of").to_owned();
    let (code, out) = status(&hosts[0]);
    assert_eq!(code, 0, "{out}");
    let line = out
        .lines()
        .find(|l| l.contains(&format!(" pid {worker} ")))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.ends_with(&format!(
            " (STALE: as of {}Z, not refreshed since)",
            &as_of[..19]
        )),
        "{line} / {as_of}"
    );

    // A write through A that waits (C's lease has seconds left): B's worker
    // applies it; C's cannot be confirmed, so the wait fails (exit 5) naming it.
    let (code, out, err) = run(Command::new(BROKER)
        .args(["patch", "--wait=1", "--socket"])
        .arg(hosts[0].socket())
        .arg(r#"{"after_kill":1}"#));
    assert_eq!((code, out.as_str()), (5, ""), "{err}");
    assert!(
        err.ends_with(&format!(
            "(pid {worker}, uid {}) on {} is unconfirmed: its host's list is as of {}Z, not refreshed since\n",
            entry["uid"], entry["host"].as_str().expect("host"), &as_of[..19]
        )),
        "{err}"
    );
    assert!(
        !err.contains(&format!(
            "(pid {}, uid ",
            hosts[1].worker.as_ref().expect("worker").pid()
        )),
        "{err}"
    );

    // The lease expires (10 s): C's worker is no longer listed.
    eventually("host C's worker to drop out of host A's list", || {
        let json = status_json(&hosts[0]);
        let followers = json["followers"].as_array()?.clone();
        (followers.len() == 2 && followers.iter().all(|f| f["pid"] != worker)).then_some(())
    });
}
