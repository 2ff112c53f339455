//! Only the right processes get in: the socket's mode, group and directory,
//! one broker per socket path, and who may read and write, with clients
//! that really run as another user (uid 65534). These tests must run as
//! root (CI does); as anyone else they fail saying so.
mod common;

use argsbroker::pb::{self, args_broker_client::ArgsBrokerClient};
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use tonic::Code;

/// A site whose socket other users can reach: the directory 0755 and the socket 0666.
fn open_site(args: &str, extra: &[&str]) -> (Site, Proc) {
    require_root("open_site");
    let site = Site::new(args);
    open_dir(site.dir.path());
    let mut flags = vec!["--socket-mode", "0666"];
    flags.extend_from_slice(extra);
    let broker = site.start_broker_with(&flags);
    (site, broker)
}

type Client = ArgsBrokerClient<tonic::transport::Channel>;

/// Runs `f` with an args client connected as `uid` (primary group `gid`,
/// supplementary `groups`), on one runtime (a channel lives in the runtime that made it).
fn as_user<T, F: std::future::Future<Output = T>>(
    site: &Site,
    (uid, gid, groups): (u32, u32, &[u32]),
    f: impl FnOnce(Client) -> F,
) -> T {
    let stream = connect_as(&site.socket(), uid, gid, groups).expect("connect as another user");
    grpc(|| async { f(ArgsBrokerClient::new(channel_over(stream).await)).await })
}

