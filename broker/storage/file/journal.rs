//! The file engine's commit log, `STATE/journal`: an append-only file of
//! framed records, one per revision. A commit is one append of every record
//! of a group and one `fdatasync`; a revision is acknowledged only after it.
//!
//! A frame is the payload's length and CRC-32 (both little-endian `u32`),
//! then the payload. A broker killed during an append leaves at most a torn
//! last frame (cut short, or its CRC wrong; or zeros, where a filesystem
//! made the file longer but never wrote the data), which was never
//! acknowledged and is cut off when the journal is opened. A bad frame with whole frames
//! after it is damage, not a crash: the journal is refused, never silently
//! shortened.
//!
//! The journal only grows between compactions: [`Journal::rewrite`] replaces
//! it with the records still retained (a new file, fsynced, renamed over).
use crate::storage::error::JournalError;
use argsbroker::durable;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const HEADER: usize = 8;

/// A record larger than this is damage (a document is bounded by
/// `--max-args-bytes`, far below).
const MAX_RECORD: usize = 1 << 31;

pub struct Journal {
    path: PathBuf,
    file: File,
    /// Where the next frame goes: the end of the last whole frame.
    len: u64,
    /// Set when a failed append could not be taken back: every later
    /// append is refused until the broker restarts (and opens it again).
    poisoned: Option<String>,
}

impl Journal {
    /// Opens (or creates, mode 0600) the journal at `path` and returns it
    /// with every record's payload, oldest first. A torn last frame is cut off.
    pub fn open(path: &Path) -> Result<(Self, Vec<Vec<u8>>), JournalError> {
        let open_err = |source| JournalError::Open {
            path: path.to_path_buf(),
            source,
        };
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map_err(open_err)?;
        if created {
            durable::sync_dir(path).map_err(open_err)?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(open_err)?;
        let (records, end) = frames(&bytes).map_err(|(offset, why)| JournalError::Damaged {
            path: path.to_path_buf(),
            offset,
            why,
        })?;
        if end < bytes.len() as u64 {
            tracing::warn!(
                journal = %path.display(),
                offset = end,
                cut = bytes.len() as u64 - end,
                "the journal ends in a record cut short by a crash (never acknowledged); removing it"
            );
            file.set_len(end).map_err(open_err)?;
            file.sync_data().map_err(open_err)?;
        }
        let journal = Self {
            path: path.to_path_buf(),
            file,
            len: end,
            poisoned: None,
        };
        Ok((journal, records))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of whole frames.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Appends one frame per payload and makes them durable with one
    /// `fdatasync`. On error the journal is cut back to where it was, so a
    /// refused group leaves nothing behind.
    pub fn append(&mut self, payloads: &[Vec<u8>]) -> io::Result<()> {
        if let Some(why) = &self.poisoned {
            return Err(io::Error::other(why.clone()));
        }
        let mut buf = Vec::with_capacity(payloads.iter().map(|p| p.len() + HEADER).sum());
        for payload in payloads {
            frame(&mut buf, payload);
        }
        let written = self
            .file
            .write_all_at(&buf, self.len)
            .and_then(|()| self.file.sync_data());
        if let Err(err) = written {
            // Cutting a file shorter needs no space; it is made durable so
            // that a crash after the refusal cannot bring the records back.
            let cut = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data());
            if let Err(cut) = cut {
                let why = format!(
                    "the journal {} could not be cut back after a failed write ({}); restart the broker",
                    self.path.display(),
                    durable::reason(&cut)
                );
                tracing::error!("{why}");
                self.poisoned = Some(why);
            }
            return Err(err);
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Replaces the journal with one holding `payloads` only (a compaction),
    /// durably: a new file, fsynced, renamed over the old, directory fsynced.
    /// On error the old journal stays in use.
    pub fn rewrite<'a>(&mut self, payloads: impl Iterator<Item = &'a [u8]>) -> io::Result<()> {
        let mut buf = Vec::new();
        for payload in payloads {
            frame(&mut buf, payload);
        }
        let tmp = self.path.with_extension("compacting");
        let written = (|| {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&tmp)?;
            file.write_all(&buf)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            durable::sync_dir(&self.path)?;
            Ok(file)
        })();
        match written {
            Ok(file) => {
                self.file = file;
                self.len = buf.len() as u64;
                Ok(())
            }
            Err(err) => {
                let _ = std::fs::remove_file(&tmp);
                Err(err)
            }
        }
    }
}

fn frame(buf: &mut Vec<u8>, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Where a journal is damaged: the offset, and what is wrong there.
type Damage = (u64, &'static str);

/// The payloads of the whole frames in `bytes`, and where they end. A bad
/// frame is a torn tail (the end) if nothing whole follows it, else damage;
/// so is a tail of zeros (eight of them would pass for an empty record).
fn frames(bytes: &[u8]) -> Result<(Vec<Vec<u8>>, u64), Damage> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < HEADER || rest.iter().all(|b| *b == 0) {
            // A crash can leave zeros where an append was meant to go (the
            // file longer, the data never written): a torn tail too.
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len == 0 {
            // Never written (every record is a JSON object): zeros with
            // something else after them.
            return Err((at as u64, "a record is empty"));
        }
        if len >= MAX_RECORD || rest.len() - HEADER < len {
            // Cut short: only the last frame can be.
            break;
        }
        let payload = &rest[HEADER..HEADER + len];
        if crc32fast::hash(payload) != crc {
            if HEADER + len == rest.len() {
                break;
            }
            return Err((at as u64, "a record's checksum does not match"));
        }
        records.push(payload.to_vec());
        at += HEADER + len;
    }
    Ok((records, at as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("record {i}").into_bytes()).collect()
    }

    #[test]
    fn appends_reopen_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut journal, found) = Journal::open(&path).unwrap();
        assert!(found.is_empty());
        journal.append(&payloads(2)).unwrap();
        journal.append(&payloads(1)).unwrap();
        let whole = journal.len();
        drop(journal);
        // A crash in the middle of the next append: half a frame.
        let mut torn = Vec::new();
        frame(&mut torn, b"never acknowledged");
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&torn[..torn.len() / 2]).unwrap();
        drop(file);

