//! The store: the one current snapshot of the args, and the only place that
//! changes it.
//!
//! Readers load the current snapshot with one atomic pointer load; watchers
//! follow a `watch` channel that holds only the newest snapshot, so a slow
//! watcher skips revisions instead of making the broker buffer them. Writers
//! take a lock, check the expected revision, make the new document durable
//! (the args file, then its history entry), and only then publish it.
use crate::history::{Entry, History, HistoryError, Source};
use crate::prepared::Frame;
use arc_swap::ArcSwap;
use argsbroker::document::{Document, DocumentError};
use argsbroker::durable;
use argsbroker::pb;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Mutex};

/// One revision of the document, with the reply every reader is handed.
#[derive(Debug)]
pub struct Snapshot {
    pub revision: u64,
    pub document: Document,
    /// The whole-document `Args`, built once per revision.
    pub reply: pb::Args,
    /// The same reply as GetArgs sends it (see `prepared`).
    pub frame: Frame,
}

impl Snapshot {
    fn new(revision: u64, document: Document, lineage: &str) -> Self {
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
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error(
        "cannot create the state directory {path}: {source} (choose another with --state-dir)"
    )]
    StateDir { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Lineage(#[from] crate::lineage::LineageError),
    #[error("cannot record the revision in {path}: {source}")]
    Record { path: PathBuf, source: io::Error },
}

/// Why a write was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "revision conflict: expected revision {expected}, but the current revision is {current}"
    )]
    Conflict { expected: u64, current: u64 },
    #[error("the broker is read-only (--read-only): change the args file and send SIGHUP")]
    ReadOnly,
    #[error("{0}")]
    Invalid(DocumentError),
    #[error("the patch would make the top level {0}: the args must stay a JSON object")]
    PatchNotAnObject(&'static str),
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
    #[error("could not save the args to disk: {0}")]
    Io(io::Error),
}

pub struct Limits {
    pub max_args_bytes: usize,
    pub history: usize,
    pub history_bytes: usize,
    pub read_only: bool,
}

pub struct Store {
    /// The id of this state's revisions (see `lineage`).
    lineage: String,
    current: ArcSwap<Snapshot>,
    watch: watch::Sender<Arc<Snapshot>>,
    /// Touched by writers, ListRevisions and watch replays; never by GetArgs.
    history: std::sync::Mutex<History>,
    args_path: PathBuf,
    limits: Limits,
    write_lock: Mutex<()>,
}

impl Store {
    /// Loads the args file and gives it its revision: the newest history
    /// entry's if the content is unchanged, the next one if it changed while
    /// the broker was down (so a revision never names two documents).
    pub fn open(args_path: &Path, state_dir: &Path, limits: Limits) -> Result<Self, OpenError> {
        let document = read_document(args_path, limits.max_args_bytes)?;
        create_private_dir(state_dir).map_err(|source| OpenError::StateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let lineage = crate::lineage::load_or_create(state_dir)?;
        let history_dir = state_dir.join("history");
        let mut history = History::open(&history_dir, limits.history, limits.history_bytes)?;
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
                .map_err(|source| OpenError::Record {
                    path: history_dir.clone(),
                    source,
                })?;
        }
        let snapshot = Arc::new(Snapshot::new(revision, document, &lineage));
        Ok(Self {
            lineage,
            current: ArcSwap::new(snapshot.clone()),
            watch: watch::Sender::new(snapshot),
            history: std::sync::Mutex::new(history),
            args_path: args_path.to_path_buf(),
            limits,
            write_lock: Mutex::new(()),
        })
    }

    /// The current snapshot: one atomic load, no lock.
    pub fn current(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// A receiver that sees the current snapshot, then only the newest one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.watch.subscribe()
    }

