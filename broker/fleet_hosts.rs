//! The fleet across hosts: each host's broker shares its own followers with
//! the others through etcd, and lists theirs, so `broker status` and a
//! write's `--wait` see every worker of every host.
use crate::followers::Followers;
use crate::storage::etcd::{EtcdEngine, Failure};
use argsbroker::pb;
use etcd_client::{GetOptions, WatchOptions};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long another host keeps listing this host's followers after this
/// broker stops renewing them (it died, or lost etcd).
const FLEET_TTL_SECONDS: i64 = 10;

/// How often each broker renews the lease of its shared list, and looks at
/// the other hosts' leases: a lease renewed longer ago than
/// [`crate::followers::REMOTE_FRESH_FOR`] marks that host's list stale.
const FLEET_RENEW: Duration = Duration::from_secs(1);

/// A follower as one host shares it with the others (`KEY/followers/HOST`).
#[derive(serde::Serialize, serde::Deserialize)]
struct SharedFollower {
    name: String,
    pid: u32,
    uid: u32,
    applied_revision: u64,
    rejected_revision: u64,
    rejected_reason: String,
    connected_since_unix_millis: u64,
    applied_after_micros: Option<u64>,
}

impl SharedFollower {
    fn of(f: &pb::Follower) -> Self {
        Self {
            name: f.name.clone(),
            pid: f.pid,
            uid: f.uid,
            applied_revision: f.applied_revision,
            rejected_revision: f.rejected_revision,
            rejected_reason: f.rejected_reason.clone(),
            connected_since_unix_millis: f.connected_since_unix_millis,
            applied_after_micros: f.applied_after_micros,
        }
    }

    fn into_pb(self) -> pb::Follower {
        pb::Follower {
            name: self.name,
            pid: self.pid,
            uid: self.uid,
            applied_revision: self.applied_revision,
            rejected_revision: self.rejected_revision,
            rejected_reason: self.rejected_reason,
            connected_since_unix_millis: self.connected_since_unix_millis,
            applied_after_micros: self.applied_after_micros,
            host: String::new(),
            as_of_unix_millis: 0,
            stale: false,
            canary: false,
        }
    }
}

impl EtcdEngine {
    /// Shares this broker's followers with the other hosts' brokers, and
    /// theirs with it, through etcd: each host's list is at
    /// `KEY/followers/HOST`, under a lease, so a host that dies drops out
    /// of the others' lists (and waits) within [`FLEET_TTL_SECONDS`].
    pub fn share_followers(self: &Arc<Self>, followers: Arc<Followers>, host: String) {
        followers.set_local_host(host.clone());
        tokio::spawn(
            self.clone()
                .publish_followers(followers.clone(), host.clone()),
        );
        tokio::spawn(self.clone().watch_followers(followers, host));
    }

    fn fleet_prefix(&self) -> String {
        format!("{}/followers/", self.key())
    }

