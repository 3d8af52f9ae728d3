//! JSON kept as text: how caldera holds documents for the life of the
//! process (source documents in the index, outputs in the mirror).
//!
//! A parsed `serde_json::Value` costs about ten times its text (measured:
//! 4.4 kB for a 423-byte category; every object is a B-tree node plus its
//! key strings), so long-lived documents are kept as the text serde_json
//! wrote, and parsed — whole or only the fields a reader needs — when read.
//! The text is shared (`Arc<str>`): one copy however many holders.

use std::sync::Arc;

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
}
