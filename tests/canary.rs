//! Canary rollouts with real binaries: a broker, eight named workers, and
//! `broker patch --canary`, `broker promote`, `broker abort`, `--bake`. Each
//! worker's revision is read from its own `/args` (X-Args-Revision), by pid.
mod common;

use common::*;
use std::collections::BTreeMap;
use std::process::Command;

fn cli(site: &Site, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(BROKER);
    cmd.arg(args[0])
        .arg("--socket")
        .arg(site.socket())
        .args(&args[1..]);
    run(&mut cmd)
}

/// A worker named `name` on a port of its own.
fn named_worker(site: &Site, name: &str, extra: &[&str]) -> Proc {
    let mut cmd = site.worker_cmd(ANY_PORT, false);
    cmd.arg("--name").arg(name).args(extra);
    site.spawn_worker(cmd)
}

struct Fleet {
    names: Vec<String>,
    workers: Vec<Proc>,
}

impl Fleet {
    fn start(site: &Site, n: usize) -> Self {
        let names: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
        let workers = names.iter().map(|n| named_worker(site, n, &[])).collect();
        let fleet = Self { names, workers };
        fleet.wait_listed(site);
        fleet
    }

    /// Until the broker lists every worker (a canary selects among those).
    fn wait_listed(&self, site: &Site) {
        eventually("the broker to list every worker", || {
            let status = status_json(site);
            let listed = status["followers"].as_array()?.len();
            (listed == self.workers.len()).then_some(())
        });
    }

    /// Each worker's name and HTTP port.
    fn ports(&self) -> Vec<(String, u16)> {
        self.names
            .iter()
            .cloned()
            .zip(self.workers.iter().map(Proc::http_port))
            .collect()
    }

    /// Each worker's name and the revision its /args serves.
    fn serving(&self) -> BTreeMap<String, u64> {
        self.names
            .iter()
            .zip(&self.workers)
            .map(|(name, w)| (name.clone(), revision_of(w)))
            .collect()
    }

    /// Waits until `pick(name)` says which revision each worker serves.
    fn wait_serving(&self, what: &str, pick: impl Fn(&str) -> u64) -> BTreeMap<String, u64> {
        eventually(what, || {
            let serving = self.serving();
            serving
                .iter()
                .all(|(name, revision)| *revision == pick(name))
                .then_some(serving)
        })
    }
}

