//! The followers connected on Follow streams, what each applied or
//! rejected, and writes that wait until every one of them applied a
//! revision. Reports come once per revision per follower, never on the read
//! path, so one mutex is enough.
use crate::peer::Peer;
use argsbroker::{lock, pb};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How many recent revisions' publication times are kept, for how long
/// after publication each follower applied them.
const PUBLISHED_KEPT: usize = 64;

/// Another host's list is current only while this broker confirmed, this
/// recently, that the host still renews it (etcd mode): past that (etcd out of
/// reach, the host killed) its entries are shown as stale and never count as
/// applied.
pub const REMOTE_FRESH_FOR: Duration = Duration::from_secs(3);

pub struct Followers {
    next_id: AtomicU64,
    state: Mutex<State>,
    /// Bumped on every report, arrival and departure, here or on another
    /// host: what waits watch.
    changed: watch::Sender<u64>,
    /// Bumped when this broker's own followers change: what is shared with
    /// the other hosts (etcd mode).
    local_changed: watch::Sender<u64>,
    /// Where each report of a newer revision, published while the follower
    /// was connected, observes how long after its publication it came.
    apply_seconds: Histogram,
    /// This host's name in the fleet (etcd mode), for canary selectors.
    local_host: std::sync::OnceLock<String>,
}

/// Which followers a wait is for, by name and host (a canary's); all if none.
pub type Only = dyn Fn(&str, &str) -> bool + Sync;

/// The followers as a scrape counts them (see [`Followers::census`]).
pub struct Census {
    /// Each follower's name, pid and applied revision, oldest connection first.
    pub followers: Vec<(String, u32, u64)>,
    pub at_current: usize,
    pub behind: usize,
}

#[derive(Default)]
struct State {
    followers: BTreeMap<u64, Follower>,
    /// The followers of the other hosts' brokers (etcd mode), by host, as
    /// each host last shared them.
    remote: BTreeMap<String, Remote>,
    /// (revision, when this broker published it), newest last.
    published: VecDeque<(u64, Instant)>,
}

/// Another host's list, and how current it is known to be.
#[derive(Debug, Clone)]
struct Remote {
    followers: Vec<pb::Follower>,
    /// When that host last refreshed it (this broker's clock), as far as
    /// this broker knows.
    refreshed: SystemTime,
    /// When this broker last confirmed the list current (`None`: it knows it
    /// is not: the host stopped refreshing, or etcd is out of reach).
    confirmed: Option<Instant>,
}

impl Remote {
    fn stale(&self) -> bool {
        self.confirmed
            .is_none_or(|at| at.elapsed() > REMOTE_FRESH_FOR)
    }

    /// `(as_of_unix_millis, stale)` for ListFollowers.
    fn freshness(&self) -> (u64, bool) {
        let as_of = self
            .refreshed
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        (as_of, self.stale())
    }
}

#[derive(Debug, Clone)]
struct Follower {
    name: String,
    pid: u32,
    uid: u32,
    since: SystemTime,
    /// The same moment, for comparing with publication times.
    joined: Instant,
    applied: u64,
    /// When `applied` was reported.
    applied_at: Option<Instant>,
    rejected: Option<(u64, String)>,
}

impl Follower {
    fn who(&self) -> String {
        format!("{} (pid {}, uid {})", self.name, self.pid, self.uid)
    }
}

/// A follower's place in the list, for as long as its stream lasts.
pub struct Registration {
    followers: Arc<Followers>,
    id: u64,
}

impl Registration {
    /// The name the follower is listed under.
    pub fn name(&self) -> String {
        lock(&self.followers.state)
            .followers
            .get(&self.id)
            .map(|f| f.name.clone())
            .unwrap_or_default()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let gone = lock(&self.followers.state).followers.remove(&self.id);
        if let Some(gone) = gone {
            tracing::debug!(follower = gone.who(), "follower left");
        }
        self.followers.bump_local();
    }
}

