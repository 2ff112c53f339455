//! Live updates with the real binaries: compare-and-set writes, durability
//! across kill -9, history and rollback, reloads, propagation to workers,
//! and the command-line client.
mod common;

use argsbroker::pb;
use common::*;
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;
use tonic::Code;

type Client = pb::args_broker_client::ArgsBrokerClient<tonic::transport::Channel>;

async fn client(site: &Site) -> Client {
    argsbroker::client::connect(site.socket())
        .await
        .expect("connect")
}

fn cli(site: &Site, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(BROKER);
    cmd.arg(args[0])
        .arg("--socket")
        .arg(site.socket())
        .args(&args[1..]);
    run(&mut cmd)
}

/// Asserts a refused write: its code and message, and the document unchanged.
/// (The catalogue of refused input is bad_input.rs.)
fn assert_refused(site: &Site, write: impl FnOnce() -> Outcome, code: Code, message: &str) {
    let before = site.current();
    assert_eq!(write(), Err((code, message.to_owned())));
    let after = site.current();
    assert_eq!(
        (after.revision, after.json),
        (before.revision, before.json),
        "a refused write changed the args"
    );
}

/// SetArgs replaces, PatchArgs merges; numbers, key order and Unicode survive; the file follows.
#[test]
fn set_and_patch_keep_the_document_exact() {
    let site = Site::new(r#"{"z": 1, "big": 123456789012345678901234567890, "名": "✓"}"#);
    let _broker = site.start_broker();
    let reply = site
        .patch(
            r#"{"z": null, "a": 0.100000000000000000000000000001, "名": "値"}"#,
            None,
        )
        .unwrap();
    assert_eq!(reply.revision, 2);
    assert_eq!(
        reply.json,
        r#"{"big":123456789012345678901234567890,"名":"値","a":0.100000000000000000000000000001}"#
    );
    assert_eq!(site.current().json, reply.json);
    // Acknowledged means on disk.
    let on_disk =
        argsbroker::document::Document::parse(&std::fs::read(site.args()).unwrap()).unwrap();
    assert_eq!(on_disk.json_str(), reply.json);
    assert_eq!(on_disk.sha256(), reply.sha256);

    let reply = site.set(r#"{"only": [1, 2]}"#, Some(2)).unwrap();
    assert_eq!(
        (reply.revision, reply.json_str().unwrap()),
        (3, r#"{"only":[1,2]}"#)
    );
}

/// A write whose result equals the current document makes no new revision.
#[test]
fn identical_writes_make_no_revision() {
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    assert_eq!(site.set("{ \"a\" : 1 }", None).unwrap().revision, 1);
    assert_eq!(site.patch(r#"{"a": 1}"#, None).unwrap().revision, 1);
    assert_eq!(
        site.patch(r#"{"missing": null}"#, None).unwrap().revision,
        1
    );
}

/// Of two writers racing with the same expected revision, exactly one wins;
/// patches without a revision are never lost.
#[test]
fn concurrent_writers_lose_nothing() {
    let site = Site::new(r#"{"a": 0}"#);
    let _broker = site.start_broker();
    for round in 1..=10u64 {
        let base = site.current().revision;
        let results = grpc(|| async {
            let (mut one, mut two) = (client(&site).await, client(&site).await);
            let a = one.patch_args(pb::PatchArgsRequest {
                merge_patch: r#"{"w":"one"}"#.into(),
                expected_revision: Some(base),
                ..Default::default()
            });
            let b = two.patch_args(pb::PatchArgsRequest {
                merge_patch: r#"{"w":"two"}"#.into(),
                expected_revision: Some(base),
                ..Default::default()
            });
            let (a, b) = tokio::join!(a, b);
            [a.is_ok(), b.is_ok()]
        });
        assert_eq!(
            results.iter().filter(|ok| **ok).count(),
            1,
            "round {round}: {results:?}"
        );
        // Make the next round's two writes differ from the current content.
        site.patch(&format!(r#"{{"w": null, "round": {round}}}"#), None)
            .unwrap();
        assert_eq!(site.current().revision, base + 2);
    }

    let site = &site;
    grpc(|| async {
        let writers = (0..20).map(|i| async move {
            let request = pb::PatchArgsRequest {
                merge_patch: format!(r#"{{"k{i}": {i}}}"#),
                expected_revision: None,
                ..Default::default()
            };
            client(site).await.patch_args(request).await.unwrap();
        });
        futures_util::future::join_all(writers).await;
    });
    let doc: serde_json::Value = serde_json::from_slice(&site.current().json).unwrap();
    let keys = (0..20)
        .filter(|i| doc.get(format!("k{i}")).is_some())
        .count();
    assert_eq!(keys, 20, "every concurrent patch is in the result");
}

/// --read-only serves the file and refuses writes with FAILED_PRECONDITION.
#[test]
fn read_only_refuses_writes() {
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker_with(&["--read-only"]);
    let message = "the broker is read-only (--read-only): change the args file and send SIGHUP";
    assert_refused(
        &site,
        || site.patch(r#"{"a": 2}"#, None),
        Code::FailedPrecondition,
        message,
    );
    assert_refused(
        &site,
        || site.set(r#"{"a": 2}"#, None),
        Code::FailedPrecondition,
        message,
    );
    assert_eq!(
        std::fs::read_to_string(site.args()).unwrap(),
        r#"{"a": 1}"#,
        "the file is untouched"
    );
}

/// GetArgs with if_none_match = the current revision says "not modified" without the document.
#[test]
fn conditional_get_says_not_modified() {
    let site = Site::new(r#"{"a": 1}"#);
    let _broker = site.start_broker();
    let (fresh, stale) = grpc(|| async {
        let mut c = client(&site).await;
        let fresh = c
            .get_args(pb::GetArgsRequest {
                pointer: String::new(),
                if_none_match: Some(1),
            })
            .await
            .unwrap();
        let stale = c
            .get_args(pb::GetArgsRequest {
                pointer: String::new(),
                if_none_match: Some(0),
            })
            .await
            .unwrap();
        (fresh.into_inner(), stale.into_inner())
    });
    assert!(fresh.not_modified);
    assert_eq!(
        (
            fresh.revision,
            fresh.json_str().unwrap(),
            fresh.sha256.len()
        ),
        (1, "", 64)
    );
    assert!(!stale.not_modified);
    assert_eq!(stale.json, r#"{"a":1}"#);
}

/// ListRevisions shows who wrote what; Rollback makes a new revision with old content.
#[test]
fn history_and_rollback() {
    let site = Site::new(r#"{"v": 1}"#);
    let _broker = site.start_broker_with(&["--history", "3"]);
    for v in 2..=4 {
        site.patch(&format!(r#"{{"v": {v}}}"#), None).unwrap();
    }
    let revisions = grpc(|| async {
        client(&site)
            .await
            .list_revisions(pb::ListRevisionsRequest {})
            .await
            .unwrap()
            .into_inner()
            .revisions
    });
    let summary: Vec<(u64, &str, u64)> = revisions
        .iter()
        .map(|r| (r.revision, r.source.as_str(), r.size_bytes))
        .collect();
    assert_eq!(summary, [(2, "patch", 7), (3, "patch", 7), (4, "patch", 7)]);
    let me = unsafe { libc::getuid() };
    assert!(revisions
        .iter()
        .all(|r| r.writer_uid == Some(me) && r.sha256.len() == 64 && r.unix_millis > 0));

    let reply = grpc(|| async {
        client(&site)
            .await
            .rollback(pb::RollbackRequest {
                to_revision: 2,
                expected_revision: None,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    });
    assert_eq!(
        (reply.revision, reply.json_str().unwrap()),
        (5, r#"{"v":2}"#)
    );
    assert_eq!(reply.sha256, revisions[0].sha256);

    let status = grpc(|| async {
        client(&site)
            .await
            .rollback(pb::RollbackRequest {
                to_revision: 1,
                expected_revision: None,
                ..Default::default()
            })
            .await
            .unwrap_err()
    });
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::NotFound,
            "revision 1 is not retained (retained: 3 to 5)"
        )
    );
}

/// History survives a restart, and the file's source is recorded.
#[test]
fn history_survives_a_restart() {
    let site = Site::new(r#"{"v": 1}"#);
    let mut broker = site.start_broker();
    site.patch(r#"{"v": 2}"#, None).unwrap();
    broker.stop();
    std::fs::write(site.args(), r#"{"v": 3}"#).unwrap();
    let _broker = site.start_broker();
    let (code, out, _) = cli(&site, &["history"]);
    assert_eq!(code, 0);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let summary: Vec<(&str, &str, &str)> = rows.iter().map(|r| (r[0], r[4], r[5])).collect();
    let me = unsafe { libc::getuid() }.to_string();
    assert_eq!(
        summary,
        [
            ("1", "-", "file"),
            ("2", me.as_str(), "patch"),
            ("3", "-", "file")
        ]
    );
}

/// WatchArgs{start_revision} replays retained revisions after it; a compacted one gets the current snapshot.
#[test]
fn watch_replays_from_a_revision() {
    let site = Site::new(r#"{"v": 1}"#);
    let _broker = site.start_broker_with(&["--history", "3"]);
    for v in 2..=5 {
        site.patch(&format!(r#"{{"v": {v}}}"#), None).unwrap();
    }
    let first_messages = |start: Option<u64>, n: usize| {
        grpc(|| async {
            let mut stream = client(&site)
                .await
                .watch_args(pb::WatchArgsRequest {
                    start_revision: start,
                })
                .await
                .unwrap()
                .into_inner();
            let mut got = Vec::new();
            for _ in 0..n {
                got.push(stream.message().await.unwrap().unwrap().revision);
            }
            got
        })
    };
    assert_eq!(first_messages(Some(3), 2), [4, 5]);
    assert_eq!(first_messages(Some(2), 3), [3, 4, 5]);
    assert_eq!(
        first_messages(Some(1), 1),
        [5],
        "revision 2 is compacted: start from the current snapshot"
    );
    assert_eq!(first_messages(None, 1), [5]);
}

/// SIGHUP reloads the file; an invalid file keeps the old revision and logs line and column.
#[test]
fn sighup_reloads_and_an_invalid_file_keeps_the_old_revision() {
    let site = Site::new(r#"{"v": 1}"#);
    let broker = site.start_broker();
    let worker = site.start_worker();
    let port = worker.http_port();

    std::fs::write(site.args(), "{\"v\": 2}\n").unwrap();
    broker.signal(libc::SIGHUP);
    let answer = eventually("the worker to serve the reloaded file", || {
        Some(get(port, "/args")).filter(|a| a.header("x-args-revision") == Some("2"))
    });
    assert_eq!(answer.body, r#"{"args":{"v":2}}"#);

    std::fs::write(site.args(), "{\n  \"v\": 3,\n}\n").unwrap();
    broker.signal(libc::SIGHUP);
    let line = broker.log_line("not reloaded");
    assert!(
        line.ends_with(&format!(
            "not reloaded, still serving revision 2: the args file {}: invalid JSON at line 3 column 1: trailing comma",
            site.args().display()
        )),
        "{line}"
    );
    assert_eq!(site.current().revision, 2);
    assert!(broker.log().lines().all(|l| !l.contains("panicked")));
}

/// --watch follows the file: in-place writes and renames over it both become revisions.
#[test]
fn watch_flag_follows_the_file_on_disk() {
    let site = Site::new(r#"{"v": 1}"#);
    let mut cmd = site.broker_cmd();
    cmd.arg("--watch").env("RUST_LOG", "info,broker=debug");
    let broker = site.spawn_broker(cmd);
    std::fs::write(site.args(), r#"{"v": 2}"#).unwrap();
    eventually("an in-place write to be published", || {
        Some(site.current()).filter(|a| a.json == r#"{"v":2}"#)
    });
    let tmp = site.path("args.json.new");
    std::fs::write(&tmp, r#"{"v": 3}"#).unwrap();
    std::fs::rename(&tmp, site.args()).unwrap();
    let args = eventually("a rename over the file to be published", || {
        Some(site.current()).filter(|a| a.json == r#"{"v":3}"#)
    });
    assert_eq!(args.revision, 3);
    // The broker's own writes are not taken as a new change: the watcher
    // sees the file change and finds it is what the broker wrote.
    let unchanged = || broker.log().matches("the args file is unchanged").count();
    let seen = unchanged();
    let reply = site.patch(r#"{"v": 4}"#, None).unwrap();
    eventually("the watcher to look at the broker's own write", || {
        (unchanged() > seen).then_some(())
    });
    assert_eq!(site.current().revision, reply.revision);
}

/// Three workers (two sharing a port) all serve a patched value; a burst of
/// 1000 patches ends with every worker on the last revision.
#[test]
fn changes_reach_every_worker() {
    let site = Site::new(r#"{"n": 0}"#);
    let _broker = site.start_broker();
    let first = site.spawn_worker(site.worker_cmd(ANY_PORT, true));
    let shared = first.http_port();
    let workers = [first, site.start_worker_on(shared), site.start_worker()];
    let own = workers[2].http_port();
    let wait_for = |revision: u64, body: &str| {
        for port in [shared, shared, shared, own] {
            let answer = eventually("a worker to catch up", || {
                Some(get(port, "/args"))
                    .filter(|a| a.header("x-args-revision") == Some(&revision.to_string()))
            });
            assert_eq!(answer.body, body);
        }
    };
    let reply = site.patch(r#"{"n": 1, "model": "b"}"#, None).unwrap();
    wait_for(reply.revision, r#"{"args":{"n":1,"model":"b"}}"#);

    let last = grpc(|| async {
        let mut c = client(&site).await;
        let mut last = 0;
        for n in 2..1002 {
            let request = pb::PatchArgsRequest {
                merge_patch: format!(r#"{{"n": {n}}}"#),
                expected_revision: None,
                ..Default::default()
            };
            last = c.patch_args(request).await.unwrap().into_inner().revision;
        }
        last
    });
    assert_eq!(last, reply.revision + 1000);
    wait_for(last, r#"{"args":{"n":1001,"model":"b"}}"#);
}

/// kill -9 at a random moment of a write storm, 20 times: the file is always a
/// complete document that was acknowledged or in flight; the restarted broker
/// serves the last acknowledged one or the one in flight (committed to the
/// journal, or not), at a revision no lower than any acknowledged one, and
/// the file holds what it serves; no revision ever names two documents.
#[test]
fn kill_9_during_a_write_storm_loses_nothing() {
    let site = Site::new(r#"{"n": 0}"#);
    let mut named: HashMap<u64, String> = HashMap::new();
    let mut max_acked = 0;
    // What a restart may serve: the last acknowledged n, or the n in flight.
    let mut may_serve = vec![0u64];
    let name = |revision: u64, json: &str, named: &mut HashMap<u64, String>| {
        let before = named.entry(revision).or_insert_with(|| json.to_owned());
        assert_eq!(before, json, "revision {revision} names two documents");
    };
    for round in 0..20u64 {
        let broker = site.start_broker();
        let served = site.current();
        assert!(
            served.revision >= max_acked,
            "round {round}: revision went back from {max_acked} to {}",
            served.revision
        );
        name(served.revision, served.json_str().unwrap(), &mut named);
        let served_now = served_n(served.json_str().unwrap());
        assert!(
            may_serve.contains(&served_now),
            "round {round}: the restarted broker serves n={served_now}, not one of {may_serve:?}"
        );
        let file = std::fs::read(site.args()).unwrap();
        let in_file = argsbroker::document::Document::parse(&file).unwrap();
        assert_eq!(
            served_n(in_file.json_str()),
            served_now,
            "round {round}: the restarted broker serves what the file holds"
        );

        let pid = broker.pid();
        let delay = Duration::from_micros(2_000 + random() % 40_000);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        let base = served_n(served.json_str().unwrap());
        let acked: Vec<(u64, u64, String)> = grpc(|| async {
            let mut acked = Vec::new();
            let Ok(mut c) = argsbroker::client::connect(site.socket()).await else {
                return acked;
            };
            for n in base + 1.. {
                let request = pb::PatchArgsRequest {
                    merge_patch: format!(r#"{{"n": {n}}}"#),
                    expected_revision: None,
                    ..Default::default()
                };
                match c.patch_args(request).await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        acked.push((n, reply.revision, reply.json_str().unwrap().to_owned()));
                    }
                    Err(_) => break,
                }
            }
            acked
        });
        killer.join().unwrap();
        drop(broker);

        for (_, revision, json) in &acked {
            name(*revision, json, &mut named);
            max_acked = max_acked.max(*revision);
        }
        let last_n = acked.last().map_or(base, |a| a.0);
        let text = std::fs::read(site.args()).unwrap();
        let on_disk = argsbroker::document::Document::parse(&text).unwrap_or_else(|e| {
            panic!(
                "round {round}: torn args file ({e}): {:?}",
                String::from_utf8_lossy(&text)
            )
        });
        let disk_n = served_n(on_disk.json_str());
        assert!(
            disk_n == last_n || disk_n == last_n + 1,
            "round {round}: file has n={disk_n}, last acknowledged {last_n}"
        );
        // The write in flight may have been committed before the kill, its
        // args file not yet renamed into place: the restart finishes it.
        may_serve = vec![last_n, last_n + 1];
    }
    assert!(max_acked > 20, "the storms wrote something ({max_acked})");
}

fn served_n(json: &str) -> u64 {
    let doc: serde_json::Value = serde_json::from_str(json).unwrap();
    doc["n"].as_u64().unwrap()
}

fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// The command-line client: get, set, patch, watch, history, rollback, and its exit codes.
#[test]
fn command_line_client() {
    let site = Site::new(r#"{"a": {"b": 1}}"#);
    let _broker = site.start_broker();
    assert_eq!(
        cli(&site, &["get"]),
        (0, "{\"a\":{\"b\":1}}\n".into(), String::new())
    );
    assert_eq!(
        cli(&site, &["get", "/a/b"]),
        (0, "1\n".into(), String::new())
    );
    let (code, out, err) = cli(&site, &["get", "/nope"]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (
            4,
            "",
            "broker: error: no value at JSON pointer \"/nope\" in revision 1\n"
        )
    );

    assert_eq!(
        cli(&site, &["patch", r#"{"c": true}"#]),
        (0, "revision 2\n".into(), String::new())
    );
    let (code, _, err) = cli(
        &site,
        &["patch", "--expected-revision", "1", r#"{"c": false}"#],
    );
    assert_eq!((code, err.as_str()), (3, "broker: error: revision conflict: expected revision 1, but the current revision is 2\n"));

    let file = site.path("new.json");
    std::fs::write(&file, r#"{"fresh": 1}"#).unwrap();
    let (code, out, _) = cli(
        &site,
        &["set", file.to_str().unwrap(), "--expected-revision", "2"],
    );
    assert_eq!((code, out.as_str()), (0, "revision 3\n"));
    let mut piped = Command::new(BROKER);
    piped
        .args(["set", "--socket"])
        .arg(site.socket())
        .arg("-")
        .stdin(std::process::Stdio::piped());
    piped.stdout(std::process::Stdio::piped());
    let mut child = piped.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), br#"{"from": "stdin"}"#).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "revision 4\n");

    let (code, out, _) = cli(&site, &["rollback", "2"]);
    assert_eq!((code, out.as_str()), (0, "revision 5\n"));
    assert_eq!(cli(&site, &["get"]).1, "{\"a\":{\"b\":1},\"c\":true}\n");
    let (code, _, err) = cli(&site, &["rollback", "99"]);
    assert_eq!(
        (code, err.as_str()),
        (
            4,
            "broker: error: revision 99 is not retained (retained: 1 to 5)\n"
        )
    );

    let (code, out, _) = cli(&site, &["history"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("REVISION  TIME (UTC)"), "{out}");
    let sources: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(sources, ["file", "patch", "set", "set", "rollback"]);

    // watch prints one line per revision until interrupted.
    let mut watch = Command::new(BROKER);
    watch
        .args(["watch", "--socket"])
        .arg(site.socket())
        .arg("--start-revision")
        .arg("3");
    let mut watcher = Proc::spawn(watch, site.path("watch.out"));
    eventually("the watch to print the replay", || {
        Some(watcher.log()).filter(|l| l.lines().count() >= 2)
    });
    assert_eq!(cli(&site, &["patch", r#"{"d": 1}"#]).0, 0);
    let printed = eventually("the watch to print the patch", || {
        Some(watcher.log()).filter(|l| l.lines().count() >= 3)
    });
    assert_eq!(
        printed,
        "4\t{\"from\":\"stdin\"}\n5\t{\"a\":{\"b\":1},\"c\":true}\n6\t{\"a\":{\"b\":1},\"c\":true,\"d\":1}\n"
    );
    watcher.signal(libc::SIGINT);
    assert_eq!(watcher.wait().code(), Some(0));

    let (code, _, err) = run(Command::new(BROKER)
        .args(["get", "--socket"])
        .arg(site.path("nobody.sock")));
    assert_eq!(code, 1);
    assert!(
        err.starts_with("broker: error: cannot connect to the broker at "),
        "{err}"
    );
}

/// A client command that cannot reach the broker says why in one line, with
/// a hint at what to check, and exits 1.
#[test]
fn client_commands_that_cannot_connect_say_why() {
    use std::os::unix::process::CommandExt;
    let site = Site::new(r#"{"a": 1}"#);
    let get_at = |socket: &std::path::Path| {
        let mut cmd = Command::new(BROKER);
        cmd.args(["get", "--socket"]).arg(socket);
        run(&mut cmd)
    };

    let missing = site.path("nobody.sock");
    assert_eq!(
        get_at(&missing),
        (
            1,
            String::new(),
            format!(
                "broker: error: cannot connect to the broker at {}: no such file (is the broker running? --socket / ARGSBROKER_SOCKET)\n",
                missing.display()
            )
        )
    );

    // A socket file nobody listens on (its broker was killed).
    let dead = site.path("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    assert_eq!(
        get_at(&dead),
        (
            1,
            String::new(),
            format!(
                "broker: error: cannot connect to the broker at {}: connection refused (is the broker running? --socket / ARGSBROKER_SOCKET)\n",
                dead.display()
            )
        )
    );

    let plain = site.args();
    assert_eq!(
        get_at(&plain),
        (
            1,
            String::new(),
            format!(
                "broker: error: {} is not a socket (--socket / ARGSBROKER_SOCKET must name the broker's socket)\n",
                plain.display()
            )
        )
    );

    // The socket is 0600: another user may not connect.
    require_root("client_commands_that_cannot_connect_say_why");
    open_dir(site.dir.path());
    let _broker = site.start_broker();
    let mut cmd = Command::new(site.broker_copy());
    cmd.args(["get", "--socket"])
        .arg(site.socket())
        .uid(NOBODY)
        .gid(NOBODY);
    assert_eq!(
        run(&mut cmd),
        (
            1,
            String::new(),
            format!(
                "broker: error: cannot connect to the broker at {}: permission denied (the broker's --socket-mode and --socket-group decide who may connect)\n",
                site.socket().display()
            )
        )
    );
}
