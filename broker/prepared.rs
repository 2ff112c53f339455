//! GetArgs and WatchArgs answered from bytes prepared once per revision.
//!
//! tonic encodes every message into a fresh buffer: a copy of the whole
//! document per GetArgs request and per watcher on every change, and with
//! many requests in flight as many document-sized buffers. These are the
//! hot paths, so this layer answers them in front of tonic's router: the
//! whole-document message is a gRPC frame built when the revision is made
//! ([`Frame`]) and handed out by reference count; only a reply to a pointer
//! or to `if_none_match`, or a revision replayed from the history, is
//! encoded per request. Every other path goes on to tonic unchanged, and
//! tonic's own handlers (in `service`) share the logic.
use crate::service;
use crate::store::Store;
use argsbroker::pb;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::{BoxFuture, Either};
use futures_util::stream::{self, Stream, StreamExt};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::watch;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::Status;
use tower::{BoxError, Layer, Service};

const GET_ARGS_PATH: &str = "/argsbroker.v1.ArgsBroker/GetArgs";
const WATCH_ARGS_PATH: &str = "/argsbroker.v1.ArgsBroker/WatchArgs";

/// Documents up to this size are copied into the frame, so the reply is one
/// buffer (one HTTP/2 DATA frame); larger ones are sent from the snapshot's
/// own bytes, never copied.
const INLINE_MAX: usize = 16 * 1024;

/// gRPC's message prefix: a compressed flag and a big-endian length.
const PREFIX_LEN: usize = 5;

/// An `Args` message as gRPC puts it in a response body: a 5-byte prefix,
/// then the message. The JSON field is written last (protobuf parsers take
/// fields in any order), so a large document stays the snapshot's own
/// `Bytes` behind a small head.
#[derive(Debug, Clone)]
pub struct Frame {
    head: Bytes,
    /// Empty when the JSON is inlined in `head`.
    json: Bytes,
}

impl Frame {
    pub fn new(args: &pb::Args) -> Self {
        let fields = pb::Args {
            revision: args.revision,
            json: Bytes::new(),
            sha256: args.sha256.clone(),
            not_modified: args.not_modified,
            lineage: args.lineage.clone(),
        };
        let mut json_key = BytesMut::with_capacity(16);
        if !args.json.is_empty() {
            encode_key(2, WireType::LengthDelimited, &mut json_key);
            encode_varint(args.json.len() as u64, &mut json_key);
        }
        let message_len = fields.encoded_len() + json_key.len() + args.json.len();
        let json = if args.json.len() <= INLINE_MAX {
            Bytes::new()
        } else {
            args.json.clone()
        };
        let mut head = BytesMut::with_capacity(PREFIX_LEN + message_len - json.len());
        head.put_u8(0);
        // --max-args-bytes keeps every message under 4 GiB.
        head.put_u32(message_len as u32);
        fields.encode_raw(&mut head);
        head.put_slice(&json_key);
        if json.is_empty() {
            head.put_slice(&args.json);
        }
        Self {
            head: head.freeze(),
            json,
        }
    }
}

pin_project_lite::pin_project! {
    /// A reply body: each frame's bytes as they come, then the trailers
    /// saying OK when the frames end (at once for a unary call; at shutdown
    /// for a watch).
    struct FrameBody<S> {
        #[pin]
        frames: S,
        // The large JSON that follows the head just sent, if any.
        json: Option<Bytes>,
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
        if let Some(json) = this.json.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(json))));
        }
        if *this.ended {
            return Poll::Ready(None);
        }
        match this.frames.poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(frame)) => {
                *this.json = (!frame.json.is_empty()).then_some(frame.json);
                Poll::Ready(Some(Ok(http_body::Frame::data(frame.head))))
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

type Reply = http::Response<tonic::body::Body>;

fn ok(frames: impl Stream<Item = Frame> + Send + 'static) -> Reply {
    let body = FrameBody {
        frames,
        json: None,
        ended: false,
    };
    let mut reply = http::Response::new(tonic::body::Body::new(body));
    reply.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    reply
}

/// Reads the one request message a call carries (`method` names the call
/// in errors).
async fn read_request<M, B>(body: B, limit: usize, method: &str) -> Result<M, Status>
where
    M: Message + Default,
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let bytes = match Limited::new(body, limit.saturating_add(PREFIX_LEN))
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<LengthLimitError>() => {
            return Err(Status::resource_exhausted(format!(
                "the {method} request is over the limit of {limit} bytes"
            )))
        }
        Err(err) => return Err(Status::cancelled(format!("reading the request: {err}"))),
    };
    let Some((prefix, message)) = bytes.split_first_chunk::<PREFIX_LEN>() else {
        return Err(Status::invalid_argument(format!(
            "a {method} call needs one request message"
        )));
    };
    if prefix[0] != 0 {
        return Err(Status::unimplemented(format!(
            "compressed messages are not supported; send {method} uncompressed"
        )));
    }
    let declared = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if declared != message.len() {
        return Err(Status::invalid_argument(format!(
            "a {method} call carries exactly one request message"
        )));
    }
    M::decode(message)
        .map_err(|err| Status::internal(format!("cannot decode the {method} request: {err}")))
}