fn revision_of(worker: &Proc) -> u64 {
    get(worker.http_port(), "/args")
        .header("x-args-revision")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn status_json(site: &Site) -> serde_json::Value {
    let (code, out, err) = cli(site, &["status", "--json"]);
    assert_eq!(code, 0, "broker status: {err}");
    serde_json::from_str(&out).expect("status --json is JSON")
}

/// The names the broker marks as selected by the running canary.
fn selected(site: &Site) -> Vec<String> {
    let status = status_json(site);
    let mut names: Vec<String> = status["followers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["canary"] == true)
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_canary_of_2_then_promote_reaches_all_8_and_no_worker_goes_back() {
    let site = Site::new(r#"{"v": 1}"#);
    let _broker = site.start_broker();
    let fleet = Fleet::start(&site, 8);

    let (code, out, err) = cli(&site, &["patch", "--canary", "2", r#"{"v": 2}"#]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "revision 2\ncanary: revision 2 goes to 2 only; `broker promote` gives it to everyone, `broker abort` takes it back\n"
    );
    let chosen = selected(&site);
    assert_eq!(chosen.len(), 2, "{chosen:?}");
    let serving = fleet.wait_serving("the 2 selected workers on the candidate", |name| {
        if chosen.iter().any(|c| c == name) {
            2
        } else {
            1
        }
    });
    assert_eq!(serving.values().filter(|r| **r == 2).count(), 2);
    // Plain readers get the stable revision.
    assert_eq!(get_args(&site.socket()).revision, 1);
    let status = status_json(&site);
    assert_eq!(status["revision"], 1);
    assert_eq!(status["canary"]["candidate_revision"], 2);
    assert_eq!(status["canary"]["stable_revision"], 1);
    assert_eq!(status["canary"]["selector"], "2");
    // The file holds what plain readers get.
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(site.args()).unwrap()).unwrap();
    assert_eq!(file, serde_json::json!({"v": 1}));

    // A plain write while the canary runs is refused, naming it.
    let (code, out, err) = cli(&site, &["patch", r#"{"v": 3}"#]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "broker: error: a canary runs (candidate revision 2 to 2): promote or abort it first, or write with --force, which aborts it\n"
    );
    // So is a second canary.
    let (code, _, err) = cli(&site, &["patch", "--canary", "50%", r#"{"v": 3}"#]);
    assert_eq!(code, 1);
    assert!(err.contains("a canary runs (candidate revision 2"), "{err}");

    let watch = NoGoingBack::watch(fleet.ports());
    let (code, out, err) = cli(&site, &["promote"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "revision 2 promoted: every follower and reader gets it\n"
    );
    fleet.wait_serving("every worker on the promoted revision", |_| 2);
    assert_eq!(watch.finish(), Vec::<String>::new());
    assert_eq!(get_args(&site.socket()).revision, 2);
    assert!(status_json(&site)["canary"].is_null());
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(site.args()).unwrap()).unwrap();
    assert_eq!(file, serde_json::json!({"v": 2}));

    // The history says what happened; the next write is revision 3.
    let (code, out, _) = cli(&site, &["history"]);
    assert_eq!(code, 0);
    let last = out.lines().last().unwrap();
    assert!(
        last.ends_with("patch     canary to 2 followers (2); promoted"),
        "{out}"
    );
    assert_eq!(site.patch(r#"{"v": 3}"#, None).unwrap().revision, 3);
    let (code, out, _) = cli(&site, &["promote"]);
    assert_eq!((code, out.as_str()), (1, ""));
}

#[test]
fn a_share_picks_the_same_workers_after_they_restart() {
    let site = Site::new(r#"{"v": 1}"#);
    let _broker = site.start_broker();
    let mut fleet = Fleet::start(&site, 8);
    let (code, _, err) = cli(&site, &["patch", "--canary", "25%", r#"{"v": 2}"#]);
    assert_eq!(code, 0, "{err}");
    let before = selected(&site);
    assert!(!before.is_empty());
    let pick = |name: &str| {
        if before.iter().any(|c| c == name) {
            2
        } else {
            1
        }
    };
    fleet.wait_serving("the selected workers on the candidate", pick);

    // Every worker restarts (new pids, new ports, same names).
    for w in &mut fleet.workers {
        w.stop();
    }
    fleet.workers = fleet
        .names
        .iter()
        .map(|n| named_worker(&site, n, &[]))
        .collect();
    fleet.wait_listed(&site);
    assert_eq!(selected(&site), before);
    fleet.wait_serving("the same workers on the candidate after a restart", pick);
    // A worker that joins mid-canary is selected by the same rule.
    let names: Vec<String> = (8..40).map(|i| format!("w{i}")).collect();
    let rule_picks = names.iter().any(|n| {
        let w = named_worker(&site, n, &[]);
        eventually("the newcomer to be listed", || {
            status_json(&site)["followers"]
                .as_array()?
                .iter()
                .find(|f| f["name"] == n.as_str())
                .cloned()
        });
        let chosen = selected(&site).iter().any(|s| s == n);
        let expect = if chosen { 2 } else { 1 };
        eventually("the newcomer to serve what its selection says", || {
            (revision_of(&w) == expect).then_some(())
        });
        chosen
    });
    assert!(rule_picks, "25% of 32 newcomers picks at least one");
}

#[test]
fn a_rejecting_canary_worker_aborts_a_baked_canary_and_everyone_serves_stable() {
    let site = Site::new(r#"{"v": 1}"#);
    let schema = site.path("strict.json");
    std::fs::write(
        &schema,
        r#"{"properties": {"v": {"type": "integer", "maximum": 1}}}"#,
    )
    .unwrap();
    let _broker = site.start_broker();
    let mut fleet = Fleet::start(&site, 3);
    // One more worker, the canary, that rejects v > 1.
    fleet.names.push("canary-1".to_owned());
    fleet.workers.push(named_worker(
        &site,
        "canary-1",
        &["--schema", schema.to_str().unwrap()],
    ));
    fleet.wait_listed(&site);

    let (code, _, err) = cli(
        &site,
        &[
            "patch",
            "--canary",
            "name=canary-*",
            "--bake",
            "30s",
            r#"{"v": 2}"#,
        ],
    );
    assert_eq!(code, 0, "{err}");
    // Rejected: aborted at once, with a new revision holding v=1.
    let status = eventually("the canary to be aborted", || {
        let status = status_json(&site);
        status["canary"].is_null().then_some(status)
    });
    assert_eq!(status["revision"], 3);
    fleet.wait_serving("every worker on the abort's revision", |_| 3);
    for w in &fleet.workers {
        assert_eq!(get(w.http_port(), "/args").body, r#"{"args":{"v":1}}"#);
    }
    let (_, out, _) = cli(&site, &["history"]);
    let rows: Vec<&str> = out.lines().collect();
    assert!(
        rows[2].ends_with("patch     canary to name=canary-*"),
        "{out}"
    );
    assert!(
        rows[3].contains("abort     aborted canary 2: canary-1 (pid ")
            && rows[3].contains("rejected it: the document does not satisfy the schema"),
        "{out}"
    );
}

#[test]
fn a_baked_canary_is_promoted_by_itself() {
    let site = Site::new(r#"{"v": 1}"#);
    let _broker = site.start_broker();
    let fleet = Fleet::start(&site, 4);
    let (code, _, err) = cli(
        &site,
        &["patch", "--canary", "1", "--bake", "300ms", r#"{"v": 2}"#],
    );
    assert_eq!(code, 0, "{err}");
    eventually("the canary to be promoted", || {
        status_json(&site)["canary"].is_null().then_some(())
    });
    fleet.wait_serving("every worker on the promoted candidate", |_| 2);
}

#[test]
fn abort_takes_every_worker_forward_to_the_stable_document() {
    let site = Site::new(r#"{"v": 1}"#);
    let _broker = site.start_broker();
    let fleet = Fleet::start(&site, 4);
    let (code, _, err) = cli(&site, &["patch", "--canary", "2", r#"{"v": 2}"#]);
    assert_eq!(code, 0, "{err}");
    let chosen = selected(&site);
    fleet.wait_serving("the candidate on 2", |n| {
        if chosen.iter().any(|c| c == n) {
            2
        } else {
            1
        }
    });
    let watch = NoGoingBack::watch(fleet.ports());
    let (code, out, err) = cli(&site, &["abort", "--reason", "looks slow"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "revision 3: the stable document again, for every follower\n"
    );
    fleet.wait_serving("every worker on the abort", |_| 3);
    assert_eq!(watch.finish(), Vec::<String>::new());
    assert_eq!(site.current().json_str().unwrap(), r#"{"v":1}"#);
    let (_, out, _) = cli(&site, &["history"]);
    assert!(
        out.lines()
            .last()
            .unwrap()
            .ends_with("abort     aborted canary 2: looks slow"),
        "{out}"
    );
    // --force replaces a canary: aborted first, then the write.
    let (code, _, _) = cli(&site, &["patch", "--canary", "1", r#"{"v": 5}"#]);
    assert_eq!(code, 0);
    let (code, out, err) = cli(&site, &["patch", "--force", r#"{"v": 6}"#]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "revision 6\n");
    fleet.wait_serving("every worker on the forced write", |_| 6);
    let (_, out, _) = cli(&site, &["history"]);
    assert!(
        out.contains("abort     aborted canary 4: replaced by a forced write"),
        "{out}"
    );
}

#[test]
fn a_broker_killed_mid_canary_restarts_with_it() {
    let site = Site::new(r#"{"v": 1}"#);
    let broker = site.start_broker();
    let fleet = Fleet::start(&site, 4);
    let (code, _, err) = cli(&site, &["patch", "--canary", "2", r#"{"v": 2}"#]);
    assert_eq!(code, 0, "{err}");
    let chosen = selected(&site);
    let pick = |n: &str| if chosen.iter().any(|c| c == n) { 2 } else { 1 };
    fleet.wait_serving("the candidate on 2", pick);

    broker.signal(libc::SIGKILL);
    drop(broker);
    let _broker = site.start_broker();
    fleet.wait_listed(&site);
    let status = status_json(&site);
    assert_eq!(status["revision"], 1);
    assert_eq!(status["canary"]["candidate_revision"], 2);
    assert_eq!(status["canary"]["selector"], "2");
    assert_eq!(
        selected(&site),
        chosen,
        "the same followers, neither promoted nor lost"
    );
    fleet.wait_serving("the same workers on the candidate", pick);
    assert_eq!(get_args(&site.socket()).revision, 1);
    let (code, _, err) = cli(&site, &["promote", "--candidate", "2"]);
    assert_eq!(code, 0, "{err}");
    fleet.wait_serving("every worker on the promoted candidate", |_| 2);
}

#[test]
fn bad_selectors_and_no_match_are_refused_with_one_line() {
    let site = Site::new(r#"{"v": 1}"#);
    let _broker = site.start_broker();
    let (code, _, err) = cli(&site, &["patch", "--canary", "everyone", r#"{"v": 2}"#]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "broker: error: --canary \"everyone\": not a selector; give N (a count), P% (a share), name=GLOB or host=NAME[,NAME...]\n"
    );
    let (code, _, err) = cli(&site, &["patch", "--canary", "2", r#"{"v": 2}"#]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "broker: error: --canary 2 selects none of the 0 followers connected; nothing was changed\n"
    );
    let (code, _, err) = cli(&site, &["patch", "--bake", "10s", r#"{"v": 2}"#]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(site.current().revision, 1);
}

/// The Rust library's followers (`argsbroker::client::follow_with`, named)
/// follow a canary as the worker does: the selected one's `Live` serves the
/// candidate, the other's the stable revision, until the canary is promoted
/// over gRPC (`PatchArgs { canary }`, `PromoteCanary`).
#[test]
fn library_followers_serve_what_their_selection_says() {
    let site = Site::new(r#"{"v": 1}"#);
    let _broker = site.start_broker();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let follow = |name: &str| {
        let options = argsbroker::client::FollowOptions {
            name: Some(name.to_owned()),
            validate: None,
        };
        runtime
            .block_on(argsbroker::client::follow_with(
                site.socket(),
                PATIENCE,
                options,
                |snapshot| snapshot,
            ))
            .expect("follow the broker")
    };
    let api = follow("api-1");
    let batch = follow("batch");
    eventually("both followers listed", || {
        (status_json(&site)["followers"].as_array()?.len() == 2).then_some(())
    });
    let request = argsbroker::pb::PatchArgsRequest {
        merge_patch: r#"{"v": 2}"#.to_owned(),
        canary: "name=api-*".to_owned(),
        ..Default::default()
    };
    let candidate =
        call(&site.socket(), async |mut c| c.patch_args(request).await).expect("a canary start");
    assert_eq!(candidate.revision, 2);
    assert_eq!(runtime.block_on(api.revision_at_least(2)), 2);
    assert_eq!(api.load().document.json().as_ref(), br#"{"v":2}"#);
    assert_eq!(batch.revision(), 1);
    assert_eq!(selected(&site), ["api-1"]);
    // A plain write is refused while it runs.
    let refused = site.patch(r#"{"v": 3}"#, None).expect_err("refused");
    assert_eq!(refused.0, tonic::Code::FailedPrecondition);

    let promoted = call(&site.socket(), async |mut c| {
        c.promote_canary(argsbroker::pb::PromoteCanaryRequest {
            candidate_revision: Some(2),
        })
        .await
    })
    .expect("promote");
    assert_eq!(promoted.revision, 2);
    assert_eq!(runtime.block_on(batch.revision_at_least(2)), 2);
    assert_eq!(batch.load().document.json().as_ref(), br#"{"v":2}"#);
}
