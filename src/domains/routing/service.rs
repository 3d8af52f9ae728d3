//! The IO shell of routing: lookups for the HTTP API, served from tables
//! compiled from the mirror (never from CouchDB), and `caldera route`,
//! which builds the one table it needs straight from CouchDB.
//!
//! Compiled tables are cached by cache document id and replaced when the
//! document's `hash` changes (which also resets that table's round-robin
//! state, as decision 12 asks). Compiling happens on the first lookup after
//! a change.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde_json::{Value, json};

use super::model::{self, PROVISIONING};
use super::table::Table;
use super::{RoutingBuilder, ruleset_database};
use crate::cache::doc_id;
use crate::cache::mirror::Mirror;
use crate::couch::{Client, Db};
use crate::domains::{Builder, Built, Domain};
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

struct Compiled {
    hash: String,
    table: Arc<Table>,
}

/// Lookups on the mirror.
pub struct RoutingService {
    mirror: Arc<Mirror>,
    tables: RwLock<HashMap<String, Arc<Compiled>>>,
}

impl RoutingService {
    pub fn new(mirror: Arc<Mirror>) -> RoutingService {
        RoutingService {
            mirror,
            tables: RwLock::default(),
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

    /// The whole table, for export, with the build's errors.
    ///
    /// # Errors
    /// An unknown ruleset, or no cache yet.
    pub fn export(&self, sdn: &str, groupid: &str) -> Result<Value, RouteError> {
        let table = self.table(sdn, groupid)?;
        let id = doc_id(Domain::Routing, &format!("{sdn}:{groupid}"));
        let mut export = table.export();
        if let Some(entry) = self.mirror.get(&id) {
            export["errors"] = entry.errors.clone();
            export["stale"] = json!(entry.stale);
            export["hash"] = json!(entry.hash);
        }
        Ok(export)
    }

    /// The compiled table of a ruleset, compiling it when its document changed.
    fn table(&self, sdn: &str, groupid: &str) -> Result<Arc<Table>, RouteError> {
        if !self.mirror.is_loaded() {
            return Err(RouteError::NotReady);
        }
        let id = doc_id(Domain::Routing, &format!("{sdn}:{groupid}"));
        let Some(entry) = self.mirror.get(&id) else {
            self.write().remove(&id);
            return Err(RouteError::UnknownRuleset(format!("{sdn}:{groupid}")));
        };
        if let Some(compiled) = self.read().get(&id)
            && compiled.hash == entry.hash
        {
            return Ok(compiled.table.clone());
        }
        let table = Arc::new(Table::compile(&entry.content).map_err(RouteError::Broken)?);
        let mut tables = self.write();
        // Another request may have compiled the same version meanwhile: keep
        // one table, so the round-robin state is not split.
        match tables.get(&id) {
            Some(compiled) if compiled.hash == entry.hash => Ok(compiled.table.clone()),
            _ => {
                let compiled = Compiled {
                    hash: entry.hash.clone(),
                    table: table.clone(),
                };
                tables.insert(id, Arc::new(compiled));
                Ok(table)
            }
        }
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
/// hold provisioning and the ruleset's database) and compiles it.
///
/// # Errors
/// The ruleset does not exist or its document cannot be used.
pub fn build_table(index: &Index, sdn: &str, groupid: &str) -> Result<(Table, Value), RouteError> {
    let mut reads = Reads::new(index);
    match RoutingBuilder.build(&format!("{sdn}:{groupid}"), &mut reads) {
        Built::Absent => Err(RouteError::UnknownRuleset(format!("{sdn}:{groupid}"))),
        Built::Failed { issues } => Err(RouteError::Broken(
            issues
                .into_iter()
                .map(|i| i.reason)
                .collect::<Vec<_>>()
                .join("; "),
        )),
        Built::Content { content, issues } => {
            let table = Table::compile(&content).map_err(RouteError::Broken)?;
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
    }
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
    let docs = load_all(&client.db(provisioning)).await?;
    index.replace(&SourceId::from(PROVISIONING), docs);
    let ruleset = index
        .get(PROVISIONING, &format!("ruleset:{sdn}:{groupid}"))
        .and_then(|doc| doc.json().cloned());
    if let Some(database) = ruleset.as_ref().and_then(|r| ruleset_database(r).ok()) {
        let docs = load_all(&client.db(database)).await?;
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

/// Every document of a database (none when it does not exist), read
/// through `_changes` pages like a follower's initial load.
async fn load_all(db: &Db) -> Result<BTreeMap<String, Arc<SourceDoc>>, RouteError> {
    let mut docs = BTreeMap::new();
    if db.info().await?.is_none() {
        return Ok(docs);
    }
    let mut since = Value::from(0);
    loop {
        let page = db.changes_page(&since, 1_000).await?;
        if page.rows.is_empty() {
            return Ok(docs);
        }
        for row in page.rows {
            if row.id.starts_with("_design/") {
                continue;
            }
            match (row.deleted, row.body) {
                (false, Some(body)) => {
                    let doc = SourceDoc {
                        id: row.id.clone(),
                        rev: row.rev,
                        body,
                    };
                    docs.insert(row.id, Arc::new(doc));
                }
                _ => {
                    docs.remove(&row.id);
                }
            }
        }
        since = page.last_seq;
    }
}
