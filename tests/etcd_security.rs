//! The many-hosts backend's security, limits and bad input, against a real
//! one-member etcd (tests/common/etcd.rs): etcd users and roles, TLS with
//! client certificates, etcd's request limit, flags that do not go
//! together, values in etcd that are not documents, and a document kept
//! exact through etcd from one host to another.
mod common;

use common::etcd::{run_bounded, Cluster, ServerTls};
use common::{args_body, get, hold_port, Site, BROKER};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const KEY: &str = "/argsbroker/security";

/// How long a broker that is expected to exit may run.
const EXIT_LIMIT: Duration = Duration::from_secs(30);

/// A broker command with no ARGSBROKER_* variable from the test's
/// environment (each flag has one).
fn broker() -> Command {
    let mut cmd = Command::new(BROKER);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ARGSBROKER_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// `broker --etcd-endpoints EPS --etcd-key KEY --state-dir SITE/state
/// --socket SITE/b.sock EXTRA...`
fn etcd_broker(site: &Site, endpoints: &str, extra: &[&str]) -> Command {
    let mut cmd = broker();
    cmd.args(["--etcd-endpoints", endpoints, "--etcd-key", KEY])
        .arg("--state-dir")
        .arg(site.path("state"))
        .arg("--socket")
        .arg(site.socket())
        .args(extra);
    cmd
}

/// Runs a command that must exit: (exit code, stderr).
fn exits(cmd: Command) -> (i32, String) {
    let out = run_bounded(cmd, EXIT_LIMIT);
    let code = out.status.code().unwrap_or(-1);
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A broker start that must fail with exit 1 and exactly `line` on stderr.
fn fails_with(cmd: Command, line: &str) {
    let (code, stderr) = exits(cmd);
    assert_eq!(
        (code, stderr.as_str()),
        (1, format!("{line}\n").as_str()),
        "exit code and stderr"
    );
}

/// A usage error: exit 2 and `first` as the first line of clap's message.
fn usage_error(cmd: Command, first: &str) -> String {
    let (code, stderr) = exits(cmd);
    assert_eq!(code, 2, "a usage error; stderr: {stderr}");
    assert_eq!(stderr.lines().next(), Some(first), "stderr: {stderr}");
    stderr
}

/// `etcdctl` against the cluster, with `auth` flags first (--user, TLS files).
fn etcdctl(cluster: &Cluster, auth: &[&str], args: &[&str]) -> Output {
    let all: Vec<&str> = auth.iter().chain(args).copied().collect();
    cluster.etcdctl(&cluster.endpoints(), &all, Duration::from_secs(10))
}

fn etcdctl_ok(cluster: &Cluster, auth: &[&str], args: &[&str]) -> String {
    let out = etcdctl(cluster, auth, args);
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The key's mod_revision, as etcd reports it (0: no key).
fn mod_revision(cluster: &Cluster, auth: &[&str]) -> u64 {
    let text = etcdctl_ok(cluster, auth, &["get", KEY, "-w", "json"]);
    let value: serde_json::Value = serde_json::from_str(&text).expect("etcdctl's JSON");
    value["kvs"][0]["mod_revision"].as_u64().unwrap_or(0)
}

/// The key's value, as `etcdctl get --print-value-only` prints it (without
/// the newline it adds).
fn value_in_etcd(cluster: &Cluster, auth: &[&str]) -> String {
    let text = etcdctl_ok(cluster, auth, &["get", KEY, "--print-value-only"]);
    text.strip_suffix('\n').unwrap_or(&text).to_owned()
}

/// The worker on `port` serves `compact` as the whole document.
fn worker_serves(port: u16, compact: &str) {
    common::eventually(&format!("the worker to serve {compact}"), || {
        let r = get(port, "/args");
        (r.status == 200 && r.body == args_body(compact)).then_some(())
    });
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test file");
    path
}

fn s(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

#[test]
fn etcd_users_a_reader_serves_but_cannot_write_a_writer_can_and_bad_credentials_are_refused() {
    let mut cluster = Cluster::start(1);
    let eps = cluster.endpoints_csv();
    let root: &[&str] = &["--user", "root:rootpw"];
    let new_key = format!("{KEY}-new");
    etcdctl_ok(&cluster, &[], &["put", KEY, r#"{"a":1}"#]);
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "read", KEY],
        &["role", "grant-permission", "reader", "read", &new_key],
        &["user", "add", "ro:ropw"],
        &["user", "grant-role", "ro", "reader"],
        &["role", "add", "writer"],
        &["role", "grant-permission", "writer", "readwrite", KEY],
        &["user", "add", "rw:rwpw"],
        &["user", "grant-role", "rw", "writer"],
        &["auth", "enable"],
    ] {
        etcdctl_ok(&cluster, &[], args);
    }
    let first = mod_revision(&cluster, root);

    // The reader: starts (password from a file), serves reads and workers.
    let reader = Site::new("{}");
    let ro_pw = write_file(reader.dir.path(), "ro.pw", "ropw\n");
    let reader_cmd = etcd_broker(
        &reader,
        &eps,
        &["--etcd-user", "ro", "--etcd-password-file", s(&ro_pw)],
    );
    let mut reader_broker = reader.spawn_broker(reader_cmd);
    let reader_worker = reader.start_worker();
    let reader_port = reader_worker.http_port();
    worker_serves(reader_port, r#"{"a":1}"#);
    assert_eq!(reader.current().revision, first);

    // Its writes are refused by etcd: PERMISSION_DENIED with etcd's reason,
    // exit 1 from `broker patch`; nothing changed, reads go on.
    let refused = format!("etcd refused the write to {KEY}: etcdserver: permission denied");
    assert_eq!(
        reader.patch(r#"{"b":2}"#, None),
        Err((tonic::Code::PermissionDenied, refused.clone()))
    );
    let mut patch = broker();
    patch
        .args(["patch", "--socket", s(&reader.socket())])
        .arg(r#"{"b":2}"#);
    assert_eq!(exits(patch), (1, format!("broker: error: {refused}\n")));
    assert_eq!(mod_revision(&cluster, root), first);
    assert_eq!(reader.current().json, r#"{"a":1}"#);
    assert_eq!(get(reader_port, "/readyz").status, 200);
    worker_serves(reader_port, r#"{"a":1}"#);

    // The writer, its password from ARGSBROKER_ETCD_PASSWORD: writes, and
    // the reader's host follows them.
    let writer = Site::new("{}");
    let writer_cmd = || {
        let mut cmd = etcd_broker(&writer, &eps, &["--etcd-user", "rw"]);
        cmd.env("ARGSBROKER_ETCD_PASSWORD", "rwpw");
        cmd
    };
    let mut writer_broker = writer.spawn_broker(writer_cmd());
    let written = writer
        .patch(r#"{"b":2}"#, None)
        .expect("the writer's patch");
    assert_eq!(written.json, r#"{"a":1,"b":2}"#);
    assert!(written.revision > first);
    assert_eq!(mod_revision(&cluster, root), written.revision);
    assert_eq!(value_in_etcd(&cluster, root), r#"{"a":1,"b":2}"#);
    // Granted the key alone, not the record beside it: said once, and the
    // writes go on with the key alone.
    assert_eq!(
        writer_broker
            .log()
            .matches("going on with the key alone")
            .count(),
        1,
        "{}",
        writer_broker.log()
    );
    worker_serves(reader_port, r#"{"a":1,"b":2}"#);
    assert_eq!(reader.current().revision, written.revision);

    // With etcd down, a broker with a user starts on its last-known-good
    // copy (it cannot authenticate yet) and serves it at once.
    cluster.kill(0);
    assert_eq!(writer_broker.stop().code(), Some(0));
    let _writer_broker = writer.spawn_broker(writer_cmd());
    assert_eq!(writer.current().json, r#"{"a":1,"b":2}"#);
    assert_eq!(writer.current().revision, written.revision);
    // etcd forgets its auth tokens when it restarts: the brokers
    // authenticate again and go on (the writer writes, the reader follows).
    cluster.restart(0);
    let again = common::eventually("a write after etcd restarted", || {
        writer.patch(r#"{"c":3}"#, None).ok()
    });
    assert_eq!(again.json, r#"{"a":1,"b":2,"c":3}"#);
    worker_serves(reader_port, r#"{"a":1,"b":2,"c":3}"#);
    assert!(reader_broker.is_running());

    // A wrong password: exit 1, one line naming the user and what to check.
    let wrong = write_file(reader.dir.path(), "wrong.pw", "nope\n");
    let other = Site::new("{}");
    fails_with(
        etcd_broker(
            &other,
            &eps,
            &["--etcd-user", "ro", "--etcd-password-file", s(&wrong)],
        ),
        &format!(
            "broker: error: etcd at {eps} did not accept the user ro: etcdserver: authentication \
             failed, invalid user ID or password (check --etcd-user, and the password in \
             --etcd-password-file or ARGSBROKER_ETCD_PASSWORD)"
        ),
    );
    // No user while etcd's auth is on: refused at once, not "out of reach".
    fails_with(
        etcd_broker(&other, &eps, &["--startup-timeout", "20"]),
        &format!(
            "broker: error: etcd at {eps} refused to read the key {KEY}: etcdserver: user name is empty"
        ),
    );
    // A reader cannot create a key that is not there from --args.
    let mut cmd = broker();
    cmd.args(["--etcd-endpoints", &eps, "--etcd-key", &new_key])
        .args(["--etcd-user", "ro", "--etcd-password-file", s(&ro_pw)])
        .args(["--args", s(&other.args()), "--socket", s(&other.socket())]);
    fails_with(
        cmd,
        &format!(
            "broker: error: etcd at {eps} refused to create the key {new_key} from the args file: \
             etcdserver: permission denied"
        ),
    );
    // --etcd-user without any password.
    fails_with(
        etcd_broker(&other, &eps, &["--etcd-user", "ro"]),
        "broker: error: --etcd-user needs a password: --etcd-password-file FILE, or the \
         ARGSBROKER_ETCD_PASSWORD variable",
    );
    // The reader kept serving through all of it.
    assert!(reader_broker.is_running());
    assert_eq!(reader_broker.stop().code(), Some(0));
}

#[test]
fn flags_that_do_not_go_together_are_usage_errors_and_missing_files_are_named() {
    let site = Site::new("{}");
    // A port nothing answers on, held for the whole test.
    let nobody = hold_port();
    let eps = format!("http://127.0.0.1:{}", nobody.port);

    // The password is never a flag (ps would show it).
    usage_error(
        etcd_broker(&site, &eps, &["--etcd-user", "ro", "--etcd-password", "x"]),
        "error: unexpected argument '--etcd-password' found",
    );
    // --etcd-endpoints needs --etcd-key.
    let mut cmd = broker();
    cmd.args(["--etcd-endpoints", &eps, "--socket", s(&site.socket())]);
    let stderr = usage_error(
        cmd,
        "error: the following required arguments were not provided:",
    );
    assert_eq!(
        stderr.lines().nth(1),
        Some("  --etcd-key <KEY>"),
        "{stderr}"
    );
    // An empty key.
    let mut cmd = broker();
    cmd.args(["--etcd-endpoints", &eps, "--etcd-key", ""]);
    usage_error(
        cmd,
        "error: invalid value '' for '--etcd-key <KEY>': the etcd key cannot be empty",
    );
    // etcd, or a file to --watch: not both.
    usage_error(
        etcd_broker(&site, &eps, &["--watch"]),
        "error: the argument '--etcd-endpoints <URLS>' cannot be used with '--watch'",
    );
    // A client certificate needs its key.
    let stderr = usage_error(
        etcd_broker(&site, &eps, &["--etcd-cert", "client.crt"]),
        "error: the following required arguments were not provided:",
    );
    assert_eq!(
        stderr.lines().nth(1),
        Some("  --etcd-cert-key <FILE>"),
        "{stderr}"
    );

    // No --args and no --state-dir: nowhere for the last-known-good copy.
    let mut cmd = broker();
    cmd.args(["--etcd-endpoints", &eps, "--etcd-key", KEY])
        .args(["--socket", s(&site.socket())]);
    fails_with(
        cmd,
        "broker: error: --etcd-endpoints needs --state-dir DIR (or --args FILE, whose FILE.state \
         it uses): the broker keeps its last-known-good copy there",
    );
    // A password file that is not there.
    let missing = site.path("no-such.pw");
    fails_with(
        etcd_broker(
            &site,
            &eps,
            &["--etcd-user", "ro", "--etcd-password-file", s(&missing)],
        ),
        &format!(
            "broker: error: cannot read the etcd password file {} (--etcd-password-file): No such \
             file or directory (os error 2)",
            missing.display()
        ),
    );
    // TLS files with an http:// endpoint.
    let ca = write_file(site.dir.path(), "ca.crt", "not used");
    fails_with(
        etcd_broker(&site, &eps, &["--etcd-cacert", s(&ca)]),
        &format!(
            "broker: error: --etcd-cacert, --etcd-cert and --etcd-cert-key need https:// \
             endpoints; {eps} is not one"
        ),
    );

    // --help shows the etcd flags under their own heading.
    let mut help = broker();
    help.arg("--help");
    let out = run_bounded(help, EXIT_LIMIT);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l == "Many hosts (etcd):"),
        "--help: {text}"
    );
    let heading = text.find("Many hosts (etcd):").unwrap_or(0);
    for flag in [
        "--etcd-endpoints <URLS>",
        "--etcd-key <KEY>",
        "--etcd-password-file <FILE>",
    ] {
        assert!(text[heading..].contains(flag), "{flag} under the heading");
    }
}

#[test]
fn values_in_etcd_that_are_not_documents() {
    let cluster = Cluster::start(1);
    let eps = cluster.endpoints_csv();
    let site = Site::new("{}");

    // No key and no --args to make it.
    fails_with(
        etcd_broker(&site, &eps, &[]),
        &format!(
            "broker: error: the key {KEY} does not exist in etcd at {eps}; give --args FILE to \
             create it"
        ),
    );

    // Not a JSON object before the broker starts: it does not start.
    etcdctl_ok(&cluster, &[], &["put", KEY, "[1,2]"]);
    let bad = mod_revision(&cluster, &[]);
    fails_with(
        etcd_broker(&site, &eps, &[]),
        &format!(
            "broker: error: the value of {KEY} in etcd (revision {bad}) is not a valid args \
             document: the top level is an array: expected a JSON object"
        ),
    );

    // Not JSON while it runs: it keeps serving the last valid revision and
    // says why in its log; the next valid value is served.
    etcdctl_ok(&cluster, &[], &["put", KEY, r#"{"v":1}"#]);
    let good = mod_revision(&cluster, &[]);
    let broker = site.spawn_broker(etcd_broker(&site, &eps, &[]));
    let worker = site.start_worker();
    let port = worker.http_port();
    worker_serves(port, r#"{"v":1}"#);
    etcdctl_ok(&cluster, &[], &["put", KEY, "not json"]);
    let garbage = mod_revision(&cluster, &[]);
    let line = broker.log_line("not a valid args document");
    assert!(
        line.contains(&format!("revision={garbage}")) && line.contains(&format!("serving={good}")),
        "{line}"
    );
    assert!(
        line.contains("etcd holds a value that is not a valid args document; still serving the last valid one"),
        "{line}"
    );
    let served = site.current();
    assert_eq!(served.revision, good);
    assert_eq!(served.json, r#"{"v":1}"#);
    worker_serves(port, r#"{"v":1}"#);
    etcdctl_ok(&cluster, &[], &["put", KEY, r#"{"v":2}"#]);
    worker_serves(port, r#"{"v":2}"#);
    assert_eq!(site.current().revision, mod_revision(&cluster, &[]));
}

#[test]
fn etcd_request_limit_refuses_large_documents_before_etcd_sees_them() {
    let cluster = Cluster::start_with(1, &["--max-request-bytes", "65536"]);
    let eps = cluster.endpoints_csv();
    let limit: &[&str] = &["--etcd-max-request-bytes", "65536"];

    // A seed file over the limit while the key is absent: nothing created.
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(70_000));
    let site = Site::new(&big);
    let mut cmd = etcd_broker(&site, &eps, limit);
    cmd.arg("--args").arg(site.args());
    fails_with(
        cmd,
        &format!(
            "broker: error: the args file {} cannot seed etcd: it is {} bytes, over the limit of \
             61440 bytes that etcd accepts in one request (--etcd-max-request-bytes 65536)",
            site.args().display(),
            big.len()
        ),
    );
    assert_eq!(mod_revision(&cluster, &[]), 0, "the key was created");
    // The same seed with the default --etcd-max-request-bytes (1.5 MiB):
    // etcd itself refuses it, and the broker says so at once.
    let mut cmd = etcd_broker(&site, &eps, &["--startup-timeout", "20"]);
    cmd.arg("--args").arg(site.args());
    fails_with(
        cmd,
        &format!(
            "broker: error: etcd at {eps} refused to create the key {KEY} from the args file as \
             too large (etcdserver: request is too large): its --max-request-bytes is below this \
             broker's --etcd-max-request-bytes 1572864"
        ),
    );
    assert_eq!(mod_revision(&cluster, &[]), 0, "the key was created");

    // A small seed creates the key; a ~100 KB SetArgs is RESOURCE_EXHAUSTED.
    std::fs::write(site.args(), r#"{"small":true}"#).expect("write the seed");
    let mut cmd = etcd_broker(&site, &eps, limit);
    cmd.arg("--args").arg(site.args());
    let _broker = site.spawn_broker(cmd);
    let before = site.current();
    assert_eq!(before.revision, mod_revision(&cluster, &[]));
    let huge = format!(r#"{{"pad":"{}"}}"#, "y".repeat(100_000));
    assert_eq!(
        site.set(&huge, None),
        Err((
            tonic::Code::ResourceExhausted,
            format!(
                "the document is {} bytes, over the limit of 61440 bytes that etcd accepts in one \
                 request (--etcd-max-request-bytes 65536)",
                huge.len()
            )
        ))
    );
    assert_eq!(site.current().revision, before.revision);
    assert_eq!(mod_revision(&cluster, &[]), before.revision);
    assert_eq!(value_in_etcd(&cluster, &[]), r#"{"small":true}"#);

    // A broker told a larger limit than etcd's (the default 1.5 MiB): etcd
    // refuses the request, and that is RESOURCE_EXHAUSTED too, saying why.
    let unaware = Site::new("{}");
    let _unaware = unaware.spawn_broker(etcd_broker(&unaware, &eps, &[]));
    assert_eq!(
        unaware.set(&huge, None),
        Err((
            tonic::Code::ResourceExhausted,
            format!(
                "etcd at {eps} refused the write as too large (etcdserver: request is too \
                 large): its --max-request-bytes is below this broker's \
                 --etcd-max-request-bytes 1572864; nothing was changed"
            )
        ))
    );
    assert_eq!(unaware.current().revision, before.revision);
    assert_eq!(mod_revision(&cluster, &[]), before.revision);
}

/// PEM files made with the openssl CLI: a CA, a server certificate for
/// 127.0.0.1 and the test clusters' own loopback address (IP SANs) and a
/// client certificate, both signed by the CA.
struct Certs {
    ca: PathBuf,
    server: ServerTls,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|err| {
            panic!("cannot run openssl: {err} (Debian: apt-get install openssl; tests/prerequisites does)")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_certs(dir: &Path) -> Certs {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt", "-days", "2"]);
    ca.extend(["-subj", "/CN=argsbroker test CA"]);
    openssl(dir, &ca);
    let server_ext = format!(
        "subjectAltName=IP:127.0.0.1,IP:{}\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n",
        common::etcd::loopback()
    );
    for (name, cn, ext) in [
        ("server", "etcd", server_ext.as_str()),
        (
            "client",
            "argsbroker",
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        ),
    ] {
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let ext_file = format!("{name}.ext");
        write_file(dir, &ext_file, ext);
        let subject = format!("/CN={cn}");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext_file,
            ],
        );
    }
    Certs {
        ca: dir.join("ca.crt"),
        server: ServerTls {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            ca: dir.join("ca.crt"),
        },
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    }
}

#[test]
fn tls_with_client_certificates() {
    let site = Site::new(r#"{"tls":1}"#);
    let certs = make_certs(site.dir.path());
    let cluster = Cluster::start_tls(1, &certs.server, &[]);
    let eps = cluster.endpoints_csv();
    let https = format!("https://{}:", common::etcd::loopback());
    assert!(eps.starts_with(&https), "{eps}");
    let tls_ctl: &[&str] = &[
        "--cacert",
        s(&certs.ca),
        "--cert",
        s(&certs.client_cert),
        "--key",
        s(&certs.client_key),
    ];

    // With the CA and a client certificate: seeds the key, serves, writes.
    let mut cmd = etcd_broker(
        &site,
        &eps,
        &[
            "--etcd-cacert",
            s(&certs.ca),
            "--etcd-cert",
            s(&certs.client_cert),
            "--etcd-cert-key",
            s(&certs.client_key),
        ],
    );
    cmd.arg("--args").arg(site.args());
    let _broker = site.spawn_broker(cmd);
    let worker = site.start_worker();
    let port = worker.http_port();
    worker_serves(port, r#"{"tls":1}"#);
    let written = site.patch(r#"{"tls":2}"#, None).expect("a write over TLS");
    assert_eq!(written.revision, mod_revision(&cluster, tls_ctl));
    assert_eq!(value_in_etcd(&cluster, tls_ctl), r#"{"tls":2}"#);
    worker_serves(port, r#"{"tls":2}"#);

    // Without the client certificate, etcd refuses the handshake: exit 1
    // after --startup-timeout, in one line. (What the client sees of the
    // refusal varies with timing: etcd's alert, or the connection cut.)
    let other = Site::new("{}");
    let (code, stderr) = exits(etcd_broker(
        &other,
        &eps,
        &["--etcd-cacert", s(&certs.ca), "--startup-timeout", "2"],
    ));
    let prefix = format!("broker: error: etcd at {eps} is out of reach (transport error: ");
    let suffix = format!(
        ") after --startup-timeout 2s, and the state directory {} holds no last-known-good copy \
         to serve\n",
        other.path("state").display()
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with(&prefix) && stderr.ends_with(&suffix) && stderr.lines().count() == 1,
        "{stderr}"
    );
    // The client certificate without its key: a usage error.
    usage_error(
        etcd_broker(
            &other,
            &eps,
            &[
                "--etcd-cacert",
                s(&certs.ca),
                "--etcd-cert",
                s(&certs.client_cert),
            ],
        ),
        "error: the following required arguments were not provided:",
    );
}

#[test]
fn numbers_key_order_and_unicode_stay_exact_from_host_to_host_through_etcd() {
    let cluster = Cluster::start(1);
    let eps = cluster.endpoints_csv();
    let a = Site::new(r#"{"seed":0}"#);
    let mut cmd = etcd_broker(&a, &eps, &[]);
    cmd.arg("--args").arg(a.args());
    let _broker_a = a.spawn_broker(cmd);
    let b = Site::new("{}");
    let _broker_b = b.spawn_broker(etcd_broker(&b, &eps, &[]));
    let worker_b = b.start_worker();
    let port = worker_b.http_port();
    worker_serves(port, r#"{"seed":0}"#);

    let document = "{ \"z\": 123456789012345678901234567890, \"a\": 1.50, \"e\": 1e400,\n  \
                    \"u\": \"é😀\\u00e9\", \"n\": [-0, 0.1e-7] }";
    // The compact text every host serves, as in file mode: digits and key
    // order as sent, escapes decoded, exponents with their sign.
    let compact =
        r#"{"z":123456789012345678901234567890,"a":1.50,"e":1e+400,"u":"é😀é","n":[-0,0.1e-7]}"#;
    let written = a.set(document, None).expect("SetArgs on host A");
    assert_eq!(written.json, compact);
    worker_serves(port, compact);
    let body = get(port, "/args").body;
    assert_eq!(body.as_bytes(), args_body(compact).as_bytes());
    assert_eq!(b.current().revision, written.revision);
    assert_eq!(value_in_etcd(&cluster, &[]), compact);
    assert_eq!(mod_revision(&cluster, &[]), written.revision);
}
