//! Every request the args service refuses, and the answers it gives, over
//! a real socket: the exact gRPC code and message, and the args unchanged.
use super::harness::{limits, site, start_broker, Broker, DOC_COMPACT};
use crate::storage::admit::Limits;
use argsbroker::pb;
use bytes::Bytes;
use tonic::Code;

type Outcome = Result<pb::Args, (Code, String)>;

fn outcome(result: Result<tonic::Response<pb::Args>, tonic::Status>) -> Outcome {
    result
        .map(tonic::Response::into_inner)
        .map_err(|status| (status.code(), status.message().to_owned()))
}

/// A request to the args service.
enum Call {
    Set(String, Option<u64>),
    Patch(String, Option<u64>),
    Pointer(&'static str),
    Rollback(u64),
}

async fn send(broker: &Broker, call: &Call) -> Outcome {
    let mut client = broker.client().await;
    outcome(match call {
        Call::Set(json, expected_revision) => {
            client
                .set_args(pb::SetArgsRequest {
                    json: json.clone(),
                    expected_revision: *expected_revision,
                    ..Default::default()
                })
                .await
        }
        Call::Patch(merge_patch, expected_revision) => {
            client
                .patch_args(pb::PatchArgsRequest {
                    merge_patch: merge_patch.clone(),
                    expected_revision: *expected_revision,
                    ..Default::default()
                })
                .await
        }
        Call::Pointer(pointer) => {
            client
                .get_args(pb::GetArgsRequest {
                    pointer: pointer.to_string(),
                    if_none_match: None,
                })
                .await
        }
        Call::Rollback(to_revision) => {
            client
                .rollback(pb::RollbackRequest {
                    to_revision: *to_revision,
                    expected_revision: None,
                    ..Default::default()
                })
                .await
        }
    })
}

fn set(json: impl Into<String>) -> Call {
    Call::Set(json.into(), None)
}

fn patch(merge_patch: impl Into<String>) -> Call {
    Call::Patch(merge_patch.into(), None)
}

fn small() -> Limits {
    Limits {
        max_args_bytes: 64,
        ..limits()
    }
}

/// Sends `call` to a broker with `limits` serving the usual document, and
/// checks that it gets `code` and `message` and that nothing changed: the
/// broker serves revision 1 of the document, and the file is as it was.
async fn refused(limits: Limits, call: Call, code: Code, message: &str) {
    let dir = site(super::harness::DOC);
    let broker = start_broker(dir.path(), limits).await;
    assert_eq!(send(&broker, &call).await, Err((code, message.to_owned())));
    let now = broker.current().await;
    assert_eq!((now.revision, &now.json[..]), (1, DOC_COMPACT.as_bytes()));
    let file = std::fs::read_to_string(dir.path().join("args.json")).unwrap();
    assert_eq!(file, super::harness::DOC, "the args file changed");
}

/// One test per refused request, each named for its case.
macro_rules! refused {
    ($($name:ident: $limits:expr, $call:expr, $code:ident, $message:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            refused($limits, $call, Code::$code, &$message).await;
        }
    )*};
}

fn deep_document() -> String {
    format!(
        "{{\"a\":{}{}}}",
        "{\"a\":".repeat(10_000),
        "}".repeat(10_000)
    )
}

fn deep_patch() -> String {
    format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000))
}

const TOO_DEEP: &str =
    "invalid JSON at line 1 column 636: nesting deeper than 127 levels of arrays and objects";

fn read_only() -> Limits {
    Limits {
        read_only: true,
        ..limits()
    }
}

