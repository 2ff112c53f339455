//! The retained revisions, in memory and on disk.
//!
//! Each revision is one file, `history/<revision>.json`, written durably
//! after the args file: the newest entry is the commit record that says
//! which revision the args file's content is. Old entries are pruned by
//! count (`--history`) and by total size (`--history-bytes`); the newest is
//! always kept.
use argsbroker::durable;
use argsbroker::pb;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

/// How a revision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    File,
    Set,
    Patch,
    Rollback,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Set => "set",
            Source::Patch => "patch",
            Source::Rollback => "rollback",
        }
    }
}

/// One retained revision: its facts and its compact JSON text.
#[derive(Debug, Clone)]
pub struct Entry {
    pub revision: u64,
    pub unix_millis: u64,
    pub sha256: String,
    pub writer_uid: Option<u32>,
    pub source: Source,
    pub json: Bytes,
}

impl Entry {
    pub fn to_pb(&self) -> pb::Revision {
        pb::Revision {
            revision: self.revision,
            unix_millis: self.unix_millis,
            sha256: self.sha256.clone(),
            size_bytes: self.json.len() as u64,
            writer_uid: self.writer_uid,
            source: self.source.as_str().to_owned(),
        }
    }

    /// The entry as a whole-document `Args` of `lineage`, for replaying a watch.
    pub fn to_args(&self, lineage: &str) -> pb::Args {
        pb::Args {
            revision: self.revision,
            json: self.json.clone(),
            sha256: self.sha256.clone(),
            not_modified: false,
            lineage: lineage.to_owned(),
        }
    }
}

/// The on-disk form of an entry; the document is embedded as raw JSON.
#[derive(Serialize, Deserialize)]
struct Record<'a> {
    revision: u64,
    unix_millis: u64,
    sha256: String,
    writer_uid: Option<u32>,
    source: Source,
    #[serde(borrow)]
    document: &'a RawValue,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot read the history directory {path}: {source}")]
    ReadDir { path: PathBuf, source: io::Error },
    #[error(
        "the history entry {path} is damaged ({message}); move it away to continue without it"
    )]
    Damaged { path: PathBuf, message: String },
}

/// A file that could not be written, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", path.display(), argsbroker::durable::reason(error))]
pub struct SaveError {
    pub path: PathBuf,
    pub error: io::Error,
}

