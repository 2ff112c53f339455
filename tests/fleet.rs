//! The fleet (issue 14): followers report what they applied, `broker
//! status` lists them, and a write with `--wait` returns once every
//! follower connected at commit time applied it, or names those that did
//! not. Real broker and workers; a stopped worker (SIGSTOP) is one that
//! lags, a killed one (SIGKILL) one that leaves.
mod common;

use common::*;
use std::process::{Command, Stdio};

fn uid() -> u32 {
    // SAFETY: getuid(2) cannot fail.
    unsafe { libc::getuid() }
}

/// `broker SUBCOMMAND --socket S ARGS...`, run to completion.
fn ctl(site: &Site, subcommand: &str, args: &[&str]) -> (i32, String, String) {
    run(Command::new(BROKER)
        .arg(subcommand)
        .arg("--socket")
        .arg(site.socket())
        .args(args))
}

/// The followers the broker lists, as `broker status --json` prints them.
fn followers(site: &Site) -> Vec<serde_json::Value> {
    let (code, out, err) = ctl(site, "status", &["--json"]);
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    status["followers"].as_array().expect("a list").clone()
}

/// Starts `n` workers and waits until the broker lists all of them at `revision`.
fn workers(site: &Site, n: usize, revision: u64) -> Vec<(u16, Proc)> {
    let started: Vec<(u16, Proc)> = (0..n)
        .map(|_| {
            let worker = site.start_worker();
            (worker.http_port(), worker)
        })
        .collect();
    eventually("every worker listed at the revision", || {
        let listed = followers(site);
        (listed.len() == n && listed.iter().all(|f| f["applied_revision"] == revision))
            .then_some(())
    });
    started
}

