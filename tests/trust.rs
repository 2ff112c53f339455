//! Focused regression tests for issue 11's promises, each with real binaries
//! and real faults: a reload (SIGHUP or --watch) racing writes loses no
//! acknowledged write and never "reloads" the broker's own write; a write
//! refused for a full disk changes nothing, on disk either.
mod common;
mod faults;

use argsbroker::pb;
use common::*;
use faults::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WRITERS: u64 = 4;
/// The broker's log filter in these tests: its own modules at debug, so an
/// unchanged file on SIGHUP is logged too (see `sighup_outcomes`).
const RELOAD_LOG: &str = "info,broker=debug";
const PATCHES_PER_WRITER: u64 = 150;
/// Each writer's cap when it keeps writing until the signals are all sent.
const MAX_PATCHES_PER_WRITER: u64 = 5_000;
/// Patches per writer in one burst of the --watch storm.
const WAVE: u64 = 5;

#[derive(Clone, Copy, Debug)]
enum Trigger {
    /// 10 SIGHUPs 70 ms apart while the writers write.
    Sighup,
    /// `--watch`: the broker's own writes are the file events; the writers
    /// write in waves with pauses, so the watcher's 50 ms settle ends while
    /// writes are coming in.
    Watch,
}

/// When each burst of the --watch storm starts. The broker's watcher wakes
/// at a burst's first file event, then reads the file at the first 50 ms
/// mark that had no event in the 50 ms before it. The pacer estimates that
/// mark from the burst's acknowledgements (each write renames the file just
/// before it is acknowledged) and starts the next burst a few ms before it,
/// so the reload reads the file while writes are in flight: the race of
/// issue 11, hit on purpose instead of by luck.
struct Pacer {
    barrier: std::sync::Barrier,
    state: std::sync::Mutex<PacerState>,
}

struct PacerState {
    rng: Rng,
    first_ack: Option<Instant>,
    last_ack: Option<Instant>,
    next_start: Instant,
}

impl Pacer {
    fn new(seed: u64) -> Self {
        Self {
            barrier: std::sync::Barrier::new(WRITERS as usize),
            state: std::sync::Mutex::new(PacerState {
                rng: Rng::new(seed),
                first_ack: None,
                last_ack: None,
                next_start: Instant::now(),
            }),
        }
    }

    fn acknowledged(&self) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        state.first_ack.get_or_insert(now);
        state.last_ack = Some(now);
    }

    /// Waits for every writer to finish the burst, then returns the next start.
    fn next_wave(&self, first: bool) -> Instant {
        if !first {
            if self.barrier.wait().is_leader() {
                let mut state = self.state.lock().unwrap();
                let (anchor, last) = (state.first_ack.take(), state.last_ack.take());
                if let (Some(anchor), Some(last)) = (anchor, last) {
                    let slot = Duration::from_millis(50);
                    // The first mark with a quiet slot before it, plus ~1 ms
                    // of timer lateness per slot slept.
                    let quiet_from = ((last - anchor).as_millis() as u32).div_ceil(50) + 1;
                    let mark =
                        anchor + slot * quiet_from + Duration::from_millis(quiet_from as u64);
                    let early = Duration::from_micros(state.rng.range(0, 7_000));
                    state.next_start = mark.checked_sub(early).unwrap_or(mark).max(Instant::now());
                }
            }
            self.barrier.wait();
        }
        self.state.lock().unwrap().next_start
    }
}

/// One acknowledged patch: its key, and the revision and sha256 the broker answered.
struct Ack {
    key: String,
    revision: u64,
    sha256: String,
}

/// A reload (SIGHUP) during a write storm: 4 writers × at least 150 patches
/// of distinct keys, 10 SIGHUPs 70 ms apart, 5 rounds.
#[test]
fn sighup_during_writes_loses_no_acknowledged_write() {
    reload_storm_rounds(Trigger::Sighup);
}

