//! The bad-input catalogue: every wrong thing a user, a client or a stray
//! process can hand the broker or a worker, one test each. Each asserts the
//! exact answer (gRPC code and message, HTTP status and body, or exit code
//! and stderr line), that the broker still serves, and that the args are
//! unchanged (GetArgs before and after).
//!
//! Requests the args service refuses (bad documents, patches, pointers,
//! revisions, odd request bodies, unknown methods) are tested in-process, in
//! broker/tests/requests.rs: they need no process of their own.
//!
//! Cases tested elsewhere, once: a missing args file and a regular file at
//! the socket path (startup_errors.rs); a second broker on a live socket
//! (core.rs); a revision that is not retained for Rollback and writes under
//! --read-only (updates.rs); other users' writes and reads (security.rs).
mod common;

use argsbroker::pb;
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const DOC: &str = r#"{"a": 1, "list": [10, 20], "nested": {"k": "v"}}"#;
const DOC_COMPACT: &str = r#"{"a":1,"list":[10,20],"nested":{"k":"v"}}"#;

/// A broker serving `DOC` with `flags`, and what GetArgs answered before the test.
fn serving(flags: &[&str]) -> (Site, Proc, pb::Args) {
    let site = Site::new(DOC);
    let broker = site.start_broker_with(flags);
    let before = get_args(&site.socket());
    assert_eq!(before.json, DOC_COMPACT);
    (site, broker, before)
}

/// The broker still answers, with the same revision and document as `before`.
fn unchanged(site: &Site, broker: &mut Proc, before: &pb::Args) {
    assert!(broker.is_running(), "the broker died: {}", broker.log());
    let now = get_args(&site.socket());
    assert_eq!(
        (now.revision, now.json_str().unwrap(), now.sha256.as_str()),
        (
            before.revision,
            before.json_str().unwrap(),
            before.sha256.as_str()
        ),
        "the args changed"
    );
    assert!(!broker.log().contains("panicked"), "{}", broker.log());
}

/// An args file holding `contents` stops the broker at startup with
/// `broker: error: MESSAGE`; written under a running broker and reloaded
/// (SIGHUP), it is logged with the same message while the broker keeps
/// serving what it had.
fn file_refused(contents: &[u8], flags: &[&str], message: impl Fn(&Path) -> String) {
    let site = Site::new("{}");
    std::fs::write(site.args(), contents).unwrap();
    let mut cmd = site.broker_cmd();
    cmd.args(flags);
    let (code, out, err) = run(&mut cmd);
    let message = message(&site.args());
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (1, "", format!("broker: error: {message}\n").as_str())
    );
    assert!(
        !exists(&site.socket()) && !exists(&site.path("b.sock.lock")),
        "a socket or its lock file was left behind"
    );

    std::fs::write(site.args(), DOC).unwrap();
    let mut broker = site.start_broker_with(flags);
    let before = get_args(&site.socket());
    std::fs::write(site.args(), contents).unwrap();
    broker.signal(libc::SIGHUP);
    let line = broker.log_line("not reloaded");
    assert!(
        line.ends_with(&format!(
            "not reloaded, still serving revision 1: {message}"
        )),
        "{line}"
    );
    unchanged(&site, &mut broker, &before);
}

fn in_args_file(message: &'static str) -> impl Fn(&Path) -> String {
    move |path| format!("the args file {}: {message}", path.display())
}

// ---------------------------------------------------------------- files

/// An empty args file is refused: it is not an object.
#[test]
fn file_empty() {
    file_refused(
        b"",
        &[],
        in_args_file("the document is empty: expected a JSON object"),
    );
}

/// A file of only whitespace is refused like an empty one.
#[test]
fn file_only_whitespace() {
    file_refused(
        b" \n\t\r\n",
        &[],
        in_args_file("the document is empty: expected a JSON object"),
    );
}

/// Invalid JSON is refused with its line and column.
#[test]
fn file_invalid_json() {
    file_refused(
        b"{\n  \"a\": 1,\n  \"b\" 2\n}\n",
        &[],
        in_args_file("invalid JSON at line 3 column 7: expected `:`"),
    );
}

