//! The shipped parameter catalogue: one JSON file per vendor under
//! `catalogue/`, plus `neutral.json`, the cross-vendor keys every vendor's
//! schema starts from (a vendor file may narrow them, e.g. its codec
//! `enum`). Also the lookup of a model's effective node, vendor → family →
//! model merged with the child winning, which works on any catalogue of the
//! same shape (the core extends the shipped one with `phone_model`
//! documents). Pure.

use serde_json::{Map, Value, json};

const NEUTRAL: &str = include_str!("catalogue/neutral.json");

const VENDORS: [(&str, &str); 6] = [
    ("yealink", include_str!("catalogue/yealink.json")),
    ("polycom", include_str!("catalogue/polycom.json")),
    ("cisco", include_str!("catalogue/cisco.json")),
    ("grandstream", include_str!("catalogue/grandstream.json")),
    ("snom", include_str!("catalogue/snom.json")),
    ("fanvil", include_str!("catalogue/fanvil.json")),
];

/// Builds the shipped catalogue. The files are part of the binary and a
/// unit test parses every one, so a parse failure here is a build defect.
pub fn shipped() -> Value {
    let neutral: Value = serde_json::from_str(NEUTRAL).expect("catalogue/neutral.json is JSON");
    let mut tree = Map::new();
    for (brand, text) in VENDORS {
        let mut node: Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("catalogue/{brand}.json: {e}"));
        let mut schema = neutral.clone();
        merge(&mut schema, node.get("schema").unwrap_or(&json!({})));
        node["schema"] = schema;
        tree.insert(brand.to_string(), node);
    }
    Value::Object(tree)
}

/// Merges `over` into `base`: objects recursively, anything else replaced
/// by the stronger (`over`) value.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                match base.get_mut(key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, over) => *base = over.clone(),
    }
}

/// A model as the catalogue describes it, with its effective node.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveModel {
    pub brand: String,
    pub family: String,
    pub model: String,
    /// `description`, `schema` and `meta`, merged vendor → family → model.
    pub node: Value,
}

impl EffectiveModel {
    pub fn meta(&self) -> &Value {
        static EMPTY: Value = Value::Null;
        self.node.get("meta").unwrap_or(&EMPTY)
    }

    pub fn schema(&self) -> &Value {
        static EMPTY: Value = Value::Null;
        self.node.get("schema").unwrap_or(&EMPTY)
    }
}

/// The effective node of `brand`/`model` in `catalogue`. Without a family,
/// the model is looked up in every family of the brand (model ids are
/// unique within a brand); with one, it must be there.
pub fn effective_model(
    catalogue: &Value,
    brand: &str,
    family: Option<&str>,
    model: &str,
) -> Option<EffectiveModel> {
    let vendor = catalogue.get(brand)?;
    let families = vendor.get("families")?.as_object()?;
    let (family_id, family_node) = match family {
        Some(id) => (id, families.get(id)?),
        None => families
            .iter()
            .find(|(_, node)| {
                node.pointer(&format!("/models/{}", escape_pointer(model)))
                    .is_some()
            })
            .map(|(id, node)| (id.as_str(), node))?,
    };
    let model_node = family_node.get("models")?.get(model)?;
    let mut node = own_part(vendor);
    merge(&mut node, &own_part(family_node));
    merge(&mut node, &own_part(model_node));
    Some(EffectiveModel {
        brand: brand.to_string(),
        family: family_id.to_string(),
        model: model.to_string(),
        node,
    })
}

/// A node without its children (`families`, `models`).
fn own_part(node: &Value) -> Value {
    let mut own = node.as_object().cloned().unwrap_or_default();
    own.remove("families");
    own.remove("models");
    Value::Object(own)
}

fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Every `(brand, family, model)` of a catalogue, in catalogue order.
pub fn models(catalogue: &Value) -> Vec<(String, String, String)> {
    let mut all = Vec::new();
    for (brand, vendor) in catalogue.as_object().into_iter().flatten() {
        for (family, node) in vendor
            .get("families")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            for model in node
                .get("models")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(m, _)| m)
            {
                all.push((brand.clone(), family.clone(), model.clone()));
            }
        }
    }
    all
}

/// The defaults a schema declares, as a configuration tree: what the core
/// merges first ("model defaults from the parameter catalogue").
pub fn defaults(schema: &Value) -> Value {
    let mut out = Map::new();
    for (key, property) in schema
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if let Some(default) = property.get("default") {
            out.insert(key.clone(), default.clone());
        } else if property.get("properties").is_some() {
            let nested = defaults(property);
            if nested.as_object().is_some_and(|o| !o.is_empty()) {
                out.insert(key.clone(), nested);
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vendor_file_parses_and_starts_from_the_neutral_keys() {
        let catalogue = shipped();
        for (brand, _) in VENDORS {
            let schema = &catalogue[brand]["schema"]["properties"];
            for key in ["codecs", "time", "phone_book", "keys", "provisioning"] {
                assert!(schema.get(key).is_some(), "{brand} lacks {key}");
            }
            assert!(
                schema.get(brand).is_some(),
                "{brand} lacks its native subtree"
            );
        }
    }

    #[test]
    fn the_effective_node_merges_vendor_family_model() {
        let catalogue = shipped();
        let mpp = effective_model(&catalogue, "cisco", None, "cp-8841-3pcc").unwrap();
        assert_eq!(mpp.family, "mpp");
        assert_eq!(mpp.meta()["profile"], "mpp");
        assert_eq!(mpp.meta()["psn"], "CP-8841-3PCC");
        let enum_ = &mpp.schema()["properties"]["codecs"]["items"]["enum"];
        assert!(enum_.as_array().unwrap().contains(&json!("ilbc")));
        assert!(effective_model(&catalogue, "cisco", Some("spa"), "cp-8841-3pcc").is_none());
        assert!(effective_model(&catalogue, "cisco", None, "nope").is_none());
    }

    #[test]
    fn model_ids_are_lower_case_without_spaces_and_unique_per_brand() {
        let all = models(&shipped());
        for (brand, _, model) in &all {
            assert_eq!(model, &model.to_lowercase());
            assert!(!model.contains(' '), "{model}");
            let count = all
                .iter()
                .filter(|(b, _, m)| b == brand && m == model)
                .count();
            assert_eq!(count, 1, "{brand}/{model}");
        }
        for wanted in [
            "yealink/t46s",
            "yealink/t28p",
            "yealink/t42g",
            "yealink/t41p",
            "yealink/t54w",
            "polycom/vvx410",
            "polycom/vvx500",
            "polycom/soundstationip6000",
            "cisco/spa504g",
            "cisco/spa508g",
            "cisco/cp-8841-3pcc",
            "cisco/cp-7841-3pcc",
            "grandstream/gxp2170",
            "grandstream/gxp2135",
            "snom/d785",
            "snom/d735",
            "snom/720",
            "fanvil/x5u",
            "fanvil/x4u",
        ] {
            assert!(
                all.iter().any(|(b, _, m)| format!("{b}/{m}") == wanted),
                "{wanted}"
            );
        }
    }

    #[test]
    fn defaults_come_from_the_schema() {
        let t46s = effective_model(&shipped(), "yealink", None, "t46s").unwrap();
        let defaults = defaults(t46s.schema());
        assert_eq!(defaults["codecs"], json!(["g722", "pcmu", "pcma"]));
        assert_eq!(defaults["time"]["ntp_server"], "pool.ntp.org");
        assert_eq!(
            defaults["yealink"]["phone_setting"]["ring_type"],
            "Ring1.wav"
        );
    }
}
