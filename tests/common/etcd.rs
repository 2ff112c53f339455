//! A real etcd cluster for tests: `Cluster::start(3)` runs three `etcd`
//! members (Debian's `etcd-server`; `tests/run` installs it) on loopback
//! ports no other process uses (see [`loopback`]), with their data under a
//! temp directory, and returns once every member reports itself healthy.
//! Members are stopped by their own pid (SIGKILL, then reaped), never by
//! name; `kill` and `restart` fault one member the same way.
//!
//! Self-contained (std, libc, tempfile), so that both the integration tests
//! (`common::etcd`) and the broker's in-process tests can use it; the latter
//! include it with `#[path = "../../tests/common/etcd.rs"] mod etcd_cluster;`.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// How long a cluster (or one restarted member) may take to become healthy.
pub const STARTUP: Duration = Duration::from_secs(30);

/// The `etcd` binary: `$ETCD_BIN`, or `etcd` on the PATH.
pub fn etcd_bin() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".to_owned())
}

/// The `etcdctl` binary: `$ETCDCTL_BIN`, or `etcdctl` on the PATH.
pub fn etcdctl_bin() -> String {
    std::env::var("ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".to_owned())
}

/// The loopback address every cluster of this test process listens on.
///
/// Why not ports the kernel picks: a 3-member cluster needs its peer URLs
/// (`--initial-cluster`) before any member starts, and a member restarted
/// after `kill` must come back on the ports its peers and the brokers were
/// given. Probing free ports and releasing them races with every other
/// process on the machine. Instead each test process gets an address of
/// its own in 127.0.0.0/8 (all of it is loopback on Linux), made from its
/// pid, so no two live test processes share one; and on it, ports below
/// the kernel's ephemeral range (32768 and up by default), so that no port
/// the kernel picks for anyone (a bind to port 0, an outgoing connection,
/// which comes from 127.0.0.1 anyway) can be one of them. Only a process
/// that binds one of these fixed ports on this very address, or on every
/// address, could collide: if one does at start, etcd says `address
/// already in use` and the cluster is started again on the next ports.
pub fn loopback() -> Ipv4Addr {
    let pid = std::process::id();
    // Linux pids are below 2^22: 22 bits fit in the last three bytes.
    let [_, high, mid, low] = pid.to_be_bytes();
    Ipv4Addr::new(127, 1 + high % 254, mid, low)
}

/// The first port of the range clusters use, and how many ports each
/// cluster's block holds (three per member at most).
const FIRST_PORT: u16 = 20_000;
const BLOCK: u16 = 10;
const BLOCKS: u16 = 1_000;

/// The next block of ports in this process (20000 to 29999, then again).
fn next_block() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    FIRST_PORT + (NEXT.fetch_add(1, Ordering::Relaxed) % BLOCKS) * BLOCK
}

/// One etcd member: its address, ports and data stay the same across restarts.
pub struct Member {
    pub name: String,
    pub host: Ipv4Addr,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// `http`, or `https` in a cluster started with [`Cluster::start_tls`].
    pub scheme: &'static str,
    /// Where `/health` is answered over plain HTTP: the client port, or
    /// with TLS a separate `--listen-metrics-urls` port.
    pub health_port: u16,
    child: Option<Child>,
    /// How many times it was started, for the log file's name.
    starts: u32,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.host, self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:{}", self.host, self.peer_port)
    }

    /// Where `/health` is answered over plain HTTP.
    pub fn health_addr(&self) -> SocketAddr {
        (self.host, self.health_port).into()
    }

    /// Whether etcd said it could not bind one of its addresses.
    fn could_not_bind(&self) -> bool {
        self.log_text().contains("address already in use")
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Whether the member's process is alive (reaping it if it exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            None => false,
            Some(child) => match child.try_wait().expect("try_wait etcd") {
                None => true,
                Some(_) => {
                    self.child = None;
                    false
                }
            },
        }
    }

    /// The exit status, if the member was started and has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait etcd"))
    }

    /// SIGKILL to its pid, then reaped. Nothing if it is not running.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A running etcd cluster in a temp directory; every member is killed and
/// the directory removed when dropped.
pub struct Cluster {
    pub members: Vec<Member>,
    initial_cluster: String,
    token: String,
    /// Extra flags for every member (e.g. `--max-request-bytes`).
    extra_args: Vec<String>,
    tls: Option<ServerTls>,
    // Removed after Drop has killed every member.
    dir: tempfile::TempDir,
}

