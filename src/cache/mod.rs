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
//!
//! In memory (`CacheEntry`) the content is its JSON text (`Content`),
//! parsed on demand; the mirror may keep a domain's contents in the
//! on-disk store instead (`store`, `Domain::spills_to_store`).

pub mod errors;
pub mod mirror;
pub mod store;
pub mod writer;

use std::borrow::Cow;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::domains::Domain;
pub use crate::json::JsonText;

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

/// An output's content as the mirror holds it: its JSON text, parsed on
/// demand (`value`; a parsed tree costs about ten times its text, measured
/// 4.4 kB for a 423-byte document), so services that walk a content on a
/// hot path keep their own parsed or compiled form (`Mirror::tree`, the
/// routing tables, the phones serving index).
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(JsonText),
    /// Only in entries `Mirror::meta` returns: the content lives in the
    /// on-disk store (`cache::store`), and `Mirror::get` reads it.
    Spilled,
}

impl Content {
    pub fn of(value: &Value) -> Content {
        Content::Text(JsonText::of(value))
    }

    /// The content, parsed.
    ///
    /// # Panics
    /// On a `Spilled` content (a bug: those come only from `Mirror::meta`,
    /// whose callers do not read content).
    pub fn value(&self) -> Cow<'_, Value> {
        Cow::Owned(self.text().parse())
    }

    /// The content's JSON (as serde_json writes it).
    ///
    /// # Panics
    /// As `value`.
    pub fn json(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.text().as_str().as_bytes())
    }

    /// The text.
    ///
    /// # Panics
    /// As `value`.
    pub fn text(&self) -> &JsonText {
        match self {
            Content::Text(text) => text,
            Content::Spilled => panic!("a spilled content is read through Mirror::get"),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Content::Text(text) if text.as_str() == "null")
    }
}

impl From<Value> for Content {
    fn from(value: Value) -> Content {
        Content::of(&value)
    }
}

/// A cache document as held in the mirror.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheEntry {
    pub id: String,
    pub rev: String,
    pub domain: String,
    pub key: String,
    pub hash: String,
    pub content: Content,
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
        let domain = text("domain")?;
        let content = doc.get("content").unwrap_or(&Value::Null);
        Ok(CacheEntry {
            id: text("_id")?,
            rev: text("_rev")?,
            content: Content::of(content),
            domain,
            key: text("key")?,
            hash: text("hash")?,
            errors: doc.get("errors").cloned().unwrap_or_else(|| json!([])),
            stale: doc.get("stale").and_then(Value::as_bool).unwrap_or(false),
            bytes,
        })
    }

    /// The entry without its content (`Content::Spilled`), as the mirror
    /// holds it once the store has it.
    pub fn without_content(&self) -> CacheEntry {
        CacheEntry {
            id: self.id.clone(),
            rev: self.rev.clone(),
            domain: self.domain.clone(),
            key: self.key.clone(),
            hash: self.hash.clone(),
            content: Content::Spilled,
            errors: self.errors.clone(),
            stale: self.stale,
            bytes: self.bytes,
        }
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

    #[test]
    fn contents_are_text_and_read_back_the_same() {
        let value: Value = serde_json::from_str(
            r#"{"files": {"a": {"body": "x\n\"é\"", "etag": "e"}}, "n": [1, -2.5, null], "t": true}"#,
        )
        .unwrap();
        let text = Content::of(&value);
        assert!(matches!(text, Content::Text(_)));
        assert_eq!(*text.value(), value);
        assert_eq!(
            &*text.json(),
            serde_json::to_vec(&value).unwrap().as_slice()
        );
        let serialized = serde_json::to_vec(&value).unwrap();
        assert_eq!(Content::Text(JsonText::from_serialized(&serialized)), text);
        assert!(!text.is_null());
        assert!(Content::of(&Value::Null).is_null());
        assert!(!Content::Spilled.is_null());
    }

    /// A cache document read from CouchDB (start-up load, feed, 409
    /// re-read) keeps its content as text, whatever its domain.
    #[test]
    fn documents_read_back_keep_their_content_as_text() {
        let doc = |domain: &str| {
            json!({"_id": format!("{domain}:k"), "_rev": "1-a", "caldera": 1, "domain": domain,
                   "key": "k", "hash": "h", "content": {"served": true}, "errors": [], "stale": true})
        };
        let phones = CacheEntry::from_doc(&doc("phones"), 10).unwrap();
        let sysconf = CacheEntry::from_doc(&doc("sysconf"), 10).unwrap();
        assert!(matches!(phones.content, Content::Text(_)));
        assert_eq!(phones.content.value(), sysconf.content.value());
        assert!(phones.stale);
    }
}