/// A top-level array is refused, named.
#[test]
fn file_top_level_array() {
    file_refused(
        b"[1, 2]",
        &[],
        in_args_file("the top level is an array: expected a JSON object"),
    );
}

/// A top-level string is refused, named.
#[test]
fn file_top_level_string() {
    file_refused(
        b"\"args\"",
        &[],
        in_args_file("the top level is a string: expected a JSON object"),
    );
}

/// A top-level number is refused, named.
#[test]
fn file_top_level_number() {
    file_refused(
        b"42",
        &[],
        in_args_file("the top level is a number: expected a JSON object"),
    );
}

/// A top-level null is refused, named.
#[test]
fn file_top_level_null() {
    file_refused(
        b"null",
        &[],
        in_args_file("the top level is null: expected a JSON object"),
    );
}

/// Bytes that are not UTF-8 are refused with where they are.
#[test]
fn file_invalid_utf8() {
    file_refused(
        b"{\n  \"a\": \"\xff\"\n}",
        &[],
        in_args_file("not UTF-8 at line 2 column 9 (byte 0xff): JSON text must be UTF-8"),
    );
}

/// A UTF-8 byte order mark is accepted and skipped, in a file and in a write alike.
#[test]
fn file_with_a_byte_order_mark_is_accepted() {
    let site = Site::new("{}");
    std::fs::write(site.args(), b"\xEF\xBB\xBF{\"a\": 1}\n").unwrap();
    let mut broker = site.start_broker();
    let first = get_args(&site.socket());
    assert_eq!(
        (first.revision, first.json_str().unwrap()),
        (1, r#"{"a":1}"#)
    );
    let reply = site.set("\u{feff}{\"a\": 2}", None).unwrap();
    assert_eq!(
        (reply.revision, reply.json_str().unwrap()),
        (2, r#"{"a":2}"#)
    );
    unchanged(&site, &mut broker, &reply);
}

/// An object that repeats a key is refused, naming the key and where it repeats.
#[test]
fn file_duplicate_keys() {
    file_refused(
        b"{\n  \"model\": {\"path\": \"a\",\n            \"path\": \"b\"}\n}",
        &[],
        in_args_file(
            r#"duplicate key "path" at line 3 column 18: a key may appear only once in an object"#,
        ),
    );
}

/// 10,000 levels of nesting are refused at level 128 (127 are allowed), without a stack overflow.
#[test]
fn file_deep_nesting() {
    let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
    file_refused(
        deep.as_bytes(),
        &[],
        in_args_file(
            "invalid JSON at line 1 column 132: nesting deeper than 127 levels of arrays and objects",
        ),
    );
}

/// A file over --max-args-bytes is refused before it is read.
#[test]
fn file_over_the_size_limit() {
    let big = format!(r#"{{"a": "{}"}}"#, "x".repeat(100));
    file_refused(big.as_bytes(), &["--max-args-bytes", "64"], |path| {
        format!(
            "the args file {} is 109 bytes, over the limit of 64 (--max-args-bytes)",
            path.display()
        )
    });
}

/// A file under the limit whose compact form (what is sent) is over it is refused: `1e1` is served as `1e+1`.
#[test]
fn file_compact_form_over_the_size_limit() {
    let text = format!("{{\"a\":[{}]}}", vec!["1e1"; 23].join(","));
    assert_eq!(text.len(), 99);
    file_refused(text.as_bytes(), &["--max-args-bytes", "100"], |path| {
        format!(
            "the args file {} is 122 bytes as compact JSON, over the limit of 100 (--max-args-bytes)",
            path.display()
        )
    });
}

/// A directory where the args file should be is named as such, at startup and on reload.
#[test]
fn file_is_a_directory() {
    let site = Site::new(DOC);
    let dir = site.path("dir.json");
    std::fs::create_dir(&dir).unwrap();
    let mut cmd = Command::new(BROKER);
    cmd.arg("--args")
        .arg(&dir)
        .arg("--socket")
        .arg(site.socket());
    let message = |p: &Path| format!("the args file {} is a directory, not a file", p.display());
    assert_eq!(
        run(&mut cmd),
        (
            1,
            String::new(),
            format!("broker: error: {}\n", message(&dir))
        )
    );

    let mut broker = site.start_broker();
    let before = get_args(&site.socket());
    std::fs::remove_file(site.args()).unwrap();
    std::fs::create_dir(site.args()).unwrap();
    broker.signal(libc::SIGHUP);
    eventually("the reload error in the log", || {
        broker
            .log()
            .contains(&format!(
                "not reloaded, still serving revision 1: {}",
                message(&site.args())
            ))
            .then_some(())
    });
    unchanged(&site, &mut broker, &before);
}

/// A file the broker may not read (mode 0600, another owner) is refused with the OS's reason.
/// Root reads any file, so the broker runs as uid 65534 here.
#[test]
fn file_without_read_permission() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    require_root("file_without_read_permission");
    let site = Site::new(DOC);
    std::os::unix::fs::chown(site.dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let broker_copy = site.broker_copy();
    let as_nobody = || {
        let mut cmd = std::process::Command::new(&broker_copy);
        cmd.arg("--args")
            .arg(site.args())
            .arg("--socket")
            .arg(site.socket());
        cmd.uid(NOBODY).gid(NOBODY);
        cmd
    };
    let message = format!(
        "cannot read the args file {}: Permission denied (os error 13)",
        site.args().display()
    );

    std::fs::set_permissions(site.args(), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        run(&mut as_nobody()),
        (1, String::new(), format!("broker: error: {message}\n"))
    );

    std::fs::set_permissions(site.args(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut broker = site.spawn_broker(as_nobody());
    let before = get_args(&site.socket());
    std::fs::set_permissions(site.args(), std::fs::Permissions::from_mode(0o600)).unwrap();
    broker.signal(libc::SIGHUP);
    eventually("the reload error in the log", || {
        broker
            .log()
            .contains(&format!(
                "not reloaded, still serving revision 1: {message}"
            ))
            .then_some(())
    });
    unchanged(&site, &mut broker, &before);
}

// ---------------------------------------------------------------- transport

/// A call of `method` of the args service on a raw HTTP/2 connection of its
/// own, with or without a request body to come: the response to be, the
/// body's sender, and the connection's task (abort it to hang up).
async fn start_raw_call(
    site: &Site,
    method: &str,
    end_of_stream: bool,
) -> (
    h2::client::ResponseFuture,
    h2::SendStream<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let stream = tokio::net::UnixStream::connect(site.socket())
        .await
        .unwrap();
    let (mut h2, connection) = h2::client::handshake(stream).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = tonic::codegen::http::Request::post(format!(
        "http://localhost/argsbroker.v1.ArgsBroker/{method}"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (response, send) = h2.send_request(request, end_of_stream).unwrap();
    (response, send, connection)
}

/// Reads what the broker sends on `stream` until it closes it; fails after `PATIENCE`.
fn read_until_closed(stream: &mut UnixStream) -> Vec<u8> {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => got,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => got,
        Err(e) => panic!("the broker did not close the connection: {e}"),
    }
}

/// Random bytes on the socket: the connection is closed at once, nothing is answered.
#[test]
fn random_bytes_on_the_socket() {
    let (site, mut broker, before) = serving(&[]);
    let mut x: u32 = 0x9e37_79b9;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let mut stream = UnixStream::connect(site.socket()).unwrap();
    let started = Instant::now();
    let _ = stream.write_all(&noise);
    assert_eq!(read_until_closed(&mut stream), b"");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed only after {:?}",
        started.elapsed()
    );
    unchanged(&site, &mut broker, &before);
}

/// An HTTP/1.1 request (curl --unix-socket) gets a 505 that says what the socket is, then the connection closes.
#[test]
fn http1_request_on_the_socket() {
    let (site, mut broker, before) = serving(&[]);
    let mut stream = UnixStream::connect(site.socket()).unwrap();
    stream
        .write_all(b"GET /args HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl\r\n\r\n")
        .unwrap();
    let reply = String::from_utf8(read_until_closed(&mut stream)).unwrap();
    let body = "This is argsbroker's socket: it speaks gRPC (HTTP/2) only. Use `broker get --socket PATH`, a gRPC client, or a worker (which serves the args over HTTP/1.1).\n";
    assert_eq!(
        reply,
        format!(
            "HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    );
    unchanged(&site, &mut broker, &before);
}

/// 2,000 connections that say nothing: others are served meanwhile, and the
/// silent ones are closed after --handshake-timeout.
#[test]
fn two_thousand_silent_connections() {
    raise_nofile(4096);
    let (site, mut broker, before) = serving(&["--handshake-timeout", "2"]);
    let opened = Instant::now();
    let mut silent: Vec<UnixStream> = (0..2000)
        .map(|_| UnixStream::connect(site.socket()).unwrap())
        .collect();
    let served = Instant::now();
    unchanged(&site, &mut broker, &before);
    assert!(
        served.elapsed() < Duration::from_secs(2),
        "GetArgs waited {:?}",
        served.elapsed()
    );
    for stream in &mut silent {
        assert_eq!(read_until_closed(stream), b"");
    }
    assert!(
        opened.elapsed() >= Duration::from_secs(2),
        "closed before the handshake timeout"
    );
    unchanged(&site, &mut broker, &before);
}

/// With --max-connections 3 taken by silent peers, a fourth client waits
/// (not refused, not crashed) and is served once the timeout frees a place.
#[test]
fn connection_cap_makes_new_connections_wait() {
    let (site, mut broker, before) =
        serving(&["--max-connections", "3", "--handshake-timeout", "1"]);
    let silent: Vec<UnixStream> = (0..3)
        .map(|_| UnixStream::connect(site.socket()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    unchanged(&site, &mut broker, &before);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "served after {waited:?}: the cap did not hold"
    );
    assert!(
        broker
            .log()
            .contains("3 connections are open (--max-connections): new ones wait until one closes"),
        "{}",
        broker.log()
    );
    drop(silent);
}

/// A watcher that never reads while 1,000 revisions of a 32 KiB document are
/// written: the broker does not queue them (memory stays bounded), and the
/// watcher, when it reads, skips to the newest.
#[test]
fn watcher_that_never_reads() {
    // tmpfs, where the 1,000 durable writes cost no fsync.
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let blob = "x".repeat(32 * 1024);
    let site = Site::new_in(&parent, &format!(r#"{{"n": 0, "blob": "{blob}"}}"#));
    let mut broker = site.start_broker_with(&["--history", "10"]);
    let pid = broker.pid();
    let (grown_kib, received, last) = grpc(|| async {
        let mut client = argsbroker::client::connect(site.socket()).await.unwrap();
        let mut watch = client
            .watch_args(pb::WatchArgsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut writer = argsbroker::client::connect(site.socket()).await.unwrap();
        let mut write = async |n: u64| {
            let merge_patch = format!(r#"{{"n": {n}}}"#);
            writer
                .patch_args(pb::PatchArgsRequest {
                    merge_patch,
                    expected_revision: None,
                })
                .await
                .unwrap()
                .into_inner()
                .revision
        };
        for n in 1..=50 {
            write(n).await;
        }
        let rss_before = rss_kib(pid);
        let mut last = 0;
        for n in 51..=1050 {
            last = write(n).await;
        }
        let grown_kib = rss_kib(pid).saturating_sub(rss_before);
        let mut received = 0;
        loop {
            let message = watch.message().await.unwrap().unwrap();
            received += 1;
            if message.revision == last {
                break;
            }
        }
        (grown_kib, received, last)
    });
    assert_eq!(last, 1051);
    // Queued for the watcher, 1,000 revisions would be over 32 MiB.
    assert!(grown_kib < 16 * 1024, "the broker grew by {grown_kib} KiB");
    // What reached the watcher is what its HTTP/2 window (2 MiB, hyper's
    // client default) held, about 64 messages, then the newest: not 1,000.
    assert!(
        received < 100,
        "the watcher got {received} messages: revisions were queued, not skipped"
    );
    assert!(broker.is_running());
    let now = get_args(&site.socket());
    assert_eq!(now.revision, last);
    broker.stop();
}

/// A client that sends half a SetArgs message and disconnects changes nothing.
#[test]
fn client_disconnects_mid_request() {
    let (site, mut broker, before) = serving(&[]);
    grpc(|| async {
        let (_response, mut body, connection) = start_raw_call(&site, "SetArgs", false).await;
        // A gRPC frame that announces 1,000 bytes, and the first 20 of them.
        let mut frame = vec![0u8, 0, 0, 0x03, 0xe8, 0x0a, 0xe6, 0x07];
        frame.extend_from_slice(b"{\"a\": 999, \"b\"");
        body.send_data(frame.into(), false).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        connection.abort();
    });
    std::thread::sleep(Duration::from_millis(100));
    unchanged(&site, &mut broker, &before);
}

/// A watcher that goes away in the middle of its stream is forgotten; writes and other watchers go on.
#[test]
fn watcher_disconnects_mid_stream() {
    let (site, mut broker, _) = serving(&[]);
    grpc(|| async {
        let mut client = argsbroker::client::connect(site.socket()).await.unwrap();
        let mut watch = client
            .watch_args(pb::WatchArgsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(watch.message().await.unwrap().unwrap().revision, 1);
        drop(watch);
        drop(client);
    });
    let reply = site.patch(r#"{"a": 2}"#, None).unwrap();
    assert_eq!(reply.revision, 2);
    let first = grpc(|| async {
        let mut client = argsbroker::client::connect(site.socket()).await.unwrap();
        let mut watch = client
            .watch_args(pb::WatchArgsRequest::default())
            .await
            .unwrap()
            .into_inner();
        watch.message().await.unwrap().unwrap()
    });
    assert_eq!(
        (first.revision, first.json_str().unwrap()),
        (2, r#"{"a":2,"list":[10,20],"nested":{"k":"v"}}"#)
    );
    unchanged(&site, &mut broker, &reply);
}

/// A peer that stops answering HTTP/2 pings is dropped after --keepalive (twice over), so dead watchers are noticed.
#[test]
fn peer_that_stops_answering_pings_is_dropped() {
    let (site, mut broker, before) = serving(&["--keepalive", "0.5"]);
    let mut stream = UnixStream::connect(site.socket()).unwrap();
    // The preface and an empty SETTINGS frame; after that, nothing, not even a ping's answer.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut stream);
    let pings = got.windows(4).filter(|w| w[..] == [0, 0, 8, 6]).count();
    assert!(pings >= 1, "no PING frame was sent: {got:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}",
        started.elapsed()
    );
    unchanged(&site, &mut broker, &before);
}

// ---------------------------------------------------------------- command line

/// Runs `cmd`; returns its exit code and the first line of stderr.
fn first_line(cmd: &mut Command) -> (i32, String) {
    let (code, _, stderr) = run(cmd);
    assert!(!stderr.contains("panicked"), "{stderr}");
    (code, stderr.lines().next().unwrap_or_default().to_owned())
}

/// Unknown flags are a usage error (exit 2) that names the flag, for both binaries.
#[test]
fn unknown_flags() {
    assert_eq!(
        first_line(Command::new(BROKER).arg("--bogus")),
        (2, "error: unexpected argument '--bogus' found".to_owned())
    );
    assert_eq!(
        first_line(Command::new(WORKER).arg("--bogus")),
        (2, "error: unexpected argument '--bogus' found".to_owned())
    );
    assert_eq!(
        first_line(Command::new(WORKER).args(["--listen", "nowhere"])),
        (2, "error: invalid value 'nowhere' for '--listen <HOST:PORT>': \"nowhere\" is not HOST:PORT (say 127.0.0.1:9880 or localhost:9880)".to_owned())
    );
}

/// A --max-args-bytes of zero, or one no gRPC message could carry (4 GiB), is a usage error.
#[test]
fn max_args_bytes_out_of_range() {
    let site = Site::new(DOC);
    let line = |bytes: &str| first_line(site.broker_cmd().args(["--max-args-bytes", bytes]));
    assert_eq!(
        line("0"),
        (
            2,
            "error: invalid value '0' for '--max-args-bytes <BYTES>': 0 is not in 1..=4294901759"
                .to_owned()
        )
    );
    assert_eq!(line("5000000000"), (2, "error: invalid value '5000000000' for '--max-args-bytes <BYTES>': 5000000000 is not in 1..=4294901759".to_owned()));
    assert!(!exists(&site.socket()));
}

/// A --socket-mode that is not octal, too wide, or that locks the owner out is a usage error.
#[test]
fn bad_socket_mode() {
    let site = Site::new(DOC);
    let line = |mode: &str| first_line(site.broker_cmd().args(["--socket-mode", mode]));
    assert_eq!(line("rw-rw----"), (2, "error: invalid value 'rw-rw----' for '--socket-mode <OCTAL>': rw-rw---- is not an octal mode such as 0660".to_owned()));
    assert_eq!(line("4777"), (2, "error: invalid value '4777' for '--socket-mode <OCTAL>': 4777 is not a permission mode (at most 0777; no setuid, setgid or sticky bits)".to_owned()));
    assert_eq!(line("0066"), (2, "error: invalid value '0066' for '--socket-mode <OCTAL>': 0066 takes read and write from the socket's owner; keep them (0600 and up)".to_owned()));
    assert!(!exists(&site.socket()));
}

/// A --socket-group or --writer-uid that names nobody is a usage error.
#[test]
fn unknown_group_or_user() {
    let site = Site::new(DOC);
    assert_eq!(
        first_line(site.broker_cmd().args(["--socket-group", "no-such-group"])),
        (2, "error: invalid value 'no-such-group' for '--socket-group <GROUP>': no group named \"no-such-group\"".to_owned())
    );
    assert_eq!(
        first_line(site.broker_cmd().args(["--writer-uid", "no-such-user"])),
        (2, "error: invalid value 'no-such-user' for '--writer-uid <USER>': no user named \"no-such-user\"".to_owned())
    );
}

/// A socket path longer than sun_path holds is refused before anything is created.
#[test]
fn socket_path_too_long() {
    let site = Site::new(DOC);
    let long = site.path(&format!("{}.sock", "s".repeat(120)));
    let len = long.as_os_str().len();
    let mut cmd = Command::new(BROKER);
    cmd.arg("--args")
        .arg(site.args())
        .arg("--socket")
        .arg(&long);
    assert_eq!(
        first_line(&mut cmd),
        (1, format!("broker: error: the socket path {} is {len} bytes; a Unix socket path holds at most 107", long.display()))
    );
    assert!(
        std::fs::read_dir(site.dir.path()).unwrap().count() == 1,
        "only args.json is there"
    );
}

/// A socket in a directory that does not exist is named.
#[test]
fn socket_directory_missing() {
    let site = Site::new(DOC);
    let mut cmd = Command::new(BROKER);
    cmd.arg("--args")
        .arg(site.args())
        .arg("--socket")
        .arg(site.path("missing/b.sock"));
    assert_eq!(
        first_line(&mut cmd),
        (
            1,
            format!(
                "broker: error: the socket directory {} does not exist",
                site.path("missing").display()
            )
        )
    );
}

/// A worker on a taken port (without --reuse-port) says so in one line, exit 1.
#[test]
fn worker_port_taken() {
    let (site, mut broker, before) = serving(&[]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (code, _, stderr) = run(&mut site.worker_cmd(port, false));
    assert_eq!(
        (code, stderr.lines().last().unwrap_or_default()),
        (1, format!("worker: error: cannot listen on 127.0.0.1:{port}: Address already in use (os error 98)").as_str())
    );
    unchanged(&site, &mut broker, &before);
}

/// A worker pointed at a path that is not a socket says so at once.
#[test]
fn worker_broker_path_is_not_a_socket() {
    let site = Site::new(DOC);
    let mut cmd = Command::new(WORKER);
    cmd.arg("--broker")
        .arg(site.args())
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()));
    let (code, _, stderr) = run(&mut cmd);
    assert_eq!(
        (code, stderr.lines().last().unwrap_or_default()),
        (
            1,
            format!(
                "worker: error: {} is not a socket; --broker must name the broker's --socket",
                site.args().display()
            )
            .as_str()
        )
    );
}

// ---------------------------------------------------------------- worker HTTP
//
// The worker's answers that need no process (a pointer's escaping, bad
// percent-encoding, the 8 KiB pointer limit, 405, 304, staleness) are tested
// in-process in worker/http/tests.rs; these need a real connection.

/// A worker serving `DOC`, on its own port.
fn worker() -> (Site, Proc, Proc, u16) {
    let site = Site::new(DOC);
    let broker = site.start_broker();
    let port = free_port();
    let worker = site.start_worker(port, false);
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
