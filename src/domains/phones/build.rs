//! Building the phones outputs from the index, through `Reads` (so every
//! document read becomes a dependency). Pure.
//!
//! * `unit:<unit id>`: one unit — merged configuration, provenance, lines
//!   (no secrets), rendered per-device files, the names of its
//!   model-common files, the HTTP credentials (as HA1 digests), and
//!   whether it is served;
//! * `common:<account id>:<brand>:<model>`: the model-common files of a
//!   model in an account (configuration without any unit layer, no
//!   secrets); it exists while the account has an enabled unit of that
//!   model;
//! * `account:<account id>`: what serving needs of an account — realm,
//!   whether it is served (enabled, valid and unique realm), the CIDR
//!   allow list.
//!
//! Views read (see `mod.rs`): `phones:mac:<account>:<mac>` (duplicate
//! MACs), `phones:model:<account>:<brand>:<model>` (the units of a model),
//! `phones:realm:<realm>`, `phones:pc:<account>` (provision configs),
//! `phones:pm:…` (catalogue documents) and `phones:tpl:…` (overrides).

use std::sync::Arc;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::auth;
use super::catalogue::{self, EffectiveModel, NodeKey};
use super::mac::Mac;
use super::merge::{self, Layer, LayerKind, Merged, Origin};
use super::model::{
    self, Account, Credentials, DocType, Line, PhoneModelDoc, ProvisionConfig, SIP_AUTH,
    TEMPLATE_BODIES, TemplateBody, TemplateScope, UNITS, Unit,
};
use super::render::{self, TemplateOverride, Templates};
use super::vendors::{self, FileClass, FileSpec, ModelRef, Vendor};
use crate::domains::{Built, Issue};
use crate::rebuild::index::{Reads, SourceDoc};

pub fn mac_view(account: &str, mac: &Mac) -> String {
    format!("phones:mac:{account}:{mac}")
}

pub fn model_view(account: &str, brand: &str, model: &str) -> String {
    format!("phones:model:{account}:{brand}:{model}")
}

pub fn realm_view(realm: &str) -> String {
    format!("phones:realm:{realm}")
}

pub fn pc_view(account: &str) -> String {
    format!("phones:pc:{account}")
}

/// The view of the overrides of `template` at one scope (`account` `None`:
/// global).
pub fn template_view(
    account: Option<&str>,
    brand: &str,
    scope: &TemplateScope,
    template: &str,
) -> String {
    let account = account.unwrap_or("*");
    let scope = match scope {
        TemplateScope::Brand => "*".to_string(),
        TemplateScope::Family(f) => format!("f={f}"),
        TemplateScope::Model(m) => format!("m={m}"),
    };
    format!("phones:tpl:{account}:{brand}:{scope}:{template}")
}

/// The common output key of a model in an account.
pub fn common_key(account: &str, brand: &str, model: &str) -> String {
    format!("common:{account}:{brand}:{model}")
}

/// A JSON document of a type, or why it is not usable.
enum Found {
    Doc(Value),
    Missing,
    Malformed(String),
    OtherType(Option<DocType>),
}

fn classify(doc: Option<&Arc<SourceDoc>>, wanted: DocType) -> Found {
    let Some(doc) = doc else {
        return Found::Missing;
    };
    match doc.json() {
        None => Found::Malformed(match &doc.body {
            crate::couch::Body::Malformed(why) => why.clone(),
            crate::couch::Body::Json(_) => unreachable!("json() is None"),
        }),
        Some(json) => match model::doc_type(&json) {
            Some(t) if t == wanted => Found::Doc(json),
            other => Found::OtherType(other),
        },
    }
}

/// Typed reads on top of `Reads`, collecting issues.
struct Docs<'r, 'a> {
    reads: &'r mut Reads<'a>,
    issues: Vec<Issue>,
}

impl<'r, 'a> Docs<'r, 'a> {
    fn issue(&mut self, source: &str, doc: &str, reason: impl Into<String>) {
        self.issues.push(Issue::doc(source, doc, reason));
    }

    fn problems(&mut self, doc: &str, problems: Vec<String>) {
        for p in problems {
            self.issue(UNITS, doc, p);
        }
    }

