//! The last-known-good cache file (`--cache-file`): every new revision is
//! written there atomically, and a worker that cannot reach its broker at
//! startup serves it instead of failing.
use argsbroker::client::Snapshot;
use argsbroker::document::Document;
use bytes::Bytes;
use std::io;
use std::path::{Path, PathBuf};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read the cache file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the cache file {path} is damaged: {message}")]
    Damaged { path: PathBuf, message: String },
}

/// Reads a cache file written by [`Writer`].
pub fn read(path: &Path) -> Result<Snapshot, CacheError> {
    let damaged = |message: String| CacheError::Damaged {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|source| CacheError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
    let revision = value
        .get("revision")
        .and_then(|r| r.as_u64())
        .ok_or_else(|| damaged("no revision".into()))?;
    let args = value
        .get("args")
        .cloned()
        .ok_or_else(|| damaged("no args".into()))?;
    let document = Document::from_value(args).map_err(|e| damaged(e.to_string()))?;
    Ok(Snapshot { revision, document })
}

/// Writes the newest revision to the cache file off the serving path; a
/// burst of revisions is coalesced into the newest one.
#[derive(Clone)]
pub struct Writer {
    latest: watch::Sender<Option<(u64, Bytes)>>,
}

impl Writer {
    pub fn start(path: PathBuf) -> Self {
        let (latest, mut changes) = watch::channel(None::<(u64, Bytes)>);
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let Some((revision, json)) = changes.borrow_and_update().clone() else {
                    continue;
                };
                let path = path.clone();
                let written =
                    tokio::task::spawn_blocking(move || write(&path, revision, &json)).await;
                match written {
                    Ok(Ok(())) => tracing::debug!(revision, "cache file written"),
                    Ok(Err(err)) => tracing::warn!(%err, "could not write the cache file"),
                    Err(err) => tracing::warn!(%err, "could not write the cache file"),
                }
            }
        });
        Self { latest }
    }

    pub fn save(&self, snapshot: &Snapshot) {
        self.latest
            .send_replace(Some((snapshot.revision, snapshot.document.json().clone())));
    }
}

/// `{"revision":N,"args":<document>}`, assembled from the prepared text.
fn write(path: &Path, revision: u64, json: &[u8]) -> io::Result<()> {
    let mut bytes = format!("{{\"revision\":{revision},\"args\":").into_bytes();
    bytes.extend_from_slice(json);
    bytes.extend_from_slice(b"}\n");
    argsbroker::durable::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        write(&path, 7, br#"{"big":123456789012345678901234567890}"#).unwrap();
        let snapshot = read(&path).unwrap();
        assert_eq!(snapshot.revision, 7);
        assert_eq!(
            snapshot.document.json_str(),
            r#"{"big":123456789012345678901234567890}"#
        );

        std::fs::write(&path, r#"{"revision": 7, "args": [1]}"#).unwrap();
        assert_eq!(
            read(&path).unwrap_err().to_string(),
            format!(
                "the cache file {} is damaged: the top level is an array: expected a JSON object",
                path.display()
            )
        );
    }
}
