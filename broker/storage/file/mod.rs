//! The file engine: one host, the args file an operator edits, and a state
//! directory whose journal makes every revision durable.
//!
//! Every change (a write, or an outside edit of the args file taken on a
//! reload or before a write) goes through one committer thread. It takes
//! whatever has queued up as one group, plans each change on the one before,
//! stages the new args file beside the old (so a full disk refuses before
//! anything is committed), appends the group's records to the journal with
//! one `fdatasync` (the commit), renames the staged file over the args file,
//! publishes the newest revision and answers each writer. Writes that arrive
//! while a group commits share the next group's fsync.
//!
//! The journal, not the args file, is what a restart trusts: an args file
//! left behind by a crash between the commit and the rename is rewritten
//! from it. The args file's content is compared with what the broker itself
//! last wrote or read there: only a change someone else made becomes a
//! `source=file` revision, and never over a newer acknowledged one.
mod args_file;
pub mod history;
mod journal;
pub mod lineage;

use super::admit::Source;
use super::admit::{satisfies, EndCanary, Limits, Origin, Plan as PlanOf, Write};
use super::error::WriteError;
pub use super::error::{OpenError, SaveError, SaveFailed};
use super::published::{Canary, Head, Published};
use crate::canary::CanaryRecord;
use crate::follow::Stamp;
pub use args_file::ArgsFile;
use args_file::{read_document, remove_leftover_temp_files};
use argsbroker::document::Document;
use argsbroker::durable::{self, Keep};
use argsbroker::pb;
use history::{Candidate, Entry, History};
use journal::Journal;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// At most this many changes share one fsync.
const MAX_GROUP: usize = 256;

pub struct FileEngine {
    shared: Arc<Shared>,
    jobs: mpsc::UnboundedSender<Job>,
}

/// What the committer and the readers of the history share.
struct Shared {
    /// The id of this state's revisions (see `lineage`).
    lineage: String,
    args_path: PathBuf,
    limits: Arc<Limits>,
    head: Arc<Head>,
    /// Touched by the committer, ListRevisions and watch replays; never by GetArgs.
    history: std::sync::Mutex<History>,
}

type Reply = oneshot::Sender<Result<Arc<Published>, WriteError>>;

enum Job {
    Write(Box<Write>, Reply),
    /// SIGHUP or `--watch`: the args file, read even if its stamp is unchanged.
    Reload(oneshot::Sender<Result<Option<Arc<Published>>, OpenError>>),
    Promote(EndCanary, Reply),
    Abort(EndCanary, Reply),
}

/// What the broker last wrote or read in the args file.
#[derive(Debug)]
struct FileSeen {
    stamp: Option<Stamp>,
    sha256: String,
}

