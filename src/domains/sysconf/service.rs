//! The IO shell of system_config values: get / set / flush, called by every
//! front door (the HTTP API and the AMQP listener) so they behave identically.
//!
//! Reads come from the mirror and never touch CouchDB. Writes are
//! read-modify-write cycles on the category document in `system_config`,
//! retried on 409, and return only once the new value is visible in the
//! mirror (or `sysconf.write_wait` has passed): on a building instance by
//! handing the written document straight to the engine, on a replica by
//! waiting for the cache feed.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use serde_json::Value;

use super::model::{self, DEFAULT_SECTION, SOURCE, WriteError};
use crate::cache::mirror::{Mirror, Update};
use crate::cache::{CacheEntry, doc_id};
use crate::couch::{Body, Db, ErrorKind};
use crate::domains::Domain;
use crate::rebuild::engine::EngineHandle;

/// The settings a reload may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub node: String,
    pub zone: String,
    pub write_wait: Duration,
    pub write_attempts: u32,
}

/// Why a request could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum SysconfError {
    #[error("the cache is not loaded yet")]
    NotReady,
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("CouchDB: {0}")]
    Unavailable(String),
}

impl From<crate::couch::Error> for SysconfError {
    fn from(err: crate::couch::Error) -> SysconfError {
        SysconfError::Unavailable(err.to_string())
    }
}

pub type Result<T, E = SysconfError> = std::result::Result<T, E>;

/// The answer to get and set: the value and the section it lives in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    pub category: String,
    /// The key as asked: a string, or a list for a nested path.
    pub key: Value,
    pub value: Value,
    pub section: String,
}

/// A key answered by another part of caldera instead of the category
/// document: `(category, key, node) → Some((value, section))`. Kazoo 4.2
/// answers `ecallmgr`/`acls` with the built ACLs; app.rs installs that hook
/// (so this domain never imports the ACL domain).
pub type SpecialKey = Box<dyn Fn(&str, &[String], &str) -> Option<(Value, String)> + Send + Sync>;

pub struct SysconfService {
    mirror: Arc<Mirror>,
    source: Db,
    cache: Db,
    engine: Option<EngineHandle>,
    settings: ArcSwap<Settings>,
    special: Option<SpecialKey>,
}

impl SysconfService {
    pub fn new(
        mirror: Arc<Mirror>,
        source: Db,
        cache: Db,
        engine: Option<EngineHandle>,
        settings: Settings,
    ) -> SysconfService {
        SysconfService {
            mirror,
            source,
            cache,
            engine,
            settings: ArcSwap::from_pointee(settings),
            special: None,
        }
    }

    /// Installs the special-key hook consulted first by `get`.
    pub fn with_special_key(mut self, hook: SpecialKey) -> SysconfService {
        self.special = Some(hook);
        self
    }

    pub fn reload(&self, settings: Settings) {
        self.settings.store(Arc::new(settings));
    }

    /// The whole category as the cache holds it.
    ///
    /// # Errors
    /// `NotReady` before the mirror is warm, `NotFound` for an unknown category.
    pub fn document(&self, category: &str) -> Result<Arc<CacheEntry>> {
        validate_category(category)?;
        if !self.mirror.is_loaded() {
            return Err(SysconfError::NotReady);
        }
        self.mirror
            .get(&doc_id(Domain::Sysconf, category))
            .ok_or(SysconfError::NotFound)
    }

    /// Kazoo's get: node → zone → `default` → the given default, written back.
    ///
    /// # Errors
    /// `NotFound` when the key is nowhere and no default is given.
    pub async fn get(
        &self,
        category: &str,
        key: &[String],
        node: Option<&str>,
        default: Option<Value>,
    ) -> Result<Answer> {
        validate_category(category)?;
        validate_key(key)?;
        if !self.mirror.is_loaded() {
            return Err(SysconfError::NotReady);
        }
        let settings = self.settings.load();
        let node = node.unwrap_or(&settings.node);
        if let Some((value, section)) = self
            .special
            .as_ref()
            .and_then(|hook| hook(category, key, node))
        {
            return Ok(answer(category, key, value, &section));
        }
        let tree = self
            .mirror
            .get(&doc_id(Domain::Sysconf, category))
            .map(|entry| self.mirror.tree(&entry));
        if let Some(tree) = &tree
            && let Some(found) = model::lookup(tree, key, node, &settings.zone)
        {
            return Ok(answer(category, key, found.value.clone(), found.section));
        }
        let Some(default) = default else {
            return Err(SysconfError::NotFound);
        };
        self.write_default(category, key, node, default).await
    }

