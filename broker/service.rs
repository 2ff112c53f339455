//! The `argsbroker.v1.ArgsBroker` gRPC service: every method, in one place,
//! and the only place where store results become `Status` values.
//!
//! Requests are decoded with tonic's own decoder (`Streaming`), so every
//! method reports a missing, doubled, compressed, undecodable or oversized
//! request the same way. Replies are [`Frame`]s: the whole document is the
//! snapshot's frame, encoded once per revision and shared by reference count
//! (no copy per GetArgs call or per watcher, which tonic's generated server
//! would make); anything else is encoded per call. GetArgs and WatchArgs are
//! the hot paths, and this is why the service is routed here rather than by
//! tonic's generated `ArgsBrokerServer`.
use crate::canary::{Selector, Who};
use crate::followers::Followers;
use crate::metrics::{Metrics, Outcome, Write};
use crate::peer::Peer;
use crate::storage::admit::{CanaryStart, EndCanary};
use crate::storage::{Published, Storage, WriteError, WriteOptions};
use argsbroker::frame::Frame;
use argsbroker::pb;
use argsbroker::pointer::PointerError;
use bytes::Bytes;
use futures_util::future::{BoxFuture, Either};
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::watch;
use tonic::codec::{Codec, Streaming};
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::server::NamedService;
use tonic::{Code, Status};
use tower::BoxError;

/// The service's gRPC name, as routed and as health reports it.
pub const NAME: &str = "argsbroker.v1.ArgsBroker";

/// The target of the trace events that time the stages of one change
/// (`RUST_LOG=argsbroker::stages=trace`; `bench stages` reads them): off,
/// each costs one check of a cached filter.
pub const STAGES: &str = "argsbroker::stages";

/// The methods, by the last part of their gRPC path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    GetArgs,
    WatchArgs,
    SetArgs,
    PatchArgs,
    ListRevisions,
    Rollback,
    GetStatus,
    Follow,
    ListFollowers,
    PromoteCanary,
    AbortCanary,
}

impl Method {
    fn of_path(path: &str) -> Option<Self> {
        let name = path
            .strip_prefix('/')?
            .strip_prefix(NAME)?
            .strip_prefix('/')?;
        Some(match name {
            "GetArgs" => Self::GetArgs,
            "WatchArgs" => Self::WatchArgs,
            "SetArgs" => Self::SetArgs,
            "PatchArgs" => Self::PatchArgs,
            "ListRevisions" => Self::ListRevisions,
            "Rollback" => Self::Rollback,
            "GetStatus" => Self::GetStatus,
            "Follow" => Self::Follow,
            "ListFollowers" => Self::ListFollowers,
            "PromoteCanary" => Self::PromoteCanary,
            "AbortCanary" => Self::AbortCanary,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::GetArgs => "GetArgs",
            Self::WatchArgs => "WatchArgs",
            Self::SetArgs => "SetArgs",
            Self::PatchArgs => "PatchArgs",
            Self::ListRevisions => "ListRevisions",
            Self::Rollback => "Rollback",
            Self::GetStatus => "GetStatus",
            Self::Follow => "Follow",
            Self::ListFollowers => "ListFollowers",
            Self::PromoteCanary => "PromoteCanary",
            Self::AbortCanary => "AbortCanary",
        }
    }

    /// The write this method is, for the metrics.
    fn write(self) -> Option<Write> {
        Write::of_method(self.name())
    }
}

/// The args service, cloned per connection by tonic's router.
#[derive(Clone)]
pub struct ArgsService {
    store: Storage,
    followers: Arc<Followers>,
    metrics: Arc<Metrics>,
    /// Flips to true when the broker shuts down, ending every watch.
    shutdown: watch::Receiver<bool>,
    /// The largest request message accepted.
    limit: usize,
}

impl ArgsService {
    pub fn new(
        store: Storage,
        followers: Arc<Followers>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
        limit: usize,
    ) -> Self {
        Self {
            store,
            followers,
            metrics,
            shutdown,
            limit,
        }
    }
}

impl NamedService for ArgsService {
    const NAME: &'static str = NAME;
}

type Reply = http::Response<tonic::body::Body>;

impl<B> tower::Service<http::Request<B>> for ArgsService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
{
    type Response = Reply;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Reply, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move {
            Ok(match service.answer(request).await {
                Ok(frames) => ok(frames),
                Err(status) => status.into_http(),
            })
        })
    }
}

