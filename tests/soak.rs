//! The fault soak (issue 11): one broker (`--watch`, its state on a small
//! tmpfs), writers on their own connections, workers following, and a
//! seeded schedule of faults: kill -9 of the broker and of workers, SIGHUP,
//! outside edits of the args file, a full state disk. Every client outcome
//! is logged; at the end a checker proves from those logs that
//!
//! 1. every acknowledged patch is in every later revision seen, and in the
//!    final document, unless a later whole-document write (an acknowledged
//!    or observed SetArgs, an outside edit) replaced it;
//! 2. every refused write is in no revision at all;
//! 3. no (lineage, revision) names two documents (acks, GetArgs, WatchArgs
//!    and ListRevisions, across restarts);
//! 4. every worker converges to the broker's revision and document;
//! 5. every `source=file` revision is an outside edit or the start file (or
//!    a write in flight when the broker was killed, recovered at its restart).
//!
//! `SOAK_SECONDS` (default 20) sets the length, `SOAK_SEED` replays a
//! schedule; `tests/soak SECONDS` runs it longer.
mod common;
mod faults;

use argsbroker::pb;
use bytes::Bytes;
use common::*;
use faults::*;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::RwLock;
use tonic::Code;

/// (lineage, revision): what names one document.
type Rev = (String, u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Patch,
    CasPatch,
    Set,
    CasSet,
}

#[derive(Debug)]
enum Outcome {
    Acked { rev: Rev },
    Refused { code: Code, message: String },
    Unknown { why: String },
}

/// One write a writer sent, and what became of it.
#[derive(Debug)]
struct Op {
    key: String,
    kind: Kind,
    /// For SetArgs: the sha256 of the document sent.
    set_sha256: Option<String>,
    outcome: Outcome,
}

/// What was seen of one (lineage, revision).
#[derive(Default)]
struct Seen {
    sha256: String,
    /// The document's top-level keys, as sorted hashes (names in
    /// `Ledger::names`): a long soak sees hundreds of thousands of revisions.
    keys: Option<Box<[u64]>>,
    source: Option<String>,
    via: &'static str,
}

/// Everything observed, by every client, shared.
#[derive(Default)]
struct Ledger {
    seen: BTreeMap<Rev, Seen>,
    /// Invariant 3 findings, found as observations come in.
    two_documents: Vec<String>,
    /// Every key name seen, by hash.
    names: HashMap<u64, String>,
}

impl Seen {
    fn has(&self, hash: u64) -> Option<bool> {
        Some(self.keys.as_ref()?.binary_search(&hash).is_ok())
    }
}

impl Ledger {
    fn observe(
        &mut self,
        rev: Rev,
        sha256: &str,
        json: Option<Bytes>,
        source: Option<&str>,
        via: &'static str,
    ) {
        let entry = self.seen.entry(rev.clone()).or_insert_with(|| Seen {
            sha256: sha256.to_owned(),
            via,
            ..Seen::default()
        });
        if entry.sha256 != sha256 {
            self.two_documents.push(format!(
                "(3) revision {} of lineage {} names two documents: sha256 {} (seen via {}) and {} (via {via})",
                rev.1,
                short(&rev.0),
                short(&entry.sha256),
                entry.via,
                short(sha256)
            ));
            return;
        }
        if let (None, Some(json)) = (&entry.keys, json) {
            let mut keys: Vec<u64> = object(&json)
                .into_iter()
                .map(|(name, _)| {
                    let hash = key_hash(&name);
                    self.names.entry(hash).or_insert(name);
                    hash
                })
                .collect();
            keys.sort_unstable();
            entry.keys = Some(keys.into());
            entry.via = via;
        }
        if entry.source.is_none() {
            entry.source = source.map(str::to_owned);
        }
    }
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillBroker,
    Sighup,
    OutsideEdit,
    DiskFull,
    KillWorker,
}

/// A fault drawn from `enabled` by weight.
fn pick(rng: &mut Rng, enabled: &[(Fault, u64)]) -> Fault {
    let total: u64 = enabled.iter().map(|(_, w)| w).sum();
    let mut at = rng.range(0, total);
    for (fault, weight) in enabled {
        if at < *weight {
            return *fault;
        }
        at -= weight;
    }
    unreachable!()
}

#[derive(Default)]
struct Faults {
    broker_kills: u64,
    sighups: u64,
    outside_edits: u64,
    disk_full: u64,
    disk_full_sighup: u64,
    disk_full_kill: u64,
    disk_full_kill_restart_full: u64,
    worker_kills: u64,
}

/// A broker restart: the first snapshot it served.
struct Restart {
    rev: Rev,
    sha256: String,
    json: Bytes,
    /// The highest revision acknowledged before the kill.
    max_acked_before: u64,
}