    /// Kazoo's set: under `node` when node-specific, else under `default`;
    /// `null` deletes.
    ///
    /// # Errors
    /// `BadRequest` for node-specific without a node or a path through a
    /// non-object; `Conflict` when 409s outlast the attempts.
    pub async fn set(
        &self,
        category: &str,
        key: &[String],
        value: Value,
        node_specific: bool,
        node: Option<&str>,
    ) -> Result<Answer> {
        validate_category(category)?;
        validate_key(key)?;
        let section = match (node_specific, node) {
            (true, Some(node)) if !node.is_empty() => node.to_string(),
            (true, _) => {
                return Err(SysconfError::BadRequest(
                    "node_specific is true but no node is given".into(),
                ));
            }
            (false, _) => DEFAULT_SECTION.to_string(),
        };
        let target = (!value.is_null()).then_some(&value);
        self.modify(
            category,
            |doc| {
                model::write_path(doc, &section, key, target).map(|changed| changed.then_some(()))
            },
            || target.map(|v| model::new_category(category, &section, key, v)),
        )
        .await?;
        self.await_visible(category, |content| {
            match model::get_path(content.get(&section).unwrap_or(&Value::Null), key) {
                Some(current) => Some(current) == target,
                None => target.is_none(),
            }
        })
        .await;
        Ok(answer(category, key, value, &section))
    }

    /// Re-reads the category from CouchDB into the cache and the mirror.
    ///
    /// # Errors
    /// CouchDB cannot be read.
    pub async fn flush(&self, category: &str) -> Result<()> {
        validate_category(category)?;
        let wait = self.settings.load().write_wait;
        match &self.engine {
            Some(engine) => {
                let (rev, body) = self.current(category).await?;
                engine.refresh(SOURCE, category, rev, body, wait).await;
            }
            None => {
                let id = doc_id(Domain::Sysconf, category);
                let rows = self.cache.all_docs(std::slice::from_ref(&id), true).await?;
                for row in rows {
                    match (row.value, row.doc) {
                        (Some(value), _) if value.deleted => {
                            self.mirror.apply_written(Update::Deleted {
                                id: row.key,
                                rev: value.rev,
                            });
                        }
                        (Some(_), Some(doc)) => {
                            let bytes = serde_json::to_vec(&doc).map_or(0, |b| b.len());
                            if let Ok(entry) = CacheEntry::from_doc(&doc, bytes) {
                                self.mirror.apply_written(Update::Live(entry));
                            }
                        }
                        _ => self.mirror.apply_written(Update::Deleted {
                            id: row.key,
                            rev: "0-".into(),
                        }),
                    }
                }
            }
        }
        Ok(())
    }

    /// The document's current winning revision and body (`None` if gone).
    async fn current(&self, category: &str) -> Result<(String, Option<Body>)> {
        if let Some(doc) = self.source.get(category).await? {
            let rev = doc
                .get("_rev")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            return Ok((rev, Some(Body::of(&doc))));
        }
        let rows = self.source.all_docs(&[category.to_string()], false).await?;
        let rev = rows
            .into_iter()
            .find_map(|r| r.value)
            .map(|v| v.rev)
            .unwrap_or_default();
        Ok((rev, None))
    }

    async fn write_default(
        &self,
        category: &str,
        key: &[String],
        node: &str,
        default: Value,
    ) -> Result<Answer> {
        let zone = self.settings.load().zone.clone();
        let mut found_instead: Option<Answer> = None;
        self.modify(
            category,
            |doc| {
                // The mirror may lag: the freshly read document decides.
                let (content, _) = model::category_content(doc, category);
                if let Some(found) = model::lookup(&content, key, node, &zone) {
                    found_instead = Some(answer(category, key, found.value.clone(), found.section));
                    return Ok(None);
                }
                model::write_path(doc, DEFAULT_SECTION, key, Some(&default))
                    .map(|changed| changed.then_some(()))
            },
            || {
                Some(model::new_category(
                    category,
                    DEFAULT_SECTION,
                    key,
                    &default,
                ))
            },
        )
        .await?;
        if let Some(found) = found_instead {
            return Ok(found);
        }
        self.await_visible(category, |content| {
            model::get_path(content.get(DEFAULT_SECTION).unwrap_or(&Value::Null), key)
                == Some(&default)
        })
        .await;
        Ok(answer(category, key, default, DEFAULT_SECTION))
    }

