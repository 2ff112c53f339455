//! The retained revisions, in memory and on disk.
//!
//! Each revision is one record of the journal (see [`super::journal`]);
//! the newest says which revision the args file's content is. Old entries
//! are pruned by count (`--history`) and by total size (`--history-bytes`);
//! the newest is always kept, and a compaction drops the pruned ones from
//! the journal.
use crate::canary::CanaryRecord;
use crate::storage::admit::Source;
use argsbroker::pb;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

/// A canary's candidate: whom it was for, and the stable document it was
/// tried beside (kept with it, so the journal alone restores the canary).
#[derive(Debug, Clone)]
pub struct Candidate {
    pub record: CanaryRecord,
    pub stable_json: Bytes,
    pub stable_sha256: String,
    /// Made the revision everyone gets.
    pub promoted: bool,
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
    /// For people: "canary to 3 followers (25%); promoted", "aborted canary 12: ...".
    pub note: String,
    /// Set on a canary's candidate.
    pub candidate: Option<Candidate>,
    /// On the revision whose commit rewrote the args file: the sha256 of
    /// what the file held before. A restart that finds the file still
    /// holding that knows the rename never happened (a crash between the
    /// commit and the rename), whatever the file's mtime says.
    pub replaced: Option<String>,
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
            note: self.note.clone(),
        }
    }

    /// A candidate not promoted (running, or aborted): never what a plain
    /// reader got.
    pub fn only_a_candidate(&self) -> bool {
        self.candidate.as_ref().is_some_and(|c| !c.promoted)
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
    #[serde(default, skip_serializing_if = "String::is_empty")]
    note: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    canary: Option<CanaryRecord>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    canary_stable: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    promoted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replaced: Option<String>,
}

/// The retained revisions, in memory; the journal holds them on disk.
pub struct History {
    entries: VecDeque<Entry>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl History {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            max_entries: max_entries.max(1),
            max_bytes,
        }
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

    /// Bytes of the retained documents.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps `entry` (already in the journal) as the newest; prunes the oldest.
    /// Its revision is the newest + 1: the engine hands out revisions in
    /// order. A promotion is not a revision: it marks its candidate.
    pub fn retain(&mut self, entry: Entry) {
        if entry.source == Source::Promote {
            if let Some(candidate) = self
                .entries
                .iter_mut()
                .rev()
                .find(|e| e.revision == entry.revision)
            {
                if let Some(c) = &mut candidate.candidate {
                    c.promoted = true;
                }
                candidate.note = match candidate.note.is_empty() {
                    true => entry.note,
                    false => format!("{}; {}", candidate.note, entry.note),
                };
            }
            return;
        }
        self.bytes += entry.json.len();
        self.entries.push_back(entry);
        self.prune();
    }

    /// Drops the oldest entries beyond the count and size bounds; the
    /// newest entry always stays.
    fn prune(&mut self) {
        while self.entries.len() > 1
            && (self.entries.len() > self.max_entries || self.bytes > self.max_bytes)
        {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= old.json.len();
        }
    }
}

impl Entry {
    /// The entry as a journal record: one JSON object, the document embedded.
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        let document = std::str::from_utf8(&self.json).map_err(io::Error::other)?;
        let stable = match &self.candidate {
            Some(c) => Some(std::str::from_utf8(&c.stable_json).map_err(io::Error::other)?),
            None => None,
        };
        let record = Record {
            revision: self.revision,
            unix_millis: self.unix_millis,
            sha256: self.sha256.clone(),
            writer_uid: self.writer_uid,
            source: self.source,
            document: serde_json::from_str(document).map_err(io::Error::other)?,
            note: self.note.clone(),
            canary: self.candidate.as_ref().map(|c| c.record.clone()),
            canary_stable: match stable {
                Some(text) => Some(serde_json::from_str(text).map_err(io::Error::other)?),
                None => None,
            },
            promoted: self.candidate.as_ref().is_some_and(|c| c.promoted),
            replaced: self.replaced.clone(),
        };
        serde_json::to_vec(&record).map_err(io::Error::other)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let record: Record = serde_json::from_slice(bytes)?;
        let candidate = match (record.canary, record.canary_stable) {
            (Some(canary), Some(stable)) => {
                let stable_json = Bytes::copy_from_slice(stable.get().as_bytes());
                Some(Candidate {
                    stable_sha256: argsbroker::document::sha256_hex(&stable_json),
                    stable_json,
                    record: canary,
                    promoted: record.promoted,
                })
            }
            _ => None,
        };
        Ok(Self {
            revision: record.revision,
            unix_millis: record.unix_millis,
            sha256: record.sha256,
            writer_uid: record.writer_uid,
            source: record.source,
            json: Bytes::copy_from_slice(record.document.get().as_bytes()),
            note: record.note,
            candidate,
            replaced: record.replaced,
        })
    }
}

/// The entries of a state directory written before the journal (one file
/// per revision, `history/<revision:020>.json`), oldest first, for moving
/// them into the journal.
pub fn read_legacy(dir: &Path) -> Result<Vec<Entry>, (PathBuf, String)> {
    let items = match std::fs::read_dir(dir) {
        Ok(items) => items,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err((dir.to_path_buf(), err.to_string())),
    };
    let mut found = Vec::new();
    for item in items {
        let path = item.map_err(|e| (dir.to_path_buf(), e.to_string()))?.path();
        if let Some(revision) = entry_revision(&path) {
            found.push((revision, path));
        }
    }
    found.sort();
    found
        .into_iter()
        .map(|(_, path)| {
            let bytes = std::fs::read(&path).map_err(|e| (path.clone(), e.to_string()))?;
            Entry::decode(&bytes).map_err(|e| (path, e.to_string()))
        })
        .collect()
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
            note: String::new(),
            candidate: None,
            replaced: None,
        }
    }

    #[test]
    fn keeps_the_newest_by_count_and_size() {
        let mut history = History::new(3, 1000);
        for r in 1..=5 {
            history.retain(entry(r, &format!(r#"{{"r":{r}}}"#)));
        }
        let revisions: Vec<u64> = history.entries().map(|e| e.revision).collect();
        assert_eq!(revisions, [3, 4, 5]);
        let mut small = History::new(10, 3);
        small.retain(entry(1, r#"{"r":1}"#));
        small.retain(entry(2, r#"{"r":2}"#));
        assert_eq!(
            small.entries().map(|e| e.revision).collect::<Vec<_>>(),
            [2],
            "the newest stays even over the size bound"
        );
    }

    #[test]
    fn a_record_decodes_to_the_entry_it_was_made_of() {
        let e = entry(7, r#"{"a":[1,2.50]}"#);
        let back = Entry::decode(&e.encode().unwrap()).unwrap();
        assert_eq!(
            (
                back.revision,
                back.unix_millis,
                &back.sha256[..],
                back.writer_uid,
                back.source,
                &back.json[..]
            ),
            (
                7,
                1,
                "h7",
                Some(1000),
                Source::Patch,
                &br#"{"a":[1,2.50]}"#[..]
            )
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
