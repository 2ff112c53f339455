//! The worker's HTTP surface, in-process: `app(live).oneshot(request)` over a
//! `Live` built without a broker, so every answer is checked in milliseconds
//! with no process and no socket. Each test pins an answer exactly: status,
//! every header in order, and the body.
//!
//! Answers that need a real connection (hyper's own 414 past 64 KiB, request
//! bodies on the wire, timeouts, signals) stay in tests/*.rs.
use super::*;
use argsbroker::client::{self, Live, Snapshot};
use argsbroker::document::Document;
use axum::body::Body;
use axum::http::{Method, Request};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tower::ServiceExt;

/// The args every test serves, as a user would write them.
const DOC: &str = r#"{"a": 1, "list": [10, 20], "nested": {"k": "v"}, "": "empty key", "a/b": "slash", "m~n": "tilde"}"#;
/// `DOC` as the worker serves it: compact, in the same key order.
const COMPACT: &str =
    r#"{"a":1,"list":[10,20],"nested":{"k":"v"},"":"empty key","a/b":"slash","m~n":"tilde"}"#;
const REVISION: u64 = 7;
const LINEAGE: &str = "0123456789abcdef";

fn snapshot() -> Snapshot {
    Snapshot {
        revision: REVISION,
        lineage: LINEAGE.into(),
        document: Document::parse(DOC.as_bytes()).expect("DOC is an args document"),
    }
}

/// A worker whose broker is up (as far as it knows).
fn connected() -> Router {
    app(Live::fixed(snapshot(), Prepared::new))
}

/// A worker that has lost its broker: it started from a snapshot (as from
/// its cache file) and keeps trying a socket nobody serves.
fn disconnected() -> (Router, Live<Prepared>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let live = client::follow_from(dir.path().join("nobody.sock"), snapshot(), Prepared::new);
    (app(live.clone()), live, dir)
}

/// The strong ETag of `COMPACT`: the first 32 hex digits of its SHA-256, quoted.
fn etag() -> String {
    let hex: String = Sha256::digest(COMPACT.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("\"{}\"", &hex[..32])
}

/// One answer, as the client sees it (before hyper adds `date`).
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    /// Every header, in the order the answer holds them.
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn send(app: Router, request: Request<Body>) -> Answer {
    let response = app
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            let value = v.to_str().expect("an ASCII header value");
            (n.as_str().to_owned(), value.to_owned())
        })
        .collect();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    let body = String::from_utf8(bytes.to_vec()).expect("a UTF-8 body");
    Answer {
        status,
        headers,
        body,
    }
}

fn request(method: Method, uri: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .expect("a valid request")
}

async fn get(app: Router, uri: &str) -> Answer {
    send(app, request(Method::GET, uri)).await
}

async fn get_if_none_match(app: Router, uri: &str, tag: &str) -> Answer {
    let mut request = request(Method::GET, uri);
    request.headers_mut().insert(
        IF_NONE_MATCH,
        HeaderValue::from_str(tag).expect("a valid tag"),
    );
    send(app, request).await
}

/// The headers of an answer from the args: JSON, tag, revision, no-cache, length.
fn args_headers(length: usize) -> Vec<(String, String)> {
    headers(&[
        ("content-type", "application/json"),
        ("etag", &etag()),
        ("x-args-revision", &REVISION.to_string()),
        ("cache-control", "no-cache"),
        ("content-length", &length.to_string()),
    ])
}

