//! Canaries across hosts: a real 3-member etcd cluster, three "hosts" (a
//! real `broker --etcd-endpoints ... --etcd-host web-N` each, with four
//! named workers), and `broker patch --canary`, `broker promote` and
//! `broker abort` through any of them. Each worker's revision is read from
//! its own `/args` (X-Args-Revision), by port.
mod common;

use common::etcd::Cluster;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const SEED: &str = r#"{"model":"a","n":1}"#;
const WORKERS_PER_HOST: usize = 4;

/// Where the hosts' directories go: /dev/shm where there is one.
/// Each host's workers, as `HOST/NAME`, and their HTTP ports.
fn ports(hosts: &[Host]) -> Vec<(String, u16)> {
    hosts
        .iter()
        .flat_map(|h| {
            h.workers
                .iter()
                .map(|(n, w)| (format!("{}/{n}", h.name), w.http_port()))
        })
        .collect()
}

fn scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    match shm.is_dir() {
        true => shm.to_path_buf(),
        false => std::env::temp_dir(),
    }
}

/// One host: a broker on etcd named `web-N`, and its named workers.
struct Host {
    name: String,
    site: Site,
    endpoints: String,
    key: String,
    broker: Option<Proc>,
    workers: Vec<(String, Proc)>,
}

impl Host {
    fn start(name: &str, endpoints: &str, key: &str) -> Self {
        let mut host = Self {
            name: name.to_owned(),
            site: Site::new_in(&scratch(), SEED),
            endpoints: endpoints.to_owned(),
            key: key.to_owned(),
            broker: None,
            workers: Vec::new(),
        };
        host.start_broker();
        host.workers = (0..WORKERS_PER_HOST)
            .map(|i| {
                let name = format!("w{i}");
                let mut cmd = host.site.worker_cmd(ANY_PORT, false);
                cmd.arg("--name").arg(&name);
                (name, host.site.spawn_worker(cmd))
            })
            .collect();
        host
    }

    fn start_broker(&mut self) {
        let mut cmd = Command::new(BROKER);
        cmd.arg("--args")
            .arg(self.site.args())
            .arg("--socket")
            .arg(self.site.socket())
            .arg("--state-dir")
            .arg(self.site.path("state"))
            .args(["--etcd-endpoints", &self.endpoints])
            .args(["--etcd-key", &self.key])
            .args(["--etcd-host", &self.name]);
        self.broker = Some(self.site.spawn_broker(cmd));
    }

    /// `broker COMMAND --socket S ARGS...`: exit code, stdout, stderr.
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new(BROKER);
        cmd.arg(args[0])
            .arg("--socket")
            .arg(self.site.socket())
            .args(&args[1..]);
        run(&mut cmd)
    }

    fn status(&self) -> serde_json::Value {
        let (code, out, err) = self.cli(&["status", "--json"]);
        assert_eq!(code, 0, "broker status on {}: {err}", self.name);
        serde_json::from_str(&out).expect("status --json is JSON")
    }

    fn log(&self) -> String {
        self.broker.as_ref().map(Proc::log).unwrap_or_default()
    }
}

/// Three hosts, web-1 to web-3, on every member of `cluster`, sharing the
/// key `/argsbroker/NAME`; each broker lists all twelve workers.
fn three_hosts(cluster: &Cluster, name: &str) -> Vec<Host> {
    let key = format!("/argsbroker/{name}");
    let hosts: Vec<Host> = (1..=3)
        .map(|i| Host::start(&format!("web-{i}"), &cluster.endpoints_csv(), &key))
        .collect();
    wait_listed(&hosts);
    hosts
}

/// Until every host's broker lists every host's workers (a canary selects
/// among those, and each broker shares its own through etcd).
fn wait_listed(hosts: &[Host]) {
    let all = hosts.len() * WORKERS_PER_HOST;
    for host in hosts {
        eventually(&format!("{} to list {all} workers", host.name), || {
            let followers = host.status()["followers"].as_array()?.clone();
            (followers.len() == all && followers.iter().all(|f| f["stale"] == false)).then_some(())
        });
    }
}

/// `host/name` of every worker of every host.
fn every_worker(hosts: &[Host]) -> Vec<String> {
    hosts
        .iter()
        .flat_map(|h| h.workers.iter().map(|(n, _)| format!("{}/{n}", h.name)))
        .collect()
}

/// `host/name` of the workers `host`'s broker marks as the canary's.
fn selected_by(host: &Host) -> Vec<String> {
    let mut names: Vec<String> = host.status()["followers"]
        .as_array()
        .expect("followers")
        .iter()
        .filter(|f| f["canary"] == true)
        .map(|f| {
            let on = match f["host"].as_str() {
                Some("") | None => host.name.as_str(),
                Some(other) => other,
            };
            format!("{on}/{}", f["name"].as_str().unwrap_or_default())
        })
        .collect();
    names.sort();
    names
}