impl Registration {
    /// Records a report: the revision applied, and a rejection if any.
    pub fn report(&self, report: &pb::FollowRequest) {
        tracing::trace!(
            target: crate::service::STAGES,
            revision = report.applied_revision,
            "report received"
        );
        let mut state = lock(&self.followers.state);
        let State {
            followers,
            published,
            ..
        } = &mut *state;
        let Some(follower) = followers.get_mut(&self.id) else {
            return;
        };
        if report.applied_revision != follower.applied {
            let now = Instant::now();
            // A newer revision, published here while the follower was
            // connected: how long it took to reach the follower.
            let published = published
                .iter()
                .find(|(r, _)| *r == report.applied_revision)
                .map(|(_, at)| *at)
                .filter(|at| report.applied_revision > follower.applied && follower.joined <= *at);
            if let Some(published) = published {
                let took = now.saturating_duration_since(published);
                self.followers.apply_seconds.observe(took.as_secs_f64());
            }
            follower.applied = report.applied_revision;
            follower.applied_at = Some(now);
        }
        let rejected = (report.rejected_revision != 0)
            .then(|| (report.rejected_revision, report.rejected_reason.clone()));
        if rejected.is_some() && rejected != follower.rejected {
            tracing::warn!(
                follower = follower.who(),
                revision = report.rejected_revision,
                reason = report.rejected_reason,
                serving = report.applied_revision,
                "a follower rejected a revision"
            );
        }
        follower.rejected = rejected;
        drop(state);
        self.followers.bump_local();
    }
}

/// How a wait for a revision ended for the followers that did not apply it.
#[derive(Debug, Default)]
pub struct Lagging {
    pub rejected: Vec<String>,
    pub behind: Vec<String>,
    pub left: Vec<String>,
    /// On another host whose shared list went stale: what they did is unknown.
    pub unconfirmed: Vec<String>,
}

impl Lagging {
    pub fn is_empty(&self) -> bool {
        self.rejected.is_empty()
            && self.behind.is_empty()
            && self.left.is_empty()
            && self.unconfirmed.is_empty()
    }
}

impl Followers {
    /// No followers yet.
    pub fn new() -> Self {
        Self {
            next_id: AtomicU64::new(0),
            state: Mutex::default(),
            changed: watch::Sender::default(),
            local_changed: watch::Sender::default(),
            // 0.5 ms to about 4 s: a follower on this host applies a
            // revision in well under a millisecond to a few ms; seconds
            // mean trouble.
            apply_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            local_host: std::sync::OnceLock::new(),
        }
    }

    /// Names this host in the fleet (etcd mode; "" on one host).
    pub fn set_local_host(&self, host: String) {
        let _ = self.local_host.set(host);
    }

    pub fn local_host(&self) -> &str {
        self.local_host.get().map_or("", String::as_str)
    }

    /// Every follower's name and host (this host's followers under
    /// [`Followers::local_host`]), for canary selectors.
    pub fn identities(&self) -> Vec<(String, String)> {
        let state = lock(&self.state);
        let local = state
            .followers
            .values()
            .map(|f| (f.name.clone(), self.local_host().to_owned()));
        let remote = state.remote.iter().flat_map(|(host, remote)| {
            remote
                .followers
                .iter()
                .map(move |f| (f.name.clone(), host.clone()))
        });
        local.chain(remote).collect()
    }

    /// How long after its publication each follower applied a revision
    /// (observed as they report), for the metrics.
    pub fn apply_seconds(&self) -> Histogram {
        self.apply_seconds.clone()
    }

    /// How many followers there are, how many have applied `current`, and
    /// what each one applied.
    pub fn census(&self, current: u64) -> Census {
        let state = lock(&self.state);
        let followers: Vec<(String, u32, u64)> = state
            .followers
            .values()
            .map(|f| (f.name.clone(), f.pid, f.applied))
            .collect();
        let at_current = followers.iter().filter(|f| f.2 >= current).count();
        Census {
            behind: followers.len() - at_current,
            at_current,
            followers,
        }
    }

    /// Adds a follower that opened a Follow stream; it stays listed until
    /// the returned registration is dropped (its stream ended).
    pub fn register(
        self: &Arc<Self>,
        first: &pb::FollowRequest,
        peer: Option<&Peer>,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let pid = peer.and_then(|p| p.pid).unwrap_or(0).max(0) as u32;
        let name = match first.name.trim() {
            "" => format!("pid {pid}"),
            name => name.to_owned(),
        };
        let follower = Follower {
            name,
            pid,
            uid: peer.map_or(0, |p| p.uid),
            since: SystemTime::now(),
            joined: Instant::now(),
            applied: 0,
            applied_at: None,
            rejected: None,
        };
        tracing::debug!(follower = follower.who(), "follower joined");
        lock(&self.state).followers.insert(id, follower);
        let registration = Registration {
            followers: self.clone(),
            id,
        };
        registration.report(first);
        registration
    }

