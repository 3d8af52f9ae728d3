//! The cache writer: turns built outputs into cache documents and stores the
//! ones whose hash changed with `_bulk_docs`.
//!
//! Invariants:
//! * `write` returns `Ok` only once every planned document is durably in the
//!   cache database (or was refused by CouchDB for a reason retrying cannot
//!   fix, which is logged and counted);
//! * a document is sent only when its hash differs from the mirror's copy;
//! * a `409` is never fatal: the current document is re-read, the mirror
//!   updated, and the output re-planned against it (another builder may
//!   already have written the same content);
//! * every stored document is applied to the mirror at once (write-through).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::mirror::{Mirror, Update};
use super::{CacheEntry, Content, FORMAT, JsonText, doc_id, serialized_content_hash};
use crate::couch::retry::Backoff;
use crate::couch::{BulkResult, Db, ErrorKind, Seq};
use crate::domains::{Built, Domain, Issue};
use crate::lifecycle::readiness::Readiness;
use crate::rebuild::index::SourceId;
use crate::telemetry::metrics::Metrics;

/// The design documents installed into the cache database.
const DESIGN_DOCS: [&str; 1] = [include_str!("../../design-docs/cache/caldera.json")];

/// Rounds of "409 → re-read → re-plan" before a batch counts as failed.
const CONFLICT_ROUNDS: usize = 5;

/// One built output, ready to be stored.
#[derive(Debug)]
pub struct Output {
    pub domain: Domain,
    pub key: String,
    pub built: Built,
    /// The revision of every source document the build read, by source.
    pub built_from: BTreeMap<SourceId, BTreeMap<String, String>>,
}

/// The shutdown token fired before everything was durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

