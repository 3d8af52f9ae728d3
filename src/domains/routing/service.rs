//! The IO shell of routing: lookups for the HTTP API, served from tables
//! composed from the mirror (never from CouchDB), and `caldera route`,
//! which builds the one table it needs straight from CouchDB.
//!
//! A table is composed from two cache documents: its ruleset's and its
//! domain's gateway directory. It is cached by ruleset document id with the
//! `hash` of both. A new ruleset document is a new table (fresh round-robin
//! state, as decision 12 asks); a new directory re-resolves only the
//! entries that reach what changed, and keeps the table — round-robin state
//! included — when none resolves differently. Composing happens on the
//! first lookup after a change, one request per table at a time (the
//! others wait for it rather than compose the same table again).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{Value, json};

use super::compose::{self, Directory, Skeleton};
use super::model::{self, PROVISIONING, directory_key};
use super::table::Table;
use super::{RoutingBuilder, ruleset_database};
use crate::cache::mirror::Mirror;
use crate::cache::{CacheEntry, content_hash, doc_id};
use crate::couch::Client;
use crate::domains::{Builder, Built, Domain, Issue};
use crate::feeds::load_database;
use crate::rebuild::index::{Index, Keyer, Reads, SourceDoc, SourceId};

/// Why a lookup has no answer.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("the cache is not loaded yet")]
    NotReady,
    #[error("{0:?} is not 1-64 characters of [0-9A-Za-z+#*_-]")]
    InvalidNumber(String),
    #[error("no ruleset {0}")]
    UnknownRuleset(String),
    #[error("no rule of ruleset {ruleset} matches {number}")]
    NoRoute { ruleset: String, number: String },
    #[error("the routing table cannot be read: {0}")]
    Broken(String),
    #[error("CouchDB: {0}")]
    Unavailable(String),
}

impl From<crate::couch::Error> for RouteError {
    fn from(err: crate::couch::Error) -> RouteError {
        RouteError::Unavailable(err.to_string())
    }
}

/// A composed table and what it was composed from.
struct Compiled {
    ruleset_hash: String,
    /// `None`: the domain has no directory (no gateways).
    directory_hash: Option<String>,
    skeleton: Arc<Skeleton>,
    directory: Arc<Directory>,
    table: Arc<Table>,
}

impl Compiled {
    fn is_current(&self, ruleset: &CacheEntry, directory: Option<&CacheEntry>) -> bool {
        self.ruleset_hash == ruleset.hash
            && self.directory_hash.as_deref() == directory.map(|d| d.hash.as_str())
    }
}

