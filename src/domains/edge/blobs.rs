//! The IO shell that feeds attachment bytes to the builders: the synthetic
//! source `edge_blob` (id = `digest_key` of the attachment, body =
//! `{"data": base64, "size", "sha256"}`).
//!
//! Which attachments: every file a class manifest in the mirror names
//! (templates at their latest versions, master scripts, class scripts).
//! At start-up the source is seeded from the `file:` outputs the cache
//! already holds, so a restart builds packages at once; missing ones are
//! fetched from `edge_config` (a few at a time), and ones no manifest names
//! any more are dropped. Attachments are immutable per digest, so a blob is
//! fetched once. A failed fetch is retried with backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::manifest::ClassManifest;
use super::model::{EDGE_BLOBS, FileRef, sha256_hex};
use crate::cache::mirror::Mirror;
use crate::couch::retry::Backoff;
use crate::couch::{Body, Db, ErrorKind};
use crate::domains::Domain;
use crate::feeds::FeedEvent;
use crate::rebuild::index::{SourceDoc, SourceId};
use crate::telemetry::metrics::Metrics;

/// Attachments fetched at once.
const CONCURRENCY: usize = 4;

/// The fetcher task.
pub struct Task {
    pub mirror: Arc<Mirror>,
    pub db: Db,
    pub engine: mpsc::Sender<FeedEvent>,
    pub metrics: Arc<Metrics>,
    pub backoff: Backoff,
}

enum Fetched {
    Blob(String, serde_json::Value),
    /// The attachment is gone (its document changed); wait for the manifests.
    Missing(String),
    Failed(ErrorKind),
}

