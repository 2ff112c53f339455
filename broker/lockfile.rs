//! Lock files: `flock` held for the broker's whole life, with the broker's
//! pid and socket inside so that a second broker can say who holds it.
//!
//! Two brokers started at once both try to lock the file and exactly one
//! succeeds; a broker killed with SIGKILL releases it with its last file
//! descriptor. Dropping a [`LockFile`] removes the file while still holding
//! the lock, and a broker that locks a file checks that it is still the one
//! at the path, so the removal cannot let two in.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock; what it wrote in the file, if anything.
    #[error("{path} is locked by another broker")]
    Held { path: PathBuf, holder: Holder },
    #[error("cannot lock {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Who holds a lock, as it wrote itself into the file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
    pub socket: Option<String>,
}

impl std::fmt::Display for Holder {
    /// `another broker (pid 4242, socket /run/a.sock)`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut facts = Vec::new();
        if let Some(pid) = self.pid {
            facts.push(format!("pid {pid}"));
        }
        if let Some(socket) = &self.socket {
            facts.push(format!("socket {socket}"));
        }
        match facts.is_empty() {
            true => write!(f, "another broker"),
            false => write!(f, "another broker ({})", facts.join(", ")),
        }
    }
}

pub struct LockFile {
    path: PathBuf,
    file: File,
}

impl LockFile {
    /// Locks `path` (created with mode 0600 if missing) and writes this
    /// process's pid into it, then `socket` if given (a pid file's tools
    /// read the first line).
    pub fn acquire(path: &Path, socket: Option<&Path>) -> Result<Self, LockError> {
        let io_err = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        for _ in 0..16 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path)
                .map_err(io_err)?;
            let meta = file.metadata().map_err(io_err)?;
            if !meta.file_type().is_file() {
                return Err(io_err(io::Error::other("it is not a regular file")));
            }
            if let Err(err) = argsbroker::sys::lock_exclusive(&file) {
                return Err(match err.raw_os_error() {
                    Some(libc::EWOULDBLOCK) => LockError::Held {
                        path: path.to_path_buf(),
                        holder: holder(&mut file),
                    },
                    _ => io_err(err),
                });
            }
            // The broker that held it may have removed it between our open and
            // our lock; then the file at the path is another one: start over.
            match fs::symlink_metadata(path) {
                Ok(now) if (now.dev(), now.ino()) == (meta.dev(), meta.ino()) => {
                    let mut text = format!("{}\n", std::process::id());
                    if let Some(socket) = socket {
                        text.push_str(&format!("{}\n", socket.display()));
                    }
                    let _ = file.set_len(0);
                    let _ = file.write_all(text.as_bytes());
                    return Ok(Self {
                        path: path.to_path_buf(),
                        file,
                    });
                }
                _ => continue,
            }
        }
        Err(io_err(io::Error::other(
            "it keeps being replaced while we lock it",
        )))
    }
}

/// What the holder wrote: its pid, then its socket, one per line.
fn holder(file: &mut File) -> Holder {
    let mut text = String::new();
    let _ = file.take(4096).read_to_string(&mut text);
    let mut lines = text.lines();
    Holder {
        pid: lines.next().and_then(|l| l.trim().parse().ok()),
        socket: lines.next().filter(|l| !l.is_empty()).map(str::to_owned),
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Unlinked while still locked; the descriptor closes after this.
        if let (Ok(now), Ok(ours)) = (fs::symlink_metadata(&self.path), self.file.metadata()) {
            if (now.dev(), now.ino()) == (ours.dev(), ours.ino()) {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_the_first_drop_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = LockFile::acquire(&path, Some(Path::new("/run/a.sock"))).unwrap();
        match LockFile::acquire(&path, Some(Path::new("/run/b.sock"))) {
            Err(LockError::Held { holder, .. }) => assert_eq!(
                holder.to_string(),
                format!(
                    "another broker (pid {}, socket /run/a.sock)",
                    std::process::id()
                )
            ),
            other => panic!("expected Held, got {:?}", other.map(|_| ())),
        }
        drop(first);
        assert!(!path.exists());
        LockFile::acquire(&path, Some(Path::new("/run/b.sock"))).unwrap();
    }
}
