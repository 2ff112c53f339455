//! The fault soak in etcd mode: a 3-member etcd cluster and three hosts,
//! each a broker (`--etcd-endpoints` all members, its own socket and state
//! directory) with a worker and two writers (patches with and without
//! `expected_revision`, whole-document sets), and a seeded schedule of
//! faults: kill -9 of an etcd member and its restart (one down at a time,
//! sometimes two, so that writes fail UNAVAILABLE; a broker may be killed
//! and restarted then, from its last-known-good copy), kill -9 of a broker
//! and its restart on the same state directory, kill -9 of a worker.
//!
//! A write's outcome is acknowledged (a revision), refused (a code and
//! message: a revision conflict, or UNAVAILABLE "...; nothing was
//! changed"), or unknown (the connection broke at a kill -9, or UNAVAILABLE
//! "... it may still be committed"). The checker (tests/soak_check) proves
//! from every host's acks, GetArgs, WatchArgs and ListRevisions in one
//! ledger that
//!
//! 1. every acknowledged patch is in every later revision seen, and in the
//!    final document, unless a later whole-document write replaced it;
//! 2. every refused write is in no revision at all;
//! 3. no (lineage, revision) names two documents, on any host, and the
//!    lineage never changes;
//! 4. every host's broker and worker converge to what etcd holds at the
//!    end: the same revision and document everywhere;
//! 5. while etcd has a quorum (at most one member down), no write is refused
//!    because a member that is down could not be reached: a broker given
//!    every member's endpoint reaches one that is up. (A member's "no
//!    leader", as in an election, is etcd's answer, not this.)
//!
//! `SOAK_SECONDS` (default 20) sets the length, `SOAK_SEED` replays a
//! schedule; `tests/soak --etcd SECONDS` runs it longer.
mod common;
mod faults;
mod soak_check;

use common::etcd::Cluster;
use common::*;
use faults::*;
use soak_check::Outcome;
use soak_check::*;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::RwLock;
use tonic::Code;

const KEY: &str = "/argsbroker/soak";
const WRITERS_PER_HOST: u64 = 2;

/// One host: a broker on its own socket and state directory, and a worker.
struct Host {
    site: Site,
    broker: Proc,
    /// The worker's port, held by the soak for its whole run.
    port: HeldPort,
    worker: Proc,
}

fn broker_cmd(site: &Site, endpoints: &str) -> Command {
    let mut cmd = site.broker_cmd();
    cmd.arg("--state-dir")
        .arg(site.path("state"))
        .args(["--etcd-endpoints", endpoints, "--etcd-key", KEY])
        .args(["--etcd-timeout", "2", "--history", "20"]);
    cmd
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// kill -9 an etcd member if none is down, else restart the one down.
    EtcdMember,
    /// Two members down for a while (no quorum), then one back.
    NoQuorum,
    KillBroker,
    KillWorker,
}

#[derive(Default)]
struct Faults {
    etcd_kills: u64,
    etcd_restarts: u64,
    no_quorum: u64,
    broker_kills: u64,
    broker_kills_without_quorum: u64,
    worker_kills: u64,
}