/// The same storm with `--watch`: the writes themselves make the file events.
#[test]
fn watch_during_writes_loses_no_acknowledged_write() {
    reload_storm_rounds(Trigger::Watch);
}

fn reload_storm_rounds(trigger: Trigger) {
    let seed = std::env::var("TRUST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(fresh_seed);
    eprintln!("{trigger:?} storm: seed {seed} (TRUST_SEED={seed} replays the write waves)");
    let mut failures = Vec::new();
    for round in 1..=5 {
        failures.extend(
            reload_storm(trigger, seed.wrapping_add(round))
                .into_iter()
                .map(|f| format!("round {round}: {f}")),
        );
    }
    let lost = failures.iter().filter(|f| f.contains("[lost]")).count();
    assert!(
        failures.is_empty(),
        "{trigger:?} racing writes: {lost} acknowledged write(s) lost, {} finding(s) in all (seed {seed}):\n{}",
        failures.len(),
        summarize(&failures, 15)
    );
}

/// One round; returns what went wrong, each naming the key, revision and invariant.
fn reload_storm(trigger: Trigger, seed: u64) -> Vec<String> {
    // In /dev/shm, where a write takes well under a millisecond: the storm
    // is quick, and the --watch bursts stay short enough for the watcher to
    // read the file between them.
    let site = Site::new_in(std::path::Path::new("/dev/shm"), r#"{"start": true}"#);
    let mut cmd = site.broker_cmd();
    cmd.args(["--history", "100000"])
        .env("RUST_LOG", RELOAD_LOG);
    if let Trigger::Watch = trigger {
        cmd.arg("--watch");
    }
    let broker = site.spawn_broker(cmd);
    let start = get_args(&site.socket());
    assert_eq!(start.revision, 1);

    let signalling = Arc::new(AtomicBool::new(matches!(trigger, Trigger::Sighup)));
    let t0 = Instant::now();
    let pacer = Arc::new(Pacer::new(seed));

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let socket = site.socket();
            let signalling = signalling.clone();
            let pacer = pacer.clone();
            std::thread::spawn(move || {
                grpc(|| async move {
                    let mut client = connect(&socket).await.expect("writer connects");
                    let mut acks = Vec::new();
                    for n in 0..MAX_PATCHES_PER_WRITER {
                        if n >= PATCHES_PER_WRITER && !signalling.load(Ordering::SeqCst) {
                            break;
                        }
                        if let (Trigger::Watch, 0) = (trigger, n % WAVE) {
                            let start = pacer.next_wave(n == 0);
                            tokio::time::sleep_until(start.into()).await;
                        }
                        let key = format!("w{w}_{n}");
                        let request = pb::PatchArgsRequest {
                            merge_patch: format!(r#"{{"{key}": {n}}}"#),
                            expected_revision: None,
                            ..Default::default()
                        };
                        match client.patch_args(request).await {
                            Ok(reply) => {
                                let reply = reply.into_inner();
                                pacer.acknowledged();
                                acks.push(Ack {
                                    key,
                                    revision: reply.revision,
                                    sha256: reply.sha256,
                                });
                            }
                            Err(status) => panic!(
                                "writer {w}: patch {key} refused with no fault injected: {status:?}"
                            ),
                        }
                    }
                    acks
                })
            })
        })
        .collect();

    if let Trigger::Sighup = trigger {
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(70));
            broker.signal(libc::SIGHUP);
        }
        signalling.store(false, Ordering::SeqCst);
    }
    let acks: Vec<Ack> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer thread"))
        .collect();
    if let Trigger::Sighup = trigger {
        // Signals sent close together may be taken as one: wait until no
        // reload is running, so the checks see its result.
        let (done, _) = eventually("the last SIGHUP reload to finish (a log line with 'reload', 'unchanged' or 'args file' after 'SIGHUP: reloading')", || {
            Some(sighup_outcomes(&broker.log())).filter(|(done, pending)| *done > 0 && !pending)
        });
        eprintln!(
            "  {} patches acknowledged, {done} SIGHUP reloads",
            acks.len()
        );
    } else {
        let log = broker.log();
        eprintln!(
            "  {} patches acknowledged in {:?}; the watcher read the file {} times",
            acks.len(),
            t0.elapsed(),
            log.matches("unchanged").count() + log.matches("reloaded the args file").count()
        );
    }

    check_reload_storm(&site, &acks)
}

