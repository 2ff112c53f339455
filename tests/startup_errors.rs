//! Mistakes a user can make on the command line: one clear line on stderr,
//! a non-zero exit, no panic, and nothing left behind.
mod common;

use common::*;
use std::process::Command;

/// Runs the broker with `args` and `socket`; returns (code, last stderr line).
fn broker_fails(args: &std::path::Path, socket: &std::path::Path) -> (i32, String) {
    let mut cmd = Command::new(BROKER);
    cmd.arg("--args").arg(args).arg("--socket").arg(socket);
    let (code, _, stderr) = run(&mut cmd);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !exists(socket) || socket.is_file(),
        "a socket was left at {}",
        socket.display()
    );
    (code, stderr.lines().last().unwrap_or_default().to_owned())
}

/// A missing args file is named.
#[test]
fn missing_args_file() {
    let site = Site::new("{}");
    let missing = site.path("nope.json");
    assert_eq!(
        broker_fails(&missing, &site.socket()),
        (1, format!("broker: error: cannot read the args file {}: No such file or directory (os error 2)", missing.display()))
    );
}

/// Invalid JSON is reported with its line and column.
#[test]
fn invalid_json_names_line_and_column() {
    let site = Site::new("{\n  \"a\": 1,\n  \"b\" 2\n}\n");
    assert_eq!(
        broker_fails(&site.args(), &site.socket()),
        (
            1,
            format!(
                "broker: error: the args file {}: invalid JSON at line 3 column 7: expected `:`",
                site.args().display()
            )
        )
    );
}

/// A top level that is not an object is refused, naming what it is.
#[test]
fn top_level_must_be_an_object() {
    for (text, kind) in [
        ("[1, 2]", "an array"),
        ("\"s\"", "a string"),
        ("42", "a number"),
        ("null", "null"),
    ] {
        let site = Site::new(text);
        assert_eq!(
            broker_fails(&site.args(), &site.socket()),
            (1, format!("broker: error: the args file {}: the top level is {kind}: expected a JSON object", site.args().display()))
        );
    }
}

/// A socket path longer than sun_path holds is refused before binding.
#[test]
fn socket_path_too_long() {
    let site = Site::new("{}");
    let long = site.path(&format!("{}.sock", "s".repeat(120)));
    let len = long.as_os_str().len();
    assert_eq!(
        broker_fails(&site.args(), &long),
        (1, format!("broker: error: the socket path {} is {len} bytes; a Unix socket path holds at most 107", long.display()))
    );
}

/// A socket in a directory that does not exist is named.
#[test]
fn socket_directory_missing() {
    let site = Site::new("{}");
    let socket = site.path("missing/b.sock");
    assert_eq!(
        broker_fails(&site.args(), &socket),
        (
            1,
            format!(
                "broker: error: the socket directory {} does not exist",
                site.path("missing").display()
            )
        )
    );
}

/// A directory given as the args file is named as such.
#[test]
fn args_file_is_a_directory() {
    let site = Site::new("{}");
    let dir = site.path("");
    let dir = dir.as_path();
    assert_eq!(
        broker_fails(dir, &site.socket()),
        (
            1,
            format!(
                "broker: error: the args file {} is a directory, not a file",
                dir.display()
            )
        )
    );
}

/// A regular file at the socket path is never replaced.
#[test]
fn socket_path_is_a_regular_file() {
    let site = Site::new("{}");
    let file = site.path("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    assert_eq!(
        broker_fails(&site.args(), &file),
        (
            1,
            format!(
                "broker: error: {} exists and is not a socket; refusing to replace it",
                file.display()
            )
        )
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

/// Unknown flags are a usage error (exit 2) that names the flag.
#[test]
fn unknown_flag_is_a_usage_error() {
    let (code, _, stderr) = run(Command::new(BROKER).arg("--bogus"));
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with("error: unexpected argument '--bogus' found"),
        "{stderr}"
    );
    let (code, _, stderr) = run(Command::new(WORKER).args(["--listen", "nowhere"]));
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with("error: invalid value 'nowhere' for '--listen <HOST:PORT>'"),
        "{stderr}"
    );
}

/// A worker pointed at a path that is not a socket says so at once.
#[test]
fn worker_broker_path_is_not_a_socket() {
    let site = Site::new("{}");
    let mut cmd = Command::new(WORKER);
    cmd.arg("--broker")
        .arg(site.args())
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()));
    let (code, _, stderr) = run(&mut cmd);
    assert_eq!(code, 1);
    assert_eq!(
        stderr.lines().last().unwrap(),
        format!(
            "worker: error: {} is not a socket; --broker must name the broker's --socket",
            site.args().display()
        )
    );
}
