//! Durable file writes: a reader (or a broker restarted after kill -9) sees
//! either the old complete file or the new complete file, never a torn one;
//! and a replacement can be undone until it is finished, so a write whose
//! later step fails leaves every file as it was.
//!
//! Temp files are created with mode 0600 (`O_EXCL`, never loosened after
//! content is in them) in the target's own directory, so the rename that
//! publishes them is atomic.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Writes `contents` to a new temp file beside `path`, fsyncs it, renames it
/// over `path` and fsyncs the directory. On error nothing is left behind and
/// `path` is as it was. The new file has mode 0600 (the worker's cache).
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    replace(path, contents, None)?.finish();
    Ok(())
}

/// The permission bits and owner a replaced file keeps.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Keep {
    /// The mode and owner in `meta` (the file's as it is now).
    pub fn of(meta: &fs::Metadata) -> Self {
        Self {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }
}

/// A file replaced by [`replace`], not yet final: [`Replaced::undo`] puts
/// the old file back, [`Replaced::finish`] drops it.
#[must_use = "finish() or undo() a replacement"]
pub struct Replaced {
    path: PathBuf,
    /// What was at the path before.
    old: Old,
    /// The new file's metadata, as it was when written.
    new: fs::Metadata,
}

/// What was at a replaced path before, and where it is now.
enum Old {
    /// Nothing: undoing removes the new file.
    None,
    /// Kept under this name (swapped out, or linked before the rename).
    Kept(PathBuf),
    /// A file that could not be kept (no exchange, no hard link on this
    /// file system): the replacement cannot be undone.
    Lost,
}

/// Replaces `path` with `contents`, durably: temp file written and fsynced,
/// then atomically exchanged with the old file (which stays under the temp
/// name until [`Replaced::finish`]), then the directory fsynced. With `keep`
/// the new file gets that owner and mode before any content is in it. On
/// error every step is undone and `path` is as it was.
pub fn replace(path: &Path, contents: &[u8], keep: Option<Keep>) -> io::Result<Replaced> {
    replace_tagged(path, contents, keep, None)
}

/// [`replace`], with `tag` in the temp file's name (`.NAME.TAG.PID.N.tmp`):
/// the name the old file keeps until the replacement is finished, so that
/// after a crash it says which replacement it belongs to.
pub fn replace_tagged(
    path: &Path,
    contents: &[u8],
    keep: Option<Keep>,
    tag: Option<&str>,
) -> io::Result<Replaced> {
    let tmp = temp_path(path, tag);
    let new = match write_temp(&tmp, contents, keep, true) {
        Ok(meta) => meta,
        Err(err) => {
            let _ = fs::remove_file(&tmp);
            return Err(err);
        }
    };
    let old = match exchange(&tmp, path) {
        Ok(old) => old,
        Err(err) => {
            let _ = fs::remove_file(&tmp);
            return Err(err);
        }
    };
    let replaced = Replaced {
        path: path.to_path_buf(),
        old,
        new,
    };
    if let Err(err) = sync_dir(path) {
        if let Err(undo) = replaced.undo() {
            tracing::error!(path = %path.display(), %undo, "could not undo a failed replacement");
        }
        return Err(err);
    }
    Ok(replaced)
}

/// A new file written beside its path but not yet renamed over it, nor
/// fsynced: for a file whose content is made durable elsewhere (the args
/// file, whose revisions the broker's journal holds), so that a full disk
/// refuses the change before anything is committed.
#[must_use = "publish() or discard() a staged file"]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    new: fs::Metadata,
}

/// Writes `contents` to a temp file beside `path` (mode 0600, or `keep`'s
/// owner and mode before any content is in it). On error nothing is left.
pub fn stage(path: &Path, contents: &[u8], keep: Option<Keep>) -> io::Result<Staged> {
    let tmp = temp_path(path, None);
    match write_temp(&tmp, contents, keep, false) {
        Ok(new) => Ok(Staged {
            tmp,
            path: path.to_path_buf(),
            new,
        }),
        Err(err) => {
            let _ = fs::remove_file(&tmp);
            Err(err)
        }
    }
}

impl Staged {
    /// Renames the staged file over its path (atomic; not fsynced) and
    /// returns its metadata as written.
    pub fn publish(self) -> io::Result<fs::Metadata> {
        match fs::rename(&self.tmp, &self.path) {
            Ok(()) => Ok(self.new),
            Err(err) => {
                let _ = fs::remove_file(&self.tmp);
                Err(err)
            }
        }
    }