    /// Notes when `revision` was published here, for the applied-after figures.
    pub fn published(&self, revision: u64) {
        let mut state = lock(&self.state);
        if state.published.back().is_some_and(|(r, _)| *r >= revision) {
            return;
        }
        state.published.push_back((revision, Instant::now()));
        if state.published.len() > PUBLISHED_KEPT {
            state.published.pop_front();
        }
    }

    /// The followers, this broker's first (oldest connection first), then
    /// the other hosts' (etcd mode), for ListFollowers.
    pub fn list(&self, current: u64) -> Vec<pb::Follower> {
        let mut all = self.local(current);
        let state = lock(&self.state);
        for (host, remote) in &state.remote {
            let (as_of_unix_millis, stale) = remote.freshness();
            all.extend(remote.followers.iter().map(|f| pb::Follower {
                host: host.clone(),
                as_of_unix_millis,
                stale,
                ..f.clone()
            }));
        }
        all
    }

    /// This broker's own followers, oldest connection first.
    pub fn local(&self, current: u64) -> Vec<pb::Follower> {
        let state = lock(&self.state);
        let published = state
            .published
            .iter()
            .find(|(r, _)| *r == current)
            .map(|(_, at)| *at);
        state
            .followers
            .values()
            .map(|f| pb::Follower {
                name: f.name.clone(),
                pid: f.pid,
                uid: f.uid,
                applied_revision: f.applied,
                rejected_revision: f.rejected.as_ref().map_or(0, |r| r.0),
                rejected_reason: f.rejected.as_ref().map(|r| r.1.clone()).unwrap_or_default(),
                connected_since_unix_millis: f
                    .since
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                applied_after_micros: match (published, f.applied_at) {
                    // Only for a revision published while it was connected.
                    (Some(published), Some(applied))
                        if f.applied >= current && f.joined <= published =>
                    {
                        Some(applied.saturating_duration_since(published).as_micros() as u64)
                    }
                    _ => None,
                },
                host: String::new(),
                as_of_unix_millis: 0,
                stale: false,
                canary: false,
            })
            .collect()
    }

