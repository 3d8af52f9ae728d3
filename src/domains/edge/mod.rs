//! The pull-based edge provisioning store (seed 003, spec `edge-store.md`):
//! config templates with versions, master packages, their assignment to
//! edge classes, the global set log, per-edge tar.gz packages, telemetry.
//!
//! Sources: `edge_config` (templates, immutable versions with the file as
//! an attachment, master packages with their scripts as attachments,
//! links, assignments, edge classes, the set log), `edge_registry` (one
//! document per edge) and the synthetic `edge_blob` (attachment bytes,
//! fetched by `blobs` for the files the manifests name). Outputs, all pure
//! functions of those:
//!
//! * `catalog`: what the management listings show;
//! * `class:<type>:<sub>`: the class manifest (`manifest`), from which
//!   `template_set/latest` deltas are cut per request (`delta`);
//! * `package:<type>:<sub>`: the class's full package when nothing in it
//!   depends on the edge (else a note that packages are built per edge);
//! * `file:<digest>`: the bytes of every file some manifest names, so any
//!   instance can build per-edge packages from its mirror alone;
//! * `edges.NN` / `macs.NN`: the registry by edge id and by MAC (`registry`).
//!
//! Pure core: `model` (documents, rules), `store`, `manifest`, `delta`,
//! `render`, `package`, `catalog`, `registry`, `signing`, `telemetry`. IO
//! shells: `service` (device calls from the mirror, per-edge package
//! cache), `manage` (management writes to CouchDB), `reports` (telemetry
//! in `edge_telemetry`), `blobs` (the attachment fetcher), `couchdb`
//! (id allocation, the set log, start-up set-up).

pub mod blobs;
pub mod catalog;
pub mod couchdb;
pub mod delta;
pub mod manage;
pub mod manifest;
pub mod model;
pub mod package;
pub mod registry;
pub mod render;
pub mod reports;
pub mod service;
pub mod signing;
pub mod store;
pub mod telemetry;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::couch::Body;
use crate::domains::{Builder, Built, Domain, Issue};
use crate::rebuild::index::{Index, Reads, SourceDoc};

use delta::Since;
use manifest::{ClassManifest, Finding};
use model::{Class, EDGE_BLOBS, EDGE_CONFIG, EDGE_REGISTRY, FileRef};
use package::PackageError;
use store::Store;

/// Sources caldera feeds itself (no follower).
pub const SYNTHETIC_SOURCES: [&str; 1] = [EDGE_BLOBS];

/// Followed sources whose databases caldera creates (and seeds) itself at
/// start-up (`couchdb::prepare`): their followers wait for that.
pub const OWNED_SOURCES: [&str; 2] = [EDGE_CONFIG, EDGE_REGISTRY];

pub const CATALOG_KEY: &str = "catalog";

pub fn class_key(class: &Class) -> String {
    format!("class:{}", class.key())
}

pub fn package_key(class: &Class) -> String {
    format!("package:{}", class.key())
}

pub fn file_key(digest_key: &str) -> String {
    format!("file:{digest_key}")
}

/// Builds every edge output.
pub struct EdgeBuilder;

/// Every document parsed, with its id (documents are kept as text).
fn parsed<'a>(docs: &[&'a Arc<SourceDoc>]) -> Vec<(&'a str, Result<Value, &'a str>)> {
    docs.iter()
        .map(|doc| {
            let body = match &doc.body {
                Body::Json(text) => Ok(text.parse()),
                Body::Malformed(reason) => Err(reason.as_str()),
            };
            (doc.id.as_str(), body)
        })
        .collect()
}

/// `parsed`'s entries as the pure core takes them.
fn borrowed<'a>(
    parsed: &'a [(&'a str, Result<Value, &'a str>)],
) -> impl Iterator<Item = (&'a str, Result<&'a Value, &'a str>)> {
    parsed
        .iter()
        .map(|(id, body)| (*id, body.as_ref().map_err(|why| *why)))
}

/// The last `Store` parsed, by a fingerprint of every (id, rev) it was
/// parsed from. About twenty outputs read the whole of `edge_config`, and
/// parsing it is most of their build time (50 ms at 20k documents): they
/// share one parse per state. The memo cannot change a result — the same
/// documents give the same store — so the builders stay pure functions.
static STORE_MEMO: std::sync::Mutex<Option<(u64, Arc<Store>)>> = std::sync::Mutex::new(None);

