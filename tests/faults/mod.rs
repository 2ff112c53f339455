//! Fault helpers for trust.rs and soak.rs: a tmpfs mounted by the test (so a
//! full disk is a real ENOSPC), a seeded RNG, and readers of the broker's
//! history (ListRevisions, and the documents themselves by a WatchArgs replay).
#![allow(dead_code)]

use crate::common::*;
use argsbroker::pb;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub type Client = pb::args_broker_client::ArgsBrokerClient<tonic::transport::Channel>;

/// A tmpfs of a given size mounted on a directory by the test (which runs as
/// root), unmounted when dropped, also when the test fails.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as mount(8) takes it: "24k", "1m") on `path`, created 0700.
    pub fn mount(path: &Path, size: &str) -> Self {
        require_root("mounting a tmpfs for a real full disk");
        std::fs::create_dir_all(path).expect("create the mount point");
        let tmpfs = Self {
            path: path.to_path_buf(),
        };
        tmpfs.call_mount(size, 0);
        tmpfs
    }

    /// Changes the size of the mounted tmpfs (a full disk gets room again).
    pub fn resize(&self, size: &str) {
        self.call_mount(size, libc::MS_REMOUNT);
    }

    fn call_mount(&self, size: &str, flags: libc::c_ulong) {
        let target = CString::new(self.path.as_os_str().as_bytes()).expect("path");
        let options = CString::new(format!("size={size},mode=0700")).expect("options");
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                flags,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount -t tmpfs -o size={size} on {}: {}",
            self.path.display(),
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.path.as_os_str().as_bytes()).expect("path");
        // SAFETY: umount2(2) on the directory this guard mounted. MNT_DETACH:
        // a process still holding a file there cannot keep it mounted.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A small seeded RNG (splitmix64): a seed printed by a test replays its run.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }

    /// True with probability `percent` in 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// A seed from the clock, for a run that is not a replay.
pub fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

pub async fn connect(socket: &Path) -> Option<Client> {
    argsbroker::client::connect(socket).await.ok()
}

/// The broker's retained revisions (ListRevisions), oldest first.
pub fn list_revisions(socket: &Path) -> Vec<pb::Revision> {
    grpc(|| async {
        connect(socket)
            .await
            .expect("connect for ListRevisions")
            .list_revisions(pb::ListRevisionsRequest {})
            .await
            .expect("ListRevisions")
            .into_inner()
            .revisions
    })
}

/// Every retained revision's document, oldest first, up to and including
/// `last`: a WatchArgs replay from revision 0 (the broker must retain all of
/// them: run it with a large --history).
pub fn replay_history(socket: &Path, last: u64) -> Vec<pb::Args> {
    grpc(|| async {
        let mut stream = connect(socket)
            .await
            .expect("connect for the replay")
            .watch_args(pb::WatchArgsRequest {
                start_revision: Some(0),
            })
            .await
            .expect("WatchArgs")
            .into_inner();
        let mut got = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        while got.last().is_none_or(|a: &pb::Args| a.revision < last) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.message()).await {
                Ok(Ok(Some(args))) => got.push(args),
                other => panic!(
                    "the history replay stopped before revision {last} ({} revisions read): {other:?}",
                    got.len()
                ),
            }
        }
        got
    })
}

/// The top-level object of a document.
pub fn object(json: &[u8]) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_slice(json) {
        Ok(serde_json::Value::Object(map)) => map,
        other => panic!(
            "not a JSON object ({other:?}): {}",
            String::from_utf8_lossy(json)
        ),
    }
}

/// The lowercase hex SHA-256 of `bytes` (what `Args.sha256` is of the compact text).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The compact text and sha256 of the args file as it is on disk.
pub fn file_document(path: &Path) -> Result<argsbroker::document::Document, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    argsbroker::document::Document::parse(&bytes)
        .map_err(|e| format!("{} does not parse: {e}", path.display()))
}

