//! The broker's state on disk: one broker per args file and state
//! directory, private state, the args file's mode, owner and symlink kept,
//! files that are not regular, and a socket file deleted under a running
//! broker. Writes refused by real faults (fsync errors, a full disk, an
//! unwritable history) are in trust.rs.
mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const DOC: &str = "{\n  \"n\": 1\n}\n";

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// Everything in `dir` whose name ends with `.tmp`.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect()
}

#[test]
fn a_second_broker_on_the_same_args_file_or_state_refuses_to_start() {
    let site = Site::new(DOC);
    let first = site.start_broker();
    let other_socket = site.path("other.sock");
    let second = |extra: &[&str]| {
        let mut cmd = Command::new(BROKER);
        cmd.arg("--args")
            .arg(site.args())
            .arg("--socket")
            .arg(&other_socket);
        cmd.args(extra);
        run(&mut cmd)
    };
    let holder = format!(
        "another broker (pid {}, socket {})",
        first.pid(),
        site.socket().display()
    );
    assert_eq!(
        second(&[]),
        (
            1,
            String::new(),
            format!(
                "broker: error: {holder} owns the state directory {}.state\n",
                site.args().display()
            )
        )
    );
    let elsewhere = site.path("elsewhere");
    assert_eq!(
        second(&["--state-dir", elsewhere.to_str().unwrap()]),
        (
            1,
            String::new(),
            format!("broker: error: {holder} owns {}\n", site.args().display())
        )
    );
    // Another args file, the same state directory.
    std::fs::write(site.path("b.json"), "{}").unwrap();
    let mut cmd = Command::new(BROKER);
    cmd.arg("--args")
        .arg(site.path("b.json"))
        .arg("--socket")
        .arg(&other_socket)
        .arg("--state-dir")
        .arg(format!("{}.state", site.args().display()));
    let (code, _, err) = run(&mut cmd);
    assert_eq!(
        (code, err.trim_end()),
        (
            1,
            format!(
                "broker: error: {holder} owns the state directory {}.state",
                site.args().display()
            )
            .as_str()
        )
    );
    assert!(!other_socket.exists());
}

#[test]
fn state_is_private_and_the_args_file_keeps_its_mode_and_owner() {
    require_root("state_is_private_and_the_args_file_keeps_its_mode_and_owner");
    let site = Site::new(DOC);
    std::fs::set_permissions(site.args(), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(site.args(), Some(NOBODY), Some(NOBODY)).unwrap();
    let _broker = site.start_broker();
    let patched = site.patch(r#"{"secret": "s3"}"#, None).unwrap();
    assert_eq!(patched.revision, 2);

    let meta = std::fs::metadata(site.args()).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o640, NOBODY, NOBODY)
    );
    let state = site.path("args.json.state");
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("journal")), 0o600);
    assert_eq!(mode(&state.join("lineage")), 0o600);
    assert_eq!(temp_files(site.dir.path()), Vec::<PathBuf>::new());
}

#[test]
fn a_symlinked_args_file_is_written_through_and_stays_a_link() {
    let site = Site::new(DOC);
    let release = site.path("releases/v3");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::rename(site.args(), release.join("args.json")).unwrap();
    std::os::unix::fs::symlink("releases/v3/args.json", site.args()).unwrap();
    let broker = site.start_broker();

    let patched = site.patch(r#"{"n": 2}"#, None).unwrap();
    assert_eq!(
        (patched.revision, &patched.json[..]),
        (2, &b"{\"n\":2}"[..])
    );
    assert_eq!(
        std::fs::read_link(site.args()).unwrap(),
        Path::new("releases/v3/args.json")
    );
    assert_eq!(
        std::fs::read_to_string(release.join("args.json")).unwrap(),
        "{\n  \"n\": 2\n}\n"
    );
    assert_eq!(temp_files(&release), Vec::<PathBuf>::new());

    // A deploy points the link at a new release: a SIGHUP serves it.
    let v4 = site.path("releases/v4");
    std::fs::create_dir_all(&v4).unwrap();
    std::fs::write(v4.join("args.json"), r#"{"n": 4}"#).unwrap();
    std::fs::remove_file(site.args()).unwrap();
    std::os::unix::fs::symlink("releases/v4/args.json", site.args()).unwrap();
    broker.signal(libc::SIGHUP);
    broker.log_line("reloaded the args file");
    let now = get_args(&site.socket());
    assert_eq!((now.revision, &now.json[..]), (3, &b"{\"n\":4}"[..]));
}

#[test]
fn args_that_are_not_a_regular_file_are_refused_at_once() {
    let site = Site::new(DOC);
    let fifo = site.path("fifo.json");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path in the test's own directory.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    for (path, kind) in [
        (fifo.clone(), "a FIFO"),
        (PathBuf::from("/dev/zero"), "a character device"),
    ] {
        let mut cmd = Command::new(BROKER);
        cmd.arg("--args")
            .arg(&path)
            .arg("--socket")
            .arg(site.socket())
            .arg("--state-dir")
            .arg(site.path("state"));
        assert_eq!(
            run(&mut cmd),
            (
                1,
                String::new(),
                format!(
                    "broker: error: the args file {} is not a regular file (it is {kind})\n",
                    path.display()
                )
            )
        );
    }
}

#[test]
fn a_deleted_socket_file_is_bound_again() {
    let site = Site::new(DOC);
    let broker = site.start_broker();
    std::fs::remove_file(site.socket()).unwrap();
    broker.log_line("the socket file was deleted; bound it again");
    assert_eq!(get_args(&site.socket()).revision, 1);
}