pub struct Writer {
    db: Db,
    mirror: Arc<Mirror>,
    node: String,
    /// Logical source name → physical database name, for `errors[].db`.
    db_names: BTreeMap<String, String>,
    batch: usize,
    max_output_bytes: usize,
    backoff: Backoff,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

/// What one write did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub stored: usize,
    pub deleted: usize,
    pub unchanged: usize,
    pub refused: usize,
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, other: Written) {
        self.stored += other.stored;
        self.deleted += other.deleted;
        self.unchanged += other.unchanged;
        self.refused += other.refused;
    }
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: Db,
        mirror: Arc<Mirror>,
        node: &str,
        db_names: BTreeMap<String, String>,
        batch: usize,
        max_output_bytes: usize,
        backoff: Backoff,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
    ) -> Writer {
        readiness.set("cache_writes", Ok(()));
        Writer {
            db,
            mirror,
            node: node.to_string(),
            db_names,
            batch,
            max_output_bytes,
            backoff,
            metrics,
            readiness,
        }
    }

    /// Creates the cache database when missing and installs the design
    /// documents; idempotent.
    ///
    /// # Errors
    /// CouchDB refused or could not be reached.
    pub async fn ensure_database(db: &Db) -> crate::couch::Result<()> {
        if db.create().await? {
            tracing::info!(db = db.name(), "created the cache database");
        }
        for text in DESIGN_DOCS {
            let wanted: Value =
                serde_json::from_str(text).expect("design documents are valid JSON");
            let id = wanted["_id"]
                .as_str()
                .expect("design documents have an _id");
            let current = db.get(id).await?;
            let mut doc = wanted.clone();
            if let Some(current) = &current {
                let mut without_rev = current.clone();
                without_rev.as_object_mut().map(|o| o.remove("_rev"));
                if without_rev == wanted {
                    continue;
                }
                doc["_rev"] = current["_rev"].clone();
            }
            match db.put(&doc).await {
                Ok(_) => tracing::info!(db = db.name(), id, "installed design document"),
                // Another instance installed it at the same moment.
                Err(err) if err.is(ErrorKind::Conflict) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Stores every output whose cache document must change.
    ///
    /// # Errors
    /// `Cancelled` when shutdown came before everything was durable.
    pub async fn write(
        &mut self,
        outputs: Vec<Output>,
        seqs: &BTreeMap<SourceId, Seq>,
        token: &CancellationToken,
    ) -> Result<Written, Cancelled> {
        let mut written = Written::default();
        let mut pending: Vec<Output> = outputs;
        let mut conflict_rounds = 0;
        while !pending.is_empty() {
            let (mut docs, unchanged) = self.plan(&pending, seqs);
            written.unchanged += unchanged;
            if docs.is_empty() {
                break;
            }
            let mut conflicted = Vec::new();
            while !docs.is_empty() {
                let rest = docs.split_off(docs.len().min(self.batch));
                let chunk = std::mem::replace(&mut docs, rest);
                let outcome = self.store(chunk, token).await?;
                written.stored += outcome.stored;
                written.deleted += outcome.deleted;
                written.refused += outcome.refused;
                conflicted.extend(outcome.conflicted);
            }
            if conflicted.is_empty() {
                break;
            }
            conflict_rounds += 1;
            self.refresh(&conflicted, token).await?;
            if conflict_rounds >= CONFLICT_ROUNDS {
                // Another writer keeps changing these documents; back off
                // before competing again rather than spinning.
                tracing::warn!(ids = ?conflicted, "cache documents keep conflicting; backing off");
                if !self.backoff.wait(ErrorKind::Conflict, token).await {
                    return Err(Cancelled);
                }
                conflict_rounds = 0;
            }
            pending.retain(|o| conflicted.contains(&doc_id(o.domain, &o.key)));
        }
        self.backoff.reset();
        Ok(written)
    }

    /// The cache documents to send (those whose hash changed) and how many
    /// outputs need no write.
    fn plan(&self, outputs: &[Output], seqs: &BTreeMap<SourceId, Seq>) -> (Vec<Planned>, usize) {
        let mut docs = Vec::new();
        let mut unchanged = 0;
        for output in outputs {
            let id = doc_id(output.domain, &output.key);
            // Only the revision and hash are needed, unless the output
            // fails (`last_good` then reads the content).
            let current = self.mirror.meta(&id);
            match self.document(output, id, current.as_deref(), seqs) {
                Some(doc) => docs.push(doc),
                None => unchanged += 1,
            }
        }
        (docs, unchanged)
    }

    /// `last_good_of` the current entry, its content read back when the
    /// mirror keeps it in the store (an unreadable record is reported by
    /// the mirror, and the output then has no last good content).
    fn last_good(
        &self,
        current: Option<&CacheEntry>,
        issues: Vec<Issue>,
    ) -> (Content, Vec<u8>, Vec<Issue>, bool) {
        let held = match current {
            Some(entry) if matches!(entry.content, Content::Spilled) => self.mirror.get(&entry.id),
            _ => None,
        };
        last_good_of(
            held.as_deref()
                .or(current)
                .filter(|e| !matches!(e.content, Content::Spilled)),
            issues,
        )
    }

    /// The cache document for `output`, or `None` when nothing must change.
    /// The content is serialized once: for its size, its hash and the
    /// request body.
    fn document(
        &self,
        output: &Output,
        id: String,
        current: Option<&CacheEntry>,
        seqs: &BTreeMap<SourceId, Seq>,
    ) -> Option<Planned> {
        let (content, content_json, issues, stale) = match &output.built {
            Built::Absent => {
                let current = current?;
                let json = serde_json::to_vec(
                    &json!({ "_id": id, "_rev": current.rev, "_deleted": true }),
                )
                .expect("JSON values serialize");
                return Some(Planned {
                    id,
                    json,
                    entry: None,
                });
            }
            Built::Content { content, issues } => {
                let content_json = serde_json::to_vec(content).expect("JSON values serialize");
                if content_json.len() > self.max_output_bytes {
                    let reason = format!(
                        "the output is {} bytes, over build.max_output_bytes ({})",
                        content_json.len(),
                        self.max_output_bytes
                    );
                    let mut issues = issues.clone();
                    issues.push(Issue {
                        source: Arc::from(output.domain.name()),
                        doc: None,
                        reason,
                    });
                    self.last_good(current, issues)
                } else {
                    let held = Content::Text(JsonText::from_serialized(&content_json));
                    (held, content_json, issues.clone(), false)
                }
            }
            Built::Failed { issues } => self.last_good(current, issues.clone()),
        };
        let errors = self.errors_json(&issues);
        let hash = serialized_content_hash(&content_json, &errors, stale);
        if current.is_some_and(|c| c.hash == hash) {
            return None;
        }
        let head = CacheDocHead {
            id: &id,
            rev: current.map(|c| c.rev.as_str()),
            caldera: FORMAT,
            domain: output.domain.name(),
            key: &output.key,
            hash: &hash,
            errors: &errors,
            stale,
            built_from: self.built_from(output),
            seqs: self.seqs(output, seqs),
            built_by: &self.node,
            built_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        };
        let json = with_content(&head, &content_json);
        let entry = CacheEntry {
            id: id.clone(),
            rev: String::new(),
            domain: output.domain.name().to_string(),
            key: output.key.clone(),
            hash,
            content,
            errors,
            stale,
            bytes: json.len(),
        };
        Some(Planned {
            id,
            json,
            entry: Some(entry),
        })
    }

    /// Names the physical database of a source registered after start-up
    /// (a dynamic source), for `errors[].db`, `built_from` and `seqs`.
    pub fn set_db_name(&mut self, source: &str, db: &str) {
        self.db_names.insert(source.to_string(), db.to_string());
    }

    fn physical(&self, source: &str) -> String {
        self.db_names
            .get(source)
            .cloned()
            .unwrap_or_else(|| source.to_string())
    }

    fn errors_json(&self, issues: &[Issue]) -> Value {
        let mut issues = issues.to_vec();
        issues.sort();
        issues.dedup();
        let list = issues
            .iter()
            .map(|i| json!({ "db": self.physical(&i.source), "doc": i.doc, "reason": i.reason }));
        Value::Array(list.collect())
    }

    fn built_from(&self, output: &Output) -> Value {
        let by_db = output
            .built_from
            .iter()
            .map(|(source, revs)| (self.physical(source), json!(revs)));
        Value::Object(by_db.collect())
    }

    fn seqs(&self, output: &Output, seqs: &BTreeMap<SourceId, Seq>) -> Value {
        let by_db = output
            .built_from
            .keys()
            .filter_map(|source| Some((self.physical(source), seqs.get(source)?.clone())));
        Value::Object(by_db.collect())
    }

    /// Sends one batch until CouchDB answers it, splitting it when the
    /// server finds it too large.
    async fn store(
        &mut self,
        docs: Vec<Planned>,
        token: &CancellationToken,
    ) -> Result<StoreOutcome, Cancelled> {
        let mut queue = vec![docs];
        let mut outcome = StoreOutcome::default();
        while let Some(batch) = queue.pop() {
            let bodies: Vec<&[u8]> = batch.iter().map(|p| p.json.as_slice()).collect();
            let bytes: usize = bodies.iter().map(|b| b.len()).sum();
            let started = std::time::Instant::now();
            let sent = self.db.bulk_docs_serialized(&bodies).await;
            tracing::debug!(docs = batch.len(), bytes, elapsed = ?started.elapsed(), "cache _bulk_docs");
            match sent {
                Ok(results) => {
                    self.readiness.set("cache_writes", Ok(()));
                    self.backoff.reset();
                    self.apply_results(batch, results, &mut outcome);
                }
                Err(err) if err.is(ErrorKind::TooLarge) && batch.len() > 1 => {
                    let mut first = batch;
                    let second = first.split_off(first.len() / 2);
                    queue.push(second);
                    queue.push(first);
                }
                Err(err) if err.is(ErrorKind::TooLarge) => {
                    tracing::error!(id = batch[0].id, error = %err, "CouchDB refuses this cache document as too large");
                    self.metrics
                        .cache_writes
                        .get_or_create(&Metrics::outcome("refused"))
                        .inc();
                    outcome.refused += 1;
                }
                Err(err) => {
                    self.metrics
                        .cache_writes
                        .get_or_create(&Metrics::outcome("retried"))
                        .inc();
                    self.readiness.set(
                        "cache_writes",
                        Err(format!("cannot write the cache: {err}")),
                    );
                    tracing::warn!(db = self.db.name(), error = %err, "cache write failed; retrying");
                    if err.is(ErrorKind::NotFound)
                        && let Err(err) = Writer::ensure_database(&self.db).await
                    {
                        tracing::warn!(error = %err, "cannot create the cache database");
                    }
                    if !self.backoff.wait(err.kind, token).await {
                        return Err(Cancelled);
                    }
                    queue.push(batch);
                }
            }
        }
        Ok(outcome)
    }

    fn apply_results(
        &self,
        batch: Vec<Planned>,
        results: Vec<BulkResult>,
        outcome: &mut StoreOutcome,
    ) {
        let mut sent: BTreeMap<String, Option<CacheEntry>> =
            batch.into_iter().map(|p| (p.id, p.entry)).collect();
        for result in results {
            let Some(entry) = sent.remove(&result.id) else {
                continue;
            };
            match (result.rev, result.error.as_deref()) {
                (Some(rev), None) => match entry {
                    None => {
                        self.mirror
                            .apply_written(Update::Deleted { id: result.id, rev });
                        outcome.deleted += 1;
                        self.count_write("deleted");
                    }
                    Some(mut entry) => {
                        entry.rev = rev;
                        self.mirror.apply_written(Update::Live(entry));
                        outcome.stored += 1;
                        self.count_write("stored");
                    }
                },
                (_, Some("conflict")) => {
                    self.count_write("conflict");
                    outcome.conflicted.push(result.id);
                }
                (_, error) => {
                    let reason = result.reason.as_deref().unwrap_or("");
                    tracing::error!(
                        id = result.id,
                        error,
                        reason,
                        "CouchDB refused a cache document"
                    );
                    self.count_write("refused");
                    outcome.refused += 1;
                }
            }
        }
    }

    fn count_write(&self, outcome: &str) {
        self.metrics
            .cache_writes
            .get_or_create(&Metrics::outcome(outcome))
            .inc();
    }

    /// Re-reads conflicting documents into the mirror so the next plan uses
    /// their current `_rev` and content.
    async fn refresh(
        &mut self,
        ids: &[String],
        token: &CancellationToken,
    ) -> Result<(), Cancelled> {
        loop {
            match self.db.all_docs(ids, true).await {
                Ok(rows) => {
                    for row in rows {
                        apply_current(&self.mirror, row);
                    }
                    return Ok(());
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot re-read conflicting cache documents; retrying");
                    if !self.backoff.wait(err.kind, token).await {
                        return Err(Cancelled);
                    }
                }
            }
        }
    }
}

/// The last good content (and its JSON) kept and flagged stale, with the
/// new problems.
/// What a failed output keeps: its last good content, marked stale (none
/// yet: `null`, not stale).
fn last_good_of(
    current: Option<&CacheEntry>,
    issues: Vec<Issue>,
) -> (Content, Vec<u8>, Vec<Issue>, bool) {
    let (content, stale) = match current {
        Some(current) if !current.content.is_null() => (current.content.clone(), true),
        _ => (Content::of(&Value::Null), false),
    };
    let json = content.json().into_owned();
    (content, json, issues, stale)
}

/// A cache document planned for `_bulk_docs`.
struct Planned {
    id: String,
    /// The document as sent.
    json: Vec<u8>,
    /// What the mirror holds once it is stored (its `_rev` filled in then);
    /// `None` for a deletion.
    entry: Option<CacheEntry>,
}

/// Every field of a cache document but `content` (see `with_content`).
#[derive(Serialize)]
struct CacheDocHead<'a> {
    #[serde(rename = "_id")]
    id: &'a str,
    #[serde(rename = "_rev", skip_serializing_if = "Option::is_none")]
    rev: Option<&'a str>,
    caldera: u64,
    domain: &'a str,
    key: &'a str,
    hash: &'a str,
    errors: &'a Value,
    stale: bool,
    built_from: Value,
    seqs: Value,
    built_by: &'a str,
    built_at: String,
}

/// The document's JSON: `head`'s object with `"content":<content_json>`
/// added as its last member. Splicing the already serialized content in
/// saves serializing (or copying) a possibly large tree a second time.
fn with_content(head: &CacheDocHead<'_>, content_json: &[u8]) -> Vec<u8> {
    let mut json = serde_json::to_vec(head).expect("JSON values serialize");
    // A serialized struct is an object: it ends with `}` and has members.
    debug_assert_eq!(json.last(), Some(&b'}'));
    json.pop();
    json.reserve(content_json.len() + 12);
    json.extend_from_slice(b",\"content\":");
    json.extend_from_slice(content_json);
    json.push(b'}');
    json
}

fn apply_current(mirror: &Mirror, row: crate::couch::AllDocsRow) {
    match (row.value, row.doc) {
        (Some(value), _) if value.deleted => mirror.apply_written(Update::Deleted {
            id: row.key,
            rev: value.rev,
        }),
        (Some(_), Some(doc)) => {
            let bytes = serde_json::to_vec(&doc).map_or(0, |b| b.len());
            match CacheEntry::from_doc(&doc, bytes) {
                Ok(entry) => mirror.apply_written(Update::Live(entry)),
                Err(why) => tracing::warn!(
                    id = row.key,
                    why,
                    "a document in the cache database is not a cache document"
                ),
            }
        }
        // Not found: the document is gone without a tombstone we can see.
        _ => mirror.apply_written(Update::Deleted {
            id: row.key,
            rev: "0-".into(),
        }),
    }
}

#[derive(Default)]
struct StoreOutcome {
    stored: usize,
    deleted: usize,
    refused: usize,
    conflicted: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current(content: Content) -> CacheEntry {
        CacheEntry {
            id: "phones:unit:u".into(),
            rev: "3-a".into(),
            domain: "phones".into(),
            key: "unit:u".into(),
            hash: "h".into(),
            content,
            errors: json!([]),
            stale: false,
            bytes: 0,
        }
    }

    /// A failed build keeps the last good content's text, shared (so the
    /// same bytes and the same hash).
    #[test]
    fn the_last_good_copy_keeps_its_text() {
        let good =
            json!({"files": {"a.cfg": {"body": "line\n\"q\"", "etag": "e"}}, "served": true});
        let text = Content::Text(JsonText::of(&good));
        let (kept, json, _, stale) = last_good_of(Some(&current(text.clone())), vec![]);
        assert!(stale);
        assert_eq!(kept, text, "the text is shared, not parsed");
        assert_eq!(json, serde_json::to_vec(&good).unwrap());

        // Nothing good to keep: an empty content, not flagged stale.
        let (kept, json, _, stale) = last_good_of(None, vec![]);
        assert!(!stale);
        assert!(kept.is_null());
        assert_eq!(json, b"null");
        let empty = current(Content::of(&Value::Null));
        let (_, _, _, stale) = last_good_of(Some(&empty), vec![]);
        assert!(!stale, "a null content is not a last good copy");
    }
}
