//! Cache documents: what caldera writes into the cache database, one per
//! output, keyed `<domain>:<key>`.
//!
//! A cache document carries the output (`content`), the problems found
//! building it (`errors`), whether the content is a stale last-good copy
//! (`stale`), and a `hash` of those three. The hash is a pure function of the
//! source documents, so an incremental build and a from-scratch build give the
//! same hash; a document is written only when its hash changes. The
//! provenance fields (`built_from`, `seqs`, `built_by`, `built_at`) describe
//! the build that last changed the hash.

pub mod mirror;
pub mod writer;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::domains::Domain;

/// The version of the cache document format.
pub const FORMAT: u64 = 1;

/// The cache document id of an output.
pub fn doc_id(domain: Domain, key: &str) -> String {
    format!("{}:{key}", domain.name())
}

/// `sha256-<hex>` of the canonical JSON of content, errors and staleness.
/// serde_json's maps are sorted, so the serialisation is canonical.
pub fn content_hash(content: &Value, errors: &Value, stale: bool) -> String {
    let content = serde_json::to_vec(content).expect("JSON values serialize");
    serialized_content_hash(&content, errors, stale)
}

/// `content_hash` of a content already serialized (compact serde_json, as
/// `serde_json::to_vec` writes it): the same bytes are hashed —
/// `{"content":…,"errors":…,"stale":…}`, keys in sorted order — without
/// copying the content into a new JSON tree.
pub fn serialized_content_hash(content: &[u8], errors: &Value, stale: bool) -> String {
    let errors = serde_json::to_vec(errors).expect("JSON values serialize");
    let mut hasher = Sha256::new();
    hasher.update(b"{\"content\":");
    hasher.update(content);
    hasher.update(b",\"errors\":");
    hasher.update(&errors);
    hasher.update(if stale {
        &b",\"stale\":true}"[..]
    } else {
        &b",\"stale\":false}"[..]
    });
    format!("sha256-{:x}", hasher.finalize())
}

/// A cache document as held in the mirror.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheEntry {
    pub id: String,
    pub rev: String,
    pub domain: String,
    pub key: String,
    pub hash: String,
    pub content: Value,
    /// `[{"db", "doc", "reason"}]`.
    pub errors: Value,
    pub stale: bool,
    /// Approximate size in bytes of the stored document, for metrics.
    pub bytes: usize,
}

impl CacheEntry {
    /// Reads a cache document; `Err` for documents caldera did not write.
    ///
    /// # Errors
    /// A field is missing or has the wrong type.
    pub fn from_doc(doc: &Value, bytes: usize) -> Result<CacheEntry, String> {
        let text = |name: &str| {
            doc.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("no string field {name:?}"))
        };
        if doc.get("caldera").and_then(Value::as_u64).is_none() {
            return Err("not a caldera cache document".to_string());
        }
        Ok(CacheEntry {
            id: text("_id")?,
            rev: text("_rev")?,
            domain: text("domain")?,
            key: text("key")?,
            hash: text("hash")?,
            content: doc.get("content").cloned().unwrap_or(Value::Null),
            errors: doc.get("errors").cloned().unwrap_or_else(|| json!([])),
            stale: doc.get("stale").and_then(Value::as_bool).unwrap_or(false),
            bytes,
        })
    }

    pub fn has_errors(&self) -> bool {
        self.errors.as_array().is_some_and(|e| !e.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash is part of the cache format: it must stay the sha256 of
    /// the canonical `{"content","errors","stale"}` object.
    #[test]
    fn hash_is_sha256_of_the_canonical_object() {
        let content: Value = serde_json::from_str(
            r#"{"z": [1, 2.5, "é\"\\\u0001"], "a": {"null": null, "t": true}, "n": -3}"#,
        )
        .unwrap();
        let errors = json!([{"db": "d", "doc": "x", "reason": "r"}]);
        for stale in [false, true] {
            let canonical = json!({ "content": content, "errors": errors, "stale": stale });
            let expected = format!(
                "sha256-{:x}",
                Sha256::digest(serde_json::to_vec(&canonical).unwrap())
            );
            assert_eq!(content_hash(&content, &errors, stale), expected);
        }
    }

    #[test]
    fn hash_is_independent_of_key_insertion_order() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": 2, "x": 1}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a": {"x": 1, "y": 2}, "b": 1}"#).unwrap();
        assert_eq!(
            content_hash(&a, &json!([]), false),
            content_hash(&b, &json!([]), false)
        );
        assert_ne!(
            content_hash(&a, &json!([]), false),
            content_hash(&a, &json!([]), true)
        );
        // serde_json must keep maps sorted (no `preserve_order` feature).
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"a":{"x":1,"y":2},"b":1}"#
        );
    }
}
