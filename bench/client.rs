//! `bench`: the load client that `bench/run` drives (issue 6). Not a test and
//! never an assertion: every subcommand prints one line of `key=value` pairs
//! (times in microseconds unless the key says otherwise) and exits 0 when the
//! workload ran, whatever the figures.
//!
//! ```text
//! bench once      --socket S [--target broker|floor]       one GetArgs; for readiness
//! bench seq       --socket S [--target ..] [--secs 5]      sequential GetArgs on one connection:
//!                                                          p50/p99/p999 and calls/s
//! bench conc      --socket S [--target ..] [--secs 5] [--conns 4] [--inflight 64]
//!                                                          N calls in flight over M connections
//! bench propagate --socket S --logs DIR --workers N [--changes 200] [--gap-ms 10] [--acks]
//!                                                          PatchArgs sent -> last of N worker
//!                                                          processes applied it (from their logs);
//!                                                          --acks: also the broker's publish -> last
//!                                                          report (ListFollowers, broker's clock)
//! bench watchers  --socket S --watchers 1000 [--changes 50] [--gap-ms 20] [--follow] [--broker-pid P]
//!                                                          PatchArgs sent -> last of N in-process
//!                                                          WatchArgs (or Follow) streams
//! bench write     --socket S [--changes 20] [--gap-ms 10] [--wait-ms MS]
//!                                                          PatchArgs latency alone (--wait-ms:
//!                                                          wait_applied_ms, `broker patch --wait`)
//! bench follower  --socket S [--watch-only]                a follower process (Follow, a report per
//!                                                          revision) logging what it receives
//! bench etcd-watch --endpoints A,B,C [--key K] [--payload F] [--changes 200] [--gap-ms 10]
//!                                                          etcd put sent -> last of one watch
//!                                                          stream per member, and put latency
//! bench stages   --socket S --logs DIR --broker-log F --workers N [--changes 50] [--gap-ms 20]
//!                                                          the stages of one change, from the
//!                                                          trace lines of the broker
//!                                                          (argsbroker::stages=trace) and the
//!                                                          workers (argsbroker::client=trace)
//! bench writers   --socket S [--writers 16] [--secs 5]     PatchArgs from N concurrent writers
//!                                                          (one connection each): commits/s
//! bench etcd-txn  --endpoints A,B,C [--key K] [--payload F] [--changes 200] [--gap-ms 10]
//!                                                          a bare etcd txn (mod_revision == X,
//!                                                          then put): its latency
//! bench coldstart --probe http:HOST:PORT|broker:SOCK|floor:SOCK [--reps 15] -- CMD ARGS..
//!                                                          spawn CMD until the probe answers
//! ```
//!
//! Every propagation figure starts just before the write is sent: on this
//! process's monotonic clock for receivers in it, on the system clock for
//! other processes (their log lines carry it).
//!
//! `--target broker` calls `argsbroker.v1.ArgsBroker/GetArgs` on the broker;
//! `--target floor` calls `floor.Floor/GetArgs` on `floor-server` (bench/floor.rs),
//! the bare tonic server of this package (a handler that returns prepared `Bytes`). Both go
//! through the same channel code and decode the document as bytes (the wire
//! is the same as a `string`), so the two differ only in the server. `--typed`
//! uses the library's own client (`argsbroker::client::connect`, `json` decoded
//! as a `String`) instead.
use anyhow::{anyhow, bail, Context, Result};
use argsbroker::pb;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use hyper_util::rt::TokioIo;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint, Uri};

/// `Args` as the bench decodes it: `json` and `sha256` as bytes, so that the
/// client does not validate 1 MiB of UTF-8 per call (same wire format).
#[derive(Clone, PartialEq, prost::Message)]
struct RawArgs {
    #[prost(uint64, tag = "1")]
    revision: u64,
    #[prost(bytes = "bytes", tag = "2")]
    json: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    sha256: Bytes,
    #[prost(bool, tag = "4")]
    not_modified: bool,
}

/// The floor's messages, from the proto `floor-server` is built from (bench/proto/floor.proto).
mod floor {
    tonic::include_proto!("floor");
}

#[derive(Debug, Parser)]
#[command(name = "bench", about = "Load client for bench/run (issue 6)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// One GetArgs call; exit 0 when it succeeds.
    Once(Get),
    /// Sequential GetArgs on one connection (current_thread runtime).
    Seq(Get),
    /// GetArgs with many calls in flight over several connections (multi-thread runtime).
    Conc(Get),
    /// Change propagation to N worker processes, read from their debug logs.
    Propagate(Propagate),
    /// Change propagation to N WatchArgs streams in this process.
    Watchers(Watchers),
    /// PatchArgs latency alone (with `--wait-ms`: `broker patch --wait`).
    Write(Write_),
    /// A minimal follower process: Follow with a report per revision (or
    /// WatchArgs only), logging each revision's arrival like a worker does.
    Follower(Follower),
    /// etcd's own floor: put -> the watch event on one stream per member.
    EtcdWatch(EtcdWatch),
    /// Cold start of a server process until a probe answers.
    Coldstart(Coldstart),
    /// The stages of one change, from trace lines of the broker and the workers.
    Stages(Stages),
    /// PatchArgs from N concurrent writers: commits per second.
    Writers(Writers),
    /// A bare etcd transaction with the compare a broker's commit makes.
    EtcdTxn(EtcdTxn),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Broker,
    Floor,
}

#[derive(Debug, Args)]
struct Get {
    /// The server's Unix socket.
    #[arg(long)]
    socket: PathBuf,
    #[arg(long, value_enum, default_value = "broker")]
    target: Target,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 0.5)]
    warmup_secs: f64,
    /// Connections (conc).
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Calls in flight (conc).
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Use the library's client (json decoded as a String) instead of raw bytes.
    #[arg(long)]
    typed: bool,
}

