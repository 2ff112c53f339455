//! `broker --args FILE --socket PATH`: the composition of a serving broker,
//! in the order that makes it safe: claim the socket, own the state, open
//! the store, set up reloads, bind, serve.
use crate::followers::Followers;
use crate::storage::{admit::Limits, file, Engine, Storage};
use crate::{
    access, connections, lockfile, metrics, parent, reload, server, socket, supervisor, ServeArgs,
};
use anyhow::Context;
use argsbroker::lock;
use argsbroker::schema::Schema;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Serves until SIGINT or SIGTERM: claims the socket, owns the state,
/// opens the store, sets up reloads, binds, then serves (with the workers
/// under the supervisor when `--workers` asks for them).
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    crate::storage::started();
    if let Some(pid) = args.exit_with_parent {
        parent::exit_with_parent(pid)?;
    }
    // The socket is claimed first: a broker that loses the race to serve
    // the path exits before it reads or records anything.
    let mut claim = socket::claim(&args.socket, args.allow_unsafe_dir)?;
    let stack = args.stack()?;
    // Bound before the state is touched: an address that cannot be had
    // stops the broker with nothing done.
    let metrics = args.metrics_listen.map(metrics::bind).transpose()?;
    // Read before the args: a document is checked against it from the start.
    let schema = match &args.schema {
        Some(path) => Some(Arc::new(argsbroker::schema::Schema::load(path)?)),
        None => None,
    };
    let followers = Arc::new(Followers::new());
    let opened = match args.etcd.etcd_endpoints.is_empty() {
        true => open_file(&args, schema)?,
        false => open_etcd(&args, schema, &followers).await?,
    };
    let store = opened.storage;
    let shutdown = argsbroker::shutdown::signal();
    let listener = claim.bind(socket::Options {
        mode: args.socket_mode,
        group: args.socket_group,
    })?;
    let listener =
        tokio::net::UnixListener::from_std(listener).context("cannot use the bound socket")?;
    tracing::info!(
        socket = %args.socket.display(),
        backend = store.describe(),
        revision = store.current().revision,
        read_only = args.read_only,
        watch = args.watch,
        mode = format!("{:04o}", args.socket_mode),
        "serving"
    );
    // A canary with a bake time is promoted or aborted by itself.
    crate::bake::watch(store.clone(), followers.clone());
    // Shared with the accept loop, which binds the path again if the file is deleted.
    let claim = Arc::new(Mutex::new(claim));
    let config = args.server_config(&claim, followers, metrics);
    let result = match stack {
        None => {
            argsbroker::sd_notify::ready();
            server::run(listener, store, config, shutdown).await
        }
        Some(plan) => {
            let broker = |stop| server::run(listener, store, config, stop);
            supervisor::run_stack(plan, broker, shutdown).await
        }
    };
    lock(&claim).remove_socket();
    drop(opened.keep);
    result?;
    tracing::info!("stopped");
    Ok(())
}

/// The storage, and what must live as long as it serves (locks, a file watcher).
struct Opened {
    storage: Storage,
    keep: Box<dyn std::any::Any>,
}

/// One host: the args file, its state, reloads on SIGHUP and with --watch.
fn open_file(args: &ServeArgs, schema: Option<Arc<Schema>>) -> anyhow::Result<Opened> {
    let Some(args_path) = args.args.clone() else {
        anyhow::bail!("--args FILE is required to serve (or give a subcommand; see --help)");
    };
    let state_dir = (args.state_dir.clone()).unwrap_or_else(|| default_state_dir(&args_path));
    // Read before the state is touched: a file that is refused leaves nothing.
    let args_file =
        file::ArgsFile::read(&args_path, args.max_args_bytes as usize, schema.as_deref())?;
    // One broker per args file and per state directory: two would both
    // call their next write the same revision.
    let owner = own_state(&args_path, &state_dir, &args.socket, args.read_only)?;
    let limits = Arc::new(args.limits(schema));
    let (engine, head) = file::FileEngine::open(args_file, &state_dir, limits.clone())?;
    let store = Arc::new(engine);
    // Reloads are set up before the socket exists: once a client can
    // connect, a SIGHUP or a change to the file is never missed.
    reload::on_sighup(store.clone()).context("cannot handle SIGHUP")?;
    let watcher = match args.watch {
        true => Some(reload::watch_file(store.clone(), &args_path)),
        false => None,
    };
    Ok(Opened {
        storage: Storage::new(head, limits, Engine::File(store)),
        keep: Box::new((owner, watcher)),
    })
}