#[test]
fn status_lists_every_follower_with_its_revision() {
    let site = Site::new(r#"{"a":1}"#);
    let _broker = site.start_broker();
    let workers = workers(&site, 4, 1);
    let listed = followers(&site);
    for (port, worker) in &workers {
        let entry = listed
            .iter()
            .find(|f| f["name"] == format!("worker 127.0.0.1:{port}"))
            .unwrap_or_else(|| panic!("worker on {port} not listed: {listed:?}"));
        assert_eq!(entry["pid"], worker.pid());
        assert_eq!(entry["uid"], uid());
        assert_eq!(entry["rejected_revision"], 0);
        assert_eq!(entry["rejected_reason"], "");
    }

    let (code, out, _) = ctl(&site, "status", &[]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("revision 1 sha256 "), "{out}");
    assert!(lines[1].starts_with("backend file "), "{out}");
    assert!(lines[1].contains(": connected since "), "{out}");
    assert_eq!(lines[2], "followers 4");
    for (port, worker) in &workers {
        let prefix = format!(
            "  worker 127.0.0.1:{port} pid {} uid {} applied 1 since ",
            worker.pid(),
            uid()
        );
        assert!(
            lines.iter().any(|l| l.starts_with(&prefix)),
            "no line starting {prefix:?} in:\n{out}"
        );
    }
}

#[test]
fn patch_wait_returns_once_every_worker_serves_the_write() {
    let site = Site::new(r#"{"a":1}"#);
    let _broker = site.start_broker();
    let workers = workers(&site, 4, 1);
    for round in 2..=6u64 {
        let patch = format!(r#"{{"round":{round}}}"#);
        let (code, out, err) = ctl(&site, "patch", &["--wait=10", &patch]);
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (0, &*format!("revision {round}\n"), "")
        );
        // No polling: when --wait returned, every worker already serves it.
        for (port, _) in &workers {
            assert_eq!(
                get(*port, "/args").body,
                format!(r#"{{"args":{{"a":1,"round":{round}}}}}"#),
                "worker on {port} after round {round}"
            );
        }
    }
    // Each follower says how long after the write it applied it.
    for f in followers(&site) {
        assert!(f["applied_after_micros"].as_u64().is_some(), "{f}");
    }
}

#[test]
fn a_lagging_worker_is_named_and_the_write_stays_committed() {
    let site = Site::new(r#"{"a":1}"#);
    let _broker = site.start_broker();
    let mut workers = workers(&site, 2, 1);
    let (port, stopped) = workers.pop().expect("two workers");
    stopped.signal(libc::SIGSTOP);

    let (code, out, err) = ctl(&site, "patch", &["--wait=1", r#"{"b":2}"#]);
    assert_eq!(code, 5, "{err}");
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!(
            "broker: error: revision 2 is committed, but not every follower applied it: worker 127.0.0.1:{port} (pid {}, uid {}) is at revision 1 after 1s\n",
            stopped.pid(),
            uid()
        )
    );
    assert_eq!(site.current().revision, 2);
    assert_eq!(get(workers[0].0, "/args").body, r#"{"args":{"a":1,"b":2}}"#);

    // The same content again is no new revision: nothing to wait for.
    let (code, out, _) = ctl(&site, "patch", &["--wait=30", r#"{"b":2}"#]);
    assert_eq!((code, out.as_str()), (0, "revision 2\n"));

    stopped.signal(libc::SIGCONT);
    eventually("the resumed worker to catch up", || {
        (get(port, "/args").body == r#"{"args":{"a":1,"b":2}}"#).then_some(())
    });
}

#[test]
fn a_worker_killed_during_a_wait_is_reported() {
    let site = Site::new(r#"{"a":1}"#);
    let _broker = site.start_broker();
    let mut workers = workers(&site, 2, 1);
    let (port, mut doomed) = workers.pop().expect("two workers");
    let doomed_pid = doomed.pid();
    doomed.signal(libc::SIGSTOP);

    let waiting = Command::new(BROKER)
        .args(["patch", "--wait=60", "--socket"])
        .arg(site.socket())
        .arg(r#"{"c":3}"#)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn broker patch");
    // Committed (and so waited for) before the worker dies.
    eventually("the write to commit", || {
        (site.current().revision == 2).then_some(())
    });
    doomed.signal(libc::SIGKILL);
    let _ = doomed.wait();

    let out = waiting.wait_with_output().expect("broker patch");
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "broker: error: revision 2 is committed, but not every follower applied it: worker 127.0.0.1:{port} (pid {doomed_pid}, uid {}) disconnected\n",
            uid()
        )
    );
    // The one that left is no longer listed; the other applied the write.
    let listed = followers(&site);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["applied_revision"], 2);
}

#[test]
fn wait_flags_are_checked() {
    let site = Site::new(r#"{"a":1}"#);
    let (code, _, err) = ctl(&site, "patch", &["--rollback-on-reject", r#"{"b":2}"#]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with(
            "error: the following required arguments were not provided:\n  --wait[=<SECONDS>]"
        ),
        "{err}"
    );
    let (code, _, err) = ctl(&site, "patch", &["--wait=soon", r#"{"b":2}"#]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with(
            "error: invalid value 'soon' for '--wait[=<SECONDS>]': \"soon\" is not a positive number of seconds"
        ),
        "{err}"
    );
}

/// A worker with `--schema` that the new document violates: it rejects it
/// and keeps serving the old one, says so in /readyz, and `--wait` names it
/// with its reason.
#[test]
fn a_worker_that_rejects_a_revision_is_named_with_its_reason() {
    let Pair {
        site,
        schema,
        plain_port,
        strict_port,
        strict,
        _procs,
    } = plain_and_strict();

    let (code, _, err) = ctl(&site, "patch", &["--wait=10", r#"{"port":"x"}"#]);
    let reason = format!(
        "the document does not satisfy the schema {}: /port: \"x\" is not of type \"integer\"",
        schema.display()
    );
    assert_eq!(code, 5, "{err}");
    assert_eq!(
        err,
        format!(
            "broker: error: revision 2 is committed, but not every follower applied it: worker 127.0.0.1:{strict_port} (pid {}, uid {}) rejected it: {reason}\n",
            strict.pid(),
            uid()
        )
    );
    // The strict worker serves revision 1 and says why; the other serves 2.
    assert_eq!(get(strict_port, "/args").body, r#"{"args":{"port":8080}}"#);
    assert_eq!(get(plain_port, "/args").body, r#"{"args":{"port":"x"}}"#);
    let ready: serde_json::Value =
        serde_json::from_str(&get(strict_port, "/readyz").body).expect("JSON");
    assert_eq!(ready["revision"], 1);
    assert_eq!(
        ready["rejected"],
        serde_json::json!({"revision": 2, "reason": reason})
    );
    let listed = followers(&site);
    let entry = listed
        .iter()
        .find(|f| f["pid"] == strict.pid())
        .expect("the strict worker listed");
    assert_eq!(entry["applied_revision"], 1);
    assert_eq!(entry["rejected_revision"], 2);
    assert_eq!(entry["rejected_reason"], reason.as_str());
    let (_, status, _) = ctl(&site, "status", &[]);
    assert!(
        status.contains(&format!(
            "  worker 127.0.0.1:{strict_port} pid {} uid {} applied 1 rejected 2: {reason} since ",
            strict.pid(),
            uid()
        )),
        "{status}"
    );

    // A later revision it accepts clears the rejection.
    let (code, _, err) = ctl(&site, "patch", &["--wait=10", r#"{"port":9090}"#]);
    assert_eq!(code, 0, "{err}");
    let ready: serde_json::Value =
        serde_json::from_str(&get(strict_port, "/readyz").body).expect("JSON");
    assert_eq!(ready["revision"], 3);
    assert_eq!(ready.get("rejected"), None);
}

/// `--rollback-on-reject`: a rejected revision is undone by a newer one
/// with the old content, which every worker then serves.
#[test]
fn rollback_on_reject_restores_the_old_content_everywhere() {
    let Pair {
        site,
        schema: _,
        plain_port,
        strict_port,
        strict,
        _procs,
    } = plain_and_strict();

    let (code, _, err) = ctl(
        &site,
        "patch",
        &["--wait=10", "--rollback-on-reject", r#"{"port":"x"}"#],
    );
    assert_eq!(code, 5, "{err}");
    assert!(
        err.starts_with(&format!(
            "broker: error: revision 2 is committed, but not every follower applied it: worker 127.0.0.1:{strict_port} (pid {}, uid {}) rejected it: ",
            strict.pid(),
            uid()
        )),
        "{err}"
    );
    assert!(
        err.ends_with("; rolled back: revision 3 has the content of revision 1\n"),
        "{err}"
    );
    let current = site.current();
    assert_eq!(
        (current.revision, &current.json[..]),
        (3, &br#"{"port":8080}"#[..])
    );
    for port in [plain_port, strict_port] {
        eventually(&format!("worker {port} at revision 3"), || {
            let ready: serde_json::Value = serde_json::from_str(&get(port, "/readyz").body).ok()?;
            (ready["revision"] == 3 && ready.get("rejected").is_none()).then_some(())
        });
        assert_eq!(get(port, "/args").body, r#"{"args":{"port":8080}}"#);
    }
}

/// A worker whose schema the first revision violates does not start.
#[test]
fn a_worker_whose_schema_the_args_violate_does_not_start() {
    let site = Site::new(r#"{"port":"x"}"#);
    let schema = site.path("args.schema.json");
    std::fs::write(&schema, SCHEMA).expect("write the schema");
    let _broker = site.start_broker();
    let (code, _, err) = run(site
        .worker_cmd(ANY_PORT, false)
        .arg("--schema")
        .arg(&schema)
        .arg("--startup-timeout")
        .arg("5"));
    assert_eq!(code, 1);
    assert_eq!(
        err.lines().last().unwrap_or_default(),
        format!(
            "worker: error: revision 1 from the broker at {} was rejected: the document does not satisfy the schema {}: /port: \"x\" is not of type \"integer\"",
            site.socket().display(),
            schema.display()
        )
    );
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "properties": {"port": {"type": "integer"}}
}"#;

/// A broker on `{"port":8080}` with two workers listed: one plain, one
/// with `--schema` SCHEMA (`strict`).
struct Pair {
    site: Site,
    schema: std::path::PathBuf,
    plain_port: u16,
    strict_port: u16,
    strict: Proc,
    /// The broker and the plain worker, stopped when dropped.
    _procs: [Proc; 2],
}

fn plain_and_strict() -> Pair {
    let site = Site::new(r#"{"port":8080}"#);
    let schema = site.path("args.schema.json");
    std::fs::write(&schema, SCHEMA).expect("write the schema");
    let broker = site.start_broker();
    let plain = site.start_worker();
    let plain_port = plain.http_port();
    let (strict_port, strict) = start_strict_worker(&site, &schema);
    eventually("both workers listed", || {
        (followers(&site).len() == 2).then_some(())
    });
    Pair {
        site,
        schema,
        plain_port,
        strict_port,
        strict,
        _procs: [broker, plain],
    }
}

fn start_strict_worker(site: &Site, schema: &std::path::Path) -> (u16, Proc) {
    let mut cmd = site.worker_cmd(ANY_PORT, false);
    cmd.arg("--schema").arg(schema);
    let worker = site.spawn_worker(cmd);
    (worker.http_port(), worker)
}