    fn account(&mut self, id: &str) -> Result<Account, String> {
        match classify(self.reads.get(UNITS, id), DocType::Account) {
            Found::Doc(json) => {
                let parsed = model::parse_account(id, &json)?;
                self.problems(id, parsed.problems);
                Ok(parsed.value)
            }
            Found::Missing | Found::OtherType(None) => Err(format!("account {id} does not exist")),
            Found::Malformed(why) => Err(format!("account {id} cannot be read: {why}")),
            Found::OtherType(Some(t)) => Err(format!("{id} is a {}, not an account", t.name())),
        }
    }

    /// The provision config of an account (the smallest id when several).
    fn provision_config(&mut self, account: &str) -> Option<ProvisionConfig> {
        let docs: Vec<&'a Arc<SourceDoc>> = self.reads.view(UNITS, &pc_view(account)).collect();
        let mut found: Option<ProvisionConfig> = None;
        for doc in docs {
            let Some(json) = doc.json() else {
                self.issue(
                    UNITS,
                    &doc.id,
                    "the provision config cannot be read; ignored",
                );
                continue;
            };
            if model::doc_type(&json) != Some(DocType::ProvisionConfig)
                || model::account_of(&json) != Some(account)
            {
                continue;
            }
            if let Some(first) = &found {
                let why = format!(
                    "account {account} has another provision config ({}); this one is ignored",
                    first.id
                );
                self.issue(UNITS, &doc.id, why);
                continue;
            }
            match model::parse_provision_config(&doc.id, &json) {
                Ok(parsed) => {
                    self.problems(&doc.id, parsed.problems);
                    found = Some(parsed.value);
                }
                Err(why) => self.issue(UNITS, &doc.id, why),
            }
        }
        found
    }

    /// The provision configs of a chain, root first (`None` where missing).
    fn chain_configs(&mut self, chain: &[String]) -> Vec<(String, Option<ProvisionConfig>)> {
        chain
            .iter()
            .map(|account| (account.clone(), self.provision_config(account)))
            .collect()
    }

    fn phone_model_docs(&mut self, key: &NodeKey) -> Vec<PhoneModelDoc> {
        let docs: Vec<&'a Arc<SourceDoc>> = self.reads.view(UNITS, &key.view()).collect();
        let mut out = Vec::new();
        for doc in docs {
            let Some(json) = doc.json() else {
                self.issue(
                    UNITS,
                    &doc.id,
                    "the phone model document cannot be read; ignored",
                );
                continue;
            };
            if model::doc_type(&json) != Some(DocType::PhoneModel) {
                continue;
            }
            match model::parse_phone_model(&doc.id, &json) {
                Ok(parsed) if NodeKey::of(&parsed) == *key => out.push(parsed),
                Ok(_) => {}
                Err(why) => self.issue(UNITS, &doc.id, format!("{why}; the document is ignored")),
            }
        }
        out
    }

    fn effective_model(
        &mut self,
        brand: &str,
        family: Option<&str>,
        model: &str,
    ) -> Result<EffectiveModel, String> {
        let mut notes = Vec::new();
        let found = catalogue::effective_model(
            brand,
            family,
            model,
            &mut |key| self.phone_model_docs(key),
            &mut notes,
        );
        for (doc, why) in notes {
            self.issue(UNITS, &doc, why);
        }
        found
    }

    /// The override of `template` for a model in an account: account
    /// before global, model before family before brand.
    fn template_override(
        &mut self,
        account: &str,
        m: &EffectiveModel,
        template: &str,
    ) -> Option<TemplateOverride> {
        let scopes = [
            TemplateScope::Model(m.model.clone()),
            TemplateScope::Family(m.family.clone()),
            TemplateScope::Brand,
        ];
        for owner in [Some(account), None] {
            for scope in &scopes {
                let view = template_view(owner, &m.brand, scope, template);
                let mut docs: Vec<&'a Arc<SourceDoc>> = self.reads.view(UNITS, &view).collect();
                docs.retain(|d| {
                    d.json()
                        .is_none_or(|json| model::doc_type(&json) == Some(DocType::Template))
                });
                let Some(doc) = docs.first() else {
                    continue;
                };
                for other in &docs[1..] {
                    let why = format!(
                        "another override ({}) replaces {template} at the same scope; this one is ignored",
                        doc.id
                    );
                    self.issue(UNITS, &other.id, why);
                }
                return Some(self.override_body(doc, template));
            }
        }
        None
    }

