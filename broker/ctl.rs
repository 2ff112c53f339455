//! The command-line client: `broker get|set|patch|watch|history|rollback`,
//! like etcdctl or `consul kv`, talking to a running broker.
use anyhow::Context;
use argsbroker::{client, pb};
use clap::Subcommand;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

/// Exit status for a revision conflict (--expected-revision was not current).
pub const EXIT_CONFLICT: u8 = 3;
/// Exit status when a pointer or revision names nothing.
pub const EXIT_NOT_FOUND: u8 = 4;
/// Exit status when a write committed but not every follower applied it (--wait).
pub const EXIT_NOT_APPLIED: u8 = 5;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the args (or the value at a JSON pointer): pretty on a terminal, exact text otherwise.
    Get {
        #[command(flatten)]
        socket: SocketArg,
        /// An RFC 6901 JSON pointer, e.g. /model/path (default: the whole document).
        #[arg(default_value = "")]
        pointer: String,
    },
    /// Replace the whole document with the JSON object in FILE (- for stdin).
    Set {
        #[command(flatten)]
        socket: SocketArg,
        /// A file holding a JSON object, or - to read standard input.
        file: PathBuf,
        /// Succeed only while this is the current revision (compare-and-set).
        #[arg(long, value_name = "N")]
        expected_revision: Option<u64>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        canary: CanaryArgs,
    },
    /// Apply an RFC 7386 JSON merge patch: '{"a": 1, "b": null}' sets a and removes b.
    Patch {
        #[command(flatten)]
        socket: SocketArg,
        /// The merge patch, as JSON text.
        merge_patch: String,
        /// Succeed only while this is the current revision (compare-and-set).
        #[arg(long, value_name = "N")]
        expected_revision: Option<u64>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        canary: CanaryArgs,
    },
    /// Print one line per revision, "REVISION<TAB>JSON", until interrupted.
    Watch {
        #[command(flatten)]
        socket: SocketArg,
        /// Start with every retained revision after N instead of the current one.
        #[arg(long, value_name = "N")]
        start_revision: Option<u64>,
    },
    /// List the retained revisions, oldest first.
    History {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Print the revision served and whether the broker is in touch with where the args live (etcd).
    Status {
        #[command(flatten)]
        socket: SocketArg,
        /// Print one JSON object instead of lines, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Make the running canary's candidate the revision every follower and reader gets (no new revision).
    Promote {
        #[command(flatten)]
        socket: SocketArg,
        /// Promote only if this is the candidate's revision.
        #[arg(long, value_name = "N")]
        candidate: Option<u64>,
    },
    /// Drop the running canary: a new revision with the stable document, which every follower moves forward to.
    Abort {
        #[command(flatten)]
        socket: SocketArg,
        /// Abort only if this is the candidate's revision.
        #[arg(long, value_name = "N")]
        candidate: Option<u64>,
        /// Why, for the history ("aborted canary 12: REASON").
        #[arg(long, value_name = "TEXT", default_value = "")]
        reason: String,
    },
    /// Make a new revision with the content of an older, retained one.
    Rollback {
        #[command(flatten)]
        socket: SocketArg,
        /// The retained revision to go back to.
        revision: u64,
        /// Succeed only while this is the current revision (compare-and-set).
        #[arg(long, value_name = "N")]
        expected_revision: Option<u64>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        canary: CanaryArgs,
    },
}

/// Writes that return once the followers applied them.
#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// Return only once every follower connected at commit time applied the new revision, waiting at most this long (default 5s); exit 5 naming the followers that rejected it, left or lagged.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, require_equals = true, default_missing_value = "5", value_parser = argsbroker::cmdline::positive_seconds)]
    wait: Option<std::time::Duration>,
    /// With --wait: if a follower rejects the new revision, write the previous content back.
    #[arg(long, requires = "wait")]
    rollback_on_reject: bool,
}

