//! One member of a 3-member etcd cluster down is the case a cluster of three
//! exists for: the broker, given all three endpoints, must keep answering
//! every write and history request. etcd-client's balancer keeps picking the
//! dead member (its connection is refused); the broker sends such a request
//! again, since it never reached etcd.
mod common;

use common::etcd::Cluster;
use common::{call, Site};
use std::time::{Duration, Instant};

#[test]
fn with_one_member_down_every_write_and_history_request_succeeds() {
    let mut cluster = Cluster::start(3);
    let site = Site::new(r#"{"n": 0}"#);
    let state = site.path("state");
    let endpoints = cluster.endpoints_csv();
    let mut broker = site.start_broker_with(&[
        "--etcd-endpoints",
        &endpoints,
        "--etcd-key",
        "/argsbroker/member-down",
        "--state-dir",
        state.to_str().expect("a UTF-8 temp path"),
    ]);

    cluster.kill(0);
    // The two left elect a leader if member 0 was it: wait until they take a
    // write, so that what follows tests the dead endpoint, not an election.
    let rest = cluster.endpoints()[1..].to_vec();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster
        .etcdctl(&rest, &["put", "/elected", "yes"], Duration::from_secs(5))
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "no leader: {}", cluster.logs());
        std::thread::sleep(Duration::from_millis(100));
    }

    for n in 1..=30 {
        match site.patch(&format!(r#"{{"n": {n}}}"#), None) {
            Ok(args) => assert_eq!(
                args.json_str().ok(),
                Some(format!(r#"{{"n":{n}}}"#).as_str())
            ),
            Err((code, message)) => panic!(
                "patch {n} with one member down: {code:?} {message}\n{}",
                broker.log()
            ),
        }
        let listed = call(&site.socket(), async |mut c| {
            c.list_revisions(argsbroker::pb::ListRevisionsRequest {})
                .await
        });
        match listed {
            Ok(list) => assert_eq!(
                list.revisions.last().map(|r| r.size_bytes),
                Some(format!(r#"{{"n":{n}}}"#).len() as u64)
            ),
            Err((code, message)) => panic!(
                "history after patch {n} with one member down: {code:?} {message}\n{}",
                broker.log()
            ),
        }
    }
    assert!(broker.stop().success(), "{}", broker.log());
}
