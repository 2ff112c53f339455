//! Test helpers: real `broker` and `worker` processes in temp dirs, stopped
//! by pid; a tiny HTTP/1.1 client; polling with a deadline instead of sleeps.
#![allow(dead_code)]

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod etcd;

pub const BROKER: &str = env!("CARGO_BIN_EXE_broker");
pub const WORKER: &str = env!("CARGO_BIN_EXE_worker");

/// How long any wait in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `f` until it returns `Some`, failing the test after `PATIENCE`.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let out = File::create(&log).expect("create log file");
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log"))
            .stderr(out);
        let child = cmd.spawn().expect("spawn child");
        Self { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the process to exit, failing the test after `PATIENCE`.
    pub fn wait(&mut self) -> ExitStatus {
        eventually("process exit", || self.child.try_wait().expect("try_wait"))
    }

    /// SIGTERM, then the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The port in the first log line that has `prefix` followed by
    /// `HOST:PORT` (e.g. `serving args on http://`): children bind port 0
    /// and say which port the kernel gave them, so that no test hopes a
    /// port it probed is still free.
    pub fn bound_port(&self, prefix: &str) -> u16 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            // Whole lines only: a line the child is still writing could
            // hold half a port number.
            let log = self.log();
            let mut whole = log.split_inclusive('\n').filter(|l| l.ends_with('\n'));
            let found = whole.find_map(|line| {
                let rest = &line[line.find(prefix)? + prefix.len()..];
                let addr = rest.split(['/', ' ', '\n']).next()?;
                addr.parse::<std::net::SocketAddr>().ok()
            });
            if let Some(addr) = found {
                return addr.port();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for a log line with {prefix:?}HOST:PORT:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A worker's HTTP port, from its `serving args on http://HOST:PORT/args` line.
    pub fn http_port(&self) -> u16 {
        self.bound_port("serving args on http://")
    }

    /// A broker's `--metrics-listen` port, from its `serving metrics on` line.
    pub fn metrics_port(&self) -> u16 {
        self.bound_port("serving metrics on http://")
    }

    /// The port a broker's `--workers` share, from its `all workers ready on` line.
    pub fn stack_port(&self) -> u16 {
        self.bound_port("all workers ready on http://")
    }

    /// Waits for the first line of the log that contains `needle`, and returns it.
    pub fn log_line(&self, needle: &str) -> String {
        eventually(&format!("a log line with {needle:?}"), || {
            self.log()
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_owned)
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A temp dir with an args file and a socket path in it.
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    pub fn new(args: &str) -> Self {
        Self::new_in(&std::env::temp_dir(), args)
    }

    /// A site under `parent` (e.g. /dev/shm, where fsync costs nothing).
    pub fn new_in(parent: &Path, args: &str) -> Self {
        let dir = tempfile::tempdir_in(parent).expect("tempdir");
        std::fs::write(dir.path().join("args.json"), args).expect("write args");
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn args(&self) -> PathBuf {
        self.path("args.json")
    }

    pub fn socket(&self) -> PathBuf {
        self.path("b.sock")
    }

    /// A copy of the broker binary inside this site, for running it as
    /// another user: CI may clone the checkout under a directory only root
    /// can enter. The site's directory must be open to that user.
    pub fn broker_copy(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let copy = self.path("broker-bin");
        if !copy.exists() {
            std::fs::copy(BROKER, &copy).expect("copy the broker binary");
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
                .expect("chmod the copy");
            // A child another test forked while the copy was open for
            // writing holds it open until that child execs: running the copy
            // meanwhile fails with ETXTBSY ("Text file busy").
            eventually("the broker copy to be runnable", || {
                match Command::new(&copy).arg("--version").output() {
                    Err(err) if err.raw_os_error() == Some(libc::ETXTBSY) => None,
                    Err(err) => panic!("run the broker copy: {err}"),
                    Ok(_) => Some(()),
                }
            });
        }
        copy
    }

    pub fn broker_cmd(&self) -> Command {
        let mut cmd = Command::new(BROKER);
        cmd.arg("--args")
            .arg(self.args())
            .arg("--socket")
            .arg(self.socket());
        cmd
    }

    /// Starts the broker and waits until it answers GetArgs.
    pub fn start_broker(&self) -> Proc {
        self.start_broker_with(&[])
    }

    pub fn start_broker_with(&self, extra: &[&str]) -> Proc {
        let mut cmd = self.broker_cmd();
        cmd.args(extra);
        self.spawn_broker(cmd)
    }

    /// Starts `cmd` (a broker on this site's socket) and waits until it answers.
    pub fn spawn_broker(&self, cmd: Command) -> Proc {
        let mut proc = Proc::spawn(cmd, self.fresh_log("broker"));
        eventually("the broker to answer", || {
            assert!(proc.is_running(), "broker exited: {}", proc.log());
            grpc(|| async { argsbroker::client::connect(self.socket()).await.ok() })
        });
        proc
    }

    /// A worker of this site's broker on 127.0.0.1:`port`; [`ANY_PORT`]
    /// lets it bind one the kernel picks ([`Proc::http_port`] reads it back).
    pub fn worker_cmd(&self, port: u16, reuse_port: bool) -> Command {
        let mut cmd = Command::new(WORKER);
        cmd.arg("--broker")
            .arg(self.socket())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"));
        if reuse_port {
            cmd.arg("--reuse-port");
        }
        cmd
    }

    /// Starts a worker on a port the kernel picks and waits until it answers
    /// /readyz with 200; [`Proc::http_port`] is its port.
    pub fn start_worker(&self) -> Proc {
        self.spawn_worker(self.worker_cmd(ANY_PORT, false))
    }

    /// Starts a worker with `--reuse-port` on `port`, one that this test
    /// holds ([`hold_port`]) or that another running worker serves, and
    /// waits until it answers /readyz with 200.
    pub fn start_worker_on(&self, port: u16) -> Proc {
        self.spawn_worker(self.worker_cmd(port, true))
    }

    /// Starts `cmd` (a worker) and waits until it answers /readyz with 200
    /// on the port it reports.
    pub fn spawn_worker(&self, cmd: Command) -> Proc {
        let mut proc = Proc::spawn(cmd, self.fresh_log("worker"));
        let port = proc.http_port();
        eventually("the worker to be ready", || {
            assert!(proc.is_running(), "worker exited: {}", proc.log());
            try_get(port, "/readyz", &[]).filter(|r| r.status == 200)
        });
        proc
    }

    /// A log file name not used yet in this site.
    pub fn fresh_log(&self, stem: &str) -> PathBuf {
        (0..)
            .map(|i| self.path(&format!("{stem}-{i}.log")))
            .find(|p| !p.exists())
            .expect("a free log name")
    }
}

/// Runs a command to completion; returns (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    cmd.stdin(Stdio::null());
    let out = cmd.output().expect("run command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The port to ask for to let a child bind one the kernel picks: it says
/// which in its log ([`Proc::http_port`], [`Proc::metrics_port`],
/// [`Proc::stack_port`]).
pub const ANY_PORT: u16 = 0;

/// A loopback port held by the test: bound with SO_REUSEPORT and never
/// listening. The kernel sends no connection to it, so nothing answers on
/// the port, and no other process can bind it, except a worker started with
/// `--reuse-port` by the same user, which joins it. For a port a test must
/// know before the worker starts (a worker restarted on the same port, a
/// port nothing serves yet): no race with other processes, unlike probing
/// a free port and releasing it.
pub struct HeldPort {
    pub port: u16,
    _socket: socket2::Socket,
}

pub fn hold_port() -> HeldPort {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket.set_reuse_port(true).expect("SO_REUSEPORT");
    let any: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    socket.bind(&any.into()).expect("bind 127.0.0.1:0");
    let port = socket
        .local_addr()
        .expect("local addr")
        .as_socket()
        .expect("an IP address")
        .port();
    HeldPort {
        port,
        _socket: socket,
    }
}

/// Runs an async block on a fresh single-threaded runtime.
pub fn grpc<T, F: std::future::Future<Output = T>>(f: impl FnOnce() -> F) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f())
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// GET over a new HTTP/1.1 connection; panics if the worker does not answer.
pub fn get(port: u16, path: &str) -> HttpResponse {
    get_with(port, path, &[])
}

pub fn get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    try_get(port, path, headers)
        .unwrap_or_else(|| panic!("no HTTP answer on port {port} for {path}"))
}

/// GET that returns `None` when nothing answers.
pub fn try_get(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<HttpResponse> {
    let stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    exchange(stream, path, headers)
}

/// Sends a GET on an open connection and reads the whole answer.
pub fn exchange(
    mut stream: TcpStream,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<HttpResponse> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// The whole-document `{"args": ...}` body a worker should serve for `compact`.
pub fn args_body(compact: &str) -> String {
    format!("{{\"args\":{compact}}}")
}

pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// The whole document, by GetArgs.
pub fn get_args(socket: &Path) -> argsbroker::pb::Args {
    grpc(|| async {
        argsbroker::client::connect(socket)
            .await
            .expect("connect")
            .get_args(argsbroker::pb::GetArgsRequest::default())
            .await
            .expect("GetArgs")
            .into_inner()
    })
}

/// Fails the test unless it runs as root: tests that act as another user
/// (uid 65534) or own files as another user need it, and must not pass by
/// skipping their checks.
pub fn require_root(what: &str) {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "{what}: this test must run as root (it acts as uid {NOBODY} to be refused); CI runs tests/run as root"
    );
}

/// The uid (and gid) the tests act as when they need another user.
pub const NOBODY: u32 = 65534;

/// Connects to `socket` as `uid`/`gid` with supplementary `groups`, so
/// that the broker's SO_PEERCRED and SO_PEERGROUPS see those. A thread of
/// its own drops to them with raw syscalls, which on Linux change only the
/// calling thread's credentials (glibc's wrappers would change every thread
/// of the test process); the connected socket outlives the thread.
pub fn connect_as(
    socket: &Path,
    uid: u32,
    gid: u32,
    groups: &[u32],
) -> std::io::Result<std::os::unix::net::UnixStream> {
    require_root("connect_as");
    let socket = socket.to_path_buf();
    let groups = groups.to_vec();
    std::thread::spawn(move || {
        let check = |rc: libc::c_long| match rc {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        };
        // SAFETY: raw credential syscalls on this thread only; arguments are plain ids.
        unsafe {
            check(libc::syscall(
                libc::SYS_setgroups,
                groups.len(),
                groups.as_ptr(),
            ))?;
            check(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
            check(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
        }
        std::os::unix::net::UnixStream::connect(&socket)
    })
    .join()
    .expect("connect_as thread")
}

/// A gRPC channel over a socket that is already connected (see [`connect_as`]).
pub async fn channel_over(stream: std::os::unix::net::UnixStream) -> tonic::transport::Channel {
    stream.set_nonblocking(true).expect("nonblocking");
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(stream)));
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let stream = slot.lock().expect("slot").take();
            async move {
                let stream = stream.ok_or_else(|| std::io::Error::other("one connection only"))?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::from_std(stream)?,
                ))
            }
        }))
        .await
        .expect("a channel over the connected socket")
}

