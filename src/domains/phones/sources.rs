//! The phones shell's own copy of the `units` database, fed by a follower
//! (no checkpoints; every start reloads), and the template fetcher.
//!
//! The configuration API validates writes against this copy and answers
//! its GETs from it (requests never wait on CouchDB; a write then waits for
//! CouchDB by nature, and reads the few `sip_auth` devices it names there
//! rather than keeping a copy of every device). Every instance keeps it,
//! building or not. Units are kept as JSON text plus the few fields
//! validation needs, so the copy stays small next to the engine's index.
//!
//! The template fetcher turns the attachment bodies of `template` override
//! documents into documents of the synthetic source `phones_templates`
//! (id = template document id, body `{text}` or `{error}`), which builders
//! read like any other document: a changed attachment rebuilds exactly the
//! outputs that use the override. The first `Replace` is sent once every
//! attachment of the first load was fetched, so the engine's first build
//! already has them.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::mac::Mac;
use super::model::{self, DocType, TEMPLATE_BODIES};
use super::search;
use crate::couch::retry::Backoff;
use crate::couch::{Body, Db, ErrorKind, rev_generation};
use crate::feeds::FeedEvent;
use crate::json::{JsonText, TextPool};
use crate::rebuild::index::{SourceDoc, SourceId};

/// The largest template attachment fetched.
const MAX_TEMPLATE_BYTES: usize = 256 * 1024;

/// A `units` document as the copy keeps it: its text (parsed on demand)
/// and the few fields lookups and validation need.
#[derive(Debug, Clone)]
pub struct Stored {
    pub rev: String,
    pub kind: Option<DocType>,
    pub account: Option<String>,
    /// The document's `name`, kept for units and accounts only (search).
    pub name: Option<String>,
    text: JsonText,
    pub unit: Option<UnitFacts>,
}

/// What validation needs of a unit without parsing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFacts {
    pub mac: Option<Mac>,
    pub enabled: bool,
    pub brand: Option<String>,
    pub family: Option<String>,
    pub model: Option<String>,
    pub profiles: Vec<String>,
    pub policies: Vec<String>,
}

impl Stored {
    fn new(rev: &str, text: JsonText) -> Stored {
        let json = text.parse();
        let kind = model::doc_type(&json);
        let account = model::account_of(&json).map(str::to_string);
        // Only searches read it, and they match units and accounts.
        let name = matches!(kind, Some(DocType::Unit | DocType::Account))
            .then(|| json.get("name").and_then(Value::as_str).map(str::to_string))
            .flatten();
        let unit = (kind == Some(DocType::Unit))
            .then(|| model::parse_unit("-", &json).ok())
            .flatten()
            .map(|p| {
                let u = p.value;
                UnitFacts {
                    mac: u.mac,
                    enabled: u.enabled,
                    brand: u.brand,
                    family: u.family,
                    model: u.model,
                    profiles: u.profiles,
                    policies: u.policies,
                }
            });
        Stored {
            rev: rev.to_string(),
            kind,
            account,
            name,
            text,
            unit,
        }
    }

    /// The document.
    pub fn json(&self) -> Arc<Value> {
        Arc::new(self.text.parse())
    }
}

#[derive(Default)]
struct State {
    units: BTreeMap<String, Stored>,
    loaded: bool,
}

/// The copy.
pub struct Sources {
    state: RwLock<State>,
    /// Bumped when a template document changes.
    templates: watch::Sender<u64>,
    /// Bumped when the database has been (re)loaded.
    loads: watch::Sender<u64>,
    /// An engine in this process indexes `units` too: texts go through
    /// `TextPool` (without one, the pool's entries would be pure cost).
    share_texts: bool,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            state: RwLock::default(),
            templates: watch::channel(0).0,
            loads: watch::channel(0).0,
            share_texts: false,
        }
    }
}

impl Sources {
    /// A copy that shares its texts with the engine's index.
    pub fn sharing_texts() -> Sources {
        Sources {
            share_texts: true,
            ..Sources::default()
        }
    }

