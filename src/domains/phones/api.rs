//! The configuration API's shell (the seed's units, policies, profiles,
//! account provision and unit options APIs): reads from the in-memory copy
//! of `units` (`sources`), validates with `validate` before writing,
//! writes to CouchDB with optimistic concurrency (`_rev` in the body or
//! `If-Match`), then hands the written document to the engine and waits
//! (up to `phones.write_wait_ms`) until the phone files are rebuilt, so the
//! next read sees them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::catalogue::{self, NodeKey};
use super::mac::Mac;
use super::model::{self, DocType, PhoneModelDoc, UNITS};
use super::service::PhonesService;
use super::sources::Sources;
use super::validate::{self, Lookup, Problem, UnitRef};
use crate::couch::{Body, Db, ErrorKind};
use crate::rebuild::engine::EngineHandle;

/// Why a configuration request failed.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiFailure {
    /// The copy of `units` is not loaded yet.
    NotReady,
    NotFound(String),
    BadRequest(String),
    /// Refused values (409 when one is `locked`, i.e. a lock or a stale `_rev`).
    Refused(Vec<Problem>),
    Unavailable(String),
}

type Answer = Result<Value, ApiFailure>;

/// The collections under `/v1/accounts/{account}/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    Units,
    Policies,
    Profiles,
}

impl Collection {
    pub fn kind(self) -> DocType {
        match self {
            Collection::Units => DocType::Unit,
            Collection::Policies => DocType::Policy,
            Collection::Profiles => DocType::Profile,
        }
    }
}

/// The configuration API.
pub struct PhonesApi {
    pub sources: Arc<Sources>,
    pub db: Db,
    /// `sip_auth`, read for the devices a unit's lines name.
    pub sip_auth: Db,
    pub engine: Option<EngineHandle>,
    pub service: Arc<PhonesService>,
    pub write_wait: Duration,
}

impl Lookup for Sources {
    fn doc(&self, id: &str) -> Option<Value> {
        self.get(id).map(|s| (*s.json()).clone())
    }

    fn enabled_units_with_mac(&self, account: &str, mac: &Mac) -> Vec<String> {
        self.of_type(DocType::Unit, Some(account))
            .into_iter()
            .filter(|(_, s)| {
                s.unit
                    .as_ref()
                    .is_some_and(|u| u.enabled && u.mac == Some(*mac))
            })
            .map(|(id, _)| id)
            .collect()
    }

    fn device(&self, _id: &str) -> Option<(Option<String>, bool)> {
        // Devices are read from CouchDB per write (`WithDevices`).
        None
    }

    fn phone_models(&self, key: &NodeKey) -> Vec<PhoneModelDoc> {
        phone_model_docs(self)
            .into_iter()
            .filter(|d| NodeKey::of(d) == *key)
            .collect()
    }

    fn provision_config(&self, account: &str) -> Option<(String, Value)> {
        let mut found = self.of_type(DocType::ProvisionConfig, Some(account));
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
            .into_iter()
            .next()
            .map(|(id, s)| (id, (*s.json()).clone()))
    }

    fn subtree(&self, account: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::from([account.to_string()]);
        for (id, stored) in self.of_type(DocType::Account, None) {
            if let Ok(parsed) = model::parse_account(&id, &stored.json())
                && parsed.value.tree.iter().any(|a| a == account)
            {
                out.insert(id);
            }
        }
        out
    }

    fn units_of(&self, accounts: &BTreeSet<String>) -> Vec<UnitRef> {
        self.of_type(DocType::Unit, None)
            .into_iter()
            .filter(|(_, s)| s.account.as_ref().is_some_and(|a| accounts.contains(a)))
            .filter_map(|(id, s)| {
                let u = s.unit?;
                Some(UnitRef {
                    id,
                    brand: u.brand,
                    family: u.family,
                    model: u.model,
                    profiles: u.profiles,
                    policies: u.policies,
                })
            })
            .collect()
    }
}

/// The copy of `units`, plus the devices a write names, read from
/// `sip_auth` for that write.
struct WithDevices<'a> {
    sources: &'a Sources,
    devices: std::collections::HashMap<String, (Option<String>, bool)>,
}