/// What a call answers: one frame, or (WatchArgs) one per revision.
type Frames = Either<stream::Once<std::future::Ready<Frame>>, BoxStream<'static, Frame>>;

fn one(frame: Frame) -> Frames {
    Either::Left(stream::once(std::future::ready(frame)))
}

impl ArgsService {
    async fn answer<B>(&self, request: http::Request<B>) -> Result<Frames, Status>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError> + Send,
    {
        let Some(method) = Method::of_path(request.uri().path()) else {
            return Err(unknown_method(request.uri().path()));
        };
        if let Some(encoding) = request.headers().get("grpc-encoding") {
            if encoding != "identity" {
                if let Some(write) = method.write() {
                    self.metrics.write(write, Outcome::Invalid);
                }
                return Err(compressed(method));
            }
        }
        let peer = request.extensions().get::<Peer>().cloned();
        let uid = peer.as_ref().map(|peer| peer.uid);
        let body = request.into_body();
        let store = &self.store;
        Ok(match method {
            Method::GetArgs => {
                let request = self.decode(body, method).await?;
                one(match get_args(store, request)? {
                    GetArgsReply::Whole(snapshot) => snapshot.frame.clone(),
                    GetArgsReply::Made(args) => Frame::new(&args),
                })
            }
            Method::WatchArgs => {
                let request: pb::WatchArgsRequest = self.decode(body, method).await?;
                let watching = self.metrics.watching();
                let updates =
                    watch_args(store, self.shutdown.clone(), request.start_revision, None).await;
                Either::Right(Box::pin(updates.map(move |frame| {
                    let _counted = &watching;
                    frame
                })))
            }
            Method::SetArgs => {
                let request: pb::SetArgsRequest =
                    self.refused(Write::SetArgs, self.decode(body, method).await)?;
                let wait = Wait::of(request.wait_applied_ms, request.rollback_on_reject);
                let before = store.current().revision;
                let options = self.options(
                    request.expected_revision,
                    uid,
                    &request.canary,
                    request.bake_ms,
                    request.force,
                )?;
                let canary = options.canary.is_some();
                let written = store.set_with(&request.json, options).await;
                self.count(Write::SetArgs, &written);
                one(self.settle(written, wait, before, uid, canary).await?)
            }
            Method::PatchArgs => {
                let request: pb::PatchArgsRequest =
                    self.refused(Write::PatchArgs, self.decode(body, method).await)?;
                tracing::trace!(target: STAGES, "write received");
                let wait = Wait::of(request.wait_applied_ms, request.rollback_on_reject);
                let before = store.current().revision;
                let options = self.options(
                    request.expected_revision,
                    uid,
                    &request.canary,
                    request.bake_ms,
                    request.force,
                )?;
                let canary = options.canary.is_some();
                let written = store.patch_with(&request.merge_patch, options).await;
                self.count(Write::PatchArgs, &written);
                one(self.settle(written, wait, before, uid, canary).await?)
            }
            Method::Rollback => {
                let request: pb::RollbackRequest =
                    self.refused(Write::Rollback, self.decode(body, method).await)?;
                let wait = Wait::of(request.wait_applied_ms, request.rollback_on_reject);
                let before = store.current().revision;
                let options = self.options(
                    request.expected_revision,
                    uid,
                    &request.canary,
                    request.bake_ms,
                    request.force,
                )?;
                let canary = options.canary.is_some();
                let written = store.rollback_with(request.to_revision, options).await;
                self.count(Write::Rollback, &written);
                one(self.settle(written, wait, before, uid, canary).await?)
            }
            Method::Follow => {
                let decoder = tonic_prost::ProstCodec::<(), pb::FollowRequest>::default().decoder();
                let mut requests = Streaming::new_request(decoder, body, None, Some(self.limit));
                let refused = |status| decode_error(status, method, self.limit);
                let Some(first) = requests.message().await.map_err(refused)? else {
                    return Err(Status::invalid_argument(
                        "a Follow call starts with a FollowRequest naming the follower",
                    ));
                };
                // Listed while either direction of the stream lasts: a
                // follower that half-closes its side still follows.
                let registration = Arc::new(self.followers.register(&first, peer.as_ref()));
                let reports = registration.clone();
                let watching = self.metrics.watching();
                tokio::spawn(async move {
                    while let Ok(Some(report)) = requests.message().await {
                        reports.report(&report);
                    }
                });
                // A canary selects followers by name, and by host with etcd.
                let who = (registration.name(), self.followers.local_host().to_owned());
                let updates = watch_args(store, self.shutdown.clone(), None, Some(who)).await;
                Either::Right(Box::pin(updates.map(move |frame| {
                    let _listed = (&registration, &watching);
                    frame
                })))
            }
            Method::ListFollowers => {
                let _: pb::ListFollowersRequest = self.decode(body, method).await?;
                let revision = store.current().revision;
                let mut followers = self.followers.list(revision);
                if let Some(canary) = store.canary() {
                    let local = self.followers.local_host();
                    for f in &mut followers {
                        let host = if f.host.is_empty() { local } else { &f.host };
                        f.canary = canary.selects(Who {
                            name: &f.name,
                            host,
                        });
                    }
                }
                one(Frame::message(&pb::ListFollowersResponse {
                    revision,
                    followers,
                }))
            }
            Method::PromoteCanary => {
                let request: pb::PromoteCanaryRequest = self.decode(body, method).await?;
                let end = EndCanary {
                    candidate: request.candidate_revision,
                    uid,
                    reason: String::new(),
                };
                one(store
                    .promote(end)
                    .await
                    .map_err(write_status)?
                    .frame
                    .clone())
            }
            Method::AbortCanary => {
                let request: pb::AbortCanaryRequest = self.decode(body, method).await?;
                let end = EndCanary {
                    candidate: request.candidate_revision,
                    uid,
                    reason: request.reason.trim().to_owned(),
                };
                one(store.abort(end).await.map_err(write_status)?.frame.clone())
            }
            Method::ListRevisions => {
                let _: pb::ListRevisionsRequest = self.decode(body, method).await?;
                let revisions = store.revisions().await.map_err(write_status)?;
                one(Frame::message(&pb::ListRevisionsResponse { revisions }))
            }
            Method::GetStatus => {
                let _: pb::GetStatusRequest = self.decode(body, method).await?;
                one(Frame::message(&status(store, &self.followers)))
            }
        })
    }