fn patch_as(
    site: &Site,
    uid: u32,
    gid: u32,
    groups: &[u32],
    merge_patch: &str,
) -> Result<pb::Args, tonic::Status> {
    as_user(site, (uid, gid, groups), |mut client| async move {
        client
            .patch_args(pb::PatchArgsRequest {
                merge_patch: merge_patch.into(),
                expected_revision: None,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    })
}

const WRITE_RULE: &str =
    "only root, the broker's own uid (0), --writer-uid and --writer-gid may change the args";
const READ_RULE: &str =
    "only root, the broker's own uid (0), the writers, --reader-uid and --reader-gid may read";

/// By default the socket is 0600: another user cannot even connect.
#[test]
fn socket_is_owner_only_by_default() {
    require_root("socket_is_owner_only_by_default");
    let site = Site::new(r#"{"a": 1}"#);
    open_dir(site.dir.path());
    let _broker = site.start_broker();
    let meta = std::fs::symlink_metadata(site.socket()).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    let err = connect_as(&site.socket(), NOBODY, NOBODY, &[]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
}

/// --socket-mode 0660 --socket-group G: members of G connect and read, others cannot connect.
#[test]
fn socket_mode_and_group_let_a_group_in() {
    require_root("socket_mode_and_group_let_a_group_in");
    let site = Site::new(r#"{"a": 1}"#);
    open_dir(site.dir.path());
    let _broker = site.start_broker_with(&["--socket-mode", "0660", "--socket-group", "4242"]);
    let meta = std::fs::symlink_metadata(site.socket()).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o660, 4242));

    let args = as_user(&site, (NOBODY, NOBODY, &[4242]), |mut member| async move {
        member
            .get_args(pb::GetArgsRequest::default())
            .await
            .unwrap()
            .into_inner()
    });
    assert_eq!(args.json, r#"{"a":1}"#);
    let err = connect_as(&site.socket(), NOBODY, NOBODY, &[]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
}

/// A directory other users can write without the sticky bit is refused; /tmp-like (1777) is fine; --allow-unsafe-dir warns.
#[test]
fn unsafe_socket_directory_is_refused() {
    let site = Site::new("{}");
    let dir = site.path("shared");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = dir.join("b.sock");
    let mut cmd = Command::new(BROKER);
    cmd.arg("--args")
        .arg(site.args())
        .arg("--socket")
        .arg(&socket);
    let (code, _, stderr) = run(&mut cmd);
    assert_eq!(
        (code, stderr.as_str()),
        (1, format!("broker: error: the socket directory {} (mode 0777, no sticky bit) can be written by every user, who could replace the socket with their own; use a directory only the broker's user can write (or --allow-unsafe-dir)\n", dir.display()).as_str())
    );
    assert!(
        !exists(&socket) && !exists(&dir.join("b.sock.lock")),
        "nothing is created there"
    );

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770)).unwrap();
    let (code, _, stderr) = run(&mut cmd);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("(mode 0770, no sticky bit) can be written by its group"),
        "{stderr}"
    );

    cmd.arg("--allow-unsafe-dir");
    let mut broker = Proc::spawn(cmd, site.fresh_log("broker"));
    eventually("the broker to serve", || {
        assert!(broker.is_running(), "{}", broker.log());
        exists(&socket).then_some(())
    });
    assert!(
        broker.log().contains("UNSAFE: the socket directory"),
        "{}",
        broker.log()
    );
    assert_eq!(broker.stop().code(), Some(0));

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mut cmd = Command::new(BROKER);
    cmd.arg("--args")
        .arg(site.args())
        .arg("--socket")
        .arg(&socket);
    let mut broker = Proc::spawn(cmd, site.fresh_log("broker"));
    eventually("the broker to serve in a sticky directory", || {
        assert!(broker.is_running(), "{}", broker.log());
        exists(&socket).then_some(())
    });
    assert!(!broker.log().contains("UNSAFE"), "{}", broker.log());
    broker.stop();
}

/// A socket directory owned by another (non-root) user is refused: its owner could replace the socket.
#[test]
fn socket_directory_owned_by_another_user_is_refused() {
    require_root("socket_directory_owned_by_another_user_is_refused");
    let site = Site::new("{}");
    let dir = site.path("theirs");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let mut cmd = Command::new(BROKER);
    cmd.arg("--args")
        .arg(site.args())
        .arg("--socket")
        .arg(dir.join("b.sock"));
    let (code, _, stderr) = run(&mut cmd);
    assert_eq!(
        (code, stderr.as_str()),
        (1, format!("broker: error: the socket directory {} belongs to uid {NOBODY}, who could replace the socket with their own; use a directory only the broker's user can write (or --allow-unsafe-dir)\n", dir.display()).as_str())
    );
}

/// Four brokers started at once on one path: exactly one serves, the others
/// exit 1 naming the path, and the state is written by the winner only.
#[test]
fn brokers_started_at_once_exactly_one_wins() {
    for round in 0..5 {
        let site = Site::new(r#"{"a": 1}"#);
        let mut brokers: Vec<Proc> = (0..4)
            .map(|_| Proc::spawn(site.broker_cmd(), site.fresh_log("broker")))
            .collect();
        let losers = eventually("three brokers to give up", || {
            let exited: Vec<usize> = (0..4).filter(|i| !brokers[*i].is_running()).collect();
            (exited.len() >= 3).then_some(exited)
        });
        assert_eq!(losers.len(), 3, "round {round}: every broker exited");
        for i in &losers {
            let status = brokers[*i].wait();
            assert_eq!(status.code(), Some(1), "round {round}");
            assert_eq!(
                brokers[*i].log(),
                format!(
                    "broker: error: another broker is serving {}\n",
                    site.socket().display()
                )
            );
        }
        let winner = (0..4).find(|i| !losers.contains(i)).unwrap();
        let args = eventually("the winner to answer", || {
            grpc(|| async { argsbroker::client::connect(site.socket()).await.ok() })?;
            Some(get_args(&site.socket()))
        });
        assert_eq!((args.revision, args.json_str().unwrap()), (1, r#"{"a":1}"#));
        assert!(brokers[winner].is_running());
    }
}

/// The lock file is held while serving and removed, with the socket, on a
/// clean stop; after kill -9 both are left and the next broker takes over.
#[test]
fn lock_file_beside_the_socket() {
    let site = Site::new(r#"{"a": 1}"#);
    let lock = site.path("b.sock.lock");
    let mut broker = site.start_broker();
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap(),
        format!("{}\n", broker.pid())
    );
    assert_eq!(broker.stop().code(), Some(0));
    assert!(
        !exists(&site.socket()) && !exists(&lock),
        "a clean stop leaves nothing"
    );

    let mut broker = site.start_broker();
    broker.signal(libc::SIGKILL);
    broker.wait();
    assert!(exists(&site.socket()) && exists(&lock));
    let next = site.start_broker();
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap(),
        format!("{}\n", next.pid())
    );
    assert_eq!(get_args(&site.socket()).json, r#"{"a":1}"#);
}

/// Another uid may read but not write: PERMISSION_DENIED naming the uid,
/// nothing changes, and the broker logs the refusal at warn.
#[test]
fn other_users_may_read_but_not_write() {
    let (site, broker) = open_site(r#"{"a": 1}"#, &[]);
    let before = get_args(&site.socket());
    let (read, set, patch, rollback) =
        as_user(&site, (NOBODY, NOBODY, &[]), |mut client| async move {
            let read = client
                .get_args(pb::GetArgsRequest::default())
                .await
                .map(|r| r.into_inner().json);
            let set = client
                .set_args(pb::SetArgsRequest {
                    json: "{}".into(),
                    expected_revision: None,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            let patch = client
                .patch_args(pb::PatchArgsRequest {
                    merge_patch: r#"{"a": 2}"#.into(),
                    expected_revision: None,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            let rollback = client
                .rollback(pb::RollbackRequest {
                    to_revision: 1,
                    expected_revision: None,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            (read, set, patch, rollback)
        });
    assert_eq!(read.unwrap(), r#"{"a":1}"#);
    for (status, method) in [
        (set, "SetArgs"),
        (patch, "PatchArgs"),
        (rollback, "Rollback"),
    ] {
        assert_eq!(
            (status.code(), status.message()),
            (
                Code::PermissionDenied,
                format!(
                    "uid {NOBODY} may not call argsbroker.v1.ArgsBroker/{method}: {WRITE_RULE}"
                )
                .as_str()
            )
        );
    }
    let after = get_args(&site.socket());
    assert_eq!((after.revision, after.json), (before.revision, before.json));
    let warnings = broker
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("refused: uid 65534 may not call"))
        .count();
    assert_eq!(warnings, 3, "{}", broker.log());
}

/// The command-line client run as another user shows the refusal in one line, exit 1.
#[test]
fn command_line_client_shows_the_refusal() {
    use std::os::unix::process::CommandExt;
    let (site, _broker) = open_site(r#"{"a": 1}"#, &[]);
    let mut cmd = Command::new(site.broker_copy());
    cmd.args(["patch", "--socket"])
        .arg(site.socket())
        .arg(r#"{"a": 2}"#)
        .uid(NOBODY)
        .gid(NOBODY);
    assert_eq!(
        run(&mut cmd),
        (1, String::new(), format!("broker: error: uid {NOBODY} may not call argsbroker.v1.ArgsBroker/PatchArgs: {WRITE_RULE}\n"))
    );
    assert_eq!(get_args(&site.socket()).json, r#"{"a":1}"#);
}

/// --writer-uid lets a user write; --writer-gid lets a group in, by primary or supplementary membership.
#[test]
fn writer_uid_and_gid_open_writes() {
    let (site, _broker) = open_site(
        r#"{"n": 0}"#,
        &["--writer-uid", "65534", "--writer-gid", "4242"],
    );
    assert_eq!(
        patch_as(&site, NOBODY, NOBODY, &[], r#"{"n": 1}"#)
            .unwrap()
            .revision,
        2
    );
    assert_eq!(
        patch_as(&site, 65533, 4242, &[], r#"{"n": 2}"#)
            .unwrap()
            .revision,
        3
    );
    assert_eq!(
        patch_as(&site, 65533, 65533, &[7, 4242], r#"{"n": 3}"#)
            .unwrap()
            .revision,
        4
    );
    let status = patch_as(&site, 65533, 65533, &[7], r#"{"n": 4}"#).unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::PermissionDenied,
            format!("uid 65533 may not call argsbroker.v1.ArgsBroker/PatchArgs: {WRITE_RULE}")
                .as_str()
        )
    );
    let revisions = grpc(|| async {
        argsbroker::client::connect(site.socket())
            .await
            .unwrap()
            .list_revisions(pb::ListRevisionsRequest {})
            .await
            .unwrap()
            .into_inner()
            .revisions
    });
    let writers: Vec<Option<u32>> = revisions.iter().map(|r| r.writer_uid).collect();
    assert_eq!(writers, [None, Some(NOBODY), Some(65533), Some(65533)]);
}

/// --reader-uid closes reads to everyone else: the args service, health and reflection alike.
#[test]
fn reader_lists_close_every_read() {
    let (site, _broker) = open_site(r#"{"a": 1}"#, &["--reader-uid", "65533"]);
    let denied = |method: &str| {
        (
            Code::PermissionDenied,
            format!("uid {NOBODY} may not call {method}: {READ_RULE}"),
        )
    };
    let status = |r: Result<(), tonic::Status>| {
        let s = r.unwrap_err();
        (s.code(), s.message().to_owned())
    };

    let stream = connect_as(&site.socket(), NOBODY, NOBODY, &[]).unwrap();
    let (get, watch, list, check, reflect) = grpc(|| async {
        let channel = channel_over(stream).await;
        let mut args = ArgsBrokerClient::new(channel.clone());
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let mut reflection =
            tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
                channel,
            );
        let get = args.get_args(pb::GetArgsRequest::default()).await.map(drop);
        let watch = args
            .watch_args(pb::WatchArgsRequest::default())
            .await
            .map(drop);
        let list = args
            .list_revisions(pb::ListRevisionsRequest {})
            .await
            .map(drop);
        let check = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(drop);
        let request = tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                    String::new(),
                ),
            ),
        };
        let reflect = reflection
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .map(drop);
        (get, watch, list, check, reflect)
    });
    assert_eq!(status(get), denied("argsbroker.v1.ArgsBroker/GetArgs"));
    assert_eq!(status(watch), denied("argsbroker.v1.ArgsBroker/WatchArgs"));
    assert_eq!(
        status(list),
        denied("argsbroker.v1.ArgsBroker/ListRevisions")
    );
    assert_eq!(status(check), denied("grpc.health.v1.Health/Check"));
    assert_eq!(
        status(reflect),
        denied("grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    );

    let json = as_user(&site, (65533, 65533, &[]), |mut reader| async move {
        reader
            .get_args(pb::GetArgsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .json
    });
    assert_eq!(json, r#"{"a":1}"#);
    assert_eq!(
        get_args(&site.socket()).json,
        r#"{"a":1}"#,
        "root still reads"
    );
}

/// Each connection's peer pid, uid and groups are logged at debug.
#[test]
fn peer_credentials_are_logged_at_debug() {
    require_root("peer_credentials_are_logged_at_debug");
    let site = Site::new(r#"{"a": 1}"#);
    open_dir(site.dir.path());
    let mut cmd = site.broker_cmd();
    cmd.args(["--socket-mode", "0666"]).env("RUST_LOG", "debug");
    let broker = site.spawn_broker(cmd);
    as_user(&site, (NOBODY, NOBODY, &[4242]), |mut client| async move {
        client
            .get_args(pb::GetArgsRequest::default())
            .await
            .unwrap()
    });
    let line = broker.log_line("uid=65534");
    assert!(
        line.contains("DEBUG")
            && line.contains("gid=65534")
            && line.contains("groups=[4242]")
            && line.contains("pid=Some("),
        "{line}"
    );
}