impl FileEngine {
    /// Opens the state in `state_dir` and gives the args file (read by
    /// [`ArgsFile::read`]) its revision: the newest journal record's if the
    /// content is the same, or if the file was left behind by a crash after
    /// that record's commit (it is rewritten); the next one if someone
    /// changed it while the broker was down.
    pub fn open(
        args: ArgsFile,
        state_dir: &Path,
        limits: Arc<Limits>,
    ) -> Result<(Self, Arc<Head>), OpenError> {
        let ArgsFile {
            path: args_path,
            mut document,
            mut stamp,
        } = args;
        durable::create_private_dir(state_dir).map_err(|source| OpenError::StateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let lineage = lineage::load_or_create(state_dir)?;
        let (mut journal, records) = Journal::open(&state_dir.join("journal"))?;
        let mut entries = records
            .iter()
            .map(|r| Entry::decode(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| OpenError::Record {
                path: journal.path().to_path_buf(),
                message: e.to_string(),
            })?;
        let legacy_dir = state_dir.join("history");
        if entries.is_empty() {
            entries = take_legacy_history(&legacy_dir, &mut journal)?;
        }
        // What the args file held before the last commit that rewrote it,
        // and every document the journal holds.
        let replaced = entries.iter().rev().find_map(|e| e.replaced.clone());
        let committed: std::collections::HashSet<String> =
            entries.iter().map(|e| e.sha256.clone()).collect();
        let newest_millis = entries.last().map_or(0, |e| e.unix_millis);
        let mut history = History::new(limits.history, limits.history_bytes);
        for entry in entries {
            history.retain(entry);
        }
        // What plain readers got last: the newest entry, or, while a canary
        // runs, the stable document kept with its candidate.
        let newest = history.newest().cloned();
        let running = newest.clone().filter(Entry::only_a_candidate);
        let stable = match (&newest, &running) {
            (_, Some(candidate)) => candidate.candidate.as_ref().map(|c| {
                (
                    c.record.stable_revision,
                    c.stable_json.clone(),
                    c.stable_sha256.clone(),
                )
            }),
            (Some(newest), None) => {
                Some((newest.revision, newest.json.clone(), newest.sha256.clone()))
            }
            (None, None) => None,
        };
        let mut revision = 1;
        let mut next = newest.as_ref().map_or(1, |e| e.revision + 1);
        let mut canary = running.and_then(|entry| {
            let record = entry.candidate.as_ref()?.record.clone();
            let document = Document::from_broker(entry.json.clone(), entry.sha256.clone()).ok()?;
            Some((entry.revision, document, record))
        });
        let mut appended = Vec::new();
        match stable {
            Some((stable_revision, json, sha256)) if sha256 == document.sha256() => {
                revision = stable_revision;
                drop(json);
            }
            // Left behind by a crash between a commit and the rename of its
            // args file: what that commit replaced, or (for a commit older
            // than these records) a document of the journal not modified
            // since the newest record. An edit is anything else.
            Some((stable_revision, json, sha256))
                if replaced.as_deref() == Some(document.sha256())
                    || (committed.contains(document.sha256())
                        && stamp.modified_millis() <= newest_millis) =>
            {
                // Older than the newest commit: a crash came between that
                // commit and the rename of its args file.
                revision = stable_revision;
                let committed =
                    Document::from_broker(json, sha256).map_err(|source| OpenError::Invalid {
                        path: journal.path().to_path_buf(),
                        source,
                    })?;
                tracing::warn!(
                    args = %args_path.display(),
                    revision,
                    "the args file is older than the journal's last revision (the broker stopped between a commit and rewriting the file); rewriting it"
                );
                stamp = write_args_file(&args_path, &committed).map_err(|error| SaveFailed {
                    revision,
                    error: SaveError {
                        path: args_path.clone(),
                        error,
                    },
                })?;
                document = committed;
            }
            Some((_, json, sha256)) => {
                // Changed while the broker was down: the next revision, which
                // ends a canary that was running.
                if let Some((candidate, _, _)) = canary.take() {
                    let mut abort = entry(
                        next,
                        &Document::from_broker(json, sha256).map_err(|source| {
                            OpenError::Invalid {
                                path: journal.path().to_path_buf(),
                                source,
                            }
                        })?,
                        Origin {
                            source: Source::Abort,
                            uid: None,
                        },
                    );
                    abort.note = format!(
                        "aborted canary {candidate}: the args file was edited while the broker was down"
                    );
                    appended.push(abort);
                    next += 1;
                }
                revision = next;
                appended.push(entry(revision, &document, FILE));
            }
            None => appended.push(entry(revision, &document, FILE)),
        }
        if !appended.is_empty() {
            append(&mut journal, &appended).map_err(|error| SaveFailed { revision, error })?;
            for entry in appended {
                history.retain(entry);
            }
        }
        remove_leftover_temp_files(&args_path);
        let seen = FileSeen {
            stamp: Some(stamp),
            sha256: document.sha256().to_owned(),
        };
        // As after every parse (see `Head::publish`).
        argsbroker::sys::release_freed_memory();
        let head = Arc::new(Head::new(Arc::new(Published::new(
            revision, document, &lineage,
        ))));
        if let Some((candidate, document, record)) = canary {
            tracing::info!(
                candidate,
                stable = revision,
                selector = record.selector,
                "a canary was running: it goes on"
            );
            let snapshot = Arc::new(Published::new(candidate, document, &lineage));
            head.set_canary(Some(Arc::new(Canary::new(snapshot, record))));
        }
        let shared = Arc::new(Shared {
            lineage,
            args_path,
            limits,
            head: head.clone(),
            history: std::sync::Mutex::new(history),
        });
        let (jobs, queue) = mpsc::unbounded_channel();
        let committer = Committer {
            shared: shared.clone(),
            journal,
            seen,
        };
        std::thread::Builder::new()
            .name("commit".to_owned())
            .spawn(move || committer.run(queue))
            .map_err(|error| SaveFailed {
                revision,
                error: SaveError {
                    path: state_dir.to_path_buf(),
                    error,
                },
            })?;
        Ok((Self { shared, jobs }, head))
    }

    pub fn args_path(&self) -> &Path {
        &self.shared.args_path
    }

    /// Commits `write` in the next group; the reply is its own revision
    /// (or the current one, if it changes nothing).
    pub async fn commit(&self, write: Write) -> Result<Arc<Published>, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Write(Box::new(write), reply))
            .map_err(|_| WriteError::Stopping)?;
        answer.await.map_err(|_| WriteError::Stopping)?
    }

