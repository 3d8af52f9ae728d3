//! The parameter catalogue ("unit options"): the tree vendor → family →
//! model shipped with the binary (`vendors::catalogue()`), extended and
//! overridden by `phone_model` documents, and the effective node of a
//! model (vendor → family → model merged, the child winning). Pure.
//!
//! A `phone_model` document sits at one node: brand only (the vendor
//! node), brand + family, or brand + family + model. Its `description`,
//! `schema` and `meta` are merged onto the shipped node of the same place
//! (objects recursively), or define the node when nothing is shipped there.

use serde_json::{Map, Value, json};

use super::model::PhoneModelDoc;
use super::vendors::{self, merge as deep_merge};

/// Where a `phone_model` document sits, as the builder reads it (each is
/// an index view, so an edit reaches exactly the models below it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeKey {
    Vendor(String),
    Family(String, String),
    /// Brand and model (models are unique within a brand).
    Model(String, String),
}

impl NodeKey {
    /// The node a document sits at.
    pub fn of(doc: &PhoneModelDoc) -> NodeKey {
        match (&doc.family, &doc.model) {
            (_, Some(model)) => NodeKey::Model(doc.brand.clone(), model.clone()),
            (Some(family), None) => NodeKey::Family(doc.brand.clone(), family.clone()),
            (None, None) => NodeKey::Vendor(doc.brand.clone()),
        }
    }

    /// The index view key of the node.
    pub fn view(&self) -> String {
        match self {
            NodeKey::Vendor(b) => format!("phones:pm:{b}"),
            NodeKey::Family(b, f) => format!("phones:pm:{b}:f:{f}"),
            NodeKey::Model(b, m) => format!("phones:pm:{b}:m:{m}"),
        }
    }
}

/// A model with its effective node.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveModel {
    pub brand: String,
    pub family: String,
    pub model: String,
    pub description: Option<String>,
    pub schema: Value,
    pub meta: Value,
    /// What defined the node: `"shipped"` and/or `phone_model` document ids.
    pub sources: Vec<String>,
}

impl EffectiveModel {
    /// `brand/family/model`, as provenance and messages name it.
    pub fn path(&self) -> String {
        format!("{}/{}/{}", self.brand, self.family, self.model)
    }

    /// The catalogue node as the API shows it.
    pub fn to_json(&self) -> Value {
        json!({
            "brand": self.brand, "family": self.family, "model": self.model,
            "description": self.description, "schema": self.schema, "meta": self.meta,
            "sources": self.sources,
        })
    }
}

fn shipped_vendor(brand: &str) -> Option<&'static Value> {
    vendors::catalogue().get(brand)
}

fn shipped_family(brand: &str, family: &str) -> Option<&'static Value> {
    shipped_vendor(brand)?.get("families")?.get(family)
}

fn shipped_model(brand: &str, family: &str, model: &str) -> Option<&'static Value> {
    shipped_family(brand, family)?.get("models")?.get(model)
}

/// The shipped family of a model, if the shipped catalogue has the model.
fn shipped_family_of(brand: &str, model: &str) -> Option<String> {
    let families = shipped_vendor(brand)?.get("families")?.as_object()?;
    families
        .iter()
        .find(|(_, node)| node.get("models").and_then(|m| m.get(model)).is_some())
        .map(|(name, _)| name.clone())
}

/// The node fields that merge (children of the tree are not node fields).
fn node_fields(node: &Value) -> Map<String, Value> {
    ["description", "schema", "meta"]
        .iter()
        .filter_map(|f| Some((f.to_string(), node.get(*f)?.clone())))
        .collect()
}

/// The effective node of one place: shipped, then the documents there
/// (the one with the smallest id, when several claim it: an issue).
fn node(
    shipped: Option<&Value>,
    docs: &[PhoneModelDoc],
    sources: &mut Vec<String>,
    issues: &mut Vec<(String, String)>,
) -> Option<Value> {
    let mut found = shipped.map(|s| Value::Object(node_fields(s)));
    if found.is_some() {
        sources.push("shipped".into());
    }
    let mut docs: Vec<&PhoneModelDoc> = docs.iter().collect();
    docs.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(doc) = docs.first() {
        let mut base = found.unwrap_or_else(|| json!({}));
        deep_merge(&mut base, &Value::Object(doc.node.clone()));
        found = Some(base);
        sources.push(doc.id.clone());
        for other in &docs[1..] {
            issues.push((
                other.id.clone(),
                format!(
                    "another phone_model document ({}) defines the same catalogue node; this one is ignored",
                    doc.id
                ),
            ));
        }
    }
    found
}

