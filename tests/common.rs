//! What several tests share: a per-test environment (unique databases on
//! the shared server), the expected sysconf answers computed from the
//! source documents, and the two central checks — the cache equals the
//! sources, and the cache equals a from-scratch build.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::couch::{Cleanup, Couch, DbNames};
use crate::support::daemon::{Daemon, DaemonConfig};
use crate::support::eventually;

/// Fields CouchDB manages, which are not part of a category's content.
pub const COUCH_FIELDS: [&str; 5] = [
    "_rev",
    "_conflicts",
    "_attachments",
    "_revisions",
    "_deleted_conflicts",
];

/// One test's databases on the shared server (deleted when it passes).
pub struct TestEnv {
    pub couch: Couch,
    pub names: DbNames,
    _cleanup: Cleanup,
}

impl TestEnv {
    /// Unique names; the `system_config` database is created.
    pub async fn new() -> TestEnv {
        TestEnv::on(Couch::shared()).await
    }

    /// Unique names on the server `couch` talks to.
    pub async fn on(couch: Couch) -> TestEnv {
        let names = DbNames::unique();
        couch.create_db(&names.system_config).await;
        let cleanup = Cleanup::new(&couch, &names);
        TestEnv {
            couch,
            names,
            _cleanup: cleanup,
        }
    }

    /// A daemon configuration for these databases.
    pub fn config(&self, node: &str) -> DaemonConfig {
        DaemonConfig::new(self.couch.url(), &self.names, node)
    }

    pub fn sysconf_db(&self) -> &str {
        &self.names.system_config
    }
}

/// The cache document id of a category.
pub fn cache_id(category: &str) -> String {
    format!("sysconf:{category}")
}

/// What the cache holds for a source document: the document without
/// CouchDB's own fields.
pub fn expected_content(doc: &Value) -> Value {
    let mut content = doc.clone();
    if let Some(object) = content.as_object_mut() {
        for field in COUCH_FIELDS {
            object.remove(field);
        }
    }
    content
}

/// The hash a cache document must carry: sha256 of the canonical JSON of
/// content, errors and staleness (serde_json sorts keys).
pub fn expected_hash(content: &Value, errors: &Value, stale: bool) -> String {
    let canonical = json!({ "content": content, "errors": errors, "stale": stale });
    let bytes = serde_json::to_vec(&canonical).expect("JSON serializes");
    format!("sha256-{:x}", Sha256::digest(&bytes))
}

/// The value at `key` inside `value`, every step an object.
pub fn get_path<'a>(value: &'a Value, key: &[String]) -> Option<&'a Value> {
    key.iter()
        .try_fold(value, |current, name| current.as_object()?.get(name))
}

/// Kazoo's lookup, written independently of the daemon's: the node's
/// section, then the zone's, then `default`; the first section holding the
/// key wins with its whole value, an explicit `null` included. Asking for
/// node `default` searches `default` only.
pub fn lookup(content: &Value, key: &[String], node: &str, zone: &str) -> Option<(Value, String)> {
    let order: Vec<&str> = if node == "default" {
        vec!["default"]
    } else {
        let mut order = vec![node];
        for section in [zone, "default"] {
            if !order.contains(&section) {
                order.push(section);
            }
        }
        order
    };
    order.into_iter().find_map(|section| {
        let value = get_path(content.get(section)?, key)?;
        Some((value.clone(), section.to_string()))
    })
}

/// The cache database's documents (design documents left out), by id.
pub async fn cache_docs(couch: &Couch, cache_db: &str) -> BTreeMap<String, Value> {
    couch.docs_by_id(cache_db).await
}

/// What the sysconf part of the cache must be: `sysconf:<id>` → content,
/// for every source document.
pub async fn expected_cache(couch: &Couch, sysconf_db: &str) -> BTreeMap<String, Value> {
    couch
        .docs_by_id(sysconf_db)
        .await
        .iter()
        .map(|(id, doc)| (cache_id(id), expected_content(doc)))
        .collect()
}

/// Differences between the sysconf cache documents and the expectation;
/// every cache document must also be well formed (clean, not stale, with a
/// correct hash).
pub fn cache_differences(
    expected: &BTreeMap<String, Value>,
    cache: &BTreeMap<String, Value>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let sysconf: BTreeMap<&String, &Value> = cache
        .iter()
        .filter(|(id, _)| id.starts_with("sysconf:"))
        .collect();
    for (id, content) in expected {
        match sysconf.get(id) {
            None => problems.push(format!("{id}: missing from the cache")),
            Some(doc) => {
                if &doc["content"] != content {
                    problems.push(format!(
                        "{id}: cache content {} != source {}",
                        doc["content"], content
                    ));
                }
                if doc["errors"] != json!([]) || doc["stale"] != json!(false) {
                    problems.push(format!(
                        "{id}: unexpected errors {} / stale {}",
                        doc["errors"], doc["stale"]
                    ));
                }
                let hash = expected_hash(&doc["content"], &doc["errors"], false);
                if doc["hash"] != json!(hash) {
                    problems.push(format!("{id}: hash {} != {hash}", doc["hash"]));
                }
            }
        }
    }
    for id in sysconf.keys() {
        if !expected.contains_key(*id) {
            problems.push(format!("{id}: in the cache, but its source is gone"));
        }
    }
    problems
}

/// Waits until the cache database holds exactly the sysconf outputs of the
/// current source documents (property 2a).
pub async fn wait_cache_equals_sources(couch: &Couch, names: &DbNames, timeout: Duration) {
    eventually("the cache equals the sources", timeout, async || {
        let expected = expected_cache(couch, &names.system_config).await;
        let cache = cache_docs(couch, &names.cache).await;
        let problems = cache_differences(&expected, &cache);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} problem(s), first ones:\n{}",
                problems.len(),
                problems
                    .iter()
                    .take(8)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            ))
        }
    })
    .await;
}