    /// Makes the running canary's candidate what everyone gets.
    pub async fn promote(&self, end: EndCanary) -> Result<Arc<Published>, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Promote(end, reply))
            .map_err(|_| WriteError::Stopping)?;
        answer.await.map_err(|_| WriteError::Stopping)?
    }

    /// Ends the running canary with the stable document, as a new revision.
    pub async fn abort(&self, end: EndCanary) -> Result<Arc<Published>, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Abort(end, reply))
            .map_err(|_| WriteError::Stopping)?;
        answer.await.map_err(|_| WriteError::Stopping)?
    }

    /// Re-reads the args file (SIGHUP, --watch), in turn with writes.
    /// `Ok(None)` if it holds what the broker last wrote or read there (its
    /// own write is never a new revision) or the current document; on error
    /// nothing changes.
    pub async fn reload(&self) -> Result<Option<Arc<Published>>, OpenError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Reload(reply))
            .map_err(|_| OpenError::Stopping)?;
        answer.await.map_err(|_| OpenError::Stopping)?
    }

    pub fn current(&self) -> arc_swap::Guard<Arc<Published>> {
        self.shared.head.current()
    }

    /// The document of a retained revision.
    pub fn retained(&self, revision: u64) -> Result<Document, WriteError> {
        let history = self.shared.history();
        match history.get(revision) {
            Some(entry) => Document::from_broker(entry.json.clone(), entry.sha256.clone())
                .map_err(WriteError::Invalid),
            None => Err(WriteError::NotRetained {
                wanted: revision,
                oldest: history.oldest_revision().unwrap_or_default(),
                newest: history.newest().map_or(0, |e| e.revision),
            }),
        }
    }

    /// The retained revisions, oldest first.
    pub fn revisions(&self) -> Vec<pb::Revision> {
        self.shared.history().entries().map(Entry::to_pb).collect()
    }

    /// The retained revisions after `revision`, oldest first, or `None` if
    /// some revision after it is no longer retained.
    pub fn revisions_after(&self, revision: u64) -> Option<Vec<pb::Args>> {
        let history = self.shared.history();
        let oldest = history.oldest_revision()?;
        if revision + 1 < oldest {
            return None;
        }
        Some(
            history
                .entries()
                .filter(|e| e.revision > revision && !e.only_a_candidate())
                .map(|e| e.to_args(&self.shared.lineage))
                .collect(),
        )
    }
}

