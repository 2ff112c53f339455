//! A canary's bake: with `--bake DURATION` the broker promotes the canary by
//! itself once every follower it selects has applied the candidate and none
//! has rejected it for that long, and aborts it at the first rejection.
//! Without, the canary waits for `broker promote` or `broker abort`.
use crate::canary::Who;
use crate::followers::Followers;
use crate::storage::admit::EndCanary;
use crate::storage::{Canary, Storage};
use argsbroker::pb;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the selected followers stand with the candidate.
struct Standing {
    selected: Vec<pb::Follower>,
    /// The first selected follower that rejected the candidate.
    rejected: Option<pb::Follower>,
    /// Every selected follower serves the candidate (or newer).
    all_applied: bool,
}

/// The connected followers `canary` selects, as ListFollowers has them
/// (`current`: the revision their lag is counted from).
pub fn selected(canary: &Canary, followers: &Followers, current: u64) -> Vec<pb::Follower> {
    let local = followers.local_host();
    followers
        .list(current)
        .into_iter()
        .filter(|f| {
            let host = if f.host.is_empty() { local } else { &f.host };
            canary.selects(Who {
                name: &f.name,
                host,
            })
        })
        .collect()
}

fn standing(canary: &Canary, followers: &Followers, stable: u64) -> Standing {
    let selected = selected(canary, followers, stable);
    let candidate = canary.candidate.revision;
    let rejected = selected
        .iter()
        .find(|f| f.rejected_revision == candidate)
        .cloned();
    let all_applied =
        !selected.is_empty() && selected.iter().all(|f| f.applied_revision >= candidate);
    Standing {
        selected,
        rejected,
        all_applied,
    }
}

/// The running canary as GetStatus reports it.
pub fn describe(canary: &Canary, followers: &Followers) -> pb::Canary {
    let standing = standing(canary, followers, canary.record.stable_revision);
    let bake = Duration::from_millis(u64::from(canary.record.bake_ms));
    let since = *argsbroker::lock(&canary.baked_since);
    let bake_left_ms = match (canary.record.bake_ms, since) {
        (0, _) | (_, None) => None,
        (_, Some(since)) => Some(bake.saturating_sub(since.elapsed()).as_millis() as u64),
    };
    let local = followers.local_host();
    pb::Canary {
        stable_revision: canary.record.stable_revision,
        candidate_revision: canary.candidate.revision,
        candidate_sha256: canary.candidate.reply.sha256.clone(),
        selector: canary.record.selector.clone(),
        started_unix_millis: canary.record.started_unix_millis,
        bake_ms: canary.record.bake_ms,
        bake_left_ms,
        selected: standing
            .selected
            .iter()
            .map(|f| match (f.host.as_str(), local) {
                ("", "") => f.name.clone(),
                ("", host) | (host, _) => format!("{host}/{}", f.name),
            })
            .collect(),
    }
}

/// Watches every canary with a bake time, for the broker's life.
pub fn watch(storage: Storage, followers: Arc<Followers>) {
    tokio::spawn(async move {
        let mut canaries = storage.canary_changes();
        let mut changes = followers.changes();
        loop {
            let next = match storage.canary() {
                Some(canary) if canary.record.bake_ms > 0 => {
                    step(&storage, &followers, &canary).await
                }
                _ => None,
            };
            let pause = next.unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                changed = canaries.changed() => if changed.is_err() { return },
                changed = changes.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(pause) => {}
            }
        }
    });
}

/// Promotes or aborts `canary` if its time came; returns how long until it
/// is worth looking again (none: at the next change).
async fn step(storage: &Storage, followers: &Followers, canary: &Canary) -> Option<Duration> {
    let candidate = canary.candidate.revision;
    let standing = standing(canary, followers, canary.record.stable_revision);
    if let Some(f) = standing.rejected {
        let reason = format!(
            "{} (pid {}) rejected it: {}",
            f.name, f.pid, f.rejected_reason
        );
        let end = EndCanary {
            candidate: Some(candidate),
            uid: None,
            reason,
        };
        if let Err(err) = storage.abort(end).await {
            tracing::warn!(candidate, %err, "cannot abort the canary");
        }
        return None;
    }
    let started = {
        let mut since = argsbroker::lock(&canary.baked_since);
        if !standing.all_applied {
            *since = None;
            return None;
        }
        *since.get_or_insert_with(Instant::now)
    };
    let bake = Duration::from_millis(u64::from(canary.record.bake_ms));
    let left = bake.saturating_sub(started.elapsed());
    if !left.is_zero() {
        return Some(left);
    }
    tracing::info!(
        candidate,
        selector = canary.record.selector,
        "every selected follower applied the candidate and none rejected it for the bake time; promoting"
    );
    let end = EndCanary {
        candidate: Some(candidate),
        uid: None,
        reason: String::new(),
    };
    if let Err(err) = storage.promote(end).await {
        tracing::warn!(candidate, %err, "cannot promote the canary");
    }
    None
}