/// `id → (hash, content)` of every cache document.
fn hashes(cache: &BTreeMap<String, Value>) -> BTreeMap<String, (Value, Value)> {
    cache
        .iter()
        .map(|(id, doc)| (id.clone(), (doc["hash"].clone(), doc["content"].clone())))
        .collect()
}

/// Property 2b: a fresh daemon on the same sources with a new, empty cache
/// database produces the same cache documents (same hash and content for
/// every key) as the one under test has.
pub async fn assert_equals_from_scratch(couch: &Couch, config: &DaemonConfig, tag: &str) {
    let mut scratch = wait_equals_from_scratch(couch, config, tag, Duration::ZERO).await;
    stop_cleanly(&mut scratch).await;
}

/// Starts a fresh daemon like `config` on the same sources with a new,
/// empty cache database (`<prefix>_cache_<tag>`) and waits up to `timeout`
/// (for answers that arrive on their own time, DNS) until both caches hold
/// the same documents (hash and content for every id); panics with the
/// differences otherwise. Returns the from-scratch daemon, still running.
pub async fn wait_equals_from_scratch(
    couch: &Couch,
    config: &DaemonConfig,
    tag: &str,
    timeout: Duration,
) -> Daemon {
    let names = names_of(config);
    let scratch_names = names.with_cache(tag);
    let mut scratch_config = config.clone();
    scratch_config.set_databases(&scratch_names);
    scratch_config.set("build.enabled", true);
    // Another node name, so its checkpoint does not replace the other's.
    let node = format!("{}-{tag}", config.node());
    scratch_config.set("node", node.as_str());
    scratch_config.label = node;
    let scratch = Daemon::start_ready(&scratch_config).await;
    let what = "the cache equals a from-scratch build";
    eventually(what, timeout, async || {
        let incremental = hashes(&cache_docs(couch, &names.cache).await);
        let from_scratch = hashes(&cache_docs(couch, &scratch_names.cache).await);
        differences(&incremental, &from_scratch)
    })
    .await;
    scratch
}

/// The ids whose (hash, content) differ between two caches, described.
fn differences(
    a: &BTreeMap<String, (Value, Value)>,
    b: &BTreeMap<String, (Value, Value)>,
) -> Result<(), String> {
    if a == b {
        return Ok(());
    }
    let ids: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let diff: Vec<String> = ids
        .into_iter()
        .filter(|id| a.get(*id) != b.get(*id))
        .map(|id| {
            format!(
                "{id}:\n  incremental  {:?}\n  from scratch {:?}",
                a.get(id),
                b.get(id)
            )
        })
        .collect();
    Err(format!(
        "the cache differs from a from-scratch build in {} document(s):\n{}",
        diff.len(),
        diff.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    ))
}

/// The database names a daemon configuration uses.
pub fn names_of(config: &DaemonConfig) -> DbNames {
    let name = |key: &str| {
        config
            .get(&format!("databases.{key}"))
            .and_then(toml::Value::as_str)
            .unwrap_or_else(|| panic!("databases.{key} is not set"))
            .to_string()
    };
    let system_config = name("system_config");
    let prefix = system_config
        .strip_suffix("_system_config")
        .expect("test database names end in _system_config")
        .to_string();
    DbNames {
        prefix,
        system_config,
        cache: name("cache"),
    }
}

/// Checks every sysconf answer for the given (category, key, node) triples
/// against `lookup` on `sources` (id → source document).
pub async fn check_answers(
    daemon: &Daemon,
    sources: &BTreeMap<String, Value>,
    triples: &[(String, Vec<String>, Option<String>)],
) -> Result<(), String> {
    let zone = daemon.config.zone();
    let own_node = daemon.config.node();
    for (category, key, node) in triples {
        let keys: Vec<&str> = key.iter().map(String::as_str).collect();
        let reply = daemon.sysconf_get(category, &keys, node.as_deref()).await;
        let expected = sources.get(category).and_then(|doc| {
            lookup(
                &expected_content(doc),
                key,
                node.as_deref().unwrap_or(&own_node),
                &zone,
            )
        });
        let what = format!("GET {category}/{} node={node:?}", key.join("/"));
        match expected {
            Some((value, section)) => {
                if reply.status != 200
                    || reply.json["value"] != value
                    || reply.json["section"] != json!(section)
                {
                    return Err(format!(
                        "{what}: expected {value} from {section}, got {} {}",
                        reply.status, reply.text
                    ));
                }
            }
            None => {
                if reply.status != 404 || reply.json["error"] != "not_found" {
                    return Err(format!(
                        "{what}: expected 404 not_found, got {} {}",
                        reply.status, reply.text
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Every key path (top level and nested) present in any section of a
/// document.
pub fn key_paths(doc: &Value) -> Vec<Vec<String>> {
    fn walk(value: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if let Some(object) = value.as_object() {
            for (name, child) in object {
                prefix.push(name.clone());
                out.push(prefix.clone());
                if prefix.len() < 4 {
                    walk(child, prefix, out);
                }
                prefix.pop();
            }
        }
    }
    let mut out = Vec::new();
    if let Some(object) = doc.as_object() {
        for (section, value) in object {
            if section.starts_with('_') || section.starts_with("pvt_") {
                continue;
            }
            walk(value, &mut Vec::new(), &mut out);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Stops a daemon with SIGTERM and asserts a clean exit.
pub async fn stop_cleanly(daemon: &mut Daemon) {
    daemon.sigterm();
    let status = daemon.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "[{}] exited with {status} after SIGTERM:\n{}",
        daemon.config.label,
        daemon.log_tail(40)
    );
}