    /// An override's source; an unusable override still overrides (as a
    /// broken template), so its files fail instead of silently falling
    /// back to the shipped template.
    fn override_body(&mut self, doc: &SourceDoc, template: &str) -> TemplateOverride {
        let source = match doc.json() {
            None => Err("the template override cannot be read".to_string()),
            Some(json) => match model::parse_template(&doc.id, &json).map(|t| t.body) {
                Ok(TemplateBody::Inline(source)) => Ok(source),
                Ok(TemplateBody::Attachment(name)) => self.attachment(&doc.id, &name),
                Err(why) => Err(why),
            },
        };
        if let Err(why) = &source {
            self.issue(UNITS, &doc.id, format!("template override: {why}"));
        }
        TemplateOverride {
            doc: doc.id.clone(),
            template: template.to_string(),
            source,
        }
    }

    fn attachment(&mut self, doc: &str, name: &str) -> Result<String, String> {
        let Some(body) = self.reads.get(TEMPLATE_BODIES, doc).and_then(|d| d.json()) else {
            return Err(format!("attachment {name:?} is not loaded yet"));
        };
        if let Some(error) = body.get("error").and_then(Value::as_str) {
            return Err(format!("attachment {name:?}: {error}"));
        }
        body.get("text")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("attachment {name:?} is not text"))
    }
}

/// The merge layers that do not depend on a unit, split around where the
/// unit layers go: (model defaults + account defaults, account configs).
fn account_layers(
    model: &EffectiveModel,
    chain: &[(String, Option<ProvisionConfig>)],
) -> (Vec<Layer>, Vec<Layer>) {
    let mut weak = vec![Layer {
        origin: Origin {
            layer: LayerKind::ModelDefaults,
            doc: format!("catalogue:{}", model.path()),
            account: None,
            via: None,
        },
        value: match vendors::defaults(&model.schema) {
            Value::Object(map) => map,
            _ => Map::new(),
        },
        rank: 0,
    }];
    let mut strong = Vec::new();
    for (rank, (account, pc)) in chain.iter().enumerate() {
        let Some(pc) = pc else {
            continue;
        };
        let origin = |layer| Origin {
            layer,
            doc: pc.id.clone(),
            account: Some(account.clone()),
            via: None,
        };
        weak.push(Layer {
            origin: origin(LayerKind::AccountDefaults),
            value: pc.defaults.clone(),
            rank,
        });
        strong.push(Layer {
            origin: origin(LayerKind::AccountConfig),
            value: pc.config.clone(),
            rank,
        });
    }
    (weak, strong)
}

fn chain_locks(chain: &[(String, Option<ProvisionConfig>)]) -> Vec<(String, model::LockTree)> {
    chain
        .iter()
        .map(|(account, pc)| {
            (
                account.clone(),
                pc.as_ref().map(|p| p.locks.clone()).unwrap_or_default(),
            )
        })
        .collect()
}

fn report_dropped(docs: &mut Docs<'_, '_>, merged: &Merged) {
    for dropped in &merged.dropped {
        let doc = dropped.origin.doc.clone();
        docs.issue(UNITS, &doc, super::explain::dropped_reason(dropped));
    }
}

/// A file as the cache holds it.
fn file_json(spec: &FileSpec, body: &str) -> Value {
    json!({"content_type": spec.content_type, "etag": etag(body), "body": body})
}