    /// Puts this host's followers whenever they change, and keeps their lease.
    async fn publish_followers(self: Arc<Self>, followers: Arc<Followers>, host: String) {
        let key = format!("{}{host}", self.fleet_prefix());
        let mut changes = followers.local_changes();
        loop {
            if let Err(failure) = self
                .publish_followers_once(&followers, &key, &mut changes)
                .await
            {
                tracing::debug!(
                    reason = failure.reason(),
                    "cannot share the followers; trying again"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn publish_followers_once(
        &self,
        followers: &Followers,
        key: &str,
        changes: &mut watch::Receiver<u64>,
    ) -> Result<(), Failure> {
        let mut leases = self.client().lease_client();
        let lease = self.call(leases.grant(FLEET_TTL_SECONDS, None)).await?.id();
        let (mut keeper, mut renewed) = self.call(leases.keep_alive(lease)).await?;
        let mut renew = tokio::time::interval(FLEET_RENEW);
        changes.mark_changed();
        loop {
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let list: Vec<SharedFollower> = followers
                        .local(self.current_revision())
                        .iter()
                        .map(SharedFollower::of)
                        .collect();
                    let value = serde_json::to_vec(&list)
                        .map_err(|err| Failure::Other(err.to_string()))?;
                    let options = etcd_client::PutOptions::new().with_lease(lease);
                    self.call(self.kv().put(key, value, Some(options))).await?;
                }
                _ = renew.tick() => {
                    self.call(keeper.keep_alive()).await?;
                    match self.call(renewed.message()).await? {
                        Some(reply) if reply.ttl() > 0 => {}
                        _ => return Err(Failure::Other("the lease expired".to_owned())),
                    }
                }
            }
        }
    }

    /// Follows the other hosts' lists, and how current each is.
    async fn watch_followers(self: Arc<Self>, followers: Arc<Followers>, host: String) {
        loop {
            if let Err(failure) = self.watch_followers_once(&followers, &host).await {
                tracing::debug!(
                    reason = failure.reason(),
                    "cannot follow the other hosts' followers; trying again"
                );
            }
            // Kept, as stale, until they can be read again.
            followers.remote_unconfirmed();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Asks etcd how long ago each other host renewed the lease its list is
    /// under: a host that died, or lost etcd, stops renewing it.
    async fn check_remote_leases(
        &self,
        followers: &Followers,
        leases: &BTreeMap<String, i64>,
    ) -> Result<(), Failure> {
        let mut client = self.client().lease_client();
        for host in followers.remote_hosts() {
            let Some(&lease) = leases.get(&host) else {
                continue;
            };
            let answer = self.call(client.time_to_live(lease, None)).await?;
            // TTL -1: the lease expired; the list's deletion is on its way.
            let age = (answer.ttl() > 0).then(|| {
                Duration::from_secs(answer.granted_ttl().saturating_sub(answer.ttl()).max(0) as u64)
            });
            followers.confirm_remote(&host, age);
        }
        Ok(())
    }

    async fn watch_followers_once(&self, followers: &Followers, own: &str) -> Result<(), Failure> {
        let prefix = self.fleet_prefix();
        let read = self
            .kv_call(|mut kv| {
                let prefix = prefix.clone();
                async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let Some(header) = read.header() else {
            return Err(Failure::Other("etcd sent no response header".to_owned()));
        };
        followers.clear_remote();
        let mut leases = BTreeMap::new();
        for kv in read.kvs() {
            self.take_remote(followers, own, kv, Some(kv.value()), &mut leases);
        }
        // Present is not current: a host killed moments ago is still there.
        self.check_remote_leases(followers, &leases).await?;
        let mut watch_client = self.client().watch_client();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(header.revision() + 1);
        let mut stream = self
            .call(watch_client.watch(prefix.as_str(), Some(options)))
            .await?;
        let mut check = tokio::time::interval(FLEET_RENEW);
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                _ = check.tick() => {
                    self.check_remote_leases(followers, &leases).await?;
                    continue;
                }
            };
            let Some(response) = message.map_err(Failure::of)? else {
                return Err(Failure::Unreachable("the watch ended".to_owned()));
            };
            if response.canceled() {
                return Err(Failure::Unreachable("the watch was cancelled".to_owned()));
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let value = match event.event_type() {
                    etcd_client::EventType::Put => Some(kv.value()),
                    etcd_client::EventType::Delete => None,
                };
                self.take_remote(followers, own, kv, value, &mut leases);
            }
        }
    }

    /// Records another host's list (`None`: the host is gone) and the lease
    /// it is under.
    fn take_remote(
        &self,
        followers: &Followers,
        own: &str,
        kv: &etcd_client::KeyValue,
        value: Option<&[u8]>,
        leases: &mut BTreeMap<String, i64>,
    ) {
        let prefix = self.fleet_prefix();
        let Some(host) = std::str::from_utf8(kv.key())
            .ok()
            .and_then(|k| k.strip_prefix(prefix.as_str()))
        else {
            return;
        };
        if host == own {
            return;
        }
        let list = match value {
            None => None,
            Some(value) => match serde_json::from_slice::<Vec<SharedFollower>>(value) {
                Ok(list) => Some(list.into_iter().map(SharedFollower::into_pb).collect()),
                Err(err) => {
                    tracing::warn!(host, error = %err, "ignoring another host's follower list");
                    return;
                }
            },
        };
        match value {
            Some(_) => leases.insert(host.to_owned(), kv.lease()),
            None => leases.remove(host),
        };
        followers.set_remote(host, list);
    }
}