    /// A write's reply: its new snapshot, once every follower applied it if
    /// the request asked to wait; otherwise the status that says who did
    /// not (and, with rollback_on_reject, whether the old content is back).
    async fn settle(
        &self,
        written: Result<Arc<Published>, WriteError>,
        wait: Option<Wait>,
        before: u64,
        uid: Option<u32>,
        canary: bool,
    ) -> Result<Frame, Status> {
        let written = written.map_err(write_status)?;
        let Some(wait) = wait else {
            return Ok(written.frame.clone());
        };
        if written.revision == before {
            // Nothing changed: every follower already has it, or says so.
            return Ok(written.frame.clone());
        }
        // A canary's start waits for the followers it selects only.
        let running = self.store.canary().filter(|_| canary);
        let selected =
            running.map(|canary| move |name: &str, host: &str| canary.selects(Who { name, host }));
        let only = selected.as_ref().map(|s| s as &crate::followers::Only);
        let lagging = self
            .followers
            .wait_applied(written.revision, wait.timeout, only)
            .await;
        if lagging.is_empty() {
            return Ok(written.frame.clone());
        }
        let mut parts: Vec<String> = Vec::new();
        parts.extend(lagging.rejected.iter().cloned());
        parts.extend(
            lagging
                .behind
                .iter()
                .map(|b| format!("{b} after {}", humantime::format_duration(wait.timeout))),
        );
        parts.extend(lagging.left.iter().cloned());
        parts.extend(lagging.unconfirmed.iter().cloned());
        let mut message = format!(
            "revision {} is committed, but not every follower applied it: {}",
            written.revision,
            parts.join("; ")
        );
        if wait.rollback_on_reject && !lagging.rejected.is_empty() && canary {
            let end = EndCanary {
                candidate: Some(written.revision),
                uid,
                reason: format!("rejected: {}", lagging.rejected.join("; ")),
            };
            message.push_str(&match self.store.abort(end).await {
                Ok(back) => format!(
                    "; aborted: revision {} has the stable document again",
                    back.revision
                ),
                Err(err) => format!("; not aborted: {err}"),
            });
        } else if wait.rollback_on_reject && !lagging.rejected.is_empty() {
            let rolled = self
                .store
                .rollback(before, Some(written.revision), uid)
                .await;
            self.count(Write::Rollback, &rolled);
            message.push_str(&match rolled {
                Ok(back) => format!(
                    "; rolled back: revision {} has the content of revision {before}",
                    back.revision
                ),
                Err(err) => format!("; not rolled back: {err}"),
            });
        }
        let mut status = match lagging.rejected.is_empty() && lagging.left.is_empty() {
            true => Status::deadline_exceeded(message),
            false => Status::aborted(message),
        };
        if let Ok(value) = written.revision.to_string().parse() {
            status.metadata_mut().insert(COMMITTED_REVISION, value);
        }
        Err(status)
    }