    /// Tells whoever watches (a write waiting for its followers; in etcd
    /// mode, the task sharing them) that this broker's followers changed.
    /// Every report calls it: with nobody watching, nothing is sent (a
    /// receiver subscribed later starts from the state it reads itself).
    fn bump_local(&self) {
        for sender in [&self.local_changed, &self.changed] {
            if sender.receiver_count() > 0 {
                sender.send_modify(|n| *n += 1);
            }
        }
    }

    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    /// A receiver told whenever this broker's own followers change.
    /// Bumped on every report, arrival and departure, here or on another host.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn local_changes(&self) -> watch::Receiver<u64> {
        self.local_changed.subscribe()
    }

    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    /// Another host's followers, as it shared them just now (`None`: it is
    /// gone: its lease expired or it stopped).
    pub fn set_remote(&self, host: &str, followers: Option<Vec<pb::Follower>>) {
        let mut state = lock(&self.state);
        match followers {
            Some(followers) => state.remote.insert(
                host.to_owned(),
                Remote {
                    followers,
                    refreshed: SystemTime::now(),
                    confirmed: Some(Instant::now()),
                },
            ),
            None => state.remote.remove(host),
        };
        drop(state);
        self.changed.send_modify(|n| *n += 1);
    }

    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    /// What this broker learned of another host's list just now: `Some(age)`,
    /// the host refreshed it that long ago; `None`, it cannot be told (etcd
    /// out of reach). A list refreshed longer ago than [`REMOTE_FRESH_FOR`]
    /// is stale until the host refreshes it again.
    pub fn confirm_remote(&self, host: &str, age: Option<Duration>) {
        let mut state = lock(&self.state);
        let Some(remote) = state.remote.get_mut(host) else {
            return;
        };
        let was_stale = remote.stale();
        match age {
            Some(age) if age <= REMOTE_FRESH_FOR => {
                remote.refreshed = SystemTime::now() - age;
                remote.confirmed = Some(Instant::now());
            }
            // Stale: "as of" stays the last refresh seen.
            _ => remote.confirmed = None,
        }
        let flipped = was_stale != remote.stale();
        drop(state);
        if flipped {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    /// The hosts whose lists this broker keeps.
    pub fn remote_hosts(&self) -> Vec<String> {
        lock(&self.state).remote.keys().cloned().collect()
    }

    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    /// Every other host's list can no longer be refreshed (etcd out of
    /// reach): kept, and shown as stale, until it can.
    pub fn remote_unconfirmed(&self) {
        for host in self.remote_hosts() {
            self.confirm_remote(&host, None);
        }
    }

    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    /// Forgets every other host (before reading them all again).
    pub fn clear_remote(&self) {
        lock(&self.state).remote.clear();
        self.changed.send_modify(|n| *n += 1);
    }

    /// Waits until every follower connected now (here and, with etcd, on
    /// every host) has applied `revision`, for at most `timeout`; returns
    /// those that did not: rejected it, left, or still behind when the time
    /// was up. Followers that connect meanwhile are not waited for.
    pub async fn wait_applied(
        &self,
        revision: u64,
        timeout: Duration,
        only: Option<&Only>,
    ) -> Lagging {
        let mut changes = self.changed.subscribe();
        let keep = |name: &str, host: &str| only.is_none_or(|only| only(name, host));
        let waiting: Vec<(Key, String)> = {
            let state = lock(&self.state);
            let local = state
                .followers
                .iter()
                .filter(|(_, f)| keep(&f.name, self.local_host()))
                .map(|(id, f)| (Key::Local(*id), f.who()));
            let remote = state.remote.iter().flat_map(|(host, remote)| {
                remote
                    .followers
                    .iter()
                    .filter(move |f| keep(&f.name, host))
                    .map(move |f| {
                        let key = Key::Remote {
                            host: host.clone(),
                            name: f.name.clone(),
                            pid: f.pid,
                        };
                        (key, remote_who(host, f))
                    })
            });
            local.chain(remote).collect()
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            let (lagging, pending) = self.check(&waiting, revision, false);
            if pending == 0 {
                return lagging;
            }
            tokio::select! {
                _ = changes.changed() => {}
                // A list that goes stale says nothing; look again.
                _ = tokio::time::sleep(REMOTE_FRESH_FOR / 5) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return self.check(&waiting, revision, true).0;
                }
            }
        }
    }

    /// Who among `waiting` rejected `revision` or left (and, once the time
    /// is up, who is behind), and how many are still pending.
    fn check(&self, waiting: &[(Key, String)], revision: u64, time_up: bool) -> (Lagging, usize) {
        let state = lock(&self.state);
        let mut lagging = Lagging::default();
        let mut pending = 0;
        for (key, who) in waiting {
            let position = match key {
                Key::Local(id) => state
                    .followers
                    .get(id)
                    .map(|f| (f.applied, f.rejected.clone())),
                Key::Remote { host, name, pid } => {
                    let Some(remote) = state.remote.get(host) else {
                        lagging.left.push(format!("{who} disconnected"));
                        continue;
                    };
                    if remote.stale() {
                        // Nothing it says counts, applied or not.
                        if time_up {
                            let as_of = humantime::format_rfc3339_seconds(remote.refreshed);
                            lagging.unconfirmed.push(format!(
                                "{who} is unconfirmed: its host's list is as of {as_of}, not refreshed since"
                            ));
                        } else {
                            pending += 1;
                        }
                        continue;
                    }
                    remote
                        .followers
                        .iter()
                        .find(|f| f.pid == *pid && f.name == *name)
                        .map(|f| {
                            let rejected = (f.rejected_revision != 0)
                                .then(|| (f.rejected_revision, f.rejected_reason.clone()));
                            (f.applied_revision, rejected)
                        })
                }
            };
            match position {
                None => lagging.left.push(format!("{who} disconnected")),
                Some((applied, _)) if applied >= revision => {}
                Some((_, Some((rejected, reason)))) if rejected == revision => {
                    lagging
                        .rejected
                        .push(format!("{who} rejected it: {reason}"));
                }
                Some((applied, _)) if time_up => {
                    lagging
                        .behind
                        .push(format!("{who} is at revision {applied}"));
                }
                Some(_) => pending += 1,
            }
        }
        (lagging, pending)
    }
}

/// A follower a wait started with.
enum Key {
    Local(u64),
    /// On another host's broker: known by host, name and pid.
    Remote {
        host: String,
        name: String,
        pid: u32,
    },
}

fn remote_who(host: &str, f: &pb::Follower) -> String {
    format!("{} (pid {}, uid {}) on {host}", f.name, f.pid, f.uid)
}
