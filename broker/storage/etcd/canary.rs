//! Canaries on etcd: the candidate is the key's value, and a canary record
//! beside it (`KEY\0argsbroker-canary`, inside the range every broker
//! watches) holds the selector and the stable document. Both are put by
//! one transaction, so every host sees the candidate and its canary at the
//! same etcd revision, and each applies the same selector to its own
//! followers.
//!
//! - Start (revision C): the key's value is the candidate, and the record
//!   names the stable revision S and holds its document. Plain readers and
//!   unselected followers keep S on every host.
//! - Promote: the record is deleted, nothing else: C, the key's revision,
//!   becomes what everyone gets (no new revision).
//! - Abort (revision A): the key gets the stable document again, as a new
//!   revision, and the record is deleted, so a follower that had C goes
//!   forward to A, never back to S.
//!
//! A record whose creation is not the key's current revision (the key was
//! written by another client meanwhile) is stale: no canary runs, and the
//! next write deletes it. Every write compares the record's revision (or
//! its absence), so a write never lands on a canary it did not see.
use super::{
    check_value, meta_key, unix_millis, EtcdEngine, EtcdError, Failure, Incarnation, Meta,
    MAX_ATTEMPTS,
};
use crate::canary::CanaryRecord;
use crate::storage::admit::Source;
use crate::storage::admit::{EndCanary, Limits};
use crate::storage::{Canary, Published, WriteError};
use argsbroker::document::Document;
use argsbroker::lock;
use etcd_client::{
    Compare, CompareOp, Event, EventType, KeyValue, ResponseHeader, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use serde_json::value::RawValue;
use std::sync::Arc;

/// The history's reason for an abort that a `--force` write caused.
pub(super) const FORCED: &str = "replaced by a forced write";

/// `KEY\0argsbroker-canary`: in the range `[KEY, KEY\x01)`, beside the meta record.
pub(super) fn canary_key(key: &str) -> String {
    format!("{key}\0argsbroker-canary")
}

/// What the canary record holds.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Kept {
    pub record: CanaryRecord,
    /// The stable revision's document (`record.stable_revision`), exactly
    /// as etcd held it.
    pub stable: Box<RawValue>,
}

impl Kept {
    pub fn new(record: CanaryRecord, stable: &Document) -> Result<Self, serde_json::Error> {
        let json = String::from_utf8_lossy(stable.json()).into_owned();
        Ok(Self {
            record,
            stable: RawValue::from_string(json)?,
        })
    }
}

/// The key's range as etcd holds it at one revision: the key, its meta
/// record and the canary record.
#[derive(Default, Clone)]
pub(super) struct Parts {
    pub key: Option<KeyValue>,
    pub meta: Option<KeyValue>,
    pub canary: Option<KeyValue>,
}

impl Parts {
    /// The parts among `kvs` (a range read).
    pub fn of<'a>(key: &str, kvs: impl IntoIterator<Item = &'a KeyValue>) -> Self {
        let mut parts = Self::default();
        for kv in kvs {
            if let Some(slot) = parts.slot(key, kv.key()) {
                *slot = Some(kv.clone());
            }
        }
        parts
    }

    fn slot(&mut self, key: &str, name: &[u8]) -> Option<&mut Option<KeyValue>> {
        if name == key.as_bytes() {
            Some(&mut self.key)
        } else if name == meta_key(key).as_bytes() {
            Some(&mut self.meta)
        } else if name == canary_key(key).as_bytes() {
            Some(&mut self.canary)
        } else {
            None
        }
    }

    /// Takes a watch event; whether it was one of the parts.
    pub fn take(&mut self, key: &str, event: &Event) -> bool {
        let Some(kv) = event.kv() else {
            return false;
        };
        let Some(slot) = self.slot(key, kv.key()) else {
            return false;
        };
        *slot = match event.event_type() {
            EventType::Put => Some(kv.clone()),
            EventType::Delete => None,
        };
        true
    }

    /// The running canary: the record, if it was made with the key's
    /// current value (and can be read).
    pub fn running(&self) -> Option<Kept> {
        let (key, canary) = (self.key.as_ref()?, self.canary.as_ref()?);
        if canary.create_revision() != key.mod_revision() {
            return None;
        }
        serde_json::from_slice(canary.value()).ok()
    }

    /// A canary record that is not the running canary's.
    pub fn stale(&self) -> bool {
        self.canary.is_some() && self.running().is_none()
    }
}