    fn stored(&self, rev: &str, text: JsonText) -> Stored {
        let text = if self.share_texts {
            TextPool::global().share(text)
        } else {
            text
        };
        Stored::new(rev, text)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn is_loaded(&self) -> bool {
        self.read().loaded
    }

    /// Replaces the whole content: `(id, rev, body)`.
    pub fn replace(&self, docs: impl IntoIterator<Item = (String, String, Option<JsonText>)>) {
        {
            let mut state = self.write();
            state.units = docs
                .into_iter()
                .filter_map(|(id, rev, json)| Some((id, self.stored(&rev, json?))))
                .collect();
            state.loaded = true;
        }
        self.templates.send_modify(|n| *n += 1);
        self.loads.send_modify(|n| *n += 1);
    }

    /// Applies one change, unless the copy already holds a newer revision
    /// (a write-through's echo may come late).
    pub fn apply(&self, id: &str, rev: &str, json: Option<JsonText>) {
        let template_changed = {
            let mut state = self.write();
            if state
                .units
                .get(id)
                .is_some_and(|s| rev_generation(&s.rev) > rev_generation(rev))
            {
                return;
            }
            let old = match json {
                Some(json) => state.units.insert(id.to_string(), self.stored(rev, json)),
                None => state.units.remove(id),
            };
            let now = state.units.get(id).and_then(|s| s.kind);
            now == Some(DocType::Template) || old.is_some_and(|o| o.kind == Some(DocType::Template))
        };
        if template_changed {
            self.templates.send_modify(|n| *n += 1);
        }
    }

    /// A `units` document.
    pub fn get(&self, id: &str) -> Option<Stored> {
        self.read().units.get(id).cloned()
    }

    /// Every `units` document of a type (and account, when given).
    pub fn of_type(&self, kind: DocType, account: Option<&str>) -> Vec<(String, Stored)> {
        self.read()
            .units
            .iter()
            .filter(|(_, s)| {
                s.kind == Some(kind) && account.is_none_or(|a| s.account.as_deref() == Some(a))
            })
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect()
    }

    /// A page of the units matching `query` (`GET /v1/units`), in id order
    /// after `cursor`, at most `limit` (bounded by `search::MAX_LIMIT`):
    /// `(units, next cursor)`. One walk of the copy from the cursor, which
    /// stops as soon as the page is full.
    pub fn search_units(
        &self,
        query: &search::Query,
        cursor: Option<&str>,
        limit: usize,
    ) -> (Vec<Value>, Option<String>) {
        let limit = limit.clamp(1, search::MAX_LIMIT);
        let state = self.read();
        let start = cursor.map_or(Bound::Unbounded, |c| Bound::Excluded(c.to_string()));
        let account_name = |account: Option<&str>| state.units.get(account?)?.name.as_deref();
        let mut found = Vec::new();
        for (id, stored) in state.units.range((start, Bound::Unbounded)) {
            let Some(unit) = stored.unit.as_ref() else {
                continue;
            };
            let candidate = search::Candidate {
                id,
                name: stored.name.as_deref(),
                mac: unit.mac.as_ref(),
                account: stored.account.as_deref(),
                account_name: account_name(stored.account.as_deref()),
            };
            if !query.matches(&candidate) {
                continue;
            }
            if found.len() == limit {
                let last = found
                    .last()
                    .and_then(|u: &Value| u["id"].as_str())
                    .map(str::to_string);
                return (found, last);
            }
            found.push(json!({
                "id": id, "name": candidate.name, "mac": unit.mac.as_ref().map(Mac::colons),
                "account": candidate.account, "account_name": candidate.account_name,
                "brand": unit.brand, "family": unit.family, "model": unit.model, "enabled": unit.enabled,
            }));
        }
        (found, None)
    }

    /// The template documents with an attachment body: id → (attachment,
    /// digest).
    fn attachment_templates(&self) -> BTreeMap<String, (String, String)> {
        let state = self.read();
        state
            .units
            .iter()
            .filter(|(_, s)| s.kind == Some(DocType::Template))
            .filter_map(|(id, s)| {
                let json = s.json();
                if json.get("template").is_some() {
                    return None;
                }
                let name = model::attachment_name(&json).ok()?;
                let digest = json["_attachments"][&name]["digest"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                Some((id.clone(), (name, digest)))
            })
            .collect()
    }
}

/// Keeps `sources` current from the follower's events.
pub async fn consume(sources: Arc<Sources>, mut events: mpsc::Receiver<FeedEvent>) {
    // The follower ends a feed whose checkpoint channel was dropped: hold it.
    let mut _incarnation = None;
    while let Some(event) = events.recv().await {
        match event {
            FeedEvent::Replace {
                docs, checkpoint, ..
            } => {
                _incarnation = checkpoint;
                let docs = docs.into_values().map(|d| {
                    let json = match d.body {
                        Body::Json(json) => Some(json),
                        Body::Malformed(_) => None,
                    };
                    (d.id, d.rev, json)
                });
                sources.replace(docs);
            }
            FeedEvent::Change { id, rev, body, .. } => {
                let json = match body {
                    Some(Body::Json(json)) => Some(json),
                    Some(Body::Malformed(_)) | None => None,
                };
                sources.apply(&id, &rev, json);
            }
            FeedEvent::Refresh { .. } | FeedEvent::Reloading { .. } | FeedEvent::Loaded { .. } => {}
        }
    }
}

/// What the fetcher sent for one template document.
#[derive(Debug, Clone, PartialEq)]
struct Fetched {
    attachment: String,
    digest: String,
    body: Value,
    generation: u64,
    /// A transient failure: retried.
    retry: bool,
}

/// Fetches template attachment bodies into the synthetic source.
pub struct TemplateFetcher {
    pub sources: Arc<Sources>,
    pub db: Db,
    pub engine: mpsc::Sender<FeedEvent>,
    pub backoff: Backoff,
}

impl TemplateFetcher {
    pub async fn run(self, token: CancellationToken) {
        let mut loads = self.sources.loads.subscribe();
        let mut templates = self.sources.templates.subscribe();
        // The first load of units and sip_auth.
        loop {
            if self.sources.is_loaded() {
                break;
            }
            tokio::select! {
                () = token.cancelled() => return,
                changed = loads.changed() => if changed.is_err() { return },
            }
        }
        let mut fetched: BTreeMap<String, Fetched> = BTreeMap::new();
        let mut backoff = self.backoff.clone();
        let mut first = true;
        let mut retry_at: Option<Instant> = None;
        loop {
            templates.mark_unchanged();
            let wanted = self.sources.attachment_templates();
            let changes = self.sync(&wanted, &mut fetched, &token).await;
            if first {
                let docs = fetched
                    .iter()
                    .map(|(id, f)| (id.clone(), source_doc(id, f)))
                    .collect();
                let event = FeedEvent::Replace {
                    source: SourceId::from(TEMPLATE_BODIES),
                    docs,
                    seq: None,
                    checkpoint: None,
                };
                if self.engine.send(event).await.is_err() {
                    return;
                }
                first = false;
            } else {
                for (id, doc) in changes {
                    let event = FeedEvent::Change {
                        source: SourceId::from(TEMPLATE_BODIES),
                        rev: doc
                            .as_ref()
                            .map_or_else(|| "0-gone".to_string(), |d| d.rev.clone()),
                        body: doc.map(|d| d.body),
                        id,
                        seq: Value::Null,
                        received: Instant::now(),
                    };
                    if self.engine.send(event).await.is_err() {
                        return;
                    }
                }
            }
            let failing = fetched.values().any(|f| f.retry);
            retry_at = match (failing, retry_at) {
                (false, _) => {
                    backoff.reset();
                    None
                }
                (true, Some(at)) if at > Instant::now() => Some(at),
                (true, _) => Some(Instant::now() + backoff.next_delay(ErrorKind::Transient)),
            };
            let sleep = retry_at.map_or(Duration::from_secs(3600), |at| {
                at.saturating_duration_since(Instant::now())
            });
            tokio::select! {
                () = token.cancelled() => return,
                changed = templates.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(sleep) => {
                    for f in fetched.values_mut().filter(|f| f.retry) {
                        f.digest.clear();
                    }
                    retry_at = None;
                }
            }
        }
    }

    /// Fetches what changed; returns the synthetic documents to send.
    async fn sync(
        &self,
        wanted: &BTreeMap<String, (String, String)>,
        fetched: &mut BTreeMap<String, Fetched>,
        token: &CancellationToken,
    ) -> Vec<(String, Option<SourceDoc>)> {
        let mut changes = Vec::new();
        let gone: Vec<String> = fetched
            .keys()
            .filter(|id| !wanted.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            fetched.remove(&id);
            changes.push((id, None));
        }
        for (id, (attachment, digest)) in wanted {
            let current = fetched.get(id);
            if current.is_some_and(|f| {
                f.attachment == *attachment && f.digest == *digest && !f.digest.is_empty()
            }) {
                continue;
            }
            if token.is_cancelled() {
                break;
            }
            let (body, retry) = self.fetch(id, attachment).await;
            let generation = current.map_or(1, |f| f.generation + 1);
            let entry = Fetched {
                attachment: attachment.clone(),
                digest: digest.clone(),
                body,
                generation,
                retry,
            };
            if current.is_some_and(|f| f.body == entry.body) {
                fetched.insert(
                    id.clone(),
                    Fetched {
                        generation: current.map_or(1, |f| f.generation),
                        ..entry
                    },
                );
                continue;
            }
            changes.push((id.clone(), Some(source_doc(id, &entry))));
            fetched.insert(id.clone(), entry);
        }
        changes
    }

    /// The body document of one attachment, and whether to retry.
    async fn fetch(&self, id: &str, attachment: &str) -> (Value, bool) {
        match self.db.get_attachment(id, attachment).await {
            Ok(Some((_, bytes))) if bytes.len() > MAX_TEMPLATE_BYTES => (
                json!({"error": format!("the attachment is {} bytes, over the {MAX_TEMPLATE_BYTES}-byte limit", bytes.len())}),
                false,
            ),
            Ok(Some((_, bytes))) => match String::from_utf8(bytes.to_vec()) {
                Ok(text) => (json!({"text": text}), false),
                Err(_) => (json!({"error": "the attachment is not UTF-8 text"}), false),
            },
            // Gone between the feed and the fetch: the next change says more.
            Ok(None) => (json!({"error": "the attachment does not exist"}), true),
            Err(err) => {
                tracing::warn!(id, attachment, error = %err, "cannot fetch a template attachment yet");
                (
                    json!({"error": format!("cannot fetch the attachment: {err}")}),
                    true,
                )
            }
        }
    }
}

fn source_doc(id: &str, fetched: &Fetched) -> SourceDoc {
    SourceDoc {
        id: id.to_string(),
        rev: format!(
            "{}-{}",
            fetched.generation,
            fetched.digest.replace(['=', '+', '/'], "")
        ),
        body: Body::of(&fetched.body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Beside an engine the copy keeps the text the index already has;
    /// alone it keeps its own (and puts nothing in the pool).
    #[test]
    fn the_copy_shares_texts_only_beside_an_engine() {
        let body = json!({"type": "unit", "account_id": "a", "sources-share-test": 1});
        let held = TextPool::global().share(JsonText::of(&body));
        for (sources, shares) in [
            (Sources::sharing_texts(), true),
            (Sources::default(), false),
        ] {
            sources.replace(vec![("u".into(), "1-a".into(), Some(JsonText::of(&body)))]);
            assert_eq!(sources.get("u").unwrap().text.same_copy(&held), shares);
            sources.apply("u", "2-a", Some(JsonText::of(&body)));
            assert_eq!(sources.get("u").unwrap().text.same_copy(&held), shares);
        }
    }

    #[test]
    fn the_copy_follows_changes_and_ignores_late_echoes() {
        let sources = Sources::default();
        assert!(!sources.is_loaded());
        sources.replace(vec![(
            "u".into(),
            "1-a".into(),
            Some(JsonText::of(
                &json!({"type": "unit", "account_id": "a", "mac_address": "001565000001"}),
            )),
        )]);
        assert!(sources.is_loaded());
        let unit = sources.get("u").unwrap();
        assert_eq!(
            unit.unit.as_ref().unwrap().mac.unwrap().lower(),
            "001565000001"
        );
        assert_eq!(unit.json()["account_id"], "a");
        sources.apply(
            "u",
            "3-c",
            Some(JsonText::of(&json!({"type": "unit", "account_id": "b"}))),
        );
        sources.apply(
            "u",
            "2-b",
            Some(JsonText::of(&json!({"type": "unit", "account_id": "c"}))),
        );
        assert_eq!(sources.get("u").unwrap().account.as_deref(), Some("b"));
        assert_eq!(sources.of_type(DocType::Unit, Some("b")).len(), 1);
        sources.apply("u", "4-d", None);
        assert!(sources.get("u").is_none());
    }

    #[test]
    fn attachment_templates_are_listed_with_their_digest() {
        let sources = Sources::default();
        sources.replace(vec![
            ("t1".into(), "1-a".into(), Some(JsonText::of(&json!({"type": "template", "brand": "yealink", "file": "x", "_attachments": {"b.hbs": {"stub": true, "digest": "md5-1"}}})))),
            ("t2".into(), "1-a".into(), Some(JsonText::of(&json!({"type": "template", "brand": "yealink", "file": "x", "template": "inline"})))),
        ]);
        let wanted = sources.attachment_templates();
        assert_eq!(wanted.len(), 1);
        assert_eq!(wanted["t1"], ("b.hbs".to_string(), "md5-1".to_string()));
    }
}
