//! Re-reading the args file: on SIGHUP, and with `--watch` whenever it
//! changes on disk. An invalid file is logged (with line and column) and the
//! current revision keeps being served; the next change is tried again.
use crate::storage::file::FileEngine as Store;
use std::path::Path;
use std::sync::Arc;

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

/// Follows the args file on disk, however it is replaced (see
/// [`crate::follow`]): each change becomes a revision, a change of mode or
/// owner alone does not.
pub fn watch_file(store: Arc<Store>, args: &Path) -> crate::follow::Following {
    crate::follow::follow(args, "args file", move || {
        let store = store.clone();
        async move {
            reload(&store).await;
        }
    })
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