async fn get_args<B>(store: Arc<Store>, body: B, limit: usize) -> Reply
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let reply = match read_request(body, limit, "GetArgs").await {
        Ok(request) => service::get_args(&store, request),
        Err(status) => Err(status),
    };
    let frame = match reply {
        Ok(service::GetArgsReply::Whole(snapshot)) => snapshot.frame.clone(),
        Ok(service::GetArgsReply::Made(args)) => Frame::new(&args),
        Err(status) => return status.into_http(),
    };
    ok(stream::once(std::future::ready(frame)))
}

async fn watch_args<B>(
    store: Arc<Store>,
    shutdown: watch::Receiver<bool>,
    body: B,
    limit: usize,
) -> Reply
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let request: pb::WatchArgsRequest = match read_request(body, limit, "WatchArgs").await {
        Ok(request) => request,
        Err(status) => return status.into_http(),
    };
    let updates = service::watch_args(&store, shutdown, request.start_revision);
    ok(updates.map(|update| match update {
        service::Update::Replayed(args) => Frame::new(&args),
        service::Update::Live(snapshot) => snapshot.frame.clone(),
    }))
}

/// Puts [`Prepared`] in front of a service.
#[derive(Clone)]
pub struct PreparedLayer {
    store: Arc<Store>,
    /// Flips to true when the broker shuts down, ending every watch.
    shutdown: watch::Receiver<bool>,
    /// The largest request message accepted.
    limit: usize,
}

impl PreparedLayer {
    pub fn new(store: Arc<Store>, shutdown: watch::Receiver<bool>, limit: usize) -> Self {
        Self {
            store,
            shutdown,
            limit,
        }
    }
}

impl<S> Layer<S> for PreparedLayer {
    type Service = Prepared<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Prepared {
            inner,
            layer: self.clone(),
        }
    }
}

/// Answers GetArgs and WatchArgs itself; passes every other request to `inner`.
#[derive(Clone)]
pub struct Prepared<S> {
    inner: S,
    layer: PreparedLayer,
}

impl<S, B> Service<http::Request<B>> for Prepared<S>
where
    S: Service<http::Request<B>, Response = Reply>,
    S::Error: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Reply;
    type Error = S::Error;
    type Future = Either<BoxFuture<'static, Result<Reply, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let PreparedLayer {
            store,
            shutdown,
            limit,
        } = &self.layer;
        match request.uri().path() {
            GET_ARGS_PATH => {
                let reply = get_args(store.clone(), request.into_body(), *limit);
                Either::Left(Box::pin(async move { Ok(reply.await) }))
            }
            WATCH_ARGS_PATH => {
                let reply =
                    watch_args(store.clone(), shutdown.clone(), request.into_body(), *limit);
                Either::Left(Box::pin(async move { Ok(reply.await) }))
            }
            _ => Either::Right(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(json: Bytes) -> pb::Args {
        pb::Args {
            revision: 300,
            json,
            sha256: "ab".repeat(32),
            not_modified: false,
            lineage: "0123456789abcdef".into(),
        }
    }

    fn message(frame: &Frame) -> (u8, usize, pb::Args) {
        let mut bytes = frame.head.to_vec();
        bytes.extend_from_slice(&frame.json);
        let declared = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(declared, bytes.len() - PREFIX_LEN);
        let decoded = pb::Args::decode(&bytes[PREFIX_LEN..]).expect("a valid Args");
        (bytes[0], declared, decoded)
    }

    #[test]
    fn a_small_document_is_one_buffer_that_decodes_to_the_same_args() {
        let original = args(Bytes::from_static(b"{\"workers\":4}"));
        let frame = Frame::new(&original);
        assert!(frame.json.is_empty());
        let (flag, len, decoded) = message(&frame);
        assert_eq!((flag, len), (0, original.encoded_len()));
        assert_eq!(decoded, original);
    }

    #[test]
    fn a_large_document_is_sent_from_the_snapshot_bytes_without_a_copy() {
        let json = Bytes::from(format!("{{\"k\":\"{}\"}}", "x".repeat(INLINE_MAX)));
        let original = args(json.clone());
        let frame = Frame::new(&original);
        assert_eq!(frame.json.as_ptr(), json.as_ptr());
        assert!(frame.head.len() < 128);
        let (_, len, decoded) = message(&frame);
        assert_eq!(len, original.encoded_len());
        assert_eq!(decoded, original);
    }

    #[test]
    fn a_not_modified_reply_without_json_decodes() {
        let original = pb::Args {
            not_modified: true,
            ..args(Bytes::new())
        };
        let (_, _, decoded) = message(&Frame::new(&original));
        assert_eq!(decoded, original);
    }
}
