//! Phone provisioning (seed Stromboli, spec `phones.md`): accounts,
//! provision configs, policies, profiles and units in the `units` database
//! become merged configurations and vendor files, served to phones.
//!
//! Pure core:
//! * `mac`: MAC addresses in any notation;
//! * `model`: the documents, typed (`units` and the `sip_auth` devices);
//! * `schema`: the catalogue's JSON-Schema subset (clean a layer, defaults);
//! * `catalogue`: shipped tree + `phone_model` documents → effective model;
//! * `merge`: the layered merge with locks and provenance;
//! * `render`: handlebars (strict) with shipped templates and overrides;
//! * `build`: the outputs, from documents read through `Reads`;
//! * `auth`: Digest/Basic checks; `request`: parsing phone requests;
//! * `trust`: trusted (address, MAC) pairs, their LRU and state file format;
//! * `validate`: the configuration API's checks before writing;
//! * `vendors`: every vendor's files, grammars, templates and catalogue.
//!
//! Shell: `serving` (the index over the mirror, request log, rate
//! limits: what the phones listener answers), `trust_store` (the trusted
//! pairs' state file), `sources` (the API's
//! in-memory copy of `units`, and the template attachment
//! fetcher that feeds the synthetic source `phones_templates`), `api` (the
//! configuration API's writes), `offline` (`caldera render`).
//!
//! Outputs (`build`): `unit:<id>`, `common:<account>:<brand>:<model>`,
//! `account:<id>`. Every read is a dependency; sets of documents are read
//! through index views (`view_keys`), never as a whole source, so an edit
//! rebuilds exactly the outputs that read what it changed.

pub mod api;
pub mod auth;
pub mod build;
pub mod catalogue;
pub mod explain;
pub mod hot;
pub mod limiter;
pub mod mac;
pub mod mask;
pub mod merge;
pub mod model;
pub mod offline;
pub mod render;
pub mod request;
pub mod schema;
pub mod search;
pub mod service;
pub mod serving;
pub mod sources;
pub mod trust;
pub mod trust_store;
pub mod validate;
pub mod vendors;

#[cfg(test)]
mod compact_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use serde_json::Value;

use crate::domains::{Builder, Built, Domain};
use crate::rebuild::index::{Index, Keyer, Reads, SourceDoc};

use catalogue::NodeKey;
use model::{DocType, SIP_AUTH, TEMPLATE_BODIES, TemplateScope, UNITS, normalise_name};

/// Sources fed by caldera itself rather than by a followed database.
pub const SYNTHETIC_SOURCES: [&str; 1] = [TEMPLATE_BODIES];

/// Builds the phones outputs.
pub struct PhonesBuilder;

/// An index filing documents under the phones views (for builds outside
/// the engine: `caldera render`, tests, benchmarks).
pub fn phones_index() -> Index {
    let keyer: Keyer =
        Arc::new(|source: &str, doc: &SourceDoc| PhonesBuilder.view_keys(source, doc));
    Index::with_keyer(keyer)
}

/// A normalised brand/model/family field of a document.
fn name_field(json: &Value, field: &str) -> Option<String> {
    json.get(field)
        .and_then(Value::as_str)
        .map(normalise_name)
        .filter(|s| !s.is_empty())
}

/// The common output a unit document asks for, if any.
fn unit_common_key(json: &Value) -> Option<String> {
    let account = model::account_of(json)?;
    Some(build::common_key(
        account,
        &name_field(json, "brand")?,
        &name_field(json, "model")?,
    ))
}

/// The keys a document of `units` roots (those whose existence it decides).
fn unit_roots(id: &str, doc: &SourceDoc) -> Vec<String> {
    let Some(json) = doc.json() else {
        // Unreadable: its error is reported on `unit:<id>` (and the outputs
        // it rooted before keep their last good content).
        return vec![format!("unit:{id}")];
    };
    match model::doc_type(&json) {
        Some(DocType::Unit) => {
            let mut keys = vec![format!("unit:{id}")];
            keys.extend(unit_common_key(&json));
            keys
        }
        Some(DocType::Account) => vec![format!("account:{id}")],
        _ => Vec::new(),
    }
}