refused! {
    set_not_json: limits(), set("{\"a\": }"), InvalidArgument, "invalid JSON at line 1 column 7: expected value";
    set_empty: limits(), set(""), InvalidArgument, "the document is empty: expected a JSON object";
    set_not_an_object: limits(), set("[1]"), InvalidArgument, "the top level is an array: expected a JSON object";
    set_over_the_size_limit: small(), set(format!(r#"{{"a": "{}"}}"#, "x".repeat(100))), ResourceExhausted, "the document is 109 bytes, over the limit of 64 bytes";
    set_over_the_message_limit: small(), set(format!(r#"{{"a": "{}"}}"#, "x".repeat(70_000))), ResourceExhausted, "the SetArgs request is over the limit of 65600 bytes";
    set_nested_too_deep: limits(), set(deep_document()), InvalidArgument, TOO_DEEP;
    set_duplicate_keys: limits(), set(r#"{"a": 1, "b": 2, "a": 3}"#), InvalidArgument, r#"duplicate key "a" at line 1 column 20: a key may appear only once in an object"#;
    set_lone_trailing_surrogate: limits(), set(r#"{"a": "\udc00"}"#), InvalidArgument, r#"lone UTF-16 surrogate \udc00 at line 1 column 8"#;
    set_lone_leading_surrogate: limits(), set(r#"{"a": "x\ud800"}"#), InvalidArgument, r#"lone UTF-16 surrogate \ud800 at line 1 column 9"#;
    patch_not_json: limits(), patch("nope"), InvalidArgument, "invalid JSON at line 1 column 2: expected ident";
    patch_top_level_not_an_object: limits(), patch("\"text\""), InvalidArgument, "the patch would make the top level a string: the args must stay a JSON object";
    patch_over_the_size_limit: small(), patch(format!(r#"{{"b": "{}"}}"#, "y".repeat(60))), ResourceExhausted, "the patch is 69 bytes, over the limit of 64 bytes";
    patch_result_over_the_size_limit: small(), patch(format!(r#"{{"b": "{}"}}"#, "y".repeat(20))), ResourceExhausted, "the result would be 68 bytes, over the limit of 64 bytes";
    patch_nested_too_deep: limits(), patch(deep_patch()), InvalidArgument, TOO_DEEP;
    patch_duplicate_keys: limits(), patch(r#"{"a": 2, "a": null}"#), InvalidArgument, r#"duplicate key "a" at line 1 column 12: a key may appear only once in an object"#;
    patch_stale_expected_revision: limits(), Call::Patch(r#"{"a": 3}"#.into(), Some(7)), FailedPrecondition, "revision conflict: expected revision 7, but the current revision is 1";
    set_stale_expected_revision: limits(), Call::Set("{}".into(), Some(0)), FailedPrecondition, "revision conflict: expected revision 0, but the current revision is 1";
    pointer_without_leading_slash: limits(), Call::Pointer("a"), InvalidArgument, r#"invalid JSON pointer "a": it must be empty or start with '/'"#;
    pointer_with_a_broken_escape: limits(), Call::Pointer("/a~2"), InvalidArgument, r#"invalid JSON pointer "/a~2": '~' must be followed by '0' or '1'"#;
    pointer_index_out_of_range: limits(), Call::Pointer("/list/2"), NotFound, r#"no value at JSON pointer "/list/2" in revision 1"#;
    pointer_dash: limits(), Call::Pointer("/list/-"), NotFound, r#"no value at JSON pointer "/list/-" in revision 1"#;
    rollback_not_retained: limits(), Call::Rollback(9), NotFound, "revision 9 is not retained (retained: 1 to 1)";
    write_when_read_only: read_only(), patch("{}"), FailedPrecondition, "the broker is read-only (--read-only): change the args file and send SIGHUP";
}

/// A conflict carries the current revision in metadata, for clients that
/// must tell it from other FAILED_PRECONDITION answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_names_the_current_revision_in_metadata() {
    let dir = site(super::harness::DOC);
    let broker = start_broker(dir.path(), limits()).await;
    let status = broker
        .client()
        .await
        .patch_args(pb::PatchArgsRequest {
            merge_patch: "{}".into(),
            expected_revision: Some(5),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        status
            .metadata()
            .get(argsbroker::CONFLICT_METADATA)
            .unwrap(),
        "1"
    );
    let read_only = site(super::harness::DOC);
    let limits = Limits {
        read_only: true,
        ..limits()
    };
    let broker = start_broker(read_only.path(), limits).await;
    let status = broker
        .client()
        .await
        .patch_args(pb::PatchArgsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(!status
        .metadata()
        .contains_key(argsbroker::CONFLICT_METADATA));
}

/// A raw call of `method` with `body` on an HTTP/2 connection of its own:
/// the gRPC status and the reply bytes.
async fn raw_call(broker: &Broker, method: &str, body: Vec<u8>) -> (Code, String, Vec<u8>) {
    raw_call_with(broker, method, body, &[]).await
}

async fn raw_call_with(
    broker: &Broker,
    method: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (Code, String, Vec<u8>) {
    let stream = tokio::net::UnixStream::connect(&broker.socket)
        .await
        .unwrap();
    let (mut h2, connection) = h2::client::handshake(stream).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut request = tonic::codegen::http::Request::post(format!("http://localhost{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let end = body.is_empty();
    let (response, mut send) = h2.send_request(request.body(()).unwrap(), end).unwrap();
    if !end {
        // The broker may refuse (and reset the stream) before it has read
        // all of an oversized body: what it answered is what counts.
        let _ = send.send_data(Bytes::from(body), true);
    }
    let response = response.await.unwrap();
    let mut status = tonic::Status::from_header_map(response.headers());
    let mut reply = Vec::new();
    let mut incoming = response.into_body();
    if status.is_none() {
        while let Some(data) = incoming.data().await {
            let data = data.unwrap();
            let _ = incoming.flow_control().release_capacity(data.len());
            reply.extend_from_slice(&data);
        }
        let trailers = incoming.trailers().await.unwrap().expect("trailers");
        status = tonic::Status::from_header_map(&trailers);
    }
    connection.abort();
    let status = status.expect("a grpc-status");
    (status.code(), status.message().to_owned(), reply)
}

/// A gRPC message frame: uncompressed, then its length.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// Odd request bodies get the same answer whichever method they call.
async fn odd_bodies_are_refused(method: &str) {
    let dir = site(super::harness::DOC);
    let limits = Limits {
        max_args_bytes: 1024,
        ..limits()
    };
    let broker = start_broker(dir.path(), limits).await;
    let limit = 1024 + 64 * 1024;
    let mut compressed = grpc_frame(&[]);
    compressed[0] = 1;
    let path = format!("/argsbroker.v1.ArgsBroker/{method}");
    let cases = [
        (
            Vec::new(),
            Code::InvalidArgument,
            format!("a {method} call needs one request message"),
        ),
        (
            [grpc_frame(&[]), grpc_frame(&[])].concat(),
            Code::InvalidArgument,
            format!("a {method} call carries exactly one request message"),
        ),
        (
            compressed,
            Code::Unimplemented,
            format!("compressed messages are not supported; send {method} uncompressed"),
        ),
        (
            grpc_frame(&[0x0a, 3, b'/', b'a', b'b'])[..6].to_vec(),
            Code::InvalidArgument,
            format!("the {method} request ends in the middle of a message"),
        ),
        (
            grpc_frame(&vec![b'x'; limit + 1]),
            Code::ResourceExhausted,
            format!("the {method} request is over the limit of {limit} bytes"),
        ),
    ];
    for (body, code, message) in cases {
        let (got_code, got_message, _) = raw_call(&broker, &path, body).await;
        assert_eq!((got_code, got_message), (code, message));
    }
    let gzip = [("grpc-encoding", "gzip")];
    let (code, message, _) = raw_call_with(&broker, &path, grpc_frame(&[]), &gzip).await;
    assert_eq!(
        (code, message),
        (
            Code::Unimplemented,
            format!("compressed messages are not supported; send {method} uncompressed")
        )
    );
    let now = broker.current().await;
    assert_eq!((now.revision, &now.json[..]), (1, DOC_COMPACT.as_bytes()));
}

macro_rules! odd_bodies {
    ($($name:ident: $method:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            odd_bodies_are_refused($method).await;
        }
    )*};
}

odd_bodies! {
    odd_get_args_bodies: "GetArgs";
    odd_watch_args_bodies: "WatchArgs";
    odd_set_args_bodies: "SetArgs";
    odd_patch_args_bodies: "PatchArgs";
    odd_list_revisions_bodies: "ListRevisions";
    odd_rollback_bodies: "Rollback";
}

/// Bytes that are not a request message are INTERNAL, as tonic answers a
/// message it cannot decode, naming the method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_a_request_message_is_named() {
    let dir = site(super::harness::DOC);
    let broker = start_broker(dir.path(), limits()).await;
    // Field 1 (pointer) announced as 100 bytes long, with 2 present.
    let (code, message, _) = raw_call(
        &broker,
        "/argsbroker.v1.ArgsBroker/GetArgs",
        grpc_frame(&[0x0a, 100, b'/', b'a']),
    )
    .await;
    assert_eq!(code, Code::Internal);
    assert!(
        message.starts_with("cannot decode the GetArgs request: "),
        "{message}"
    );
}

/// The well-formed raw call, for contrast: OK and the whole document, in
/// exactly the bytes tonic's own encoder makes of the same reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_get_args_is_answered_with_tonics_bytes() {
    let dir = site(super::harness::DOC);
    let broker = start_broker(dir.path(), limits()).await;
    let (code, _, reply) = raw_call(
        &broker,
        "/argsbroker.v1.ArgsBroker/GetArgs",
        grpc_frame(&[]),
    )
    .await;
    assert_eq!(code, Code::Ok);
    let args = broker.current().await;
    assert_eq!(reply, grpc_frame(&prost::Message::encode_to_vec(&args)));
}

/// A method or service that does not exist is UNIMPLEMENTED, naming the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_and_services_are_named() {
    let dir = site(super::harness::DOC);
    let broker = start_broker(dir.path(), limits()).await;
    for path in [
        "/argsbroker.v1.ArgsBroker/DeleteEverything",
        "/no.such.Service/Call",
    ] {
        let (code, message, _) = raw_call(&broker, path, grpc_frame(&[])).await;
        assert_eq!(
            (code, message),
            (
                Code::Unimplemented,
                format!("no such method: {path:?} (this socket serves argsbroker.v1.ArgsBroker, grpc.health.v1.Health and server reflection)")
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_args_answers_the_document_a_pointer_and_not_modified() {
    let dir = site(super::harness::DOC);
    let broker = start_broker(dir.path(), limits()).await;
    let whole = broker.current().await;
    assert_eq!(
        (whole.revision, &whole.json[..], whole.lineage.len()),
        (1, DOC_COMPACT.as_bytes(), 32)
    );
    let mut client = broker.client().await;
    let at = |pointer: &str, if_none_match| pb::GetArgsRequest {
        pointer: pointer.into(),
        if_none_match,
    };
    let value = client
        .get_args(at("/nested/k", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            value.revision,
            &value.json[..],
            &value.sha256,
            &value.lineage
        ),
        (1, &b"\"v\""[..], &whole.sha256, &whole.lineage)
    );
    let not_modified = client.get_args(at("", Some(1))).await.unwrap().into_inner();
    assert_eq!(
        not_modified,
        pb::Args {
            json: Bytes::new(),
            not_modified: true,
            ..whole.clone()
        }
    );
    let stale = client.get_args(at("", Some(0))).await.unwrap().into_inner();
    assert_eq!(stale, whole);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_answer_the_new_snapshot_and_watchers_see_it() {
    let dir = site(super::harness::DOC);
    let broker = start_broker(dir.path(), limits()).await;
    let mut watch = broker
        .client()
        .await
        .watch_args(pb::WatchArgsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().revision, 1);
    let patched = outcome(
        broker
            .client()
            .await
            .patch_args(pb::PatchArgsRequest {
                merge_patch: r#"{"a": 2, "list": null, "new": true}"#.into(),
                expected_revision: Some(1),
                ..Default::default()
            })
            .await,
    )
    .unwrap();
    assert_eq!(
        (patched.revision, &patched.json[..]),
        (2, &br#"{"a":2,"nested":{"k":"v"},"new":true}"#[..])
    );
    assert_eq!(watch.message().await.unwrap().unwrap(), patched);
    assert_eq!(broker.current().await, patched);

    // Replayed from a revision: every retained one after it, then live.
    let mut replay = broker
        .client()
        .await
        .watch_args(pb::WatchArgsRequest {
            start_revision: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    let first = replay.message().await.unwrap().unwrap();
    let second = replay.message().await.unwrap().unwrap();
    assert_eq!((first.revision, second), (1, patched));

    let listed = broker
        .client()
        .await
        .list_revisions(pb::ListRevisionsRequest {})
        .await
        .unwrap()
        .into_inner();
    let sources: Vec<(u64, &str)> = listed
        .revisions
        .iter()
        .map(|r| (r.revision, r.source.as_str()))
        .collect();
    assert_eq!(sources, [(1, "file"), (2, "patch")]);
}