impl Lookup for WithDevices<'_> {
    fn doc(&self, id: &str) -> Option<Value> {
        self.sources.doc(id)
    }
    fn enabled_units_with_mac(&self, account: &str, mac: &Mac) -> Vec<String> {
        self.sources.enabled_units_with_mac(account, mac)
    }
    fn device(&self, id: &str) -> Option<(Option<String>, bool)> {
        self.devices.get(id).cloned()
    }
    fn phone_models(&self, key: &NodeKey) -> Vec<PhoneModelDoc> {
        self.sources.phone_models(key)
    }
    fn provision_config(&self, account: &str) -> Option<(String, Value)> {
        self.sources.provision_config(account)
    }
    fn subtree(&self, account: &str) -> BTreeSet<String> {
        self.sources.subtree(account)
    }
    fn units_of(&self, accounts: &BTreeSet<String>) -> Vec<UnitRef> {
        self.sources.units_of(accounts)
    }
}

fn phone_model_docs(sources: &Sources) -> Vec<PhoneModelDoc> {
    sources
        .of_type(DocType::PhoneModel, None)
        .into_iter()
        .filter_map(|(id, s)| model::parse_phone_model(&id, &s.json()).ok())
        .collect()
}

fn stale(given: &str, current: Option<&str>) -> Problem {
    let reason = match current {
        Some(current) => {
            format!("revision {given} is stale: the document is at {current}; read it again")
        }
        None => format!("revision {given} is given, but the document does not exist"),
    };
    Problem {
        path: "/_rev".into(),
        reason,
        locked: true,
    }
}