impl Shared {
    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        // A panic while holding this lock leaves whole entries behind; carry on.
        argsbroker::lock(&self.history)
    }
}

/// The one thread that changes the state.
struct Committer {
    shared: Arc<Shared>,
    journal: Journal,
    seen: FileSeen,
}

/// What one job of a group gets once the group is committed.
enum Outcome {
    /// The revision at this index of the group's chain.
    At(usize),
    /// The revision current when the group began.
    Base,
    Refused(WriteError),
    /// A reload that found nothing new.
    NothingNew,
    ReloadFailed(OpenError),
}

/// What a revision of a group does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Everyone gets it.
    Stable,
    /// It becomes the running canary's candidate.
    Candidate,
    /// The candidate becomes what everyone gets (the same revision).
    Promote,
}

/// One revision a group makes.
struct Link {
    entry: Entry,
    document: Document,
    effect: Effect,
}

/// Where a group stands while it is planned: the stable revision, the
/// candidate of a running canary, and the next revision number.
struct Plan {
    stable: (u64, Document),
    candidate: Option<(u64, Document, CanaryRecord)>,
    next: u64,
}

impl Plan {
    /// Appends a revision that everyone gets.
    fn stable(
        &mut self,
        chain: &mut Vec<Link>,
        document: Document,
        origin: Origin,
        note: String,
    ) -> usize {
        let mut entry = entry(self.next, &document, origin);
        entry.note = note;
        self.stable = (self.next, document.clone());
        self.candidate = None;
        self.next += 1;
        chain.push(Link {
            entry,
            document,
            effect: Effect::Stable,
        });
        chain.len() - 1
    }

    /// Ends the running canary with the stable document again, as a new
    /// revision (so no follower goes back to an older number).
    fn abort(&mut self, chain: &mut Vec<Link>, uid: Option<u32>, why: &str) -> Option<usize> {
        let (candidate, _, _) = self.candidate.as_ref()?;
        let note = format!("aborted canary {candidate}: {why}");
        tracing::warn!("{note}");
        let stable = self.stable.1.clone();
        let origin = Origin {
            source: Source::Abort,
            uid,
        };
        Some(self.stable(chain, stable, origin, note))
    }
}

impl Committer {
    fn run(mut self, mut queue: mpsc::UnboundedReceiver<Job>) {
        while let Some(first) = queue.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
    }