    pub fn max_args_bytes(&self) -> usize {
        self.limits.max_args_bytes
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
        self.history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces the document with `json`.
    pub async fn set(
        &self,
        json: &str,
        expected: Option<u64>,
        uid: Option<u32>,
    ) -> Result<Arc<Snapshot>, WriteError> {
        self.check_writable("the document is", json.len())?;
        let next = Document::parse(json.as_bytes()).map_err(WriteError::Invalid)?;
        let origin = Origin {
            source: Source::Set,
            uid,
        };
        self.write(expected, origin, true, move |_| Ok(next)).await
    }

    /// Applies an RFC 7386 merge patch to the document.
    pub async fn patch(
        &self,
        merge_patch: &str,
        expected: Option<u64>,
        uid: Option<u32>,
    ) -> Result<Arc<Snapshot>, WriteError> {
        self.check_writable("the patch is", merge_patch.len())?;
        let patch = argsbroker::document::parse_value(merge_patch.as_bytes())
            .map_err(WriteError::Invalid)?;
        let origin = Origin {
            source: Source::Patch,
            uid,
        };
        self.write(expected, origin, true, move |current| {
            let mut value = current.to_value();
            argsbroker::document::merge_patch(&mut value, &patch);
            Document::from_value(value).map_err(|e| match e {
                DocumentError::NotAnObject(kind) => WriteError::PatchNotAnObject(kind),
                other => WriteError::Invalid(other),
            })
        })
        .await
    }

    /// Makes a new revision with the content of a retained one.
    pub async fn rollback(
        &self,
        to_revision: u64,
        expected: Option<u64>,
        uid: Option<u32>,
    ) -> Result<Arc<Snapshot>, WriteError> {
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
        self.write(expected, origin, true, move |_| Ok(next)).await
    }

    /// Re-reads the args file (SIGHUP, --watch). `Ok(None)` if its content
    /// is the current document; on error nothing changes.
    pub async fn reload(&self) -> Result<Option<Arc<Snapshot>>, OpenError> {
        let document = read_document(&self.args_path, self.limits.max_args_bytes)?;
        if document.sha256() == self.current().document.sha256() {
            return Ok(None);
        }
        let origin = Origin {
            source: Source::File,
            uid: None,
        };
        match self.write(None, origin, false, move |_| Ok(document)).await {
            Ok(snapshot) => Ok(Some(snapshot)),
            Err(WriteError::Io(source)) => Err(OpenError::Record {
                path: self.args_path.clone(),
                source,
            }),
            Err(other) => Err(OpenError::Record {
                path: self.args_path.clone(),
                source: io::Error::other(other),
            }),
        }
    }

    fn check_writable(&self, what: &'static str, size: usize) -> Result<(), WriteError> {
        if self.limits.read_only {
            return Err(WriteError::ReadOnly);
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
    /// revision. `save_args` is false when the args file is the source.
    async fn write(
        &self,
        expected: Option<u64>,
        origin: Origin,
        save_args: bool,
        next: impl FnOnce(&Document) -> Result<Document, WriteError>,
    ) -> Result<Arc<Snapshot>, WriteError> {
        let _writer = self.write_lock.lock().await;
        let current = self.current.load_full();
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
        let revision = current.revision + 1;
        let record = entry(revision, &document, origin);
        let pretty_args = save_args.then(|| argsbroker::document::pretty(document.json()));
        let args_path = self.args_path.clone();
        // Blocking file I/O, on this task: the write lock serializes writers
        // anyway, and block_in_place keeps the runtime's other work moving.
        tokio::task::block_in_place(|| -> io::Result<()> {
            // The args file first, then its history entry: after a crash
            // between the two, the next start sees new content and gives it
            // this same revision, which no reader has seen yet.
            if let Some(bytes) = &pretty_args {
                durable::write_atomic(&args_path, bytes)?;
            }
            self.history().append(record)
        })
        .map_err(WriteError::Io)?;
        let snapshot = Arc::new(Snapshot::new(revision, document, &self.lineage));
        self.current.store(snapshot.clone());
        self.watch.send_replace(snapshot.clone());
        release_freed_memory();
        tracing::info!(
            revision,
            source = origin.source.as_str(),
            uid = origin.uid,
            "new revision"
        );
        Ok(snapshot)
    }
}

/// Hands memory freed by building a snapshot back to the OS. Parsing a
/// document briefly takes about 15 times its size, and glibc keeps freed
/// memory in its arenas: without this the broker's resident size would
/// track its largest parse, not what it holds (for a 1 MiB document, 20 MiB
/// instead of 7).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only gives the free pages of glibc's heaps back to the OS.
    unsafe {
        libc::malloc_trim(0);
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

fn read_document(path: &Path, max_bytes: usize) -> Result<Document, OpenError> {
    let read_err = |source| OpenError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.is_dir() {
        return Err(OpenError::IsDirectory {
            path: path.to_path_buf(),
        });
    }
    if meta.len() > max_bytes as u64 {
        return Err(OpenError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
            max: max_bytes,
        });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
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
    Ok(document)
}

/// Creates `dir` and its missing parents with mode 0700: the state holds
/// every retained document, which only the broker's user may read.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
