//! Who may do what on the socket. Every request, to every service on the
//! socket (the args service, health, reflection, and paths that name
//! nothing), passes one check keyed on its gRPC path and the peer's
//! credentials, in a tower layer around the whole server, so no service
//! can be added that slips past it.
//!
//! Writes (SetArgs, PatchArgs, Rollback, and any method of the args service
//! not known to be a read) are for root, the broker's own uid, and
//! `--writer-uid` / `--writer-gid`. Reads are for every peer that can open
//! the socket, unless `--reader-uid` / `--reader-gid` are given; then for
//! those, and for whoever may write.
use crate::metrics::{Metrics, Outcome, Write};
use crate::peer::Peer;
use argsbroker::sys;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::http;
use tower::{Layer, Service};

const ARGS_SERVICE: &str = "/argsbroker.v1.ArgsBroker/";

/// The methods of the args service that change nothing. Any other method of
/// that service counts as a write, so a new RPC is closed until it is listed.
const READ_METHODS: [&str; 6] = [
    "GetArgs",
    "WatchArgs",
    "ListRevisions",
    "GetStatus",
    "Follow",
    "ListFollowers",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// What a request on `path` (`/package.Service/Method`) does.
pub fn access(path: &str) -> Access {
    match path.strip_prefix(ARGS_SERVICE) {
        Some(method) if READ_METHODS.contains(&method) => Access::Read,
        Some(_) => Access::Write,
        None => Access::Read,
    }
}

/// Who may read and who may write.
#[derive(Debug, Clone)]
pub struct Policy {
    own_uid: u32,
    writer_uids: Vec<u32>,
    writer_gids: Vec<u32>,
    /// `None`: everyone who can open the socket may read.
    readers: Option<(Vec<u32>, Vec<u32>)>,
}

impl Policy {
    pub fn new(
        writer_uids: Vec<u32>,
        writer_gids: Vec<u32>,
        reader_uids: Vec<u32>,
        reader_gids: Vec<u32>,
    ) -> Self {
        let readers = (!reader_uids.is_empty() || !reader_gids.is_empty())
            .then_some((reader_uids, reader_gids));
        Self {
            own_uid: sys::effective_uid(),
            writer_uids,
            writer_gids,
            readers,
        }
    }

    fn may_write(&self, peer: &Peer) -> bool {
        peer.uid == 0
            || peer.uid == self.own_uid
            || self.writer_uids.contains(&peer.uid)
            || self.writer_gids.iter().any(|g| peer.in_group(*g))
    }

    fn may_read(&self, peer: &Peer) -> bool {
        match &self.readers {
            None => true,
            Some((uids, gids)) => {
                self.may_write(peer)
                    || uids.contains(&peer.uid)
                    || gids.iter().any(|g| peer.in_group(*g))
            }
        }
    }

    /// Allows or refuses a request on `path` from `peer` (`None`: unknown).
    pub fn check(&self, peer: Option<&Peer>, path: &str) -> Result<(), Refusal> {
        let access = access(path);
        let allowed = peer.is_some_and(|peer| match access {
            Access::Read => self.may_read(peer),
            Access::Write => self.may_write(peer),
        });
        if allowed {
            return Ok(());
        }
        Err(Refusal {
            uid: peer.map(|p| p.uid),
            method: path.trim_start_matches('/').to_owned(),
            access,
            own_uid: self.own_uid,
        })
    }
}

/// A request the policy refused; its text is what the client is told.
#[derive(Debug, thiserror::Error)]
#[error("{} may not call {method}: {}", who(*.uid), rule(*.access, *.own_uid))]
pub struct Refusal {
    pub uid: Option<u32>,
    pub method: String,
    pub access: Access,
    own_uid: u32,
}

fn who(uid: Option<u32>) -> String {
    match uid {
        Some(uid) => format!("uid {uid}"),
        None => "a peer whose credentials are unknown".to_owned(),
    }
}

fn rule(access: Access, own_uid: u32) -> String {
    match access {
        Access::Write => format!(
            "only root, the broker's own uid ({own_uid}), --writer-uid and --writer-gid may change the args"
        ),
        Access::Read => format!(
            "only root, the broker's own uid ({own_uid}), the writers, --reader-uid and --reader-gid may read"
        ),
    }
}

/// A uid from a number or a user name (`--writer-uid deploy`).
pub fn parse_uid(text: &str) -> Result<u32, String> {
    match text.parse() {
        Ok(uid) => Ok(uid),
        Err(_) => sys::user_id(text).ok_or_else(|| format!("no user named {text:?}")),
    }
}

/// A gid from a number or a group name (`--socket-group workers`).
pub fn parse_gid(text: &str) -> Result<u32, String> {
    match text.parse() {
        Ok(gid) => Ok(gid),
        Err(_) => sys::group_id(text).ok_or_else(|| format!("no group named {text:?}")),
    }
}

/// The tower layer that applies a [`Policy`] to every request.
#[derive(Clone)]
pub struct AccessLayer {
    policy: Arc<Policy>,
    metrics: Option<Arc<Metrics>>,
}

impl AccessLayer {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy: Arc::new(policy),
            metrics: None,
        }
    }

    /// Counts the writes it refuses (`result="denied"`) in `metrics`.
    pub fn counting(self, metrics: Arc<Metrics>) -> Self {
        Self {
            metrics: Some(metrics),
            ..self
        }
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessService {
            inner,
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AccessService<S> {
    inner: S,
    policy: Arc<Policy>,
    metrics: Option<Arc<Metrics>>,
}

type Reply = http::Response<tonic::body::Body>;

impl<S, B> Service<http::Request<B>> for AccessService<S>
where
    S: Service<http::Request<B>, Response = Reply>,
{
    type Response = Reply;
    type Error = S::Error;
    type Future = AccessFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let peer = request.extensions().get::<Peer>();
        if let Err(refusal) = self.policy.check(peer, request.uri().path()) {
            tracing::warn!(
                uid = peer.map(|p| p.uid),
                gid = peer.map(|p| p.gid),
                pid = peer.and_then(|p| p.pid),
                "refused: {refusal}"
            );
            let write =
                (request.uri().path().strip_prefix(ARGS_SERVICE)).and_then(Write::of_method);
            if let (Some(metrics), Some(write)) = (&self.metrics, write) {
                metrics.write(write, Outcome::Denied);
            }
            let reply = tonic::Status::permission_denied(refusal.to_string()).into_http();
            return AccessFuture::Refused { reply: Some(reply) };
        }
        AccessFuture::Allowed {
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The reply to one request: the refusal, or what the inner service answers.
    #[project = AccessFutureProj]
    pub enum AccessFuture<F> {
        Refused { reply: Option<Reply> },
        Allowed { #[pin] inner: F },
    }
}

impl<F, E> Future for AccessFuture<F>
where
    F: Future<Output = Result<Reply, E>>,
{
    type Output = Result<Reply, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AccessFutureProj::Refused { reply } => match reply.take() {
                Some(reply) => Poll::Ready(Ok(reply)),
                None => Poll::Pending,
            },
            AccessFutureProj::Allowed { inner } => inner.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            pid: Some(1),
            uid,
            gid,
            groups: groups.into(),
        }
    }

    /// Every method in the proto is classified on purpose: a new RPC fails
    /// this test until it is put on one side.
    #[test]
    fn every_method_of_the_args_service_is_classified() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(argsbroker::pb::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set build.rs wrote");
        let mut methods: Vec<(String, Access)> = set
            .file
            .iter()
            .flat_map(|f| &f.service)
            .filter(|s| s.name() == "ArgsBroker")
            .flat_map(|s| &s.method)
            .map(|m| {
                let path = format!("{ARGS_SERVICE}{}", m.name());
                (m.name().to_owned(), access(&path))
            })
            .collect();
        methods.sort_by(|a, b| a.0.cmp(&b.0));
        use Access::*;
        let want = [
            ("AbortCanary", Write),
            // A follower's reports are about itself: readers may follow.
            ("Follow", Read),
            ("GetArgs", Read),
            ("GetStatus", Read),
            ("ListFollowers", Read),
            ("ListRevisions", Read),
            ("PatchArgs", Write),
            ("PromoteCanary", Write),
            ("Rollback", Write),
            ("SetArgs", Write),
            ("WatchArgs", Read),
        ];
        let want: Vec<(String, Access)> = want.iter().map(|(m, a)| (m.to_string(), *a)).collect();
        assert_eq!(methods, want);
        assert_eq!(access("/grpc.health.v1.Health/Check"), Read);
        assert_eq!(access("/argsbroker.v1.ArgsBroker/Nope"), Write);
    }

    #[test]
    fn writers_are_root_the_broker_and_the_listed() {
        let policy = Policy {
            own_uid: 1000,
            writer_uids: vec![2000],
            writer_gids: vec![50],
            readers: None,
        };
        let write = "/argsbroker.v1.ArgsBroker/SetArgs";
        for ok in [
            peer(0, 0, &[]),
            peer(1000, 1000, &[]),
            peer(2000, 2000, &[]),
            peer(3000, 50, &[]),
            peer(3000, 3000, &[7, 50]),
        ] {
            assert!(policy.check(Some(&ok), write).is_ok(), "{ok:?}");
        }
        let refusal = policy
            .check(Some(&peer(3000, 3000, &[7])), write)
            .unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "uid 3000 may not call argsbroker.v1.ArgsBroker/SetArgs: only root, the broker's own uid (1000), --writer-uid and --writer-gid may change the args"
        );
        assert!(policy.check(None, write).is_err());
        assert!(policy
            .check(
                Some(&peer(3000, 3000, &[])),
                "/argsbroker.v1.ArgsBroker/GetArgs"
            )
            .is_ok());
    }

    #[test]
    fn reader_lists_close_reads_to_everyone_else() {
        let policy = Policy {
            own_uid: 1000,
            writer_uids: vec![2000],
            writer_gids: vec![],
            readers: Some((vec![4000], vec![60])),
        };
        let read = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        for ok in [
            peer(0, 0, &[]),
            peer(1000, 1, &[]),
            peer(2000, 1, &[]),
            peer(4000, 1, &[]),
            peer(5000, 1, &[60]),
        ] {
            assert!(policy.check(Some(&ok), read).is_ok(), "{ok:?}");
        }
        assert_eq!(
            policy.check(Some(&peer(5000, 1, &[])), read).unwrap_err().to_string(),
            "uid 5000 may not call grpc.reflection.v1.ServerReflection/ServerReflectionInfo: only root, the broker's own uid (1000), the writers, --reader-uid and --reader-gid may read"
        );
    }

    #[test]
    fn names_resolve_to_ids() {
        assert_eq!(parse_uid("root"), Ok(0));
        assert_eq!(parse_uid("1234"), Ok(1234));
        assert_eq!(parse_gid("root"), Ok(0));
        assert_eq!(
            parse_gid("no-such-group-here"),
            Err("no group named \"no-such-group-here\"".to_owned())
        );
        assert_eq!(
            parse_uid("no\0user"),
            Err("no user named \"no\\0user\"".to_owned())
        );
    }
}
