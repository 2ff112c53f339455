//! GetArgs answered from bytes prepared once per revision.
//!
//! tonic encodes every reply into a fresh buffer: for GetArgs, a copy of
//! the whole document per request, and with many requests in flight as many
//! document-sized buffers. GetArgs is the hot path, so this layer answers it
//! in front of tonic's router: the whole-document reply is a gRPC message
//! frame built when the revision is made ([`Frame`]) and handed out by
//! reference count; only a reply to a pointer or to `if_none_match` is
//! encoded per request. Every other path goes on to tonic unchanged.
use crate::service;
use crate::store::Store;
use argsbroker::pb;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::{BoxFuture, Either};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::Status;
use tower::{BoxError, Layer, Service};

const GET_ARGS_PATH: &str = "/argsbroker.v1.ArgsBroker/GetArgs";

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

/// A unary reply's body: the frame, then the trailers saying OK.
struct ReplyBody {
    head: Option<Bytes>,
    json: Option<Bytes>,
    trailers: bool,
}

impl ReplyBody {
    fn new(frame: Frame) -> Self {
        Self {
            head: Some(frame.head),
            json: (!frame.json.is_empty()).then_some(frame.json),
            trailers: true,
        }
    }
}

impl http_body::Body for ReplyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.head.take().or_else(|| self.json.take()) {
            return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
        }
        if std::mem::take(&mut self.trailers) {
            let mut trailers = HeaderMap::with_capacity(1);
            trailers.insert(Status::GRPC_STATUS, HeaderValue::from_static("0"));
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.json.is_none() && !self.trailers
    }
}

type Reply = http::Response<tonic::body::Body>;

fn ok(frame: Frame) -> Reply {
    let mut reply = http::Response::new(tonic::body::Body::new(ReplyBody::new(frame)));
    reply.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    reply
}

/// Reads the one `GetArgsRequest` a unary call carries.
async fn read_request<B>(body: B, limit: usize) -> Result<pb::GetArgsRequest, Status>
where
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
                "the GetArgs request is over the limit of {limit} bytes"
            )))
        }
        Err(err) => return Err(Status::cancelled(format!("reading the request: {err}"))),
    };
    let Some((prefix, message)) = bytes.split_first_chunk::<PREFIX_LEN>() else {
        return Err(Status::invalid_argument(
            "a GetArgs call needs one request message",
        ));
    };
    if prefix[0] != 0 {
        return Err(Status::unimplemented(
            "compressed messages are not supported; send GetArgs uncompressed",
        ));
    }
    let declared = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if declared != message.len() {
        return Err(Status::invalid_argument(
            "a GetArgs call carries exactly one request message",
        ));
    }
    pb::GetArgsRequest::decode(message)
        .map_err(|err| Status::internal(format!("cannot decode the GetArgs request: {err}")))
}

async fn answer<B>(store: Arc<Store>, body: B, limit: usize) -> Reply
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let reply = match read_request(body, limit).await {
        Ok(request) => service::get_args(&store, request),
        Err(status) => Err(status),
    };
    match reply {
        Ok(service::GetArgsReply::Whole(snapshot)) => ok(snapshot.frame.clone()),
        Ok(service::GetArgsReply::Made(args)) => ok(Frame::new(&args)),
        Err(status) => status.into_http(),
    }
}

/// Puts [`PreparedGetArgs`] in front of a service.
#[derive(Clone)]
pub struct PreparedGetArgsLayer {
    store: Arc<Store>,
    /// The largest request message accepted.
    limit: usize,
}

impl PreparedGetArgsLayer {
    pub fn new(store: Arc<Store>, limit: usize) -> Self {
        Self { store, limit }
    }
}

impl<S> Layer<S> for PreparedGetArgsLayer {
    type Service = PreparedGetArgs<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PreparedGetArgs {
            inner,
            store: self.store.clone(),
            limit: self.limit,
        }
    }
}

/// Answers GetArgs itself; passes every other request to `inner`.
#[derive(Clone)]
pub struct PreparedGetArgs<S> {
    inner: S,
    store: Arc<Store>,
    limit: usize,
}

impl<S, B> Service<http::Request<B>> for PreparedGetArgs<S>
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
        if request.uri().path() != GET_ARGS_PATH {
            return Either::Right(self.inner.call(request));
        }
        let store = self.store.clone();
        let limit = self.limit;
        let body = request.into_body();
        Either::Left(Box::pin(
            async move { Ok(answer(store, body, limit).await) },
        ))
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
