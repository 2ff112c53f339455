//! The store: the one current snapshot of the args, and the only place that
//! changes it.
//!
//! Readers load the current snapshot with one atomic pointer load; watchers
//! follow a `watch` channel that holds only the newest snapshot, so a slow
//! watcher skips revisions instead of making the broker buffer them.
//!
//! Every change, a write or a reload of the args file, runs under one lock
//! that also guards what the broker knows of the args file ([`FileSeen`]):
//! it checks the expected revision, makes the new document durable (the args
//! file, then its history entry, the commit record; a failed step undoes
//! the earlier ones, so a refused write leaves every file as it was), and
//! only then publishes it. The file's content is compared with what the
//! broker itself last wrote or read there: only a change someone else made
//! becomes a `source=file` revision, and never over a newer acknowledged one.
use crate::follow::Stamp;
use crate::history::{Entry, History, HistoryError, SaveError, Source};
use arc_swap::ArcSwap;
use argsbroker::document::{Document, DocumentError};
use argsbroker::durable::{self, Keep};
use argsbroker::frame::Frame;
use argsbroker::pb;
use argsbroker::schema::{Schema, Violations};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Mutex};

/// One revision of the document as it is published to readers, with the
/// reply every reader is handed.
#[derive(Debug)]
pub struct Published {
    pub revision: u64,
    pub document: Document,
    /// The whole-document `Args`, built once per revision.
    pub reply: pb::Args,
    /// The same reply as a gRPC response body carries it, encoded once.
    pub frame: Frame,
}

impl Published {
    pub fn new(revision: u64, document: Document, lineage: &str) -> Self {
        let reply = pb::Args {
            revision,
            json: document.json().clone(),
            sha256: document.sha256().to_owned(),
            not_modified: false,
            lineage: lineage.to_owned(),
        };
        Self {
            revision,
            document,
            frame: Frame::new(&reply),
            reply,
        }
    }
}

/// `current` with an RFC 7386 merge patch applied.
pub fn merge(current: &Document, patch: &serde_json::Value) -> Result<Document, WriteError> {
    let mut value = current.to_value();
    argsbroker::document::merge_patch(&mut value, patch);
    Document::from_value(value).map_err(|e| match e {
        DocumentError::NotAnObject(kind) => WriteError::PatchNotAnObject(kind),
        other => WriteError::Invalid(other),
    })
}

/// A document that fails `--schema`: which schema, and every violation.
#[derive(Debug, thiserror::Error)]
#[error("does not satisfy the schema {}: {violations}", schema.display())]
pub struct Unsatisfied {
    pub schema: PathBuf,
    pub violations: Violations,
}

/// The one check of `--schema`, on every document that is to become the
/// next revision: a write's result, an args file read at start or reloaded,
/// a value from etcd. The parsed tree is made for the check and dropped
/// after it, so a published document does not keep one.
pub fn satisfies(schema: Option<&Schema>, document: &Document) -> Result<(), Unsatisfied> {
    let Some(schema) = schema else {
        return Ok(());
    };
    schema
        .check(&document.to_value())
        .map_err(|violations| Unsatisfied {
            schema: schema.path().to_path_buf(),
            violations,
        })
}

/// Who asked for a change, for the history.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub source: Source,
    pub uid: Option<u32>,
}

/// Why the store cannot open (or reload) the args file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot read the args file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the args file {path} is a directory, not a file")]
    IsDirectory { path: PathBuf },
    #[error("the args file {path} is not a regular file (it is {kind})")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("the args file {path} is {size} bytes, over the limit of {max} (--max-args-bytes)")]
    TooLarge {
        path: PathBuf,
        size: u64,
        max: usize,
    },
    #[error("the args file {path} is {size} bytes as compact JSON, over the limit of {max} (--max-args-bytes)")]
    TooLargeCompact {
        path: PathBuf,
        size: usize,
        max: usize,
    },
    #[error("the args file {path}: {source}")]
    Invalid {
        path: PathBuf,
        source: DocumentError,
    },
    #[error("the args file {path} {unsatisfied}")]
    Schema {
        path: PathBuf,
        unsatisfied: Unsatisfied,
    },
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error(
        "cannot create the state directory {path}: {source} (choose another with --state-dir)"
    )]
    StateDir { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Lineage(#[from] crate::lineage::LineageError),
    #[error(transparent)]
    Save(#[from] SaveFailed),
}

/// A change that could not be made durable. Every step that had been done
/// was undone, so nothing changed (unless `undo` says otherwise).
#[derive(Debug, thiserror::Error)]
#[error("could not save revision {revision}: {error}; {}", match undo {
    None => "nothing was changed".to_owned(),
    Some(undo) => format!("undoing the args file failed too ({}), so it may hold the refused document until the next write", durable::reason(undo)),
})]
pub struct SaveFailed {
    pub revision: u64,
    pub error: SaveError,
    pub undo: Option<io::Error>,
}

