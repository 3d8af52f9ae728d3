//! SIP routing tables (CCNQ4 routing records, spec `routing.md`).
//!
//! Each `ruleset:{sip_domain_name}:{groupid}` document of `provisioning`
//! becomes one cache document, `routing:{sip_domain_name}:{groupid}`: the
//! ruleset's rules (from the ruleset's own database, followed as the
//! dynamic source `ruleset_db:<database>`), each with its gateways resolved
//! over the seven levels and grouped by priority. Lookups run in memory on
//! tables compiled from those documents; the host bonus and round-robin are
//! applied per request.
//!
//! * `model`: ids, attribute folding, gateway definitions (pure);
//! * `resolve`: one ruleset → its table content (pure, reads recorded);
//! * `table`: the compiled lookup structure (pure);
//! * `wrr`: smooth weighted round-robin (pure);
//! * `service`: the IO shell (mirror → tables, the `route` command).
//!
//! Dependencies: a table reads its ruleset document, the whole ruleset
//! database, the carrier and destination documents it uses by id, and the
//! in-memory views `routing:gw:{sdn}:{gwid}` (every document defining that
//! gateway: `gateway` documents and host profiles) and
//! `routing:carrier:{sdn}:{carrierid}` (every document defining a member),
//! so an edit rebuilds exactly the tables that use what it changed.

pub mod model;
pub mod resolve;
pub mod service;
pub mod table;
#[cfg(test)]
mod tests;
pub mod wrr;

use std::collections::BTreeMap;

use serde_json::Value;

use crate::couch::Body;
use crate::domains::{Builder, Built, Domain, Issue};
use crate::rebuild::index::{Index, Reads, SourceDoc};

use model::{PROVISIONING, RULESETS_VIEW};

/// Builds `routing:{sip_domain_name}:{groupid}` from
/// `provisioning/ruleset:{sip_domain_name}:{groupid}`.
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

    fn roots(&self, source: &str, id: &str, _doc: Option<&SourceDoc>) -> Vec<String> {
        if source != PROVISIONING {
            return Vec::new();
        }
        model::split_id(id, "ruleset")
            .map(|(sdn, groupid)| vec![format!("{sdn}:{groupid}")])
            .unwrap_or_default()
    }

    fn all_keys(&self, index: &Index) -> Vec<String> {
        index
            .view(PROVISIONING, RULESETS_VIEW)
            .filter_map(|doc| self.roots(PROVISIONING, &doc.id, Some(doc)).pop())
            .collect()
    }

    fn build(&self, key: &str, reads: &mut Reads<'_>) -> Built {
        let id = format!("ruleset:{key}");
        let Some((sdn, groupid)) = model::split_id(&id, "ruleset") else {
            return Built::Absent;
        };
        let Some(doc) = reads.get(PROVISIONING, &id) else {
            return Built::Absent;
        };
        let level = match &doc.body {
            Body::Json(Value::Object(level)) => level,
            Body::Json(_) => {
                return Built::Failed {
                    issues: vec![Issue::doc(
                        PROVISIONING,
                        &id,
                        "the ruleset is not a JSON object",
                    )],
                };
            }
            Body::Malformed(reason) => {
                return Built::Failed {
                    issues: vec![Issue::doc(PROVISIONING, &id, reason.clone())],
                };
            }
        };
        let json = doc.json().expect("matched above");
        let mut issues = Vec::new();
        let database = ruleset_database(json)
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
        let json = doc.json();
        if doc.id.starts_with("ruleset:") {
            return vec![RULESETS_VIEW.to_string()];
        }
        let mut defs = Vec::new();
        if let Some((sdn, gwid)) = model::split_id(&doc.id, "gateway") {
            match json.and_then(|j| model::gateway_from_doc(&doc.id, j)) {
                Some(def) => defs.push(def),
                // Unreadable: still filed by its id, so readers report it.
                None => return vec![model::gateway_view(sdn, gwid)],
            }
        } else if let Some(json) = json.filter(|j| model::is_host(&doc.id, Some(j))) {
            defs = model::gateways_from_host(&doc.id, json);
        }
        let mut keys: Vec<String> = Vec::new();
        for def in defs {
            keys.push(model::gateway_view(&def.sip_domain_name, &def.gwid));
            if let Some(carrierid) = &def.carrierid {
                keys.push(model::carrier_view(&def.sip_domain_name, carrierid));
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    fn dynamic_sources(&self, index: &Index) -> BTreeMap<String, String> {
        index
            .view(PROVISIONING, RULESETS_VIEW)
            .filter_map(|doc| {
                let database = ruleset_database(doc.json()?).ok()?;
                Some((model::ruleset_source(database), database.to_string()))
            })
            .collect()
    }
}
