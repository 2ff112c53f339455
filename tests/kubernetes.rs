//! `broker --watch` where Kubernetes runs it: a ConfigMap or Secret mounted
//! by kubelet's atomic writer (reproduced here step by step), every other
//! way a file is replaced, event storms, inotify limits, and the etcd
//! password file given as a Secret and rotated without a restart.
mod common;

use common::etcd::{etcdctl_bin, Cluster};
use common::{eventually, grpc, Proc, Site, BROKER, PATIENCE};
use sha2::{Digest, Sha256};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

/// kubelet's atomic writer (pkg/volume/util/atomic_writer.go), in its
/// order: a new `..YYYY_MM_DD_HH_MM_SS.N` directory holding every file
/// (written, then chmod to the mode), a `..data_tmp` link to it renamed
/// over `..data`, a `NAME -> ..data/NAME` link for each new name, the
/// links of names that went away removed, then the old directory removed.
struct AtomicWriter {
    dir: PathBuf,
    /// The files' mode: the volume's `defaultMode` (0644 unless set).
    mode: u32,
    /// How many payloads were written: MkdirTemp's random suffix, here.
    count: u32,
}

impl AtomicWriter {
    fn new(dir: PathBuf, mode: u32) -> Self {
        std::fs::create_dir(&dir).expect("create the volume directory");
        Self {
            dir,
            mode,
            count: 0,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `payload` (name, content) as kubelet does on a sync.
    fn write(&mut self, payload: &[(&str, &str)]) {
        let data = self.path("..data");
        let old = std::fs::read_link(&data).ok();
        let old_names: Vec<String> = match &old {
            Some(old) => std::fs::read_dir(self.dir.join(old))
                .expect("read the old data directory")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect(),
            None => Vec::new(),
        };
        self.count += 1;
        let ts_name = format!("{}{:010}", timestamp_prefix(), self.count);
        let ts = self.path(&ts_name);
        std::fs::create_dir(&ts).expect("mkdir the timestamped directory");
        std::fs::set_permissions(&ts, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for (name, content) in payload {
            let file = ts.join(name);
            std::fs::write(&file, content).expect("write a payload file");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(self.mode))
                .expect("chmod a payload file");
        }
        let tmp = self.path("..data_tmp");
        symlink(&ts_name, &tmp).expect("symlink ..data_tmp");
        std::fs::rename(&tmp, &data).expect("rename ..data_tmp over ..data");
        for (name, _) in payload {
            let visible = self.path(name);
            if std::fs::symlink_metadata(&visible).is_err() {
                symlink(format!("..data/{name}"), &visible).expect("symlink a visible name");
            }
        }
        for name in old_names {
            if !payload.iter().any(|(n, _)| *n == name) {
                std::fs::remove_file(self.path(&name)).expect("remove a visible name");
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).expect("remove the old directory");
        }
    }
}

/// `..2006_01_02_15_04_05.` for now, in UTC, as kubelet formats it.
fn timestamp_prefix() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "..{year:04}_{month:02}_{day:02}_{:02}_{:02}_{:02}.",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// `broker --args ARGS --socket SITE/b.sock --state-dir SITE/state
/// --read-only --watch`: a mounted volume is read-only, so the state lives
/// elsewhere.
fn watching_broker(site: &Site, args: &Path) -> Command {
    let mut cmd = Command::new(BROKER);
    cmd.arg("--args")
        .arg(args)
        .arg("--socket")
        .arg(site.socket())
        .arg("--state-dir")
        .arg(site.path("state"))
        .args(["--read-only", "--watch"]);
    cmd
}

/// Waits until the broker serves `json`, and returns its revision.
fn served(site: &Site, json: &str) -> u64 {
    eventually(&format!("the broker to serve {json}"), || {
        let args = site.current();
        (args.json == json).then_some(args.revision)
    })
}

/// A ConfigMap update (kubelet's symlink swap) becomes the next revision;
/// so does the one after (the watch moved to the new directory); an update
/// that leaves args.json as it was, or a mode or owner change alone, makes
/// none.
#[test]
fn a_configmap_update_is_served_as_the_next_revision() {
    let site = Site::new("{}");
    let mut volume = AtomicWriter::new(site.path("config"), 0o644);
    volume.write(&[("args.json", r#"{"v":1}"#), ("other.txt", "a")]);
    let mut broker = site.spawn_broker(watching_broker(&site, &volume.path("args.json")));
    assert_eq!(served(&site, r#"{"v":1}"#), 1);

    volume.write(&[("args.json", r#"{"v":2}"#), ("other.txt", "a")]);
    assert_eq!(served(&site, r#"{"v":2}"#), 2);
    broker.log_line("reloaded the args file revision=2");

    volume.write(&[("args.json", r#"{"v":3}"#), ("other.txt", "a")]);
    assert_eq!(served(&site, r#"{"v":3}"#), 3);

    // Only the other key changes; then only the mode and owner of
    // args.json (in its timestamped directory). Neither is a revision: the
    // next real change is revision 4.
    volume.write(&[("args.json", r#"{"v":3}"#), ("other.txt", "b")]);
    let real = std::fs::canonicalize(volume.path("args.json")).expect("resolve args.json");
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::chown(&real, Some(common::NOBODY), Some(common::NOBODY)).expect("chown");
    volume.write(&[("args.json", r#"{"v":4}"#), ("other.txt", "b")]);
    assert_eq!(served(&site, r#"{"v":4}"#), 4);
    assert!(!broker.log().contains("revision=5"), "{}", broker.log());
    assert!(!broker.log().contains("not reloaded"), "{}", broker.log());
    assert_eq!(broker.stop().code(), Some(0));
}

/// A Secret (defaultMode 0400) mounted the same way: each update is served.
#[test]
fn a_secret_update_with_mode_0400_is_served() {
    let site = Site::new("{}");
    let mut volume = AtomicWriter::new(site.path("secret"), 0o400);
    volume.write(&[("args.json", r#"{"token":"one"}"#)]);
    let real = std::fs::canonicalize(volume.path("args.json")).expect("resolve args.json");
    let mode = std::fs::metadata(&real).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o400);
    let mut broker = site.spawn_broker(watching_broker(&site, &volume.path("args.json")));
    assert_eq!(served(&site, r#"{"token":"one"}"#), 1);
    volume.write(&[("args.json", r#"{"token":"two"}"#)]);
    assert_eq!(served(&site, r#"{"token":"two"}"#), 2);
    volume.write(&[("args.json", r#"{"token":"three"}"#)]);
    assert_eq!(served(&site, r#"{"token":"three"}"#), 3);
    assert_eq!(broker.stop().code(), Some(0));
}

/// Written in place, renamed over, deleted and made again: each is the
/// next revision.
#[test]
fn in_place_rename_over_and_delete_recreate_are_each_one_revision() {
    let site = Site::new(r#"{"w":"first"}"#);
    let args = site.args();
    let mut broker = site.spawn_broker(watching_broker(&site, &args));
    assert_eq!(served(&site, r#"{"w":"first"}"#), 1);

    std::fs::write(&args, r#"{"w":"in place"}"#).expect("write in place");
    assert_eq!(served(&site, r#"{"w":"in place"}"#), 2);

    let tmp = site.path("args.json.tmp");
    std::fs::write(&tmp, r#"{"w":"renamed"}"#).expect("write");
    std::fs::rename(&tmp, &args).expect("rename over");
    assert_eq!(served(&site, r#"{"w":"renamed"}"#), 3);

    std::fs::remove_file(&args).expect("delete");
    broker.log_line("not reloaded, still serving revision 3");
    std::fs::write(&args, r#"{"w":"recreated"}"#).expect("recreate");
    assert_eq!(served(&site, r#"{"w":"recreated"}"#), 4);
    assert_eq!(broker.stop().code(), Some(0));
}

/// A file behind three levels of links (one with `..`): a change at the
/// end is served; after the middle link is swapped to another file, that
/// file's changes are served and the old file's are not.
#[test]
fn a_file_behind_several_links_follows_the_chain_as_it_changes() {
    let site = Site::new("{}");
    let data = site.path("data");
    let sub = site.path("sub");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::create_dir(&sub).expect("mkdir");
    std::fs::write(data.join("one.json"), r#"{"f":"one"}"#).expect("write");
    std::fs::write(data.join("two.json"), r#"{"f":"two"}"#).expect("write");
    symlink("../data/one.json", sub.join("l2")).expect("symlink");
    symlink("../data/two.json", sub.join("l3")).expect("symlink");
    symlink("sub/l2", site.path("l1")).expect("symlink");
    let args = site.path("linked.json");
    symlink(site.path("l1"), &args).expect("symlink");
    let mut broker = site.spawn_broker(watching_broker(&site, &args));
    assert_eq!(served(&site, r#"{"f":"one"}"#), 1);

    std::fs::write(data.join("one.json"), r#"{"f":"one, changed"}"#).expect("write");
    assert_eq!(served(&site, r#"{"f":"one, changed"}"#), 2);

    // l1 -> sub/l3, by a new link renamed over it.
    symlink("sub/l3", site.path("l1.new")).expect("symlink");
    std::fs::rename(site.path("l1.new"), site.path("l1")).expect("rename over l1");
    assert_eq!(served(&site, r#"{"f":"two"}"#), 3);

    std::fs::write(data.join("one.json"), r#"{"f":"one, unused"}"#).expect("write");
    std::fs::write(data.join("two.json"), r#"{"f":"two, changed"}"#).expect("write");
    assert_eq!(served(&site, r#"{"f":"two, changed"}"#), 4);
    assert_eq!(broker.stop().code(), Some(0));
}

/// A hundred ConfigMap updates in about a second: a watcher sees the
/// revisions in order, each a document that was really written, newer ones
/// only, ending on the last.
#[test]
fn an_event_storm_ends_on_the_last_content_and_never_goes_back() {
    let site = Site::new("{}");
    let mut volume = AtomicWriter::new(site.path("config"), 0o644);
    volume.write(&[("args.json", r#"{"n":-1}"#)]);
    let mut broker = site.spawn_broker(watching_broker(&site, &volume.path("args.json")));
    assert_eq!(served(&site, r#"{"n":-1}"#), 1);

    let socket = site.socket();
    let (tx, rx) = std::sync::mpsc::channel();
    let watcher = std::thread::spawn(move || {
        grpc(|| async {
            let mut client = argsbroker::client::connect(&socket).await.expect("connect");
            let mut stream = client
                .watch_args(argsbroker::pb::WatchArgsRequest::default())
                .await
                .expect("WatchArgs")
                .into_inner();
            while let Ok(Some(args)) = stream.message().await {
                let json = String::from_utf8_lossy(&args.json).into_owned();
                let last = json == r#"{"n":99}"#;
                if tx.send((args.revision, json)).is_err() || last {
                    break;
                }
            }
        })
    });
    let next = || {
        rx.recv_timeout(PATIENCE)
            .expect("the next revision from WatchArgs")
    };
    // The watch's first message is the current revision: it is following.
    let mut seen = vec![next()];
    for n in 0..100 {
        volume.write(&[("args.json", &format!(r#"{{"n":{n}}}"#))]);
        std::thread::sleep(Duration::from_millis(10));
    }
    while seen.last().map(|s| s.1.as_str()) != Some(r#"{"n":99}"#) {
        seen.push(next());
    }
    watcher.join().expect("the watcher thread");
    assert_eq!(seen.first().map(|s| s.0), Some(1), "{seen:?}");
    let ns: Vec<i64> = seen
        .iter()
        .map(|(_, json)| {
            let value: serde_json::Value = serde_json::from_str(json).expect("a document");
            value["n"].as_i64().expect("n")
        })
        .collect();
    assert!(
        seen.windows(2).all(|w| w[1].0 > w[0].0),
        "revisions: {seen:?}"
    );
    assert!(ns.windows(2).all(|w| w[1] > w[0]), "never back: {seen:?}");
    assert_eq!(ns.last(), Some(&99));
    // Every revision the broker made (a watcher may skip some), by the
    // SHA-256 of its document: each a written one, in the order written.
    let written: Vec<(String, i64)> = (-1..100)
        .map(|n| {
            let text = format!(r#"{{"n":{n}}}"#);
            (format!("{:x}", Sha256::digest(text.as_bytes())), n)
        })
        .collect();
    let history = common::call(&site.socket(), async |mut c| {
        c.list_revisions(argsbroker::pb::ListRevisionsRequest {})
            .await
    })
    .expect("ListRevisions");
    let made: Vec<(u64, i64)> = history
        .revisions
        .iter()
        .map(|r| {
            let n = written.iter().find(|(sha, _)| *sha == r.sha256);
            (
                r.revision,
                n.map(|(_, n)| *n).expect("a document that was written"),
            )
        })
        .collect();
    assert_eq!(made.first(), Some(&(1, -1)), "{made:?}");
    assert!(
        made.windows(2)
            .all(|w| w[1].0 == w[0].0 + 1 && w[1].1 > w[0].1),
        "{made:?}"
    );
    assert_eq!(made.last().map(|m| m.1), Some(99));
    assert_eq!(served(&site, r#"{"n":99}"#), made.len() as u64);
    assert_eq!(broker.stop().code(), Some(0));
}

/// `unshare --user --map-root-user` runs the broker in a user namespace of
/// its own, whose inotify limit `limit` (max_inotify_instances or
/// max_inotify_watches) is set to 0 first: the machine's limits are left
/// alone.
fn broker_without_inotify(site: &Site, args: &Path, limit: &str) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--", "sh", "-c"])
        .arg(format!(
            "echo 0 > /proc/sys/user/{limit} && exec \"$0\" \"$@\""
        ))
        .arg(BROKER)
        .args(watching_broker(site, args).get_args());
    cmd
}

/// With no inotify instance (EMFILE) or no inotify watch (ENOSPC) to be
/// had, the broker says so once and checks the file every second: ConfigMap
/// updates are still served.
#[test]
fn without_inotify_the_stamp_is_polled_and_the_log_says_so_once() {
    common::require_root("the inotify limits of a user namespace");
    for (limit, reason) in [
        ("max_inotify_instances", "Too many open files (os error 24)"),
        ("max_inotify_watches", "OS file watch limit reached."),
    ] {
        let site = Site::new("{}");
        let mut volume = AtomicWriter::new(site.path("config"), 0o644);
        volume.write(&[("args.json", r#"{"v":1}"#)]);
        let args = volume.path("args.json");
        let mut broker: Proc = site.spawn_broker(broker_without_inotify(&site, &args, limit));
        let line = broker.log_line("with inotify");
        let expected = format!(
            "cannot watch the args file {} with inotify ({reason}",
            args.display()
        );
        assert!(line.contains(&expected), "{limit}: {line}");
        assert!(line.ends_with("; checking it every 1s instead"), "{line}");
        volume.write(&[("args.json", r#"{"v":2}"#)]);
        assert_eq!(served(&site, r#"{"v":2}"#), 2);
        volume.write(&[("args.json", r#"{"v":3}"#)]);
        assert_eq!(served(&site, r#"{"v":3}"#), 3);
        let log = broker.log();
        assert_eq!(log.matches("with inotify").count(), 1, "{log}");
        assert_eq!(broker.stop().code(), Some(0));
    }
}

const KEY: &str = "/argsbroker/k8s-secret";

/// `etcdctl [--user root:rootpw] ARGS...`, that must succeed.
fn etcdctl(cluster: &Cluster, as_root: bool, args: &[&str]) {
    let mut all = match as_root {
        true => vec!["--user", "root:rootpw"],
        false => vec![],
    };
    all.extend(args);
    let out = cluster.etcdctl(&cluster.endpoints(), &all, Duration::from_secs(10));
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `etcdctl user passwd USER` with the new password on stdin.
fn etcd_passwd(cluster: &Cluster, user: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", cluster.endpoints_csv()))
        .args([
            "--user",
            "root:rootpw",
            "user",
            "passwd",
            user,
            "--interactive=false",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{password}\n").as_bytes())
        .expect("the new password to etcdctl");
    drop(stdin);
    let out = child.wait_with_output().expect("etcdctl's exit");
    assert!(
        out.status.success(),
        "etcdctl user passwd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Patches through the broker until one is taken (after a password
/// rotation the broker may be re-authenticating), and returns it.
fn patched(site: &Site, patch: &str) -> argsbroker::pb::Args {
    eventually(&format!("the patch {patch} to be taken"), || {
        site.patch(patch, None).ok()
    })
}

/// The etcd password file mounted from a Secret: a rotated password is
/// taken without a restart, whether etcd's user or the Secret changes
/// first.
#[test]
fn a_rotated_etcd_password_in_a_secret_mount_is_taken_without_a_restart() {
    let cluster = Cluster::start(1);
    let eps = cluster.endpoints_csv();
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "writer"],
        &["role", "grant-permission", "writer", "readwrite", KEY],
        &["user", "add", "rw:one"],
        &["user", "grant-role", "rw", "writer"],
        &["auth", "enable"],
    ] {
        etcdctl(&cluster, false, args);
    }
    etcdctl(&cluster, true, &["put", KEY, r#"{"a":0}"#]);
    let site = Site::new("{}");
    let mut secret = AtomicWriter::new(site.path("etcd-auth"), 0o400);
    secret.write(&[("password", "one\n")]);
    let mut cmd = Command::new(BROKER);
    cmd.args(["--etcd-endpoints", &eps, "--etcd-key", KEY])
        .arg("--state-dir")
        .arg(site.path("state"))
        .arg("--socket")
        .arg(site.socket())
        .args(["--etcd-user", "rw", "--etcd-password-file"])
        .arg(secret.path("password"));
    let mut broker = site.spawn_broker(cmd);
    let pid = broker.pid();
    assert_eq!(patched(&site, r#"{"a":1}"#).json, r#"{"a":1}"#);

    // etcd first (its tokens for rw are void from then on), then the Secret.
    etcd_passwd(&cluster, "rw", "two");
    secret.write(&[("password", "two\n")]);
    assert_eq!(patched(&site, r#"{"a":2}"#).json, r#"{"a":2}"#);
    broker.log_line("the etcd password file changed; authenticated with the new password");

    // The Secret first: etcd refuses "three" for now and "two" goes on
    // working; once etcd's user changes, "three" is taken.
    secret.write(&[("password", "three\n")]);
    broker.log_line("etcd did not accept the new password in");
    assert_eq!(patched(&site, r#"{"a":3}"#).json, r#"{"a":3}"#);
    etcd_passwd(&cluster, "rw", "three");
    eventually("the second new password to be taken", || {
        (broker
            .log()
            .matches("authenticated with the new password")
            .count()
            == 2)
            .then_some(())
    });
    assert_eq!(patched(&site, r#"{"a":4}"#).json, r#"{"a":4}"#);
    assert!(broker.is_running());
    assert_eq!(broker.pid(), pid);
    assert_eq!(broker.stop().code(), Some(0));
}
