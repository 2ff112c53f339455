//! The fault soaks' clients and checker, shared by tests/soak.rs (one
//! broker on a file) and tests/soak_etcd.rs (three brokers on one etcd):
//! writers that log every outcome, observers that record every revision
//! seen (acks, GetArgs, WatchArgs, ListRevisions) in one ledger, a poller of
//! the workers, and the checker of invariants 1 to 5 (see tests/soak.rs).
#![allow(dead_code)]

use crate::common::*;
use crate::faults::*;
use argsbroker::pb;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::RwLock;
use tonic::Code;

/// (lineage, revision): what names one document.
pub type Rev = (String, u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Patch,
    CasPatch,
    Set,
    CasSet,
}

#[derive(Debug)]
pub enum Outcome {
    Acked { rev: Rev },
    Refused { code: Code, message: String },
    Unknown { why: String },
}

/// One write a writer sent, and what became of it.
#[derive(Debug)]
pub struct Op {
    pub key: String,
    pub kind: Kind,
    /// For SetArgs: the sha256 of the document sent.
    pub set_sha256: Option<String>,
    pub outcome: Outcome,
    /// When it was sent, and when its outcome was known.
    pub sent: Instant,
    pub answered: Instant,
}

/// What was seen of one (lineage, revision).
#[derive(Default)]
pub struct Seen {
    pub sha256: String,
    /// The document's top-level keys, as sorted hashes (names in
    /// `Ledger::names`): a long soak sees hundreds of thousands of revisions.
    pub keys: Option<Box<[u64]>>,
    pub source: Option<String>,
    pub via: &'static str,
}

/// Everything observed, by every client, shared.
#[derive(Default)]
pub struct Ledger {
    pub seen: BTreeMap<Rev, Seen>,
    /// Invariant 3 findings, found as observations come in.
    pub two_documents: Vec<String>,
    /// Every key name seen, by hash.
    pub names: HashMap<u64, String>,
}

impl Seen {
    pub fn has(&self, hash: u64) -> Option<bool> {
        Some(self.keys.as_ref()?.binary_search(&hash).is_ok())
    }
}

impl Ledger {
    pub fn observe(
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

/// The faults of `all` (fault, name, weight) that SOAK_FAULTS names (a
/// comma-separated list of names; unset or empty: all of them), with
/// their weights. Panics, naming the choices, if it names none.
pub fn enabled_faults<F: Copy, const N: usize>(all: [(F, &str, u64); N]) -> Vec<(F, u64)> {
    let wanted = std::env::var("SOAK_FAULTS").unwrap_or_default();
    let enabled: Vec<(F, u64)> = all
        .iter()
        .filter(|(_, name, _)| wanted.is_empty() || wanted.split(',').any(|w| w.trim() == *name))
        .map(|(fault, _, weight)| (*fault, *weight))
        .collect();
    let names: Vec<&str> = all.iter().map(|(_, name, _)| *name).collect();
    assert!(
        !enabled.is_empty(),
        "SOAK_FAULTS names no fault: {}",
        names.join(",")
    );
    enabled
}

pub fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

/// A broker restart: the first snapshot it served.
pub struct Restart {
    pub rev: Rev,
    pub sha256: String,
    pub json: Bytes,
    /// The highest revision acknowledged before the kill.
    pub max_acked_before: u64,
}

/// A writer on its own connection: mostly PatchArgs of its own keys
/// (`w<w>_<n>`), sometimes a compare-and-set patch, sometimes a SetArgs
/// (plain or compare-and-set) that replaces the whole document.
pub fn writer(
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
            let sent = Instant::now();
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
                sent,
                answered: Instant::now(),
            });
            if rng.chance(30) {
                tokio::time::sleep(Duration::from_millis(rng.range(1, 4))).await;
            }
        }
        ops
    })
}

/// A status the broker sent is a refusal; a broken connection (kill -9) is
/// an unknown outcome: the write may or may not have been made. So is the
/// etcd backend's UNAVAILABLE "... it may still be committed" (etcd did not
/// answer in time); its UNAVAILABLE "...; nothing was changed" is a refusal.
pub fn classify(status: tonic::Status) -> Outcome {
    use std::error::Error;
    let message = status.message();
    if status.source().is_none() && status.code() == Code::Unavailable {
        if message.contains("it may still be committed") {
            return Outcome::Unknown {
                why: format!("etcd did not confirm: {message}"),
            };
        }
        if message.ends_with("; nothing was changed") {
            return Outcome::Refused {
                code: status.code(),
                message: message.to_owned(),
            };
        }
    }
    let from_transport = status.source().is_some()
        || matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
        );
    if from_transport {
        Outcome::Unknown {
            why: format!("{:?}: {}", status.code(), message),
        }
    } else {
        Outcome::Refused {
            code: status.code(),
            message: message.to_owned(),
        }
    }
}

