//! The bad-input catalogue: every wrong thing a user, a client or a stray
//! process can hand the broker or a worker, one test each. Each asserts the
//! exact answer (gRPC code and message, HTTP status and body, or exit code
//! and stderr line), that the broker still serves, and that the args are
//! unchanged (GetArgs before and after). One file per kind: the args file
//! (files.rs), the socket (transport.rs), flags (command_line.rs) and the
//! worker's HTTP port (worker_http.rs).
//!
//! Requests the args service refuses (bad documents, patches, pointers,
//! revisions, odd request bodies, unknown methods) are tested in-process, in
//! broker/tests/requests.rs: they need no process of their own.
//!
//! Cases tested elsewhere, once: a missing args file and a regular file at
//! the socket path (startup_errors.rs); a second broker on a live socket
//! (core.rs); a revision that is not retained for Rollback and writes under
//! --read-only (updates.rs); other users' writes and reads (security.rs);
//! documents that break --schema, and schema files that are not JSON or not
//! a schema (schema.rs).
#[path = "../common/mod.rs"]
mod common;

mod command_line;
mod files;
mod transport;
mod worker_http;

use argsbroker::pb;
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub const DOC: &str = r#"{"a": 1, "list": [10, 20], "nested": {"k": "v"}}"#;
pub const DOC_COMPACT: &str = r#"{"a":1,"list":[10,20],"nested":{"k":"v"}}"#;

/// A broker serving `DOC` with `flags`, and what GetArgs answered before the test.
pub fn serving(flags: &[&str]) -> (Site, Proc, pb::Args) {
    let site = Site::new(DOC);
    let broker = site.start_broker_with(flags);
    let before = get_args(&site.socket());
    assert_eq!(before.json, DOC_COMPACT);
    (site, broker, before)
}

/// The broker still answers, with the same revision and document as `before`.
pub fn unchanged(site: &Site, broker: &mut Proc, before: &pb::Args) {
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
pub fn file_refused(contents: &[u8], flags: &[&str], message: impl Fn(&Path) -> String) {
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
    assert!(
        !exists(&site.path("args.json.state")),
        "a state directory was left behind"
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

pub fn in_args_file(message: &'static str) -> impl Fn(&Path) -> String {
    move |path| format!("the args file {}: {message}", path.display())
}