/// Writes that start a canary instead of changing what everyone gets.
#[derive(Debug, clap::Args)]
pub struct CanaryArgs {
    /// Give the new revision only to the followers this selects: N (that many), P% (a stable share by name), name=GLOB, or with etcd host=NAME[,NAME...]; everyone else keeps the stable revision until `broker promote` or `broker abort`.
    #[arg(long, value_name = "SELECTOR")]
    canary: Option<String>,
    /// With --canary: promote by itself once every selected follower applied it and none rejected it for this long (e.g. 30s, 5m); abort at the first rejection.
    #[arg(long, value_name = "DURATION", requires = "canary", value_parser = humantime::parse_duration)]
    bake: Option<std::time::Duration>,
    /// While a canary runs: abort it first (a revision of its own) instead of being refused.
    #[arg(long)]
    force: bool,
}

impl CanaryArgs {
    /// The request's canary, bake_ms and force.
    fn fields(&self) -> (String, u32, bool) {
        let bake_ms = self
            .bake
            .map_or(0, |b| b.as_millis().clamp(1, u128::from(u32::MAX)) as u32);
        (self.canary.clone().unwrap_or_default(), bake_ms, self.force)
    }

    /// What to say after a write that started a canary.
    fn said(&self, args: &pb::Args) -> Option<String> {
        let selector = self.canary.as_ref()?;
        Some(match self.bake {
            None => format!(
                "canary: revision {} goes to {selector} only; `broker promote` gives it to everyone, `broker abort` takes it back",
                args.revision
            ),
            Some(bake) => format!(
                "canary: revision {} goes to {selector} only; promoted by itself once every selected follower has applied it for {}, aborted at the first rejection",
                args.revision,
                humantime::format_duration(bake)
            ),
        })
    }
}

impl WaitArgs {
    /// The request's wait_applied_ms (0: no wait) and rollback_on_reject.
    fn fields(&self) -> (u32, bool) {
        let ms = self
            .wait
            .map_or(0, |w| w.as_millis().clamp(1, u128::from(u32::MAX)) as u32);
        (ms, self.rollback_on_reject)
    }
}

#[derive(Debug, clap::Args)]
pub struct SocketArg {
    /// The broker's Unix socket.
    #[arg(long, value_name = "PATH", env = "ARGSBROKER_SOCKET", default_value = argsbroker::DEFAULT_SOCKET)]
    socket: PathBuf,
}

/// A failed command: its message, and the exit status it maps to.
pub struct Failure {
    pub error: anyhow::Error,
    pub code: u8,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self { error, code: 1 }
    }
}

impl From<client::ClientError> for Failure {
    /// The client's error, with a hint at what to check when the socket
    /// could not be reached.
    fn from(error: client::ClientError) -> Self {
        use std::io::ErrorKind;
        let hint = match &error {
            client::ClientError::Connect {
                kind: Some(ErrorKind::PermissionDenied),
                ..
            } => Some("(the broker's --socket-mode and --socket-group decide who may connect)"),
            client::ClientError::Connect { .. } => {
                Some("(is the broker running? --socket / ARGSBROKER_SOCKET)")
            }
            client::ClientError::NotASocket(_) => {
                Some("(--socket / ARGSBROKER_SOCKET must name the broker's socket)")
            }
            _ => None,
        };
        let error = match hint {
            Some(hint) => anyhow::anyhow!("{error} {hint}"),
            None => error.into(),
        };
        Self { error, code: 1 }
    }
}

fn rpc_failure(status: tonic::Status) -> Failure {
    let code = match status.code() {
        tonic::Code::FailedPrecondition
            if status
                .metadata()
                .contains_key(argsbroker::CONFLICT_METADATA) =>
        {
            EXIT_CONFLICT
        }
        tonic::Code::NotFound => EXIT_NOT_FOUND,
        _ if status
            .metadata()
            .contains_key(crate::service::COMMITTED_REVISION) =>
        {
            EXIT_NOT_APPLIED
        }
        _ => 1,
    };
    Failure {
        error: anyhow::anyhow!("{}", status.message()),
        code,
    }
}