#[derive(Debug, Args)]
struct Propagate {
    #[arg(long)]
    socket: PathBuf,
    /// Directory holding one stderr log per worker (`*.log`).
    #[arg(long)]
    logs: PathBuf,
    /// How many worker logs to expect.
    #[arg(long)]
    workers: usize,
    #[arg(long, default_value_t = 200)]
    changes: usize,
    #[arg(long, default_value_t = 10.0)]
    gap_ms: f64,
    /// Seconds to wait for the workers to be up and to apply the last change.
    #[arg(long, default_value_t = 60.0)]
    timeout_secs: f64,
    /// A JSON key the patches set (a counter), so every patch is a new revision.
    #[arg(long, default_value = "bench_seq")]
    key: String,
    /// Also ask ListFollowers after each change (in the gap): the broker's
    /// publish -> the last follower's report, on the broker's clock.
    #[arg(long)]
    acks: bool,
}

#[derive(Debug, Args)]
struct Watchers {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    #[arg(long, default_value_t = 50)]
    changes: usize,
    #[arg(long, default_value_t = 20.0)]
    gap_ms: f64,
    #[arg(long, default_value_t = 60.0)]
    timeout_secs: f64,
    /// Follow streams that report each applied revision (as workers do)
    /// instead of WatchArgs.
    #[arg(long)]
    follow: bool,
    /// The broker's pid, to report its RSS before and with the watchers.
    #[arg(long)]
    broker_pid: Option<u32>,
    #[arg(long, default_value = "bench_seq")]
    key: String,
}

#[derive(Debug, Args)]
struct Write_ {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long, default_value_t = 20)]
    changes: usize,
    #[arg(long, default_value_t = 10.0)]
    gap_ms: f64,
    /// PatchArgs `wait_applied_ms` (`broker patch --wait`): the reply comes once
    /// every follower applied the revision. 0: no waiting.
    #[arg(long, default_value_t = 0)]
    wait_ms: u32,
    #[arg(long, default_value_t = 120.0)]
    timeout_secs: f64,
    #[arg(long, default_value = "bench_seq")]
    key: String,
}

#[derive(Debug, Args)]
struct Follower {
    #[arg(long)]
    socket: PathBuf,
    /// WatchArgs instead of Follow: no report of what was applied.
    #[arg(long)]
    watch_only: bool,
    #[arg(long, default_value = "bench follower")]
    name: String,
}

#[derive(Debug, Args)]
struct EtcdWatch {
    /// etcd client URLs, comma-separated: one watch stream on each.
    #[arg(long)]
    endpoints: String,
    /// The key put and watched (not one a broker serves).
    #[arg(long, default_value = "/bench/floor")]
    key: String,
    /// A file whose bytes make the value (so that it is as large as the document).
    #[arg(long)]
    payload: Option<PathBuf>,
    #[arg(long, default_value_t = 200)]
    changes: usize,
    #[arg(long, default_value_t = 10.0)]
    gap_ms: f64,
    #[arg(long, default_value_t = 60.0)]
    timeout_secs: f64,
}

#[derive(Debug, Args)]
struct Stages {
    #[arg(long)]
    socket: PathBuf,
    /// The workers' logs (`*.log`, with `argsbroker::client=trace`).
    #[arg(long)]
    logs: PathBuf,
    /// The broker's log (with `argsbroker::stages=trace`).
    #[arg(long)]
    broker_log: PathBuf,
    #[arg(long)]
    workers: usize,
    #[arg(long, default_value_t = 50)]
    changes: usize,
    #[arg(long, default_value_t = 20.0)]
    gap_ms: f64,
    #[arg(long, default_value_t = 60.0)]
    timeout_secs: f64,
    #[arg(long, default_value = "bench_seq")]
    key: String,
}

#[derive(Debug, Args)]
struct Writers {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long, default_value_t = 16)]
    writers: usize,
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
}

#[derive(Debug, Args)]
struct EtcdTxn {
    #[arg(long)]
    endpoints: String,
    /// The key written (not one a broker serves).
    #[arg(long, default_value = "/bench/txn")]
    key: String,
    /// A file whose bytes make the value (so that it is as large as the document).
    #[arg(long)]
    payload: Option<PathBuf>,
    #[arg(long, default_value_t = 200)]
    changes: usize,
    #[arg(long, default_value_t = 10.0)]
    gap_ms: f64,
}

#[derive(Debug, Args)]
struct Coldstart {
    /// `http:HOST:PORT` (GET /readyz answers 200), `broker:SOCKET` or `floor:SOCKET` (a GetArgs call succeeds).
    #[arg(long)]
    probe: String,
    #[arg(long, default_value_t = 15)]
    reps: usize,
    /// Seconds a start may take before it counts as failed.
    #[arg(long, default_value_t = 10.0)]
    timeout_secs: f64,
    /// The command that starts the server (stopped with SIGTERM after each start).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Once(g) => current_thread().and_then(|rt| rt.block_on(once(g))),
        Cmd::Seq(g) => current_thread().and_then(|rt| rt.block_on(seq(g))),
        Cmd::Conc(g) => multi_thread().and_then(|rt| rt.block_on(conc(g))),
        Cmd::Propagate(p) => current_thread().and_then(|rt| rt.block_on(propagate(p))),
        Cmd::Watchers(w) => multi_thread().and_then(|rt| rt.block_on(watchers(w))),
        Cmd::Write(w) => current_thread().and_then(|rt| rt.block_on(write(w))),
        Cmd::Follower(f) => current_thread().and_then(|rt| rt.block_on(follower(f))),
        Cmd::EtcdWatch(e) => multi_thread().and_then(|rt| rt.block_on(etcd_watch(e))),
        Cmd::Coldstart(c) => coldstart(c),
        Cmd::Stages(st) => current_thread().and_then(|rt| rt.block_on(stages(st))),
        Cmd::Writers(w) => multi_thread().and_then(|rt| rt.block_on(writers(w))),
        Cmd::EtcdTxn(e) => current_thread().and_then(|rt| rt.block_on(etcd_txn(e))),
    };
    if let Err(err) = result {
        eprintln!("bench: error: {err:#}");
        std::process::exit(1);
    }
}