#[test]
fn fault_soak() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(fresh_seed);
    eprintln!("soak: {seconds} s, seed {seed} (SOAK_SEED={seed} replays the fault schedule)");
    let mut rng = Rng::new(seed);
    // SOAK_FAULTS=kill,sighup,edit,disk,worker (the default: all) narrows the schedule.
    let enabled: Vec<(Fault, u64)> = {
        let wanted = std::env::var("SOAK_FAULTS").unwrap_or_default();
        let all = [
            (Fault::KillBroker, "kill", 25),
            (Fault::Sighup, "sighup", 20),
            (Fault::OutsideEdit, "edit", 20),
            (Fault::DiskFull, "disk", 15),
            (Fault::KillWorker, "worker", 20),
        ];
        all.into_iter()
            .filter(|(_, name, _)| {
                wanted.is_empty() || wanted.split(',').any(|w| w.trim() == *name)
            })
            .map(|(fault, _, weight)| (fault, weight))
            .collect()
    };
    assert!(
        !enabled.is_empty(),
        "SOAK_FAULTS names no fault: kill,sighup,edit,disk,worker"
    );
    eprintln!("soak: faults {enabled:?}");

    let start_json = r#"{"start": true}"#;
    let site = Site::new_in(Path::new("/dev/shm"), start_json);
    let start_sha256 = argsbroker::document::Document::parse(start_json.as_bytes())
        .unwrap()
        .sha256()
        .to_owned();
    let state = site.path("state");
    let disk = Tmpfs::mount(&state, "8m");
    let filler = state.join("filler");
    let broker_cmd = || {
        let mut cmd = site.broker_cmd();
        cmd.arg("--state-dir")
            .arg(&state)
            .args(["--watch", "--history", "1000"]);
        cmd
    };
    let mut broker = site.spawn_broker(broker_cmd());

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let first = get_args(&site.socket());
    ledger.lock().unwrap().observe(
        (first.lineage.clone(), first.revision),
        &first.sha256,
        Some(first.json.clone()),
        None,
        "GetArgs",
    );

    let worker_count = rng.range(2, 5) as usize;
    let ports: Vec<u16> = (0..worker_count).map(|_| free_port()).collect();
    let mut workers: Vec<Proc> = ports
        .iter()
        .map(|&port| site.start_worker(port, false))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    // Writers hold it (shared) for each call; a broker restart holds it alone
    // from just after the kill until it has read the restarted broker's first
    // revision, so that revision is the one the broker started with.
    let gate = Arc::new(RwLock::new(()));
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let (socket, ledger, stop, gate) =
                (site.socket(), ledger.clone(), stop.clone(), gate.clone());
            let seed = rng.next_u64();
            std::thread::spawn(move || writer(w, seed, &socket, &ledger, &stop, &gate))
        })
        .collect();
    let observer = {
        let (socket, ledger, stop) = (site.socket(), ledger.clone(), stop.clone());
        std::thread::spawn(move || observe(&socket, &ledger, &stop))
    };
    let poller = {
        let (ports, stop) = (ports.clone(), stop.clone());
        std::thread::spawn(move || poll_workers(&ports, &stop))
    };

    // The fault schedule.
    let mut faults = Faults::default();
    let mut outside_edits: Vec<(u64, String)> = Vec::new();
    let restarts: RefCell<Vec<Restart>> = RefCell::default();
    let restarter = Restarter {
        site: &site,
        cmd: &broker_cmd,
        ledger: &ledger,
        gate: &gate,
        restarts: &restarts,
    };
    let mut findings: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(rng.range(150, 600)));
        match pick(&mut rng, &enabled) {
            Fault::KillBroker => {
                faults.broker_kills += 1;
                let restarted = kill_and_restart(&mut broker, &restarter, &mut || {});
                if let Err(log) = restarted {
                    findings.push(format!(
                        "(restart) the broker could not restart after kill -9: {log}"
                    ));
                    break;
                }
            }
            Fault::Sighup => {
                // A burst, as a config-management run that reloads several times.
                for _ in 0..rng.range(1, 6) {
                    faults.sighups += 1;
                    broker.signal(libc::SIGHUP);
                    std::thread::sleep(Duration::from_millis(rng.range(10, 70)));
                }
            }
            Fault::OutsideEdit => {
                faults.outside_edits += 1;
                let i = faults.outside_edits;
                let json = format!(r#"{{"outside": {i}, "outside_{i}": "deploy {i}"}}"#);
                let sha = argsbroker::document::Document::parse(json.as_bytes())
                    .unwrap()
                    .sha256()
                    .to_owned();
                write_by_rename(&site.args(), &json);
                outside_edits.push((i, sha));
            }
            Fault::DiskFull => {
                faults.disk_full += 1;
                fill(&filler);
                std::thread::sleep(Duration::from_millis(rng.range(200, 800)));
                let free = || std::fs::remove_file(&filler).expect("remove the filler");
                match rng.range(0, 4) {
                    0 => free(),
                    1 => {
                        // A reload while the disk is full, then space returns.
                        faults.disk_full_sighup += 1;
                        broker.signal(libc::SIGHUP);
                        std::thread::sleep(Duration::from_millis(rng.range(20, 200)));
                        free();
                    }
                    2 => {
                        // kill -9 while the disk is full; space returns; restart.
                        faults.disk_full_kill += 1;
                        if let Err(log) = kill_and_restart(&mut broker, &restarter, &mut || free())
                        {
                            findings.push(format!(
                                "(restart) the broker could not restart after kill -9 on a full state disk, space back: {log}"
                            ));
                            break;
                        }
                    }
                    _ => {
                        // kill -9 and restart while the disk is still full:
                        // the last write was refused, so there is nothing to record.
                        faults.disk_full_kill_restart_full += 1;
                        match kill_and_restart_or(&mut broker, &restarter, &mut || {}, Some(&mut || free())) {
                            Ok(None) => {}
                            Ok(Some(log)) => findings.push(format!(
                                "(restart) after kill -9 on the full state disk (no write acknowledged since it filled), the broker could not start until space returned: {log}"
                            )),
                            Err(log) => {
                                findings.push(format!(
                                    "(restart) the broker could restart neither on the full state disk nor once space returned: {log}"
                                ));
                                break;
                            }
                        }
                        if exists(&filler) {
                            free();
                        }
                    }
                }
            }
            Fault::KillWorker => {
                faults.worker_kills += 1;
                let i = rng.range(0, worker_count as u64) as usize;
                workers[i].signal(libc::SIGKILL);
                workers[i].wait();
                workers[i] = site.start_worker(ports[i], false);
            }
        }
    }

    stop.store(true, Ordering::SeqCst);
    let ops: Vec<Op> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer thread"))
        .collect();
    observer.join().expect("observer thread");
    let served = poller.join().expect("worker poller thread");
    let _ = std::fs::remove_file(&filler);

    if !broker.is_running() {
        match restart_broker(&site, &broker_cmd) {
            Ok(b) => broker = b,
            Err(log) => panic!(
                "the broker is down and cannot restart ({log}); findings so far:\n{}",
                findings.join("\n")
            ),
        }
    }

    // (4) Every worker converges to what the broker serves.
    let final_args = converge(&site.socket(), &ports, &mut findings);
    let final_rev = (final_args.lineage.clone(), final_args.revision);
    record_revisions(&site.socket(), &ledger);
    ledger.lock().unwrap().observe(
        final_rev.clone(),
        &final_args.sha256,
        Some(final_args.json.clone()),
        None,
        "final GetArgs",
    );
    let ledger = ledger.lock().unwrap();
    findings.extend(ledger.two_documents.iter().cloned());
    check_workers(&ledger, &served, &final_rev.0, &mut findings);
    let recovered = check(
        &ledger,
        &ops,
        &outside_edits,
        &restarts.borrow(),
        (&start_sha256, &final_rev, &final_args),
        &mut findings,
    );

    // The figures.
    let count = |f: &dyn Fn(&Outcome) -> bool| ops.iter().filter(|o| f(&o.outcome)).count();
    let acked = count(&|o| matches!(o, Outcome::Acked { .. }));
    let refused = count(&|o| matches!(o, Outcome::Refused { .. }));
    let unknown = count(&|o| matches!(o, Outcome::Unknown { .. }));
    let mut refused_by: BTreeMap<String, usize> = BTreeMap::new();
    for op in &ops {
        if let Outcome::Refused { code, message } = &op.outcome {
            let why = if message.contains("No space left") {
                "no space"
            } else if message.starts_with("revision conflict") {
                "revision conflict"
            } else {
                "other"
            };
            *refused_by.entry(format!("{code:?} ({why})")).or_default() += 1;
        }
    }
    let mut unknown_by: BTreeMap<&str, usize> = BTreeMap::new();
    for op in &ops {
        if let Outcome::Unknown { why } = &op.outcome {
            *unknown_by
                .entry(why.split(':').next().unwrap_or_default())
                .or_default() += 1;
        }
    }
    let mut acked_by: BTreeMap<Kind, usize> = BTreeMap::new();
    for op in &ops {
        if let Outcome::Acked { .. } = op.outcome {
            *acked_by.entry(op.kind).or_default() += 1;
        }
    }
    let lost = findings.iter().filter(|f| f.starts_with("(1)")).count();
    eprintln!(
        "soak figures (seed {seed}, {seconds} s, {worker_count} workers):\n  \
         writes: {} sent, {acked} acknowledged {acked_by:?}, {refused} refused {refused_by:?}, {unknown} unknown {unknown_by:?} (connection broken by kill -9)\n  \
         faults: {} broker kill -9, {} SIGHUP, {} outside edits, {} full state disk (of which {} with a SIGHUP, {} with kill -9, {} with a restart on the full disk), {} worker kill -9\n  \
         revisions seen: {}, final revision {} (lineage {}); {recovered} write(s) in flight at a kill -9 taken at the restart\n  \
         lost = {lost}, findings = {}",
        ops.len(),
        faults.broker_kills,
        faults.sighups,
        faults.outside_edits,
        faults.disk_full,
        faults.disk_full_sighup,
        faults.disk_full_kill,
        faults.disk_full_kill_restart_full,
        faults.worker_kills,
        ledger.seen.len(),
        final_args.revision,
        short(&final_args.lineage),
        findings.len()
    );
    drop(workers);
    drop(broker);
    drop(disk);
    assert!(
        findings.is_empty(),
        "the soak found {} broken promise(s) (seed {seed}; SOAK_SEED={seed} replays the schedule):\n{}",
        findings.len(),
        summarize(&findings, 12)
    );
}