/// PEM files for a cluster's TLS client URLs: the server's certificate
/// and key, and the CA that client certificates must be signed by
/// (`--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Cluster {
    /// Starts an `n`-member cluster and waits until every member is healthy.
    /// If one of its ports is taken (see [`loopback`]), the whole cluster is
    /// started again on the next block of ports.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, &[])
    }

    /// [`Cluster::start`], with `extra_args` given to every member (e.g.
    /// `["--max-request-bytes", "65536"]`).
    pub fn start_with(n: usize, extra_args: &[&str]) -> Self {
        Self::start_configured(n, extra_args, None)
    }

    /// [`Cluster::start_with`], serving clients over TLS only (`https://`
    /// endpoints) and requiring a client certificate signed by `tls.ca`.
    /// Peers talk plain HTTP; `/health` is polled on a plain metrics port.
    pub fn start_tls(n: usize, tls: &ServerTls, extra_args: &[&str]) -> Self {
        Self::start_configured(n, extra_args, Some(tls.clone()))
    }

    fn start_configured(n: usize, extra_args: &[&str], tls: Option<ServerTls>) -> Self {
        which_or_panic(&etcd_bin());
        let extra_args: Vec<String> = extra_args.iter().map(|a| (*a).to_owned()).collect();
        let mut last_logs = String::new();
        for _attempt in 0..3 {
            let mut cluster = Self::spawn(n, &extra_args, tls.clone());
            match cluster.wait_all_healthy(STARTUP) {
                Ok(()) => return cluster,
                // Dropping kills every member; try again on other ports.
                Err(why) if cluster.members.iter().any(Member::could_not_bind) => {
                    last_logs = format!("{why}\n{}", cluster.logs());
                }
                Err(why) => panic!("{why}\n{}", cluster.logs()),
            }
        }
        panic!("the etcd cluster found a port taken in 3 attempts:\n{last_logs}");
    }

    fn spawn(n: usize, extra_args: &[String], tls: Option<ServerTls>) -> Self {
        // /dev/shm where there is one: fsync on tmpfs costs nothing.
        let parent = Path::new("/dev/shm");
        let dir = if parent.is_dir() {
            tempfile::Builder::new().prefix("etcd-").tempdir_in(parent)
        } else {
            tempfile::Builder::new().prefix("etcd-").tempdir()
        }
        .expect("a temp dir for etcd");
        // Per member: client, peer, and with TLS a plain metrics port.
        let per: u16 = if tls.is_some() { 3 } else { 2 };
        assert!(
            per * n as u16 <= BLOCK,
            "{n} members do not fit a block of ports"
        );
        let first = next_block();
        let port = |i: usize, which: u16| first + per * i as u16 + which;
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                host: loopback(),
                client_port: port(i, 0),
                peer_port: port(i, 1),
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                scheme: if tls.is_some() { "https" } else { "http" },
                health_port: match tls {
                    Some(_) => port(i, 2),
                    None => port(i, 0),
                },
                child: None,
                starts: 0,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "argsbroker-test-{}-{}",
            std::process::id(),
            dir.path()
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("etcd")
        );
        let mut cluster = Self {
            members,
            initial_cluster,
            token,
            extra_args: extra_args.to_vec(),
            tls,
            dir,
        };
        for i in 0..n {
            cluster.spawn_member(i);
        }
        cluster
    }

    fn spawn_member(&mut self, i: usize) {
        let initial_cluster = self.initial_cluster.clone();
        let token = self.token.clone();
        let m = &mut self.members[i];
        m.starts += 1;
        m.log = self.dir.path().join(format!("{}.{}.log", m.name, m.starts));
        let out = File::create(&m.log).expect("create the etcd log");
        let client = m.endpoint();
        let peer = m.peer_url();
        let mut cmd = Command::new(etcd_bin());
        // Flags only: an ETCD_* variable in the test's environment must not
        // change the cluster (etcd reads them as flags).
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(key);
            }
        }
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-token", &token])
            // Ignored when the data directory exists (a restart).
            .args(["--initial-cluster-state", "new"])
            // Fast failure detection: a killed leader is replaced in about a second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(["--log-level", "warn"]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth")
                .arg("--listen-metrics-urls")
                .arg(format!("http://{}", m.health_addr()));
        }
        cmd.args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone the log"))
            .stderr(out);
        m.child = Some(cmd.spawn().unwrap_or_else(|err| {
            panic!(
                "cannot run {}: {err} (install Debian's etcd-server; tests/run does)",
                etcd_bin()
            )
        }));
    }

    /// Every member's client URL, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// The client URLs as one comma-separated list (`--endpoints`).
    pub fn endpoints_csv(&self) -> String {
        self.endpoints().join(",")
    }

    /// SIGKILL member `i` (by its pid) and reap it; its data stays.
    pub fn kill(&mut self, i: usize) {
        assert!(self.members[i].is_running(), "member {i} is not running");
        self.members[i].kill();
    }

    /// Starts a killed member again on its ports and data, and waits until
    /// it reports itself healthy (which needs a quorum with it).
    pub fn restart(&mut self, i: usize) {
        assert!(!self.members[i].is_running(), "member {i} is still running");
        self.spawn_member(i);
        if let Err(why) = self.wait_healthy(&[i], STARTUP) {
            panic!("{why}\n{}", self.logs());
        }
    }

    /// etcd rebuilt from scratch: kills every member (by its pid), deletes
    /// their data directories, and starts a new cluster on the same ports,
    /// with a new cluster token (so a new cluster id) unless `same_token`,
    /// waiting until every member is healthy. Nothing of the old cluster's
    /// keys survives.
    pub fn wipe_and_start_again(&mut self, same_token: bool) {
        for m in &mut self.members {
            m.kill();
            if m.data_dir.exists() {
                std::fs::remove_dir_all(&m.data_dir).expect("remove an etcd data dir");
            }
        }
        if !same_token {
            self.token.push_str("-again");
        }
        for i in 0..self.members.len() {
            self.spawn_member(i);
        }
        if let Err(why) = self.wait_all_healthy(STARTUP) {
            panic!("{why}\n{}", self.logs());
        }
    }

    /// Waits until every running member answers `/health` with true.
    pub fn wait_all_healthy(&mut self, limit: Duration) -> Result<(), String> {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .collect();
        self.wait_healthy(&running, limit)
    }

    fn wait_healthy(&mut self, which: &[usize], limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut pending: Vec<usize> = which.to_vec();
        loop {
            for &i in &pending {
                if let Some(status) = self.members[i].exited() {
                    return Err(format!(
                        "etcd member {} exited at start ({status})",
                        self.members[i].name
                    ));
                }
            }
            pending.retain(|&i| !healthy(self.members[i].health_addr()));
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let names: Vec<&str> = pending
                    .iter()
                    .map(|&i| self.members[i].name.as_str())
                    .collect();
                return Err(format!(
                    "etcd members {names:?} were not healthy within {limit:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `etcdctl` against `endpoints` with short dial and command
    /// timeouts; killed if it has not finished within `limit`.
    pub fn etcdctl(&self, endpoints: &[String], args: &[&str], limit: Duration) -> Output {
        let mut cmd = Command::new(etcdctl_bin());
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(["--dial-timeout=1s", "--command-timeout=2s"])
            .args(args);
        run_bounded(cmd, limit)
    }

    /// Every member's log, for a failing test's message.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for m in &self.members {
            all.push_str(&format!("--- {} ({})\n", m.name, m.log.display()));
            all.push_str(&m.log_text());
        }
        all
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}

/// Whether the member at `addr` answers `GET /health` with `"health":"true"`
/// (it has a leader and a quorum), within a second.
pub fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let limit = Some(Duration::from_secs(1));
    if stream.set_read_timeout(limit).is_err() || stream.set_write_timeout(limit).is_err() {
        return false;
    }
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") && answer.contains(r#""health":"true""#)
}

/// Runs `cmd`, killing it (by its pid) if it runs past `limit`; the output
/// of a killed command has no exit code.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {:?}: {err}", cmd.get_program()));
    // Drained on threads, so a full pipe cannot stall the child.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn which_or_panic(bin: &str) {
    let found = if bin.contains('/') {
        Path::new(bin).is_file()
    } else {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(bin).is_file()))
    };
    assert!(
        found,
        "{bin} not found: these tests need a real etcd (Debian: apt-get install etcd-server \
         etcd-client; tests/run installs them)"
    );
}