    fn commit_group(&mut self, group: Vec<Job>) {
        let head = self.shared.head.clone();
        let base = head.current_full();
        let running = head.canary();
        let mut plan = Plan {
            stable: (base.revision, base.document.clone()),
            candidate: running.as_ref().map(|c| {
                (
                    c.candidate.revision,
                    c.candidate.document.clone(),
                    c.record.clone(),
                )
            }),
            next: base
                .revision
                .max(running.as_ref().map_or(0, |c| c.candidate.revision))
                + 1,
        };
        // What the file held before this group: back to it if the group fails,
        // so an outside edit it took is taken again.
        let seen_before = FileSeen {
            stamp: self.seen.stamp,
            sha256: self.seen.sha256.clone(),
        };
        let mut chain: Vec<Link> = Vec::new();
        let mut outcomes = Vec::with_capacity(group.len());
        // An outside edit not taken yet becomes a revision before any write,
        // so a write neither loses it nor is lost to it. It ends a canary.
        let outside = self.take_outside_edit(&base.document, false);
        // A reload in this group reports the edit taken here as its own.
        let mut taken = None;
        let outside = match outside {
            Ok(Some(document)) => {
                plan.abort(&mut chain, None, "the args file was edited");
                taken = Some(plan.stable(&mut chain, document, FILE, String::new()));
                None
            }
            Ok(None) => None,
            Err(err) => Some(Arc::new(err)),
        };
        for job in &group {
            // Where a plain write applies: the newest stable revision.
            let at_stable = match chain.iter().rposition(|l| l.effect != Effect::Candidate) {
                Some(at) => Outcome::At(at),
                None => Outcome::Base,
            };
            let outcome = match job {
                Job::Write(write, _) => {
                    if let Some(err) = &outside {
                        outcomes.push(Outcome::Refused(WriteError::OutsideEdit(
                            err.clone(),
                            plan.stable.0,
                        )));
                        continue;
                    }
                    self.plan_write(write, &mut plan, &mut chain, at_stable)
                }
                Job::Reload(_) => match self.take_outside_edit(&plan.stable.1, true) {
                    Ok(Some(document)) => {
                        plan.abort(&mut chain, None, "the args file was edited");
                        Outcome::At(plan.stable(&mut chain, document, FILE, String::new()))
                    }
                    Ok(None) => match taken.take() {
                        Some(at) => Outcome::At(at),
                        None => Outcome::NothingNew,
                    },
                    Err(err) => Outcome::ReloadFailed(err),
                },
                Job::Promote(end, _) => match check_candidate(&plan, end) {
                    Err(err) => Outcome::Refused(err),
                    Ok(()) => {
                        let Some((candidate, document, record)) = plan.candidate.take() else {
                            outcomes.push(Outcome::Refused(WriteError::NoCanary));
                            continue;
                        };
                        let mut entry = entry(
                            candidate,
                            &document,
                            Origin {
                                source: Source::Promote,
                                uid: end.uid,
                            },
                        );
                        entry.note = "promoted".to_owned();
                        tracing::info!(candidate, selector = record.selector, "canary promoted");
                        plan.stable = (candidate, document.clone());
                        chain.push(Link {
                            entry,
                            document,
                            effect: Effect::Promote,
                        });
                        Outcome::At(chain.len() - 1)
                    }
                },
                Job::Abort(end, _) => match check_candidate(&plan, end) {
                    Err(err) => Outcome::Refused(err),
                    Ok(()) => {
                        let why = match end.reason.as_str() {
                            "" => "by hand",
                            reason => reason,
                        };
                        match plan.abort(&mut chain, end.uid, why) {
                            Some(at) => Outcome::At(at),
                            None => Outcome::Refused(WriteError::NoCanary),
                        }
                    }
                },
            };
            outcomes.push(outcome);
        }
        let committed = self.commit_chain(&chain);
        if committed.is_err() {
            self.seen = seen_before;
        }
        let lineage = &self.shared.lineage;
        let snapshots: Vec<(Effect, Arc<Published>, Option<CanaryRecord>)> = match &committed {
            Ok(()) => chain
                .into_iter()
                .map(|l| {
                    let record = l.entry.candidate.map(|c| c.record);
                    let snapshot = Published::new(l.entry.revision, l.document, lineage);
                    (l.effect, Arc::new(snapshot), record)
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        // The stable revision first, then the canary: a selected follower
        // gets the newer of the two, so neither step takes it back.
        if let Some((_, stable, _)) = snapshots
            .iter()
            .rev()
            .find(|(e, _, _)| *e != Effect::Candidate)
        {
            head.publish(stable.clone());
        }
        if !snapshots.is_empty() {
            let canary = plan.candidate.as_ref().map(|(revision, _, record)| {
                let candidate = snapshots
                    .iter()
                    .find(|(_, s, _)| s.revision == *revision)
                    .map(|(_, s, _)| s.clone())
                    .or_else(|| running.as_ref().map(|c| c.candidate.clone()));
                (candidate, record.clone())
            });
            match canary {
                Some((Some(candidate), record)) => {
                    if running.as_ref().map(|c| c.candidate.revision) != Some(candidate.revision) {
                        head.set_canary(Some(Arc::new(Canary::new(candidate, record))));
                    }
                }
                _ => {
                    if running.is_some() {
                        head.set_canary(None);
                    }
                }
            }
            for (effect, snapshot, record) in &snapshots {
                match (effect, record) {
                    (Effect::Candidate, Some(record)) => tracing::info!(
                        revision = snapshot.revision,
                        selector = record.selector,
                        "new revision, a canary's candidate"
                    ),
                    // Logged as "canary promoted": not a new revision.
                    (Effect::Promote, _) => {}
                    _ => tracing::info!(revision = snapshot.revision, "new revision"),
                }
            }
        }
        for (job, outcome) in group.into_iter().zip(outcomes) {
            let given = |at: usize| match &committed {
                Ok(()) => Ok(snapshots[at].1.clone()),
                Err(failed) => Err(failed.copy()),
            };
            let reply = match job {
                Job::Reload(reply) => {
                    let _ = reply.send(match outcome {
                        Outcome::At(at) => given(at).map(Some).map_err(OpenError::Save),
                        Outcome::ReloadFailed(err) => Err(err),
                        _ => Ok(None),
                    });
                    continue;
                }
                Job::Write(_, reply) | Job::Promote(_, reply) | Job::Abort(_, reply) => reply,
            };
            let _ = reply.send(match outcome {
                Outcome::At(at) => given(at).map_err(WriteError::Save),
                Outcome::Base => Ok(base.clone()),
                Outcome::Refused(err) => Err(err),
                Outcome::NothingNew | Outcome::ReloadFailed(_) => Err(WriteError::Stopping),
            });
        }
    }

    /// Plans `write` on the group's stable revision.
    fn plan_write(
        &self,
        write: &Write,
        plan: &mut Plan,
        chain: &mut Vec<Link>,
        at_stable: Outcome,
    ) -> Outcome {
        if let Some((candidate, _, record)) = &plan.candidate {
            if !write.force {
                return Outcome::Refused(WriteError::CanaryRunning {
                    candidate: *candidate,
                    selector: record.selector.clone(),
                });
            }
        }
        let planned = write.plan(plan.stable.0, &plan.stable.1, &self.shared.limits);
        let document = match planned {
            Err(err) => return Outcome::Refused(err),
            Ok(PlanOf::Unchanged) if write.canary.is_some() => {
                return Outcome::Refused(WriteError::CanaryUnchanged {
                    stable: plan.stable.0,
                })
            }
            Ok(PlanOf::Unchanged) if plan.candidate.is_none() => return at_stable,
            // Forced over a canary: the abort is the change, whatever the write.
            Ok(PlanOf::Unchanged) => plan.stable.1.clone(),
            Ok(PlanOf::Next(document)) => document,
        };
        if write.force {
            plan.abort(chain, write.origin.uid, "replaced by a forced write");
        }
        let Some(start) = &write.canary else {
            if document.sha256() == plan.stable.1.sha256() {
                // Forced, and the same as the stable document: the abort is it.
                return Outcome::At(chain.len() - 1);
            }
            return Outcome::At(plan.stable(chain, document, write.origin, String::new()));
        };
        let record = CanaryRecord {
            selector: start.selector.text().to_owned(),
            chosen: start.chosen.clone(),
            stable_revision: plan.stable.0,
            bake_ms: start.bake_ms,
            started_unix_millis: unix_millis(),
        };
        let revision = plan.next;
        let mut entry = entry(revision, &document, write.origin);
        entry.note = record.start_note();
        entry.candidate = Some(Candidate {
            record: record.clone(),
            stable_json: plan.stable.1.json().clone(),
            stable_sha256: plan.stable.1.sha256().to_owned(),
            promoted: false,
        });
        plan.next += 1;
        plan.candidate = Some((revision, document.clone(), record));
        chain.push(Link {
            entry,
            document,
            effect: Effect::Candidate,
        });
        Outcome::At(chain.len() - 1)
    }

    /// Makes `chain` durable: stages the args file (when a write, not an
    /// outside edit, is the newest), appends every record with one fsync,
    /// then renames the staged file over the args file.
    fn commit_chain(&mut self, chain: &[Link]) -> Result<(), SaveFailed> {
        let Some(newest) = chain.last() else {
            return Ok(());
        };
        let failed = |path: &Path, error| SaveFailed {
            revision: chain[0].entry.revision,
            error: SaveError {
                path: path.to_path_buf(),
                error,
            },
        };
        let args_path = self.shared.args_path.clone();
        // The args file holds what plain readers get: the newest stable
        // revision, unless that is an outside edit (already in the file).
        let stable = chain.iter().rev().find(|l| l.effect != Effect::Candidate);
        let staged = match stable {
            Some(link) if link.entry.source != Source::File => Some(
                stage_args_file(&args_path, &link.document).map_err(|e| failed(&args_path, e))?,
            ),
            _ => None,
        };
        let mut entries: Vec<Entry> = chain.iter().map(|l| l.entry.clone()).collect();
        if staged.is_some() {
            // The commit that rewrites the file says what it held before.
            let at = chain
                .iter()
                .rposition(|l| l.effect != Effect::Candidate)
                .unwrap_or(0);
            entries[at].replaced = Some(self.seen.sha256.clone());
        }
        if let Err(error) = append(&mut self.journal, &entries) {
            if let Some(staged) = staged {
                staged.discard();
            }
            return Err(SaveFailed {
                revision: chain[0].entry.revision,
                error,
            });
        }
        if let Some(staged) = staged {
            match staged.publish() {
                Ok(meta) => self.seen.stamp = Some(Stamp::of(&meta)),
                // Committed all the same: the journal holds it, a restart
                // rewrites the file, and so does the next write.
                Err(err) => tracing::error!(
                    args = %args_path.display(),
                    revision = newest.entry.revision,
                    %err,
                    "cannot rename the new args file into place; it holds an older revision until the next write"
                ),
            }
            if let Some(link) = stable {
                self.seen.sha256 = link.document.sha256().to_owned();
            }
        }
        let mut history = self.shared.history();
        for entry in entries {
            history.retain(entry);
        }
        // The journal keeps pruned records until it is rewritten: when it
        // is four times what is retained (and past 1 MiB).
        let retained = history.bytes() as u64 + 256 * history.entries().count() as u64;
        if self.journal.len() > (4 * retained).max(1 << 20) {
            let records: Result<Vec<Vec<u8>>, io::Error> =
                history.entries().map(Entry::encode).collect();
            drop(history);
            let rewritten =
                records.and_then(|records| self.journal.rewrite(records.iter().map(Vec::as_slice)));
            if let Err(err) = rewritten {
                tracing::warn!(journal = %self.journal.path().display(), %err, "cannot compact the journal; it keeps growing until it can");
            }
        }
        Ok(())
    }

    /// If the args file changed since the broker last wrote or read it, and
    /// holds a document other than `tip`, returns it (to become a
    /// `source=file` revision). A missing file is not a change: the next
    /// write makes it again. Unless `always_read` (a reload, where a file that
    /// cannot be read must be reported), an unchanged stamp skips reading.
    fn take_outside_edit(
        &mut self,
        tip: &Document,
        always_read: bool,
    ) -> Result<Option<Document>, OpenError> {
        let args_path = &self.shared.args_path;
        let limits = &self.shared.limits;
        let stamp = match std::fs::metadata(args_path) {
            Ok(meta) => Stamp::of(&meta),
            Err(err) if err.kind() == io::ErrorKind::NotFound && !always_read => return Ok(None),
            Err(source) => {
                return Err(OpenError::Read {
                    path: args_path.clone(),
                    source,
                })
            }
        };
        if self.seen.stamp == Some(stamp) && !always_read {
            return Ok(None);
        }
        let (document, stamp) = read_document(args_path, limits.max_args_bytes)?;
        if document.sha256() == self.seen.sha256 || document.sha256() == tip.sha256() {
            self.seen = FileSeen {
                stamp: Some(stamp),
                sha256: document.sha256().to_owned(),
            };
            return Ok(None);
        }
        satisfies(limits.schema.as_deref(), &document).map_err(|unsatisfied| {
            OpenError::Schema {
                path: args_path.clone(),
                unsatisfied,
            }
        })?;
        tracing::info!(
            args = %args_path.display(),
            "the args file was changed by someone else; loading it as a new revision"
        );
        // What the file holds now is this edit: a later edit back to the
        // broker's own last write is someone else's change too.
        self.seen = FileSeen {
            stamp: Some(stamp),
            sha256: document.sha256().to_owned(),
        };
        Ok(Some(document))
    }
}

impl SaveFailed {
    /// The same failure, for another change of the same group.
    fn copy(&self) -> Self {
        let error = &self.error.error;
        Self {
            revision: self.revision,
            error: SaveError {
                path: self.error.path.clone(),
                error: match error.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(error.kind(), error.to_string()),
                },
            },
        }
    }
}

/// Checks that a canary runs, and that it is `end.candidate` if given.
fn check_candidate(plan: &Plan, end: &EndCanary) -> Result<(), WriteError> {
    let Some((candidate, _, _)) = &plan.candidate else {
        return Err(WriteError::NoCanary);
    };
    match end.candidate {
        Some(expected) if expected != *candidate => Err(WriteError::NotTheCandidate {
            expected,
            candidate: *candidate,
        }),
        _ => Ok(()),
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

const FILE: Origin = Origin {
    source: Source::File,
    uid: None,
};

fn entry(revision: u64, document: &Document, origin: Origin) -> Entry {
    Entry {
        revision,
        unix_millis: unix_millis(),
        sha256: document.sha256().to_owned(),
        writer_uid: origin.uid,
        source: origin.source,
        json: document.json().clone(),
        note: String::new(),
        candidate: None,
        replaced: None,
    }
}

/// Appends `entries` to the journal with one fsync.
fn append(journal: &mut Journal, entries: &[Entry]) -> Result<(), SaveError> {
    let records = entries
        .iter()
        .map(Entry::encode)
        .collect::<Result<Vec<_>, _>>();
    records
        .and_then(|records| journal.append(&records))
        .map_err(|error| SaveError {
            path: journal.path().to_path_buf(),
            error,
        })
}

/// The new args file beside the old, pretty-printed, with the old one's
/// owner and mode. Through a symlink (a deploy's `args.json ->
/// releases/v3/args.json`), the target is replaced in its own directory;
/// the link stays.
fn stage_args_file(args_path: &Path, document: &Document) -> io::Result<durable::Staged> {
    let target = std::fs::canonicalize(args_path).unwrap_or_else(|_| args_path.to_path_buf());
    let keep = std::fs::metadata(&target).ok().map(|m| Keep::of(&m));
    let pretty = argsbroker::document::pretty(document.json());
    durable::stage(&target, &pretty, keep)
}

/// Writes the args file now (at start, from the journal), returning its stamp.
fn write_args_file(args_path: &Path, document: &Document) -> io::Result<Stamp> {
    let meta = stage_args_file(args_path, document)?.publish()?;
    durable::sync_dir(args_path)?;
    Ok(Stamp::of(&meta))
}

/// The history an older broker kept (one file per revision in `dir`), moved
/// into the journal: appended with one fsync, then the files removed.
fn take_legacy_history(dir: &Path, journal: &mut Journal) -> Result<Vec<Entry>, OpenError> {
    let entries =
        history::read_legacy(dir).map_err(|(path, message)| OpenError::Legacy { path, message })?;
    if entries.is_empty() {
        return Ok(entries);
    }
    let revision = entries.last().map_or(0, |e| e.revision);
    append(journal, &entries).map_err(|error| SaveFailed { revision, error })?;
    if let Err(err) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), %err, "moved the history into the journal, but cannot remove the old history directory");
    }
    tracing::info!(
        revisions = entries.len(),
        journal = %journal.path().display(),
        "moved the history of an older broker into the journal"
    );
    Ok(entries)
}
