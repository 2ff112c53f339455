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
//!    a write in flight when the broker was killed, recovered at its restart);
//! 6. after a kill -9 at the file engine's crash points (a commit held
//!    between its journal append and its fdatasync, the args file's rename
//!    held after the commit, a torn last journal record put there before the
//!    restart), the broker starts and serves the journal's last whole record
//!    (or the next revision, for an outside edit it had not taken yet), says
//!    in its log that it cut the torn record off or rewrote the args file,
//!    and no torn record's document is ever a revision.
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
    /// kill -9 while a commit is held between its journal append and its fdatasync.
    KillInCommit,
    /// kill -9, then a torn last record appended to the journal before the restart.
    TornRecord,
    /// kill -9 while the args file's rename is held after the commit.
    KillBeforeRename,
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
    /// KillInCommit: how many, how many were killed inside the fdatasync
    /// (strace says so), and of those how many had the un-synced append cut
    /// off the journal (as a power loss would) or cut inside it (torn).
    in_commit: u64,
    in_commit_caught: u64,
    in_commit_append_lost: u64,
    in_commit_append_torn: u64,
    /// TornRecord: how many, by shape (a short header, a frame cut short, a
    /// whole frame with a wrong CRC, zeros: the file made longer by a
    /// crash, the data never written).
    torn: u64,
    torn_short_header: u64,
    torn_cut_frame: u64,
    torn_bad_crc: u64,
    torn_zeros: u64,
    /// KillBeforeRename: how many, how many killed inside the rename.
    before_rename: u64,
    before_rename_caught: u64,
    /// Restarts whose broker rewrote the args file from the journal.
    args_rewritten: u64,
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
    // SOAK_FAULTS=kill,sighup,edit,disk,worker,fsync,torn,rename (the
    // default: all) narrows the schedule.
    let enabled = enabled_faults([
        (Fault::KillBroker, "kill", 25),
        (Fault::Sighup, "sighup", 20),
        (Fault::OutsideEdit, "edit", 20),
        (Fault::DiskFull, "disk", 15),
        (Fault::KillWorker, "worker", 20),
        (Fault::KillInCommit, "fsync", 15),
        (Fault::TornRecord, "torn", 10),
        (Fault::KillBeforeRename, "rename", 10),
    ]);
    eprintln!("soak: faults {enabled:?}");

    let start_json = r#"{"start": true}"#;
    let site = Site::new_in(Path::new("/dev/shm"), start_json);
    let start_sha256 = argsbroker::document::Document::parse(start_json.as_bytes())
        .unwrap()
        .sha256()
        .to_owned();
    let state = site.path("state");
    let journal = state.join("journal");
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
        let fault = pick(&mut rng, &enabled);
        match fault {
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
            Fault::KillInCommit | Fault::KillBeforeRename => {
                let in_commit = matches!(fault, Fault::KillInCommit);
                // Every call of the syscall is held this long at its entry: the
                // commit thread is nearly always inside one.
                let delay_us = rng.range(300_000, 900_000);
                let (traced, delayed, held, with) = if in_commit {
                    faults.in_commit += 1;
                    ("pwrite64,fdatasync", "fdatasync", "fdatasync", "")
                } else {
                    faults.before_rename += 1;
                    // Only the staged args file's rename (not a compaction's).
                    (
                        "rename,renameat,renameat2",
                        "rename,renameat,renameat2",
                        "rename",
                        ".tmp\"",
                    )
                };
                let Some(tid) = thread_named(broker.pid(), "commit") else {
                    findings.push("(6) the broker has no thread named commit".into());
                    break;
                };
                let trace = site
                    .fresh_log(if in_commit {
                        "strace-fsync"
                    } else {
                        "strace-rename"
                    })
                    .with_extension("trace");
                let strace =
                    DelayedSyscalls::attach(broker.pid(), tid, traced, delayed, delay_us, &trace);
                // Writes run into it; a moment more lets others queue behind.
                if strace
                    .wait_held_in(held, with, Duration::from_secs(3))
                    .is_some()
                {
                    std::thread::sleep(Duration::from_micros(rng.range(0, delay_us / 3)));
                }
                let lose = rng.range(0, 3);
                let cut_at = rng.next_u64();
                let mut expect = None;
                let mut strace = Some(strace);
                let restarted = kill_and_restart(&mut broker, &restarter, &mut || {
                    let lines = strace.take().expect("once").finish();
                    let caught = killed_in(&lines, held).is_some();
                    if in_commit && caught {
                        faults.in_commit_caught += 1;
                        // The append was never fsynced: a power loss could
                        // take it (lose = 1) or part of it (lose = 2).
                        let now = JournalState::read(&journal);
                        match (lose, last_pwrite(&lines)) {
                            (1, Some((offset, len))) if offset + len == now.len => {
                                faults.in_commit_append_lost += 1;
                                cut_journal(&journal, offset);
                            }
                            (2, Some((offset, len))) if offset + len == now.len && len > 1 => {
                                faults.in_commit_append_torn += 1;
                                cut_journal(&journal, offset + 1 + cut_at % (len - 1));
                            }
                            _ => {}
                        }
                    } else if caught {
                        faults.before_rename_caught += 1;
                    }
                    let expected = Expect::of(&journal, &site.args());
                    if caught && !in_commit && !expected.rewrite {
                        findings.push(format!(
                            "(6) kill -9 in the args file's rename, yet the args file left behind is not older than the journal's last commit (revision {})",
                            expected.revision
                        ));
                    }
                    expect = Some(expected);
                });
                let what = if in_commit {
                    "kill -9 in a commit's fdatasync"
                } else {
                    "kill -9 in the args file's rename"
                };
                match restarted {
                    Ok(()) => check_restart(
                        what,
                        expect.as_ref(),
                        &restarts.borrow(),
                        &broker,
                        &mut faults,
                        &mut findings,
                    ),
                    Err(log) => {
                        findings.push(format!(
                            "(6) the broker could not restart after {what}: {log}"
                        ));
                        break;
                    }
                }
            }
            Fault::TornRecord => {
                faults.torn += 1;
                let i = faults.torn;
                let shape = rng.range(0, 100);
                let cut_at = rng.next_u64();
                let mut expect = None;
                let restarted = kill_and_restart(&mut broker, &restarter, &mut || {
                    let before = JournalState::read(&journal);
                    if before.whole != before.len || before.damaged.is_some() {
                        // The kill itself tore it: recovered as it is.
                        expect = Some(Expect::of(&journal, &site.args()));
                        return;
                    }
                    let revision = before.records.last().map_or(1, |r| r.0) + 1;
                    let frame = journal_frame(torn_record(i, revision).as_bytes());
                    let torn = match shape {
                        0..15 => {
                            faults.torn_short_header += 1;
                            frame[..1 + (cut_at % 7) as usize].to_vec()
                        }
                        15..55 => {
                            faults.torn_cut_frame += 1;
                            frame[..8 + (cut_at % (frame.len() as u64 - 8)) as usize].to_vec()
                        }
                        55..70 => {
                            // The file made longer, the data never written.
                            faults.torn_zeros += 1;
                            vec![0; 1 + (cut_at % 4096) as usize]
                        }
                        _ => {
                            faults.torn_bad_crc += 1;
                            let mut frame = frame;
                            frame[4 + (cut_at % 4) as usize] ^= 1 << (cut_at % 8 / 2);
                            frame
                        }
                    };
                    let mut file = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&journal)
                        .expect("open the journal to tear it");
                    file.write_all(&torn).expect("append a torn record");
                    expect = Some(Expect::of(&journal, &site.args()));
                });
                match restarted {
                    Ok(()) => check_restart(
                        "kill -9 and a torn last journal record",
                        expect.as_ref(),
                        &restarts.borrow(),
                        &broker,
                        &mut faults,
                        &mut findings,
                    ),
                    Err(log) => {
                        findings.push(format!(
                            "(6) the broker could not restart after kill -9 and a torn last journal record: {log}"
                        ));
                        break;
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
    // (6) No torn record's document is a revision.
    for (r, seen) in &ledger.seen {
        let torn: Vec<&str> = seen
            .keys
            .iter()
            .flat_map(|keys| keys.iter())
            .map(|h| ledger.names[h].as_str())
            .filter(|k| k.starts_with("torn_"))
            .collect();
        if !torn.is_empty() {
            findings.push(format!(
                "(6) torn record applied: revision {} (seen via {}) holds {}",
                r.1,
                seen.via,
                torn.join(", ")
            ));
        }
    }
    check_workers(&ledger, &served, &final_rev.0, &mut findings);
    let recovered = check(
        &ledger,
        &ops,
        &outside_edits,
        &restarts.borrow(),
        ((1, &start_sha256), &final_rev, &final_args),
        &mut findings,
    );

    // The figures.
    let writes = tally(&ops);
    let lost = findings.iter().filter(|f| f.starts_with("(1)")).count();
    eprintln!(
        "soak figures (seed {seed}, {seconds} s, {worker_count} workers):\n  \
         writes: {writes} (unknown: connection broken by kill -9)\n  \
         faults: {} broker kill -9, {} SIGHUP, {} outside edits, {} full state disk (of which {} with a SIGHUP, {} with kill -9, {} with a restart on the full disk), {} worker kill -9\n  \
         crash points: {} kill -9 in a commit's fdatasync ({} caught there by strace; then the un-synced append cut off {} times, cut inside {} times), {} torn last journal records ({} short header, {} frame cut short, {} whole frame with a wrong CRC, {} zeros), {} kill -9 in the args file's rename ({} caught there); the args file rewritten from the journal at {} restarts\n  \
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
        faults.in_commit,
        faults.in_commit_caught,
        faults.in_commit_append_lost,
        faults.in_commit_append_torn,
        faults.torn,
        faults.torn_short_header,
        faults.torn_cut_frame,
        faults.torn_bad_crc,
        faults.torn_zeros,
        faults.before_rename,
        faults.before_rename_caught,
        faults.args_rewritten,
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

/// What a broker restarted on a killed broker's state must serve, read from
/// the journal and the args file left behind (as the file engine opens them).
struct Expect {
    revision: u64,
    sha256: String,
    /// Bytes of a torn last frame the broker must say it cut off.
    torn: u64,
    /// The args file is older than the journal's last commit: the broker
    /// must say it rewrites it.
    rewrite: bool,
    /// A bad frame with whole frames after it: the broker must refuse it.
    damaged: Option<u64>,
}

impl Expect {
    fn of(journal: &Path, args: &Path) -> Self {
        let state = JournalState::read(journal);
        let (revision, sha256, unix_millis) = state.records.last().cloned().unwrap_or_default();
        let file = file_document(args).expect("the args file left behind parses");
        let modified_millis = std::fs::metadata(args)
            .and_then(|m| m.modified())
            .map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64)
            .expect("the args file's mtime");
        let committed = state.records.iter().any(|r| r.1 == file.sha256());
        let (revision, sha256, rewrite) = if file.sha256() == sha256 {
            (revision, sha256, false)
        } else if state.replaced.as_deref() == Some(file.sha256())
            || (committed && modified_millis <= unix_millis)
        {
            // Left behind by a crash between the commit and the rename.
            (revision, sha256, true)
        } else {
            // Changed after the last commit: an outside edit not taken yet.
            (revision + 1, file.sha256().to_owned(), false)
        };
        Self {
            revision,
            sha256,
            torn: state.len - state.whole,
            rewrite,
            damaged: state.damaged,
        }
    }
}

/// (6) The broker restarted after `what` serves what `expect` says, and its
/// log says what it repaired.
fn check_restart(
    what: &str,
    expect: Option<&Expect>,
    restarts: &[Restart],
    broker: &Proc,
    faults: &mut Faults,
    findings: &mut Vec<String>,
) {
    let (Some(expect), Some(restart)) = (expect, restarts.last()) else {
        findings.push(format!(
            "(6) after {what}: nothing to check the restart against"
        ));
        return;
    };
    if let Some(offset) = expect.damaged {
        findings.push(format!(
            "(6) after {what}: the journal was damaged at byte {offset} (a bad frame with whole frames after it), yet the broker started"
        ));
    }
    if (restart.rev.1, restart.sha256.as_str()) != (expect.revision, expect.sha256.as_str()) {
        findings.push(format!(
            "(6) after {what}: the broker serves revision {} (sha256 {}), not the journal's last whole record: revision {} (sha256 {})",
            restart.rev.1,
            short(&restart.sha256),
            expect.revision,
            short(&expect.sha256)
        ));
    }
    let log = broker.log();
    if expect.torn > 0 {
        let said = log.lines().any(|l| {
            l.contains("cut short by a crash") && l.contains(&format!("cut={}", expect.torn))
        });
        if !said {
            findings.push(format!(
                "(6) after {what}: the journal ended in a torn record of {} bytes, but the broker's log does not say it cut it off:\n{}",
                expect.torn,
                log.trim()
            ));
        }
    }
    if expect.rewrite {
        faults.args_rewritten += 1;
        if !log.contains("the args file is older than the journal's last revision") {
            findings.push(format!(
                "(6) after {what}: the args file was older than the journal's last commit, but the broker's log does not say it rewrote it:\n{}",
                log.trim()
            ));
        }
    }
}

/// Cuts the journal to `len` bytes (what a power loss can leave of an
/// append that was never fsynced).
fn cut_journal(journal: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(journal)
        .and_then(|f| f.set_len(len))
        .expect("cut the journal");
}

/// A journal record (as broker/storage/file/history.rs writes them) of
/// revision `revision` whose document holds the key `torn_<i>`: torn, it
/// must never be served.
fn torn_record(i: u64, revision: u64) -> String {
    let json = format!(r#"{{"torn": {i}, "torn_{i}": 1}}"#);
    let document = argsbroker::document::Document::parse(json.as_bytes()).unwrap();
    let unix_millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!(
        r#"{{"revision":{revision},"unix_millis":{unix_millis},"sha256":"{}","writer_uid":null,"source":"set","document":{}}}"#,
        document.sha256(),
        String::from_utf8_lossy(document.json())
    )
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
            ((1, &start_sha), &last, &final_args),
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