/// Many hosts: the document in etcd, this host's last-known-good copy in
/// the state directory (locked, one broker per state directory).
#[cfg(feature = "etcd")]
async fn open_etcd(
    args: &ServeArgs,
    schema: Option<Arc<Schema>>,
    followers: &Arc<Followers>,
) -> anyhow::Result<Opened> {
    use crate::storage::etcd::{Config, EtcdEngine, Tls};
    let flags = &args.etcd;
    let state_dir = match (&args.state_dir, &args.args) {
        (Some(dir), _) => dir.clone(),
        (None, Some(file)) => default_state_dir(file),
        (None, None) => anyhow::bail!(
            "--etcd-endpoints needs --state-dir DIR (or --args FILE, whose FILE.state it uses): the broker keeps its last-known-good copy there"
        ),
    };
    let seed = match &args.args {
        Some(path) => Some(file::ArgsFile::read(
            path,
            args.max_args_bytes as usize,
            schema.as_deref(),
        )?),
        None => None,
    };
    argsbroker::durable::create_private_dir(&state_dir).with_context(|| {
        format!(
            "cannot create the state directory {} (choose another with --state-dir)",
            state_dir.display()
        )
    })?;
    let owner = lock_file(&state_dir.join("lock"), &args.socket, || {
        format!("the state directory {}", state_dir.display())
    })?;
    let user = match &flags.etcd_user {
        Some(user) => Some((user.clone(), etcd_password(flags)?)),
        None => None,
    };
    let tls = match (&flags.etcd_cacert, &flags.etcd_cert, &flags.etcd_cert_key) {
        (None, None, None) => None,
        (ca, cert, key) => Some(Tls {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }),
    };
    let limits = Arc::new(args.limits(schema));
    let (store, head) = EtcdEngine::open(Config {
        endpoints: flags.etcd_endpoints.clone(),
        key: flags.etcd_key.clone().unwrap_or_default(),
        seed,
        state_dir,
        startup_timeout: flags.startup_timeout,
        timeout: flags.etcd_timeout,
        max_request_bytes: flags.etcd_max_request_bytes as usize,
        limits: limits.clone(),
        tls,
        user,
    })
    .await?;
    let host = match &flags.etcd_host {
        Some(host) => host.clone(),
        None => format!("{}:{}", host_name(), args.socket.display()),
    };
    store.share_followers(followers.clone(), host);
    // A Secret mounted by Kubernetes is rotated by swapping it on disk.
    let password_file = match (&flags.etcd_user, &flags.etcd_password_file) {
        (Some(_), Some(path)) => Some(store.follow_password_file(path.clone())),
        _ => None,
    };
    // SIGHUP reloads the args file in file mode; here there is none to
    // reload, and the signal must not end the broker.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot handle SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: nothing to reload (the args live in etcd)");
        }
    });
    Ok(Opened {
        storage: Storage::new(head, limits, Engine::Etcd(store)),
        keep: Box::new((owner, password_file)),
    })
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(
    _: &ServeArgs,
    _: Option<Arc<Schema>>,
    _: &Arc<Followers>,
) -> anyhow::Result<Opened> {
    anyhow::bail!("--etcd-endpoints: this broker was built without etcd (cargo feature `etcd`, on by default); build it again with the default features")
}

/// This machine's name, for telling hosts apart in `broker status`.
#[cfg(feature = "etcd")]
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The etcd user's password: from --etcd-password-file, else from
/// ARGSBROKER_ETCD_PASSWORD; never a flag's value, which `ps` shows.
#[cfg(feature = "etcd")]
fn etcd_password(flags: &crate::EtcdArgs) -> anyhow::Result<String> {
    if let Some(path) = &flags.etcd_password_file {
        return crate::storage::etcd::read_password(path).with_context(|| {
            format!(
                "cannot read the etcd password file {} (--etcd-password-file)",
                path.display()
            )
        });
    }
    match std::env::var("ARGSBROKER_ETCD_PASSWORD") {
        Ok(password) => Ok(password),
        Err(_) => anyhow::bail!(
            "--etcd-user needs a password: --etcd-password-file FILE, or the ARGSBROKER_ETCD_PASSWORD variable"
        ),
    }
}