    /// A write's options; with a canary, its selector parsed and (for `N`)
    /// the followers chosen, refused if it selects no follower connected.
    fn options(
        &self,
        expected: Option<u64>,
        uid: Option<u32>,
        canary: &str,
        bake_ms: u32,
        force: bool,
    ) -> Result<WriteOptions, Status> {
        let canary = match canary.trim() {
            "" => None,
            text => {
                let selector =
                    Selector::parse(text).map_err(|e| Status::invalid_argument(e.to_string()))?;
                let followers = self.followers.identities();
                let who = followers.iter().map(|(name, host)| Who { name, host });
                let chosen = selector.choose(who.clone());
                let matching = who.filter(|w| selector.selects(&chosen, *w)).count();
                if matching == 0 {
                    return Err(write_status(WriteError::NoFollowerSelected {
                        selector: selector.text().to_owned(),
                        followers: followers.len(),
                    }));
                }
                Some(CanaryStart {
                    selector,
                    chosen,
                    bake_ms,
                })
            }
        };
        Ok(WriteOptions {
            expected,
            uid,
            canary,
            force,
        })
    }

    /// Counts a write's request that was refused before the store saw it.
    fn refused<T>(&self, write: Write, decoded: Result<T, Status>) -> Result<T, Status> {
        if let Err(status) = &decoded {
            self.metrics.write(write, Outcome::of_code(status.code()));
        }
        decoded
    }

    /// Counts what the store made of a write.
    fn count(&self, write: Write, written: &Result<Arc<Published>, WriteError>) {
        let outcome = match written {
            Ok(_) => Outcome::Ok,
            Err(err) => Outcome::of_error(err),
        };
        self.metrics.write(write, outcome);
    }

    /// The one request message of a call, decoded by tonic's decoder.
    async fn decode<M, B>(&self, body: B, method: Method) -> Result<M, Status>
    where
        M: prost::Message + Default + Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError> + Send,
    {
        let decoder = tonic_prost::ProstCodec::<(), M>::default().decoder();
        let mut messages = Streaming::new_request(decoder, body, None, Some(self.limit));
        let refused = |status| decode_error(status, method, self.limit);
        let Some(message) = messages.message().await.map_err(refused)? else {
            return Err(Status::invalid_argument(format!(
                "a {} call needs one request message",
                method.name()
            )));
        };
        match messages.message().await.map_err(refused)? {
            None => Ok(message),
            Some(_) => Err(Status::invalid_argument(format!(
                "a {} call carries exactly one request message",
                method.name()
            ))),
        }
    }
}

/// tonic's decoding errors, said the same way for every method.
fn decode_error(status: Status, method: Method, limit: usize) -> Status {
    let method_name = method.name();
    match status.code() {
        Code::OutOfRange => Status::resource_exhausted(format!(
            "the {method_name} request is over the limit of {limit} bytes"
        )),
        Code::Internal if status.message().contains("compressed-flag") => compressed(method),
        Code::Internal if status.message().starts_with("Unexpected EOF") => {
            Status::invalid_argument(format!(
                "the {method_name} request ends in the middle of a message"
            ))
        }
        Code::Internal => Status::internal(format!(
            "cannot decode the {method_name} request: {}",
            status.message()
        )),
        _ => status,
    }
}

fn compressed(method: Method) -> Status {
    Status::unimplemented(format!(
        "compressed messages are not supported; send {} uncompressed",
        method.name()
    ))
}

/// A path that names no method of any service on the socket.
pub fn unknown_method(path: &str) -> Status {
    Status::unimplemented(format!(
        "no such method: {path:?} (this socket serves argsbroker.v1.ArgsBroker, grpc.health.v1.Health and server reflection)"
    ))
}