fn current_thread() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn multi_thread() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

// ------------------------------------------------------------------ GetArgs

/// A channel over the Unix socket with `:authority` localhost, as the library's client opens it.
async fn channel(path: &Path) -> Result<Channel> {
    let path = path.to_path_buf();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .context("connect")?;
    Ok(channel)
}

/// One caller: a GetArgs of the whole document on a shared channel.
#[derive(Clone)]
enum Getter {
    Raw {
        grpc: tonic::client::Grpc<Channel>,
        target: Target,
    },
    Typed(pb::args_broker_client::ArgsBrokerClient<Channel>),
}

impl Getter {
    async fn new(g: &Get) -> Result<Self> {
        if g.typed {
            if g.target != Target::Broker {
                bail!("--typed calls the broker only");
            }
            return Ok(Getter::Typed(argsbroker::client::connect(&g.socket).await?));
        }
        let grpc = tonic::client::Grpc::new(channel(&g.socket).await?)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        Ok(Getter::Raw {
            grpc,
            target: g.target,
        })
    }

    /// Returns the number of document bytes received.
    async fn get(&mut self) -> Result<usize, tonic::Status> {
        match self {
            Getter::Typed(client) => Ok(client
                .get_args(pb::GetArgsRequest::default())
                .await?
                .into_inner()
                .json
                .len()),
            Getter::Raw { grpc, target } => {
                grpc.ready()
                    .await
                    .map_err(|e| tonic::Status::unknown(format!("not ready: {e}")))?;
                match target {
                    Target::Broker => {
                        let codec =
                            tonic_prost::ProstCodec::<pb::GetArgsRequest, RawArgs>::default();
                        let path = PathAndQuery::from_static("/argsbroker.v1.ArgsBroker/GetArgs");
                        let reply = grpc
                            .unary(
                                tonic::Request::new(pb::GetArgsRequest::default()),
                                path,
                                codec,
                            )
                            .await?;
                        Ok(reply.into_inner().json.len())
                    }
                    Target::Floor => {
                        let codec = tonic_prost::ProstCodec::<
                            floor::GetArgsRequest,
                            floor::ArgsReply,
                        >::default();
                        let path = PathAndQuery::from_static("/floor.Floor/GetArgs");
                        let reply = grpc
                            .unary(tonic::Request::new(floor::GetArgsRequest {}), path, codec)
                            .await?;
                        Ok(reply.into_inner().payload.len())
                    }
                }
            }
        }
    }
}

async fn once(g: Get) -> Result<()> {
    let mut getter = Getter::new(&g).await?;
    let bytes = getter.get().await?;
    println!("ok=1 bytes={bytes}");
    Ok(())
}

async fn seq(g: Get) -> Result<()> {
    let mut getter = Getter::new(&g).await?;
    let warm = Instant::now();
    while warm.elapsed().as_secs_f64() < g.warmup_secs {
        getter.get().await?;
    }
    let dur = Duration::from_secs_f64(g.secs);
    let mut lat: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut bytes = 0usize;
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        let s = Instant::now();
        bytes += getter.get().await?;
        lat.push(s.elapsed().as_nanos() as u64);
    }
    let secs = t0.elapsed().as_secs_f64();
    lat.sort_unstable();
    println!(
        "mode=seq target={:?} n={} secs={secs:.2} rps={:.0} p50_us={:.1} p99_us={:.1} p999_us={:.1} mbps={:.1} bytes={}",
        g.target,
        lat.len(),
        lat.len() as f64 / secs,
        pct(&lat, 50.0),
        pct(&lat, 99.0),
        pct(&lat, 99.9),
        bytes as f64 / secs / 1e6,
        bytes / lat.len().max(1),
    );
    Ok(())
}

async fn conc(g: Get) -> Result<()> {
    let conns = g.conns.max(1);
    let mut getters = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut getter = Getter::new(&g).await?;
        getter.get().await?;
        getters.push(getter);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(g.inflight);
    for i in 0..g.inflight {
        let mut getter = getters[i % conns].clone();
        let (stop, measuring) = (stop.clone(), measuring.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u64> = Vec::with_capacity(1 << 16);
            let mut bytes = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let s = Instant::now();
                let n = getter.get().await?;
                if measuring.load(Ordering::Relaxed) {
                    lat.push(s.elapsed().as_nanos() as u64);
                    bytes += n;
                }
            }
            Ok::<_, tonic::Status>((lat, bytes))
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(g.warmup_secs)).await;
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(g.secs)).await;
    stop.store(true, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let mut all = Vec::new();
    let mut bytes = 0usize;
    for t in tasks {
        let (lat, b) = t.await??;
        all.extend(lat);
        bytes += b;
    }
    all.sort_unstable();
    println!(
        "mode=conc target={:?} conns={conns} inflight={} n={} secs={secs:.2} rps={:.0} p50_us={:.1} p99_us={:.1} p999_us={:.1} mbps={:.1}",
        g.target,
        g.inflight,
        all.len(),
        all.len() as f64 / secs,
        pct(&all, 50.0),
        pct(&all, 99.0),
        pct(&all, 99.9),
        bytes as f64 / secs / 1e6,
    );
    Ok(())
}

// ------------------------------------------------------------------ writes

/// One timed PatchArgs: the revision it made, the wall-clock time of its reply
/// (µs since the epoch) and its latency (ns, monotonic).
///
/// Every propagation figure is measured from `sent` (in-process receivers) or
/// `sent_unix_us` (other processes, whose logs carry the same system clock),
/// both taken just before the request is handed to the channel: a receiver
/// may see a revision before the writer sees its reply, never before the send.
struct Change {
    revision: u64,
    sent_unix_us: i64,
    reply_unix_us: i64,
    sent: Instant,
    latency_ns: u64,
    /// With `list_acks`: the broker's publish -> the last follower's report
    /// that it applied this revision (ListFollowers' `applied_after_micros`,
    /// all on the broker's clock); `None` when some follower had not.
    acked_us: Option<u64>,
}

