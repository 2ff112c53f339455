//! The `argsbroker.v1.ArgsBroker` gRPC service: the only place where store
//! results become gRPC `Status` values.
use crate::access::Refusal;
use crate::peer::Peer;
use crate::store::{Snapshot, Store, WriteError};
use argsbroker::pb::{self, args_broker_server::ArgsBroker};
use argsbroker::pointer::PointerError;
use bytes::Bytes;
use futures_util::StreamExt;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_stream::{wrappers::WatchStream, Stream};
use tonic::{Request, Response, Status};

pub struct Service {
    store: Arc<Store>,
    /// Flips to true when the broker shuts down, ending every watch.
    shutdown: watch::Receiver<bool>,
}

impl Service {
    pub fn new(store: Arc<Store>, shutdown: watch::Receiver<bool>) -> Self {
        Self { store, shutdown }
    }
}

type ArgsStream = Pin<Box<dyn Stream<Item = Result<pb::Args, Status>> + Send>>;

#[tonic::async_trait]
impl ArgsBroker for Service {
    async fn get_args(
        &self,
        request: Request<pb::GetArgsRequest>,
    ) -> Result<Response<pb::Args>, Status> {
        Ok(Response::new(
            match get_args(&self.store, request.into_inner())? {
                GetArgsReply::Whole(snapshot) => snapshot.reply.clone(),
                GetArgsReply::Made(args) => args,
            },
        ))
    }

    type WatchArgsStream = ArgsStream;

    async fn watch_args(
        &self,
        request: Request<pb::WatchArgsRequest>,
    ) -> Result<Response<ArgsStream>, Status> {
        let updates = watch_args(
            &self.store,
            self.shutdown.clone(),
            request.into_inner().start_revision,
        )
        .map(|update| {
            Ok(match update {
                Update::Replayed(args) => args,
                Update::Live(snapshot) => snapshot.reply.clone(),
            })
        });
        Ok(Response::new(Box::pin(updates)))
    }

    async fn set_args(
        &self,
        request: Request<pb::SetArgsRequest>,
    ) -> Result<Response<pb::Args>, Status> {
        let uid = peer_uid(&request);
        let request = request.into_inner();
        let snapshot = self
            .store
            .set(&request.json, request.expected_revision, uid)
            .await
            .map_err(write_status)?;
        Ok(Response::new(snapshot.reply.clone()))
    }

    async fn patch_args(
        &self,
        request: Request<pb::PatchArgsRequest>,
    ) -> Result<Response<pb::Args>, Status> {
        let uid = peer_uid(&request);
        let request = request.into_inner();
        let snapshot = self
            .store
            .patch(&request.merge_patch, request.expected_revision, uid)
            .await
            .map_err(write_status)?;
        Ok(Response::new(snapshot.reply.clone()))
    }

    async fn list_revisions(
        &self,
        _request: Request<pb::ListRevisionsRequest>,
    ) -> Result<Response<pb::ListRevisionsResponse>, Status> {
        Ok(Response::new(pb::ListRevisionsResponse {
            revisions: self.store.revisions(),
        }))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::Args>, Status> {
        let uid = peer_uid(&request);
        let request = request.into_inner();
        let snapshot = self
            .store
            .rollback(request.to_revision, request.expected_revision, uid)
            .await
            .map_err(write_status)?;
        Ok(Response::new(snapshot.reply.clone()))
    }
}

/// What GetArgs answers: the snapshot's own whole-document reply, or one
/// made for this request (a pointer's value, or "not modified").
pub enum GetArgsReply {
    /// The current snapshot, as loaded: no reference count is taken.
    Whole(arc_swap::Guard<Arc<Snapshot>>),
    Made(pb::Args),
}

/// GetArgs, for tonic's handler and for the prepared path (`prepared`).
pub fn get_args(store: &Store, request: pb::GetArgsRequest) -> Result<GetArgsReply, Status> {
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

/// One message of a WatchArgs stream: a retained revision replayed from
/// the history, or a snapshot as it is published.
pub enum Update {
    Replayed(pb::Args),
    Live(Arc<Snapshot>),
}

/// WatchArgs, for tonic's handler and for the prepared path: the revisions
/// after `start_revision` (if given and still retained), then every newer
/// snapshot, until the broker shuts down.
pub fn watch_args(
    store: &Store,
    mut shutdown: watch::Receiver<bool>,
    start_revision: Option<u64>,
) -> impl Stream<Item = Update> + Send + 'static {
    // Subscribe before reading the history, so no revision falls between.
    let updates = store.subscribe();
    let replay = match start_revision {
        Some(after) => store.revisions_after(after).unwrap_or_default(),
        None => Vec::new(),
    };
    let mut last_sent = replay.last().map_or(0, |args| args.revision);
    // The watch channel holds only the newest snapshot: a slow reader
    // skips to it and the broker never queues revisions per watcher.
    let follow = WatchStream::new(updates).filter_map(move |snapshot| {
        let newer = snapshot.revision > last_sent;
        last_sent = last_sent.max(snapshot.revision);
        std::future::ready(newer.then_some(Update::Live(snapshot)))
    });
    tokio_stream::iter(replay.into_iter().map(Update::Replayed))
        .chain(follow)
        .take_until(async move {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        })
}

/// The uid of the process on the other end of the socket, as read when
/// the connection was accepted (SO_PEERCRED).
fn peer_uid<T>(request: &Request<T>) -> Option<u32> {
    request.extensions().get::<Peer>().map(|peer| peer.uid)
}

/// A request the access policy refused (see `access`).
pub fn refused(refusal: &Refusal) -> Status {
    Status::permission_denied(refusal.to_string())
}

/// A path that names no method of any service on the socket.
pub fn unknown_method(path: &str) -> Status {
    Status::unimplemented(format!(
        "no such method: {path:?} (this socket serves argsbroker.v1.ArgsBroker, grpc.health.v1.Health and server reflection)"
    ))
}

fn write_status(err: WriteError) -> Status {
    let message = err.to_string();
    match err {
        WriteError::Conflict { .. } | WriteError::ReadOnly => Status::failed_precondition(message),
        WriteError::NotRetained { .. } => Status::not_found(message),
        WriteError::Invalid(_) | WriteError::PatchNotAnObject(_) => {
            Status::invalid_argument(message)
        }
        WriteError::TooLarge { .. } => Status::resource_exhausted(message),
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