/// What GetArgs answers: the snapshot's own whole-document reply, or one
/// made for this request (a pointer's value, or "not modified").
pub enum GetArgsReply {
    /// The current snapshot, as loaded: no reference count is taken.
    Whole(arc_swap::Guard<Arc<Published>>),
    Made(pb::Args),
}

pub fn get_args(store: &Storage, request: pb::GetArgsRequest) -> Result<GetArgsReply, Status> {
    let snapshot = store.current();
    if request.if_none_match == Some(snapshot.revision) {
        return Ok(GetArgsReply::Made(pb::Args {
            revision: snapshot.revision,
            json: Bytes::new(),
            sha256: snapshot.reply.sha256.clone(),
            not_modified: true,
            lineage: snapshot.reply.lineage.clone(),
        }));
    }
    if request.pointer.is_empty() {
        return Ok(GetArgsReply::Whole(snapshot));
    }
    match snapshot.document.get(&request.pointer) {
        Ok(Some(value)) => Ok(GetArgsReply::Made(pb::Args {
            revision: snapshot.revision,
            json: Bytes::from(value.to_string()),
            sha256: snapshot.reply.sha256.clone(),
            not_modified: false,
            lineage: snapshot.reply.lineage.clone(),
        })),
        Ok(None) => Err(Status::not_found(format!(
            "no value at JSON pointer {:?} in revision {}",
            request.pointer, snapshot.revision
        ))),
        Err(err @ (PointerError::NoLeadingSlash(_) | PointerError::BadEscape(_))) => {
            Err(Status::invalid_argument(err.to_string()))
        }
    }
}

/// WatchArgs: the revisions after `start_revision` (if given and still
/// retained), then every newer snapshot, until the broker shuts down. The
/// watch channel holds only the newest snapshot: a slow reader skips to it
/// and the broker never queues revisions per watcher.
pub async fn watch_args(
    store: &Storage,
    mut shutdown: watch::Receiver<bool>,
    start_revision: Option<u64>,
    who: Option<(String, String)>,
) -> impl Stream<Item = Frame> + Send + 'static {
    // Subscribe before reading the history, so no revision falls between.
    let updates = store.feed(who);
    let replay = match start_revision {
        Some(after) => store.revisions_after(after).await.unwrap_or_default(),
        None => Vec::new(),
    };
    let mut last_sent = replay
        .last()
        .map(|args| (args.revision, args.lineage.clone()));
    let snapshots = futures_util::stream::unfold((updates, true), |(mut feed, first)| async move {
        if !first {
            feed.changed().await.ok()?;
        }
        let snapshot = feed.current();
        Some((snapshot, (feed, false)))
    });
    let follow = snapshots.filter_map(move |snapshot| {
        // A newer revision, or another lineage: with etcd, a key made again
        // or a cluster rebuilt starts its revisions over while watches run.
        let send = last_sent.as_ref().is_none_or(|(revision, lineage)| {
            snapshot.revision > *revision || snapshot.reply.lineage != *lineage
        });
        if send {
            last_sent = Some((snapshot.revision, snapshot.reply.lineage.clone()));
            tracing::trace!(target: STAGES, revision = snapshot.revision, "handed to a stream");
        }
        std::future::ready(send.then(|| snapshot.frame.clone()))
    });
    tokio_stream::iter(replay.into_iter().map(|args| Frame::new(&args)))
        .chain(follow)
        .take_until(async move {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        })
}

/// GetStatus: the current snapshot, the backend's state and the canary.
fn status(store: &Storage, followers: &Followers) -> pb::BrokerStatus {
    let current = store.current();
    let contact = store
        .contact()
        .map_or_else(crate::storage::Contact::file, |c| c.borrow().clone());
    let since = contact
        .since
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    pb::BrokerStatus {
        revision: current.revision,
        sha256: current.reply.sha256.clone(),
        lineage: current.reply.lineage.clone(),
        backend: store.describe(),
        backend_connected: contact.connected,
        backend_error: contact.reason,
        backend_since_unix_millis: since.as_millis() as u64,
        canary: store
            .canary()
            .map(|canary| crate::bake::describe(&canary, followers)),
    }
}

