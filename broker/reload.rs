//! Re-reading the args file: on SIGHUP, and with `--watch` whenever it
//! changes on disk. An invalid file is logged (with line and column) and the
//! current revision keeps being served; the next change is tried again.
use crate::store::Store;
use notify::{RecursiveMode, Watcher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Quiet time after a file event before reading: editors and deploy tools
/// often touch a file several times in a row.
const SETTLE: Duration = Duration::from_millis(50);

/// Reloads `store` on every SIGHUP, until the process ends.
pub fn on_sighup(store: Arc<Store>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the args file");
            if reload(&store).await {
                tracing::info!(
                    "the args file holds what the broker serves (revision {}); nothing to reload",
                    store.current().revision
                );
            }
        }
    });
    Ok(())
}

/// Follows the args file on disk. The directory is watched, not the file,
/// so that tools that rename a new file over it are seen too.
pub fn watch_file(store: Arc<Store>, args: &Path) -> anyhow::Result<notify::RecommendedWatcher> {
    let name = args
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let dir = argsbroker::durable::parent_or_dot(args).to_path_buf();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if event.kind.is_access() => {}
            Ok(event) => {
                if event
                    .paths
                    .iter()
                    .any(|p| p.file_name() == Some(name.as_os_str()))
                {
                    let _ = tx.send(());
                }
            }
            Err(err) => tracing::warn!(%err, "file watch error"),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Let a burst of events settle, then read once.
            loop {
                tokio::time::sleep(SETTLE).await;
                if rx.try_recv().is_err() {
                    break;
                }
                while rx.try_recv().is_ok() {}
            }
            reload(&store).await;
        }
    });
    Ok(watcher)
}

/// Reloads once; true if the file held nothing new (the broker's own last
/// write, or the current document).
async fn reload(store: &Store) -> bool {
    match store.reload().await {
        Ok(Some(snapshot)) => {
            tracing::info!(revision = snapshot.revision, "reloaded the args file");
            false
        }
        Ok(None) => {
            tracing::debug!("the args file is unchanged");
            true
        }
        Err(err) => {
            tracing::error!(
                "not reloaded, still serving revision {}: {}",
                store.current().revision,
                argsbroker::one_line(&err)
            );
            false
        }
    }
}