pub async fn run(command: Command) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Get { socket, pointer } => {
            let mut broker = client::connect(&socket.socket).await?;
            let args = broker
                .get_args(pb::GetArgsRequest {
                    pointer,
                    if_none_match: None,
                })
                .await
                .map_err(rpc_failure)?
                .into_inner();
            print_json(
                &mut out,
                args.json_str()
                    .context("the broker sent text that is not UTF-8")?,
            )?;
        }
        Command::Set {
            socket,
            file,
            expected_revision,
            wait,
            canary,
        } => {
            let json = read_input(&file)?;
            let mut broker = client::connect(&socket.socket).await?;
            let (wait_applied_ms, rollback_on_reject) = wait.fields();
            let (selector, bake_ms, force) = canary.fields();
            let args = broker
                .set_args(pb::SetArgsRequest {
                    json,
                    expected_revision,
                    wait_applied_ms,
                    rollback_on_reject,
                    canary: selector,
                    bake_ms,
                    force,
                })
                .await
                .map_err(rpc_failure)?
                .into_inner();
            written(&mut out, &args, &canary)?;
        }
        Command::Patch {
            socket,
            merge_patch,
            expected_revision,
            wait,
            canary,
        } => {
            let mut broker = client::connect(&socket.socket).await?;
            let (wait_applied_ms, rollback_on_reject) = wait.fields();
            let (selector, bake_ms, force) = canary.fields();
            let args = broker
                .patch_args(pb::PatchArgsRequest {
                    merge_patch,
                    expected_revision,
                    wait_applied_ms,
                    rollback_on_reject,
                    canary: selector,
                    bake_ms,
                    force,
                })
                .await
                .map_err(rpc_failure)?
                .into_inner();
            written(&mut out, &args, &canary)?;
        }
        Command::Promote { socket, candidate } => {
            let mut broker = client::connect(&socket.socket).await?;
            let args = broker
                .promote_canary(pb::PromoteCanaryRequest {
                    candidate_revision: candidate,
                })
                .await
                .map_err(rpc_failure)?
                .into_inner();
            writeln!(
                out,
                "revision {} promoted: every follower and reader gets it",
                args.revision
            )
            .context("cannot write to stdout")?;
        }
        Command::Abort {
            socket,
            candidate,
            reason,
        } => {
            let mut broker = client::connect(&socket.socket).await?;
            let args = broker
                .abort_canary(pb::AbortCanaryRequest {
                    candidate_revision: candidate,
                    reason,
                })
                .await
                .map_err(rpc_failure)?
                .into_inner();
            writeln!(
                out,
                "revision {}: the stable document again, for every follower",
                args.revision
            )
            .context("cannot write to stdout")?;
        }
        Command::Watch {
            socket,
            start_revision,
        } => {
            let mut broker = client::connect(&socket.socket).await?;
            let mut stream = broker
                .watch_args(pb::WatchArgsRequest { start_revision })
                .await
                .map_err(rpc_failure)?
                .into_inner();
            loop {
                let message = tokio::select! {
                    message = stream.message() => message.map_err(rpc_failure)?,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                let Some(args) = message else {
                    return Err(anyhow::anyhow!(
                        "the broker ended the watch (it is shutting down)"
                    )
                    .into());
                };
                writeln!(
                    out,
                    "{}\t{}",
                    args.revision,
                    String::from_utf8_lossy(&args.json)
                )
                .context("cannot write to stdout")?;
                out.flush().context("cannot write to stdout")?;
            }
        }
        Command::History { socket } => {
            let mut broker = client::connect(&socket.socket).await?;
            let list = broker
                .list_revisions(pb::ListRevisionsRequest {})
                .await
                .map_err(rpc_failure)?
                .into_inner();
            writeln!(
                out,
                "{:>8}  {:<24}  {:<12}  {:>10}  {:>6}  {:<8}  NOTE",
                "REVISION", "TIME (UTC)", "SHA256", "BYTES", "UID", "SOURCE"
            )
            .context("cannot write to stdout")?;
            for r in list.revisions {
                let uid = r.writer_uid.map_or("-".to_owned(), |u| u.to_string());
                writeln!(
                    out,
                    "{:>8}  {:<24}  {:<12}  {:>10}  {:>6}  {:<8}  {}",
                    r.revision,
                    // etcd keeps no time per revision.
                    match r.unix_millis {
                        0 => "-".to_owned(),
                        millis => rfc3339(millis),
                    },
                    &r.sha256[..r.sha256.len().min(12)],
                    r.size_bytes,
                    uid,
                    r.source,
                    r.note
                )
                .context("cannot write to stdout")?;
            }
        }
        Command::Status { socket, json } => {
            let mut broker = client::connect(&socket.socket).await?;
            let status = broker
                .get_status(pb::GetStatusRequest {})
                .await
                .map_err(rpc_failure)?
                .into_inner();
            let followers = broker
                .list_followers(pb::ListFollowersRequest {})
                .await
                .map_err(rpc_failure)?
                .into_inner();
            let text = match json {
                true => status_json(&status, &followers),
                false => status_lines(&status, &followers),
            };
            writeln!(out, "{text}").context("cannot write to stdout")?;
        }
        Command::Rollback {
            socket,
            revision,
            expected_revision,
            wait,
            canary,
        } => {
            let mut broker = client::connect(&socket.socket).await?;
            let (wait_applied_ms, rollback_on_reject) = wait.fields();
            let (selector, bake_ms, force) = canary.fields();
            let args = broker
                .rollback(pb::RollbackRequest {
                    to_revision: revision,
                    expected_revision,
                    wait_applied_ms,
                    rollback_on_reject,
                    canary: selector,
                    bake_ms,
                    force,
                })
                .await
                .map_err(rpc_failure)?
                .into_inner();
            written(&mut out, &args, &canary)?;
        }
    }
    Ok(())
}