fn check_reload_storm(site: &Site, acks: &[Ack]) -> Vec<String> {
    let mut failures = Vec::new();
    let last_ack = acks.iter().map(|a| a.revision).max().unwrap_or(1);
    let final_args = get_args(&site.socket());
    let history = replay_history(&site.socket(), final_args.revision);
    let by_revision: BTreeMap<u64, &pb::Args> = history.iter().map(|a| (a.revision, a)).collect();
    let sources: BTreeMap<u64, String> = list_revisions(&site.socket())
        .into_iter()
        .map(|r| (r.revision, r.source))
        .collect();
    let final_doc = object(&final_args.json);

    // (1) Every acknowledged key is in the final document; if not, name the
    // revision that dropped it.
    for ack in acks {
        let Some(at) = by_revision.get(&ack.revision) else {
            failures.push(format!(
                "[history] acknowledged revision {} (key {}) is not in the history",
                ack.revision, ack.key
            ));
            continue;
        };
        // (3) One revision, one document.
        if at.sha256 != ack.sha256 {
            failures.push(format!(
                "[two-documents] revision {} names two documents: acknowledged with sha256 {}, the history has {}",
                ack.revision, ack.sha256, at.sha256
            ));
        }
        if final_doc.contains_key(&ack.key) {
            continue;
        }
        let dropped_by = by_revision
            .range(ack.revision + 1..)
            .find(|(_, a)| !object(&a.json).contains_key(&ack.key))
            .map(|(r, _)| *r);
        failures.push(match dropped_by {
            Some(r) => format!(
                "[lost] key {} (acknowledged at revision {}) is missing from the final document (revision {}); revision {r} (source={}) dropped it",
                ack.key,
                ack.revision,
                final_args.revision,
                sources.get(&r).map_or("?", String::as_str)
            ),
            None => format!(
                "[lost] key {} (acknowledged at revision {}) is missing from the final document (revision {})",
                ack.key, ack.revision, final_args.revision
            ),
        });
    }
    // (5) The broker's own writes are never reloaded as a new revision: the
    // only source=file revision is the start file.
    for (revision, source) in &sources {
        if source == "file" && *revision != 1 {
            // What it took away from the revision before it.
            let dropped: Vec<String> =
                match (by_revision.get(&(revision - 1)), by_revision.get(revision)) {
                    (Some(before), Some(this)) => {
                        let this = object(&this.json);
                        object(&before.json)
                            .keys()
                            .filter(|k| !this.contains_key(*k))
                            .cloned()
                            .collect()
                    }
                    _ => Vec::new(),
                };
            failures.push(format!(
                "[own-write-reloaded] revision {revision} has source=file, but only the broker wrote the file; it dropped {} key(s) of revision {}: {}",
                dropped.len(),
                revision - 1,
                dropped.join(", ")
            ));
        }
    }
    if last_ack > final_args.revision {
        failures.push(format!(
            "[went-back] the final revision {} is older than the last acknowledged {last_ack}",
            final_args.revision
        ));
    }
    failures
}

/// A write refused because the state disk is full changes nothing: not the
/// served document, not the args file, not what a SIGHUP or a restart serves;
/// the error names the history path and says nothing was changed; once space
/// returns, the next write takes the next revision (no gap, no reuse).
#[test]
fn a_write_refused_for_a_full_state_disk_changes_nothing() {
    full_disk_refuses_and_changes_nothing(FullDisk::StateDir);
}