/// Lookups on the mirror.
pub struct RoutingService {
    mirror: Arc<Mirror>,
    tables: RwLock<HashMap<String, Arc<Compiled>>>,
    /// Parsed directories by domain, with the hash they were parsed from.
    directories: Mutex<HashMap<String, (String, Arc<Directory>)>>,
    /// One lock per table: one request composes it, the others wait.
    composing: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl RoutingService {
    pub fn new(mirror: Arc<Mirror>) -> RoutingService {
        RoutingService {
            mirror,
            tables: RwLock::default(),
            directories: Mutex::default(),
            composing: Mutex::default(),
        }
    }

    /// The route of `number` in ruleset `{sdn}:{groupid}`, asked by `host`.
    ///
    /// # Errors
    /// A bad number, an unknown ruleset, no matching rule, or no cache yet.
    pub fn lookup(
        &self,
        sdn: &str,
        groupid: &str,
        number: &str,
        host: Option<&str>,
    ) -> Result<Value, RouteError> {
        if !model::valid_number(number) {
            return Err(RouteError::InvalidNumber(number.to_string()));
        }
        let table = self.table(sdn, groupid)?;
        table
            .lookup(number, host)
            .ok_or_else(|| RouteError::NoRoute {
                ruleset: format!("{sdn}:{groupid}"),
                number: number.to_string(),
            })
    }

    /// `lookup`'s answer with, per gateway, where each attribute came
    /// from (`explain`; the console's route tester). Like any lookup it
    /// takes its turn in the weighted round-robin.
    ///
    /// # Errors
    /// As `lookup`.
    pub fn lookup_explained(
        &self,
        sdn: &str,
        groupid: &str,
        number: &str,
        host: Option<&str>,
    ) -> Result<Value, RouteError> {
        let answer = self.lookup(sdn, groupid, number, host)?;
        let ruleset = self
            .mirror
            .get(&doc_id(Domain::Routing, &format!("{sdn}:{groupid}")))
            .map(|e| e.content.value().into_owned())
            .unwrap_or(Value::Null);
        let directory = self
            .directory_entry(sdn)
            .map(|e| e.content.value().into_owned())
            .unwrap_or(Value::Null);
        Ok(super::explain::explain(answer, &ruleset, &directory))
    }

    /// `lookup`'s answer as JSON text, written without building a JSON
    /// tree (what the HTTP API sends).
    ///
    /// # Errors
    /// As `lookup`.
    pub fn lookup_text(
        &self,
        sdn: &str,
        groupid: &str,
        number: &str,
        host: Option<&str>,
    ) -> Result<String, RouteError> {
        if !model::valid_number(number) {
            return Err(RouteError::InvalidNumber(number.to_string()));
        }
        let table = self.table(sdn, groupid)?;
        table
            .lookup_text(number, host)
            .ok_or_else(|| RouteError::NoRoute {
                ruleset: format!("{sdn}:{groupid}"),
                number: number.to_string(),
            })
    }

    /// The whole table, for export, with the errors of the two documents
    /// it is composed from (the directory's only where they concern a
    /// gateway or carrier the table reaches). `hash` changes whenever the
    /// table does: it digests both documents' hashes.
    ///
    /// # Errors
    /// An unknown ruleset, or no cache yet.
    pub fn export(&self, sdn: &str, groupid: &str) -> Result<Value, RouteError> {
        let compiled = self.compiled(sdn, groupid)?;
        let mut export = compiled.table.export();
        let ruleset = self
            .mirror
            .get(&doc_id(Domain::Routing, &format!("{sdn}:{groupid}")));
        let directory = self.directory_entry(sdn);
        let Some(ruleset) = ruleset else {
            return Ok(export);
        };
        let mut errors = ruleset.errors.as_array().cloned().unwrap_or_default();
        let mut stale = ruleset.stale;
        let mut hash = ruleset.hash.clone();
        if let Some(directory) = &directory {
            let used = compiled.skeleton.used_docs(&compiled.directory);
            let concerns = |e: &&Value| e["doc"].as_str().is_some_and(|d| used.contains(d));
            errors.extend(
                directory
                    .errors
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(concerns)
                    .cloned(),
            );
            stale |= directory.stale;
            hash = content_hash(&json!([ruleset.hash, directory.hash]), &json!([]), false);
        }
        export["errors"] = Value::Array(errors);
        export["stale"] = json!(stale);
        export["hash"] = json!(hash);
        Ok(export)
    }

    /// The table of a ruleset.
    fn table(&self, sdn: &str, groupid: &str) -> Result<Arc<Table>, RouteError> {
        Ok(self.compiled(sdn, groupid)?.table.clone())
    }

    fn directory_entry(&self, sdn: &str) -> Option<Arc<CacheEntry>> {
        let key = directory_key(sdn)?;
        self.mirror.get(&doc_id(Domain::Routing, &key))
    }

    /// The composed table of a ruleset, composed again when one of its two
    /// documents changed.
    fn compiled(&self, sdn: &str, groupid: &str) -> Result<Arc<Compiled>, RouteError> {
        if !self.mirror.is_loaded() {
            return Err(RouteError::NotReady);
        }
        let id = doc_id(Domain::Routing, &format!("{sdn}:{groupid}"));
        let Some(entry) = self.mirror.get(&id) else {
            self.write().remove(&id);
            lock(&self.composing).remove(&id);
            return Err(RouteError::UnknownRuleset(format!("{sdn}:{groupid}")));
        };
        let directory = self.directory_entry(sdn);
        if let Some(compiled) = self.read().get(&id)
            && compiled.is_current(&entry, directory.as_deref())
        {
            return Ok(compiled.clone());
        }
        let gate = lock(&self.composing).entry(id.clone()).or_default().clone();
        let _composing = lock(&gate);
        let previous = self.read().get(&id).cloned();
        if let Some(compiled) = &previous
            && compiled.is_current(&entry, directory.as_deref())
        {
            return Ok(compiled.clone());
        }
        let compiled = Arc::new(self.compose(sdn, &entry, directory.as_deref(), previous)?);
        self.write().insert(id, compiled.clone());
        Ok(compiled)
    }

    /// Composes a table: from scratch when its ruleset document changed,
    /// else by recomposing the previous table under the new directory.
    fn compose(
        &self,
        sdn: &str,
        ruleset: &CacheEntry,
        directory_entry: Option<&CacheEntry>,
        previous: Option<Arc<Compiled>>,
    ) -> Result<Compiled, RouteError> {
        let directory = self.directory(sdn, directory_entry)?;
        let (skeleton, table) = match previous {
            Some(previous) if previous.ruleset_hash == ruleset.hash => {
                let table = compose::recompose(
                    &previous.skeleton,
                    &previous.table,
                    &previous.directory,
                    &directory,
                )
                .map_or_else(|| previous.table.clone(), Arc::new);
                (previous.skeleton.clone(), table)
            }
            _ => {
                let skeleton = Arc::new(
                    Skeleton::compile(&ruleset.content.value()).map_err(RouteError::Broken)?,
                );
                let table = Arc::new(compose::compose(&skeleton, &directory));
                (skeleton, table)
            }
        };
        Ok(Compiled {
            ruleset_hash: ruleset.hash.clone(),
            directory_hash: directory_entry.map(|d| d.hash.clone()),
            skeleton,
            directory,
            table,
        })
    }

    /// A domain's directory, parsed once per version.
    fn directory(
        &self,
        sdn: &str,
        entry: Option<&CacheEntry>,
    ) -> Result<Arc<Directory>, RouteError> {
        let mut directories = lock(&self.directories);
        let Some(entry) = entry else {
            directories.remove(sdn);
            return Ok(Arc::default());
        };
        if let Some((hash, directory)) = directories.get(sdn)
            && *hash == entry.hash
        {
            return Ok(directory.clone());
        }
        let directory =
            Arc::new(Directory::compile(&entry.content.value()).map_err(RouteError::Broken)?);
        directories.insert(sdn.to_string(), (entry.hash.clone(), directory.clone()));
        Ok(directory)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Compiled>>> {
        self.tables
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Compiled>>> {
        self.tables
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An index filing documents the way the engine does for routing.
pub fn routing_index() -> Index {
    let keyer: Keyer =
        Arc::new(|source: &str, doc: &SourceDoc| RoutingBuilder.view_keys(source, doc));
    Index::with_keyer(keyer)
}

/// Builds the table of ruleset `{sdn}:{groupid}` from `index` (which must
/// hold provisioning and the ruleset's database) and compiles it, with the
/// errors of its two documents that concern it (as `export` gives them).
///
/// # Errors
/// The ruleset does not exist or its document cannot be used.
pub fn build_table(index: &Index, sdn: &str, groupid: &str) -> Result<(Table, Value), RouteError> {
    let (table, issues) = table_with_issues(index, sdn, groupid)?;
    let errors: Vec<Value> = issues
        .iter()
        .map(|i| {
            let db = i
                .source
                .strip_prefix(model::RULESET_DB_PREFIX)
                .unwrap_or(&i.source);
            json!({ "db": db, "doc": i.doc, "reason": i.reason })
        })
        .collect();
    Ok((table, Value::Array(errors)))
}

/// `build_table`'s table with its problems, sorted.
///
/// # Errors
/// As `build_table`.
pub fn table_with_issues(
    index: &Index,
    sdn: &str,
    groupid: &str,
) -> Result<(Table, Vec<Issue>), RouteError> {
    let build = |key: &str| RoutingBuilder.build(key, &mut Reads::new(index));
    let (content, mut issues) = match build(&format!("{sdn}:{groupid}")) {
        Built::Absent => return Err(RouteError::UnknownRuleset(format!("{sdn}:{groupid}"))),
        Built::Failed { issues } => {
            let reasons: Vec<String> = issues.into_iter().map(|i| i.reason).collect();
            return Err(RouteError::Broken(reasons.join("; ")));
        }
        Built::Content { content, issues } => (content, issues),
    };
    let skeleton = Skeleton::compile(&content).map_err(RouteError::Broken)?;
    let mut directory = Directory::default();
    if let Some(Built::Content {
        content,
        issues: found,
    }) = directory_key(sdn).map(|key| build(&key))
    {
        directory = Directory::compile(&content).map_err(RouteError::Broken)?;
        let used: BTreeSet<String> = skeleton.used_docs(&directory);
        issues.extend(
            found
                .into_iter()
                .filter(|i| i.doc.as_ref().is_some_and(|d| used.contains(d))),
        );
    }
    issues.sort();
    issues.dedup();
    Ok((compose::compose(&skeleton, &directory), issues))
}

/// `caldera route`: loads provisioning and the ruleset's database from
/// CouchDB (no daemon needed), builds the table and answers one lookup.
///
/// # Errors
/// As `RoutingService::lookup`, or CouchDB cannot be read.
pub async fn route_offline(
    client: &Client,
    provisioning: &str,
    sdn: &str,
    groupid: &str,
    number: &str,
    host: Option<&str>,
) -> Result<Value, RouteError> {
    if !model::valid_number(number) {
        return Err(RouteError::InvalidNumber(number.to_string()));
    }
    let mut index = routing_index();
    let docs = load_database(&client.db(provisioning)).await?;
    index.replace(&SourceId::from(PROVISIONING), docs);
    let ruleset = index
        .get(PROVISIONING, &format!("ruleset:{sdn}:{groupid}"))
        .and_then(|doc| doc.json());
    if let Some(database) = ruleset.as_ref().and_then(|r| ruleset_database(r).ok()) {
        let docs = load_database(&client.db(database)).await?;
        index.replace(&SourceId::from(model::ruleset_source(database)), docs);
    }
    let (table, errors) = build_table(&index, sdn, groupid)?;
    let mut answer = table
        .lookup(number, host)
        .ok_or_else(|| RouteError::NoRoute {
            ruleset: format!("{sdn}:{groupid}"),
            number: number.to_string(),
        })?;
    answer["errors"] = errors;
    Ok(answer)
}