#[test]
fn etcd_fault_soak() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(fresh_seed);
    eprintln!("etcd soak: {seconds} s, seed {seed} (SOAK_SEED={seed} replays the fault schedule)");
    let mut rng = Rng::new(seed);

    let mut cluster = Cluster::start(3);
    let endpoints = cluster.endpoints_csv();
    let start_json = r#"{"start": true}"#;
    let start_sha256 = argsbroker::document::Document::parse(start_json.as_bytes())
        .unwrap()
        .sha256()
        .to_owned();
    let sites: Vec<Site> = (0..3)
        .map(|_| Site::new_in(Path::new("/dev/shm"), start_json))
        .collect();
    let mut hosts: Vec<Host> = sites
        .into_iter()
        .map(|site| {
            let broker = site.spawn_broker(broker_cmd(&site, &endpoints));
            // Held for the whole soak: a killed worker's replacement
            // joins the same port, which no other process can take meanwhile.
            let held = hold_port();
            let worker = site.start_worker_on(held.port);
            Host {
                site,
                broker,
                port: held,
                worker,
            }
        })
        .collect();

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for host in &hosts {
        let now = get_args(&host.site.socket());
        ledger.lock().unwrap().observe(
            (now.lineage.clone(), now.revision),
            &now.sha256,
            Some(now.json.clone()),
            None,
            "GetArgs",
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    // Never taken alone here: in etcd mode a broker's restart serves what
    // etcd (or its last-known-good copy) holds, with nothing to pin down.
    let gate = Arc::new(RwLock::new(()));
    let mut writers = Vec::new();
    let mut observers = Vec::new();
    for (h, host) in hosts.iter().enumerate() {
        for j in 0..WRITERS_PER_HOST {
            let w = h as u64 * WRITERS_PER_HOST + j;
            let (socket, ledger, stop, gate) = (
                host.site.socket(),
                ledger.clone(),
                stop.clone(),
                gate.clone(),
            );
            let seed = rng.next_u64();
            writers.push(std::thread::spawn(move || {
                writer(w, seed, &socket, &ledger, &stop, &gate)
            }));
        }
        let (socket, ledger, stop) = (host.site.socket(), ledger.clone(), stop.clone());
        observers.push(std::thread::spawn(move || {
            observe(&socket, &ledger, &stop, Duration::from_millis(300))
        }));
    }
    let ports: Vec<u16> = hosts.iter().map(|h| h.port.port).collect();
    let poller = {
        let (ports, stop) = (ports.clone(), stop.clone());
        std::thread::spawn(move || poll_workers(&ports, &stop))
    };

    // The fault schedule.
    // SOAK_FAULTS=etcd,quorum,broker,worker (the default: all) narrows the schedule.
    let enabled = enabled_faults([
        (Fault::EtcdMember, "etcd", 35),
        (Fault::NoQuorum, "quorum", 10),
        (Fault::KillBroker, "broker", 30),
        (Fault::KillWorker, "worker", 25),
    ]);
    eprintln!("etcd soak: faults {enabled:?}");
    let mut faults = Faults::default();
    let mut down: Option<usize> = None;
    // When etcd had no quorum: from the second member's kill until one of
    // them was back and healthy.
    let mut no_quorum: Vec<(Instant, Instant)> = Vec::new();
    let mut findings: Vec<String> = Vec::new();
    let restart = |host: &mut Host, findings: &mut Vec<String>, when: &str| -> bool {
        host.broker.signal(libc::SIGKILL);
        host.broker.wait();
        match restart_broker(&host.site, &|| broker_cmd(&host.site, &endpoints)) {
            Ok(b) => {
                host.broker = b;
                true
            }
            Err(log) => {
                findings.push(format!(
                    "(restart) the broker could not restart after kill -9 {when}: {log}"
                ));
                false
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(seconds);
    'schedule: while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(rng.range(200, 800)));
        let fault = {
            let total: u64 = enabled.iter().map(|(_, w)| w).sum();
            let mut at = rng.range(0, total);
            let mut picked = enabled[0].0;
            for &(fault, weight) in &enabled {
                if at < weight {
                    picked = fault;
                    break;
                }
                at -= weight;
            }
            picked
        };
        match fault {
            Fault::EtcdMember => match down.take() {
                Some(i) => {
                    faults.etcd_restarts += 1;
                    cluster.restart(i);
                }
                None => {
                    let i = rng.range(0, 3) as usize;
                    faults.etcd_kills += 1;
                    cluster.kill(i);
                    down = Some(i);
                }
            },
            Fault::NoQuorum => {
                let first = down.unwrap_or_else(|| {
                    let i = rng.range(0, 3) as usize;
                    faults.etcd_kills += 1;
                    cluster.kill(i);
                    i
                });
                let second = (first + rng.range(1, 3) as usize) % 3;
                faults.etcd_kills += 1;
                faults.no_quorum += 1;
                let lost_quorum = Instant::now();
                cluster.kill(second);
                std::thread::sleep(Duration::from_millis(rng.range(1000, 4000)));
                if rng.chance(30) {
                    // A broker killed and restarted without a quorum starts
                    // at once from its last-known-good copy.
                    faults.broker_kills += 1;
                    faults.broker_kills_without_quorum += 1;
                    let h = rng.range(0, 3) as usize;
                    if !restart(&mut hosts[h], &mut findings, "while etcd had no quorum") {
                        break 'schedule;
                    }
                    std::thread::sleep(Duration::from_millis(rng.range(100, 600)));
                }
                let (back, still) = match rng.chance(50) {
                    true => (first, second),
                    false => (second, first),
                };
                faults.etcd_restarts += 1;
                cluster.restart(back);
                no_quorum.push((lost_quorum, Instant::now()));
                down = Some(still);
            }
            Fault::KillBroker => {
                faults.broker_kills += 1;
                let h = rng.range(0, 3) as usize;
                if !restart(&mut hosts[h], &mut findings, "") {
                    break 'schedule;
                }
            }
            Fault::KillWorker => {
                faults.worker_kills += 1;
                let host = &mut hosts[rng.range(0, 3) as usize];
                host.worker.signal(libc::SIGKILL);
                host.worker.wait();
                host.worker = host.site.start_worker_on(host.port.port);
            }
        }
    }

    stop.store(true, Ordering::SeqCst);
    let ops: Vec<Op> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer thread"))
        .collect();
    for observer in observers {
        observer.join().expect("observer thread");
    }
    let served = poller.join().expect("worker poller thread");
    if let Some(i) = down.take() {
        faults.etcd_restarts += 1;
        cluster.restart(i);
    }

    // (4) Every host converges to what etcd holds.
    // The key was made from the start file (--args) at its create_revision.
    let (truth, created) = etcd_holds(&cluster);
    ledger.lock().unwrap().observe(
        (truth.lineage.clone(), truth.revision),
        &truth.sha256,
        Some(truth.json.clone()),
        None,
        "etcdctl get",
    );
    for (h, host) in hosts.iter().enumerate() {
        let socket = host.site.socket();
        let caught_up = Instant::now() + PATIENCE;
        loop {
            let now = get_args(&socket);
            let same = (&now.lineage, now.revision, &now.sha256)
                == (&truth.lineage, truth.revision, &truth.sha256);
            if same {
                break;
            }
            if Instant::now() > caught_up {
                findings.push(format!(
                    "(4) host {h}'s broker serves revision {} of lineage {} (sha256 {}), etcd holds revision {} of {} (sha256 {}), {PATIENCE:?} after the last fault",
                    now.revision,
                    now.lineage,
                    short(&now.sha256),
                    truth.revision,
                    truth.lineage,
                    short(&truth.sha256)
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let converged = converge(&socket, &[host.port.port], &mut findings);
        if (converged.revision, &converged.sha256) != (truth.revision, &truth.sha256) {
            findings.push(format!(
                "(4) host {h}'s worker converged to revision {} (sha256 {}), etcd holds revision {} (sha256 {})",
                converged.revision,
                short(&converged.sha256),
                truth.revision,
                short(&truth.sha256)
            ));
        }
        let connected = Instant::now() + PATIENCE;
        loop {
            let ready = get(host.port.port, "/readyz");
            let v: serde_json::Value = serde_json::from_str(&ready.body).unwrap_or_default();
            if v["backend_connected"] == serde_json::Value::Bool(true) {
                break;
            }
            if Instant::now() > connected {
                findings.push(format!(
                    "(4) host {h}'s worker still says its broker is cut off from etcd, {PATIENCE:?} after the last fault: /readyz {}",
                    ready.body
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        record_revisions(&socket, &ledger);
    }

    let final_rev = (truth.lineage.clone(), truth.revision);
    let ledger = ledger.lock().unwrap();
    findings.extend(ledger.two_documents.iter().cloned());
    for rev in ledger.seen.keys() {
        if rev.0 != truth.lineage {
            findings.push(format!(
                "(3) revision {} was seen in lineage {}, but the key was never made again: its lineage is {}",
                rev.1, rev.0, truth.lineage
            ));
        }
    }
    check_workers(&ledger, &served, &truth.lineage, &mut findings);
    check(
        &ledger,
        &ops,
        &[],
        &[],
        ((created, &start_sha256), &final_rev, &truth),
        &mut findings,
    );

    // (5) With a quorum, every write reaches a member that is up.
    let mut out_of_reach = 0;
    for op in &ops {
        let Outcome::Refused { message, .. } = &op.outcome else {
            continue;
        };
        let during = no_quorum
            .iter()
            .any(|(from, until)| op.sent <= *until && op.answered >= *from);
        if message.contains("is out of reach") && !message.contains("no leader") && !during {
            out_of_reach += 1;
            if out_of_reach <= 5 {
                findings.push(format!(
                    "(5) refused while etcd had a quorum: {:?} {} ({:?} after it was sent): {message}",
                    op.kind,
                    op.key,
                    op.answered - op.sent
                ));
            }
        }
    }
    if out_of_reach > 5 {
        findings.push(format!(
            "(5) ... {out_of_reach} writes in all were refused as out of reach while etcd had a quorum"
        ));
    }
    let lost = findings.iter().filter(|f| f.starts_with("(1)")).count();
    eprintln!(
        "etcd soak figures (seed {seed}, {seconds} s, 3 etcd members, 3 hosts, {} writers):\n  \
         writes: {}\n  \
         faults: {} etcd member kill -9 ({} spells without a quorum), {} etcd member restarts, {} broker kill -9 ({} while etcd had no quorum), {} worker kill -9\n  \
         revisions seen: {}, final revision {} (lineage {})\n  \
         lost = {lost}, findings = {}",
        3 * WRITERS_PER_HOST,
        tally(&ops),
        faults.etcd_kills,
        faults.no_quorum,
        faults.etcd_restarts,
        faults.broker_kills,
        faults.broker_kills_without_quorum,
        faults.worker_kills,
        ledger.seen.len(),
        truth.revision,
        truth.lineage,
        findings.len()
    );
    drop(hosts);
    // The end of each member's last log, for a failure's message.
    let logs: String = match findings.is_empty() {
        true => String::new(),
        false => cluster
            .members
            .iter()
            .map(|m| {
                let text = m.log_text();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                format!("--- {} ({})\n{tail}\n", m.name, m.log.display())
            })
            .collect(),
    };
    drop(cluster);
    assert!(
        findings.is_empty(),
        "the etcd soak found {} broken promise(s) (seed {seed}; SOAK_SEED={seed} replays the schedule):\n{}\netcd's logs:\n{logs}",
        findings.len(),
        summarize(&findings, 12)
    );
}

/// What etcd holds at the key, read with etcdctl, as the broker would name
/// it: revision (mod_revision), lineage (the random id in the meta record
/// `KEY\0argsbroker` a broker wrote when it made the key, or the cluster
/// id and create_revision for a key made by another client), the compact
/// JSON and its sha256; and the key's create_revision.
fn etcd_holds(cluster: &Cluster) -> (argsbroker::pb::Args, u64) {
    let limit = Duration::from_secs(10);
    let all = cluster.endpoints();
    let deadline = Instant::now() + PATIENCE;
    let etcdctl = |args: &[&str]| loop {
        let out = cluster.etcdctl(&all, args, limit);
        if out.status.success() {
            return out.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The key and its meta record: the range [KEY, KEY\x01).
    let range_end = format!("{KEY}\x01");
    let got: serde_json::Value =
        serde_json::from_slice(&etcdctl(&["get", KEY, &range_end, "-w", "json"]))
            .expect("etcdctl's JSON");
    let kvs = got["kvs"].as_array().cloned().unwrap_or_default();
    let named = |name: &[u8]| {
        kvs.iter()
            .find(|kv| kv["key"].as_str().map(base64) == Some(name.to_vec()))
            .cloned()
    };
    let Some(kv) = named(KEY.as_bytes()) else {
        panic!("etcdctl get {KEY}: no key: {got}");
    };
    let (Some(cluster_id), Some(create), Some(revision), Some(value)) = (
        got["header"]["cluster_id"].as_u64(),
        kv["create_revision"].as_u64(),
        kv["mod_revision"].as_u64(),
        kv["value"].as_str().map(base64),
    ) else {
        panic!("etcdctl get {KEY}: {got}");
    };
    // As the broker reads the meta record: its id names this key if it was
    // written when the key was made (key_created 0, in the same revision)
    // or for it (key_created = the key's create_revision).
    let id = named(format!("{KEY}\0argsbroker").as_bytes()).and_then(|meta| {
        let record: serde_json::Value =
            serde_json::from_slice(&base64(meta["value"].as_str()?)).ok()?;
        let ours = match record["key_created"].as_u64()? {
            0 => meta["mod_revision"].as_u64()? == create,
            created => created == create,
        };
        ours.then(|| u128::from_str_radix(record["lineage"].as_str()?, 16).ok())
            .flatten()
    });
    let lineage = match id {
        Some(id) => format!("etcd-{id:032x}"),
        None => format!("etcd-{cluster_id:016x}-{create}"),
    };
    let args = argsbroker::pb::Args {
        revision,
        sha256: sha256_hex(&value),
        json: value.into(),
        not_modified: false,
        lineage,
    };
    (args, create)
}

/// Standard base64 (etcdctl's JSON output encodes keys and values so).
fn base64(text: &str) -> Vec<u8> {
    let digit = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {text:?}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=').map(digit).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | u32::from(*d) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64("L2FyZ3Nicm9rZXIvc29haw=="), b"/argsbroker/soak");
    assert_eq!(base64("e30="), b"{}");
    assert_eq!(base64("YWJj"), b"abc");
    assert_eq!(base64(""), b"");
}

/// How the soak reads the etcd backend's refusals: "nothing was changed" is
/// a refusal, "it may still be committed" an unknown outcome.
#[test]
fn etcd_unavailable_is_a_refusal_only_when_nothing_was_changed() {
    let unreachable = "etcd at http://127.0.0.1:1 is out of reach (no leader); nothing was changed";
    assert!(matches!(
        classify(tonic::Status::unavailable(unreachable)),
        Outcome::Refused { code: Code::Unavailable, ref message } if message == unreachable
    ));
    let unconfirmed = "etcd at http://127.0.0.1:1 did not confirm the write (no answer within 2s); it may still be committed: read the args to see";
    assert!(matches!(
        classify(tonic::Status::unavailable(unconfirmed)),
        Outcome::Unknown { ref why } if why.ends_with(unconfirmed)
    ));
    assert!(matches!(
        classify(tonic::Status::unavailable("transport error")),
        Outcome::Unknown { .. }
    ));
    assert!(matches!(
        classify(tonic::Status::failed_precondition("revision conflict")),
        Outcome::Refused {
            code: Code::FailedPrecondition,
            ..
        }
    ));
}