/// Why a write was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "revision conflict: expected revision {expected}, but the current revision is {current}"
    )]
    Conflict { expected: u64, current: u64 },
    /// With what to do instead.
    #[error("the broker is read-only (--read-only): {0}")]
    ReadOnly(&'static str),
    #[error("{0}")]
    Invalid(DocumentError),
    #[error("the patch would make the top level {0}: the args must stay a JSON object")]
    PatchNotAnObject(&'static str),
    /// The document that would be the next revision fails `--schema`.
    #[error("the document {0}")]
    Schema(Unsatisfied),
    /// `what`: "the document is", "the patch is" or "the result would be".
    #[error("{what} {size} bytes, over the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        size: usize,
        max: usize,
    },
    #[error("revision {wanted} is not retained (retained: {oldest} to {newest})")]
    NotRetained {
        wanted: u64,
        oldest: u64,
        newest: u64,
    },
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    /// `backend`: what the limit is, e.g. "etcd accepts in one request (...)".
    #[error("{what} {size} bytes, over the limit of {max} bytes that {backend}")]
    TooLargeForBackend {
        what: &'static str,
        size: usize,
        max: usize,
        backend: String,
    },
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    /// The backend (etcd) is out of reach, or did not confirm the write.
    #[error("{0}")]
    Unavailable(String),
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    /// The backend refused the write.
    #[error("{0}")]
    PermissionDenied(String),
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    /// What the write applies to is gone (the etcd key was deleted).
    #[error("{0}")]
    Missing(String),
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    /// The backend refused the write as too large for it (etcd's own
    /// limit is below what the broker was told).
    #[error("{0}")]
    RefusedAsTooLarge(String),
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    /// Any other backend failure.
    #[error("{0}")]
    Backend(String),
    #[error(transparent)]
    Save(#[from] SaveFailed),
    /// Someone else changed the args file, and what they wrote is not valid.
    #[error("the args file was changed by someone else and cannot be loaded ({0}); fix or restore it (the broker serves revision {1}), then write again")]
    OutsideEdit(Box<OpenError>, u64),
}

pub struct Limits {
    pub max_args_bytes: usize,
    pub history: usize,
    pub history_bytes: usize,
    pub read_only: bool,
    /// `--schema`: what every document must satisfy.
    pub schema: Option<Arc<Schema>>,
}

pub struct Store {
    /// The id of this state's revisions (see `lineage`).
    lineage: String,
    current: ArcSwap<Published>,
    watch: watch::Sender<Arc<Published>>,
    /// Touched by writers, ListRevisions and watch replays; never by GetArgs.
    history: std::sync::Mutex<History>,
    args_path: PathBuf,
    limits: Limits,
    /// Held by every change; what the broker last saw in the args file.
    file: Mutex<FileSeen>,
}

/// What the args file held when the broker last wrote or read it.
#[derive(Debug)]
struct FileSeen {
    stamp: Option<Stamp>,
    sha256: String,
}

/// The args file as read at start, before anything is written: a file the
/// broker refuses leaves no state behind.
pub struct ArgsFile {
    path: PathBuf,
    document: Document,
    stamp: Stamp,
}

impl ArgsFile {
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub fn path(&self) -> &Path {
        &self.path
    }

    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub fn document(&self) -> &Document {
        &self.document
    }

    /// Reads the args file; it must satisfy `schema`, if one is given.
    pub fn read(path: &Path, max_bytes: usize, schema: Option<&Schema>) -> Result<Self, OpenError> {
        let (document, stamp) = read_document(path, max_bytes)?;
        satisfies(schema, &document).map_err(|unsatisfied| OpenError::Schema {
            path: path.to_path_buf(),
            unsatisfied,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            document,
            stamp,
        })
    }
}

impl Store {
    /// Gives the args file (read by [`ArgsFile::read`]) its revision: the newest history
    /// entry's if the content is unchanged, the next one if it changed while
    /// the broker was down (so a revision never names two documents).
    pub fn open(args: ArgsFile, state_dir: &Path, limits: Limits) -> Result<Self, OpenError> {
        let ArgsFile {
            path: args_path,
            mut document,
            mut stamp,
        } = args;
        let args_path = args_path.as_path();
        durable::create_private_dir(state_dir).map_err(|source| OpenError::StateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let lineage = crate::lineage::load_or_create(state_dir)?;
        let history_dir = state_dir.join("history");
        let mut history = History::open(&history_dir, limits.history, limits.history_bytes)?;
        if let Some(newest) = history.newest() {
            if newest.sha256 != document.sha256() {
                if let Some(restored) = undo_interrupted_write(args_path, newest, &limits) {
                    (document, stamp) = restored;
                }
            }
        }
        let revision = match history.newest() {
            Some(newest) if newest.sha256 == document.sha256() => newest.revision,
            Some(newest) => newest.revision + 1,
            None => 1,
        };
        if history.newest().map(|e| e.revision) != Some(revision) {
            let origin = Origin {
                source: Source::File,
                uid: None,
            };
            history
                .append(entry(revision, &document, origin))
                .map_err(|error| SaveFailed {
                    revision,
                    error,
                    undo: None,
                })?;
        }
        remove_leftover_temp_files(args_path);
        let seen = FileSeen {
            stamp: Some(stamp),
            sha256: document.sha256().to_owned(),
        };
        // As after every parse (see `commit`).
        argsbroker::sys::release_freed_memory();
        let snapshot = Arc::new(Published::new(revision, document, &lineage));
        Ok(Self {
            lineage,
            current: ArcSwap::new(snapshot.clone()),
            watch: watch::Sender::new(snapshot),
            history: std::sync::Mutex::new(history),
            args_path: args_path.to_path_buf(),
            limits,
            file: Mutex::new(seen),
        })
    }

    /// The current snapshot: one atomic load, no lock.
    pub fn current(&self) -> arc_swap::Guard<Arc<Published>> {
        self.current.load()
    }

    /// A receiver that sees the current snapshot, then only the newest one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.watch.subscribe()
    }

    pub fn max_args_bytes(&self) -> usize {
        self.limits.max_args_bytes
    }

    pub fn args_path(&self) -> &Path {
        &self.args_path
    }

    /// The retained revisions, oldest first.
    pub fn revisions(&self) -> Vec<pb::Revision> {
        self.history().entries().map(Entry::to_pb).collect()
    }

    /// The retained revisions after `revision`, oldest first, or `None` if
    /// some revision after it is no longer retained.
    pub fn revisions_after(&self, revision: u64) -> Option<Vec<pb::Args>> {
        let history = self.history();
        let oldest = history.oldest_revision()?;
        if revision + 1 < oldest {
            return None;
        }
        Some(
            history
                .entries()
                .filter(|e| e.revision > revision)
                .map(|e| e.to_args(&self.lineage))
                .collect(),
        )
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        // A panic while holding this lock leaves whole entries behind; carry on.
        argsbroker::lock(&self.history)
    }

    /// Replaces the document with `json`.
    pub async fn set(
        &self,
        json: &str,
        expected: Option<u64>,
        uid: Option<u32>,
    ) -> Result<Arc<Published>, WriteError> {
        self.check_writable("the document is", json.len())?;
        let next = Document::parse(json.as_bytes()).map_err(WriteError::Invalid)?;
        let origin = Origin {
            source: Source::Set,
            uid,
        };
        self.write(expected, origin, move |_| Ok(next)).await
    }

    /// Applies an RFC 7386 merge patch to the document.
    pub async fn patch(
        &self,
        merge_patch: &str,
        expected: Option<u64>,
        uid: Option<u32>,
    ) -> Result<Arc<Published>, WriteError> {
        self.check_writable("the patch is", merge_patch.len())?;
        let patch = argsbroker::document::parse_value(merge_patch.as_bytes())
            .map_err(WriteError::Invalid)?;
        let origin = Origin {
            source: Source::Patch,
            uid,
        };
        self.write(expected, origin, move |current| merge(current, &patch))
            .await
    }

    /// Makes a new revision with the content of a retained one.
    pub async fn rollback(
        &self,
        to_revision: u64,
        expected: Option<u64>,
        uid: Option<u32>,
    ) -> Result<Arc<Published>, WriteError> {
        self.check_writable("the request is", 0)?;
        let json = {
            let history = self.history();
            match history.get(to_revision) {
                Some(entry) => entry.json.clone(),
                None => {
                    return Err(WriteError::NotRetained {
                        wanted: to_revision,
                        oldest: history.oldest_revision().unwrap_or_default(),
                        newest: history.newest().map_or(0, |e| e.revision),
                    })
                }
            }
        };
        let next = Document::parse(&json).map_err(WriteError::Invalid)?;
        let origin = Origin {
            source: Source::Rollback,
            uid,
        };
        self.write(expected, origin, move |_| Ok(next)).await
    }

    /// Re-reads the args file (SIGHUP, --watch), in turn with writes.
    /// `Ok(None)` if it holds what the broker last wrote or read there (its
    /// own write is never a new revision) or the current document; on error
    /// nothing changes.
    pub async fn reload(&self) -> Result<Option<Arc<Published>>, OpenError> {
        let mut file = self.file.lock().await;
        let current = self.current.load_full();
        tokio::task::block_in_place(|| self.take_outside_edit(&mut file, &current, true))
    }

    fn check_writable(&self, what: &'static str, size: usize) -> Result<(), WriteError> {
        if self.limits.read_only {
            return Err(WriteError::ReadOnly("change the args file and send SIGHUP"));
        }
        self.check_size(what, size)
    }

    fn check_size(&self, what: &'static str, size: usize) -> Result<(), WriteError> {
        if size > self.limits.max_args_bytes {
            return Err(WriteError::TooLarge {
                what,
                size,
                max: self.limits.max_args_bytes,
            });
        }
        Ok(())
    }

    /// Checks the expected revision, makes the next document durable, then
    /// publishes it. A result equal to the current document is not a new
    /// revision. An outside change to the args file not loaded yet becomes a
    /// revision first, so this write neither loses it nor is lost to it.
    async fn write(
        &self,
        expected: Option<u64>,
        origin: Origin,
        next: impl FnOnce(&Document) -> Result<Document, WriteError>,
    ) -> Result<Arc<Published>, WriteError> {
        let mut file = self.file.lock().await;
        // Blocking file I/O, on this task: the lock serializes changes
        // anyway, and block_in_place keeps the runtime's other work moving.
        tokio::task::block_in_place(|| {
            let mut current = self.current.load_full();
            if let Some(taken) = self
                .take_outside_edit(&mut file, &current, false)
                .map_err(|err| WriteError::OutsideEdit(Box::new(err), current.revision))?
            {
                current = taken;
            }
            if let Some(expected) = expected {
                if expected != current.revision {
                    return Err(WriteError::Conflict {
                        expected,
                        current: current.revision,
                    });
                }
            }
            let document = next(&current.document)?;
            self.check_size("the result would be", document.json().len())?;
            if document.sha256() == current.document.sha256() {
                return Ok(current);
            }
            satisfies(self.limits.schema.as_deref(), &document).map_err(WriteError::Schema)?;
            let pretty = argsbroker::document::pretty(document.json());
            Ok(self.commit(
                &mut file,
                current.revision + 1,
                document,
                origin,
                Some(&pretty),
            )?)
        })
    }

    /// If the args file changed since the broker last wrote or read it, and
    /// holds a document other than the current one, makes that a new
    /// revision (`source=file`). A missing file is not a change: the next
    /// write makes it again. Unless `always_read` (a reload, where a file that
    /// cannot be read must be reported), an unchanged stamp skips reading.
    fn take_outside_edit(
        &self,
        file: &mut FileSeen,
        current: &Published,
        always_read: bool,
    ) -> Result<Option<Arc<Published>>, OpenError> {
        let stamp = match std::fs::metadata(&self.args_path) {
            Ok(meta) => Stamp::of(&meta),
            Err(err) if err.kind() == io::ErrorKind::NotFound && !always_read => return Ok(None),
            Err(source) => {
                return Err(OpenError::Read {
                    path: self.args_path.clone(),
                    source,
                })
            }
        };
        if file.stamp == Some(stamp) && !always_read {
            return Ok(None);
        }
        let (document, stamp) = read_document(&self.args_path, self.limits.max_args_bytes)?;
        if document.sha256() == file.sha256 || document.sha256() == current.document.sha256() {
            *file = FileSeen {
                stamp: Some(stamp),
                sha256: document.sha256().to_owned(),
            };
            return Ok(None);
        }
        satisfies(self.limits.schema.as_deref(), &document).map_err(|unsatisfied| {
            OpenError::Schema {
                path: self.args_path.clone(),
                unsatisfied,
            }
        })?;
        tracing::info!(
            args = %self.args_path.display(),
            "the args file was changed by someone else; loading it as a new revision"
        );
        let origin = Origin {
            source: Source::File,
            uid: None,
        };
        let sha256 = document.sha256().to_owned();
        let snapshot = self.commit(file, current.revision + 1, document, origin, None)?;
        // What the file holds now is this edit: a later edit back to the
        // broker's own last write is someone else's change too.
        *file = FileSeen {
            stamp: Some(stamp),
            sha256,
        };
        Ok(Some(snapshot))
    }

    /// Makes `document` revision `revision`: the args file first (when
    /// `args_text` is given), then the history entry, which commits it; a
    /// failed step undoes the ones before it. Then publishes it.
    fn commit(
        &self,
        file: &mut FileSeen,
        revision: u64,
        document: Document,
        origin: Origin,
        args_text: Option<&[u8]>,
    ) -> Result<Arc<Published>, SaveFailed> {
        let record = entry(revision, &document, origin);
        let failed = |error, undo| SaveFailed {
            revision,
            error,
            undo,
        };
        let args = match args_text {
            None => None,
            Some(text) => {
                // Through a symlink (a deploy's `args.json -> releases/v3/args.json`):
                // the target is replaced in its own directory; the link stays.
                let target = std::fs::canonicalize(&self.args_path)
                    .unwrap_or_else(|_| self.args_path.clone());
                let keep = std::fs::metadata(&target).ok().map(|m| Keep::of(&m));
                // The old file keeps a name that says which document replaced it.
                let tag = Some(&document.sha256()[..TAG_LEN]);
                let replaced =
                    durable::replace_tagged(&target, text, keep, tag).map_err(|error| {
                        failed(
                            SaveError {
                                path: self.args_path.clone(),
                                error,
                            },
                            None,
                        )
                    })?;
                Some(replaced)
            }
        };
        let written = self.history().write(&record);
        let entry_file = match written {
            Ok(entry_file) => entry_file,
            Err(error) => {
                let undo = args.and_then(|a| a.undo().err());
                return Err(failed(error, undo));
            }
        };
        entry_file.finish();
        if let Some(args) = args {
            file.stamp = Some(Stamp::of(args.new_file()));
            file.sha256 = document.sha256().to_owned();
            args.finish();
        }
        self.history().retain(record);
        let snapshot = Arc::new(Published::new(revision, document, &self.lineage));
        self.current.store(snapshot.clone());
        self.watch.send_replace(snapshot.clone());
        // Parsing a document briefly takes about 15 times its size, and glibc
        // keeps freed memory in its arenas: without this the broker's resident
        // size would track its largest parse, not what it holds (for a 1 MiB
        // document, 20 MiB instead of 7).
        argsbroker::sys::release_freed_memory();
        tracing::info!(
            revision,
            source = origin.source.as_str(),
            uid = origin.uid,
            "new revision"
        );
        Ok(snapshot)
    }
}

fn entry(revision: u64, document: &Document, origin: Origin) -> Entry {
    let unix_millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Entry {
        revision,
        unix_millis,
        sha256: document.sha256().to_owned(),
        writer_uid: origin.uid,
        source: origin.source,
        json: document.json().clone(),
    }
}

/// Reads and parses the args file, refusing what is not a regular file and
/// reading at most `max_bytes` + 1 whatever its size claims; returns the
/// document and the stamp of the file it was read from.
fn read_document(path: &Path, max_bytes: usize) -> Result<(Document, Stamp), OpenError> {
    let read_err = |source| OpenError::Read {
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let kind = meta.file_type();
    if kind.is_dir() {
        return Err(OpenError::IsDirectory {
            path: path.to_path_buf(),
        });
    }
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let kind = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(OpenError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    let too_large = |size| OpenError::TooLarge {
        path: path.to_path_buf(),
        size,
        max: max_bytes,
    };
    if meta.len() > max_bytes as u64 {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() > max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    let document = Document::parse(&bytes).map_err(|source| OpenError::Invalid {
        path: path.to_path_buf(),
        source,
    })?;
    // The compact text is what is sent, and it can be longer than the file
    // (`1e5` is served as `1e+5`): the gRPC message limits follow this size.
    if document.json().len() > max_bytes {
        return Err(OpenError::TooLargeCompact {
            path: path.to_path_buf(),
            size: document.json().len(),
            max: max_bytes,
        });
    }
    Ok((document, Stamp::of(&meta)))
}

/// Removes what a broker killed in the middle of a write left beside the
/// args file (`.args.json.PID.N.tmp`, never a document being served).
fn remove_leftover_temp_files(args_path: &Path) {
    for leftover in leftover_temp_files(args_path) {
        let _ = std::fs::remove_file(leftover);
    }
}

/// How much of the new document's sha256 names the temp file of a write.
const TAG_LEN: usize = 16;

/// `.args.json.PID.N.tmp` beside the (resolved) args file.
fn leftover_temp_files(args_path: &Path) -> Vec<PathBuf> {
    let target = std::fs::canonicalize(args_path).unwrap_or_else(|_| args_path.to_path_buf());
    let Some(name) = target.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let prefix = format!(".{name}.");
    let Ok(items) = std::fs::read_dir(durable::parent_or_dot(&target)) else {
        return Vec::new();
    };
    items
        .flatten()
        .filter(|item| {
            item.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".tmp"))
        })
        .map(|item| item.path())
        .collect()
}

/// A broker killed after it swapped a new args file in but before it wrote
/// the history entry that commits it leaves the old file under its temp
/// name, `.args.json.TAG.PID.N.tmp`, TAG being the start of the new
/// document's sha256. When the args file is still exactly that new document
/// (nobody edited it since) and the old one is what the newest entry names,
/// that write was never acknowledged: the old file is put back, so the
/// broker starts on its last committed revision without recording anything
/// (which a full disk would refuse). Returns the restored document.
fn undo_interrupted_write(
    args_path: &Path,
    newest: &Entry,
    limits: &Limits,
) -> Option<(Document, Stamp)> {
    let target = std::fs::canonicalize(args_path).ok()?;
    let (in_file, _) = read_document(args_path, limits.max_args_bytes).ok()?;
    let prefix = format!(".{}.", target.file_name()?.to_str()?);
    for leftover in leftover_temp_files(args_path) {
        let name = leftover
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let tag = name[prefix.len()..].split('.').next().unwrap_or_default();
        if tag.len() != TAG_LEN || !in_file.sha256().starts_with(tag) {
            continue;
        }
        let Ok((document, _)) = read_document(&leftover, limits.max_args_bytes) else {
            continue;
        };
        if document.sha256() != newest.sha256 {
            continue;
        }
        if let Err(err) =
            std::fs::rename(&leftover, &target).and_then(|()| durable::sync_dir(&target))
        {
            tracing::warn!(args = %args_path.display(), %err, "cannot undo a write interrupted by a crash");
            return None;
        }
        tracing::warn!(
            args = %args_path.display(),
            revision = newest.revision,
            "a write interrupted by a crash left the args file ahead of its history; put back the file of revision {}",
            newest.revision
        );
        return read_document(args_path, limits.max_args_bytes).ok();
    }
    None
}