/// Makes a directory and everything under it reachable by other users
/// (mode 0755), for tests in which another uid connects.
pub fn open_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
}

/// The resident memory of a process, in KiB (VmRSS in /proc/PID/status).
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Raises this process's soft limit on open files to at least `wanted`.
pub fn raise_nofile(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(
        limit.rlim_cur >= wanted,
        "this test needs {wanted} open files; the hard limit is {}",
        limit.rlim_max
    );
}

/// A gRPC call's outcome as a test compares it: the reply, or the status
/// code and message.
pub type Outcome = Result<argsbroker::pb::Args, (tonic::Code, String)>;

type Client = argsbroker::pb::args_broker_client::ArgsBrokerClient<tonic::transport::Channel>;

/// Runs one call on a fresh connection to the broker at `socket`.
pub fn call<T>(
    socket: &Path,
    f: impl AsyncFnOnce(Client) -> Result<tonic::Response<T>, tonic::Status>,
) -> Result<T, (tonic::Code, String)> {
    grpc(|| async {
        let client = argsbroker::client::connect(socket).await.expect("connect");
        f(client)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| (status.code(), status.message().to_owned()))
    })
}

/// The tests' typed client of the args service: one call per method, each
/// on a fresh connection, each answering an [`Outcome`].
impl Site {
    /// The whole document (GetArgs); panics if the broker does not answer.
    pub fn current(&self) -> argsbroker::pb::Args {
        get_args(&self.socket())
    }

