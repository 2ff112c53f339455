//! Serving: the args service, health and reflection on one Unix listener,
//! behind one access check, until a shutdown signal.
use crate::access::{AccessLayer, Policy};
use crate::connections::{self, Limits};
use crate::followers::Followers;
use crate::metrics::{self, Metrics};
use crate::page::Page;
use crate::service::{self, ArgsService};
use crate::storage::Storage;
use argsbroker::pb;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tonic::codegen::http;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;

/// Headroom over the document size for the rest of an `Args` message.
pub const MESSAGE_OVERHEAD: usize = 64 * 1024;

/// How long open connections get to finish after the watches end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Concurrent streams on one connection (SETTINGS_MAX_CONCURRENT_STREAMS):
/// a worker uses two; clients queue streams beyond this.
const MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// How the socket is served.
pub struct Config {
    pub limits: Limits,
    /// Ping a connection after this long without a frame from it, and close
    /// it if the ping is not answered within as long again.
    pub keepalive: Duration,
    pub policy: Policy,
    /// Binds the socket again if its file is deleted while serving.
    pub rebind: Option<connections::Rebind>,
    /// The Follow streams' followers (shared with the other hosts in etcd mode).
    pub followers: Arc<Followers>,
    /// Where `GET /metrics` and the status page are served
    /// (`--metrics-listen`), already bound, and the bounds its connections get.
    pub metrics: Option<(std::net::TcpListener, argsbroker::http_serve::Bounds)>,
    /// Whether the status page's diffs show values: not when reading the
    /// args is restricted (`--reader-uid`, `--reader-gid`).
    pub page_values: bool,
}

/// Serves `store` on `listener` until `shutdown` completes, then ends every
/// watch and drains connections for a bounded time.
pub async fn run(
    listener: UnixListener,
    store: Storage,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (stopping_tx, stopping) = watch::channel(false);
    let message_limit = store.max_args_bytes().saturating_add(MESSAGE_OVERHEAD);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status(service::NAME, ServingStatus::Serving)
        .await;
    // With etcd: NOT_SERVING while it is out of reach (reads are still
    // served, from the last revision received; writes are refused).
    let reporting = store.contact().map(|mut contact| {
        let reporter = health_reporter.clone();
        tokio::spawn(async move {
            loop {
                let status = match contact.borrow_and_update().connected {
                    true => ServingStatus::Serving,
                    false => ServingStatus::NotServing,
                };
                reporter.set_service_status(service::NAME, status).await;
                if contact.changed().await.is_err() {
                    return;
                }
            }
        })
    });
    // What the broker counts, served with --metrics-listen.
    let followers = config.followers.clone();
    let metrics = Arc::new(Metrics::new(followers.apply_seconds()));
    // When each revision was published here, for how long followers took.
    let mut publications = store.subscribe();
    let noting = followers.clone();
    let noting = tokio::spawn(async move {
        loop {
            let revision = publications.borrow_and_update().revision;
            tracing::trace!(target: service::STAGES, revision, "published");
            noting.published(revision);
            if publications.changed().await.is_err() {
                return;
            }
        }
    });
    let scraping = match config.metrics {
        Some((listener, bounds)) => {
            let mut stopping = stopping.clone();
            let stopped = async move {
                let _ = stopping.wait_for(|stopping| *stopping).await;
            };
            let page = Arc::new(Page::new(
                store.clone(),
                followers.clone(),
                config.page_values,
            ));
            let serving = metrics::serve(
                listener,
                bounds,
                metrics.clone(),
                page,
                store.clone(),
                followers.clone(),
                stopped,
            );
            Some(tokio::spawn(async move {
                if let Err(err) = serving.await {
                    tracing::error!("{}", argsbroker::one_line(err.as_ref()));
                }
            }))
        }
        None => None,
    };
    let args = ArgsService::new(
        store,
        followers,
        metrics.clone(),
        stopping.clone(),
        message_limit,
    );
    let mut routes = Routes::new(args)
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    // tonic answers a path that names no service with UNIMPLEMENTED and no
    // message at all; say which path it was.
    let router = std::mem::take(routes.axum_router_mut());
    *routes.axum_router_mut() = router.fallback(|uri: http::Uri| async move {
        service::unknown_method(uri.path()).into_http::<tonic::body::Body>()
    });

    let (incoming, accepting) = connections::incoming(listener, config.limits, config.rebind);

    let (drained_tx, drained) = tokio::sync::oneshot::channel::<()>();
    let serve = Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_keepalive_interval(Some(config.keepalive))
        .http2_keepalive_timeout(Some(config.keepalive))
        // Around every service, so that none slips past the check.
        .layer(AccessLayer::new(config.policy).counting(metrics))
        .add_routes(routes.prepare())
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            tracing::info!("shutting down");
            if let Some(reporting) = reporting {
                reporting.abort();
            }
            noting.abort();
            health_reporter
                .set_service_status(service::NAME, ServingStatus::NotServing)
                .await;
            let _ = stopping_tx.send(true);
            let _ = drained_tx.send(());
        });
    tokio::pin!(serve);
    let result = tokio::select! {
        result = &mut serve => result.map_err(anyhow::Error::from),
        _ = async { let _ = drained.await; tokio::time::sleep(DRAIN_TIMEOUT).await } => {
            tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
            Ok(())
        }
    };
    accepting.abort();
    if let Some(scraping) = scraping {
        scraping.abort();
    }
    result
}

/// Reflection for the args service and health, so `grpcurl list` and `describe` work.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
