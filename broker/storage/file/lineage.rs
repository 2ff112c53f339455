//! The lineage of a state: a random id made together with the state
//! directory. Revisions are ordered only within one lineage, so a state that
//! was deleted (starting over at revision 1) or replaced by another is told
//! apart from the one a worker followed before, and the worker adopts it
//! instead of ignoring its "older" revisions.
pub use crate::storage::error::LineageError;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The lineage recorded in `state_dir/lineage`, made (durably) if there is none.
pub fn load_or_create(state_dir: &Path) -> Result<String, LineageError> {
    let path = state_dir.join("lineage");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(id.to_owned())
            } else {
                Err(LineageError::Damaged { path })
            }
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let id = random_id().map_err(|source| LineageError::Create {
                path: path.clone(),
                source,
            })?;
            write_new(&path, &id).map_err(|source| LineageError::Create { path, source })?;
            Ok(id)
        }
        Err(source) => Err(LineageError::Read { path, source }),
    }
}

/// 128 random bits as 32 lowercase hex digits.
pub fn random_id() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_new(path: &Path, id: &str) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(format!("{id}\n").as_bytes())?;
    file.sync_all()?;
    argsbroker::durable::sync_dir(path)
}
