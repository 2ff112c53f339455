//! Flags: usage errors and what a command line cannot work with.
use super::*;

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
        .arg(format!("127.0.0.1:{ANY_PORT}"));
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