/// The headers of a JSON error body of `length` bytes.
fn error_headers(length: usize) -> Vec<(String, String)> {
    headers(&[
        ("content-type", "application/json"),
        ("content-length", &length.to_string()),
    ])
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

/// An answer with `status`, `headers` and `body`.
fn answer(status: u16, headers: Vec<(String, String)>, body: &str) -> Answer {
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// The JSON error answer with `status` and `body`.
fn refusal(status: u16, body: &str) -> Answer {
    answer(status, error_headers(body.len()), body)
}

/// `answer` as a stale worker gives it: `X-Args-Stale: true` after the
/// handler's own headers, before the length axum adds last.
fn stale(mut answer: Answer) -> Answer {
    let at = match answer.headers.last() {
        Some((name, _)) if name == "content-length" => answer.headers.len() - 1,
        _ => answer.headers.len(),
    };
    answer
        .headers
        .insert(at, ("x-args-stale".to_owned(), "true".to_owned()));
    answer
}

// ---------------------------------------------------------------- the args

/// GET /args: `{"args": <document>}`, compact, with its tag and revision.
#[tokio::test]
async fn whole_args_body_and_headers() {
    let body = format!(r#"{{"args":{COMPACT}}}"#);
    assert_eq!(
        get(connected(), "/args").await,
        answer(200, args_headers(body.len()), &body)
    );
}

/// The ETag is the content's hash: the same document at another revision has the same tag.
#[tokio::test]
async fn etag_depends_on_the_content_only() {
    let mut other = snapshot();
    other.revision = 8;
    other.lineage = "another lineage".into();
    let answer = get(app(Live::fixed(other, Prepared::new)), "/args").await;
    assert_eq!(answer.header("etag"), Some(etag().as_str()));
    assert_eq!(answer.header("x-args-revision"), Some("8"));
}

/// A pointer that names a value answers with that value alone, compact, with the document's tag.
#[tokio::test]
async fn pointer_hits() {
    for (uri, value) in [
        ("/args/a", "1"),
        ("/args/list", "[10,20]"),
        ("/args/list/1", "20"),
        ("/args/nested", r#"{"k":"v"}"#),
        ("/args/nested/k", r#""v""#),
        ("/args/a~1b", r#""slash""#),
        ("/args/m~0n", r#""tilde""#),
        ("/args/m%7E0n", r#""tilde""#),
    ] {
        assert_eq!(
            get(connected(), uri).await,
            answer(200, args_headers(value.len()), value),
            "{uri}"
        );
    }
}

/// `/args/` is the pointer `/`: the key "" at the top level.
#[tokio::test]
async fn trailing_slash_names_the_empty_key() {
    let value = r#""empty key""#;
    assert_eq!(
        get(connected(), "/args/").await,
        answer(200, args_headers(value.len()), value)
    );
}

/// A pointer that names nothing is a JSON 404 naming the pointer.
#[tokio::test]
async fn missing_values_are_404_with_a_json_body() {
    for (uri, pointer) in [
        ("/args/nope", "/nope"),
        ("/args/list/2", "/list/2"),
        ("/args/list/-", "/list/-"),
        ("/args/list/01", "/list/01"),
        ("/args/a/deeper", "/a/deeper"),
        ("/args/nested/k/", "/nested/k/"),
        // Percent-decoding comes first: %2F is a separator, not the key "a/b".
        ("/args/a%2Fb", "/a/b"),
    ] {
        let body = format!(
            r#"{{"error":"no value at JSON pointer \"{pointer}\"","pointer":"{pointer}"}}"#
        );
        assert_eq!(get(connected(), uri).await, refusal(404, &body), "{uri}");
    }
}

/// A request path with quotes, a NUL, a newline and markup comes back only
/// inside an escaped JSON string (moved from tests/bad_input.rs).
#[tokio::test]
async fn nasty_path_is_escaped() {
    let answer = get(
        connected(),
        "/args/%22%3Cscript%3Ealert(1)%3C%2Fscript%3E%00%0A%5C",
    )
    .await;
    let body = r#"{"error":"no value at JSON pointer \"/\\\"<script>alert(1)</script>\\0\\n\\\\\"","pointer":"/\"<script>alert(1)</script>\u0000\n\\"}"#;
    assert_eq!(answer, refusal(404, body));
    let body: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
    assert_eq!(body["pointer"], "/\"<script>alert(1)</script>\0\n\\");
}

/// A `~` not followed by `0` or `1` is a JSON 400 naming the pointer.
#[tokio::test]
async fn broken_escape_is_400() {
    let body = r#"{"error":"invalid JSON pointer \"/a~2\": '~' must be followed by '0' or '1'","pointer":"/a~2"}"#;
    assert_eq!(get(connected(), "/args/a~2").await, refusal(400, body));
    let body = r#"{"error":"invalid JSON pointer \"/a~\": '~' must be followed by '0' or '1'","pointer":"/a~"}"#;
    assert_eq!(get(connected(), "/args/a~").await, refusal(400, body));
}

/// Percent-encoding that does not decode to UTF-8 is a JSON 400 that quotes
/// nothing (moved from tests/bad_input.rs).
#[tokio::test]
async fn bad_percent_encoding_is_400() {
    let body = r#"{"error":"the path is not a JSON pointer: its percent-encoding does not decode to UTF-8"}"#;
    for uri in ["/args/%FF%FE", "/args/a/%C3", "/args/%ED%A0%80"] {
        assert_eq!(get(connected(), uri).await, refusal(400, body), "{uri}");
    }
}

/// A pointer of 8 KiB is looked up; one byte more is a JSON 414 (the 8 KiB
/// case moved from tests/bad_input.rs; hyper's own 414 past 64 KiB stays there).
#[tokio::test]
async fn pointer_over_8_kib_is_414() {
    let longest = "a".repeat(MAX_POINTER_BYTES - 1);
    let answer = get(connected(), &format!("/args/{longest}")).await;
    assert_eq!(answer.status, 404);
    let answer = get(connected(), &format!("/args/{longest}a")).await;
    assert_eq!(
        answer,
        refusal(
            414,
            r#"{"error":"the JSON pointer is 8193 bytes; at most 8192"}"#
        )
    );
    // The limit counts decoded bytes: 9000 percent-encoded characters are 3000 bytes.
    let answer = get(connected(), &format!("/args/{}", "%41".repeat(3000))).await;
    assert_eq!(answer.status, 404);
    let answer = get(connected(), &format!("/args/{}", "a".repeat(9000))).await;
    assert_eq!(
        answer,
        refusal(
            414,
            r#"{"error":"the JSON pointer is 9001 bytes; at most 8192"}"#
        )
    );
}

// ---------------------------------------------------------------- conditional requests, methods

/// If-None-Match with our tag (strong, weak, in a list, or `*`) is 304 with
/// the tag and revision and no body; another tag gets the args.
#[tokio::test]
async fn if_none_match_is_304() {
    let etag = etag();
    let not_modified = answer(
        304,
        headers(&[
            ("etag", &etag),
            ("x-args-revision", "7"),
            ("cache-control", "no-cache"),
            ("content-length", "0"),
        ]),
        "",
    );
    let weak = format!("W/{etag}");
    let listed = format!("\"other\", {etag}");
    for tag in [etag.as_str(), weak.as_str(), listed.as_str(), "*"] {
        for uri in ["/args", "/args/a", "/args/"] {
            assert_eq!(
                get_if_none_match(connected(), uri, tag).await,
                not_modified,
                "{uri} If-None-Match: {tag}"
            );
        }
    }
    let body = format!(r#"{{"args":{COMPACT}}}"#);
    assert_eq!(
        get_if_none_match(connected(), "/args", "\"stale\"").await,
        answer(200, args_headers(body.len()), &body)
    );
}

/// If-None-Match does not turn a missing value or a bad pointer into 304.
#[tokio::test]
async fn if_none_match_never_hides_a_refusal() {
    let answer = get_if_none_match(connected(), "/args/nope", "*").await;
    assert_eq!(answer.status, 404);
    let answer = get_if_none_match(connected(), "/args/a~2", &etag()).await;
    assert_eq!(answer.status, 400);
}

/// HEAD is answered like GET, same headers (the length included), no body.
#[tokio::test]
async fn head_is_get_without_the_body() {
    for uri in [
        "/args",
        "/args/a",
        "/args/nope",
        "/args/%FF",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        let got = get(connected(), uri).await;
        let head = send(connected(), request(Method::HEAD, uri)).await;
        assert_eq!(
            head,
            Answer {
                body: String::new(),
                ..got
            },
            "HEAD {uri}"
        );
    }
}

/// Every other method is 405 with an empty body and `Allow: GET,HEAD`; a
/// request body is never read, and nothing of it comes back.
#[tokio::test]
async fn other_methods_are_405() {
    for method in [
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ] {
        for uri in [
            "/args", "/args/a", "/args/", "/healthz", "/readyz", "/metrics",
        ] {
            let request = Request::builder()
                .method(method.clone())
                .uri(uri)
                .header(CONTENT_TYPE, "application/json")
                .body(Body::from(r#"{"a": 666}"#))
                .expect("a valid request");
            assert_eq!(
                send(connected(), request).await,
                answer(
                    405,
                    headers(&[("allow", "GET,HEAD"), ("content-length", "0")]),
                    ""
                ),
                "{method} {uri}"
            );
        }
    }
}

/// A GET with a body is answered as if it had none.
#[tokio::test]
async fn a_get_body_is_ignored() {
    let request = Request::builder()
        .uri("/args/a")
        .body(Body::from(r#"{"a": 666}"#))
        .expect("a valid request");
    assert_eq!(
        send(connected(), request).await,
        answer(200, args_headers(1), "1")
    );
}

/// Paths the worker does not serve are an empty 404 (its fallback is a
/// handler, so the length is there already, as hyper adds it on the wire).
#[tokio::test]
async fn unknown_paths_are_an_empty_404() {
    for uri in [
        "/",
        "/nothing-here",
        "/argsx",
        "/healthz/x",
        "/ARGS",
        "/metricsx",
    ] {
        assert_eq!(
            get(connected(), uri).await,
            answer(404, headers(&[("content-length", "0")]), ""),
            "{uri}"
        );
    }
}

// ---------------------------------------------------------------- health, readiness, staleness

/// /healthz: always ok, whatever the broker.
#[tokio::test]
async fn healthz_is_ok() {
    let ok = r#"{"status":"ok"}"#;
    let expected = answer(200, error_headers(ok.len()), ok);
    assert_eq!(get(connected(), "/healthz").await, expected);
    let (app, _live, _dir) = disconnected();
    assert_eq!(get(app, "/healthz").await, expected);
}

/// /readyz while connected: the revision, the link and the lineage.
#[tokio::test]
async fn readyz_while_connected() {
    let body = format!(
        r#"{{"status":"ready","revision":7,"connected":true,"since_last_contact_ms":0,"lineage":"{LINEAGE}","backend_connected":true}}"#
    );
    assert_eq!(
        get(connected(), "/readyz").await,
        answer(200, error_headers(body.len()), &body)
    );
}

/// /readyz without a broker: still ready (args are held), not connected, how
/// long since the broker was heard from, and the lineage of the args held.
#[tokio::test]
async fn readyz_while_disconnected() {
    let (app, live, _dir) = disconnected();
    let answer = get(app, "/readyz").await;
    let value: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
    let since = value["since_last_contact_ms"]
        .as_u64()
        .expect("a number of milliseconds");
    assert!(u128::from(since) <= live.since_last_contact().as_millis());
    let body = format!(
        r#"{{"status":"ready","revision":7,"connected":false,"since_last_contact_ms":{since},"lineage":"{LINEAGE}","backend_connected":true}}"#
    );
    assert_eq!(answer, self::answer(200, error_headers(body.len()), &body));
}

/// A lineage that is not known (a broker or cache file from before lineages) is "".
#[tokio::test]
async fn readyz_with_an_unknown_lineage() {
    let mut old = snapshot();
    old.lineage = String::new();
    let answer = get(app(Live::fixed(old, Prepared::new)), "/readyz").await;
    let value: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
    assert_eq!(value["lineage"], "");
}

/// Without a broker, every answer that looked at the args says
/// `X-Args-Stale: true` (after its other headers); the refusals of a path
/// that is no pointer at all, health, readiness and 405 do not.
#[tokio::test]
async fn stale_answers_say_so() {
    let (app, _live, _dir) = disconnected();
    for uri in ["/args", "/args/a", "/args/", "/args/nope", "/args/a~2"] {
        let expected = stale(get(connected(), uri).await);
        assert_eq!(get(app.clone(), uri).await, expected, "{uri}");
        let head = send(app.clone(), request(Method::HEAD, uri)).await;
        assert_eq!(
            head,
            Answer {
                body: String::new(),
                ..expected
            },
            "HEAD {uri}"
        );
    }
    let expected = stale(get_if_none_match(connected(), "/args", "*").await);
    assert_eq!(get_if_none_match(app.clone(), "/args", "*").await, expected);
    let long = format!("/args/{}", "a".repeat(MAX_POINTER_BYTES));
    for uri in ["/args/%FF", long.as_str(), "/healthz", "/nothing-here"] {
        assert_eq!(
            get(app.clone(), uri).await,
            get(connected(), uri).await,
            "{uri}"
        );
    }
    let post = send(app.clone(), request(Method::POST, "/args")).await;
    assert_eq!(
        post,
        send(connected(), request(Method::POST, "/args")).await
    );
}

/// While connected, no answer carries `X-Args-Stale`.
#[tokio::test]
async fn fresh_answers_are_not_marked() {
    for uri in ["/args", "/args/a", "/args/nope", "/readyz"] {
        assert_eq!(get(connected(), uri).await.header("x-args-stale"), None);
    }
}

// ---------------------------------------------------------------- read-your-writes

/// `?min_revision=N` at or below the revision served answers at once, as
/// without it; other query parameters change nothing, as before.
#[tokio::test]
async fn min_revision_reached_answers_at_once() {
    for uri in ["/args", "/args/a", "/args/"] {
        let plain = get(connected(), uri).await;
        for query in [
            "min_revision=7",
            "min_revision=0",
            "min_revision=3&wait=30",
            "wait=2s&min_revision=7",
            "foo=bar",
            "min_revision=7&foo",
        ] {
            let asked = format!("{uri}?{query}");
            assert_eq!(get(connected(), &asked).await, plain, "{asked}");
        }
    }
    let tag = etag();
    assert_eq!(
        get_if_none_match(connected(), "/args?min_revision=7", &tag)
            .await
            .status,
        304
    );
}

/// A revision not reached within `wait` is a 409 saying which revision is
/// served; `wait=0` does not wait.
#[tokio::test]
async fn min_revision_not_reached_is_409() {
    for (query, within) in [
        ("min_revision=8&wait=0", "0s"),
        ("min_revision=8&wait=0.05", "50ms"),
        ("wait=20ms&min_revision=8", "20ms"),
    ] {
        let body = format!(
            r#"{{"error":"revision 8 was not reached within {within}; this worker serves revision 7","revision":7,"min_revision":8}}"#
        );
        for uri in ["/args", "/args/a", "/args/", "/args/nope"] {
            let asked = format!("{uri}?{query}");
            assert_eq!(
                get(connected(), &asked).await,
                refusal(409, &body),
                "{asked}"
            );
        }
    }
}

/// Without `wait`, a request waits 1 s before its 409.
#[tokio::test]
async fn min_revision_waits_one_second_by_default() {
    let asked = std::time::Instant::now();
    let answer = get(connected(), "/args?min_revision=18446744073709551615").await;
    assert!(asked.elapsed() >= std::time::Duration::from_secs(1));
    assert_eq!(
        answer,
        refusal(
            409,
            r#"{"error":"revision 18446744073709551615 was not reached within 1s; this worker serves revision 7","revision":7,"min_revision":18446744073709551615}"#
        )
    );
}

/// A bad `min_revision` or `wait` is a JSON 400 naming the parameter, on
/// the whole document and on a pointer alike.
#[tokio::test]
async fn bad_read_your_writes_parameters_are_400() {
    for (query, body) in [
        (
            "min_revision=abc",
            r#"{"error":"min_revision must be a revision number (0 or more), not \"abc\"","parameter":"min_revision"}"#,
        ),
        (
            "min_revision=-1",
            r#"{"error":"min_revision must be a revision number (0 or more), not \"-1\"","parameter":"min_revision"}"#,
        ),
        (
            "min_revision=1&wait=-1",
            r#"{"error":"wait must be a number of seconds (2.5) or a duration with a unit (500ms, 2s), not \"-1\"","parameter":"wait"}"#,
        ),
        (
            "wait=soon",
            r#"{"error":"wait must be a number of seconds (2.5) or a duration with a unit (500ms, 2s), not \"soon\"","parameter":"wait"}"#,
        ),
        (
            "min_revision=1&min_revision=2",
            r#"{"error":"min_revision is given more than once","parameter":"min_revision"}"#,
        ),
        (
            "min_revision=%22%3Cb%3E%00",
            r#"{"error":"min_revision must be a revision number (0 or more), not \"\\\"<b>\\0\"","parameter":"min_revision"}"#,
        ),
        (
            "min_revision=%FF",
            r#"{"error":"min_revision must be a revision number (0 or more); its percent-encoding does not decode to UTF-8","parameter":"min_revision"}"#,
        ),
    ] {
        for uri in ["/args", "/args/a", "/args/"] {
            let asked = format!("{uri}?{query}");
            assert_eq!(
                get(connected(), &asked).await,
                refusal(400, body),
                "{asked}"
            );
        }
    }
}

/// Without a broker, the 409 and the 400 of a query are marked stale like
/// every answer of /args.
#[tokio::test]
async fn read_your_writes_refusals_are_marked_stale() {
    let (app, _live, _dir) = disconnected();
    for uri in ["/args?min_revision=8&wait=0", "/args/a?min_revision=x"] {
        let expected = stale(get(connected(), uri).await);
        assert_eq!(get(app.clone(), uri).await, expected, "{uri}");
    }
}

// ---------------------------------------------------------------- --max-stale

fn with_max_stale(live: Live<Prepared>, seconds: u64) -> Router {
    app_with(
        live,
        Options {
            max_stale: Some(std::time::Duration::from_secs(seconds)),
        },
    )
}

/// With --max-stale, a worker whose broker has been out of reach that long
/// is not ready: 503, the usual fields, and why.
#[tokio::test]
async fn readyz_is_503_past_max_stale() {
    let (_, live, _dir) = disconnected();
    let answer = get(with_max_stale(live, 0), "/readyz").await;
    let value: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
    let since = value["since_last_contact_ms"]
        .as_u64()
        .expect("a number of milliseconds");
    let body = format!(
        r#"{{"status":"stale","revision":7,"connected":false,"since_last_contact_ms":{since},"lineage":"{LINEAGE}","backend_connected":true,"reason":"the broker has been out of reach for longer than --max-stale (0s)"}}"#
    );
    assert_eq!(answer, refusal(503, &body));
}

/// Within --max-stale, or while connected, /readyz is 200 as without it.
#[tokio::test]
async fn readyz_is_200_within_max_stale() {
    let (plain, live, _dir) = disconnected();
    let answer = get(with_max_stale(live, 3600), "/readyz").await;
    assert_eq!(answer.status, 200);
    let value: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
    assert_eq!(value["status"], "ready");
    assert_eq!(value["connected"], false);
    assert_eq!(get(plain, "/readyz").await.status, 200);
    let fresh = with_max_stale(Live::fixed(snapshot(), Prepared::new), 0);
    assert_eq!(
        get(fresh, "/readyz").await,
        get(connected(), "/readyz").await
    );
}

// ---------------------------------------------------------------- /metrics

/// The lines of a scrape, and its content type.
async fn scrape(app: Router) -> (Answer, Vec<String>) {
    let answer = get(app, "/metrics").await;
    let lines = answer.body.lines().map(str::to_owned).collect();
    (answer, lines)
}

/// A scrape is OpenMetrics text: the revision, the lineage and hash served,
/// the link to the broker, and every request counted under its route
/// template and status (the scrape itself once it is answered).
#[tokio::test]
async fn metrics_say_what_is_served_and_count_requests() {
    let app = connected();
    for uri in [
        "/args",
        "/args",
        "/args/a",
        "/args/list/1",
        "/args/nope",
        "/args/",
        "/readyz",
        "/healthz",
        "/nothing",
        "/args?min_revision=9&wait=0",
    ] {
        get(app.clone(), uri).await;
    }
    get_if_none_match(app.clone(), "/args", "*").await;
    send(app.clone(), request(Method::POST, "/args")).await;
    get(app.clone(), "/metrics").await;
    let (answer, lines) = scrape(app).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let sha256: String = Sha256::digest(COMPACT.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let info = format!(r#"argsbroker_worker_info{{lineage="{LINEAGE}",sha256="{sha256}"}} 1"#);
    for line in [
        "# TYPE argsbroker_worker_revision gauge",
        "argsbroker_worker_revision 7",
        "# TYPE argsbroker_worker_info gauge",
        &info,
        "# TYPE argsbroker_worker_broker_connected gauge",
        "argsbroker_worker_broker_connected 1",
        "# TYPE argsbroker_worker_seconds_since_broker_contact gauge",
        "argsbroker_worker_seconds_since_broker_contact 0.0",
        "# TYPE argsbroker_worker_http_requests counter",
        r#"argsbroker_worker_http_requests_total{route="/args",status="200"} 2"#,
        r#"argsbroker_worker_http_requests_total{route="/args",status="304"} 1"#,
        r#"argsbroker_worker_http_requests_total{route="/args",status="405"} 1"#,
        r#"argsbroker_worker_http_requests_total{route="/args",status="409"} 1"#,
        r#"argsbroker_worker_http_requests_total{route="/args/{pointer}",status="200"} 3"#,
        r#"argsbroker_worker_http_requests_total{route="/args/{pointer}",status="304"} 0"#,
        r#"argsbroker_worker_http_requests_total{route="/args/{pointer}",status="404"} 1"#,
        r#"argsbroker_worker_http_requests_total{route="/readyz",status="200"} 1"#,
        r#"argsbroker_worker_http_requests_total{route="/healthz",status="200"} 1"#,
        r#"argsbroker_worker_http_requests_total{route="/metrics",status="200"} 1"#,
        r#"argsbroker_worker_http_requests_total{route="other",status="404"} 1"#,
    ] {
        assert!(
            lines.iter().any(|l| l == line),
            "{line:?} in\n{}",
            answer.body
        );
    }
    // 5 metrics (HELP and TYPE each), 4 gauges, 11 counters, EOF.
    assert_eq!(lines.len(), 10 + 4 + 11 + 1, "{}", answer.body);
    assert_eq!(lines.last().map(String::as_str), Some("# EOF"));
}

/// Without a broker, a scrape says so and how long ago it was heard from.
#[tokio::test]
async fn metrics_without_a_broker() {
    let (app, live, _dir) = disconnected();
    let (answer, lines) = scrape(app).await;
    assert!(
        lines
            .iter()
            .any(|l| l == "argsbroker_worker_broker_connected 0"),
        "{}",
        answer.body
    );
    let seconds: f64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("argsbroker_worker_seconds_since_broker_contact "))
        .expect("the gauge")
        .parse()
        .expect("a number");
    assert!(seconds >= 0.0 && seconds <= live.since_last_contact().as_secs_f64() + 0.001);
}
