//! SIP routing tables (CCNQ4 routing records, spec `routing.md`).
//!
//! Two kinds of cache documents, composed by the service into lookup
//! tables:
//!
//! * `routing:{sip_domain_name}:{groupid}`, one per `ruleset:…` document of
//!   `provisioning`: the ruleset's rules (from the ruleset's own database,
//!   followed as the dynamic source `ruleset_db:<database>`), each a list
//!   of references to the ruleset's distinct gwlist entries; an entry names
//!   a gateway or a carrier and carries the overlay of the levels above the
//!   gateway (ruleset → destination → rule → entry);
//! * `routing:gateways@{sip_domain_name}`, one per domain with gateways or
//!   carriers: every gateway folded over default → carrier → gateway, and
//!   every carrier's `try`.
//!
//! A carrier, gateway or host edit rebuilds only its domain's directory (a
//! few kilobytes per hundred gateways); the service then re-resolves only
//! the table entries that reach what changed. A rule, destination or
//! ruleset edit rebuilds the ruleset's document. The host bonus and
//! round-robin are applied per request.
//!
//! * `model`: ids, keys, attribute folding and overlays, gateway
//!   definitions (pure);
//! * `resolve`: one ruleset → its document (pure, reads recorded);
//! * `directory`: one domain → its gateway directory (pure, reads recorded);
//! * `compose`: the two documents → a table; recomposition after a
//!   directory change (pure);
//! * `table`: the compiled lookup structure (pure);
//! * `wrr`: smooth weighted round-robin (pure);
//! * `service`: the IO shell (mirror → tables, the `route` command).
//!
//! Dependencies: a ruleset's document reads its ruleset document, the
//! whole ruleset database and the destination documents it uses; a
//! directory reads the views `routing:gateways:{sdn}` (every document
//! defining a gateway of the domain: `gateway` documents and host
//! profiles) and `routing:carriers:{sdn}` (every carrier document of the
//! domain).

pub mod compose;
pub mod directory;
pub mod explain;
#[cfg(test)]
mod legacy;
pub mod model;
pub mod resolve;
pub mod service;
pub mod table;
#[cfg(test)]
mod tests;
pub mod wrr;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::couch::Body;
use crate::domains::{Builder, Built, Domain, Issue};
use crate::rebuild::index::{Index, Reads, SourceDoc};

use model::{DOMAINS_VIEW, PROVISIONING, RULESETS_VIEW, directory_key};

/// Builds `routing:{sip_domain_name}:{groupid}` from
/// `provisioning/ruleset:{sip_domain_name}:{groupid}`, and
/// `routing:gateways@{sip_domain_name}` from the domain's gateway, carrier
/// and host documents.
pub struct RoutingBuilder;

/// The ruleset's database, if it names a valid one.
///
/// # Errors
/// The reason the ruleset has no usable database.
pub fn ruleset_database(ruleset: &Value) -> Result<&str, String> {
    match ruleset.get("database") {
        None | Some(Value::Null) => Err("the ruleset names no database; it has no rules".into()),
        Some(Value::String(name)) => crate::config::check_db_name(name)
            .map(|()| name.as_str())
            .map_err(|why| format!("database: {why}; the ruleset has no rules")),
        Some(_) => Err("database is not a string; the ruleset has no rules".into()),
    }
}

impl Builder for RoutingBuilder {
    fn domain(&self) -> Domain {
        Domain::Routing
    }

