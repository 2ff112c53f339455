//! The worker's HTTP port: what only a real connection shows (hyper's own answers).
use super::*;

//
// The worker's answers that need no process (a pointer's escaping, bad
// percent-encoding, the 8 KiB pointer limit, 405, 304, staleness) are tested
// in-process in worker/http/tests.rs; these need a real connection.

/// A worker serving `DOC`, on its own port.
fn worker() -> (Site, Proc, Proc, u16) {
    let site = Site::new(DOC);
    let broker = site.start_broker();
    let worker = site.start_worker();
    let port = worker.http_port();
    (site, broker, worker, port)
}

/// Sends raw bytes to the worker and returns the whole answer.
fn raw_http(port: u16, request: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// A URI over 64 KiB is 414 from hyper, before the router; the worker keeps serving.
#[test]
fn worker_path_too_long() {
    let (_site, _broker, mut worker, port) = worker();
    let answer = get(port, &format!("/args/{}", "a".repeat(70_000)));
    assert_eq!((answer.status, answer.body.as_str()), (414, ""));
    assert!(worker.is_running());
    assert_eq!(get(port, "/args").body, args_body(DOC_COMPACT));
}

/// Request bodies are never read: a POST is 405 and a GET with a body is answered as if it had none.
#[test]
fn worker_ignores_request_bodies() {
    let (_site, _broker, mut worker, port) = worker();
    let answer = raw_http(port, b"POST /args HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"a\": 666}\n");
    assert!(
        answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{answer}"
    );
    assert!(!answer.contains("666"), "{answer}");
    let answer = raw_http(port, b"GET /args HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n{\"a\": 666}");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with(&args_body(DOC_COMPACT)), "{answer}");
    assert!(worker.is_running());
}