fn revision_of(port: u16) -> u64 {
    get(port, "/args")
        .header("x-args-revision")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// Each worker (`host/name`) and the revision its /args serves.
fn serving(hosts: &[Host]) -> BTreeMap<String, u64> {
    hosts
        .iter()
        .flat_map(|h| {
            h.workers
                .iter()
                .map(|(n, w)| (format!("{}/{n}", h.name), revision_of(w.http_port())))
        })
        .collect()
}

/// Waits until every worker serves the revision `pick(host/name)` says.
fn wait_serving(hosts: &[Host], what: &str, pick: impl Fn(&str) -> u64) {
    eventually(what, || {
        serving(hosts)
            .iter()
            .all(|(who, revision)| *revision == pick(who))
            .then_some(())
    });
}

/// The revision a canary start printed ("revision C\ncanary: ...").
fn started(out: &str) -> u64 {
    out.lines()
        .next()
        .and_then(|l| l.strip_prefix("revision "))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {out:?}"))
}

/// The plain-write refusal while candidate `candidate` to `selector` runs.
fn refusal(candidate: u64, selector: &str) -> String {
    format!("broker: error: a canary runs (candidate revision {candidate} to {selector}): promote or abort it first, or write with --force, which aborts it\n")
}

#[test]
fn a_host_canary_reaches_that_hosts_workers_only_and_promote_from_another_host_ends_it_everywhere()
{
    let cluster = Cluster::start(3);
    let hosts = three_hosts(&cluster, "canary_host");
    let stable = hosts[0].site.current().revision;

    let (code, out, err) = hosts[0].cli(&["patch", "--canary", "host=web-2", r#"{"n":2}"#]);
    assert_eq!(code, 0, "{err}");
    let candidate = started(&out);
    assert_eq!(
        out,
        format!("revision {candidate}\ncanary: revision {candidate} goes to host=web-2 only; `broker promote` gives it to everyone, `broker abort` takes it back\n")
    );
    assert!(candidate > stable);
    wait_serving(
        &hosts,
        "web-2's workers on the candidate",
        |who| match who.starts_with("web-2/") {
            true => candidate,
            false => stable,
        },
    );
    for host in &hosts {
        // Plain readers get the stable revision, on every host.
        let current = host.site.current();
        assert_eq!(
            (current.revision, current.json_str().unwrap()),
            (stable, SEED),
            "{}",
            host.name
        );
        let status = host.status();
        assert_eq!(status["revision"], stable, "{}", host.name);
        assert_eq!(status["canary"]["candidate_revision"], candidate);
        assert_eq!(status["canary"]["stable_revision"], stable);
        assert_eq!(status["canary"]["selector"], "host=web-2");
        let web_2: Vec<String> = (0..WORKERS_PER_HOST)
            .map(|i| format!("web-2/w{i}"))
            .collect();
        assert_eq!(selected_by(host), web_2, "{}", host.name);
    }
    let candidate_body = get(hosts[1].workers[0].1.http_port(), "/args").body;
    assert_eq!(candidate_body, args_body(r#"{"model":"a","n":2}"#));

    // A plain write is refused on every host, naming the canary; so is a second canary.
    for host in &hosts {
        let (code, out, err) = host.cli(&["patch", r#"{"n":3}"#]);
        assert_eq!(
            (code, out.as_str(), err),
            (1, "", refusal(candidate, "host=web-2")),
            "{}",
            host.name
        );
    }
    let (code, _, err) = hosts[2].cli(&["patch", "--canary", "50%", r#"{"n":3}"#]);
    assert_eq!((code, err), (1, refusal(candidate, "host=web-2")));

    // Promoted through web-3: every worker of every host gets the
    // candidate's revision, and none goes back meanwhile.
    let watch = NoGoingBack::watch(ports(&hosts));
    let (code, out, err) = hosts[2].cli(&["promote"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!("revision {candidate} promoted: every follower and reader gets it\n")
    );
    wait_serving(&hosts, "every worker on the promoted revision", |_| {
        candidate
    });
    assert_eq!(watch.finish(), Vec::<String>::new());
    for host in &hosts {
        eventually(&format!("{} to end the canary", host.name), || {
            host.status()["canary"].is_null().then_some(())
        });
        assert_eq!(host.site.current().revision, candidate, "{}", host.name);
    }
    let (code, out, _) = hosts[0].cli(&["promote"]);
    assert_eq!((code, out.as_str()), (1, ""));

    // The history, read through etcd on any host, says what happened.
    let (code, out, err) = hosts[1].cli(&["history"]);
    assert_eq!(code, 0, "{err}");
    let last = out.lines().last().expect("a row");
    assert!(last.starts_with(&format!("{candidate:>8}")), "{out}");
    assert!(
        last.ends_with("patch     canary to host=web-2; promoted"),
        "{out}"
    );
    // Writes go on as before.
    let next = hosts[1].site.patch(r#"{"n":3}"#, None).expect("a patch");
    assert!(next.revision > candidate);
    wait_serving(&hosts, "every worker on the next write", |_| next.revision);
}

#[test]
fn a_share_picks_the_same_workers_on_every_host_and_abort_from_another_host_takes_them_forward() {
    let cluster = Cluster::start(3);
    let hosts = three_hosts(&cluster, "canary_share");
    let stable = hosts[0].site.current().revision;

    let (code, out, err) = hosts[0].cli(&["patch", "--canary", "50%", r#"{"n":2}"#]);
    assert_eq!(code, 0, "{err}");
    let candidate = started(&out);
    let chosen = selected_by(&hosts[0]);
    let everyone = every_worker(&hosts);
    assert!(
        !chosen.is_empty() && chosen.len() < everyone.len(),
        "50% of 12 picks some, not all: {chosen:?}"
    );
    for host in &hosts[1..] {
        assert_eq!(selected_by(host), chosen, "{} picks the same", host.name);
    }
    let pick = |who: &str| match chosen.iter().any(|c| c == who) {
        true => candidate,
        false => stable,
    };
    wait_serving(&hosts, "the chosen workers on the candidate", pick);

    // Aborted through web-3: a new revision with the stable document, for
    // every worker, and none goes back meanwhile.
    let watch = NoGoingBack::watch(ports(&hosts));
    let (code, out, err) = hosts[2].cli(&["abort", "--reason", "looks slow"]);
    assert_eq!(code, 0, "{err}");
    let aborted: u64 = out
        .strip_prefix("revision ")
        .and_then(|r| r.split(':').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {out:?}"));
    assert_eq!(
        out,
        format!("revision {aborted}: the stable document again, for every follower\n")
    );
    assert!(aborted > candidate);
    wait_serving(&hosts, "every worker on the abort's revision", |_| aborted);
    assert_eq!(watch.finish(), Vec::<String>::new());
    for host in &hosts {
        for (_, worker) in &host.workers {
            assert_eq!(get(worker.http_port(), "/args").body, args_body(SEED));
        }
        eventually(&format!("{} to end the canary", host.name), || {
            host.status()["canary"].is_null().then_some(())
        });
    }
    let (code, out, err) = hosts[1].cli(&["history"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().rev().take(2).collect();
    assert!(
        rows[0].ends_with(&format!("abort     aborted canary {candidate}: looks slow")),
        "{out}"
    );
    assert!(rows[1].ends_with("patch     canary to 50%"), "{out}");
    // Nothing left to abort, on any host.
    let (code, _, err) = hosts[1].cli(&["abort"]);
    assert_eq!((code, err.as_str()), (1, "broker: error: no canary runs\n"));
}

#[test]
fn a_broker_killed_mid_canary_restarts_with_it_and_a_forced_write_from_another_host_ends_it() {
    let cluster = Cluster::start(3);
    let mut hosts = three_hosts(&cluster, "canary_restart");
    let stable = hosts[0].site.current().revision;
    let (code, out, err) = hosts[1].cli(&["patch", "--canary", "name=w1", r#"{"n":2}"#]);
    assert_eq!(code, 0, "{err}");
    let candidate = started(&out);
    let pick = |who: &str| match who.ends_with("/w1") {
        true => candidate,
        false => stable,
    };
    wait_serving(&hosts, "every host's w1 on the candidate", pick);

    // web-2's broker, killed -9 and started again: the canary is intact.
    let broker = hosts[1].broker.take().expect("web-2's broker");
    broker.signal(libc::SIGKILL);
    drop(broker);
    hosts[1].start_broker();
    wait_listed(&hosts);
    let status = hosts[1].status();
    assert_eq!(status["revision"], stable);
    assert_eq!(status["canary"]["candidate_revision"], candidate);
    assert_eq!(status["canary"]["stable_revision"], stable);
    assert_eq!(status["canary"]["selector"], "name=w1");
    let w1: Vec<String> = (1..=3).map(|i| format!("web-{i}/w1")).collect();
    assert_eq!(selected_by(&hosts[1]), w1);
    assert_eq!(hosts[1].site.current().revision, stable);
    wait_serving(&hosts, "the same workers on the candidate", pick);
    let (code, _, err) = hosts[1].cli(&["patch", r#"{"n":3}"#]);
    assert_eq!((code, err), (1, refusal(candidate, "name=w1")));

    // --force through web-1 ends it everywhere: one new revision for all.
    let watch = NoGoingBack::watch(ports(&hosts));
    let (code, out, err) = hosts[0].cli(&["patch", "--force", r#"{"n":3}"#]);
    assert_eq!(code, 0, "{err}\n{}", hosts[0].log());
    let forced: u64 = out
        .trim_end()
        .strip_prefix("revision ")
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {out:?}"));
    assert!(forced > candidate);
    wait_serving(&hosts, "every worker on the forced write", |_| forced);
    assert_eq!(watch.finish(), Vec::<String>::new());
    for host in &hosts {
        eventually(&format!("{} to end the canary", host.name), || {
            host.status()["canary"].is_null().then_some(())
        });
        assert_eq!(
            host.site.current().json_str().unwrap(),
            r#"{"model":"a","n":3}"#
        );
    }
    let (_, out, _) = hosts[2].cli(&["history"]);
    let rows: Vec<&str> = out.lines().rev().take(2).collect();
    assert!(
        rows[0].ends_with(&format!(
            "patch     aborted canary {candidate}: replaced by a forced write"
        )),
        "{out}"
    );
    assert!(rows[1].ends_with("patch     canary to name=w1"), "{out}");
}
