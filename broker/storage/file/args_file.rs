//! The args file an operator edits: reading it (never more than
//! `--max-args-bytes`, never a FIFO or a device), and what a crashed write
//! may have left beside it.
use super::OpenError;
use crate::follow::Stamp;
use crate::storage::admit::satisfies;
use argsbroker::document::Document;
use argsbroker::durable;
use argsbroker::schema::Schema;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The args file as read at start, before anything is written: a file the
/// broker refuses leaves no state behind.
pub struct ArgsFile {
    pub(super) path: PathBuf,
    pub(super) document: Document,
    pub(super) stamp: Stamp,
}

impl ArgsFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

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

/// Reads and parses the args file, refusing what is not a regular file and
/// reading at most `max_bytes` + 1 whatever its size claims; returns the
/// document and the stamp of the file it was read from.
pub(super) fn read_document(path: &Path, max_bytes: usize) -> Result<(Document, Stamp), OpenError> {
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
pub(super) fn remove_leftover_temp_files(args_path: &Path) {
    for leftover in leftover_temp_files(args_path) {
        let _ = std::fs::remove_file(leftover);
    }
}

/// `.args.json.PID.N.tmp` beside the (resolved) args file.
pub(super) fn leftover_temp_files(args_path: &Path) -> Vec<PathBuf> {
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