    /// GetArgs at `pointer` ("" for the whole document).
    pub fn get(&self, pointer: &str) -> Outcome {
        let request = argsbroker::pb::GetArgsRequest {
            pointer: pointer.to_owned(),
            if_none_match: None,
        };
        call(&self.socket(), async |mut c| c.get_args(request).await)
    }

    pub fn set(&self, json: &str, expected_revision: Option<u64>) -> Outcome {
        let request = argsbroker::pb::SetArgsRequest {
            json: json.to_owned(),
            expected_revision,
            ..Default::default()
        };
        call(&self.socket(), async |mut c| c.set_args(request).await)
    }

    pub fn patch(&self, merge_patch: &str, expected_revision: Option<u64>) -> Outcome {
        patch_args(&self.socket(), merge_patch, expected_revision)
    }
}

/// PatchArgs on a fresh connection to the broker at `socket`.
pub fn patch_args(socket: &Path, merge_patch: &str, expected_revision: Option<u64>) -> Outcome {
    let request = argsbroker::pb::PatchArgsRequest {
        merge_patch: merge_patch.to_owned(),
        expected_revision,
        ..Default::default()
    };
    call(socket, async |mut c| c.patch_args(request).await)
}

/// GET `path` on a new connection, and which of `pids` accepted it (the
/// process holding the server end of that TCP connection, found through
/// /proc): tells apart workers that share a port with SO_REUSEPORT.
pub fn get_from(port: u16, path: &str, pids: &[i32]) -> (HttpResponse, Option<i32>) {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let client_port = stream.local_addr().expect("local addr").port();
    let inode = server_socket_inode(port, client_port);
    let holder = inode.and_then(|inode| {
        let link = format!("socket:[{inode}]");
        pids.iter().copied().find(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|fds| {
                    fds.flatten().any(|fd| {
                        std::fs::read_link(fd.path())
                            .is_ok_and(|target| target.as_os_str() == link.as_str())
                    })
                })
                .unwrap_or(false)
        })
    });
    let response = exchange(stream, path, &[]).expect("an HTTP answer");
    (response, holder)
}