/// Starts a broker on `site` and waits until it answers, or returns its log
/// if it exits first (a broker that cannot start is a finding, not a panic).
pub fn try_start_broker(site: &Site, cmd: Command) -> Result<Proc, String> {
    let mut proc = Proc::spawn(cmd, site.fresh_log("broker"));
    let deadline = Instant::now() + PATIENCE;
    loop {
        if !proc.is_running() {
            return Err(format!("the broker exited: {}", proc.log().trim()));
        }
        if grpc(|| async { connect(&site.socket()).await.is_some() }) {
            return Ok(proc);
        }
        if Instant::now() > deadline {
            return Err(format!("the broker did not answer within {PATIENCE:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Writes `json` over `path` the way deploy tools do: a temp file in the
/// same directory, then a rename over it.
pub fn write_by_rename(path: &Path, json: &str) {
    let tmp = path.with_extension("deploy-tmp");
    std::fs::write(&tmp, json).expect("write the deploy temp file");
    std::fs::rename(&tmp, path).expect("rename over the args file");
}

/// Findings grouped by their tag (the first word that starts with `(` or
/// `[`, e.g. `(1)` or `[lost]`): a count per group, then at most
/// `per_group` of each, so that one flood does not hide the others.
pub fn summarize(findings: &[String], per_group: usize) -> String {
    let mut groups: std::collections::BTreeMap<&str, Vec<&String>> = Default::default();
    for f in findings {
        let tag = f
            .split_whitespace()
            .find(|w| w.starts_with('(') || w.starts_with('['))
            .unwrap_or("");
        groups.entry(tag).or_default().push(f);
    }
    let counts: Vec<String> = groups
        .iter()
        .map(|(tag, fs)| format!("{tag} {}", fs.len()))
        .collect();
    let mut out = format!("by kind: {}", counts.join(", "));
    for fs in groups.values() {
        for f in fs.iter().take(per_group) {
            out.push('\n');
            out.push_str(f);
        }
        if fs.len() > per_group {
            out.push_str(&format!(
                "\n  ... and {} more like it",
                fs.len() - per_group
            ));
        }
    }
    out
}

/// Records in `failures` when the broker at `socket` does not serve `ack`,
/// the last acknowledged document (`when`: after what; `refused`: which
/// write was refused).
pub fn check_serves(
    socket: &Path,
    ack: &pb::Args,
    when: &str,
    refused: &str,
    failures: &mut Vec<String>,
) {
    let now = get_args(socket);
    if (now.revision, &now.sha256) != (ack.revision, &ack.sha256) {
        failures.push(format!(
            "{when}: the broker serves revision {} (n={}), not the last acknowledged revision {} (n={}); {refused} was refused",
            now.revision,
            object(&now.json)["n"],
            ack.revision,
            object(&ack.json)["n"]
        ));
    }
}

/// Records in `failures` when the args file at `args` does not hold `ack`.
pub fn check_file_holds(
    args: &Path,
    ack: &pb::Args,
    when: &str,
    refused: &str,
    failures: &mut Vec<String>,
) {
    match file_document(args) {
        Ok(doc) if doc.sha256() == ack.sha256 => {}
        Ok(doc) => failures.push(format!(
            "{when}: args.json holds n={} (sha256 {}), not the last acknowledged revision {} (n={}); {refused} was refused",
            object(doc.json())["n"],
            &doc.sha256()[..12],
            ack.revision,
            object(&ack.json)["n"]
        )),
        Err(err) => failures.push(format!("{when}: {err}")),
    }
}

/// Records in `failures` when a refusal (code, message) is not INTERNAL
/// with one of `expected`.
pub fn check_refusal(
    (code, message): &(tonic::Code, String),
    expected: &[String],
    refused: &str,
    failures: &mut Vec<String>,
) {
    if *code != tonic::Code::Internal || !expected.contains(message) {
        failures.push(format!(
            "{refused} was refused with {code:?} {message:?}, not INTERNAL {expected:?}"
        ));
    }
}

/// `could not save revision R: PATH: CAUSE; nothing was changed`
pub fn save_refused(revision: u64, path: &Path, cause: &str) -> String {
    format!(
        "could not save revision {revision}: {}: {cause}; nothing was changed",
        path.display()
    )
}

/// The TracerPid of every thread of `pid`.
pub fn tracer_pids(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .filter_map(|s| tracer_pid(&s))
        .collect()
}

fn tracer_pid(status: &str) -> Option<i32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The id of the thread of `pid` named `name` (e.g. the file engine's
/// `commit`), if there is one.
pub fn thread_named(pid: i32, name: &str) -> Option<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .and_then(|t| t.file_name().to_str()?.parse().ok())
}

/// strace attached to one thread of a running process, holding each call of
/// the delayed syscalls at its entry for a while: the thread sits just before
/// that call (e.g. a commit between its append and its fdatasync), and a
/// kill -9 then lands there.
pub struct DelayedSyscalls {
    strace: Proc,
    pub out: PathBuf,
}

impl DelayedSyscalls {
    /// Attaches to thread `tid` of `pid`, tracing `traced` (strace's
    /// `-e trace=`) and delaying each of `delayed` by `delay_us`
    /// microseconds at entry; returns once strace is attached.
    pub fn attach(
        pid: i32,
        tid: i32,
        traced: &str,
        delayed: &str,
        delay_us: u64,
        out: &Path,
    ) -> Self {
        assert!(
            Command::new("strace")
                .arg("-V")
                .output()
                .is_ok_and(|o| o.status.success()),
            "this test needs strace (tests/prerequisites installs it: apt-get install strace)"
        );
        let mut cmd = Command::new("strace");
        cmd.args(["-qq", "-e"])
            .arg(format!("trace={traced}"))
            .arg("-e")
            .arg(format!("inject={delayed}:delay_enter={delay_us}"))
            .arg("-o")
            .arg(out)
            .arg("-p")
            .arg(tid.to_string());
        let mut strace = Proc::spawn(cmd, out.with_extension("log"));
        let tracer = strace.pid();
        eventually("strace to attach to the thread", || {
            assert!(strace.is_running(), "strace exited: {}", strace.log());
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"));
            // A thread that is gone (the broker died) ends the wait too.
            Some(()).filter(|_| status.map_or(true, |s| tracer_pid(&s) == Some(tracer)))
        });
        Self {
            strace,
            out: out.to_path_buf(),
        }
    }

    /// What strace wrote so far, one syscall a line (the last may be a call
    /// entered and not finished: `fdatasync(5`).
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The call of `syscall` the thread is held in now (entered, not
    /// finished), whose line contains `with`.
    pub fn held_in(&self, syscall: &str, with: &str) -> Option<String> {
        let last = self.lines().pop()?;
        (last.starts_with(&format!("{syscall}(")) && last.contains(with) && !last.contains(") = "))
            .then_some(last)
    }

    /// Waits up to `limit` for the thread to be held in `syscall` (see `held_in`).
    pub fn wait_held_in(&self, syscall: &str, with: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.held_in(syscall, with) {
                return Some(line);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops strace (by its pid: it exits by itself when its thread is
    /// killed, else SIGTERM detaches it) and returns its lines.
    pub fn finish(mut self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.strace.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.strace.is_running() {
            self.strace.stop();
        }
        self.lines()
    }
}

/// Whether strace's `lines` end with the thread killed while held in a call
/// of `syscall`: the call never returned (`fdatasync(5) = ?`, or
/// `fdatasync(5 <unfinished ...>`), and nothing came after it.
pub fn killed_in(lines: &[String], syscall: &str) -> Option<String> {
    let last = lines
        .iter()
        .rev()
        .find(|l| !l.starts_with("+++") && !l.starts_with("---"))?;
    (last.starts_with(&format!("{syscall}("))
        && (last.trim_end().ends_with("= ?") || last.ends_with("<unfinished ...>")))
    .then(|| last.clone())
}

/// The (offset, length) of the last `pwrite64` in strace's `lines`
/// (`pwrite64(5, "..."..., 284, 12345) = 284`).
pub fn last_pwrite(lines: &[String]) -> Option<(u64, u64)> {
    let line = lines.iter().rev().find(|l| l.starts_with("pwrite64("))?;
    let (call, _) = line.rsplit_once(") = ")?;
    let mut args = call.rsplit(", ");
    let offset = args.next()?.trim().parse().ok()?;
    let len = args.next()?.trim().parse().ok()?;
    Some((offset, len))
}

/// The file engine's journal (`STATE/journal`, see
/// broker/storage/file/journal.rs) read as the broker reads it: frames of
/// a u32 LE length, a u32 LE CRC-32 and a JSON record; a bad last frame,
/// or a tail of zeros, is torn.
pub struct JournalState {
    /// (revision, sha256, unix_millis) of each whole record, oldest first.
    pub records: Vec<(u64, String, u64)>,
    /// What the args file held before the last commit that rewrote it
    /// (the newest record's `replaced`).
    pub replaced: Option<String>,
    /// Where the whole frames end.
    pub whole: u64,
    /// The file's length: beyond `whole`, a torn last frame.
    pub len: u64,
    /// A bad frame with whole frames after it (the broker refuses it).
    pub damaged: Option<u64>,
}

impl JournalState {
    pub fn read(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_default();
        let mut records = Vec::new();
        let mut replaced = None;
        let mut at = 0usize;
        let mut damaged = None;
        while bytes.len() - at >= 8 {
            let rest = &bytes[at..];
            if rest.iter().all(|b| *b == 0) {
                // Zeros where an append was meant to go: torn.
                break;
            }
            let len = u32::from_le_bytes(rest[0..4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap());
            if len == 0 {
                damaged = Some(at as u64);
                break;
            }
            if rest.len() - 8 < len {
                break;
            }
            let payload = &rest[8..8 + len];
            if crc32fast::hash(payload) != crc {
                if 8 + len != rest.len() {
                    damaged = Some(at as u64);
                }
                break;
            }
            let record: serde_json::Value =
                serde_json::from_slice(payload).expect("a journal record is JSON");
            if let Some(before) = record["replaced"].as_str() {
                replaced = Some(before.to_owned());
            }
            records.push((
                record["revision"].as_u64().expect("revision"),
                record["sha256"].as_str().expect("sha256").to_owned(),
                record["unix_millis"].as_u64().expect("unix_millis"),
            ));
            at += 8 + len;
        }
        Self {
            records,
            replaced,
            whole: at as u64,
            len: bytes.len() as u64,
            damaged,
        }
    }
}

/// One journal frame holding `payload`.
pub fn journal_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 8);
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}