/// A writer on its own connection: mostly PatchArgs of its own keys
/// (`w<w>_<n>`), sometimes a compare-and-set patch, sometimes a SetArgs
/// (plain or compare-and-set) that replaces the whole document.
fn writer(
    w: u64,
    seed: u64,
    socket: &Path,
    ledger: &Mutex<Ledger>,
    stop: &AtomicBool,
    gate: &RwLock<()>,
) -> Vec<Op> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut rng = Rng::new(seed);
        let mut ops = Vec::new();
        let mut client: Option<Client> = None;
        let mut last_revision = 0u64;
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let Some(c) = client.as_mut() else {
                client = connect(socket).await;
                if client.is_none() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                continue;
            };
            n += 1;
            let key = format!("w{w}_{n}");
            let kind = match rng.range(0, 100) {
                0..88 => Kind::Patch,
                88..94 => Kind::CasPatch,
                94..97 => Kind::Set,
                _ => Kind::CasSet,
            };
            let expected = matches!(kind, Kind::CasPatch | Kind::CasSet).then_some(last_revision);
            let mut set_sha256 = None;
            let _shared = gate.read().await;
            let call = match kind {
                Kind::Patch | Kind::CasPatch => {
                    let request = pb::PatchArgsRequest {
                        merge_patch: format!(r#"{{"{key}": {n}}}"#),
                        expected_revision: expected,
                        ..Default::default()
                    };
                    tokio::time::timeout(Duration::from_secs(10), c.patch_args(request)).await
                }
                Kind::Set | Kind::CasSet => {
                    let json = format!(r#"{{"set_by": "{key}", "{key}": {n}}}"#);
                    set_sha256 = Some(
                        argsbroker::document::Document::parse(json.as_bytes())
                            .unwrap()
                            .sha256()
                            .to_owned(),
                    );
                    let request = pb::SetArgsRequest {
                        json,
                        expected_revision: expected,
                        ..Default::default()
                    };
                    tokio::time::timeout(Duration::from_secs(10), c.set_args(request)).await
                }
            };
            let outcome = match call {
                Err(_) => Outcome::Unknown {
                    why: "no answer within 10 s".into(),
                },
                Ok(Ok(reply)) => {
                    let reply = reply.into_inner();
                    let rev = (reply.lineage.clone(), reply.revision);
                    ledger.lock().unwrap().observe(
                        rev.clone(),
                        &reply.sha256,
                        Some(reply.json),
                        None,
                        "an acknowledgement",
                    );
                    last_revision = reply.revision;
                    Outcome::Acked { rev }
                }
                Ok(Err(status)) => classify(status),
            };
            if let Outcome::Unknown { .. } = outcome {
                client = None;
            }
            ops.push(Op {
                key,
                kind,
                set_sha256,
                outcome,
            });
            if rng.chance(30) {
                tokio::time::sleep(Duration::from_millis(rng.range(1, 4))).await;
            }
        }
        ops
    })
}

