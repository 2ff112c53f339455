//! The operator's read-only status page on the broker's HTTP listener
//! (`--metrics-listen`): `GET /` (static HTML, with `/page.js` and
//! `/page.css`, embedded in the binary: no framework, no CDN, works offline)
//! refreshes itself every second from `GET /status.json`, which
//! [`Page::status`] gathers in one place: the revision served, the
//! followers (as ListFollowers has them, with their lag and readiness),
//! the canary (`null` while none runs) and the history (as ListRevisions
//! has it, newest first) with each revision's diff against the one before.
//!
//! Nothing here writes: writes stay on the Unix socket, behind its
//! peer-credential policy. When that policy restricts who may read the args
//! (`--reader-uid`, `--reader-gid`), the diffs name changed paths only,
//! never values: the page must not hand the document to whoever reaches
//! the HTTP address.
use crate::diff::{self, Diff};
use crate::followers::Followers;
use crate::storage::Published;
use crate::storage::Storage;
use argsbroker::pb;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;

/// The newest revisions the history shows (each with its diff).
pub const HISTORY_SHOWN: usize = 25;

const INDEX_HTML: &str = include_str!("page/index.html");
const PAGE_JS: &str = include_str!("page/page.js");
const PAGE_CSS: &str = include_str!("page/page.css");

/// Only the page's own files run or style it; it fetches only from here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What `/status.json` answers. `revision` is the stable revision: the one
/// every plain reader and every follower outside a canary gets.
#[derive(Debug, Serialize)]
pub struct Status<'a> {
    pub revision: u64,
    pub sha256: &'a str,
    pub lineage: &'a str,
    pub backend: String,
    pub backend_connected: bool,
    pub backend_error: String,
    /// `None` (JSON `null`) while no canary runs.
    pub canary: Option<Canary>,
    pub followers: Vec<FollowerRow>,
    /// Newest first, already serialized (see [`Page::history`]).
    pub history: &'a RawValue,
    /// Why the history could not be read (etcd out of reach), if it could not.
    pub history_error: Option<String>,
}

/// A canary rollout in progress, as the page shows it: the candidate beside
/// the stable revision, which followers it goes to, and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
// Built by the canary rollouts (issue 20) once they exist; until then the
// page's rendering of it is tested with this shape.
#[cfg_attr(not(test), allow(dead_code))]
pub struct Canary {
    pub stable_revision: u64,
    pub candidate_revision: u64,
    /// As given to `--canary`: `2`, `25%`, `name=GLOB`, `host=NAME`.
    pub selector: String,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_unix_millis: u64,
    /// With `--bake`: how long until the broker promotes it by itself, in
    /// milliseconds (0: due now); `None` without `--bake`.
    pub bake_millis_left: Option<u64>,
    /// The selected followers.
    pub followers: Vec<CanaryFollower>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct CanaryFollower {
    pub name: String,
    /// Empty for this broker's own followers (etcd: the other host's name).
    pub host: String,
    pub pid: u32,
    pub state: CanaryState,
    /// Why, when it rejected the candidate.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(not(test), allow(dead_code))]
pub enum CanaryState {
    /// It serves the candidate.
    Applied,
    /// It rejected the candidate (`reason` says why).
    Rejected,
    /// It has not reported the candidate yet, or its readiness failed.
    NotReady,
    /// Its Follow stream ended after it was selected.
    Gone,
}

/// A follower as ListFollowers has it, with what the page reads off it.
#[derive(Debug, Serialize)]
pub struct FollowerRow {
    pub name: String,
    /// Empty for this broker's own followers; with etcd, another host's name.
    pub host: String,
    pub pid: u32,
    pub uid: u32,
    pub applied_revision: u64,
    pub rejected_revision: u64,
    pub rejected_reason: String,
    pub connected_since_unix_millis: u64,
    pub applied_after_micros: Option<u64>,
    pub as_of_unix_millis: u64,
    pub stale: bool,
    /// Revisions it is behind the broker's (0 when it serves the current one).
    pub lag: u64,
    /// `applied`, `rejected` (a newer revision than the one it serves),
    /// `behind` (not reported the current one yet), or `stale` (another
    /// host's list that cannot be confirmed current).
    pub state: &'static str,
    /// It serves the current revision and its report can be trusted: what
    /// a write's `--wait` counts as applied.
    pub ready: bool,
}

impl FollowerRow {
    fn new(f: pb::Follower, current: u64) -> Self {
        let state = if f.stale {
            "stale"
        } else if f.rejected_revision > f.applied_revision {
            "rejected"
        } else if f.applied_revision >= current {
            "applied"
        } else {
            "behind"
        };
        Self {
            lag: current.saturating_sub(f.applied_revision),
            ready: state == "applied",
            state,
            name: f.name,
            host: f.host,
            pid: f.pid,
            uid: f.uid,
            applied_revision: f.applied_revision,
            rejected_revision: f.rejected_revision,
            rejected_reason: f.rejected_reason,
            connected_since_unix_millis: f.connected_since_unix_millis,
            applied_after_micros: f.applied_after_micros,
            as_of_unix_millis: f.as_of_unix_millis,
            stale: f.stale,
        }
    }
}

/// One revision of the history, with its diff against the retained one
/// before it (`None` for the oldest retained).
#[derive(Debug, Serialize)]
struct HistoryRow<'a> {
    revision: u64,
    unix_millis: u64,
    source: &'a str,
    writer_uid: Option<u32>,
    size_bytes: u64,
    sha256: &'a str,
    diff: Option<&'a Diff>,
}

/// The page's state: what it reads from, and the history as last built.
pub struct Page {
    store: Storage,
    followers: Arc<Followers>,
    /// Whether diffs show values (false when reading the args is restricted).
    values: bool,
    /// A tokio mutex, held while the history is rebuilt (which reads etcd
    /// in etcd mode): concurrent requests wait for one rebuild instead of
    /// each doing it.
    history: tokio::sync::Mutex<HistoryCache>,
}

#[derive(Default)]
struct HistoryCache {
    /// The (lineage, current revision) it was built at.
    at: Option<(String, u64)>,
    json: Option<Arc<RawValue>>,
    /// Diffs already computed, by (against, revision), for this lineage.
    diffs: HashMap<(u64, u64), Diff>,
}

impl Page {
    pub fn new(store: Storage, followers: Arc<Followers>, values: bool) -> Self {
        Self {
            store,
            followers,
            values,
            history: tokio::sync::Mutex::default(),
        }
    }

