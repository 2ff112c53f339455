//! The socket: bytes, connections and peers that are not well-behaved gRPC clients.
use super::*;

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
    // All three accepted: the broker says it is full.
    broker.log_line("3 connections are open (--max-connections)");
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
                    ..Default::default()
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