/// The inode of the accepted socket 127.0.0.1:`port` <- 127.0.0.1:`client_port`.
fn server_socket_inode(port: u16, client_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    let remote = format!("0100007F:{client_port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 9 && fields[1] == local && fields[2] == remote)
            .then(|| fields[9].parse().ok())
            .flatten()
    })
}

/// Waits for the server to close `stream`: EOF or a reset.
pub fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                return false
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Whether the server has not closed `stream` yet (nothing to read, no EOF).
pub fn still_open(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    let open = matches!(stream.peek(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock);
    stream.set_nonblocking(false).unwrap();
    open
}

/// Reads one HTTP/1.1 response with a Content-Length from a kept-alive connection.
pub fn read_response(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("read a response");
        assert!(n > 0, "the connection closed before a whole response");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .expect("content-length")
                .parse()
                .unwrap();
            if body.len() >= length {
                return text;
            }
        }
    }
}

/// Polls each worker's `/args` (X-Args-Revision) until finished: no
/// worker's revision may ever go down (promotions, aborts, rollouts).
pub struct NoGoingBack {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NoGoingBack {
    /// Watches the workers at `ports`, by the name each is reported under.
    pub fn watch(ports: Vec<(String, u16)>) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut last: std::collections::BTreeMap<String, u64> = Default::default();
            while !stop2.load(Ordering::Relaxed) {
                for (who, port) in &ports {
                    let Some(answer) = try_get(*port, "/args", &[]) else {
                        continue;
                    };
                    let revision: u64 = answer
                        .header("x-args-revision")
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(0);
                    let before = last.insert(who.clone(), revision).unwrap_or(0);
                    if revision < before {
                        seen2
                            .lock()
                            .unwrap()
                            .push(format!("{who} went back from {before} to {revision}"));
                    }
                }
            }
        });
        Self {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stops watching; every time a worker went back, in words.
    pub fn finish(mut self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the watcher");
        }
        self.seen.lock().unwrap().clone()
    }
}
