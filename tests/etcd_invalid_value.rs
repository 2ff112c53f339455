//! A value put into etcd behind the brokers' backs that is not a valid args
//! document (`etcdctl put` of broken JSON) is never served, and does not
//! block writes: the next write replaces it, computed from the last valid
//! document.
mod common;

use common::etcd::Cluster;
use common::Site;
use std::time::Duration;

const KEY: &str = "/argsbroker/invalid-value";

#[test]
fn a_broken_value_in_etcd_is_not_served_and_the_next_write_replaces_it() {
    let cluster = Cluster::start(1);
    let site = Site::new(r#"{"a": 1}"#);
    let state = site.path("state");
    let endpoints = cluster.endpoints_csv();
    let mut broker = site.start_broker_with(&[
        "--etcd-endpoints",
        &endpoints,
        "--etcd-key",
        KEY,
        "--state-dir",
        state.to_str().expect("a UTF-8 temp path"),
    ]);
    let valid = site.current().revision;

    let put = cluster.etcdctl(
        &cluster.endpoints(),
        &["put", KEY, r#"{"broken": "#],
        Duration::from_secs(10),
    );
    assert!(put.status.success(), "{put:?}");
    let line = broker.log_line("not a valid args document");
    assert!(line.contains("still serving the last valid one"), "{line}");
    assert_eq!(site.current().revision, valid);
    assert_eq!(site.current().json_str().ok(), Some(r#"{"a":1}"#));

    // A patch goes over the broken value, from the last valid document.
    let patched = match site.patch(r#"{"b": 2}"#, None) {
        Ok(args) => args,
        Err((code, message)) => panic!("patch over a broken value: {code:?} {message}"),
    };
    assert_eq!(patched.json_str().ok(), Some(r#"{"a":1,"b":2}"#));
    assert!(
        patched.revision > valid + 1,
        "{} after {valid}",
        patched.revision
    );
    let got = cluster.etcdctl(
        &cluster.endpoints(),
        &["get", KEY, "--print-value-only"],
        Duration::from_secs(10),
    );
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim_end(),
        r#"{"a":1,"b":2}"#
    );

    // So does a set.
    let logged = broker.log().matches("not a valid args document").count();
    let put = cluster.etcdctl(
        &cluster.endpoints(),
        &["put", KEY, "[1, 2]"],
        Duration::from_secs(10),
    );
    assert!(put.status.success(), "{put:?}");
    common::eventually("the second broken value to be logged", || {
        (broker.log().matches("not a valid args document").count() > logged).then_some(())
    });
    match site.set(r#"{"c": 3}"#, None) {
        Ok(args) => assert_eq!(args.json_str().ok(), Some(r#"{"c":3}"#)),
        Err((code, message)) => panic!("set over a broken value: {code:?} {message}"),
    }
    assert!(broker.stop().success(), "{}", broker.log());
}
