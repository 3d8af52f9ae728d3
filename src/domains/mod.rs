//! The output families caldera builds, one folder each. A domain turns
//! source documents into cache documents through the `Builder` trait, which
//! is pure: documents in, output out, no IO, no clock. Domains never import
//! each other; anything they share lives in this file.

pub mod acls;
pub mod edge;
pub mod phones;
pub mod routing;
pub mod sysconf;

use std::collections::BTreeMap;

use serde_json::Value;

use crate::rebuild::index::{Index, Reads, SourceDoc, SourceId};

/// Every domain. Adding one is a compile-error-guided change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Domain {
    Sysconf,
    Acls,
    Routing,
    Phones,
    Edge,
}

impl Domain {
    pub const ALL: [Domain; 5] = [
        Domain::Sysconf,
        Domain::Acls,
        Domain::Routing,
        Domain::Phones,
        Domain::Edge,
    ];

    /// The name used in cache document ids (`sysconf:ecallmgr`), metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Domain::Sysconf => "sysconf",
            Domain::Acls => "acls",
            Domain::Routing => "routing",
            Domain::Phones => "phones",
            Domain::Edge => "edge",
        }
    }

    pub fn from_name(name: &str) -> Option<Domain> {
        Domain::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Whether the mirror keeps this domain's contents in the on-disk
    /// store (when one is configured) rather than in memory: true for the
    /// domain whose outputs are large in total and read rarely (a phone
    /// asks at boot and once a day), and whose service keeps what it needs
    /// per request itself (the phones serving index and its hot set).
    pub fn spills_to_store(self) -> bool {
        matches!(self, Domain::Phones)
    }

    /// The builder of this domain.
    pub fn builder(self) -> &'static dyn Builder {
        match self {
            Domain::Sysconf => &sysconf::SysconfBuilder,
            Domain::Acls => &acls::AclsBuilder,
            Domain::Routing => &routing::RoutingBuilder,
            Domain::Phones => &phones::PhonesBuilder,
            Domain::Edge => &edge::EdgeBuilder,
        }
    }
}

/// A problem found while building, attached to the output it affects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Issue {
    /// The source the offending document lives in.
    pub source: SourceId,
    /// The offending document, when there is one.
    pub doc: Option<String>,
    pub reason: String,
}

impl Issue {
    pub fn doc(source: &str, doc: &str, reason: impl Into<String>) -> Issue {
        Issue {
            source: source.into(),
            doc: Some(doc.to_string()),
            reason: reason.into(),
        }
    }
}

/// The result of building one output.
#[derive(Debug, Clone, PartialEq)]
pub enum Built {
    /// The output does not exist (its cache document is deleted).
    Absent,
    /// The output, possibly with problems that did not prevent it.
    Content { content: Value, issues: Vec<Issue> },
    /// No output could be produced; the last good content keeps being served,
    /// flagged stale, with these problems.
    Failed { issues: Vec<Issue> },
}

/// A domain's pure build logic.
pub trait Builder: Send + Sync {
    fn domain(&self) -> Domain;

    /// The sources this domain reads (logical names, see `rebuild::sources`).
    fn sources(&self) -> &'static [&'static str];

    /// Those of `sources` whose documents another part of the process also
    /// keeps (their texts are shared through `json::TextPool`). Default:
    /// none.
    fn shared_sources(&self) -> &'static [&'static str] {
        &[]
    }

    /// The outputs whose existence this document decides (a category
    /// document roots its sysconf output). Called with the old and the new
    /// version of a changed document (`None` when there is none), so an
    /// output appears when its root is created and goes when it is deleted.
    /// Builders filter by document type here, client-side.
    fn roots(&self, source: &str, id: &str, doc: Option<&SourceDoc>) -> Vec<String>;

    /// Every output of a from-scratch build.
    fn all_keys(&self, index: &Index) -> Vec<String>;

    /// Builds one output; everything read through `reads` becomes a dependency.
    fn build(&self, key: &str, reads: &mut Reads<'_>) -> Built;

    /// The view keys this document is filed under in `source` (see
    /// `rebuild::index`), for `Reads::view`. Pure; keys are namespaced by
    /// domain (`routing:carrier:…`). Default: none.
    fn view_keys(&self, _source: &str, _doc: &SourceDoc) -> Vec<String> {
        Vec::new()
    }

    /// Databases this domain wants followed beyond its static `sources`,
    /// given the current documents: logical source id (`ruleset_db:<db>`) →
    /// physical database name. The engine follows exactly the union of what
    /// every builder wants, starting and stopping feeds as it changes; a
    /// source read before it has loaded defers the output. Default: none.
    fn dynamic_sources(&self, _index: &Index) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
}