    fn sources(&self) -> &'static [&'static str] {
        &[PROVISIONING]
    }

    fn roots(&self, source: &str, id: &str, doc: Option<&SourceDoc>) -> Vec<String> {
        if source != PROVISIONING {
            return Vec::new();
        }
        if let Some((sdn, groupid)) = model::split_id(id, "ruleset") {
            return vec![format!("{sdn}:{groupid}")];
        }
        let mut domains = gateway_domains(id, doc);
        if let Some((sdn, _)) = model::split_id(id, "carrier") {
            domains.push(sdn.to_string());
        }
        domains.sort();
        domains.dedup();
        domains
            .iter()
            .filter_map(|sdn| directory_key(sdn))
            .collect()
    }

    fn all_keys(&self, index: &Index) -> Vec<String> {
        let mut keys: BTreeSet<String> = BTreeSet::new();
        for view in [RULESETS_VIEW, DOMAINS_VIEW] {
            for doc in index.view(PROVISIONING, view) {
                keys.extend(self.roots(PROVISIONING, &doc.id, Some(doc)));
            }
        }
        keys.into_iter().collect()
    }

    fn build(&self, key: &str, reads: &mut Reads<'_>) -> Built {
        if let Some(sdn) = model::directory_domain(key) {
            return directory::build(sdn, reads);
        }
        let id = format!("ruleset:{key}");
        let Some((sdn, groupid)) = model::split_id(&id, "ruleset") else {
            return Built::Absent;
        };
        let Some(doc) = reads.get(PROVISIONING, &id) else {
            return Built::Absent;
        };
        let json = match &doc.body {
            Body::Json(text) => text.parse(),
            Body::Malformed(reason) => {
                return Built::Failed {
                    issues: vec![Issue::doc(PROVISIONING, &id, reason.clone())],
                };
            }
        };
        let Value::Object(level) = &json else {
            return Built::Failed {
                issues: vec![Issue::doc(
                    PROVISIONING,
                    &id,
                    "the ruleset is not a JSON object",
                )],
            };
        };
        let mut issues = Vec::new();
        let database = ruleset_database(&json)
            .map_err(|why| issues.push(Issue::doc(PROVISIONING, &id, why)))
            .ok();
        let ruleset = resolve::Ruleset {
            id: &id,
            sip_domain_name: sdn,
            groupid,
            level,
            database,
        };
        let (content, found) = resolve::table(&ruleset, reads);
        issues.extend(found);
        Built::Content { content, issues }
    }

    fn view_keys(&self, source: &str, doc: &SourceDoc) -> Vec<String> {
        if source != PROVISIONING {
            return Vec::new();
        }
        if doc.id.starts_with("ruleset:") {
            return vec![RULESETS_VIEW.to_string()];
        }
        let mut keys: Vec<String> = gateway_domains(&doc.id, Some(doc))
            .iter()
            .filter(|sdn| directory_key(sdn).is_some())
            .map(|sdn| model::gateways_view(sdn))
            .collect();
        if let Some((sdn, _)) = model::split_id(&doc.id, "carrier") {
            keys.push(model::carriers_view(sdn));
        }
        if !keys.is_empty() {
            keys.push(DOMAINS_VIEW.to_string());
        }
        keys
    }

    fn dynamic_sources(&self, index: &Index) -> BTreeMap<String, String> {
        index
            .view(PROVISIONING, RULESETS_VIEW)
            .filter_map(|doc| {
                let json = doc.json()?;
                let database = ruleset_database(&json).ok()?;
                Some((model::ruleset_source(database), database.to_string()))
            })
            .collect()
    }
}

/// The domains a provisioning document defines gateways in: a `gateway`
/// document's (from its id, even when unreadable, so the directory reports
/// it), a host document's when its `sip_profiles` define gateways.
fn gateway_domains(id: &str, doc: Option<&SourceDoc>) -> Vec<String> {
    if let Some((sdn, _)) = model::split_id(id, "gateway") {
        return vec![sdn.to_string()];
    }
    // Ruleset documents are never hosts (they are filed as rulesets only).
    if id.starts_with("gateway:") || id.starts_with("ruleset:") {
        return Vec::new();
    }
    let Some(json) = doc.and_then(SourceDoc::json) else {
        return Vec::new();
    };
    if !model::is_host(id, Some(&json)) {
        return Vec::new();
    }
    let mut domains: Vec<String> = model::gateways_from_host(id, &json)
        .into_iter()
        .map(|def| def.sip_domain_name)
        .collect();
    domains.dedup();
    domains
}