/// RFC 7396 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(changes) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let object = target.as_object_mut().expect("an object");
            for (key, value) in changes {
                if value.is_null() {
                    object.remove(key);
                } else {
                    merge_patch(object.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// The revision a request names: `If-Match` or the body's `_rev`.
fn requested_rev(
    if_match: Option<&str>,
    body: Option<&Value>,
) -> Result<Option<String>, ApiFailure> {
    let header = if_match.map(|v| {
        v.trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_string()
    });
    let in_body = body
        .and_then(|b| b.get("_rev"))
        .and_then(Value::as_str)
        .map(str::to_string);
    match (header, in_body) {
        (Some(a), Some(b)) if a != b => Err(ApiFailure::BadRequest(format!(
            "If-Match ({a}) and the body's _rev ({b}) disagree"
        ))),
        (a, b) => Ok(a.or(b)),
    }
}

impl PhonesApi {
    fn ready(&self) -> Result<(), ApiFailure> {
        if self.sources.is_loaded() {
            Ok(())
        } else {
            Err(ApiFailure::NotReady)
        }
    }

    fn account(&self, id: &str) -> Result<model::Account, ApiFailure> {
        self.ready()?;
        validate::account(self.sources.as_ref(), id)
            .ok_or_else(|| ApiFailure::NotFound(format!("no account {id}")))
    }

    /// A stored document of `kind` in `account`.
    fn owned(&self, kind: DocType, account: &str, id: &str) -> Option<Value> {
        let stored = self.sources.get(id)?;
        (stored.kind == Some(kind) && stored.account.as_deref() == Some(account))
            .then(|| (*stored.json()).clone())
    }

    /// `GET …/{collection}`.
    pub fn list(&self, collection: Collection, account: &str) -> Answer {
        self.account(account)?;
        let docs: Vec<Value> = self
            .sources
            .of_type(collection.kind(), Some(account))
            .into_iter()
            .map(|(_, s)| (*s.json()).clone())
            .collect();
        let mut answer = json!({"account_id": account, collection_name(collection): docs});
        if collection == Collection::Units {
            answer["status"] = Value::Object(self.service.account_units(account));
        }
        Ok(answer)
    }

    /// `GET …/{collection}/{id}`.
    pub fn get(&self, collection: Collection, account: &str, id: &str) -> Answer {
        self.account(account)?;
        self.owned(collection.kind(), account, id).ok_or_else(|| {
            ApiFailure::NotFound(format!(
                "no {} {id} in account {account}",
                collection.kind().name()
            ))
        })
    }

    /// `POST …/{collection}`.
    pub async fn create(&self, collection: Collection, account: &str, body: Value) -> Answer {
        let id = match body.get("_id") {
            None | Some(Value::Null) => uuid::Uuid::new_v4().simple().to_string(),
            Some(Value::String(id)) if !id.is_empty() && !id.starts_with('_') => id.clone(),
            Some(_) => {
                return Err(ApiFailure::BadRequest(
                    "_id must be a string not starting with _".into(),
                ));
            }
        };
        if self.sources.get(&id).is_some() {
            return Err(ApiFailure::Refused(vec![Problem {
                path: "/_id".into(),
                reason: format!("{id} already exists"),
                locked: true,
            }]));
        }
        self.write(collection.kind(), account, &id, body, None, false)
            .await
    }

    /// `PUT …/{collection}/{id}` (creates it when missing).
    pub async fn replace(
        &self,
        collection: Collection,
        account: &str,
        id: &str,
        body: Value,
        if_match: Option<&str>,
    ) -> Answer {
        self.write(collection.kind(), account, id, body, if_match, false)
            .await
    }

    /// `PATCH …/{collection}/{id}`: a merge patch of the stored document.
    pub async fn patch(
        &self,
        collection: Collection,
        account: &str,
        id: &str,
        body: Value,
        if_match: Option<&str>,
    ) -> Answer {
        self.write(collection.kind(), account, id, body, if_match, true)
            .await
    }

    /// `DELETE …/{collection}/{id}`.
    pub async fn delete(
        &self,
        collection: Collection,
        account: &str,
        id: &str,
        if_match: Option<&str>,
    ) -> Answer {
        self.account(account)?;
        self.remove(collection.kind(), account, id, if_match).await
    }

    async fn remove(
        &self,
        kind: DocType,
        account: &str,
        id: &str,
        if_match: Option<&str>,
    ) -> Answer {
        let current = self.current(kind, account, id).await?;
        let Some(current) = current else {
            return Err(ApiFailure::NotFound(format!(
                "no {} {id} in account {account}",
                kind.name()
            )));
        };
        let rev = current["_rev"].as_str().unwrap_or_default().to_string();
        if let Some(given) = requested_rev(if_match, None)?
            && given != rev
        {
            return Err(ApiFailure::Refused(vec![stale(&given, Some(&rev))]));
        }
        let new_rev = match self.db.delete(id, &rev).await {
            Ok(rev) => rev,
            Err(err) if err.is(ErrorKind::Conflict) => {
                return Err(ApiFailure::Refused(vec![stale(&rev, None)]));
            }
            Err(err) => return Err(ApiFailure::Unavailable(err.to_string())),
        };
        self.sources.apply(id, &new_rev, None);
        self.rebuilt(id, &new_rev, None).await;
        Ok(json!({"_id": id, "_rev": new_rev, "_deleted": true}))
    }

    /// The stored document, read from CouchDB (the copy may lag a write
    /// made elsewhere); `NotFound` when it is another account's or type.
    async fn current(
        &self,
        kind: DocType,
        account: &str,
        id: &str,
    ) -> Result<Option<Value>, ApiFailure> {
        let doc = self
            .db
            .get(id)
            .await
            .map_err(|e| ApiFailure::Unavailable(e.to_string()))?;
        match doc {
            None => Ok(None),
            Some(doc)
                if model::doc_type(&doc) == Some(kind)
                    && model::account_of(&doc) == Some(account) =>
            {
                Ok(Some(doc))
            }
            Some(_) => Err(ApiFailure::NotFound(format!(
                "{id} is not a {} of account {account}",
                kind.name()
            ))),
        }
    }

    async fn write(
        &self,
        kind: DocType,
        account_id: &str,
        id: &str,
        body: Value,
        if_match: Option<&str>,
        patch: bool,
    ) -> Answer {
        let account = self.account(account_id)?;
        if !body.is_object() {
            return Err(ApiFailure::BadRequest(
                "the body is not a JSON object".into(),
            ));
        }
        let given = requested_rev(if_match, Some(&body))?;
        let current = self.current(kind, account_id, id).await?;
        let current_rev = current
            .as_ref()
            .and_then(|c| c["_rev"].as_str())
            .map(str::to_string);
        let mut problems = Vec::new();
        if let Some(given) = &given
            && current_rev.as_ref() != Some(given)
        {
            problems.push(stale(given, current_rev.as_deref()));
        }
        let mut doc = match (patch, &current) {
            (true, None) => {
                return Err(ApiFailure::NotFound(format!(
                    "no {} {id} in account {account_id}",
                    kind.name()
                )));
            }
            (true, Some(current)) => {
                let mut doc = current.clone();
                merge_patch(&mut doc, &body);
                doc
            }
            (false, _) => body,
        };
        let object = doc.as_object_mut().expect("checked above");
        object.remove("_rev");
        object.insert("_id".into(), json!(id));
        let devices = self.devices(&doc).await?;
        let lookup = WithDevices {
            sources: &self.sources,
            devices,
        };
        let lookup = &lookup;
        problems.extend(match kind {
            DocType::Unit => validate::unit(lookup, &account, id, &doc),
            DocType::Policy => validate::policy(lookup, &account, id, &doc),
            DocType::Profile => validate::profile(lookup, &account, &doc),
            DocType::ProvisionConfig => validate::provision_config_doc(lookup, &account, &doc),
            _ => Vec::new(),
        });
        if !problems.is_empty() {
            return Err(ApiFailure::Refused(problems));
        }
        let object = doc.as_object_mut().expect("an object");
        object.insert("type".into(), json!(kind.name()));
        object.insert("account_id".into(), json!(account_id));
        if let Some(rev) = &current_rev {
            object.insert("_rev".into(), json!(rev));
        }
        self.store(doc).await
    }

    /// The `sip_auth` devices the document's lines name: id → (account,
    /// has SIP credentials).
    async fn devices(
        &self,
        doc: &Value,
    ) -> Result<std::collections::HashMap<String, (Option<String>, bool)>, ApiFailure> {
        let ids: BTreeSet<String> = doc
            .get("lines")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|l| {
                l.get("device_id")
                    .or_else(|| l.get("device"))?
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let keys: Vec<String> = ids.into_iter().collect();
        let rows = match self.sip_auth.all_docs(&keys, true).await {
            Ok(rows) => rows,
            Err(err) if err.is(ErrorKind::NotFound) => return Ok(Default::default()),
            Err(err) => return Err(ApiFailure::Unavailable(err.to_string())),
        };
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let doc = row
                    .doc
                    .filter(|_| row.value.as_ref().is_some_and(|v| !v.deleted))?;
                let usable = model::parse_device(&row.key, &doc).is_ok();
                Some((
                    row.key,
                    (model::account_of(&doc).map(str::to_string), usable),
                ))
            })
            .collect())
    }

    /// Writes a validated document; the answer is the stored document.
    async fn store(&self, mut doc: Value) -> Answer {
        let id = doc["_id"].as_str().unwrap_or_default().to_string();
        let rev = match self.db.put(&doc).await {
            Ok(rev) => rev,
            Err(err) if err.is(ErrorKind::Conflict) => {
                let given = doc["_rev"].as_str().unwrap_or("(none)").to_string();
                return Err(ApiFailure::Refused(vec![stale(&given, None)]));
            }
            Err(err) => return Err(ApiFailure::Unavailable(err.to_string())),
        };
        doc["_rev"] = json!(rev);
        self.sources
            .apply(&id, &rev, Some(crate::json::JsonText::of(&doc)));
        self.rebuilt(&id, &rev, Some(doc.clone())).await;
        Ok(doc)
    }

    /// Hands the written document to the engine and waits for its outputs.
    async fn rebuilt(&self, id: &str, rev: &str, doc: Option<Value>) {
        if let Some(engine) = &self.engine
            && !engine
                .refresh(
                    UNITS,
                    id,
                    rev.to_string(),
                    doc.as_ref().map(Body::of),
                    self.write_wait,
                )
                .await
        {
            tracing::warn!(
                id,
                "the phone files were not rebuilt within phones.write_wait_ms; they will be"
            );
        }
    }

    /// `GET …/provision_config[?hierarchical=true]`.
    pub fn provision_config(&self, account_id: &str, hierarchical: bool) -> Answer {
        let account = self.account(account_id)?;
        let lookup = self.sources.as_ref();
        if !hierarchical {
            return lookup
                .provision_config(account_id)
                .map(|(_, doc)| doc)
                .ok_or_else(|| {
                    ApiFailure::NotFound(format!("account {account_id} has no provision config"))
                });
        }
        let chain: Vec<Value> = account
            .chain()
            .iter()
            .map(|id| {
                let name = validate::account(lookup, id).and_then(|a| a.name);
                let pc = lookup.provision_config(id).map(|(_, doc)| doc);
                json!({"account_id": id, "name": name, "provision_config": pc})
            })
            .collect();
        let locks = validate::chain_locks(lookup, &account);
        let listed = |upto: usize| -> Vec<Value> {
            let mut seen = BTreeSet::new();
            locks
                .iter()
                .take(upto)
                .flat_map(|(account, tree)| {
                    tree.paths().into_iter().map(move |p| (p, account.clone()))
                })
                .filter(|(path, _)| seen.insert(path.clone()))
                .map(|(path, account)| json!({"path": path, "locked_by": account}))
                .collect()
        };
        Ok(json!({
            "account_id": account_id,
            "chain": chain,
            "locks_from_ancestors": listed(locks.len().saturating_sub(1)),
            "effective_locks": listed(locks.len()),
        }))
    }

    /// `PUT`/`PATCH …/provision_config`.
    pub async fn write_provision_config(
        &self,
        account_id: &str,
        body: Value,
        if_match: Option<&str>,
        patch: bool,
    ) -> Answer {
        self.account(account_id)?;
        let id = self
            .sources
            .as_ref()
            .provision_config(account_id)
            .map_or_else(|| format!("provision_config:{account_id}"), |(id, _)| id);
        self.write(
            DocType::ProvisionConfig,
            account_id,
            &id,
            body,
            if_match,
            patch,
        )
        .await
    }

    /// `DELETE …/provision_config`.
    pub async fn delete_provision_config(
        &self,
        account_id: &str,
        if_match: Option<&str>,
    ) -> Answer {
        self.account(account_id)?;
        let Some((id, _)) = self.sources.as_ref().provision_config(account_id) else {
            return Err(ApiFailure::NotFound(format!(
                "account {account_id} has no provision config"
            )));
        };
        self.remove(DocType::ProvisionConfig, account_id, &id, if_match)
            .await
    }

    /// `GET /v1/unit_options[/…]`.
    pub fn unit_options(&self, path: &[&str]) -> Answer {
        self.ready()?;
        let docs = phone_model_docs(&self.sources);
        let (tree, _) = catalogue::tree(&docs);
        let summary = |nodes: Option<&Value>| -> Value {
            nodes
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), json!({"description": v.get("description")})))
                        .collect::<Map<_, _>>()
                })
                .map_or_else(|| json!({}), Value::Object)
        };
        let not_found = || ApiFailure::NotFound(format!("no catalogue node {}", path.join("/")));
        match path {
            [] => Ok(json!({"vendors": summary(Some(&tree))})),
            [vendor] => {
                let node = tree.get(*vendor).ok_or_else(not_found)?;
                Ok(
                    json!({"vendor": vendor, "description": node.get("description"), "families": summary(node.get("families"))}),
                )
            }
            [vendor, family] => {
                let node = tree
                    .get(*vendor)
                    .and_then(|v| v.get("families")?.get(*family))
                    .ok_or_else(not_found)?;
                Ok(
                    json!({"vendor": vendor, "family": family, "description": node.get("description"), "models": summary(node.get("models"))}),
                )
            }
            [vendor, family, model_name] => {
                let mut notes = Vec::new();
                let m = catalogue::effective_model(
                    vendor,
                    Some(family),
                    model_name,
                    &mut |key| {
                        docs.iter()
                            .filter(|d| NodeKey::of(d) == *key)
                            .cloned()
                            .collect()
                    },
                    &mut notes,
                )
                .map_err(ApiFailure::NotFound)?;
                let mut answer = m.to_json();
                answer["defaults"] = super::vendors::defaults(&m.schema);
                Ok(answer)
            }
            _ => Err(not_found()),
        }
    }

    /// `PUT /v1/unit_options/{vendor}[/{family}[/{model}]]`.
    pub async fn put_unit_option(
        &self,
        path: &[&str],
        body: Value,
        if_match: Option<&str>,
    ) -> Answer {
        self.ready()?;
        let (key, id) = node_key(path)?;
        let mut doc = body;
        if let (NodeKey::Model(..), [_, family, _]) = (&key, path)
            && let Some(object) = doc.as_object_mut()
        {
            object.entry("family").or_insert(json!(family));
        }
        let problems = validate::phone_model(self.sources.as_ref(), &key, &doc);
        if !problems.is_empty() {
            return Err(ApiFailure::Refused(problems));
        }
        let existing = self
            .sources
            .as_ref()
            .phone_models(&key)
            .into_iter()
            .map(|d| d.id)
            .min();
        let id = existing.unwrap_or(id);
        let current = self
            .db
            .get(&id)
            .await
            .map_err(|e| ApiFailure::Unavailable(e.to_string()))?;
        let current_rev = current
            .as_ref()
            .and_then(|c| c["_rev"].as_str())
            .map(str::to_string);
        if let Some(given) = requested_rev(if_match, Some(&doc))?
            && current_rev.as_ref() != Some(&given)
        {
            return Err(ApiFailure::Refused(vec![stale(
                &given,
                current_rev.as_deref(),
            )]));
        }
        let object = doc.as_object_mut().expect("validated as an object");
        object.insert("_id".into(), json!(id));
        object.insert("type".into(), json!("phone_model"));
        let (brand, family, model_name) = match &key {
            NodeKey::Vendor(b) => (b.clone(), None, None),
            NodeKey::Family(b, f) => (b.clone(), Some(f.clone()), None),
            NodeKey::Model(b, m) => (
                b.clone(),
                object
                    .get("family")
                    .and_then(Value::as_str)
                    .map(model::normalise_name),
                Some(m.clone()),
            ),
        };
        object.insert("brand".into(), json!(brand));
        object.insert("family".into(), json!(family));
        object.insert("model".into(), json!(model_name));
        object.remove("_rev");
        if let Some(rev) = current_rev {
            object.insert("_rev".into(), json!(rev));
        }
        self.store(doc).await
    }

    /// `DELETE /v1/unit_options/…`: the node's documents and those below it.
    pub async fn delete_unit_option(&self, path: &[&str]) -> Answer {
        self.ready()?;
        let (key, _) = node_key(path)?;
        let below = |d: &PhoneModelDoc| match &key {
            NodeKey::Vendor(b) => d.brand == *b,
            NodeKey::Family(b, f) => d.brand == *b && d.family.as_deref() == Some(f),
            NodeKey::Model(..) => NodeKey::of(d) == key,
        };
        let docs: Vec<PhoneModelDoc> = phone_model_docs(&self.sources)
            .into_iter()
            .filter(below)
            .collect();
        if docs.is_empty() {
            return Err(ApiFailure::NotFound(format!(
                "no phone_model document at {} (the shipped catalogue cannot be deleted; PUT overrides it)",
                path.join("/")
            )));
        }
        let mut deleted = Vec::new();
        for doc in docs {
            let Some(stored) = self.sources.get(&doc.id) else {
                continue;
            };
            match self.db.delete(&doc.id, &stored.rev).await {
                Ok(rev) => {
                    self.sources.apply(&doc.id, &rev, None);
                    self.rebuilt(&doc.id, &rev, None).await;
                    deleted.push(json!({"_id": doc.id, "_rev": rev, "_deleted": true}));
                }
                Err(err) if err.is(ErrorKind::Conflict) || err.is(ErrorKind::NotFound) => {}
                Err(err) => return Err(ApiFailure::Unavailable(err.to_string())),
            }
        }
        Ok(json!({"deleted": deleted}))
    }
}