/// A content hash of a file (hex, 128 bits).
pub fn etag(body: &str) -> String {
    Sha256::digest(body.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn model_json(m: &EffectiveModel) -> Value {
    json!({"brand": m.brand, "family": m.family, "model": m.model, "meta": m.meta})
}

fn account_json(account: &Account) -> Value {
    json!({"id": account.id, "name": account.name, "realm": account.realm})
}

/// The templates a set of files needs, with the overrides that apply.
fn templates_for(
    docs: &mut Docs<'_, '_>,
    account: &str,
    m: &EffectiveModel,
    specs: &[FileSpec],
) -> Arc<Templates> {
    let mut names: Vec<&str> = specs.iter().map(|s| s.template).collect();
    names.sort_unstable();
    names.dedup();
    let overrides: Vec<TemplateOverride> = names
        .into_iter()
        .filter_map(|name| docs.template_override(account, m, name))
        .collect();
    render::templates(&overrides)
}

/// Renders `specs`; the first failure fails the whole output (the last
/// good files keep being served).
fn render_files(
    docs: &mut Docs<'_, '_>,
    templates: &Templates,
    specs: &[FileSpec],
    context: &Value,
) -> Result<Map<String, Value>, ()> {
    let mut files = Map::new();
    let mut failed = false;
    for spec in specs {
        match templates.render(spec.template, context) {
            Ok(body) => {
                files.insert(spec.name.clone(), file_json(spec, &body));
            }
            Err(why) => {
                let doc = templates.override_of(spec.template).map(str::to_string);
                docs.issues.push(Issue {
                    source: Arc::from(UNITS),
                    doc,
                    reason: format!("{}: {why}", spec.name),
                });
                failed = true;
            }
        }
    }
    if failed { Err(()) } else { Ok(files) }
}

/// The document an output is named after, parsed (its problems recorded);
/// `Err` is the output when there is none to build: absent, or failed
/// with the reason the document cannot be read.
fn own_document<T>(
    docs: &mut Docs<'_, '_>,
    id: &str,
    kind: DocType,
    parse: fn(&str, &Value) -> Result<model::Parsed<T>, String>,
) -> Result<T, Built> {
    let failed = |why: String| Built::Failed {
        issues: vec![Issue::doc(UNITS, id, why)],
    };
    let json = match classify(docs.reads.get(UNITS, id), kind) {
        Found::Doc(json) => json,
        Found::Malformed(why) => return Err(failed(why)),
        _ => return Err(Built::Absent),
    };
    let parsed = parse(id, &json).map_err(failed)?;
    docs.problems(id, parsed.problems);
    Ok(parsed.value)
}

/// Builds `account:<id>`.
pub fn build_account(id: &str, reads: &mut Reads<'_>) -> Built {
    let mut docs = Docs {
        reads,
        issues: Vec::new(),
    };
    let account = match own_document(&mut docs, id, DocType::Account, model::parse_account) {
        Ok(account) => account,
        Err(built) => return built,
    };
    let mut reason = None;
    if !account.enabled {
        reason = Some("disabled");
    } else if let Some(realm) = &account.realm {
        let view: Vec<_> = docs.reads.view(UNITS, &realm_view(realm)).collect();
        let others: Vec<String> = view
            .iter()
            .filter(|d| d.id != id)
            .filter_map(|d| {
                let json = d.json()?;
                let parsed = model::parse_account(&d.id, &json).ok()?.value;
                (model::doc_type(&json) == Some(DocType::Account)
                    && parsed.enabled
                    && parsed.realm.as_deref() == Some(realm))
                .then(|| d.id.clone())
            })
            .collect();
        if !others.is_empty() {
            let why = format!(
                "realm {realm} is also the realm of account(s) {}; no account is served on it",
                others.join(", ")
            );
            docs.issue(UNITS, id, why);
            reason = Some("duplicate_realm");
        }
    } else {
        reason = Some("no_realm");
    }
    let allowed = docs
        .provision_config(id)
        .map(|pc| pc.allowed)
        .unwrap_or(model::AllowList::Anyone);
    let content = json!({
        "id": account.id, "name": account.name, "realm": account.realm, "enabled": account.enabled,
        "tree": account.tree, "served": reason.is_none(), "reason": reason,
        "allowed_cidrs": allowed.to_strings(),
    });
    Built::Content {
        content,
        issues: docs.issues,
    }
}

/// Builds `common:<account>:<brand>:<model>`.
pub fn build_common(
    account_id: &str,
    brand: &str,
    model_name: &str,
    reads: &mut Reads<'_>,
) -> Built {
    let mut docs = Docs {
        reads,
        issues: Vec::new(),
    };
    let units: Vec<&Arc<SourceDoc>> = docs
        .reads
        .view(UNITS, &model_view(account_id, brand, model_name))
        .collect();
    let wanted = units.iter().any(|doc| {
        doc.json().is_some_and(|json| {
            model::doc_type(&json) == Some(DocType::Unit)
                && model::parse_unit(&doc.id, &json).is_ok_and(|u| {
                    let u = u.value;
                    u.enabled
                        && u.account_id == account_id
                        && u.brand.as_deref() == Some(brand)
                        && u.model.as_deref() == Some(model_name)
                })
        })
    });
    if !wanted {
        return Built::Absent;
    }
    // Without an account, vendor or model there is nothing to serve; the
    // output still exists (with what it read as dependencies), so the
    // document that fixes it rebuilds it. The units report the problem.
    let unserved = |reason: &str| Built::Content {
        content: json!({"account_id": account_id, "brand": brand, "model": model_name,
                        "served": false, "reason": reason, "files": {}}),
        issues: Vec::new(),
    };
    let Ok(account) = docs.account(account_id) else {
        return unserved("no_account");
    };
    docs.issues.clear();
    let Some(vendor) = vendors::by_brand(brand) else {
        return unserved("unknown_model");
    };
    let Ok(m) = docs.effective_model(brand, None, model_name) else {
        return unserved("unknown_model");
    };
    let chain = docs.chain_configs(&account.chain());
    let (mut layers, strong) = account_layers(&m, &chain);
    layers.extend(strong);
    let merged = merge::merge(&layers, &m.schema, &chain_locks(&chain));
    report_dropped(&mut docs, &merged);
    let model_ref = ModelRef {
        brand,
        family: Some(&m.family),
        model: model_name,
        meta: &m.meta,
    };
    // Never `files()` with a made-up MAC: `000000000000.cfg` is Polycom's
    // common master file, and a made-up MAC could collide the same way.
    let common = vendor.common_files(&model_ref);
    let context = json!({
        "account": account_json(&account),
        "model": model_json(&m),
        "config": merged.config,
        "files": file_names(&common),
    });
    let templates = templates_for(&mut docs, account_id, &m, &common);
    let Ok(files) = render_files(&mut docs, &templates, &common, &context) else {
        return Built::Failed {
            issues: docs.issues,
        };
    };
    let mut content = json!({
        "account_id": account_id, "brand": brand, "family": m.family, "model": model_name,
        "served": true, "reason": null,
        "config": merged.config, "files": files,
    });
    set_provenance(&mut content, &merged);
    Built::Content {
        content,
        issues: docs.issues,
    }
}

fn file_names(specs: &[FileSpec]) -> Value {
    let names = |class| {
        specs
            .iter()
            .filter(|f| f.class == class)
            .map(|f| f.name.clone())
            .collect::<Vec<_>>()
    };
    json!({"common": names(FileClass::Common), "device": names(FileClass::Device)})
}

/// Why a unit is not served (the first reason that applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unserved {
    Disabled,
    NoAccount,
    AccountDisabled,
    NoMac,
    UnknownModel,
    DuplicateMac,
    BadCredentials,
}

impl Unserved {
    fn name(self) -> &'static str {
        match self {
            Unserved::Disabled => "disabled",
            Unserved::NoAccount => "no_account",
            Unserved::AccountDisabled => "account_disabled",
            Unserved::NoMac => "no_mac",
            Unserved::UnknownModel => "unknown_model",
            Unserved::DuplicateMac => "duplicate_mac",
            Unserved::BadCredentials => "bad_credentials",
        }
    }
}