    pub fn discard(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

impl Replaced {
    /// The new file's metadata (device, inode, size, mtime), taken from the
    /// file written, not from whatever is at the path now.
    pub fn new_file(&self) -> &fs::Metadata {
        &self.new
    }

    /// Makes the replacement final: the old file is removed.
    pub fn finish(self) {
        if let Old::Kept(old) = &self.old {
            if let Err(err) = fs::remove_file(old) {
                tracing::warn!(path = %old.display(), %err, "could not remove a replaced file");
            }
        }
    }

    /// Puts the old file back (or removes the new one if there was none).
    pub fn undo(self) -> io::Result<()> {
        match &self.old {
            Old::Kept(old) => {
                // The old file's own name back: no new bytes, so no space needed.
                fs::rename(old, &self.path)?;
            }
            Old::None => fs::remove_file(&self.path)?,
            Old::Lost => {
                return Err(io::Error::other(
                    "the file system could neither exchange nor link the old file to keep it",
                ))
            }
        }
        sync_dir(&self.path)
    }
}

/// Creates `dir` and its missing parents with mode 0700: the state holds
/// every retained document, which only the broker's user may read.
/// One made by an older broker with a looser mode is tightened, and logged.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        tracing::warn!(
            dir = %dir.display(),
            "the state directory was mode {mode:04o}; made it 0700 (it holds every retained document)"
        );
    }
    Ok(())
}

/// An I/O error's reason without the `(os error N)` suffix:
/// `No space left on device`.
pub fn reason(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

/// Fsyncs the directory holding `path`, so that a rename or a new name in it is on disk.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(parent_or_dot(path))?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_or_dot(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn temp_path(path: &Path, tag: Option<&str>) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tag = tag.map(|t| format!("{t}.")).unwrap_or_default();
    parent_or_dot(path).join(format!(".{name}.{tag}{}.{seq}.tmp", std::process::id()))
}

fn write_temp(
    tmp: &Path,
    contents: &[u8],
    keep: Option<Keep>,
    sync: bool,
) -> io::Result<fs::Metadata> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(tmp)?;
    if let Some(keep) = keep {
        let meta = file.metadata()?;
        if (meta.uid(), meta.gid()) != (keep.uid, keep.gid) {
            // Owner first: chown clears setuid and setgid bits.
            let chowned = std::os::unix::fs::fchown(&file, Some(keep.uid), Some(keep.gid));
            // Said once: it fails the same way on every write.
            static TOLD: AtomicBool = AtomicBool::new(false);
            if let Err(err) = chowned {
                if !TOLD.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        path = %tmp.display(),
                        %err,
                        "cannot give the rewritten file its owner back (uid {}, gid {}); it will belong to the broker's user",
                        keep.uid,
                        keep.gid
                    );
                }
            }
        }
        file.set_permissions(fs::Permissions::from_mode(keep.mode))?;
    }
    file.write_all(contents)?;
    if sync {
        file.sync_all()?;
    }
    file.metadata()
}

/// Puts `from` at `to`, keeping what was at `to`: atomically swapped to
/// `from`'s name (renameat2 RENAME_EXCHANGE), or, where the file system
/// cannot exchange, hard-linked to a backup name before the rename.
fn exchange(from: &Path, to: &Path) -> io::Result<Old> {
    let err = match crate::sys::rename_exchange(from, to) {
        Ok(()) => return Ok(Old::Kept(from.to_path_buf())),
        Err(err) => err,
    };
    match err.raw_os_error() {
        Some(libc::ENOENT) if fs::symlink_metadata(to).is_err() => {
            fs::rename(from, to).map(|()| Old::None)
        }
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
            let backup = temp_path(to, None);
            let old = match fs::hard_link(to, &backup) {
                Ok(()) => Old::Kept(backup.clone()),
                Err(_) => Old::Lost,
            };
            match fs::rename(from, to) {
                Ok(()) => Ok(old),
                Err(err) => {
                    let _ = fs::remove_file(&backup);
                    Err(err)
                }
            }
        }
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_then_undo_restores_the_old_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let keep = Keep::of(&fs::metadata(&path).unwrap());
        let replaced = replace(&path, b"new", Some(keep)).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        replaced.undo().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn replace_then_finish_keeps_the_new_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        fs::write(&path, "old").unwrap();
        replace(&path, b"new", None).unwrap().finish();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_new_file_is_0600_and_undo_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("7.json");
        let replaced = replace(&path, b"x", None).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        replaced.undo().unwrap();
        assert!(!path.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
