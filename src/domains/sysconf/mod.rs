//! system_config values (Kazoo's sysconf get/set/flush).
//!
//! Each category document of `system_config` becomes one cache document,
//! `sysconf:<category>`, holding the category's sections; lookups run on the
//! mirror of those cache documents. `model` is the pure core (lookup and
//! write rules), `SysconfBuilder` the pure build, `service` the IO shell that
//! both front doors (HTTP and AMQP) call.

pub mod model;
pub mod service;
#[cfg(test)]
mod tests;

use crate::couch::Body;
use crate::domains::{Builder, Built, Domain, Issue};
use crate::rebuild::index::{Index, Reads, SourceDoc};

pub use model::SOURCE;

/// Builds `sysconf:<category>` from `system_config/<category>`.
pub struct SysconfBuilder;

impl Builder for SysconfBuilder {
    fn domain(&self) -> Domain {
        Domain::Sysconf
    }

    fn sources(&self) -> &'static [&'static str] {
        &[SOURCE]
    }

    fn roots(&self, _source: &str, id: &str, _doc: Option<&SourceDoc>) -> Vec<String> {
        vec![id.to_string()]
    }

    fn all_keys(&self, index: &Index) -> Vec<String> {
        index.docs(SOURCE).map(|doc| doc.id.clone()).collect()
    }

    fn build(&self, key: &str, reads: &mut Reads<'_>) -> Built {
        let Some(doc) = reads.get(SOURCE, key) else {
            return Built::Absent;
        };
        match &doc.body {
            Body::Json(text) => match text.parse() {
                // Not a category at all: like an unparsable document, it
                // must not wipe the last good content.
                json if !json.is_object() => Built::Failed {
                    issues: vec![Issue::doc(SOURCE, key, "the document is not a JSON object")],
                },
                json => {
                    let (content, issues) = model::category_content(&json, key);
                    Built::Content { content, issues }
                }
            },
            Body::Malformed(reason) => Built::Failed {
                issues: vec![Issue::doc(SOURCE, key, reason.clone())],
            },
        }
    }
}
