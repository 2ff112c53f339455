//! `broker --schema FILE`, with real binaries: writes (SetArgs, PatchArgs,
//! Rollback) whose result breaks the schema are refused with
//! INVALID_ARGUMENT, every violation named at its JSON pointer, and nothing
//! changes; an args file that breaks it is refused at start (exit 1) and on
//! reload (logged, the current revision kept); a schema file that is not
//! JSON or not a schema stops the broker at start. In etcd mode, a write is
//! checked before the transaction, and a value some other tool put in etcd
//! that breaks the schema is logged and not served.
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use tonic::Code;

const DOC: &str = r#"{"port": 8080, "model": {"path": "/m/1"}, "workers": 2}"#;
const DOC_COMPACT: &str = r#"{"port":8080,"model":{"path":"/m/1"},"workers":2}"#;

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "properties": {
    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
    "model": {
      "type": "object",
      "properties": {"path": {"type": "string"}},
      "required": ["path"]
    },
    "workers": {"type": "integer", "minimum": 1}
  },
  "required": ["port", "model"]
}"#;

/// A site whose args file holds `args`, with `SCHEMA` beside it.
fn site_with_schema(args: &str) -> (Site, PathBuf) {
    let site = Site::new(args);
    let schema = site.path("args.schema.json");
    std::fs::write(&schema, SCHEMA).expect("write the schema");
    (site, schema)
}

fn schema_flag(schema: &Path) -> [&str; 2] {
    ["--schema", schema.to_str().expect("a UTF-8 temp path")]
}

fn refused(schema: &Path, violations: &str) -> String {
    format!(
        "the document does not satisfy the schema {}: {violations}",
        schema.display()
    )
}

/// `broker SUBCOMMAND --socket S ARGS...`: (exit code, stdout, stderr).
fn cli(site: &Site, subcommand: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(BROKER);
    cmd.arg(subcommand)
        .arg("--socket")
        .arg(site.socket())
        .args(args);
    run(&mut cmd)
}

/// What the broker serves: (revision, compact JSON).
fn served(site: &Site) -> (u64, String) {
    let args = site.current();
    (args.revision, args.json_str().expect("UTF-8").to_owned())
}