impl Builder for PhonesBuilder {
    fn domain(&self) -> Domain {
        Domain::Phones
    }

    fn sources(&self) -> &'static [&'static str] {
        &[UNITS, SIP_AUTH, TEMPLATE_BODIES]
    }

    /// The shell keeps its own copy of `units` (`sources.rs`).
    fn shared_sources(&self) -> &'static [&'static str] {
        &[UNITS]
    }

    fn roots(&self, source: &str, id: &str, doc: Option<&SourceDoc>) -> Vec<String> {
        match (source, doc) {
            (UNITS, Some(doc)) => unit_roots(id, doc),
            _ => Vec::new(),
        }
    }

    fn all_keys(&self, index: &Index) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for doc in index.docs(UNITS) {
            keys.extend(unit_roots(&doc.id, doc));
        }
        keys.sort();
        keys.dedup();
        keys
    }

    fn build(&self, key: &str, reads: &mut Reads<'_>) -> Built {
        if let Some(id) = key.strip_prefix("unit:") {
            build::build_unit(id, reads)
        } else if let Some(id) = key.strip_prefix("account:") {
            build::build_account(id, reads)
        } else if let Some(rest) = key.strip_prefix("common:") {
            let mut parts = rest.rsplitn(3, ':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(model), Some(brand), Some(account)) => {
                    build::build_common(account, brand, model, reads)
                }
                _ => Built::Absent,
            }
        } else {
            Built::Absent
        }
    }

    fn view_keys(&self, source: &str, doc: &SourceDoc) -> Vec<String> {
        if source != UNITS {
            return Vec::new();
        }
        doc.json().map(|json| view_keys(&json)).unwrap_or_default()
    }
}

/// The view keys of a `units` document (from its raw fields, so a document
/// that does not parse is still seen, and reported, by its readers).
pub fn view_keys(json: &Value) -> Vec<String> {
    let account = model::account_of(json);
    match model::doc_type(json) {
        Some(DocType::Unit) => {
            let mut keys = Vec::new();
            if let (Some(account), Some(mac)) = (account, model::unit_mac(json)) {
                keys.push(build::mac_view(account, &mac));
            }
            if let (Some(account), Some(brand), Some(model)) = (
                account,
                name_field(json, "brand"),
                name_field(json, "model"),
            ) {
                keys.push(build::model_view(account, &brand, &model));
            }
            keys
        }
        Some(DocType::Account) => json
            .get("realm")
            .and_then(Value::as_str)
            .and_then(model::normalise_realm)
            .map(|realm| vec![build::realm_view(&realm)])
            .unwrap_or_default(),
        Some(DocType::ProvisionConfig) => {
            account.map(|a| vec![build::pc_view(a)]).unwrap_or_default()
        }
        Some(DocType::Template) => template_key(json).into_iter().collect(),
        Some(DocType::PhoneModel) => {
            let Some(brand) = name_field(json, "brand") else {
                return Vec::new();
            };
            let key = match (name_field(json, "family"), name_field(json, "model")) {
                (_, Some(model)) => NodeKey::Model(brand, model),
                (Some(family), None) => NodeKey::Family(brand, family),
                (None, None) => NodeKey::Vendor(brand),
            };
            vec![key.view()]
        }
        _ => Vec::new(),
    }
}

fn template_key(json: &Value) -> Option<String> {
    let brand = name_field(json, "brand")?;
    let file = json.get("file").and_then(Value::as_str)?.trim();
    let template = if file.contains('/') {
        file.to_string()
    } else {
        format!("{brand}/{file}")
    };
    let scope = match (name_field(json, "model"), name_field(json, "family")) {
        (Some(model), _) => TemplateScope::Model(model),
        (None, Some(family)) => TemplateScope::Family(family),
        (None, None) => TemplateScope::Brand,
    };
    Some(build::template_view(
        model::account_of(json),
        &brand,
        &scope,
        &template,
    ))
}
