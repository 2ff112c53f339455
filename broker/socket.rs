//! Binding the broker's Unix socket: clear errors for paths that cannot
//! work, a lock file so that exactly one broker serves a path, a directory
//! that no other user could swap the socket in, and a mode that is never
//! more open than asked.
use crate::lockfile::{LockError, LockFile};
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "the socket path {path} is {len} bytes; a Unix socket path holds at most {MAX_SOCKET_PATH}"
    )]
    TooLong { path: PathBuf, len: usize },
    #[error("the socket directory {0} does not exist")]
    NoDirectory(PathBuf),
    #[error("the socket directory {dir} {why}, who could replace the socket with their own; use a directory only the broker's user can write (or --allow-unsafe-dir)")]
    UnsafeDirectory { dir: PathBuf, why: String },
    #[error("another broker is serving {0}")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("cannot give the socket {path} to group {gid}: {source}")]
    Group {
        path: PathBuf,
        gid: u32,
        source: io::Error,
    },
    #[error("cannot bind {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// How the socket file is made.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Permission bits, 0600 unless asked otherwise.
    pub mode: u32,
    /// The group the socket is given to, if any.
    pub group: Option<u32>,
}

/// The right to serve on a socket path: `PATH.lock` beside it, locked with
/// `flock` for as long as this lives. Two brokers started at once both try
/// to lock it and exactly one succeeds; a broker killed with SIGKILL
/// releases it with its last file descriptor. Dropping a claim removes the
/// lock file (it is unlinked while still locked, and a broker that locks a
/// file checks it is still the one at the path, so this cannot let two in).
pub struct Claim {
    path: PathBuf,
    /// Removed (while still locked) when the claim is dropped.
    _lock: LockFile,
    /// The socket file this broker made, by device and inode.
    bound: Option<(u64, u64)>,
    /// How it was made, to make it again the same way.
    options: Option<Options>,
    /// Whether a replaced (or unbindable) socket was already reported.
    told_replaced: bool,
}

/// Checks the path and its directory and takes the lock, before the args
/// are read, so a broker that loses the race changes nothing.
pub fn claim(path: &Path, allow_unsafe_dir: bool) -> Result<Claim, BindError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(BindError::TooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    let dir = argsbroker::durable::parent_or_dot(path);
    if !dir.is_dir() {
        return Err(BindError::NoDirectory(dir.to_path_buf()));
    }
    check_directory(dir, allow_unsafe_dir)?;
    // Refused here, before anything is read or written, not only at bind.
    if fs::symlink_metadata(path).is_ok_and(|meta| !meta.file_type().is_socket()) {
        return Err(BindError::NotASocket(path.to_path_buf()));
    }
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let lock = LockFile::acquire(&lock_path, None).map_err(|err| match err {
        LockError::Held { .. } => BindError::InUse(path.to_path_buf()),
        LockError::Io { path, source } => BindError::Lock { path, source },
    })?;
    Ok(Claim {
        path: path.to_path_buf(),
        _lock: lock,
        bound: None,
        options: None,
        told_replaced: false,
    })
}