/// `revision N`, and for a canary what happens next.
fn written(out: &mut impl Write, args: &pb::Args, canary: &CanaryArgs) -> anyhow::Result<()> {
    writeln!(out, "revision {}", args.revision).context("cannot write to stdout")?;
    if let Some(said) = canary.said(args) {
        writeln!(out, "{said}").context("cannot write to stdout")?;
    }
    Ok(())
}

fn rfc3339(unix_millis: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_millis);
    humantime::format_rfc3339_millis(time).to_string()
}

fn rfc3339_seconds(unix_millis: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_millis);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// `broker status`, for people:
/// ```text
/// revision 42 sha256 5f1c9a0e3b2d lineage etcd-8e9e05c52164694d-7
/// backend etcd http://10.0.0.5:2379 key /argsbroker/myapp: connected since 2026-11-26T14:03:02.120Z
/// ```
fn status_lines(status: &pb::BrokerStatus, followers: &pb::ListFollowersResponse) -> String {
    let since = rfc3339(status.backend_since_unix_millis);
    let contact = match status.backend_connected {
        true => format!("connected since {since}"),
        false => format!(
            "OUT OF REACH since {since} ({}); serving revision {} from memory, writes fail",
            status.backend_error, status.revision
        ),
    };
    let mut text = format!(
        "revision {} sha256 {} lineage {}\nbackend {}: {contact}\nfollowers {}",
        status.revision,
        &status.sha256[..status.sha256.len().min(12)],
        status.lineage,
        status.backend,
        followers.followers.len()
    );
    if let Some(canary) = &status.canary {
        let bake = match (canary.bake_ms, canary.bake_left_ms) {
            (0, _) => "promote or abort by hand".to_owned(),
            (ms, None) => format!(
                "bake {}: waiting for every selected follower to apply it",
                humantime::format_duration(std::time::Duration::from_millis(u64::from(ms)))
            ),
            (ms, Some(left)) => format!(
                "bake {}: {} left",
                humantime::format_duration(std::time::Duration::from_millis(u64::from(ms))),
                micros(left * 1000)
            ),
        };
        text.insert_str(
            text.find('\n').unwrap_or(text.len()),
            &format!(
                "\ncanary: candidate revision {} sha256 {} to {} ({} selected), stable revision {}; {bake}",
                canary.candidate_revision,
                &canary.candidate_sha256[..canary.candidate_sha256.len().min(12)],
                canary.selector,
                canary.selected.len(),
                canary.stable_revision
            ),
        );
    }
    for f in &followers.followers {
        let rejected = match f.rejected_revision {
            0 => String::new(),
            r => format!(" rejected {r}: {}", f.rejected_reason),
        };
        let after = f.applied_after_micros.map_or(String::new(), |us| {
            format!(" ({} after the write)", micros(us))
        });
        let on = match f.host.as_str() {
            "" => String::new(),
            host => format!(" on {host}"),
        };
        let stale = match f.stale {
            false => String::new(),
            true => format!(
                " (STALE: as of {}, not refreshed since)",
                rfc3339_seconds(f.as_of_unix_millis)
            ),
        };
        let canary = match f.canary {
            true => " [canary]",
            false => "",
        };
        text.push_str(&format!(
            "\n  {}{on}{canary} pid {} uid {} applied {}{after}{rejected} since {}{stale}",
            f.name,
            f.pid,
            f.uid,
            f.applied_revision,
            rfc3339(f.connected_since_unix_millis)
        ));
    }
    text
}