fn write_status(err: WriteError) -> Status {
    let message = err.to_string();
    match err {
        WriteError::Conflict { current, .. } => {
            let mut status = Status::failed_precondition(message);
            // Machine-readable, so clients need not parse the message.
            if let Ok(value) = current.to_string().parse() {
                status.metadata_mut().insert(CURRENT_REVISION, value);
            }
            status
        }
        WriteError::ReadOnly(_) => Status::failed_precondition(message),
        WriteError::NotRetained { .. } => Status::not_found(message),
        WriteError::Invalid(_) | WriteError::PatchNotAnObject(_) | WriteError::Schema(_) => {
            Status::invalid_argument(message)
        }
        WriteError::TooLarge { .. } => Status::resource_exhausted(message),
        #[cfg(feature = "etcd")]
        WriteError::Etcd(err) => {
            use crate::storage::etcd::EtcdError as E;
            match err {
                E::TooLarge { .. } | E::RefusedAsTooLarge { .. } => {
                    Status::resource_exhausted(message)
                }
                E::Unreachable { .. } | E::Unconfirmed { .. } | E::ReadUnreachable { .. } => {
                    tracing::warn!(%message, "write failed");
                    Status::unavailable(message)
                }
                E::Denied { .. } | E::ReadDenied { .. } => {
                    tracing::warn!(%message, "write refused");
                    Status::permission_denied(message)
                }
                E::Missing { .. } | E::CanaryNeedsRange { .. } => {
                    Status::failed_precondition(message)
                }
                E::Compacted | E::NoRevision | E::KeptChanging { .. } | E::Other { .. } => {
                    tracing::error!(%message, "write failed");
                    Status::internal(message)
                }
            }
        }
        WriteError::Stopping => Status::unavailable(message),
        WriteError::CanaryRunning { .. }
        | WriteError::NoCanary
        | WriteError::NotTheCandidate { .. }
        | WriteError::CanaryUnchanged { .. }
        | WriteError::NoFollowerSelected { .. } => Status::failed_precondition(message),
        WriteError::OutsideEdit(..) => {
            tracing::warn!(%message, "write refused");
            Status::failed_precondition(message)
        }
        WriteError::Save(_) => {
            tracing::error!(%message, "write failed");
            Status::internal(message)
        }
    }
}

/// Set when a write committed but its wait for the followers failed.
pub const COMMITTED_REVISION: &str = "argsbroker-committed-revision";

/// What a write asked to wait for.
#[derive(Debug, Clone, Copy)]
struct Wait {
    timeout: std::time::Duration,
    rollback_on_reject: bool,
}

impl Wait {
    fn of(wait_applied_ms: u32, rollback_on_reject: bool) -> Option<Self> {
        (wait_applied_ms > 0).then(|| Self {
            timeout: std::time::Duration::from_millis(u64::from(wait_applied_ms)),
            rollback_on_reject,
        })
    }
}

/// Set on a revision conflict (FAILED_PRECONDITION): the current revision.
pub const CURRENT_REVISION: &str = argsbroker::CONFLICT_METADATA;

pin_project_lite::pin_project! {
    /// A reply body: each frame's bytes as they come, then the trailers
    /// saying OK when the frames end (at once for a unary call; at shutdown
    /// for a watch).
    struct FrameBody<S> {
        #[pin]
        frames: S,
        // What follows the head just sent, for a large document: its JSON
        // and the fields after it (last first, for `pop`).
        rest: Vec<Bytes>,
        ended: bool,
    }
}

impl<S: Stream<Item = Frame>> http_body::Body for FrameBody<S> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let this = self.project();
        if let Some(part) = this.rest.pop() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(part))));
        }
        if *this.ended {
            return Poll::Ready(None);
        }
        match this.frames.poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(frame)) => {
                let [head, json, tail] = frame.into_parts();
                if !json.is_empty() {
                    this.rest
                        .extend([tail, json].into_iter().filter(|b| !b.is_empty()));
                }
                Poll::Ready(Some(Ok(http_body::Frame::data(head))))
            }
            Poll::Ready(None) => {
                *this.ended = true;
                let mut trailers = HeaderMap::with_capacity(1);
                trailers.insert(Status::GRPC_STATUS, HeaderValue::from_static("0"));
                Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
            }
        }
    }
}

fn ok(frames: impl Stream<Item = Frame> + Send + 'static) -> Reply {
    let body = FrameBody {
        frames,
        rest: Vec::new(),
        ended: false,
    };
    let mut reply = http::Response::new(tonic::body::Body::new(body));
    reply.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    reply
}