/// A status the broker sent is a refusal; a broken connection (kill -9) is
/// an unknown outcome: the write may or may not have been made.
fn classify(status: tonic::Status) -> Outcome {
    use std::error::Error;
    let from_transport = status.source().is_some()
        || matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
        );
    if from_transport {
        Outcome::Unknown {
            why: format!("{:?}: {}", status.code(), status.message()),
        }
    } else {
        Outcome::Refused {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// Follows WatchArgs (reconnecting after restarts) and polls ListRevisions,
/// recording every revision seen, until `stop`.
fn observe(socket: &Path, ledger: &Mutex<Ledger>, stop: &AtomicBool) {
    grpc(|| async {
        let mut stream = None;
        let mut last_list = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            if last_list.elapsed() > Duration::from_millis(100) {
                last_list = Instant::now();
                record_revisions_async(socket, ledger).await;
            }
            let Some(s) = stream.as_mut() else {
                if let Some(mut c) = connect(socket).await {
                    if let Ok(s) = c.watch_args(pb::WatchArgsRequest::default()).await {
                        stream = Some(s.into_inner());
                        continue;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            match tokio::time::timeout(Duration::from_millis(100), s.message()).await {
                Err(_) => {}
                Ok(Ok(Some(args))) => ledger.lock().unwrap().observe(
                    (args.lineage.clone(), args.revision),
                    &args.sha256,
                    Some(args.json),
                    None,
                    "WatchArgs",
                ),
                Ok(_) => stream = None,
            }
        }
    })
}

fn record_revisions(socket: &Path, ledger: &Mutex<Ledger>) {
    grpc(|| record_revisions_async(socket, ledger))
}

/// ListRevisions, attributed to the lineage GetArgs names before and after it.
async fn record_revisions_async(socket: &Path, ledger: &Mutex<Ledger>) {
    let Some(mut c) = connect(socket).await else {
        return;
    };
    let Ok(before) = c.get_args(pb::GetArgsRequest::default()).await else {
        return;
    };
    let Ok(list) = c.list_revisions(pb::ListRevisionsRequest {}).await else {
        return;
    };
    let Ok(after) = c.get_args(pb::GetArgsRequest::default()).await else {
        return;
    };
    let (before, after) = (before.into_inner(), after.into_inner());
    let mut unseen_file_revisions = Vec::new();
    {
        let mut seen = ledger.lock().unwrap();
        for args in [&before, &after] {
            seen.observe(
                (args.lineage.clone(), args.revision),
                &args.sha256,
                Some(args.json.clone()),
                None,
                "GetArgs",
            );
        }
        if before.lineage != after.lineage {
            return;
        }
        for r in list.into_inner().revisions {
            let rev = (before.lineage.clone(), r.revision);
            seen.observe(
                rev.clone(),
                &r.sha256,
                None,
                Some(&r.source),
                "ListRevisions",
            );
            if r.source == "file" && seen.seen.get(&rev).is_some_and(|s| s.keys.is_none()) {
                unseen_file_revisions.push(r.revision);
            }
        }
    }
    // The content of a source=file revision nobody saw: a watch replay from
    // the revision before it.
    for revision in unseen_file_revisions {
        let Ok(stream) = c
            .watch_args(pb::WatchArgsRequest {
                start_revision: Some(revision - 1),
            })
            .await
        else {
            return;
        };
        let mut stream = stream.into_inner();
        if let Ok(Ok(Some(args))) =
            tokio::time::timeout(Duration::from_secs(1), stream.message()).await
        {
            if args.revision == revision && args.lineage == before.lineage {
                ledger.lock().unwrap().observe(
                    (args.lineage.clone(), args.revision),
                    &args.sha256,
                    Some(args.json),
                    None,
                    "a WatchArgs replay",
                );
            }
        }
    }
}

fn max_revision(ledger: &Mutex<Ledger>) -> u64 {
    ledger
        .lock()
        .unwrap()
        .seen
        .keys()
        .map(|(_, r)| *r)
        .max()
        .unwrap_or(0)
}

/// What a broker restart needs.
struct Restarter<'a> {
    site: &'a Site,
    cmd: &'a dyn Fn() -> std::process::Command,
    ledger: &'a Mutex<Ledger>,
    gate: &'a RwLock<()>,
    restarts: &'a RefCell<Vec<Restart>>,
}

/// kill -9 the broker (writes in flight), run `between`, restart it with the
/// same flags, and record the revision it started with.
fn kill_and_restart(
    broker: &mut Proc,
    r: &Restarter,
    between: &mut dyn FnMut(),
) -> Result<(), String> {
    kill_and_restart_or(broker, r, between, None).map(|_| ())
}

/// `kill_and_restart`; if the restart fails and there is a `remedy`, it is
/// applied and the restart tried again: `Ok(Some(log))` says the first
/// restart failed, with its log.
fn kill_and_restart_or(
    broker: &mut Proc,
    r: &Restarter,
    between: &mut dyn FnMut(),
    remedy: Option<&mut dyn FnMut()>,
) -> Result<Option<String>, String> {
    let socket = r.site.socket();
    record_revisions(&socket, r.ledger);
    let max_acked_before = max_revision(r.ledger);
    broker.signal(libc::SIGKILL);
    broker.wait();
    let _alone = r.gate.blocking_write();
    between();
    let mut failed_first = None;
    *broker = match (restart_broker(r.site, r.cmd), remedy) {
        (Ok(b), _) => b,
        (Err(log), Some(remedy)) => {
            failed_first = Some(log);
            remedy();
            restart_broker(r.site, r.cmd)?
        }
        (Err(log), None) => return Err(log),
    };
    let now = get_args(&socket);
    let rev = (now.lineage.clone(), now.revision);
    r.ledger.lock().unwrap().observe(
        rev.clone(),
        &now.sha256,
        Some(now.json.clone()),
        None,
        "GetArgs after a restart",
    );
    r.restarts.borrow_mut().push(Restart {
        rev,
        sha256: now.sha256,
        json: now.json,
        max_acked_before,
    });
    drop(_alone);
    record_revisions(&socket, r.ledger);
    Ok(failed_first)
}

/// Restarts the broker; a restart that fails is retried a few times (the
/// lock of the killed one is released with its last descriptor).
fn restart_broker(site: &Site, cmd: &dyn Fn() -> std::process::Command) -> Result<Proc, String> {
    let mut last = String::new();
    for _ in 0..3 {
        match try_start_broker(site, cmd()) {
            Ok(b) => return Ok(b),
            Err(log) => last = log,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last)
}

/// Fills the state disk with a filler file until it is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..100_000 {
        match file.write(&chunk) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
            Err(e) => panic!("fill {}: {e}", path.display()),
        }
    }
    panic!("the state disk never filled up");
}

/// A key's hash, for the checker's sets of keys.
fn key_hash(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// What a worker answered to GET /args during the run.
struct Served {
    port: u16,
    revision: u64,
    etag: String,
    /// The sha256 of the document in the body, as the worker sent it.
    body_sha256: String,
}

/// Polls GET /args on every worker until `stop`.
fn poll_workers(ports: &[u16], stop: &AtomicBool) -> Vec<Served> {
    let mut served = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        for &port in ports {
            let Some(answer) = try_get(port, "/args", &[]) else {
                continue; // killed, or not listening yet
            };
            if answer.status != 200 {
                continue;
            }
            let (Some(revision), Some(etag)) = (
                answer
                    .header("x-args-revision")
                    .and_then(|r| r.parse().ok()),
                answer.header("etag"),
            ) else {
                continue;
            };
            let document = answer
                .body
                .strip_prefix("{\"args\":")
                .and_then(|b| b.strip_suffix('}'))
                .unwrap_or_default();
            served.push(Served {
                port,
                revision,
                etag: etag.trim_matches('"').to_owned(),
                body_sha256: sha256_hex(document.as_bytes()),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    served
}

/// What the workers served: each revision is the broker's document of that
/// revision (3), the body is the document the ETag names, and no worker's
/// revision goes back (the lineage never changes in the soak).
fn check_workers(ledger: &Ledger, served: &[Served], lineage: &str, findings: &mut Vec<String>) {
    let mut last: HashMap<u16, u64> = HashMap::new();
    let mut reported = HashSet::new();
    for s in served {
        if !s.body_sha256.starts_with(&s.etag) && reported.insert((s.port, s.revision, 0)) {
            findings.push(format!(
                "(3) worker on port {} served revision {} with ETag {} but a body whose sha256 is {}",
                s.port,
                s.revision,
                s.etag,
                short(&s.body_sha256)
            ));
        }
        if let Some(seen) = ledger.seen.get(&(lineage.to_owned(), s.revision)) {
            if !seen.sha256.starts_with(&s.etag) && reported.insert((s.port, s.revision, 1)) {
                findings.push(format!(
                    "(3) worker on port {} served revision {} as sha256 {}, but the broker's revision {} is {} (seen via {})",
                    s.port,
                    s.revision,
                    short(&s.etag),
                    s.revision,
                    short(&seen.sha256),
                    seen.via
                ));
            }
        }
        let before = last.insert(s.port, s.revision).unwrap_or(0);
        if s.revision < before && reported.insert((s.port, s.revision, 2)) {
            findings.push(format!(
                "(4) worker on port {} went back from revision {before} to {}",
                s.port, s.revision
            ));
        }
    }
}

/// Waits until every worker serves the broker's current revision and
/// document, and says so on /readyz; returns that snapshot.
fn converge(socket: &Path, ports: &[u16], findings: &mut Vec<String>) -> pb::Args {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = get_args(socket);
        let etag = format!("\"{}\"", &now.sha256[..32]);
        let body = args_body(now.json_str().expect("UTF-8"));
        let lagging: Vec<String> = ports
            .iter()
            .filter_map(|&port| {
                let args = try_get(port, "/args", &[]);
                let ready = try_get(port, "/readyz", &[]);
                let ok_args = args.as_ref().is_some_and(|a| {
                    a.status == 200
                        && a.header("x-args-revision") == Some(&now.revision.to_string())
                        && a.header("etag") == Some(etag.as_str())
                        && a.body == body
                });
                let ok_ready = ready.as_ref().is_some_and(|r| {
                    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
                    r.status == 200
                        && v["revision"].as_u64() == Some(now.revision)
                        && v["connected"] == serde_json::Value::Bool(true)
                });
                (!(ok_args && ok_ready)).then(|| {
                    format!(
                        "worker on port {port}: /args revision {:?} etag {:?}, /readyz {:?}",
                        args.as_ref()
                            .and_then(|a| a.header("x-args-revision").map(str::to_owned)),
                        args.as_ref()
                            .and_then(|a| a.header("etag").map(str::to_owned)),
                        ready.map(|r| r.body)
                    )
                })
            })
            .collect();
        if lagging.is_empty() {
            return now;
        }
        if Instant::now() > deadline {
            findings.push(format!(
                "(4) the workers did not converge to the broker's revision {} (sha256 {}) within {PATIENCE:?}: {}",
                now.revision,
                short(&now.sha256),
                lagging.join("; ")
            ));
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Invariants 1, 2 and 5 (3 is checked as observations come in, 4 by `converge`).
fn check(
    ledger: &Ledger,
    ops: &[Op],
    outside_edits: &[(u64, String)],
    restarts: &[Restart],
    (start_sha256, final_rev, final_args): (&str, &Rev, &pb::Args),
    findings: &mut Vec<String>,
) -> usize {
    let keys_of = |json: &Bytes| -> HashSet<String> { object(json).keys().cloned().collect() };
    let names_at = |rev: &Rev| -> Option<HashSet<String>> {
        let keys = ledger.seen.get(rev)?.keys.as_ref()?;
        Some(keys.iter().map(|h| ledger.names[h].clone()).collect())
    };
    let source_of = |rev: &Rev| {
        ledger
            .seen
            .get(rev)
            .and_then(|s| s.source.clone())
            .unwrap_or_else(|| "?".into())
    };
    // Whole-document replacements: acknowledged SetArgs, and any SetArgs or
    // outside edit whose document was seen at some revision.
    let mut replacing: HashMap<&str, String> = HashMap::new();
    for op in ops {
        if let Some(sha) = &op.set_sha256 {
            if !matches!(op.outcome, Outcome::Refused { .. }) {
                replacing.insert(sha, format!("SetArgs {}", op.key));
            }
        }
    }
    for (i, sha) in outside_edits {
        replacing.insert(sha, format!("outside edit {i}"));
    }
    let replacements: Vec<&Rev> = ledger
        .seen
        .iter()
        .filter(|(_, s)| replacing.contains_key(s.sha256.as_str()))
        .map(|(r, _)| r)
        .collect();
    let next_replacement = |rev: &Rev| {
        replacements
            .iter()
            .filter(|r| r.0 == rev.0 && r.1 > rev.1)
            .map(|r| r.1)
            .min()
    };

    // (1) Every acknowledged patch is in every later revision seen, up to the
    // next whole-document replacement, and in the final document if none.
    let mut lost_keys = HashSet::new();
    let final_keys = keys_of(&final_args.json);
    let final_keys: HashSet<u64> = final_keys.iter().map(|k| key_hash(k)).collect();
    for op in ops {
        let (Outcome::Acked { rev, .. }, Kind::Patch | Kind::CasPatch) = (&op.outcome, op.kind)
        else {
            continue;
        };
        let until = next_replacement(rev);
        let later = ledger
            .seen
            .range(rev.clone()..)
            .take_while(|(r, _)| r.0 == rev.0 && until.is_none_or(|u| r.1 < u))
            .skip(1);
        for (r, seen) in later {
            if seen.has(key_hash(&op.key)) == Some(false) && lost_keys.insert(op.key.clone()) {
                findings.push(format!(
                    "(1) lost: key {} (acknowledged at revision {}) is missing from revision {} (source={}, seen via {}), and no whole-document write came between",
                    op.key, rev.1, r.1, source_of(r), seen.via
                ));
            }
        }
        if until.is_none()
            && rev.0 == final_rev.0
            && !final_keys.contains(&key_hash(&op.key))
            && lost_keys.insert(op.key.clone())
        {
            findings.push(format!(
                "(1) lost: key {} (acknowledged at revision {}) is missing from the final document (revision {})",
                op.key, rev.1, final_rev.1
            ));
        }
        if rev.0 == final_rev.0 && rev.1 > final_rev.1 {
            findings.push(format!(
                "(1) went back: key {} was acknowledged at revision {}, the final revision is {}",
                op.key, rev.1, final_rev.1
            ));
        }
    }
    for restart in restarts {
        if restart.rev.1 < restart.max_acked_before {
            findings.push(format!(
                "(1) went back: after kill -9 the broker served revision {}, but revision {} had been acknowledged or served",
                restart.rev.1, restart.max_acked_before
            ));
        }
    }

    // (2) No refused write is in any revision.
    let refused: HashMap<u64, &Op> = ops
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Refused { .. }))
        .map(|op| (key_hash(&op.key), op))
        .collect();
    let mut reported = HashSet::new();
    for (r, seen) in &ledger.seen {
        let Some(keys) = &seen.keys else { continue };
        for key in keys.iter() {
            let Some(op) = refused.get(key) else {
                continue;
            };
            if !reported.insert(*key) {
                continue;
            }
            let key = &op.key;
            let Outcome::Refused { code, message } = &op.outcome else {
                unreachable!()
            };
            findings.push(format!(
                "(2) refused but applied: key {key} ({:?}, refused with {code:?}: {message}) is in revision {} (source={}, seen via {})",
                op.kind, r.1, source_of(r), seen.via
            ));
        }
    }

    // (5) Every source=file revision is the start file, an outside edit, or
    // the write in flight when the broker was killed, taken at its restart.
    let unknown_keys: HashSet<&str> = ops
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Unknown { .. }))
        .map(|op| op.key.as_str())
        .collect();
    let outside: HashSet<&str> = outside_edits.iter().map(|(_, s)| s.as_str()).collect();
    let mut recovered_writes = 0;
    let outcome_of: HashMap<&str, &str> = ops
        .iter()
        .map(|op| {
            let outcome = match op.outcome {
                Outcome::Acked { .. } => "acknowledged",
                Outcome::Refused { .. } => "refused",
                Outcome::Unknown { .. } => "outcome unknown",
            };
            (op.key.as_str(), outcome)
        })
        .collect();
    for (r, seen) in &ledger.seen {
        if seen.source.as_deref() != Some("file") {
            continue;
        }
        if (r.1 == 1 && seen.sha256 == start_sha256) || outside.contains(seen.sha256.as_str()) {
            continue;
        }
        let recovered = restarts.iter().any(|restart| {
            restart.rev == *r
                && restart.sha256 == seen.sha256
                && keys_of(&restart.json)
                    .iter()
                    .any(|k| unknown_keys.contains(k.as_str()))
        });
        if recovered {
            recovered_writes += 1;
            continue;
        }
        let about = match names_at(r) {
            Some(keys) => {
                let before = names_at(&(r.0.clone(), r.1 - 1));
                let mut parts = vec![format!("{} keys", keys.len())];
                if let Some(before) = before {
                    let mut dropped: Vec<&str> = before
                        .iter()
                        .filter(|k| !keys.contains(*k))
                        .map(|k| k.as_str())
                        .collect();
                    let mut added: Vec<String> = keys
                        .iter()
                        .filter(|k| !before.contains(*k))
                        .map(|k| {
                            format!(
                                "{k} ({})",
                                outcome_of
                                    .get(k.as_str())
                                    .copied()
                                    .unwrap_or("not written by a writer")
                            )
                        })
                        .collect();
                    dropped.sort();
                    added.sort();
                    parts.push(format!(
                        "against revision {}: dropped [{}], added [{}]",
                        r.1 - 1,
                        dropped.join(", "),
                        added.join(", ")
                    ));
                }
                let mut refused_in: Vec<&str> = keys
                    .iter()
                    .filter(|k| refused.contains_key(&key_hash(k)))
                    .map(|k| k.as_str())
                    .collect();
                refused_in.sort();
                if !refused_in.is_empty() {
                    parts.push(format!("holds refused key(s) {}", refused_in.join(", ")));
                }
                parts.join("; ")
            }
            None => "content not seen".into(),
        };
        findings.push(format!(
            "(5) own write reloaded: revision {} has source=file (sha256 {}, {about}) but is neither the start file nor an outside edit",
            r.1,
            short(&seen.sha256)
        ));
    }
    recovered_writes
}

/// The checker itself, on small made-up logs: it passes a clean history and
/// names each kind of broken promise.
mod checker {
    use super::*;

    const L: &str = "lineage-a";

    fn doc(json: &str) -> (String, Bytes) {
        let d = argsbroker::document::Document::parse(json.as_bytes()).unwrap();
        (d.sha256().to_owned(), d.json().clone())
    }

    fn rev(r: u64) -> Rev {
        (L.to_owned(), r)
    }

    /// A ledger from (revision, document, source).
    fn ledger(revisions: &[(u64, &str, &str)]) -> Ledger {
        let mut ledger = Ledger::default();
        for (r, json, source) in revisions {
            let (sha, bytes) = doc(json);
            ledger.observe(rev(*r), &sha, Some(bytes), Some(source), "test");
        }
        ledger
    }

    fn patch(key: &str, outcome: Outcome) -> Op {
        Op {
            key: key.into(),
            kind: Kind::Patch,
            set_sha256: None,
            outcome,
        }
    }

    fn acked(r: u64) -> Outcome {
        Outcome::Acked { rev: rev(r) }
    }

    fn findings(ledger: &Ledger, ops: &[Op], outside: &[(u64, String)]) -> Vec<String> {
        let last = ledger.seen.keys().next_back().unwrap().clone();
        let names = |r: &Rev| {
            let keys = ledger.seen[r].keys.as_ref().unwrap();
            let mut names: Vec<&str> = keys.iter().map(|h| ledger.names[h].as_str()).collect();
            names.sort();
            names
        };
        // The final document: the last revision, rebuilt from its keys.
        let json = format!(
            "{{{}}}",
            names(&last)
                .iter()
                .map(|k| format!("\"{k}\": 1"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let final_args = pb::Args {
            revision: last.1,
            json: json.into(),
            sha256: ledger.seen[&last].sha256.clone(),
            not_modified: false,
            lineage: L.into(),
        };
        let (start_sha, _) = doc(r#"{"start": 1}"#);
        let mut found = ledger.two_documents.clone();
        check(
            ledger,
            ops,
            outside,
            &[],
            (&start_sha, &last, &final_args),
            &mut found,
        );
        found
    }

    #[test]
    fn a_clean_history_passes() {
        let (set_sha, _) = doc(r#"{"set_by": "w0_3", "w0_3": 1}"#);
        let (edit_sha, _) = doc(r#"{"outside": 1}"#);
        let ledger = ledger(&[
            (1, r#"{"start": 1}"#, "file"),
            (2, r#"{"start": 1, "w0_1": 1}"#, "patch"),
            (3, r#"{"set_by": "w0_3", "w0_3": 1}"#, "set"),
            (4, r#"{"outside": 1}"#, "file"),
            (5, r#"{"outside": 1, "w1_1": 1}"#, "patch"),
        ]);
        let mut set = patch("w0_3", acked(3));
        set.kind = Kind::Set;
        set.set_sha256 = Some(set_sha);
        let ops = [
            patch("w0_1", acked(2)),
            set,
            patch("w1_1", acked(5)),
            patch("w1_2", Outcome::Unknown { why: "kill".into() }),
        ];
        assert_eq!(
            findings(&ledger, &ops, &[(1, edit_sha)]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn it_names_a_lost_key_and_the_revision_that_dropped_it() {
        let ledger = ledger(&[
            (1, r#"{"start": 1}"#, "file"),
            (2, r#"{"start": 1, "w0_1": 1}"#, "patch"),
            (3, r#"{"start": 1}"#, "file"),
            (4, r#"{"start": 1, "w1_1": 1}"#, "patch"),
        ]);
        let ops = [patch("w0_1", acked(2)), patch("w1_1", acked(4))];
        let found = findings(&ledger, &ops, &[]);
        assert!(
            found[0].starts_with("(1) lost: key w0_1 (acknowledged at revision 2) is missing from revision 3 (source=file"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("(5) own write reloaded: revision 3 has source=file"),
            "{found:?}"
        );
        assert!(found[1].contains("dropped [w0_1], added []"), "{found:?}");
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn it_names_a_refused_key_that_was_applied() {
        let ledger = ledger(&[
            (1, r#"{"start": 1}"#, "file"),
            (2, r#"{"start": 1, "w0_1": 1}"#, "file"),
        ]);
        let ops = [patch(
            "w0_1",
            Outcome::Refused {
                code: Code::Internal,
                message: "No space left on device".into(),
            },
        )];
        let found = findings(&ledger, &ops, &[]);
        assert!(
            found[0].starts_with("(2) refused but applied: key w0_1"),
            "{found:?}"
        );
        assert!(
            found[0].contains("is in revision 2 (source=file"),
            "{found:?}"
        );
        assert!(found[1].contains("holds refused key(s) w0_1"), "{found:?}");
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn it_names_a_revision_with_two_documents() {
        let mut ledger = ledger(&[(1, r#"{"start": 1}"#, "file")]);
        let (other, bytes) = doc(r#"{"other": 1}"#);
        ledger.observe(rev(1), &other, Some(bytes), None, "WatchArgs");
        let found = findings(&ledger, &[], &[]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("(3) revision 1 of lineage lineage-a names two documents"),
            "{found:?}"
        );
    }
}