async fn patch_series(
    socket: &Path,
    key: &str,
    changes: usize,
    gap: Duration,
    deadline: Instant,
    wait_applied_ms: u32,
    list_acks: bool,
) -> Result<Vec<Change>> {
    let mut client = argsbroker::client::connect(socket).await?;
    // A nonce per run, so that a run never repeats the content of an earlier one.
    let nonce = unix_us(SystemTime::now());
    let mut out = Vec::with_capacity(changes);
    for i in 0..changes {
        if Instant::now() > deadline {
            break;
        }
        let request = pb::PatchArgsRequest {
            merge_patch: format!("{{{}:\"{nonce}-{i}\"}}", serde_json::to_string(key)?),
            wait_applied_ms,
            ..Default::default()
        };
        let sent = Instant::now();
        let sent_wall = SystemTime::now();
        let reply = client.patch_args(request).await?.into_inner();
        let reply_at = Instant::now();
        let reply_wall = SystemTime::now();
        tokio::time::sleep(gap).await;
        // Asked in the gap, after the fan-out, so it does not compete with it.
        let acked_us = match list_acks {
            false => None,
            true => {
                let list = client
                    .list_followers(pb::ListFollowersRequest {})
                    .await?
                    .into_inner();
                let all = list.revision == reply.revision
                    && list
                        .followers
                        .iter()
                        .all(|f| f.applied_revision == reply.revision);
                all.then(|| {
                    list.followers
                        .iter()
                        .filter_map(|f| f.applied_after_micros)
                        .max()
                })
                .flatten()
            }
        };
        out.push(Change {
            revision: reply.revision,
            sent_unix_us: unix_us(sent_wall),
            reply_unix_us: unix_us(reply_wall),
            sent,
            latency_ns: (reply_at - sent).as_nanos() as u64,
            acked_us,
        });
    }
    Ok(out)
}

async fn write(w: Write_) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(w.timeout_secs);
    let changes = patch_series(
        &w.socket,
        &w.key,
        w.changes,
        Duration::from_secs_f64(w.gap_ms / 1e3),
        deadline,
        w.wait_ms,
        false,
    )
    .await?;
    let mut lat: Vec<u64> = changes.iter().map(|c| c.latency_ns).collect();
    lat.sort_unstable();
    println!(
        "mode=write wait_ms={} n={} p50_us={:.1} p99_us={:.1} max_us={:.1}",
        w.wait_ms,
        lat.len(),
        pct(&lat, 50.0),
        pct(&lat, 99.0),
        pct(&lat, 100.0)
    );
    Ok(())
}

// ------------------------------------------------------------------ propagation to processes

/// Reads every `*.log` in `dir`: per file, revision -> µs since the epoch of
/// its `args updated revision=N` line; and whether the worker said it serves.
fn read_logs(dir: &Path) -> Result<Vec<(bool, BTreeMap<u64, i64>)>> {
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    paths.sort();
    for path in paths {
        let text = String::from_utf8_lossy(&std::fs::read(&path)?).into_owned();
        let mut serving = false;
        let mut applied = BTreeMap::new();
        for raw in text.lines() {
            let line = strip_ansi(raw);
            if line.contains("serving args on") {
                serving = true;
            }
            if !line.contains("args updated") {
                continue;
            }
            let (Some(ts), Some(rev)) = (
                line.split_whitespace()
                    .next()
                    .and_then(|t| parse_rfc3339_us(t).or_else(|| t.parse().ok())),
                field(&line, "revision="),
            ) else {
                continue;
            };
            applied.entry(rev).or_insert(ts);
        }
        out.push((serving, applied));
    }
    Ok(out)
}

fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(key)? + key.len();
    let digits: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `2026-11-26T02:41:00.123456Z` -> µs since the Unix epoch (UTC only).
fn parse_rfc3339_us(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let mut frac_us: String = frac.chars().take(6).collect();
    while frac_us.len() < 6 {
        frac_us.push('0');
    }
    let us: i64 = frac_us.parse().ok()?;
    // days from civil (Howard Hinnant)
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3_600 + mm * 60 + ss) * 1_000_000) + us)
}