/// The flags, as the parts of the broker take them.
impl ServeArgs {
    fn limits(&self, schema: Option<Arc<Schema>>) -> Limits {
        Limits {
            schema,
            max_args_bytes: self.max_args_bytes as usize,
            history: self.history,
            history_bytes: self.history_bytes,
            read_only: self.read_only,
        }
    }

    fn server_config(
        &self,
        claim: &Arc<Mutex<socket::Claim>>,
        followers: Arc<Followers>,
        metrics: Option<std::net::TcpListener>,
    ) -> server::Config {
        let metrics = metrics.map(|listener| {
            let bounds = argsbroker::http_serve::Bounds {
                header_timeout: self.metrics_header_timeout,
                idle_timeout: self.metrics_idle_timeout,
                max_connections: self.metrics_max_connections as usize,
            };
            (listener, bounds)
        });
        let claim = claim.clone();
        server::Config {
            limits: connections::Limits {
                max_connections: connections::fit_to_fd_limit(self.max_connections as usize),
                handshake_timeout: self.handshake_timeout,
            },
            keepalive: self.keepalive,
            policy: access::Policy::new(
                self.writer_uid.clone(),
                self.writer_gid.clone(),
                self.reader_uid.clone(),
                self.reader_gid.clone(),
            ),
            rebind: Some(Box::new(move || lock(&claim).rebind_if_deleted())),
            followers,
            metrics,
            // Whoever reaches the HTTP address would read values the
            // socket's policy keeps from them.
            page_values: self.reader_uid.is_empty() && self.reader_gid.is_empty(),
        }
    }

    /// The workers to run beside the broker, if `--workers` asks for any.
    fn stack(&self) -> anyhow::Result<Option<supervisor::Plan>> {
        let Some(http) = self.http.filter(|_| self.workers > 0) else {
            return Ok(None);
        };
        supervisor::Plan::new(
            self.workers,
            http,
            self.worker_bin.clone(),
            self.socket.clone(),
            self.worker_args.clone(),
            self.graceful_timeout,
        )
        .map(Some)
    }
}

/// Locks the state directory (`DIR/lock`) and, unless read-only, the args
/// file (`.NAME.lock` beside it), each for the broker's whole life: a second
/// broker on either refuses to start before it reads or writes anything.
fn own_state(
    args: &Path,
    state_dir: &Path,
    socket: &Path,
    read_only: bool,
) -> anyhow::Result<Vec<lockfile::LockFile>> {
    argsbroker::durable::create_private_dir(state_dir).with_context(|| {
        format!(
            "cannot create the state directory {} (choose another with --state-dir)",
            state_dir.display()
        )
    })?;
    let mut locks = vec![lock_file(&state_dir.join("lock"), socket, || {
        format!("the state directory {}", state_dir.display())
    })?];
    if !read_only {
        let target = std::fs::canonicalize(args).unwrap_or_else(|_| args.to_path_buf());
        let mut name = std::ffi::OsString::from(".");
        name.push(target.file_name().unwrap_or_default());
        name.push(".lock");
        locks.push(lock_file(&target.with_file_name(name), socket, || {
            args.display().to_string()
        })?);
    }
    Ok(locks)
}

fn lock_file(
    path: &Path,
    socket: &Path,
    what: impl Fn() -> String,
) -> anyhow::Result<lockfile::LockFile> {
    match lockfile::LockFile::acquire(path, Some(socket)) {
        Ok(lock) => Ok(lock),
        Err(lockfile::LockError::Held { holder, .. }) => {
            anyhow::bail!("{holder} owns {}", what())
        }
        Err(err) => Err(err.into()),
    }
}

/// `args.json` keeps its revisions in `args.json.state/`.
fn default_state_dir(args: &Path) -> PathBuf {
    let mut name = args
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".state");
    args.with_file_name(name)
}
