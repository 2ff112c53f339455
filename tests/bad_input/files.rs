//! The args file: what the broker refuses at start and on a reload.
use super::*;

/// An empty args file is refused: it is not an object.
#[test]
fn file_empty() {
    file_refused(
        b"",
        &[],
        in_args_file("the document is empty: expected a JSON object"),
    );
}

/// A file of only whitespace is refused like an empty one.
#[test]
fn file_only_whitespace() {
    file_refused(
        b" \n\t\r\n",
        &[],
        in_args_file("the document is empty: expected a JSON object"),
    );
}

/// Invalid JSON is refused with its line and column.
#[test]
fn file_invalid_json() {
    file_refused(
        b"{\n  \"a\": 1,\n  \"b\" 2\n}\n",
        &[],
        in_args_file("invalid JSON at line 3 column 7: expected `:`"),
    );
}

/// A top-level array is refused, named.
#[test]
fn file_top_level_array() {
    file_refused(
        b"[1, 2]",
        &[],
        in_args_file("the top level is an array: expected a JSON object"),
    );
}

/// A top-level string is refused, named.
#[test]
fn file_top_level_string() {
    file_refused(
        b"\"args\"",
        &[],
        in_args_file("the top level is a string: expected a JSON object"),
    );
}

/// A top-level number is refused, named.
#[test]
fn file_top_level_number() {
    file_refused(
        b"42",
        &[],
        in_args_file("the top level is a number: expected a JSON object"),
    );
}

/// A top-level null is refused, named.
#[test]
fn file_top_level_null() {
    file_refused(
        b"null",
        &[],
        in_args_file("the top level is null: expected a JSON object"),
    );
}

/// Bytes that are not UTF-8 are refused with where they are.
#[test]
fn file_invalid_utf8() {
    file_refused(
        b"{\n  \"a\": \"\xff\"\n}",
        &[],
        in_args_file("not UTF-8 at line 2 column 9 (byte 0xff): JSON text must be UTF-8"),
    );
}

/// A UTF-8 byte order mark is accepted and skipped, in a file and in a write alike.
#[test]
fn file_with_a_byte_order_mark_is_accepted() {
    let site = Site::new("{}");
    std::fs::write(site.args(), b"\xEF\xBB\xBF{\"a\": 1}\n").unwrap();
    let mut broker = site.start_broker();
    let first = get_args(&site.socket());
    assert_eq!(
        (first.revision, first.json_str().unwrap()),
        (1, r#"{"a":1}"#)
    );
    let reply = site.set("\u{feff}{\"a\": 2}", None).unwrap();
    assert_eq!(
        (reply.revision, reply.json_str().unwrap()),
        (2, r#"{"a":2}"#)
    );
    unchanged(&site, &mut broker, &reply);
}

/// An object that repeats a key is refused, naming the key and where it repeats.
#[test]
fn file_duplicate_keys() {
    file_refused(
        b"{\n  \"model\": {\"path\": \"a\",\n            \"path\": \"b\"}\n}",
        &[],
        in_args_file(
            r#"duplicate key "path" at line 3 column 18: a key may appear only once in an object"#,
        ),
    );
}

/// 10,000 levels of nesting are refused at level 128 (127 are allowed), without a stack overflow.
#[test]
fn file_deep_nesting() {
    let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
    file_refused(
        deep.as_bytes(),
        &[],
        in_args_file(
            "invalid JSON at line 1 column 132: nesting deeper than 127 levels of arrays and objects",
        ),
    );
}

/// A file over --max-args-bytes is refused before it is read.
#[test]
fn file_over_the_size_limit() {
    let big = format!(r#"{{"a": "{}"}}"#, "x".repeat(100));
    file_refused(big.as_bytes(), &["--max-args-bytes", "64"], |path| {
        format!(
            "the args file {} is 109 bytes, over the limit of 64 (--max-args-bytes)",
            path.display()
        )
    });
}

/// A file under the limit whose compact form (what is sent) is over it is refused: `1e1` is served as `1e+1`.
#[test]
fn file_compact_form_over_the_size_limit() {
    let text = format!("{{\"a\":[{}]}}", vec!["1e1"; 23].join(","));
    assert_eq!(text.len(), 99);
    file_refused(text.as_bytes(), &["--max-args-bytes", "100"], |path| {
        format!(
            "the args file {} is 122 bytes as compact JSON, over the limit of 100 (--max-args-bytes)",
            path.display()
        )
    });
}

/// A directory where the args file should be is named as such, at startup and on reload.
#[test]
fn file_is_a_directory() {
    let site = Site::new(DOC);
    let dir = site.path("dir.json");
    std::fs::create_dir(&dir).unwrap();
    let mut cmd = Command::new(BROKER);
    cmd.arg("--args")
        .arg(&dir)
        .arg("--socket")
        .arg(site.socket());
    let message = |p: &Path| format!("the args file {} is a directory, not a file", p.display());
    assert_eq!(
        run(&mut cmd),
        (
            1,
            String::new(),
            format!("broker: error: {}\n", message(&dir))
        )
    );

    let mut broker = site.start_broker();
    let before = get_args(&site.socket());
    std::fs::remove_file(site.args()).unwrap();
    std::fs::create_dir(site.args()).unwrap();
    broker.signal(libc::SIGHUP);
    eventually("the reload error in the log", || {
        broker
            .log()
            .contains(&format!(
                "not reloaded, still serving revision 1: {}",
                message(&site.args())
            ))
            .then_some(())
    });
    unchanged(&site, &mut broker, &before);
}

/// A file the broker may not read (mode 0600, another owner) is refused with the OS's reason.
/// Root reads any file, so the broker runs as uid 65534 here.
#[test]
fn file_without_read_permission() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    require_root("file_without_read_permission");
    let site = Site::new(DOC);
    std::os::unix::fs::chown(site.dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let broker_copy = site.broker_copy();
    let as_nobody = || {
        let mut cmd = std::process::Command::new(&broker_copy);
        cmd.arg("--args")
            .arg(site.args())
            .arg("--socket")
            .arg(site.socket());
        cmd.uid(NOBODY).gid(NOBODY);
        cmd
    };
    let message = format!(
        "cannot read the args file {}: Permission denied (os error 13)",
        site.args().display()
    );

    std::fs::set_permissions(site.args(), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        run(&mut as_nobody()),
        (1, String::new(), format!("broker: error: {message}\n"))
    );

    std::fs::set_permissions(site.args(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut broker = site.spawn_broker(as_nobody());
    let before = get_args(&site.socket());
    std::fs::set_permissions(site.args(), std::fs::Permissions::from_mode(0o600)).unwrap();
    broker.signal(libc::SIGHUP);
    eventually("the reload error in the log", || {
        broker
            .log()
            .contains(&format!(
                "not reloaded, still serving revision 1: {message}"
            ))
            .then_some(())
    });
    unchanged(&site, &mut broker, &before);
}