/// What the unit's parts gave while building.
struct UnitState {
    reason: Option<Unserved>,
}

impl UnitState {
    fn deny(&mut self, why: Unserved) {
        self.reason.get_or_insert(why);
    }
}

/// Builds `unit:<id>`.
pub fn build_unit(id: &str, reads: &mut Reads<'_>) -> Built {
    let mut docs = Docs {
        reads,
        issues: Vec::new(),
    };
    let unit = match own_document(&mut docs, id, DocType::Unit, model::parse_unit) {
        Ok(unit) => unit,
        Err(built) => return built,
    };
    let mut state = UnitState { reason: None };
    if !unit.enabled {
        state.deny(Unserved::Disabled);
    }
    let account = match docs.account(&unit.account_id) {
        Ok(account) => Some(account),
        Err(why) => {
            docs.issue(UNITS, id, why);
            state.deny(Unserved::NoAccount);
            None
        }
    };
    if account.as_ref().is_some_and(|a| !a.enabled) {
        state.deny(Unserved::AccountDisabled);
    }
    if unit.mac.is_none() {
        state.deny(Unserved::NoMac);
    }
    check_duplicate_mac(&mut docs, &unit, &mut state);
    let model = resolve_model(&mut docs, &unit, &mut state);
    let mut content = json!({
        "unit": unit_json(&unit, model.as_ref().map(|(m, _)| m)),
        "account": account.as_ref().map(account_json),
    });
    let Some(account) = account else {
        return finish(content, state, docs);
    };
    let chain = docs.chain_configs(&account.chain());
    let own_pc = chain.last().and_then(|(_, pc)| pc.clone());
    let auth = credentials(&mut docs, &unit, own_pc.as_ref(), &account, &mut state);
    content["auth"] = auth.map_or(Value::Null, |a| a.to_json());
    let Some((m, vendor)) = model else {
        let merged = unit_merge(&mut docs, &unit, None, &chain);
        content["config"] = Value::Object(merged.config.clone());
        set_provenance(&mut content, &merged);
        return finish(content, state, docs);
    };
    let merged = unit_merge(&mut docs, &unit, Some(&m), &chain);
    let lines = lines(&mut docs, &unit, &account);
    content["config"] = Value::Object(merged.config.clone());
    set_provenance(&mut content, &merged);
    content["lines"] = Value::Array(lines.iter().map(without_secret).collect());
    let model_ref = ModelRef {
        brand: &m.brand,
        family: Some(&m.family),
        model: &m.model,
        meta: &m.meta,
    };
    docs.problems(&unit.id, vendor.model_problems(&model_ref));
    let all = match &unit.mac {
        Some(mac) => vendor.files(&model_ref, mac),
        None => vendor.common_files(&model_ref),
    };
    let device: Vec<FileSpec> = all
        .iter()
        .filter(|f| f.class == FileClass::Device)
        .cloned()
        .collect();
    content["common"] = json!({
        "key": common_key(&unit.account_id, &m.brand, &m.model),
        "files": all.iter().filter(|f| f.class == FileClass::Common).map(|f| f.name.clone()).collect::<Vec<_>>(),
    });
    if let Some(mac) = unit.mac {
        let context = json!({
            "account": account_json(&account), "model": model_json(&m), "config": merged.config,
            "files": file_names(&all), "unit": {"id": unit.id, "name": unit.name},
            "mac": {"lower": mac.lower(), "upper": mac.upper(), "colons": mac.colons()},
            "lines": lines,
        });
        docs.problems(&unit.id, vendors::config_problems(&context));
        let templates = templates_for(&mut docs, &unit.account_id, &m, &device);
        match render_files(&mut docs, &templates, &device, &context) {
            Ok(files) => content["files"] = Value::Object(files),
            Err(()) => {
                return Built::Failed {
                    issues: docs.issues,
                };
            }
        }
    }
    finish(content, state, docs)
}