/// Refuses (or with `allow` warns about) a directory in which a user other
/// than the broker's and root could rename or delete the socket: one that
/// is group- or world-writable without the sticky bit, or that another user
/// owns. Only the directory itself is checked, not its parents.
fn check_directory(dir: &Path, allow: bool) -> Result<(), BindError> {
    let meta = fs::metadata(dir).map_err(|source| BindError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    let me = argsbroker::sys::effective_uid();
    let why = if meta.uid() != 0 && meta.uid() != me {
        format!("belongs to uid {}", meta.uid())
    } else if mode & 0o1000 == 0 && mode & 0o022 != 0 {
        let who = if mode & 0o002 != 0 {
            "every user"
        } else {
            "its group"
        };
        format!("(mode {mode:04o}, no sticky bit) can be written by {who}")
    } else {
        return Ok(());
    };
    let err = BindError::UnsafeDirectory {
        dir: dir.to_path_buf(),
        why,
    };
    if !allow {
        return Err(err);
    }
    tracing::warn!("UNSAFE: {err}; serving anyway because of --allow-unsafe-dir");
    Ok(())
}

impl Claim {
    /// Binds the socket. A socket file left by a broker that was killed is
    /// replaced once nobody answers on it. The file is created with mode 0600
    /// (the umask is set around `bind`), given to the group, and only then
    /// opened up to `mode`: it is never more open than asked.
    pub fn bind(&mut self, options: Options) -> Result<UnixListener, BindError> {
        let path = self.path.clone();
        let io_err = |source| BindError::Io {
            path: path.clone(),
            source,
        };
        if let Ok(meta) = fs::symlink_metadata(&path) {
            if !meta.file_type().is_socket() {
                return Err(BindError::NotASocket(path));
            }
            match UnixStream::connect(&path) {
                // Holding the lock, this is a broker that takes none (an older one).
                Ok(_) => return Err(BindError::InUse(path)),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "replacing a stale socket that nobody serves");
                    fs::remove_file(&path).map_err(io_err)?;
                }
                Err(e) => return Err(io_err(e)),
            }
        }
        let bound = argsbroker::sys::with_umask(0o177, || UnixListener::bind(&path));
        let listener = bound.map_err(io_err)?;
        let meta = fs::symlink_metadata(&path).map_err(io_err)?;
        self.bound = Some((meta.dev(), meta.ino()));
        self.options = Some(options);
        let opened = self.open_up(options);
        if let Err(err) = opened {
            self.remove_socket();
            return Err(err);
        }
        listener.set_nonblocking(true).map_err(io_err)?;
        Ok(listener)
    }

    fn open_up(&self, options: Options) -> Result<(), BindError> {
        let path = &self.path;
        if let Some(gid) = options.group {
            std::os::unix::fs::lchown(path, None, Some(gid)).map_err(|source| {
                BindError::Group {
                    path: path.clone(),
                    gid,
                    source,
                }
            })?;
        }
        if options.mode != 0o600 {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(options.mode)).map_err(
                |source| BindError::Io {
                    path: path.clone(),
                    source,
                },
            )?;
        }
        Ok(())
    }

    /// If the socket file this broker made was deleted, binds the path again
    /// (the lock proves it is still this broker's to serve) and returns the
    /// new listener. A path now holding something else is left alone and
    /// reported once.
    pub fn rebind_if_deleted(&mut self) -> Option<UnixListener> {
        let (ours, options) = (self.bound?, self.options?);
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == ours => None,
            Ok(_) => {
                if !self.told_replaced {
                    self.told_replaced = true;
                    tracing::error!(socket = %self.path.display(), "the socket file was replaced by someone else; clients that open the path no longer reach this broker");
                }
                None
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                self.bound = None;
                match self.bind(options) {
                    Ok(listener) => {
                        self.told_replaced = false;
                        tracing::warn!(socket = %self.path.display(), "the socket file was deleted; bound it again");
                        Some(listener)
                    }
                    Err(err) => {
                        self.bound = Some(ours);
                        if !std::mem::replace(&mut self.told_replaced, true) {
                            tracing::error!("the socket file was deleted and cannot be bound again (retrying every second): {err}");
                        }
                        None
                    }
                }
            }
            Err(_) => None,
        }
    }

    /// Removes the socket file, if the one at the path is still ours.
    pub fn remove_socket(&mut self) {
        let Some(ours) = self.bound.take() else {
            return;
        };
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == ours => {
                if let Err(err) = fs::remove_file(&self.path) {
                    tracing::warn!(socket = %self.path.display(), %err, "could not remove the socket");
                }
            }
            _ => {
                tracing::warn!(socket = %self.path.display(), "the socket was replaced by someone else; leaving it")
            }
        }
    }
}
