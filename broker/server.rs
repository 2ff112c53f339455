//! Serving: the args service, health and reflection on one Unix listener,
//! until a shutdown signal.
use crate::service::Service;
use crate::store::Store;
use argsbroker::pb::{self, args_broker_server::ArgsBrokerServer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;
use tonic::transport::Server;

/// Headroom over the document size for the rest of an `Args` message.
const MESSAGE_OVERHEAD: usize = 64 * 1024;

/// How long open connections get to finish after the watches end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `store` on `listener` until `shutdown` completes, then ends every
/// watch and drains connections for a bounded time.
pub async fn run(
    listener: UnixListener,
    store: Arc<Store>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (stopping_tx, stopping) = watch::channel(false);
    let message_limit = store.max_args_bytes().saturating_add(MESSAGE_OVERHEAD);
    let args = ArgsBrokerServer::new(Service::new(store, stopping))
        .max_decoding_message_size(message_limit)
        .max_encoding_message_size(message_limit);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ArgsBrokerServer<Service>>()
        .await;
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let incoming = UnixListenerStream::new(listener).map(|conn| {
        if let Ok(stream) = &conn {
            match stream.peer_cred() {
                Ok(cred) => tracing::debug!(pid = ?cred.pid(), uid = cred.uid(), gid = cred.gid(), "connection"),
                Err(err) => tracing::debug!(%err, "connection with unknown peer"),
            }
        }
        conn
    });

    let (drained_tx, drained) = tokio::sync::oneshot::channel::<()>();
    let serve = Server::builder()
        .add_service(args)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            tracing::info!("shutting down");
            health_reporter
                .set_not_serving::<ArgsBrokerServer<Service>>()
                .await;
            let _ = stopping_tx.send(true);
            let _ = drained_tx.send(());
        });
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => result?,
        _ = async { let _ = drained.await; tokio::time::sleep(DRAIN_TIMEOUT).await } => {
            tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
        }
    }
    Ok(())
}

/// Reflection for the args service and health, so `grpcurl list` and `describe` work.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