fn set_provenance(content: &mut Value, merged: &Merged) {
    let (paths, origins) = merged.compact_provenance();
    content["provenance"] = paths;
    content["origins"] = origins;
}

fn finish(mut content: Value, state: UnitState, docs: Docs<'_, '_>) -> Built {
    content["served"] = json!(state.reason.is_none());
    content["reason"] = json!(state.reason.map(Unserved::name));
    for field in [
        "auth",
        "config",
        "provenance",
        "origins",
        "lines",
        "common",
        "files",
    ] {
        if content.get(field).is_none() {
            content[field] = match field {
                "lines" | "origins" => json!([]),
                "auth" | "common" => Value::Null,
                _ => json!({}),
            };
        }
    }
    Built::Content {
        content,
        issues: docs.issues,
    }
}

fn unit_json(unit: &Unit, model: Option<&EffectiveModel>) -> Value {
    json!({
        "id": unit.id, "name": unit.name, "account_id": unit.account_id,
        "mac": unit.mac.map(|m| m.lower()), "brand": unit.brand,
        "family": model.map(|m| m.family.clone()).or_else(|| unit.family.clone()),
        "model": unit.model, "enabled": unit.enabled,
    })
}

fn check_duplicate_mac(docs: &mut Docs<'_, '_>, unit: &Unit, state: &mut UnitState) {
    let Some(mac) = unit.mac else {
        return;
    };
    let view: Vec<&Arc<SourceDoc>> = docs
        .reads
        .view(UNITS, &mac_view(&unit.account_id, &mac))
        .collect();
    if !unit.enabled {
        return;
    }
    let others: Vec<String> = view
        .iter()
        .filter(|d| d.id != unit.id)
        .filter(|d| {
            d.json().is_some_and(|json| {
                model::doc_type(&json) == Some(DocType::Unit)
                    && model::parse_unit(&d.id, &json).is_ok_and(|o| {
                        o.value.enabled
                            && o.value.account_id == unit.account_id
                            && o.value.mac == Some(mac)
                    })
            })
        })
        .map(|d| d.id.clone())
        .collect();
    if !others.is_empty() {
        let why = format!(
            "MAC {mac} is also the MAC of enabled unit(s) {} of this account; none of them is served",
            others.join(", ")
        );
        docs.issue(UNITS, &unit.id, why);
        state.deny(Unserved::DuplicateMac);
    }
}