        let (mut journal, found) = Journal::open(&path).unwrap();
        assert_eq!(
            found,
            [
                b"record 0".to_vec(),
                b"record 1".to_vec(),
                b"record 0".to_vec()
            ]
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        journal.append(&[b"next".to_vec()]).unwrap();
        drop(journal);
        let (_, found) = Journal::open(&path).unwrap();
        assert_eq!(found.last().unwrap(), b"next");
    }

    #[test]
    fn a_wrong_checksum_is_a_torn_tail_only_at_the_end() {
        let mut bytes = Vec::new();
        frame(&mut bytes, b"one");
        frame(&mut bytes, b"two");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(frames(&bytes).unwrap(), (vec![b"one".to_vec()], 11));

        let mut bytes = Vec::new();
        frame(&mut bytes, b"one");
        frame(&mut bytes, b"two");
        bytes[HEADER] ^= 1;
        assert_eq!(
            frames(&bytes).unwrap_err(),
            (0, "a record's checksum does not match")
        );
    }

    /// A crash can leave the journal longer than what was written into it:
    /// a filesystem that extended the file but never wrote the data reads
    /// back zeros. Eight zero bytes look like a whole frame (length 0, and 0
    /// is the CRC-32 of nothing), but no record is empty: a zero tail is torn.
    #[test]
    fn a_tail_of_zeros_is_a_torn_tail() {
        let mut bytes = Vec::new();
        frame(&mut bytes, b"one");
        let whole = bytes.len() as u64;
        for zeros in [1, 8, 9, 4096] {
            let mut torn = bytes.clone();
            torn.resize(bytes.len() + zeros, 0);
            assert_eq!(
                frames(&torn).unwrap(),
                (vec![b"one".to_vec()], whole),
                "{zeros} zeros"
            );
        }
        // An empty record with more after it is damage, not a torn tail.
        let mut damaged = bytes.clone();
        damaged.extend_from_slice(&[0; HEADER]);
        frame(&mut damaged, b"two");
        assert_eq!(frames(&damaged).unwrap_err(), (whole, "a record is empty"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut journal, _) = Journal::open(&path).unwrap();
        journal.append(&payloads(1)).unwrap();
        drop(journal);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[0; 512]).unwrap();
        drop(file);
        let (_, found) = Journal::open(&path).unwrap();
        assert_eq!(found, [b"record 0".to_vec()]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), (HEADER + 8) as u64);
    }

    #[test]
    fn rewrite_keeps_only_what_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut journal, _) = Journal::open(&path).unwrap();
        journal.append(&payloads(5)).unwrap();
        let kept = payloads(5);
        journal
            .rewrite(kept[3..].iter().map(Vec::as_slice))
            .unwrap();
        journal.append(&[b"after".to_vec()]).unwrap();
        drop(journal);
        let (_, found) = Journal::open(&path).unwrap();
        assert_eq!(
            found,
            [
                b"record 3".to_vec(),
                b"record 4".to_vec(),
                b"after".to_vec()
            ]
        );
        assert!(!dir.path().join("journal.compacting").exists());
    }
}
