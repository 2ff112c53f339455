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
    #[error("cannot write the cache file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
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
    // Cache files written before lineages have none: the broker's is adopted.
    let lineage = match value.get("lineage") {
        None => String::new(),
        Some(serde_json::Value::String(l)) => l.clone(),
        Some(_) => return Err(damaged("the lineage is not a string".into())),
    };
    let document = Document::from_value(args).map_err(|e| damaged(e.to_string()))?;
    Ok(Snapshot {
        revision,
        lineage,
        document,
    })
}

/// What the cache file holds: revision, lineage, compact document.
type Entry = (u64, String, Bytes);

/// Writes the newest revision to the cache file off the serving path; a
/// burst of revisions is coalesced into the newest one.
#[derive(Clone)]
pub struct Writer {
    latest: watch::Sender<Option<Entry>>,
}

impl Writer {
    pub fn start(path: PathBuf) -> Self {
        let (latest, mut changes) = watch::channel(None::<Entry>);
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let Some((revision, lineage, json)) = changes.borrow_and_update().clone() else {
                    continue;
                };
                let path_for_log = path.clone();
                let path = path.clone();
                let written =
                    tokio::task::spawn_blocking(move || write(&path, revision, &lineage, &json))
                        .await;
                match written {
                    Ok(Ok(())) => tracing::debug!(revision, "cache file written"),
                    Ok(Err(err)) => tracing::warn!("{err}; serving revision {revision} anyway"),
                    Err(err) => tracing::warn!(
                        "cannot write the cache file {}: {err}",
                        path_for_log.display()
                    ),
                }
            }
        });
        Self { latest }
    }

    pub fn save(&self, snapshot: &Snapshot) {
        self.latest.send_replace(Some((
            snapshot.revision,
            snapshot.lineage.clone(),
            snapshot.document.json().clone(),
        )));
    }
}

/// `{"revision":N,"lineage":"ID","args":<document>}`, assembled from the prepared text.
fn write(path: &Path, revision: u64, lineage: &str, json: &[u8]) -> Result<(), CacheError> {
    let lineage = serde_json::Value::from(lineage);
    let mut bytes =
        format!("{{\"revision\":{revision},\"lineage\":{lineage},\"args\":").into_bytes();
    bytes.extend_from_slice(json);
    bytes.extend_from_slice(b"}\n");
    argsbroker::durable::write_atomic(path, &bytes).map_err(|source| CacheError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        write(
            &path,
            7,
            "0123456789abcdef0123456789abcdef",
            br#"{"big":123456789012345678901234567890}"#,
        )
        .unwrap();
        let snapshot = read(&path).unwrap();
        assert_eq!(snapshot.revision, 7);
        assert_eq!(snapshot.lineage, "0123456789abcdef0123456789abcdef");
        assert_eq!(
            snapshot.document.json_str(),
            r#"{"big":123456789012345678901234567890}"#
        );

        // A cache file from before lineages still loads, with no lineage.
        std::fs::write(&path, r#"{"revision": 3, "args": {"a": 1}}"#).unwrap();
        let snapshot = read(&path).unwrap();
        assert_eq!((snapshot.revision, snapshot.lineage.as_str()), (3, ""));
        assert_eq!(snapshot.document.json_str(), r#"{"a":1}"#);

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