fn resolve_model(
    docs: &mut Docs<'_, '_>,
    unit: &Unit,
    state: &mut UnitState,
) -> Option<(EffectiveModel, &'static dyn Vendor)> {
    let (Some(brand), Some(model_name)) = (&unit.brand, &unit.model) else {
        docs.issue(
            UNITS,
            &unit.id,
            "the unit needs a brand and a model; it has no files",
        );
        state.deny(Unserved::UnknownModel);
        return None;
    };
    let found = docs.effective_model(brand, unit.family.as_deref(), model_name);
    let vendor = vendors::by_brand(brand);
    match (found, vendor) {
        (Ok(m), Some(vendor)) => Some((m, vendor)),
        (Err(why), _) => {
            docs.issue(UNITS, &unit.id, format!("{why}; the unit has no files"));
            state.deny(Unserved::UnknownModel);
            None
        }
        (Ok(_), None) => {
            docs.issue(
                UNITS,
                &unit.id,
                format!("caldera has no vendor code for brand {brand:?}; the unit has no files"),
            );
            state.deny(Unserved::UnknownModel);
            None
        }
    }
}

/// The unit's HTTP credentials: its own, else its account's provision
/// config's.
fn credentials(
    docs: &mut Docs<'_, '_>,
    unit: &Unit,
    own_pc: Option<&ProvisionConfig>,
    account: &Account,
    state: &mut UnitState,
) -> Option<auth::Stored> {
    let (given, doc) = match (
        &unit.provisioning,
        own_pc.and_then(|pc| pc.provisioning.as_ref().map(|p| (p, pc.id.as_str()))),
    ) {
        (Some(own), _) => (own, unit.id.as_str()),
        (None, Some((inherited, pc))) => (inherited, pc),
        (None, None) => return None,
    };
    match given {
        Credentials::Valid {
            username,
            password,
            allow_basic,
        } => {
            let realm = account.realm.as_deref().unwrap_or(&account.id);
            Some(auth::Stored::new(username, realm, password, *allow_basic))
        }
        Credentials::Invalid(why) => {
            docs.issue(
                UNITS,
                doc,
                format!("{why}; the unit's files are not served until it is fixed"),
            );
            state.deny(Unserved::BadCredentials);
            None
        }
    }
}

/// The unit's merge: every layer in the spec's order.
fn unit_merge(
    docs: &mut Docs<'_, '_>,
    unit: &Unit,
    m: Option<&EffectiveModel>,
    chain: &[(String, Option<ProvisionConfig>)],
) -> Merged {
    let unit_rank = chain.len();
    let (mut layers, strong) = match m {
        Some(m) => account_layers(m, chain),
        None => {
            let placeholder = EffectiveModel {
                brand: String::new(),
                family: String::new(),
                model: String::new(),
                description: None,
                schema: json!({}),
                meta: json!({}),
                sources: Vec::new(),
            };
            let (mut weak, strong) = account_layers(&placeholder, chain);
            weak.remove(0);
            (weak, strong)
        }
    };
    layers.push(Layer {
        origin: Origin {
            layer: LayerKind::Unit,
            doc: unit.id.clone(),
            account: None,
            via: None,
        },
        value: unit.config.clone(),
        rank: unit_rank,
    });
    layers.extend(policy_layers(docs, unit, unit_rank));
    layers.extend(strong);
    let schema = m.map_or_else(|| json!({}), |m| m.schema.clone());
    let merged = merge::merge(&layers, &schema, &chain_locks(chain));
    report_dropped(docs, &merged);
    merged
}

