//! A domain's gateway directory, `routing:gateways@{sip_domain_name}`
//! (pure; reads go through the recording `Reads`): every gateway of the
//! domain — its winning definition (a `gateway` document before host
//! profiles, then by document id and profile) folded over default →
//! carrier → gateway — and every carrier's `try`.
//!
//! It reads the views `routing:gateways:{sdn}` (every document defining a
//! gateway of the domain) and `routing:carriers:{sdn}` (every carrier
//! document of the domain), so a gateway, carrier or host edit rebuilds
//! this one small output and no ruleset's; the service re-resolves only the
//! table entries that reach what changed. The levels above the gateway are
//! each ruleset's (`resolve`, `model::Overlay`).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::model::{self, Acc, GatewayDef, Origin, PROVISIONING, carriers_view, gateways_view};
use super::resolve::{object, try_value};
use crate::domains::{Built, Issue};
use crate::rebuild::index::{Reads, SourceDoc};

/// Builds the directory of `sdn`; `Absent` when the domain has no gateway
/// or carrier document.
pub fn build(sdn: &str, reads: &mut Reads<'_>) -> Built {
    let mut issues = Vec::new();
    let defining: Vec<_> = reads
        .view(PROVISIONING, &gateways_view(sdn))
        .cloned()
        .collect();
    let carrier_docs: Vec<_> = reads
        .view(PROVISIONING, &carriers_view(sdn))
        .cloned()
        .collect();
    if defining.is_empty() && carrier_docs.is_empty() {
        return Built::Absent;
    }
    let carriers = carriers(&carrier_docs, &mut issues);
    let mut tries = Map::new();
    for (carrierid, (_, carrier_try)) in &carriers {
        if let Some(t) = carrier_try {
            tries.insert(carrierid.clone(), json!(t));
        }
    }
    let mut gateways = Map::new();
    for def in winners(sdn, &defining, &mut issues) {
        let carrier = def
            .carrierid
            .as_ref()
            .and_then(|c| carriers.get(c).map(|(level, _)| (c, level)));
        let mut acc = Acc::default();
        if let Some((carrierid, level)) = carrier {
            let id = format!("carrier:{sdn}:{carrierid}");
            acc.apply(level, origin(&id, ""), &mut issues);
        }
        let gateway_origin = origin(&def.doc, &def.path);
        acc.apply(&def.level, gateway_origin, &mut issues);
        for problem in &def.problems {
            issues.push(gateway_origin.issue(problem));
        }
        let mut fields = acc.to_json();
        fields.insert("doc".into(), json!(def.doc));
        fields.insert("carrierid".into(), json!(def.carrierid));
        fields.insert("address".into(), json!(def.address));
        fields.insert("host".into(), json!(def.host));
        gateways.insert(def.gwid.clone(), Value::Object(fields));
    }
    issues.sort();
    issues.dedup();
    let content = json!({ "sip_domain_name": sdn, "gateways": gateways, "tries": tries });
    Built::Content { content, issues }
}

fn origin<'a>(doc: &'a str, path: &'a str) -> Origin<'a> {
    Origin {
        source: PROVISIONING,
        doc,
        path,
    }
}

/// Every readable carrier of the domain: its level and its valid `try`.
fn carriers(
    docs: &[std::sync::Arc<SourceDoc>],
    issues: &mut Vec<Issue>,
) -> BTreeMap<String, (Map<String, Value>, Option<usize>)> {
    let mut carriers = BTreeMap::new();
    for doc in docs {
        let Some((_, carrierid)) = model::split_id(&doc.id, "carrier") else {
            continue;
        };
        let carrier_origin = origin(&doc.id, "");
        let Some(level) = object(doc, carrier_origin, issues) else {
            continue;
        };
        let carrier_try = try_value(&level, carrier_origin, issues);
        carriers.insert(carrierid.to_string(), (level, carrier_try));
    }
    carriers
}

/// The winning definition of every gwid of the domain, in gwid order; a
/// gwid defined more than once is reported on the winner.
fn winners(
    sdn: &str,
    docs: &[std::sync::Arc<SourceDoc>],
    issues: &mut Vec<Issue>,
) -> Vec<GatewayDef> {
    let mut by_gwid: BTreeMap<String, Vec<GatewayDef>> = BTreeMap::new();
    for doc in docs {
        for def in definitions(sdn, doc, issues) {
            by_gwid.entry(def.gwid.clone()).or_default().push(def);
        }
    }
    let mut winners = Vec::with_capacity(by_gwid.len());
    for (gwid, mut defs) in by_gwid {
        defs.sort_by(|a, b| a.rank().cmp(&b.rank()));
        if defs.len() > 1 {
            let others: Vec<String> = defs[1..].iter().map(GatewayDef::describe).collect();
            issues.push(Issue::doc(
                PROVISIONING,
                &defs[0].doc,
                format!(
                    "gateway {gwid} is also defined by {}; this definition wins",
                    others.join(", ")
                ),
            ));
        }
        winners.extend(defs.into_iter().next());
    }
    winners
}

/// The gateways one provisioning document defines in the domain.
fn definitions(sdn: &str, doc: &SourceDoc, issues: &mut Vec<Issue>) -> Vec<GatewayDef> {
    let Some(json) = doc.json() else {
        issues.push(
            origin(&doc.id, "").issue("the document cannot be read; its gateways are ignored"),
        );
        return Vec::new();
    };
    let defs = if doc.id.starts_with("gateway:") {
        model::gateway_from_doc(&doc.id, &json)
            .into_iter()
            .collect()
    } else if model::is_host(&doc.id, Some(&json)) {
        model::gateways_from_host(&doc.id, &json)
    } else {
        Vec::new()
    };
    defs.into_iter()
        .filter(|d| d.sip_domain_name == sdn)
        .collect()
}
