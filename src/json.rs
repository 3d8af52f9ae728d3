//! JSON kept as text: how caldera holds documents for the life of the
//! process (source documents in the index, outputs in the mirror).
//!
//! A parsed `serde_json::Value` costs about ten times its text (measured:
//! 4.4 kB for a 423-byte category; every object is a B-tree node plus its
//! key strings), so long-lived documents are kept as the text serde_json
//! wrote, and parsed — whole or only the fields a reader needs — when read.
//! The text is shared (`Arc<str>`): one copy however many holders. Holders
//! that receive the same document from different feeds (the phones
//! shell's copy of `units` and the engine's index) share it through
//! `TextPool`.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use serde::de::DeserializeOwned;
use serde_json::Value;

/// JSON text as serde_json writes it (compact, maps sorted): only built
/// from a `Value` or from serde_json's own output, so it always parses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonText(Arc<str>);

impl JsonText {
    pub fn of(value: &Value) -> JsonText {
        JsonText(Arc::from(
            serde_json::to_string(value).expect("JSON values serialize"),
        ))
    }

    /// `json` must be `serde_json::to_vec`'s output (checked in debug builds).
    pub fn from_serialized(json: &[u8]) -> JsonText {
        debug_assert!(serde_json::from_slice::<serde::de::IgnoredAny>(json).is_ok());
        let text = std::str::from_utf8(json).expect("serde_json writes UTF-8");
        JsonText(Arc::from(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the text (it was written by serde_json, so it parses).
    pub fn parse(&self) -> Value {
        serde_json::from_str(&self.0).expect("JsonText holds serde_json's output")
    }

    /// Reads only what `T` names, skipping the rest unparsed; `None` when
    /// the text does not have `T`'s shape.
    pub fn read<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(&self.0).ok()
    }

    /// The text's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Texts that more than one holder keeps, by content: a holder hands its
/// text to `share` and gets back the one already held elsewhere when the
/// bytes are the same. The pool only remembers texts (weakly): it never
/// keeps one alive, and forgets those no holder keeps any more.
///
/// Why: at a million phones the phones shell's copy of `units` and the
/// engine's index each held every units document's text (~300 MB each).
pub struct TextPool {
    shards: Box<[Mutex<PoolShard>]>,
    hasher: std::collections::hash_map::RandomState,
}

#[derive(Default)]
struct PoolShard {
    texts: HashMap<u64, Weak<str>>,
    /// Entries after the last sweep of dead ones.
    swept: usize,
}

const POOL_SHARDS: usize = 16;

/// Dead entries are swept when a shard has grown past twice its size at
/// the last sweep, plus this many: amortised constant time per share.
const POOL_SLACK: usize = 256;

static POOL: LazyLock<TextPool> = LazyLock::new(TextPool::new);

impl TextPool {
    fn new() -> TextPool {
        TextPool {
            shards: (0..POOL_SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// The process's pool.
    pub fn global() -> &'static TextPool {
        &POOL
    }

    /// `text`, or the equal text another holder already keeps.
    pub fn share(&self, text: JsonText) -> JsonText {
        let hash = self.hasher.hash_one(&*text.0);
        let mut shard = self.shards[(hash % POOL_SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(held) = shard.texts.get(&hash).and_then(Weak::upgrade)
            && *held == *text.0
        {
            return JsonText(held);
        }
        shard.texts.insert(hash, Arc::downgrade(&text.0));
        if shard.texts.len() > 2 * shard.swept + POOL_SLACK {
            shard.texts.retain(|_, held| held.strong_count() > 0);
            shard.swept = shard.texts.len();
        }
        text
    }

    /// Texts remembered (live or not yet swept).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.texts.len()))
            .sum()
    }
}

impl JsonText {
    /// Whether two texts are one copy.
    pub fn same_copy(&self, other: &JsonText) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[test]
    fn text_parses_back_and_reads_parts() {
        let value = json!({"type": "unit", "config": {"a": [1, 2.5, null]}, "name": "é\"x"});
        let text = JsonText::of(&value);
        assert_eq!(text.parse(), value);
        assert_eq!(
            text.as_str(),
            r#"{"config":{"a":[1,2.5,null]},"name":"é\"x","type":"unit"}"#
        );
        #[derive(Deserialize)]
        struct Head {
            r#type: String,
        }
        assert_eq!(text.read::<Head>().unwrap().r#type, "unit");
        assert!(JsonText::of(&json!([1])).read::<Head>().is_none());
    }

    #[test]
    fn the_pool_shares_equal_texts_and_forgets_dropped_ones() {
        let pool = TextPool::new();
        let first = pool.share(JsonText::of(&json!({"_id": "u1", "v": 1})));
        let again = pool.share(JsonText::of(&json!({"_id": "u1", "v": 1})));
        assert!(first.same_copy(&again), "one copy for equal bytes");
        let other = pool.share(JsonText::of(&json!({"_id": "u1", "v": 2})));
        assert!(!other.same_copy(&first));
        assert_eq!(other.parse(), json!({"_id": "u1", "v": 2}));
        drop((first, again));
        let fresh = pool.share(JsonText::of(&json!({"_id": "u1", "v": 1})));
        assert_eq!(
            fresh.parse(),
            json!({"_id": "u1", "v": 1}),
            "a dead entry is replaced"
        );
        drop((fresh, other));
        // Dead entries go as the pool grows: it never holds more than a
        // bounded multiple of the live texts.
        let live: Vec<JsonText> = (0..10)
            .map(|n| pool.share(JsonText::of(&json!({ "n": n }))))
            .collect();
        for n in 0..20_000 {
            pool.share(JsonText::of(&json!({ "dead": n })));
        }
        assert!(
            pool.len() < POOL_SHARDS * (2 * POOL_SLACK + 64),
            "{} entries",
            pool.len()
        );
        let kept = pool.share(JsonText::of(&json!({"n": 3})));
        assert!(kept.same_copy(&live[3]), "live texts are still shared");
    }
}