/// Each profile's policies in order, then the unit's own.
fn policy_layers(docs: &mut Docs<'_, '_>, unit: &Unit, rank: usize) -> Vec<Layer> {
    let mut ids: Vec<(String, Option<String>)> = Vec::new();
    for profile_id in &unit.profiles {
        let found = classify(docs.reads.get(UNITS, profile_id), DocType::Profile);
        let Some(profile) = owned(
            docs,
            unit,
            profile_id,
            "profile",
            found,
            model::parse_profile,
        ) else {
            continue;
        };
        ids.extend(
            profile
                .policies
                .into_iter()
                .map(|p| (p, Some(profile_id.clone()))),
        );
    }
    ids.extend(unit.policies.iter().map(|p| (p.clone(), None)));
    let mut layers = Vec::new();
    for (policy_id, via) in ids {
        let found = classify(docs.reads.get(UNITS, &policy_id), DocType::Policy);
        let Some(policy) = owned(docs, unit, &policy_id, "policy", found, model::parse_policy)
        else {
            continue;
        };
        layers.push(Layer {
            origin: Origin {
                layer: LayerKind::Policy,
                doc: policy_id,
                account: None,
                via,
            },
            value: policy.config,
            rank,
        });
    }
    layers
}

/// A profile or policy the unit names, if it exists in the unit's account.
fn owned<T: HasAccount>(
    docs: &mut Docs<'_, '_>,
    unit: &Unit,
    id: &str,
    what: &str,
    found: Found,
    parse: fn(&str, &Value) -> Result<model::Parsed<T>, String>,
) -> Option<T> {
    let json = match found {
        Found::Doc(json) => json,
        Found::Missing | Found::OtherType(None) => {
            docs.issue(
                UNITS,
                &unit.id,
                format!("{what} {id} does not exist; skipped"),
            );
            return None;
        }
        Found::OtherType(Some(t)) => {
            docs.issue(
                UNITS,
                &unit.id,
                format!("{id} is a {}, not a {what}; skipped", t.name()),
            );
            return None;
        }
        Found::Malformed(why) => {
            docs.issue(
                UNITS,
                id,
                format!("the {what} cannot be read ({why}); skipped"),
            );
            return None;
        }
    };
    match parse(id, &json) {
        Ok(parsed) if parsed.value.account() != unit.account_id => {
            docs.issue(
                UNITS,
                &unit.id,
                format!("{what} {id} belongs to another account; skipped"),
            );
            None
        }
        Ok(parsed) => {
            docs.problems(id, parsed.problems);
            Some(parsed.value)
        }
        Err(why) => {
            docs.issue(UNITS, id, format!("{why}; skipped"));
            None
        }
    }
}

trait HasAccount {
    fn account(&self) -> &str;
}

impl HasAccount for model::Profile {
    fn account(&self) -> &str {
        &self.account_id
    }
}

impl HasAccount for model::Policy {
    fn account(&self) -> &str {
        &self.account_id
    }
}

/// The lines with their SIP credentials (for device templates only).
fn lines(docs: &mut Docs<'_, '_>, unit: &Unit, account: &Account) -> Vec<Value> {
    let mut out = Vec::new();
    for line in &unit.lines {
        match line_device(docs, unit, line) {
            Ok(device) => {
                let label = line
                    .label
                    .clone()
                    .or_else(|| line.display_name.clone())
                    .unwrap_or_else(|| device.username.clone());
                let display = line.display_name.clone().unwrap_or_else(|| label.clone());
                let realm = device
                    .realm
                    .clone()
                    .or_else(|| account.realm.clone())
                    .unwrap_or_default();
                out.push(json!({
                    "line": line.line, "device_id": line.device_id, "label": label, "display_name": display,
                    "username": device.username, "password": device.password, "realm": realm,
                }));
            }
            Err(why) => docs.issue(
                UNITS,
                &unit.id,
                format!("line {}: {why}; the line is left out", line.line),
            ),
        }
    }
    out
}

fn line_device(docs: &mut Docs<'_, '_>, unit: &Unit, line: &Line) -> Result<model::Device, String> {
    let Some(doc) = docs.reads.get(SIP_AUTH, &line.device_id) else {
        return Err(format!(
            "device {} does not exist in sip_auth",
            line.device_id
        ));
    };
    let Some(json) = doc.json() else {
        return Err(format!("device {} cannot be read", line.device_id));
    };
    let device = model::parse_device(&line.device_id, &json)
        .map_err(|why| format!("device {}: {why}", line.device_id))?;
    // Never hand one tenant's SIP credentials to another tenant's phone.
    if device.account_id.as_deref() != Some(unit.account_id.as_str()) {
        return Err(format!(
            "device {} belongs to another account",
            line.device_id
        ));
    }
    Ok(device)
}

fn without_secret(line: &Value) -> Value {
    let mut line = line.clone();
    if let Some(map) = line.as_object_mut() {
        map.remove("password");
    }
    line
}