async fn propagate(p: Propagate) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(p.timeout_secs);
    // Every worker up (it holds the args and its watch before it listens).
    loop {
        let logs = read_logs(&p.logs)?;
        let up = logs.iter().filter(|(serving, _)| *serving).count();
        if up >= p.workers {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {up} of {} workers came up", p.workers);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let changes = patch_series(
        &p.socket,
        &p.key,
        p.changes,
        Duration::from_secs_f64(p.gap_ms / 1e3),
        deadline,
        0,
        p.acks,
    )
    .await?;
    let last_rev = changes.last().map_or(0, |c| c.revision);
    // Wait (bounded) until every worker logged the last revision.
    let logs = loop {
        let logs = read_logs(&p.logs)?;
        let done = logs
            .iter()
            .filter(|(_, applied)| applied.range(last_rev..).next().is_some())
            .count();
        if done >= p.workers || Instant::now() > deadline {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Every figure from the send (one clock: the system clock the workers' log
    // lines carry); `from_reply_*` kept for comparison with older runs.
    let (mut last_from_send, mut last_from_reply, mut any_from_send) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut missing = 0usize;
    let mut skipped = 0usize;
    for c in &changes {
        let mut latest: Option<i64> = None;
        let mut complete = true;
        for (_, applied) in &logs {
            // The time this worker first served this revision or a newer one
            // (a watcher that falls behind skips to the newest).
            let Some(t) = applied.range(c.revision..).map(|(_, t)| *t).min() else {
                complete = false;
                missing += 1;
                continue;
            };
            if !applied.contains_key(&c.revision) {
                skipped += 1;
            }
            any_from_send.push(t - c.sent_unix_us);
            latest = Some(latest.map_or(t, |l: i64| l.max(t)));
        }
        if let (true, Some(t)) = (complete, latest) {
            last_from_send.push(t - c.sent_unix_us);
            last_from_reply.push(t - c.reply_unix_us);
        }
    }
    let mut write: Vec<u64> = changes.iter().map(|c| c.latency_ns).collect();
    write.sort_unstable();
    let mut acked: Vec<u64> = changes
        .iter()
        .filter_map(|c| c.acked_us.map(|us| us * 1000))
        .collect();
    acked.sort_unstable();
    let acks = match p.acks {
        false => String::new(),
        true => format!(
            " acked={} ack_p50_us={:.1} ack_p99_us={:.1}",
            acked.len(),
            pct(&acked, 50.0),
            pct(&acked, 99.0)
        ),
    };
    last_from_reply.sort_unstable();
    last_from_send.sort_unstable();
    any_from_send.sort_unstable();
    println!(
        "mode=propagate workers={} logs={} changes={} complete={} missing={missing} skipped={skipped} \
         p50_us={:.1} p99_us={:.1} max_us={:.1} from_reply_p50_us={:.1} from_reply_p99_us={:.1} \
         any_p50_us={:.1} any_p99_us={:.1} write_p50_us={:.1} write_p99_us={:.1}{acks}",
        p.workers,
        logs.len(),
        changes.len(),
        last_from_send.len(),
        pct_i(&last_from_send, 50.0),
        pct_i(&last_from_send, 99.0),
        pct_i(&last_from_send, 100.0),
        pct_i(&last_from_reply, 50.0),
        pct_i(&last_from_reply, 99.0),
        pct_i(&any_from_send, 50.0),
        pct_i(&any_from_send, 99.0),
        pct(&write, 50.0),
        pct(&write, 99.0),
    );
    Ok(())
}

// ------------------------------------------------------------------ propagation to watch streams

async fn watchers(w: Watchers) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(w.timeout_secs);
    let rss_before = w.broker_pid.and_then(rss_kb);
    let ready = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<HashMap<u64, Instant>>>> =
        Arc::new(Mutex::new(vec![HashMap::new(); w.watchers]));
    let t_connect = Instant::now();
    let mut tasks = Vec::with_capacity(w.watchers);
    for i in 0..w.watchers {
        let (socket, ready, stop, seen, follow) = (
            w.socket.clone(),
            ready.clone(),
            stop.clone(),
            seen.clone(),
            w.follow,
        );
        tasks.push(tokio::spawn(async move {
            let mut stream =
                ArgsStream::open(&socket, follow, &format!("bench watcher {i}")).await?;
            let mut first = true;
            while !stop.load(Ordering::Relaxed) {
                let next = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
                let Ok(message) = next else { continue };
                let Some(args) = message? else { break };
                let at = Instant::now();
                stream.ack(&args).await;
                if first {
                    first = false;
                    ready.fetch_add(1, Ordering::Relaxed);
                } else if let Ok(mut seen) = seen.lock() {
                    seen[i].insert(args.revision, at);
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    while ready.load(Ordering::Relaxed) < w.watchers {
        if Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
            bail!(
                "only {} of {} watchers connected",
                ready.load(Ordering::Relaxed),
                w.watchers
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let connect_ms = t_connect.elapsed().as_secs_f64() * 1e3;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_with = w.broker_pid.and_then(rss_kb);
    let changes = patch_series(
        &w.socket,
        &w.key,
        w.changes,
        Duration::from_secs_f64(w.gap_ms / 1e3),
        deadline,
        0,
        false,
    )
    .await?;
    let last_rev = changes.last().map_or(0, |c| c.revision);
    loop {
        let done = seen
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|m| m.keys().any(|r| *r >= last_rev))
                    .count()
            })
            .unwrap_or(0);
        if done >= w.watchers || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let seen = seen.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    let mut last = Vec::new();
    let mut missing = 0usize;
    for c in &changes {
        let mut latest: Option<Instant> = None;
        let mut complete = true;
        for m in &seen {
            match m
                .iter()
                .filter(|(r, _)| **r >= c.revision)
                .map(|(_, t)| *t)
                .min()
            {
                Some(t) => latest = Some(latest.map_or(t, |l| l.max(t))),
                None => {
                    complete = false;
                    missing += 1;
                }
            }
        }
        if let (true, Some(t)) = (complete, latest) {
            // From the send, on this process's one monotonic clock: a watcher may
            // get the revision before the writer gets its reply (the broker
            // publishes, then replies), but never before the request was sent.
            last.push(t.saturating_duration_since(c.sent).as_micros() as i64);
        }
    }
    last.sort_unstable();
    let mut write: Vec<u64> = changes.iter().map(|c| c.latency_ns).collect();
    write.sort_unstable();
    for t in tasks {
        t.abort();
    }
    println!(
        "mode=watchers follow={} watchers={} changes={} complete={} missing={missing} connect_ms={connect_ms:.1} \
         p50_us={:.1} p99_us={:.1} write_p50_us={:.1} write_p99_us={:.1} rss_broker_before_kb={} rss_broker_with_kb={}",
        u8::from(w.follow),
        w.watchers,
        changes.len(),
        last.len(),
        pct_i(&last, 50.0),
        pct_i(&last, 99.0),
        pct(&write, 50.0),
        pct(&write, 99.0),
        rss_before.map_or("nan".into(), |v| v.to_string()),
        rss_with.map_or("nan".into(), |v| v.to_string()),
    );
    Ok(())
}

// ------------------------------------------------------------------ followers

/// One stream of args from the broker: WatchArgs, or Follow with a report
/// (`FollowRequest`, the follower's whole position) after each revision, as
/// `argsbroker::client` sends it for every worker.
struct ArgsStream {
    stream: tonic::Streaming<pb::Args>,
    reports: Option<tokio::sync::mpsc::Sender<pb::FollowRequest>>,
    name: String,
}

impl ArgsStream {
    async fn open(socket: &Path, follow: bool, name: &str) -> Result<Self> {
        let mut client = argsbroker::client::connect(socket).await?;
        if !follow {
            let stream = client
                .watch_args(pb::WatchArgsRequest::default())
                .await?
                .into_inner();
            return Ok(Self {
                stream,
                reports: None,
                name: name.to_owned(),
            });
        }
        let (reports, requests) = tokio::sync::mpsc::channel(16);
        reports
            .send(pb::FollowRequest {
                name: name.to_owned(),
                ..Default::default()
            })
            .await
            .map_err(|_| anyhow!("follow: request stream closed"))?;
        let stream = client
            .follow(tokio_stream::wrappers::ReceiverStream::new(requests))
            .await?
            .into_inner();
        Ok(Self {
            stream,
            reports: Some(reports),
            name: name.to_owned(),
        })
    }

    async fn next(&mut self) -> Result<Option<pb::Args>> {
        Ok(self.stream.message().await?)
    }

    /// Reports `args` applied (Follow only).
    async fn ack(&self, args: &pb::Args) {
        if let Some(reports) = &self.reports {
            let _ = reports
                .send(pb::FollowRequest {
                    name: self.name.clone(),
                    applied_revision: args.revision,
                    applied_lineage: args.lineage.clone(),
                    ..Default::default()
                })
                .await;
        }
    }
}

/// A follower process: logs `serving args on` once it holds the args, then
/// `<µs since the epoch> args updated revision=N` as each revision arrives
/// (the clock and the line `bench propagate` reads from workers' logs).
async fn follower(f: Follower) -> Result<()> {
    let mut stream = ArgsStream::open(&f.socket, !f.watch_only, &f.name).await?;
    let mut first = true;
    while let Some(args) = stream.next().await? {
        let at = unix_us(SystemTime::now());
        if first {
            first = false;
            eprintln!(
                "serving args on (bench follower) revision={}",
                args.revision
            );
        } else {
            eprintln!("{at} args updated revision={}", args.revision);
        }
        stream.ack(&args).await;
    }
    Ok(())
}

// ------------------------------------------------------------------ the stages of one change

/// `(µs since the epoch, revision)` of every line of `path` that contains
/// `what` (a revision of 0 when the line names none).
fn stamped(path: &Path, what: &str) -> Result<Vec<(i64, u64)>> {
    let text = String::from_utf8_lossy(&std::fs::read(path)?).into_owned();
    Ok(text
        .lines()
        .map(strip_ansi)
        .filter(|line| line.contains(what))
        .filter_map(|line| {
            let ts = line.split_whitespace().next().and_then(parse_rfc3339_us)?;
            Some((ts, field(&line, "revision=").unwrap_or(0)))
        })
        .collect())
}

/// Every `*.log` of `dir`.
fn logs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    paths.sort();
    Ok(paths)
}

/// Sends `changes` PatchArgs, then reads when each stage of each change
/// happened, all on the system clock every process's log lines carry:
/// the send; the broker decoding the request (`write received`); its publish
/// (`published`: the first of the broker's tasks woken by it); the first
/// and last stream it was handed to (`handed to a stream`); the first and
/// last worker it reached (`args received`); the last worker that applied it
/// (`args updated`); the last report of it the broker read (`report
/// received`); and the reply. Prints p50 and p99 of each, in µs from the
/// send (`*_us`), and the p50 of each gap.
async fn stages(st: Stages) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(st.timeout_secs);
    loop {
        let logs = read_logs(&st.logs)?;
        let up = logs.iter().filter(|(serving, _)| *serving).count();
        if up >= st.workers {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {up} of {} workers came up", st.workers);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let changes = patch_series(
        &st.socket,
        &st.key,
        st.changes,
        Duration::from_secs_f64(st.gap_ms / 1e3),
        deadline,
        0,
        false,
    )
    .await?;
    let last_rev = changes.last().map_or(0, |c| c.revision);
    // Until every worker's report of the last change is in the broker's log (bounded).
    loop {
        let reports = stamped(&st.broker_log, "report received")?;
        let done = reports.iter().filter(|(_, r)| *r == last_rev).count();
        if done >= st.workers || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = stamped(&st.broker_log, "write received")?;
    let by_rev = |lines: &[(i64, u64)]| {
        let mut m: HashMap<u64, Vec<i64>> = HashMap::new();
        for (ts, rev) in lines {
            m.entry(*rev).or_default().push(*ts);
        }
        m
    };
    let handed = by_rev(&stamped(&st.broker_log, "handed to a stream")?);
    // When the broker's own task that notes publications woke, or the
    // first stream did if that was earlier (both wake on the one publish).
    let mut published = by_rev(&stamped(&st.broker_log, "published")?);
    for (revision, times) in &handed {
        published
            .entry(*revision)
            .or_default()
            .extend(times.iter().min());
    }
    let reported = by_rev(&stamped(&st.broker_log, "report received")?);
    let (mut arrived, mut applied) = (Vec::new(), Vec::new());
    for path in logs_in(&st.logs)? {
        arrived.extend(stamped(&path, "args received")?);
        applied.extend(stamped(&path, "args updated")?);
    }
    let (arrived, applied) = (by_rev(&arrived), by_rev(&applied));
    const NAMES: [&str; 9] = [
        "received",
        "published",
        "handed_first",
        "handed_last",
        "arrived_first",
        "arrived_last",
        "applied_last",
        "acked_last",
        "reply",
    ];
    let mut at: Vec<Vec<i64>> = vec![Vec::new(); NAMES.len()];
    let mut gaps: Vec<Vec<i64>> = vec![Vec::new(); NAMES.len()];
    let mut complete = 0usize;
    for c in &changes {
        let first =
            |m: &HashMap<u64, Vec<i64>>| m.get(&c.revision).and_then(|v| v.iter().min().copied());
        let last = |m: &HashMap<u64, Vec<i64>>, n: usize| {
            m.get(&c.revision)
                .filter(|v| v.len() >= n)
                .and_then(|v| v.iter().max().copied())
        };
        let recv = received
            .iter()
            .map(|(ts, _)| *ts)
            .find(|ts| *ts >= c.sent_unix_us && *ts <= c.reply_unix_us);
        let row = [
            recv,
            first(&published),
            first(&handed),
            last(&handed, st.workers),
            first(&arrived),
            last(&arrived, st.workers),
            last(&applied, st.workers),
            last(&reported, st.workers),
            Some(c.reply_unix_us),
        ];
        if row.iter().any(Option::is_none) {
            continue;
        }
        complete += 1;
        let row: Vec<i64> = row
            .iter()
            .map(|t| t.unwrap_or(0) - c.sent_unix_us)
            .collect();
        let mut before = 0;
        for (i, t) in row.iter().enumerate() {
            at[i].push(*t);
            // Each stage from the one before it (the reply from the publish).
            let from = match NAMES[i] {
                "reply" | "handed_first" | "arrived_first" => row[1],
                "arrived_last" => row[3],
                _ => before,
            };
            gaps[i].push(t - from);
            if NAMES[i] != "reply" {
                before = *t;
            }
        }
    }
    let mut out = format!(
        "mode=stages workers={} changes={} complete={complete}",
        st.workers,
        changes.len()
    );
    for (i, name) in NAMES.iter().enumerate() {
        at[i].sort_unstable();
        gaps[i].sort_unstable();
        out.push_str(&format!(
            " {name}_p50_us={:.1} {name}_p99_us={:.1} {name}_gap_p50_us={:.1}",
            pct_i(&at[i], 50.0),
            pct_i(&at[i], 99.0),
            pct_i(&gaps[i], 50.0)
        ));
    }
    println!("{out}");
    Ok(())
}

// ------------------------------------------------------------------ write throughput

/// N writers, one connection each, sending PatchArgs back to back (each its
/// own key) for `secs`: commits per second and the latency of each.
async fn writers(w: Writers) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let nonce = unix_us(SystemTime::now());
    let mut clients = Vec::with_capacity(w.writers);
    for _ in 0..w.writers {
        clients.push(argsbroker::client::connect(&w.socket).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let request = pb::PatchArgsRequest {
                    merge_patch: format!("{{\"bench_writer_{i}\":\"{nonce}-{n}\"}}"),
                    ..Default::default()
                };
                let sent = Instant::now();
                client.patch_args(request).await?;
                lat.push(sent.elapsed().as_nanos() as u64);
                n += 1;
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(w.secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    println!(
        "mode=writers writers={} n={} commits_per_s={:.1} p50_us={:.1} p99_us={:.1}",
        w.writers,
        lat.len(),
        lat.len() as f64 / secs,
        pct(&lat, 50.0),
        pct(&lat, 99.0)
    );
    Ok(())
}

/// Sequential etcd transactions, each `mod_revision(key) == X` then a put of
/// the value, X the revision of the one before: the one round trip a
/// broker's commit in etcd mode needs at least.
async fn etcd_txn(e: EtcdTxn) -> Result<()> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let endpoints: Vec<String> = e.endpoints.split(',').map(str::to_owned).collect();
    let payload = match &e.payload {
        Some(p) => std::fs::read(p)?,
        None => Vec::new(),
    };
    let mut client = etcd_client::Client::connect(&endpoints, None).await?;
    let put = client.put(e.key.as_bytes(), payload.clone(), None).await?;
    let mut base = put
        .header()
        .map(|h| h.revision())
        .context("put: no header")?;
    let nonce = unix_us(SystemTime::now());
    let (mut lat, mut failed) = (Vec::with_capacity(e.changes), 0usize);
    for i in 0..e.changes {
        let mut value = format!("{nonce}-{i} ").into_bytes();
        value.extend_from_slice(&payload);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                e.key.as_bytes(),
                CompareOp::Equal,
                base,
            )])
            .and_then([TxnOp::put(e.key.as_bytes(), value, None)]);
        let sent = Instant::now();
        let reply = client.txn(txn).await?;
        lat.push(sent.elapsed().as_nanos() as u64);
        if !reply.succeeded() {
            failed += 1;
        }
        base = reply
            .header()
            .map(|h| h.revision())
            .context("txn: no header")?;
        tokio::time::sleep(Duration::from_secs_f64(e.gap_ms / 1e3)).await;
    }
    lat.sort_unstable();
    println!(
        "mode=etcd-txn n={} failed={failed} write_p50_us={:.1} write_p99_us={:.1}",
        lat.len(),
        pct(&lat, 50.0),
        pct(&lat, 99.0)
    );
    Ok(())
}

// ------------------------------------------------------------------ etcd's own floor

/// Puts to `key` and times each put from the send to its event on one watch
/// stream per member (the last of them), on this process's one clock: what a
/// broker in etcd mode gets from etcd before it passes a revision on.
async fn etcd_watch(e: EtcdWatch) -> Result<()> {
    let endpoints: Vec<String> = e.endpoints.split(',').map(str::to_owned).collect();
    let deadline = Instant::now() + Duration::from_secs_f64(e.timeout_secs);
    let seen: Arc<Mutex<Vec<HashMap<u64, Instant>>>> =
        Arc::new(Mutex::new(vec![HashMap::new(); endpoints.len()]));
    let ready = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let (endpoint, key, seen, ready) =
            (endpoint.clone(), e.key.clone(), seen.clone(), ready.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = etcd_client::Client::connect([endpoint], None).await?;
            let mut stream = client.watch(key, None).await?;
            while let Some(reply) = stream.message().await? {
                let at = Instant::now();
                if reply.created() {
                    ready.fetch_add(1, Ordering::Relaxed);
                }
                for event in reply.events() {
                    if let Some(kv) = event.kv() {
                        if let Ok(mut seen) = seen.lock() {
                            seen[i].entry(kv.mod_revision() as u64).or_insert(at);
                        }
                    }
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    while ready.load(Ordering::Relaxed) < endpoints.len() {
        if Instant::now() > deadline {
            bail!(
                "only {} etcd watches started",
                ready.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let payload = match &e.payload {
        Some(p) => std::fs::read(p)?,
        None => Vec::new(),
    };
    let mut client = etcd_client::Client::connect(&endpoints, None).await?;
    let nonce = unix_us(SystemTime::now());
    let mut puts: Vec<(u64, Instant, u64)> = Vec::with_capacity(e.changes);
    for i in 0..e.changes {
        if Instant::now() > deadline {
            break;
        }
        let mut value = format!("{nonce}-{i} ").into_bytes();
        value.extend_from_slice(&payload);
        let sent = Instant::now();
        let reply = client.put(e.key.as_bytes(), value, None).await?;
        let latency = sent.elapsed().as_nanos() as u64;
        let revision = reply
            .header()
            .map(|h| h.revision() as u64)
            .context("put: no header")?;
        puts.push((revision, sent, latency));
        tokio::time::sleep(Duration::from_secs_f64(e.gap_ms / 1e3)).await;
    }
    let last_rev = puts.last().map_or(0, |p| p.0);
    loop {
        let done = seen
            .lock()
            .map(|s| s.iter().filter(|m| m.contains_key(&last_rev)).count())
            .unwrap_or(0);
        if done >= endpoints.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for t in &tasks {
        t.abort();
    }
    let seen = seen.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    let (mut last, mut any) = (Vec::new(), Vec::new());
    let mut missing = 0usize;
    for (revision, sent, _) in &puts {
        let mut latest: Option<Instant> = None;
        let mut complete = true;
        for m in &seen {
            match m.get(revision) {
                Some(t) => {
                    any.push(t.saturating_duration_since(*sent).as_micros() as i64);
                    latest = Some(latest.map_or(*t, |l| l.max(*t)));
                }
                None => {
                    complete = false;
                    missing += 1;
                }
            }
        }
        if let (true, Some(t)) = (complete, latest) {
            last.push(t.saturating_duration_since(*sent).as_micros() as i64);
        }
    }
    last.sort_unstable();
    any.sort_unstable();
    let mut write: Vec<u64> = puts.iter().map(|p| p.2).collect();
    write.sort_unstable();
    println!(
        "mode=etcd-watch watches={} changes={} complete={} missing={missing} p50_us={:.1} p99_us={:.1} \
         any_p50_us={:.1} any_p99_us={:.1} write_p50_us={:.1} write_p99_us={:.1}",
        endpoints.len(),
        puts.len(),
        last.len(),
        pct_i(&last, 50.0),
        pct_i(&last, 99.0),
        pct_i(&any, 50.0),
        pct_i(&any, 99.0),
        pct(&write, 50.0),
        pct(&write, 99.0),
    );
    Ok(())
}

// ------------------------------------------------------------------ cold start

enum Probe {
    Http(String),
    Grpc(PathBuf, Target),
}

fn coldstart(c: Coldstart) -> Result<()> {
    let probe = match c.probe.split_once(':') {
        Some(("http", addr)) => Probe::Http(addr.to_string()),
        Some(("broker", sock)) => Probe::Grpc(sock.into(), Target::Broker),
        Some(("floor", sock)) => Probe::Grpc(sock.into(), Target::Floor),
        _ => bail!("--probe must be http:HOST:PORT, broker:SOCKET or floor:SOCKET"),
    };
    let timeout = Duration::from_secs_f64(c.timeout_secs);
    let mut times: Vec<u64> = Vec::new();
    let mut rss: Vec<u64> = Vec::new();
    let mut failed = 0usize;
    for _ in 0..c.reps {
        let t0 = Instant::now();
        let mut child = std::process::Command::new(&c.command[0])
            .args(&c.command[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {}", c.command[0]))?;
        let pid = child.id();
        // A runtime per start: dropping it closes the probe's connection, so
        // the server is not left waiting for it to finish when stopped.
        let rt = current_thread()?;
        let mut up = false;
        while t0.elapsed() < timeout {
            let ok = match &probe {
                Probe::Http(addr) => http_ready(addr),
                Probe::Grpc(sock, target) => rt.block_on(grpc_ready(sock, *target)),
            };
            if ok {
                up = true;
                break;
            }
            if child.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        let elapsed = t0.elapsed();
        drop(rt);
        if up {
            times.push(elapsed.as_nanos() as u64);
            if let Some(kb) = rss_kb(pid) {
                rss.push(kb);
            }
        } else {
            failed += 1;
        }
        // SAFETY: kill(2) on the pid of the child this loop spawned and has not reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let stop_by = Instant::now() + Duration::from_secs(5);
        while child.try_wait()?.is_none() {
            if Instant::now() > stop_by {
                child.kill()?;
                child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    times.sort_unstable();
    rss.sort_unstable();
    println!(
        "mode=coldstart n={} failed={failed} cold_ms={:.2} min_ms={:.2} max_ms={:.2} rss_at_ready_kb={}",
        times.len(),
        pct(&times, 50.0) / 1e3,
        pct(&times, 0.0) / 1e3,
        pct(&times, 100.0) / 1e3,
        rss.get(rss.len() / 2).map_or("nan".into(), |v| v.to_string()),
    );
    Ok(())
}

fn http_ready(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 200"
}

async fn grpc_ready(sock: &Path, target: Target) -> bool {
    if !sock.exists() {
        return false;
    }
    let g = Get {
        socket: sock.to_path_buf(),
        target,
        secs: 0.0,
        warmup_secs: 0.0,
        conns: 1,
        inflight: 1,
        typed: false,
    };
    match Getter::new(&g).await {
        Ok(mut getter) => getter.get().await.is_ok(),
        Err(_) => false,
    }
}

// ------------------------------------------------------------------ helpers

/// Nearest-rank percentile of sorted nanoseconds, in microseconds.
fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1e3
}

/// Nearest-rank percentile of sorted signed microseconds.
fn pct_i(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64
}

fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Resident set size of a process, from /proc/PID/status.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