    /// A read-modify-write of one category document, retried on 409.
    /// `change` edits an existing document (returning `None` when nothing
    /// changed); `create` makes a new one (`None`: nothing to create).
    async fn modify(
        &self,
        category: &str,
        mut change: impl FnMut(&mut Value) -> Result<Option<()>, WriteError>,
        create: impl Fn() -> Option<Value>,
    ) -> Result<()> {
        let attempts = self.settings.load().write_attempts;
        // Writers that lost a race retry after a jittered, growing pause:
        // retrying at once, in step, makes the same writers collide again.
        let mut pause = crate::couch::retry::Backoff::new(
            std::time::Duration::from_millis(2),
            std::time::Duration::from_millis(100),
        );
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(pause.next_delay(ErrorKind::Conflict)).await;
            }
            let doc = match self.source.get(category).await? {
                Some(mut doc) => {
                    match change(&mut doc).map_err(|e| SysconfError::Conflict(e.to_string()))? {
                        Some(()) => doc,
                        None => return Ok(()),
                    }
                }
                None => match create() {
                    Some(doc) => doc,
                    None => return Ok(()),
                },
            };
            match self.source.put(&doc).await {
                Ok(rev) => {
                    self.hand_to_engine(category, rev, doc).await;
                    return Ok(());
                }
                Err(err) if err.is(ErrorKind::Conflict) => continue,
                Err(err) if err.is(ErrorKind::NotFound) => {
                    // The database itself is missing: create it, as Kazoo does.
                    self.source.create().await?;
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(SysconfError::Conflict(format!(
            "{category} kept changing; gave up after {attempts} attempts"
        )))
    }

    async fn hand_to_engine(&self, category: &str, rev: String, mut doc: Value) {
        if let Some(engine) = &self.engine {
            doc["_rev"] = Value::String(rev.clone());
            let wait = self.settings.load().write_wait;
            engine
                .refresh(SOURCE, category, rev, Some(Body::of(&doc)), wait)
                .await;
        }
    }

    /// Waits (up to `write_wait`) until the mirror's copy satisfies `done`.
    async fn await_visible(&self, category: &str, done: impl Fn(&Value) -> bool) {
        let id = doc_id(Domain::Sysconf, category);
        let wait = self.settings.load().write_wait;
        let check = || {
            self.mirror.get(&id).is_some_and(|e| {
                let content = e.content.value();
                content.is_object() && done(&content)
            })
        };
        let waiting = async {
            loop {
                let changed = self.mirror.changed();
                if check() {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(wait, waiting).await.is_err() {
            tracing::warn!(
                category,
                ?wait,
                "a sysconf write is stored but not yet visible in the cache"
            );
        }
    }
}

fn answer(category: &str, key: &[String], value: Value, section: &str) -> Answer {
    let key = match key {
        [single] => Value::String(single.clone()),
        path => Value::Array(path.iter().cloned().map(Value::String).collect()),
    };
    Answer {
        category: category.to_string(),
        key,
        value,
        section: section.to_string(),
    }
}

/// Category names become document ids: `_design/…` and `_local/…` must not.
fn validate_category(category: &str) -> Result<()> {
    if category.is_empty() {
        return Err(SysconfError::BadRequest("the category is empty".into()));
    }
    if category.starts_with('_') {
        return Err(SysconfError::BadRequest(format!(
            "category {category:?} starts with '_', which CouchDB reserves"
        )));
    }
    if category.len() > 512 {
        return Err(SysconfError::BadRequest(
            "the category is longer than 512 bytes".into(),
        ));
    }
    Ok(())
}

fn validate_key(key: &[String]) -> Result<()> {
    if key.is_empty() || key.iter().any(String::is_empty) {
        return Err(SysconfError::BadRequest(
            "the key is empty or has an empty path segment".into(),
        ));
    }
    if key.len() > 32 {
        return Err(SysconfError::BadRequest(
            "the key path is deeper than 32 levels".into(),
        ));
    }
    Ok(())
}