pub struct History {
    dir: PathBuf,
    entries: VecDeque<Entry>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl History {
    /// Loads the entries in `dir` (creating it), oldest first.
    pub fn open(dir: &Path, max_entries: usize, max_bytes: usize) -> Result<Self, HistoryError> {
        let read_dir_err = |source| HistoryError::ReadDir {
            path: dir.to_path_buf(),
            source,
        };
        durable::create_private_dir(dir).map_err(read_dir_err)?;
        let mut found = Vec::new();
        for item in std::fs::read_dir(dir).map_err(read_dir_err)? {
            let path = item.map_err(read_dir_err)?.path();
            if is_leftover_temp(&path) {
                // Left by a broker killed in the middle of a write.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(revision) = entry_revision(&path) else {
                continue;
            };
            found.push((revision, path));
        }
        found.sort();
        let mut history = Self {
            dir: dir.to_path_buf(),
            entries: VecDeque::new(),
            bytes: 0,
            max_entries: max_entries.max(1),
            max_bytes,
        };
        for (_, path) in found {
            let bytes = std::fs::read(&path).map_err(|e| damaged(&path, e.to_string()))?;
            let record: Record =
                serde_json::from_slice(&bytes).map_err(|e| damaged(&path, e.to_string()))?;
            history.bytes += record.document.get().len();
            history.entries.push_back(Entry {
                revision: record.revision,
                unix_millis: record.unix_millis,
                sha256: record.sha256,
                writer_uid: record.writer_uid,
                source: record.source,
                json: Bytes::copy_from_slice(record.document.get().as_bytes()),
            });
        }
        history.prune();
        Ok(history)
    }

    pub fn newest(&self) -> Option<&Entry> {
        self.entries.back()
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    pub fn get(&self, revision: u64) -> Option<&Entry> {
        self.entries.iter().find(|e| e.revision == revision)
    }

    pub fn oldest_revision(&self) -> Option<u64> {
        self.entries.front().map(|e| e.revision)
    }

    /// Writes `entry` durably, then retains it and prunes the oldest.
    pub fn append(&mut self, entry: Entry) -> Result<(), SaveError> {
        self.write(&entry)?.finish();
        self.retain(entry);
        Ok(())
    }

    /// Writes `entry`'s file durably (mode 0600 from its creation), not yet
    /// retained: the caller finishes or undoes it, then [`History::retain`]s it.
    pub fn write(&self, entry: &Entry) -> Result<durable::Replaced, SaveError> {
        let path = self.path_of(entry.revision);
        let saved = Self::encode(entry).and_then(|bytes| durable::replace(&path, &bytes, None));
        saved.map_err(|error| SaveError { path, error })
    }

    /// Keeps `entry` (whose file is written) as the newest; prunes the oldest.
    /// Its revision is the newest + 1: the store hands out revisions in order.
    pub fn retain(&mut self, entry: Entry) {
        self.bytes += entry.json.len();
        self.entries.push_back(entry);
        self.prune();
    }

    fn encode(entry: &Entry) -> io::Result<Vec<u8>> {
        let document = std::str::from_utf8(&entry.json).map_err(io::Error::other)?;
        let record = Record {
            revision: entry.revision,
            unix_millis: entry.unix_millis,
            sha256: entry.sha256.clone(),
            writer_uid: entry.writer_uid,
            source: entry.source,
            document: serde_json::from_str(document).map_err(io::Error::other)?,
        };
        let mut bytes = serde_json::to_vec(&record).map_err(io::Error::other)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Drops the oldest entries beyond the count and size bounds, in memory
    /// and on disk; the newest entry always stays.
    fn prune(&mut self) {
        while self.entries.len() > 1
            && (self.entries.len() > self.max_entries || self.bytes > self.max_bytes)
        {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= old.json.len();
            if let Err(err) = std::fs::remove_file(self.path_of(old.revision)) {
                if err.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(revision = old.revision, %err, "could not remove an old history entry");
                }
            }
        }
    }

    fn path_of(&self, revision: u64) -> PathBuf {
        self.dir.join(format!("{revision:020}.json"))
    }
}

fn damaged(path: &Path, message: String) -> HistoryError {
    HistoryError::Damaged {
        path: path.to_path_buf(),
        message,
    }
}

/// `.00000000000000000042.json.PID.N.tmp`: a temp file of `durable`.
fn is_leftover_temp(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
}

/// `00000000000000000042.json` → 42; anything else is not an entry.
fn entry_revision(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(revision: u64, json: &str) -> Entry {
        Entry {
            revision,
            unix_millis: 1,
            sha256: format!("h{revision}"),
            writer_uid: Some(1000),
            source: Source::Patch,
            json: Bytes::from(json.to_owned()),
        }
    }

    #[test]
    fn keeps_the_newest_by_count_and_size_and_reloads_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut history = History::open(dir.path(), 3, 1000).unwrap();
        for r in 1..=5 {
            history
                .append(entry(r, &format!(r#"{{"r":{r}}}"#)))
                .unwrap();
        }
        let revisions: Vec<u64> = history.entries().map(|e| e.revision).collect();
        assert_eq!(revisions, [3, 4, 5]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);

        let reloaded = History::open(dir.path(), 2, 1000).unwrap();
        let revisions: Vec<u64> = reloaded.entries().map(|e| e.revision).collect();
        assert_eq!(revisions, [4, 5]);
        let newest = reloaded.newest().unwrap();
        assert_eq!(
            (newest.source, newest.writer_uid, &newest.json[..]),
            (Source::Patch, Some(1000), &b"{\"r\":5}"[..])
        );

        let small = History::open(dir.path(), 10, 3).unwrap();
        assert_eq!(
            small.entries().count(),
            1,
            "the newest stays even over the size bound"
        );
    }

    #[test]
    fn ignores_files_that_are_not_entries() {
        assert_eq!(
            entry_revision(Path::new("00000000000000000042.json")),
            Some(42)
        );
        assert_eq!(entry_revision(Path::new("42.json")), None);
        assert_eq!(
            entry_revision(Path::new(".00000000000000000042.json.9.tmp")),
            None
        );
    }
}