/// The same with the args file's own directory on the small tmpfs (and the
/// default state directory, `args.json.state`, beside it).
#[test]
fn a_write_refused_for_a_full_args_disk_changes_nothing() {
    full_disk_refuses_and_changes_nothing(FullDisk::ArgsDir);
}

#[derive(Clone, Copy, Debug)]
enum FullDisk {
    /// `--state-dir` on a 24 KiB tmpfs; the args file elsewhere.
    StateDir,
    /// The args file and its default state directory on a 24 KiB tmpfs.
    ArgsDir,
}

fn full_disk_refuses_and_changes_nothing(case: FullDisk) {
    let site = Site::new(r#"{"n": 0}"#);
    let mount = site.path("small");
    // Pages of 4 KiB: the args directory also holds the args file, its
    // lock and, while a write is in flight, the old file beside the new.
    let size = match case {
        FullDisk::StateDir => "24k",
        FullDisk::ArgsDir => "40k",
    };
    let disk = Tmpfs::mount(&mount, size);
    let (args_path, state) = match case {
        FullDisk::StateDir => (site.args(), mount.clone()),
        FullDisk::ArgsDir => {
            let args = mount.join("args.json");
            std::fs::copy(site.args(), &args).expect("copy the args file");
            (args, mount.join("args.json.state"))
        }
    };
    let broker_cmd = || {
        let mut cmd = std::process::Command::new(BROKER);
        cmd.arg("--args")
            .arg(&args_path)
            .arg("--socket")
            .arg(site.socket())
            .env("RUST_LOG", RELOAD_LOG);
        if let FullDisk::StateDir = case {
            cmd.arg("--state-dir").arg(&state);
        }
        cmd
    };
    let mut broker = site.spawn_broker(broker_cmd());
    let mut failures = Vec::new();

    // Write until the disk is full: the journal grows by a page every few writes.
    let pad = "x".repeat(1500);
    let patch = |n: u64| site.patch(&format!(r#"{{"n": {n}, "pad": "{pad}{n}"}}"#), None);
    let mut last_ack = get_args(&site.socket());
    let mut refused = None;
    for n in 1..=100 {
        match patch(n) {
            Ok(reply) => last_ack = reply,
            Err(status) => {
                refused = Some((n, status));
                break;
            }
        }
    }
    let (refused_n, status) = refused.expect("a small disk fills up within 100 writes");
    let refused_revision = last_ack.revision + 1;
    eprintln!(
        "{case:?}: patch n={refused_n} refused ({:?}: {}); last acknowledged: revision {}",
        status.0, status.1, last_ack.revision
    );
    assert!(
        last_ack.revision >= 2,
        "some writes fit before the disk was full"
    );

    // The message names the path and the cause, and says nothing changed:
    // the journal, or on the args disk the new args file if that is what
    // did not fit (it is written beside the old one before the commit).
    let refused = format!("patch n={refused_n}");
    let journal = state.join("journal");
    let mut expected = vec![save_refused(
        refused_revision,
        &journal,
        "No space left on device",
    )];
    if let FullDisk::ArgsDir = case {
        expected.push(save_refused(
            refused_revision,
            &args_path,
            "No space left on device",
        ));
    }
    check_refusal(&status, &expected, &refused, &mut failures);

    // What the broker serves and what the file holds: the last acknowledged document.
    let serves = |when: &str, failures: &mut Vec<String>| {
        check_serves(&site.socket(), &last_ack, when, &refused, failures)
    };
    let file_holds = |when: &str, failures: &mut Vec<String>| {
        check_file_holds(&args_path, &last_ack, when, &refused, failures)
    };
    serves("after the refusal", &mut failures);
    file_holds("after the refusal", &mut failures);

    // A restart while the disk is still full serves the last acknowledged document.
    broker.signal(libc::SIGKILL);
    broker.wait();
    drop(broker);
    let broker = match try_start_broker(&site, broker_cmd()) {
        Ok(b) => {
            serves(
                "after kill -9 and a restart on the full disk",
                &mut failures,
            );
            Some(b)
        }
        Err(log) => {
            failures.push(format!(
                "the broker cannot restart on the full disk (it has nothing new to record): {log}"
            ));
            None
        }
    };

    // Space returns: a SIGHUP and a restart still serve the last acknowledged document.
    disk.resize("1m");
    let (mut broker, when) = match broker {
        Some(b) => (b, "after space returned and a SIGHUP"),
        None => (
            site.spawn_broker(broker_cmd()),
            "after space returned, a start and a SIGHUP",
        ),
    };
    sighup_and_wait(&broker);
    serves(when, &mut failures);
    file_holds(when, &mut failures);
    broker.signal(libc::SIGKILL);
    broker.wait();
    drop(broker);
    let _broker = site.spawn_broker(broker_cmd());
    serves(
        "after space returned and kill -9 and a restart",
        &mut failures,
    );

    // The next write takes the next revision: no gap, no reuse.
    match patch(refused_n + 1) {
        Ok(reply) if reply.revision == refused_revision => {}
        Ok(reply) => failures.push(format!(
            "the first write after space returned got revision {}, not {refused_revision} (the last acknowledged was {})",
            reply.revision, last_ack.revision
        )),
        Err(status) => failures.push(format!(
            "the first write after space returned was refused: {status:?}"
        )),
    }
    for r in list_revisions(&site.socket()) {
        if r.source == "file" && r.revision != 1 {
            failures.push(format!(
                "revision {} has source=file: the broker took its own (refused) write back from args.json",
                r.revision
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{case:?}: a write refused for a full disk changed things:\n{}",
        failures.join("\n")
    );
}

/// How many SIGHUP reloads the broker's log shows finished, and whether one
/// is still running. A reload starts with the line `SIGHUP: reloading the
/// args file`; its outcome is the next line that mentions a reload, an
/// unchanged file or the args file (`reloaded the args file`, `not reloaded,
/// ...`, and at debug `the args file is unchanged`). If the broker's wording
/// changes, change it here: a wait that times out names these words.
fn sighup_outcomes(log: &str) -> (usize, bool) {
    let (mut done, mut pending) = (0, false);
    for line in log.lines() {
        if line.contains("SIGHUP: reloading") {
            pending = true;
        } else if pending
            && ["reload", "unchanged", "args file"]
                .iter()
                .any(|w| line.contains(w))
        {
            done += 1;
            pending = false;
        }
    }
    (done, pending)
}

/// Sends SIGHUP and waits until the broker logged the outcome of that reload.
fn sighup_and_wait(broker: &Proc) {
    let (before, _) = sighup_outcomes(&broker.log());
    broker.signal(libc::SIGHUP);
    eventually("the broker to log the outcome of the SIGHUP (a line with 'reload', 'unchanged' or 'args file' after 'SIGHUP: reloading')", || {
        Some(()).filter(|_| sighup_outcomes(&broker.log()).0 > before)
    });
}

/// A write whose fsync fails changes nothing, and a write makes exactly one
/// fsync (the journal's, its commit): strace attaches to the running broker
/// and makes the 1st fsync after it fail with EIO (the write is refused),
/// then the 2nd (the write, having made one, is acknowledged).
#[test]
fn a_write_whose_fsync_fails_changes_nothing() {
    require_root("attaching strace to the broker");
    let site = Site::new(r#"{"n": 0}"#);
    let broker_cmd = || {
        let mut cmd = site.broker_cmd();
        cmd.env("RUST_LOG", RELOAD_LOG);
        cmd
    };
    let mut broker = site.spawn_broker(broker_cmd());
    let patch = |n: u64| site.patch(&format!(r#"{{"n": {n}}}"#), None);
    let mut last_ack = patch(1).expect("a write with no fault");
    let mut failures = Vec::new();
    let mut n = 1;
    for step in 1..=2 {
        n += 1;
        let trace = site.path(&format!("strace-{step}.out"));
        let strace = Strace::attach(broker.pid(), step, &trace);
        let result = patch(n);
        strace.detach(broker.pid());
        let injected = std::fs::read_to_string(&trace)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains("INJECTED"))
            .map(str::to_owned);
        let status = match (result, injected) {
            (Ok(reply), None) if step > 1 => {
                eprintln!("fsync {step}: the write made fewer than {step} fsyncs; acknowledged");
                last_ack = reply;
                continue;
            }
            (Ok(reply), None) => {
                failures.push(format!(
                    "patch n={n} made no fsync, yet was acknowledged at revision {}",
                    reply.revision
                ));
                last_ack = reply;
                continue;
            }
            (Ok(reply), Some(line)) => {
                failures.push(format!(
                    "fsync {step} of the write failed ({line}), but patch n={n} was acknowledged at revision {}",
                    reply.revision
                ));
                last_ack = reply;
                continue;
            }
            (Err(status), _) => status,
        };
        eprintln!("fsync {step}: patch n={n} refused: {}", status.1);
        if step > 1 {
            failures.push(format!(
                "patch n={n} made {step} fsyncs (the fsync {step} after the attach failed and refused it: {}); a commit makes one",
                status.1
            ));
        }
        // The one fsync of a write is the journal's: the commit.
        let revision = last_ack.revision + 1;
        let path = site.path("args.json.state/journal");
        let expected = [save_refused(revision, &path, "Input/output error")];
        let refused = format!("fsync {step}: patch n={n}");
        check_refusal(&status, &expected, &refused, &mut failures);
        let check = |when: &str, failures: &mut Vec<String>| {
            check_serves(&site.socket(), &last_ack, when, &refused, failures);
            check_file_holds(&site.args(), &last_ack, when, &refused, failures);
            get_args(&site.socket())
        };
        check("after the refusal", &mut failures);
        sighup_and_wait(&broker);
        check("after a SIGHUP", &mut failures);
        broker.signal(libc::SIGKILL);
        broker.wait();
        broker = site.spawn_broker(broker_cmd());
        let now = check("after kill -9 and a restart", &mut failures);
        // Carry on from what is served, so each step is judged on its own.
        last_ack = now;
    }
    match patch(1000) {
        Ok(reply) if reply.revision == last_ack.revision + 1 => {}
        Ok(reply) => failures.push(format!(
            "the next write got revision {}, not {}",
            reply.revision,
            last_ack.revision + 1
        )),
        Err(status) => failures.push(format!("the next write was refused: {status:?}")),
    }
    assert!(
        failures.is_empty(),
        "a write whose fsync failed changed things:\n{}",
        failures.join("\n")
    );
}

/// strace attached to a running process, failing its `nth` fsync (counted
/// per thread from the attach) with EIO.
struct Strace(Proc);

impl Strace {
    fn attach(pid: i32, nth: u32, out: &std::path::Path) -> Self {
        let mut cmd = std::process::Command::new("strace");
        cmd.args(["-f", "-qq", "-e", "trace=fsync,fdatasync"])
            .arg("-e")
            .arg(format!("inject=fsync,fdatasync:error=EIO:when={nth}"))
            .arg("-o")
            .arg(out)
            .arg("-p")
            .arg(pid.to_string());
        let log = out.with_extension("log");
        assert!(
            std::process::Command::new("strace")
                .arg("-V")
                .output()
                .is_ok_and(|o| o.status.success()),
            "this test needs strace (tests/run installs it: apt-get install strace)"
        );
        let mut strace = Proc::spawn(cmd, log);
        let tracer = strace.pid();
        eventually("strace to attach to every thread of the broker", || {
            assert!(strace.is_running(), "strace exited: {}", strace.log());
            Some(()).filter(|_| tracer_pids(pid).iter().all(|t| *t == tracer))
        });
        Self(strace)
    }

    fn detach(mut self, pid: i32) {
        self.0.stop();
        eventually("strace to detach from the broker", || {
            Some(()).filter(|_| tracer_pids(pid).iter().all(|t| *t == 0))
        });
    }
}

/// A write refused because the args file's directory cannot be written
/// (mode 0500; the broker runs as uid 65534, so the mode binds it: the new
/// args file cannot be staged beside the old) changes nothing: not what is
/// served, not the args file, not what a SIGHUP or a restart serves; once
/// the mode is back, the next write takes the next revision.
#[test]
fn a_write_refused_for_an_unwritable_args_directory_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    require_root("running the broker as uid 65534");
    let site = Site::new(r#"{"n": 0}"#);
    open_dir(site.dir.path());
    std::os::unix::fs::chown(site.dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    // The args file in a directory of its own; the socket stays outside it.
    let conf = site.path("conf");
    std::fs::create_dir(&conf).unwrap();
    let args = conf.join("args.json");
    std::fs::rename(site.args(), &args).unwrap();
    std::os::unix::fs::chown(&conf, Some(NOBODY), Some(NOBODY)).unwrap();
    std::os::unix::fs::chown(&args, Some(NOBODY), Some(NOBODY)).unwrap();
    let binary = site.broker_copy();
    let broker_cmd = || {
        let mut cmd = std::process::Command::new(&binary);
        cmd.arg("--args")
            .arg(&args)
            .arg("--socket")
            .arg(site.socket())
            .env("RUST_LOG", RELOAD_LOG)
            .uid(NOBODY)
            .gid(NOBODY);
        cmd
    };
    let mut broker = site.spawn_broker(broker_cmd());
    let patch = |n: u64| site.patch(&format!(r#"{{"n": {n}}}"#), None);
    let last_ack = patch(1).expect("a write with the args directory writable");
    let chmod = |mode| {
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(mode))
            .expect("chmod the args directory")
    };
    chmod(0o500);
    let status = patch(2).expect_err("a write with the args directory mode 0500");
    eprintln!("patch n=2 refused: {}", status.1);
    let mut failures = Vec::new();
    let expected = [save_refused(
        last_ack.revision + 1,
        &args,
        "Permission denied",
    )];
    check_refusal(&status, &expected, "patch n=2", &mut failures);
    let check = |when: &str, failures: &mut Vec<String>| {
        check_serves(&site.socket(), &last_ack, when, "patch n=2", failures);
        check_file_holds(&args, &last_ack, when, "patch n=2", failures);
    };
    check("after the refusal", &mut failures);
    sighup_and_wait(&broker);
    check("after a SIGHUP", &mut failures);
    broker.signal(libc::SIGKILL);
    broker.wait();
    drop(broker);
    match try_start_broker(&site, broker_cmd()) {
        Ok(b) => {
            broker = b;
            check("after kill -9 and a restart", &mut failures);
        }
        Err(log) => {
            failures.push(format!(
                "the broker cannot restart with the args directory mode 0500 (it has nothing new to record): {log}"
            ));
            chmod(0o700);
            broker = site.spawn_broker(broker_cmd());
            check("after the mode was restored and a restart", &mut failures);
        }
    }
    chmod(0o700);
    match patch(3) {
        Ok(reply) if reply.revision == last_ack.revision + 1 => {}
        Ok(reply) => failures.push(format!(
            "the first write after the mode was restored got revision {}, not {}",
            reply.revision,
            last_ack.revision + 1
        )),
        Err(status) => failures.push(format!(
            "the first write after the mode was restored was refused: {status:?}"
        )),
    }
    drop(broker);
    assert!(
        failures.is_empty(),
        "a write refused for an unwritable args directory changed things:\n{}",
        failures.join("\n")
    );
}