/// Resolves a unit's model. `docs` gives the `phone_model` documents at a
/// node (the builder reads them through index views). Issues name the
/// document they are about.
///
/// # Errors
/// The brand, family or model is not in the catalogue, or the family given
/// does not match the model's.
pub fn effective_model(
    brand: &str,
    family: Option<&str>,
    model: &str,
    docs: &mut dyn FnMut(&NodeKey) -> Vec<PhoneModelDoc>,
    issues: &mut Vec<(String, String)>,
) -> Result<EffectiveModel, String> {
    let model_docs = docs(&NodeKey::Model(brand.into(), model.into()));
    let documented_family = {
        let mut sorted: Vec<&PhoneModelDoc> = model_docs.iter().collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        sorted.first().and_then(|d| d.family.clone())
    };
    let catalogue_family = documented_family.or_else(|| shipped_family_of(brand, model));
    let vendor_docs = docs(&NodeKey::Vendor(brand.into()));
    if shipped_vendor(brand).is_none() && vendor_docs.is_empty() {
        return Err(format!("brand {brand:?} is not in the catalogue"));
    }
    let Some(family_name) = catalogue_family else {
        return Err(format!(
            "model {model:?} is not in the catalogue of {brand}"
        ));
    };
    if let Some(given) = family
        && given != family_name
    {
        return Err(format!(
            "family {given:?} does not match the catalogue: {brand} {model} is in family {family_name:?}"
        ));
    }
    let family_docs = docs(&NodeKey::Family(brand.into(), family_name.clone()));
    let mut sources = Vec::new();
    let vendor_node = node(shipped_vendor(brand), &vendor_docs, &mut sources, issues);
    let family_node = node(
        shipped_family(brand, &family_name),
        &family_docs,
        &mut sources,
        issues,
    );
    let Some(mut family_node) = family_node else {
        return Err(format!(
            "family {family_name:?} of {brand} {model} is not in the catalogue"
        ));
    };
    let model_node = node(
        shipped_model(brand, &family_name, model),
        &model_docs,
        &mut sources,
        issues,
    )
    .ok_or_else(|| format!("model {model:?} is not in the catalogue of {brand}"))?;
    // The one branch of the tree this model needs, merged by the vendors'
    // own lookup (the same one the unit options API lists from).
    family_node["models"] = json!({ model: model_node });
    let mut vendor_node = vendor_node.unwrap_or_else(|| json!({}));
    vendor_node["families"] = json!({ &family_name: family_node });
    let branch = json!({ brand: vendor_node });
    let found = vendors::effective_model(&branch, brand, Some(&family_name), model)
        .ok_or_else(|| format!("model {model:?} is not in the catalogue of {brand}"))?;
    let mut seen = std::collections::BTreeSet::new();
    sources.retain(|s| seen.insert(s.clone()));
    Ok(EffectiveModel {
        brand: brand.into(),
        family: family_name,
        model: model.into(),
        description: found
            .node
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_string),
        schema: found
            .node
            .get("schema")
            .cloned()
            .unwrap_or_else(|| json!({})),
        meta: found.node.get("meta").cloned().unwrap_or_else(|| json!({})),
        sources,
    })
}

/// The whole catalogue with every `phone_model` document applied, as the
/// unit options API lists it: `{brand: {description, schema, meta,
/// families: {family: {…, models: {model: {…}}}}}}`. Documents at a place
/// whose parent does not exist are left out (and listed in the second
/// value with the reason).
pub fn tree(docs: &[PhoneModelDoc]) -> (Value, Vec<(String, String)>) {
    let mut tree = vendors::catalogue().clone();
    let mut orphans = Vec::new();
    let mut sorted: Vec<&PhoneModelDoc> = docs.iter().collect();
    // Vendors before families before models, so parents exist first.
    sorted.sort_by_key(|d| (d.family.is_some(), d.model.is_some(), d.id.clone()));
    for doc in sorted {
        let fields = Value::Object(doc.node.clone());
        let Some(root) = tree.as_object_mut() else {
            break;
        };
        match (&doc.family, &doc.model) {
            (None, _) => {
                let vendor = root.entry(doc.brand.clone()).or_insert_with(|| json!({}));
                deep_merge(vendor, &fields);
            }
            (Some(family), model) => {
                let Some(vendor) = root.get_mut(&doc.brand) else {
                    orphans.push((
                        doc.id.clone(),
                        format!("brand {:?} is not in the catalogue", doc.brand),
                    ));
                    continue;
                };
                let families = child_map(vendor, "families");
                if let Some(model) = model {
                    let Some(family_node) = families.get_mut(family) else {
                        orphans.push((
                            doc.id.clone(),
                            format!("family {family:?} of {} is not in the catalogue", doc.brand),
                        ));
                        continue;
                    };
                    let entry = child_map(family_node, "models")
                        .entry(model.clone())
                        .or_insert_with(|| json!({}));
                    deep_merge(entry, &fields);
                } else {
                    let entry = families.entry(family.clone()).or_insert_with(|| json!({}));
                    deep_merge(entry, &fields);
                }
            }
        }
    }
    (tree, orphans)
}

