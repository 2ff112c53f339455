//! Mistakes a user can make on the command line: one clear line on stderr,
//! a non-zero exit, no panic, and nothing left behind. The rest of them
//! (bad files, socket paths, flags) are in the catalogue, bad_input.rs.
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
    let state = format!("{}.state", args.display());
    assert!(
        !exists(std::path::Path::new(&state)),
        "{state} was left behind"
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