#[test]
fn a_patch_that_breaks_the_schema_is_refused_and_changes_nothing() {
    let (site, schema) = site_with_schema(DOC);
    let mut broker = site.start_broker_with(&schema_flag(&schema));
    assert_eq!(served(&site), (1, DOC_COMPACT.to_owned()));
    let on_disk = std::fs::read(site.args()).expect("read the args file");

    let message = refused(&schema, r#"/port: "x" is not of type "integer""#);
    assert_eq!(
        site.patch(r#"{"port": "x"}"#, None).map(|a| a.revision),
        Err((Code::InvalidArgument, message.clone()))
    );
    assert_eq!(
        cli(&site, "patch", &[r#"{"port": "x"}"#]),
        (1, String::new(), format!("broker: error: {message}\n"))
    );
    // Nothing changed: the revision, the file, the history.
    assert_eq!(served(&site), (1, DOC_COMPACT.to_owned()));
    assert_eq!(std::fs::read(site.args()).expect("read"), on_disk);
    let (code, history, _) = cli(&site, "history", &[]);
    let revisions: Vec<&str> = history.lines().skip(1).collect();
    assert_eq!((code, revisions.len()), (0, 1), "{history}");

    // A patch that keeps to the schema is a new revision, as always.
    let written = site
        .patch(r#"{"port": 9090}"#, None)
        .expect("a valid patch");
    assert_eq!(
        (written.revision, written.json_str().expect("UTF-8")),
        (2, r#"{"port":9090,"model":{"path":"/m/1"},"workers":2}"#)
    );
    assert_eq!(broker.stop().code(), Some(0));
}

#[test]
fn a_set_lists_every_violation_with_its_pointer() {
    let (site, schema) = site_with_schema(DOC);
    let _broker = site.start_broker_with(&schema_flag(&schema));
    let outcome = site.set(r#"{"port": 70000, "model": {}, "workers": 0.5}"#, None);
    assert_eq!(
        outcome.map(|a| a.revision),
        Err((
            Code::InvalidArgument,
            refused(
                &schema,
                r#"/model: "path" is a required property; /port: 70000 is greater than the maximum of 65535; /workers: 0.5 is less than the minimum of 1; /workers: 0.5 is not of type "integer""#
            )
        ))
    );
    assert_eq!(
        site.set("{}", None).map(|a| a.revision),
        Err((
            Code::InvalidArgument,
            refused(
                &schema,
                r#"/: "model" is a required property; /: "port" is a required property"#
            )
        ))
    );
    assert_eq!(served(&site), (1, DOC_COMPACT.to_owned()));
}

#[test]
fn a_rollback_to_a_revision_that_breaks_the_schema_is_refused() {
    // Revision 2 is written before the broker has a schema; revision 3 keeps to it.
    let (site, schema) = site_with_schema(DOC);
    let mut broker = site.start_broker();
    site.patch(r#"{"workers": 0}"#, None)
        .expect("no schema yet");
    site.patch(r#"{"workers": 4}"#, None)
        .expect("no schema yet");
    assert_eq!(broker.stop().code(), Some(0));

    let _broker = site.start_broker_with(&schema_flag(&schema));
    let before = served(&site);
    assert_eq!(before.0, 3);
    assert_eq!(
        cli(&site, "rollback", &["2"]),
        (
            1,
            String::new(),
            format!(
                "broker: error: {}\n",
                refused(&schema, "/workers: 0 is less than the minimum of 1")
            )
        )
    );
    assert_eq!(served(&site), before);
    let (code, out, err) = cli(&site, "rollback", &["1"]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "revision 4\n", ""));
}

#[test]
fn a_reload_of_a_file_that_breaks_the_schema_keeps_the_current_revision() {
    let (site, schema) = site_with_schema(DOC);
    let broker = site.start_broker_with(&schema_flag(&schema));
    std::fs::write(site.args(), r#"{"port": "x", "model": {"path": "/m/2"}}"#).expect("write");
    broker.signal(libc::SIGHUP);
    let line = broker.log_line("not reloaded");
    let expected = format!(
        "not reloaded, still serving revision 1: the args file {} does not satisfy the schema {}: /port: \"x\" is not of type \"integer\"",
        site.args().display(),
        schema.display()
    );
    assert!(line.ends_with(&expected), "{line}");
    assert_eq!(served(&site), (1, DOC_COMPACT.to_owned()));

    // The next good file is loaded as usual.
    std::fs::write(site.args(), r#"{"port": 1, "model": {"path": "/m/2"}}"#).expect("write");
    broker.signal(libc::SIGHUP);
    broker.log_line("reloaded the args file");
    assert_eq!(
        served(&site),
        (2, r#"{"port":1,"model":{"path":"/m/2"}}"#.to_owned())
    );
}

/// `broker --args ARGS --socket S --schema SCHEMA` exits 1 with `line` on
/// stderr, leaving no socket and no state behind.
fn start_refused(site: &Site, schema: &Path, line: &str) {
    let mut cmd = site.broker_cmd();
    cmd.args(schema_flag(schema));
    assert_eq!(
        run(&mut cmd),
        (1, String::new(), format!("broker: error: {line}\n"))
    );
    assert!(!exists(&site.socket()), "a socket was left behind");
    assert!(
        !exists(&site.path("args.json.state")),
        "a state directory was left behind"
    );
}

#[test]
fn a_broker_whose_args_file_breaks_the_schema_does_not_start() {
    let (site, schema) = site_with_schema(r#"{"port": "x", "model": {"path": 1}}"#);
    start_refused(
        &site,
        &schema,
        &format!(
            "the args file {} does not satisfy the schema {}: /model/path: 1 is not of type \"string\"; /port: \"x\" is not of type \"integer\"",
            site.args().display(),
            schema.display()
        ),
    );
}

#[test]
fn a_schema_file_that_is_not_json_or_not_a_schema_stops_the_broker() {
    let site = Site::new(DOC);
    let schema = site.path("args.schema.json");

    std::fs::write(&schema, "{\n  \"type\": \"object\",\n}\n").expect("write");
    start_refused(
        &site,
        &schema,
        &format!(
            "the schema file {} is not JSON: invalid JSON at line 3 column 1: trailing comma",
            schema.display()
        ),
    );

    std::fs::write(&schema, r#"{"properties": {"port": {"type": "int"}}}"#).expect("write");
    start_refused(
        &site,
        &schema,
        &format!(
            "the schema file {} is not a valid JSON Schema: /properties/port/type: \"int\" is not valid under any of the schemas listed in the 'anyOf' keyword",
            schema.display()
        ),
    );

    let missing = site.path("missing.schema.json");
    start_refused(
        &site,
        &missing,
        &format!(
            "cannot read the schema file {}: No such file or directory (os error 2)",
            missing.display()
        ),
    );
}

#[cfg(feature = "etcd")]
#[test]
fn in_etcd_mode_a_write_that_breaks_the_schema_never_reaches_etcd() {
    use common::etcd::Cluster;
    use std::time::Duration;
    const KEY: &str = "/argsbroker/schema";
    let cluster = Cluster::start(1);
    let endpoints = cluster.endpoints();
    let etcd_value = || {
        let out = cluster.etcdctl(
            &endpoints,
            &["get", KEY, "--print-value-only"],
            Duration::from_secs(10),
        );
        assert!(out.status.success(), "etcdctl get: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    };
    let etcd_broker = |site: &Site, schema: &Path| {
        let mut cmd = Command::new(BROKER);
        cmd.args(["--etcd-endpoints", &cluster.endpoints_csv()])
            .args(["--etcd-key", KEY])
            .arg("--args")
            .arg(site.args())
            .arg("--socket")
            .arg(site.socket())
            .args(schema_flag(schema));
        cmd
    };

    let (site, schema) = site_with_schema(DOC);
    let broker = site.spawn_broker(etcd_broker(&site, &schema));
    assert_eq!(etcd_value(), DOC_COMPACT);
    let (revision, json) = served(&site);
    assert_eq!(json, DOC_COMPACT);

    assert_eq!(
        site.patch(r#"{"port": "x"}"#, None).map(|a| a.revision),
        Err((
            Code::InvalidArgument,
            refused(&schema, r#"/port: "x" is not of type "integer""#)
        ))
    );
    assert_eq!(etcd_value(), DOC_COMPACT);
    assert_eq!(served(&site), (revision, DOC_COMPACT.to_owned()));

    // Another tool puts a value that breaks the schema: logged, not served.
    let out = cluster.etcdctl(
        &endpoints,
        &["put", KEY, r#"{"port":"y","model":{"path":"/m"}}"#],
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "etcdctl put: {out:?}");
    // Its revision, as etcd says (other keys, such as the brokers' shared
    // follower lists, take revisions too).
    let fields = cluster.etcdctl(
        &endpoints,
        &["get", KEY, "-w", "fields"],
        Duration::from_secs(10),
    );
    let put_revision: u64 = String::from_utf8_lossy(&fields.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("\"ModRevision\" : ")?.trim().parse().ok())
        .expect("the key's ModRevision");
    let line = broker.log_line("not a valid args document");
    assert!(
        line.contains(&format!(
            "error=it does not satisfy the schema {}: /port: \"y\" is not of type \"integer\"",
            schema.display()
        )),
        "{line}"
    );
    assert_eq!(served(&site), (revision, DOC_COMPACT.to_owned()));

    // A broker starting on that value does not start.
    let (other, _) = site_with_schema(DOC);
    let (code, out, err) = run(&mut etcd_broker(&other, &schema));
    let expected = format!(
        "broker: error: the value of {KEY} in etcd (revision {}) is not a valid args document: it does not satisfy the schema {}: /port: \"y\" is not of type \"integer\"",
        put_revision,
        schema.display()
    );
    // Before it: the log line that etcd's key, not the args file, was read.
    assert_eq!(
        (code, out.as_str(), err.lines().last()),
        (1, "", Some(expected.as_str())),
        "{err}"
    );
}