fn collection_name(collection: Collection) -> &'static str {
    match collection {
        Collection::Units => "units",
        Collection::Policies => "policies",
        Collection::Profiles => "profiles",
    }
}

/// The catalogue node of a unit options path, and the id of a new document for it.
fn node_key(path: &[&str]) -> Result<(NodeKey, String), ApiFailure> {
    let name = |s: &str| {
        let n = model::normalise_name(s);
        if n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            Err(ApiFailure::BadRequest(format!(
                "{s:?} is not a catalogue name"
            )))
        } else {
            Ok(n)
        }
    };
    match path {
        [v] => Ok((
            NodeKey::Vendor(name(v)?),
            format!("phone_model:{}", name(v)?),
        )),
        [v, f] => Ok((
            NodeKey::Family(name(v)?, name(f)?),
            format!("phone_model:{}:{}", name(v)?, name(f)?),
        )),
        [v, f, m] => Ok((
            NodeKey::Model(name(v)?, name(m)?),
            format!("phone_model:{}:{}:{}", name(v)?, name(f)?, name(m)?),
        )),
        _ => Err(ApiFailure::NotFound("no such catalogue node".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
        let mut doc = json!({"a": [1]});
        merge_patch(&mut doc, &json!({"a": {"b": 1}, "x": null}));
        assert_eq!(doc, json!({"a": {"b": 1}}));
    }

    #[test]
    fn revisions_come_from_if_match_or_the_body() {
        assert_eq!(requested_rev(Some("\"1-a\""), None), Ok(Some("1-a".into())));
        assert_eq!(
            requested_rev(None, Some(&json!({"_rev": "2-b"}))),
            Ok(Some("2-b".into()))
        );
        assert!(requested_rev(Some("1-a"), Some(&json!({"_rev": "2-b"}))).is_err());
        assert_eq!(requested_rev(None, Some(&json!({}))), Ok(None));
    }
}
