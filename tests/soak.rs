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
//! The writers, observers and checker are in tests/soak_check, shared with
//! the etcd soak (tests/soak_etcd.rs). `SOAK_SECONDS` (default 20) sets the
//! length, `SOAK_SEED` replays a schedule; `tests/soak SECONDS` runs it longer.
mod common;
mod faults;
mod soak_check;

use argsbroker::pb;
use bytes::Bytes;
use common::*;
use faults::*;
use soak_check::Outcome;
use soak_check::*;
use std::cell::RefCell;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::RwLock;
use tonic::Code;

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
    let enabled = enabled_faults([
        (Fault::KillBroker, "kill", 25),
        (Fault::Sighup, "sighup", 20),
        (Fault::OutsideEdit, "edit", 20),
        (Fault::DiskFull, "disk", 15),
        (Fault::KillWorker, "worker", 20),
    ]);
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
    // Held for the whole soak: a killed worker's replacement joins the same
    // port, which no other process can take meanwhile.
    let held: Vec<HeldPort> = (0..worker_count).map(|_| hold_port()).collect();
    let ports: Vec<u16> = held.iter().map(|h| h.port).collect();
    let mut workers: Vec<Proc> = ports
        .iter()
        .map(|&port| site.start_worker_on(port))
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
        std::thread::spawn(move || observe(&socket, &ledger, &stop, Duration::from_millis(100)))
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
                workers[i] = site.start_worker_on(ports[i]);
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
    let writes = tally(&ops);
    let lost = findings.iter().filter(|f| f.starts_with("(1)")).count();
    eprintln!(
        "soak figures (seed {seed}, {seconds} s, {worker_count} workers):\n  \
         writes: {writes} (unknown: connection broken by kill -9)\n  \
         faults: {} broker kill -9, {} SIGHUP, {} outside edits, {} full state disk (of which {} with a SIGHUP, {} with kill -9, {} with a restart on the full disk), {} worker kill -9\n  \
         revisions seen: {}, final revision {} (lineage {}); {recovered} write(s) in flight at a kill -9 taken at the restart\n  \
         lost = {lost}, findings = {}",
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
            sent: Instant::now(),
            answered: Instant::now(),
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