/// Follows WatchArgs (reconnecting after restarts) and polls ListRevisions
/// every `list_every`, recording every revision seen, until `stop`.
pub fn observe(socket: &Path, ledger: &Mutex<Ledger>, stop: &AtomicBool, list_every: Duration) {
    grpc(|| async {
        let mut stream = None;
        let mut last_list = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            if last_list.elapsed() > list_every {
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

pub fn record_revisions(socket: &Path, ledger: &Mutex<Ledger>) {
    grpc(|| record_revisions_async(socket, ledger))
}

/// ListRevisions, attributed to the lineage GetArgs names before and after it.
pub async fn record_revisions_async(socket: &Path, ledger: &Mutex<Ledger>) {
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

pub fn max_revision(ledger: &Mutex<Ledger>) -> u64 {
    ledger
        .lock()
        .unwrap()
        .seen
        .keys()
        .map(|(_, r)| *r)
        .max()
        .unwrap_or(0)
}
/// A key's hash, for the checker's sets of keys.
pub fn key_hash(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// What a worker answered to GET /args during the run.
pub struct Served {
    pub port: u16,
    pub revision: u64,
    pub etag: String,
    /// The sha256 of the document in the body, as the worker sent it.
    pub body_sha256: String,
}

/// Polls GET /args on every worker until `stop`.
pub fn poll_workers(ports: &[u16], stop: &AtomicBool) -> Vec<Served> {
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
pub fn check_workers(
    ledger: &Ledger,
    served: &[Served],
    lineage: &str,
    findings: &mut Vec<String>,
) {
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
pub fn converge(socket: &Path, ports: &[u16], findings: &mut Vec<String>) -> pb::Args {
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

/// Invariants 1, 2 and 5 (3 is checked as observations come in, 4 by
/// `converge`). The start file is the document `start` names at its
/// revision: 1 for the file engine, the key's create_revision in etcd
/// (where the broker that made the key from `--args` records source=file).
pub fn check(
    ledger: &Ledger,
    ops: &[Op],
    outside_edits: &[(u64, String)],
    restarts: &[Restart],
    ((start_revision, start_sha256), final_rev, final_args): ((u64, &str), &Rev, &pb::Args),
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
        if (r.1 == start_revision && seen.sha256 == start_sha256)
            || outside.contains(seen.sha256.as_str())
        {
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

/// The writes in figures: sent, acknowledged (by kind), refused (by code and
/// reason), unknown (by why).
pub fn tally(ops: &[Op]) -> String {
    let count = |f: &dyn Fn(&Outcome) -> bool| ops.iter().filter(|o| f(&o.outcome)).count();
    let acked = count(&|o| matches!(o, Outcome::Acked { .. }));
    let refused = count(&|o| matches!(o, Outcome::Refused { .. }));
    let unknown = count(&|o| matches!(o, Outcome::Unknown { .. }));
    let mut refused_by: BTreeMap<String, usize> = BTreeMap::new();
    let mut unknown_by: BTreeMap<&str, usize> = BTreeMap::new();
    let mut acked_by: BTreeMap<Kind, usize> = BTreeMap::new();
    for op in ops {
        match &op.outcome {
            Outcome::Refused { code, message } => {
                let why = if message.contains("No space left") {
                    "no space"
                } else if message.starts_with("revision conflict") {
                    "revision conflict"
                } else if message.ends_with("nothing was changed") {
                    "nothing was changed"
                } else {
                    "other"
                };
                *refused_by.entry(format!("{code:?} ({why})")).or_default() += 1;
            }
            Outcome::Unknown { why } => {
                *unknown_by
                    .entry(why.split(':').next().unwrap_or_default())
                    .or_default() += 1;
            }
            Outcome::Acked { .. } => *acked_by.entry(op.kind).or_default() += 1,
        }
    }
    format!(
        "{} sent, {acked} acknowledged {acked_by:?}, {refused} refused {refused_by:?}, {unknown} unknown {unknown_by:?}",
        ops.len()
    )
}

/// Restarts the broker; a restart that fails is retried a few times (the
/// lock of the killed one is released with its last descriptor).
pub fn restart_broker(
    site: &Site,
    cmd: &dyn Fn() -> std::process::Command,
) -> Result<Proc, String> {
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