/// The typed `edge_config`; the read makes the output depend on all of it.
fn load_store(reads: &mut Reads<'_>) -> Arc<Store> {
    use std::hash::{Hash, Hasher};
    let docs: Vec<&Arc<SourceDoc>> = reads.all(EDGE_CONFIG).collect();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for doc in &docs {
        doc.id.hash(&mut hasher);
        doc.rev.hash(&mut hasher);
    }
    let fingerprint = hasher.finish();
    let memo = || {
        STORE_MEMO
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if let Some((seen, store)) = memo().as_ref()
        && *seen == fingerprint
    {
        return store.clone();
    }
    let parsed = parsed(&docs);
    let store = Arc::new(Store::from_docs(borrowed(&parsed)));
    *memo() = Some((fingerprint, store.clone()));
    store
}

fn issues(source: &str, findings: Vec<Finding>) -> Vec<Issue> {
    findings
        .into_iter()
        .map(|f| Issue {
            source: source.into(),
            doc: f.doc,
            reason: f.reason,
        })
        .collect()
}

/// The manifest's identity: sha256 of its canonical JSON.
pub fn manifest_digest(manifest: &ClassManifest) -> String {
    let json = serde_json::to_vec(&serde_json::to_value(manifest).expect("manifests serialize"))
        .expect("JSON values serialize");
    model::sha256_hex(&json)
}

/// The bytes of a blob document (`{"data": base64, ...}`).
pub fn blob_bytes(doc: &Value) -> Option<Vec<u8>> {
    STANDARD.decode(doc.get("data")?.as_str()?).ok()
}

/// The class a document makes exist: its own (`edge_class:<type>:<sub>`),
/// or the one an assignment names (`mp_assign:<master>:<type>:<sub>`; see
/// `manifest::class_manifest`).
fn class_of_doc_id(id: &str) -> Option<Class> {
    if let Some(key) = id.strip_prefix("edge_class:") {
        return Class::from_key(key);
    }
    let (_master, key) = id.strip_prefix("mp_assign:")?.split_once(':')?;
    Class::from_key(key)
}

impl Builder for EdgeBuilder {
    fn domain(&self) -> Domain {
        Domain::Edge
    }

    fn sources(&self) -> &'static [&'static str] {
        &[EDGE_CONFIG, EDGE_REGISTRY, EDGE_BLOBS]
    }

    fn roots(&self, source: &str, id: &str, doc: Option<&SourceDoc>) -> Vec<String> {
        match source {
            EDGE_CONFIG => class_of_doc_id(id)
                .map(|c| vec![class_key(&c), package_key(&c)])
                .unwrap_or_default(),
            EDGE_REGISTRY => doc
                .map(|d| registry::output_keys(id, d.json().as_ref()))
                .unwrap_or_default(),
            EDGE_BLOBS if doc.is_some() => vec![file_key(id)],
            _ => Vec::new(),
        }
    }

    fn all_keys(&self, index: &Index) -> Vec<String> {
        let mut keys = vec![CATALOG_KEY.to_string()];
        for doc in index.docs(EDGE_CONFIG) {
            keys.extend(self.roots(EDGE_CONFIG, &doc.id, Some(doc)));
        }
        for source in [EDGE_REGISTRY, EDGE_BLOBS] {
            for doc in index.docs(source) {
                keys.extend(self.roots(source, &doc.id, Some(doc)));
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    fn build(&self, key: &str, reads: &mut Reads<'_>) -> Built {
        if key == CATALOG_KEY {
            let (content, findings) = catalog::catalog(&load_store(reads));
            return Built::Content {
                content,
                issues: issues(EDGE_CONFIG, findings),
            };
        }
        if let Some(class) = key.strip_prefix("class:").and_then(Class::from_key) {
            return build_class(&class, reads);
        }
        if let Some(class) = key.strip_prefix("package:").and_then(Class::from_key) {
            return build_class_package(&class, reads);
        }
        if let Some(id) = key.strip_prefix("file:") {
            return build_file(id, reads);
        }
        if let Some((kind, shard)) = registry::parse_shard_key(key) {
            return build_shard(kind, shard, reads);
        }
        Built::Absent
    }

    fn view_keys(&self, source: &str, doc: &SourceDoc) -> Vec<String> {
        if source == EDGE_REGISTRY {
            registry::view_keys(&doc.id, doc.json().as_ref())
        } else {
            Vec::new()
        }
    }
}

fn build_class(class: &Class, reads: &mut Reads<'_>) -> Built {
    let store = load_store(reads);
    let Some((manifest, findings)) = manifest::class_manifest(&store, class) else {
        return Built::Absent;
    };
    let mut content = serde_json::to_value(&manifest).expect("manifests serialize");
    content["digest"] = json!(manifest_digest(&manifest));
    Built::Content {
        content,
        issues: issues(EDGE_CONFIG, findings),
    }
}

/// The files a manifest names, as far as the blob source has them.
fn manifest_files(manifest: &ClassManifest, reads: &mut Reads<'_>) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for file in manifest.file_refs() {
        let key = file.key();
        if files.contains_key(&key) {
            continue;
        }
        if let Some(bytes) = reads
            .get(EDGE_BLOBS, &key)
            .and_then(|d| d.json())
            .and_then(|json| blob_bytes(&json))
        {
            files.insert(key, bytes);
        }
    }
    files
}

fn build_class_package(class: &Class, reads: &mut Reads<'_>) -> Built {
    let store = load_store(reads);
    let Some((manifest, _)) = manifest::class_manifest(&store, class) else {
        return Built::Absent;
    };
    let files = manifest_files(&manifest, reads);
    let lookup = |file: &FileRef| files.get(&file.key()).cloned();
    let selected = delta::select(&manifest, Since::Full);
    let mut content = json!({
        "manifest_digest": manifest_digest(&manifest),
        "set_seq": manifest.latest_set_seq,
    });
    let mut found = Vec::new();
    if selected.is_empty() {
        content["state"] = json!("empty");
        return Built::Content {
            content,
            issues: found,
        };
    }
    let request = package::Request {
        manifest: &manifest,
        selected: &selected,
        since: Since::Full,
        edge: None,
    };
    match package::build(&request, &lookup) {
        Ok(built) => {
            content["state"] = json!("ready");
            content["sha256"] = json!(built.sha256);
            content["size"] = json!(built.bytes.len());
            content["data"] = json!(STANDARD.encode(&built.bytes));
        }
        Err(PackageError::NeedsEdge(what)) => {
            content["state"] = json!("per_edge");
            content["reason"] = json!(format!("{what} depends on the edge"));
        }
        Err(err @ PackageError::MissingFile { .. }) => {
            // The blob fetcher has not delivered it yet; not an error.
            content["state"] = json!("waiting");
            content["reason"] = json!(err.to_string());
        }
        Err(err) => {
            content["state"] = json!("failed");
            content["reason"] = json!(err.to_string());
            found.push(Issue {
                source: EDGE_CONFIG.into(),
                doc: None,
                reason: format!("the package of class {class} cannot be built: {err}"),
            });
        }
    }
    Built::Content {
        content,
        issues: found,
    }
}

fn build_file(id: &str, reads: &mut Reads<'_>) -> Built {
    let Some(doc) = reads.get(EDGE_BLOBS, id) else {
        return Built::Absent;
    };
    let Some(json) = doc.json() else {
        return Built::Absent;
    };
    let mut content = json!({});
    for field in ["data", "size", "sha256"] {
        content[field] = json.get(field).cloned().unwrap_or(Value::Null);
    }
    Built::Content {
        content,
        issues: Vec::new(),
    }
}

fn build_shard(kind: &str, shard: u32, reads: &mut Reads<'_>) -> Built {
    let view = match kind {
        "edges" => registry::edges_view(shard),
        _ => registry::macs_view(shard),
    };
    let docs: Vec<_> = reads.view(EDGE_REGISTRY, &view).collect();
    if docs.is_empty() {
        return Built::Absent;
    }
    let parsed = parsed(&docs);
    let members = borrowed(&parsed);
    let (content, findings) = match kind {
        "edges" => registry::edges_shard(members),
        _ => registry::macs_shard(shard, members),
    };
    Built::Content {
        content,
        issues: issues(EDGE_REGISTRY, findings),
    }
}