impl Task {
    /// Runs until `token` fires (or the engine is gone).
    pub async fn run(mut self, token: CancellationToken) {
        let mut loaded = self.mirror.subscribe_loaded();
        tokio::select! {
            biased;
            () = token.cancelled() => return,
            result = loaded.wait_for(|l| *l) => if result.is_err() { return; },
        }
        let seed = self.cached();
        let mut have: BTreeSet<String> = seed.keys().cloned().collect();
        let replace = FeedEvent::Replace {
            source: SourceId::from(EDGE_BLOBS),
            docs: seed,
            seq: None,
            checkpoint: None,
        };
        if self.engine.send(replace).await.is_err() {
            return;
        }
        let mut gone: BTreeSet<String> = BTreeSet::new();
        let mut seen = None;
        loop {
            let changed = self.mirror.changed();
            // Most mirror changes are not manifests (registry shards, files).
            let fingerprint = self.fingerprint();
            if seen.as_ref() == Some(&fingerprint) {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = changed => continue,
                }
            }
            // A changed manifest may name a vanished attachment's successor.
            gone.clear();
            let wanted = self.wanted();
            for key in have
                .difference(&wanted.keys().cloned().collect())
                .cloned()
                .collect::<Vec<_>>()
            {
                have.remove(&key);
                if !self.send(&key, None).await {
                    return;
                }
            }
            let missing: Vec<(String, FileRef)> = wanted
                .into_iter()
                .filter(|(key, _)| !have.contains(key) && !gone.contains(key))
                .collect();
            let mut failed = false;
            if !missing.is_empty() {
                let Some(results) = self.fetch_all(missing, &token).await else {
                    return;
                };
                for result in results {
                    match result {
                        Fetched::Blob(key, body) => {
                            if !self.send(&key, Some(body)).await {
                                return;
                            }
                            have.insert(key);
                        }
                        // Until a manifest changes: it will name another.
                        Fetched::Missing(key) => {
                            gone.insert(key);
                        }
                        Fetched::Failed(kind) => {
                            failed = true;
                            if !self.backoff.wait(kind, &token).await {
                                return;
                            }
                        }
                    }
                }
                if !failed {
                    self.backoff.reset();
                }
            }
            if failed {
                continue;
            }
            seen = Some(fingerprint);
            tokio::select! {
                () = token.cancelled() => return,
                () = changed => {}
            }
        }
    }

    /// What the cache already holds, as blob documents.
    fn cached(&self) -> BTreeMap<String, SourceDoc> {
        let mut docs = BTreeMap::new();
        for id in self.mirror.ids_of(Domain::Edge.name()) {
            let Some(key) = id.strip_prefix("edge:file:") else {
                continue;
            };
            let Some(entry) = self.mirror.get(&id) else {
                continue;
            };
            if entry
                .content
                .value()
                .get("data")
                .and_then(|d| d.as_str())
                .is_none()
            {
                continue;
            }
            docs.insert(
                key.to_string(),
                SourceDoc {
                    id: key.to_string(),
                    rev: "1-cached".into(),
                    body: Body::of(&entry.content.value()),
                },
            );
        }
        docs
    }

    /// The class manifests' ids and hashes, to notice a change cheaply.
    fn fingerprint(&self) -> Vec<(String, String)> {
        let mut ids: Vec<String> = self
            .mirror
            .ids_of(Domain::Edge.name())
            .into_iter()
            .filter(|id| id.starts_with("edge:class:"))
            .collect();
        ids.sort();
        ids.into_iter()
            .filter_map(|id| {
                let hash = self.mirror.get(&id)?.hash.clone();
                Some((id, hash))
            })
            .collect()
    }

    /// Every attachment the class manifests in the mirror name, by key.
    fn wanted(&self) -> BTreeMap<String, FileRef> {
        let mut wanted = BTreeMap::new();
        for id in self.mirror.ids_of(Domain::Edge.name()) {
            if !id.starts_with("edge:class:") {
                continue;
            }
            let Some(entry) = self.mirror.get(&id) else {
                continue;
            };
            let Ok(manifest) =
                serde_json::from_value::<ClassManifest>(entry.content.value().into_owned())
            else {
                continue;
            };
            for file in manifest.file_refs() {
                wanted.entry(file.key()).or_insert_with(|| file.clone());
            }
        }
        wanted
    }

    async fn fetch_all(
        &self,
        missing: Vec<(String, FileRef)>,
        token: &CancellationToken,
    ) -> Option<Vec<Fetched>> {
        let mut queue = missing.into_iter();
        let mut running = FuturesUnordered::new();
        let mut results = Vec::new();
        loop {
            while running.len() < CONCURRENCY {
                let Some((key, file)) = queue.next() else {
                    break;
                };
                running.push(self.fetch(key, file));
            }
            tokio::select! {
                () = token.cancelled() => return None,
                next = running.next() => match next {
                    Some(result) => results.push(result),
                    None => return Some(results),
                },
            }
        }
    }

    async fn fetch(&self, key: String, file: FileRef) -> Fetched {
        let count = |outcome: &str| {
            self.metrics
                .edge_blob_fetches
                .get_or_create(&Metrics::outcome(outcome))
                .inc();
        };
        match self.db.get_attachment(&file.doc, &file.name).await {
            Ok(Some((_, bytes))) => {
                count("ok");
                let body = json!({
                    "data": STANDARD.encode(&bytes),
                    "size": bytes.len(),
                    "sha256": sha256_hex(&bytes),
                });
                Fetched::Blob(key, body)
            }
            Ok(None) => {
                count("missing");
                tracing::debug!(
                    doc = file.doc,
                    name = file.name,
                    "an attachment a manifest names is gone"
                );
                Fetched::Missing(key)
            }
            Err(err) => {
                count("error");
                tracing::warn!(doc = file.doc, name = file.name, error = %err, "cannot fetch an edge attachment");
                Fetched::Failed(err.kind)
            }
        }
    }

    async fn send(&self, key: &str, body: Option<serde_json::Value>) -> bool {
        let event = FeedEvent::Change {
            source: SourceId::from(EDGE_BLOBS),
            id: key.to_string(),
            rev: "1-blob".into(),
            body: body.as_ref().map(Body::of),
            seq: serde_json::Value::Null,
            received: std::time::Instant::now(),
        };
        self.engine.send(event).await.is_ok()
    }
}