    /// `/status.json`'s body: everything the page shows, gathered here.
    pub async fn status(&self) -> Result<String, serde_json::Error> {
        let current = self.store.current().clone();
        let (history, history_error) = self.history(&current).await;
        let (backend_connected, backend_error) = match self.store.contact() {
            Some(contact) => {
                let contact = contact.borrow();
                (contact.connected, contact.reason.clone())
            }
            None => (true, String::new()),
        };
        let followers = self
            .followers
            .list(current.revision)
            .into_iter()
            .map(|f| FollowerRow::new(f, current.revision))
            .collect();
        serde_json::to_string(&Status {
            revision: current.revision,
            sha256: &current.reply.sha256,
            lineage: &current.reply.lineage,
            backend: self.store.describe(),
            backend_connected,
            backend_error,
            // The canary's state plugs in here once canaries exist.
            canary: None,
            followers,
            history: &history,
            history_error,
        })
    }

    /// The history as JSON, newest first, rebuilt only when the current
    /// revision or lineage changed; each diff is computed once.
    async fn history(&self, current: &Published) -> (Arc<RawValue>, Option<String>) {
        let mut cache = self.history.lock().await;
        let at = (current.reply.lineage.clone(), current.revision);
        if let (Some(json), true) = (&cache.json, cache.at.as_ref() == Some(&at)) {
            return (json.clone(), None);
        }
        let revisions = match self.store.revisions().await {
            Ok(revisions) => revisions,
            Err(err) => return (empty_list(), Some(err.to_string())),
        };
        // The revisions shown, and the one before the oldest of them (to diff it).
        let from = revisions.len().saturating_sub(HISTORY_SHOWN + 1);
        let revisions = &revisions[from..];
        let documents: HashMap<u64, Bytes> = match revisions.first() {
            Some(first) => self
                .store
                .revisions_after(first.revision.saturating_sub(1))
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|args| (args.revision, args.json))
                .collect(),
            None => HashMap::new(),
        };
        if cache
            .at
            .as_ref()
            .is_none_or(|(lineage, _)| *lineage != at.0)
        {
            cache.diffs.clear();
        }
        let pairs: Vec<(u64, u64)> = revisions
            .windows(2)
            .map(|w| (w[0].revision, w[1].revision))
            .collect();
        let missing: Vec<(u64, u64, Bytes, Bytes)> = pairs
            .iter()
            .filter(|pair| !cache.diffs.contains_key(pair))
            .filter_map(|&(against, revision)| {
                Some((
                    against,
                    revision,
                    documents.get(&against)?.clone(),
                    documents.get(&revision)?.clone(),
                ))
            })
            .collect();
        let values = self.values;
        // Parsing and comparing up to HISTORY_SHOWN documents of up to
        // diff::MAX_DOCUMENT_BYTES each is not for the runtime's threads.
        let computed = tokio::task::spawn_blocking(move || {
            missing
                .into_iter()
                .map(|(against, revision, old, new)| {
                    ((against, revision), diff::diff(against, &old, &new, values))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        cache.diffs.extend(computed);
        cache.diffs.retain(|pair, _| pairs.contains(pair));
        let before: HashMap<u64, u64> = pairs.iter().map(|&(a, r)| (r, a)).collect();
        let rows: Vec<HistoryRow> = revisions
            .iter()
            .skip(revisions.len().saturating_sub(HISTORY_SHOWN))
            .rev()
            .map(|r| HistoryRow {
                revision: r.revision,
                unix_millis: r.unix_millis,
                source: &r.source,
                writer_uid: r.writer_uid,
                size_bytes: r.size_bytes,
                sha256: &r.sha256,
                diff: before
                    .get(&r.revision)
                    .and_then(|against| cache.diffs.get(&(*against, r.revision))),
            })
            .collect();
        let json = match serde_json::value::to_raw_value(&rows) {
            Ok(json) => Arc::<RawValue>::from(json),
            Err(err) => return (empty_list(), Some(err.to_string())),
        };
        cache.at = Some(at);
        cache.json = Some(json.clone());
        (json, None)
    }
}

fn empty_list() -> Arc<RawValue> {
    // `[]` is JSON.
    Arc::from(RawValue::from_string("[]".to_owned()).expect("[] is JSON"))
}

/// `/`, `/page.js`, `/page.css` and `/status.json`.
pub fn routes(page: Arc<Page>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { file("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/page.js",
            get(|| async { file("text/javascript; charset=utf-8", PAGE_JS) }),
        )
        .route(
            "/page.css",
            get(|| async { file("text/css; charset=utf-8", PAGE_CSS) }),
        )
        .route("/status.json", get(status))
        .with_state(page)
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                HeaderName::from_static("content-security-policy"),
                HeaderValue::from_static(CSP),
            ),
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
            (
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn status(State(page): State<Arc<Page>>) -> Response {
    match page.status().await {
        Ok(body) => (
            [
                (CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (CACHE_CONTROL, HeaderValue::from_static("no-store")),
                (
                    HeaderName::from_static("x-content-type-options"),
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            body,
        )
            .into_response(),
        Err(err) => {
            tracing::error!("cannot encode the status page's JSON: {err}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the status\n",
            )
                .into_response()
        }
    }
}

/// Any other path: 404, one line.
pub async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// A method other than GET (or HEAD) on a path served here: 405, one line.
pub async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed: this listener is read-only (GET only)\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower(applied: u64, rejected: u64, stale: bool) -> pb::Follower {
        pb::Follower {
            name: "<script>alert(1)</script>".to_owned(),
            pid: 42,
            uid: 1000,
            applied_revision: applied,
            rejected_revision: rejected,
            rejected_reason: match rejected {
                0 => String::new(),
                _ => "no".to_owned(),
            },
            stale,
            ..Default::default()
        }
    }

    #[test]
    fn a_followers_state_lag_and_readiness() {
        let row = |f| {
            let row = FollowerRow::new(f, 5);
            (row.state, row.lag, row.ready)
        };
        assert_eq!(row(follower(5, 0, false)), ("applied", 0, true));
        assert_eq!(row(follower(3, 0, false)), ("behind", 2, false));
        assert_eq!(row(follower(4, 5, false)), ("rejected", 1, false));
        // An old rejection, since overtaken by a revision it applied.
        assert_eq!(row(follower(5, 4, false)), ("applied", 0, true));
        assert_eq!(row(follower(5, 0, true)), ("stale", 0, false));
    }

    /// The canary member's shape, as `page.js` renders it (see
    /// `page/canary-sample.json`, which the browser test serves to the page).
    #[test]
    fn the_canary_member_has_the_shape_the_page_renders() {
        let canary = Canary {
            stable_revision: 4,
            candidate_revision: 5,
            selector: "25%".to_owned(),
            started_unix_millis: 1_700_000_000_000,
            bake_millis_left: Some(12_500),
            followers: vec![
                CanaryFollower {
                    name: "worker 127.0.0.1:9880".to_owned(),
                    host: String::new(),
                    pid: 101,
                    state: CanaryState::Applied,
                    reason: String::new(),
                },
                CanaryFollower {
                    name: "worker <b>2</b>".to_owned(),
                    host: "web-2".to_owned(),
                    pid: 102,
                    state: CanaryState::Rejected,
                    reason: "/port: \"<script>\" is not of type \"integer\"".to_owned(),
                },
                CanaryFollower {
                    name: "worker 3".to_owned(),
                    host: String::new(),
                    pid: 103,
                    state: CanaryState::NotReady,
                    reason: String::new(),
                },
                CanaryFollower {
                    name: "worker 4".to_owned(),
                    host: String::new(),
                    pid: 104,
                    state: CanaryState::Gone,
                    reason: String::new(),
                },
            ],
        };
        let sample: serde_json::Value =
            serde_json::from_str(include_str!("page/canary-sample.json")).expect("JSON");
        assert_eq!(
            serde_json::to_value(&canary).expect("serializable"),
            sample["canary"]
        );
    }
}
