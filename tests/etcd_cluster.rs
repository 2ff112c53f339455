//! The etcd test harness itself (tests/common/etcd.rs), against real etcd:
//! a 3-member cluster on loopback ports keeps taking writes with one member
//! killed (kill -9), refuses them quickly without a quorum, recovers when
//! the members come back, and leaves no process behind.
mod common;

use common::etcd::Cluster;
use std::time::{Duration, Instant};

const KEY: &str = "/argsbroker/harness";

fn put(cluster: &Cluster, endpoints: &[String], value: &str) -> std::process::Output {
    cluster.etcdctl(endpoints, &["put", KEY, value], Duration::from_secs(10))
}

/// Puts `value` through `endpoints`, retrying while a new leader is elected,
/// for at most `limit`.
fn put_within(cluster: &Cluster, endpoints: &[String], value: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let out = put(cluster, endpoints, value);
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "put {value} failed for {limit:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn get(cluster: &Cluster, endpoints: &[String]) -> String {
    let out = cluster.etcdctl(
        endpoints,
        &["get", KEY, "--print-value-only"],
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "get failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

#[test]
fn three_members_survive_one_kill_refuse_writes_without_quorum_and_recover() {
    let mut cluster = Cluster::start(3);
    let all = cluster.endpoints();
    let [e0, e1, e2] = [0, 1, 2].map(|i| vec![all[i].clone()]);

    // One cluster: a put through member 0 is read (linearizably) through member 2.
    put_within(&cluster, &e0, "one", Duration::from_secs(5));
    assert_eq!(get(&cluster, &e2), "one");

    // kill -9 one member: the other two are a quorum and keep taking writes
    // (after electing a leader if it was the leader).
    cluster.kill(0);
    put_within(&cluster, &all, "two", Duration::from_secs(5));
    assert_eq!(get(&cluster, &e1), "two");

    // kill -9 a second: no quorum, and a write fails within a few seconds.
    cluster.kill(1);
    let started = Instant::now();
    let out = put(&cluster, &e2, "three");
    let took = started.elapsed();
    assert!(
        !out.status.success(),
        "a put without a quorum succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        took < Duration::from_secs(5),
        "the refused put took {took:?}"
    );
    assert!(!common::etcd::healthy(cluster.members[2].health_addr()));

    // Both back on their ports and data: healthy again, writes succeed, and
    // the restarted members hold what was written while they were down.
    cluster.restart(0);
    cluster.restart(1);
    put_within(&cluster, &e1, "four", Duration::from_secs(5));
    assert_eq!(get(&cluster, &e0), "four");

    // Dropping the cluster kills every member by its pid.
    let pids: Vec<i32> = cluster.members.iter().filter_map(|m| m.pid()).collect();
    assert_eq!(pids.len(), 3);
    let dir = cluster.dir().to_path_buf();
    drop(cluster);
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let dir = dir.to_string_lossy();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(dir.as_ref()),
            "etcd member {pid} outlived its cluster"
        );
    }
    assert!(!dir.exists(), "the cluster's directory outlived it");
}