fn child_map<'a>(node: &'a mut Value, name: &str) -> &'a mut Map<String, Value> {
    if !node.get(name).is_some_and(Value::is_object) {
        node[name] = json!({});
    }
    node[name].as_object_mut().expect("just made an object")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domains::phones::model::parse_phone_model;

    fn doc(id: &str, json: Value) -> PhoneModelDoc {
        parse_phone_model(id, &json).unwrap()
    }

    fn lookup(docs: Vec<PhoneModelDoc>) -> impl FnMut(&NodeKey) -> Vec<PhoneModelDoc> {
        move |key| {
            docs.iter()
                .filter(|d| NodeKey::of(d) == *key)
                .cloned()
                .collect()
        }
    }

    #[test]
    fn a_shipped_model_resolves_with_or_without_its_family() {
        let mut issues = Vec::new();
        let found =
            effective_model("yealink", None, "t46s", &mut lookup(vec![]), &mut issues).unwrap();
        assert_eq!(found.family, "t4x");
        assert_eq!(found.meta["file_id"], "66");
        assert_eq!(found.sources, ["shipped"]);
        assert!(
            effective_model(
                "yealink",
                Some("t4x"),
                "t46s",
                &mut lookup(vec![]),
                &mut issues
            )
            .is_ok()
        );
        let wrong = effective_model(
            "yealink",
            Some("t5x"),
            "t46s",
            &mut lookup(vec![]),
            &mut issues,
        );
        assert!(wrong.unwrap_err().contains("does not match"));
        assert!(effective_model("yealink", None, "t99", &mut lookup(vec![]), &mut issues).is_err());
        assert!(effective_model("acme", None, "x", &mut lookup(vec![]), &mut issues).is_err());
        assert!(issues.is_empty());
    }

    #[test]
    fn documents_extend_and_override_the_shipped_tree() {
        let docs = vec![
            doc(
                "pm-vendor",
                json!({"brand": "yealink", "schema": {"properties": {"tz": {"type": "string", "default": "UTC"}}}}),
            ),
            doc(
                "pm-t46s",
                json!({"brand": "yealink", "family": "t4x", "model": "t46s", "meta": {"file_id": "67"}}),
            ),
            doc(
                "pm-t48u",
                json!({"brand": "yealink", "family": "t4x", "model": "t48u", "description": "new"}),
            ),
            doc(
                "pm-t46s-b",
                json!({"brand": "yealink", "family": "t4x", "model": "t46s", "meta": {"file_id": "68"}}),
            ),
        ];
        let mut issues = Vec::new();
        let t46s = effective_model(
            "yealink",
            None,
            "t46s",
            &mut lookup(docs.clone()),
            &mut issues,
        )
        .unwrap();
        assert_eq!(t46s.meta["file_id"], "67");
        assert_eq!(t46s.schema["properties"]["tz"]["default"], "UTC");
        assert_eq!(t46s.sources, ["shipped", "pm-vendor", "pm-t46s"]);
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].0, "pm-t46s-b");
        let t48u = effective_model(
            "yealink",
            None,
            "t48u",
            &mut lookup(docs.clone()),
            &mut issues,
        )
        .unwrap();
        assert_eq!(t48u.description.as_deref(), Some("new"));
        let (tree, orphans) = tree(&docs);
        assert_eq!(
            tree["yealink"]["families"]["t4x"]["models"]["t48u"]["description"],
            "new"
        );
        assert!(orphans.is_empty());
        let (_, orphans) = super::tree(&[doc(
            "x",
            json!({"brand": "acme", "family": "f", "model": "m"}),
        )]);
        assert_eq!(orphans.len(), 1);
    }
}