/// `850µs`, `12.3ms`, `1.20s`.
fn micros(us: u64) -> String {
    match us {
        0..=999 => format!("{us}µs"),
        1_000..=999_999 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

fn status_json(status: &pb::BrokerStatus, followers: &pb::ListFollowersResponse) -> String {
    let followers: Vec<_> = followers
        .followers
        .iter()
        .map(|f| {
            serde_json::json!({
                "name": f.name,
                "pid": f.pid,
                "uid": f.uid,
                "applied_revision": f.applied_revision,
                "rejected_revision": f.rejected_revision,
                "rejected_reason": f.rejected_reason,
                "connected_since_unix_millis": f.connected_since_unix_millis,
                "applied_after_micros": f.applied_after_micros,
                "host": f.host,
                // Another host's follower: when its list was last refreshed, and
                // whether it can be trusted now.
                "as_of": (!f.host.is_empty()).then(|| rfc3339(f.as_of_unix_millis)),
                "stale": f.stale,
                "canary": f.canary,
            })
        })
        .collect();
    serde_json::json!({
        "revision": status.revision,
        "sha256": status.sha256,
        "lineage": status.lineage,
        "backend": status.backend,
        "backend_connected": status.backend_connected,
        "backend_error": status.backend_error,
        "backend_since_unix_millis": status.backend_since_unix_millis,
        "followers": followers,
        "canary": status.canary.as_ref().map(|c| serde_json::json!({
            "stable_revision": c.stable_revision,
            "candidate_revision": c.candidate_revision,
            "candidate_sha256": c.candidate_sha256,
            "selector": c.selector,
            "started_unix_millis": c.started_unix_millis,
            "bake_ms": c.bake_ms,
            "bake_left_ms": c.bake_left_ms,
            "selected": c.selected,
        })),
    })
    .to_string()
}

fn read_input(file: &PathBuf) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

/// Exact text when piped; indented (still exact) on a terminal.
fn print_json(out: &mut impl Write, json: &str) -> anyhow::Result<()> {
    let text = if std::io::stdout().is_terminal() {
        serde_json::from_str::<serde_json::Value>(json)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| json.to_owned())
    } else {
        json.to_owned()
    };
    writeln!(out, "{text}").context("cannot write to stdout")
}