/// A document to publish: one this broker wrote, or a value read from etcd
/// (checked, and parsed only if it is to be published).
pub(super) enum Value<'a> {
    Own(Document),
    Etcd(&'a [u8]),
}

impl Value<'_> {
    fn document(self, limits: &Limits) -> Result<Document, String> {
        match self {
            Value::Own(document) => Ok(document),
            Value::Etcd(value) => {
                check_value(value, limits.max_args_bytes, limits.schema.as_deref())
            }
        }
    }
}

/// What etcd holds, as of etcd revision `at`: the stable revision, and the
/// running canary's candidate.
pub(super) struct Observed<'a> {
    pub incarnation: Incarnation,
    pub at: i64,
    pub stable: (u64, Value<'a>),
    pub candidate: Option<(u64, Value<'a>, CanaryRecord)>,
}

/// What a write or the end of a canary is planned on, and compared with.
pub(super) struct Basis {
    /// What plain readers get: the base of a write.
    pub stable: Arc<Published>,
    pub canary: Option<Arc<Canary>>,
    /// The key's mod and create revisions; none: no key.
    pub key: Option<(i64, i64)>,
    /// The canary record's mod revision; 0: none.
    pub record: i64,
    /// The canary record is not the running canary's: a write deletes it.
    pub stale: bool,
}

impl Basis {
    /// The compares that hold only if etcd is as this basis has it.
    /// `with_record`: also the canary record (a user that may read no more
    /// than the key may not compare it).
    pub fn compares(&self, key: &str, with_record: bool) -> Vec<Compare> {
        let mut compares = match self.key {
            Some((modified, created)) => vec![
                Compare::mod_revision(key, CompareOp::Equal, modified),
                Compare::create_revision(key, CompareOp::Equal, created),
            ],
            None => vec![Compare::create_revision(key, CompareOp::Equal, 0)],
        };
        if with_record {
            compares.push(match self.record {
                0 => Compare::version(canary_key(key), CompareOp::Equal, 0),
                record => Compare::mod_revision(canary_key(key), CompareOp::Equal, record),
            });
        }
        compares
    }
}

impl EtcdEngine {
    /// Publishes what etcd holds as of `observed.at`, unless this broker has
    /// seen a newer state of the same key: the stable revision first (if it
    /// is newer than the one served, or of another incarnation), then the
    /// canary, so that a selected follower, which gets the newer of the two,
    /// never goes back. Returns the stable snapshot current afterwards.
    pub(super) fn observe(&self, observed: Observed<'_>) -> Arc<Published> {
        let Observed {
            incarnation,
            at,
            stable: (revision, value),
            candidate,
        } = observed;
        let mut view = lock(&self.view);
        let same = view.incarnation == incarnation;
        if same && at <= view.at {
            return self.head.current_full();
        }
        let current = self.head.current_full();
        if !same || revision > current.revision {
            match value.document(&self.limits) {
                Ok(document) => {
                    let snapshot = Published::new(revision, document, &incarnation.lineage());
                    if !same {
                        tracing::warn!(
                            key = self.key,
                            lineage = incarnation.lineage(),
                            revision,
                            "the key is new in etcd (made again, or etcd was rebuilt): a new lineage"
                        );
                        view.incarnation = incarnation;
                    }
                    self.head.publish(Arc::new(snapshot));
                }
                Err(error) => {
                    tracing::error!(
                        key = self.key,
                        revision,
                        %error,
                        serving = current.revision,
                        "etcd holds a value that is not a valid args document; still serving the last valid one"
                    );
                    if !same {
                        return current;
                    }
                }
            }
        }
        view.at = at;
        let running = self.head.canary();
        match candidate {
            Some((candidate, value, record)) => {
                if running
                    .as_ref()
                    .is_some_and(|c| same && c.candidate.revision == candidate)
                {
                    return self.head.current_full();
                }
                match value.document(&self.limits) {
                    Ok(document) => {
                        tracing::info!(
                            candidate,
                            stable = record.stable_revision,
                            selector = record.selector,
                            "a canary runs: its candidate goes to the followers it selects"
                        );
                        let lineage = incarnation.lineage();
                        let snapshot = Arc::new(Published::new(candidate, document, &lineage));
                        self.head
                            .set_canary(Some(Arc::new(Canary::new(snapshot, record))));
                    }
                    Err(error) => {
                        tracing::error!(
                            key = self.key,
                            candidate,
                            %error,
                            "the canary's candidate in etcd is not a valid args document; every follower here keeps the stable revision"
                        );
                        if running.is_some() {
                            self.head.set_canary(None);
                        }
                    }
                }
            }
            None => {
                if let Some(ended) = running {
                    tracing::info!(
                        candidate = ended.candidate.revision,
                        stable = self.head.current().revision,
                        "the canary ended"
                    );
                    self.head.set_canary(None);
                }
            }
        }
        self.head.current_full()
    }

    /// Publishes the range `parts` as read at etcd revision `at` (under
    /// `header`, if the read had one).
    pub(super) fn observe_parts(
        &self,
        parts: &Parts,
        header: Option<&ResponseHeader>,
        at: i64,
    ) -> Arc<Published> {
        let Some(kv) = &parts.key else {
            return self.head.current_full();
        };
        let incarnation = self.incarnation_of(kv, parts.meta.as_ref(), header);
        let revision = kv.mod_revision() as u64;
        match parts.running() {
            Some(kept) => self.observe(Observed {
                incarnation,
                at,
                stable: (
                    kept.record.stable_revision,
                    Value::Etcd(kept.stable.get().as_bytes()),
                ),
                candidate: Some((revision, Value::Etcd(kv.value()), kept.record)),
            }),
            None => self.observe(Observed {
                incarnation,
                at,
                stable: (revision, Value::Etcd(kv.value())),
                candidate: None,
            }),
        }
    }

    /// What this broker serves, as the basis of a write.
    pub(super) fn basis(&self) -> Basis {
        let view = lock(&self.view);
        let stable = self.head.current_full();
        let canary = self.head.canary();
        let candidate = canary.as_ref().map(|c| c.candidate.revision as i64);
        Basis {
            key: Some((
                candidate.unwrap_or(stable.revision as i64),
                view.incarnation.create_revision,
            )),
            record: candidate.unwrap_or(0),
            stale: false,
            stable,
            canary,
        }
    }

    /// The basis after a range read (a transaction's `or_else`, or a read
    /// of its own): what it found is published, and compared with.
    pub(super) fn basis_of(&self, parts: &Parts, header: Option<&ResponseHeader>) -> Basis {
        let at = header.map_or(0, ResponseHeader::revision);
        self.observe_parts(parts, header, at);
        Basis {
            stable: self.head.current_full(),
            canary: self.head.canary(),
            key: parts
                .key
                .as_ref()
                .map(|kv| (kv.mod_revision(), kv.create_revision())),
            record: parts.canary.as_ref().map_or(0, KeyValue::mod_revision),
            stale: parts.stale(),
        }
    }

    /// Reads the key's range now, for a basis.
    pub(super) async fn read_basis(&self) -> Result<Basis, Failure> {
        let read = self.read_key().await?;
        let parts = Parts::of(&self.key, read.kvs());
        Ok(self.basis_of(&parts, read.header()))
    }

    /// The basis after a transaction whose compares failed: what its
    /// `or_else` read.
    pub(super) fn basis_after(&self, response: &TxnResponse) -> Basis {
        let kvs = response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(get) => Some(get.kvs().to_vec()),
                _ => None,
            })
            .unwrap_or_default();
        self.basis_of(&Parts::of(&self.key, &kvs), response.header())
    }

    /// The range read a transaction's `or_else` does.
    pub(super) fn read_range(&self) -> TxnOp {
        TxnOp::get(self.key.as_str(), self.meta.range(&self.key))
    }

    /// Promotes (the record goes; the candidate's revision is what everyone
    /// gets) or aborts (the stable document again, as a new revision) the
    /// running canary, whichever host started it.
    pub(super) async fn end_canary(
        &self,
        end: EndCanary,
        promote: bool,
    ) -> Result<Arc<Published>, WriteError> {
        self.authenticate().await.map_err(|f| self.write_error(f))?;
        let mut basis = self.basis();
        if basis.canary.is_none() {
            // This host may not have seen it yet.
            basis = self.read_basis().await.map_err(|f| self.write_error(f))?;
        }
        for _ in 0..MAX_ATTEMPTS {
            let Some(canary) = basis.canary.clone() else {
                return Err(WriteError::NoCanary);
            };
            let candidate = canary.candidate.revision;
            if let Some(expected) = end.candidate {
                if expected != candidate {
                    return Err(WriteError::NotTheCandidate {
                        expected,
                        candidate,
                    });
                }
            }
            let incarnation = lock(&self.view).incarnation;
            let mut then = vec![TxnOp::delete(canary_key(&self.key), None)];
            let why = match end.reason.as_str() {
                "" => "by hand",
                reason => reason,
            };
            let note = format!("aborted canary {candidate}: {why}");
            if !promote {
                let meta = Meta {
                    lineage: incarnation
                        .id
                        .map(|id| format!("{id:032x}"))
                        .unwrap_or_default(),
                    key_created: basis.key.map_or(0, |(_, created)| created),
                    writer_uid: end.uid,
                    source: Source::Abort,
                    unix_millis: unix_millis(),
                    note: note.clone(),
                    canary: false,
                };
                let meta = serde_json::to_vec(&meta).map_err(|err| EtcdError::Other {
                    endpoints: self.endpoints.clone(),
                    reason: err.to_string(),
                })?;
                then.push(TxnOp::put(
                    self.key.as_str(),
                    basis.stable.document.json().to_vec(),
                    None,
                ));
                then.push(TxnOp::put(meta_key(&self.key), meta, None));
            }
            let txn = Txn::new()
                .when(basis.compares(&self.key, true))
                .and_then(then)
                .or_else(vec![self.read_range()]);
            let response = self
                .kv_call(|mut kv| {
                    let txn = txn.clone();
                    async move { kv.txn(txn).await }
                })
                .await
                .map_err(|f| self.write_error(f))?;
            if !response.succeeded() {
                basis = self.basis_after(&response);
                continue;
            }
            let Some(at) = response.header().map(ResponseHeader::revision) else {
                return Err(EtcdError::NoRevision.into());
            };
            if promote {
                tracing::info!(
                    candidate,
                    selector = canary.record.selector,
                    "canary promoted"
                );
                let document = canary.candidate.document.clone();
                self.observe(Observed {
                    incarnation,
                    at,
                    stable: (candidate, Value::Own(document)),
                    candidate: None,
                });
                return Ok(canary.candidate.clone());
            }
            tracing::warn!("{note}");
            let document = basis.stable.document.clone();
            let lineage = incarnation.lineage();
            let mine = Arc::new(Published::new(at as u64, document.clone(), &lineage));
            self.observe(Observed {
                incarnation,
                at,
                stable: (at as u64, Value::Own(document)),
                candidate: None,
            });
            return Ok(mine);
        }
        Err(EtcdError::KeptChanging {
            key: self.key.clone(),
            attempts: MAX_ATTEMPTS,
        }
        .into())
    }
}
