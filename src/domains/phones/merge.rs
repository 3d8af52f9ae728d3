//! The layered merge of a unit's configuration, with locks and per-leaf
//! provenance. Pure.
//!
//! Layers, weakest first (the spec's order):
//! 1. model defaults from the catalogue;
//! 2. `defaults` of the provision configs, root ancestor → own account;
//! 3. `unit.config`;
//! 4. policies: each profile's policies in order, then `unit.policies`
//!    (a later policy wins);
//! 5. `config` of the provision configs, root ancestor → own account.
//!
//! Objects merge recursively; arrays and scalars replace; `null` removes
//! the key. Every layer is first cleaned against the model's schema
//! (refused values are dropped, so the weaker value stands), then against
//! the locks: an account's `locks` bind everything below it — the layers
//! of its descendant accounts and the units (with their policies) of it
//! and of its descendants. A locked path cannot be set, removed or
//! replaced (setting a parent to a non-object would replace it) by those
//! layers; locks accumulate down the tree. Model defaults are never locked.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::model::{LockTree, pointer_escape};
use super::schema;

/// What a layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LayerKind {
    ModelDefaults,
    AccountDefaults,
    Unit,
    Policy,
    AccountConfig,
}

impl LayerKind {
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::ModelDefaults => "model_defaults",
            LayerKind::AccountDefaults => "account_defaults",
            LayerKind::Unit => "unit",
            LayerKind::Policy => "policy",
            LayerKind::AccountConfig => "account_config",
        }
    }
}

/// Who set a value: the layer and the document.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    pub layer: LayerKind,
    /// The document (provision config, unit or policy id; the catalogue
    /// path for model defaults).
    pub doc: String,
    /// The account whose provision config it is.
    pub account: Option<String>,
    /// The profile a policy came through.
    pub via: Option<String>,
}

impl Origin {
    pub fn to_json(&self) -> Value {
        let mut out = json!({ "layer": self.layer.name(), "doc": self.doc });
        if let Some(account) = &self.account {
            out["account"] = json!(account);
        }
        if let Some(via) = &self.via {
            out["via"] = json!(via);
        }
        out
    }
}

/// One layer of the merge.
#[derive(Debug, Clone)]
pub struct Layer {
    pub origin: Origin,
    pub value: Map<String, Value>,
    /// The locks of the chain accounts before this position bind the layer:
    /// 0 for model defaults (nothing), `j` for the provision config of
    /// `chain[j]`, `chain.len()` for the unit and its policies.
    pub rank: usize,
}

/// A value a layer gave that the merge did not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub origin: Origin,
    /// JSON pointer into the configuration.
    pub path: String,
    pub reason: String,
    /// The account whose lock refused it (`None`: the schema did).
    pub locked_by: Option<String>,
}

/// The merged configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merged {
    pub config: Map<String, Value>,
    /// JSON pointer of every leaf → who set it.
    pub provenance: BTreeMap<String, Origin>,
    pub dropped: Vec<Dropped>,
}

impl Merged {
    /// The provenance as cache documents hold it: `{pointer: n}` plus
    /// `origins[n] = [layer, doc, account, via]` (a unit has a handful of
    /// origins for dozens of leaves, so this is several times smaller —
    /// in CouchDB and in every mirror — than an object per leaf).
    pub fn compact_provenance(&self) -> (Value, Value) {
        let mut origins: Vec<&Origin> = Vec::new();
        let mut paths = Map::new();
        for (path, origin) in &self.provenance {
            let n = match origins.iter().position(|o| *o == origin) {
                Some(n) => n,
                None => {
                    origins.push(origin);
                    origins.len() - 1
                }
            };
            paths.insert(path.clone(), json!(n));
        }
        let origins = origins
            .iter()
            .map(|o| json!([o.layer.name(), o.doc, o.account, o.via]))
            .collect();
        (Value::Object(paths), Value::Array(origins))
    }
}

/// Merges `layers` (weakest first) under `schema` and the chain's `locks`
/// (`(account, locks)`, root first).
pub fn merge(layers: &[Layer], schema: &Value, locks: &[(String, LockTree)]) -> Merged {
    let mut merged = Merged::default();
    for layer in layers {
        let (cleaned, violations) = if layer.origin.layer == LayerKind::ModelDefaults {
            (layer.value.clone(), Vec::new())
        } else {
            schema::clean(schema, &layer.value, "")
        };
        for violation in violations {
            merged.dropped.push(Dropped {
                origin: layer.origin.clone(),
                path: violation.path,
                reason: format!("{}; ignored (the weaker value stands)", violation.reason),
                locked_by: None,
            });
        }
        let binding: Vec<(&str, &LockTree)> = locks
            .iter()
            .take(layer.rank)
            .map(|(account, tree)| (account.as_str(), tree))
            .collect();
        let allowed = filter_locks(&cleaned, "", &binding, &layer.origin, &mut merged.dropped);
        apply(
            &mut merged.config,
            &mut merged.provenance,
            &allowed,
            "",
            &layer.origin,
        );
    }
    merged
}

/// The paths of `value` that the first `rank` chain accounts' locks forbid,
/// with the locking account (what the configuration API refuses with 409).
pub fn locked_paths(
    value: &Map<String, Value>,
    locks: &[(String, LockTree)],
    rank: usize,
) -> Vec<(String, String)> {
    let binding: Vec<(&str, &LockTree)> = locks
        .iter()
        .take(rank)
        .map(|(account, tree)| (account.as_str(), tree))
        .collect();
    let origin = Origin {
        layer: LayerKind::Unit,
        doc: String::new(),
        account: None,
        via: None,
    };
    let mut dropped = Vec::new();
    filter_locks(value, "", &binding, &origin, &mut dropped);
    dropped
        .into_iter()
        .filter_map(|d| Some((d.path, d.locked_by?)))
        .collect()
}

/// The account whose lock covers `key` among `nodes` (the lock trees at
/// the current position), and the trees one level down.
fn descend<'a>(
    nodes: &[(&'a str, &'a LockTree)],
    key: &str,
) -> (Option<&'a str>, Vec<(&'a str, &'a LockTree)>) {
    let mut below = Vec::new();
    for (account, node) in nodes {
        if let Some(child) = node.children.get(key) {
            if child.locked {
                return (Some(account), Vec::new());
            }
            below.push((*account, child));
        }
    }
    (None, below)
}

/// `value` without what the locks forbid this layer (dropped values are
/// recorded).
fn filter_locks(
    value: &Map<String, Value>,
    path: &str,
    nodes: &[(&str, &LockTree)],
    origin: &Origin,
    dropped: &mut Vec<Dropped>,
) -> Map<String, Value> {
    if nodes.is_empty() {
        return value.clone();
    }
    let mut kept = Map::new();
    for (key, item) in value {
        let child = format!("{path}/{}", pointer_escape(key));
        let (locked_by, below) = descend(nodes, key);
        let locked_by = locked_by.or_else(|| match item {
            // Replacing (or removing) a parent changes what is locked under it.
            Value::Object(_) => None,
            _ => below.iter().find(|(_, n)| !n.is_empty()).map(|(a, _)| *a),
        });
        if let Some(account) = locked_by {
            dropped.push(Dropped {
                origin: origin.clone(),
                path: child,
                reason: format!("locked by account {account}; ignored"),
                locked_by: Some(account.to_string()),
            });
            continue;
        }
        match item {
            Value::Object(map) if !below.is_empty() => {
                let inner = filter_locks(map, &child, &below, origin, dropped);
                if map.is_empty() || !inner.is_empty() {
                    kept.insert(key.clone(), Value::Object(inner));
                }
            }
            _ => {
                kept.insert(key.clone(), item.clone());
            }
        }
    }
    kept
}

/// Removes the provenance of `path` and of everything under it.
fn forget(provenance: &mut BTreeMap<String, Origin>, path: &str) {
    provenance.remove(path);
    let prefix = format!("{path}/");
    let under: Vec<String> = provenance
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for key in under {
        provenance.remove(&key);
    }
}

fn apply(
    target: &mut Map<String, Value>,
    provenance: &mut BTreeMap<String, Origin>,
    layer: &Map<String, Value>,
    path: &str,
    origin: &Origin,
) {
    for (key, value) in layer {
        let child = format!("{path}/{}", pointer_escape(key));
        match value {
            Value::Null => {
                target.remove(key);
                forget(provenance, &child);
            }
            Value::Object(map) => {
                let current = target.get(key);
                let replace = !current.is_some_and(Value::is_object);
                let empty_now = current
                    .and_then(Value::as_object)
                    .is_some_and(Map::is_empty);
                if replace {
                    target.insert(key.clone(), Value::Object(Map::new()));
                    forget(provenance, &child);
                }
                if map.is_empty() {
                    // An empty object is a leaf this layer sets (unless it
                    // merges into a non-empty object, which it leaves alone).
                    if replace || empty_now {
                        provenance.insert(child, origin.clone());
                    }
                    continue;
                }
                provenance.remove(&child);
                let Some(Value::Object(inner)) = target.get_mut(key) else {
                    unreachable!("an object was just ensured");
                };
                apply(inner, provenance, map, &child, origin);
            }
            leaf => {
                target.insert(key.clone(), leaf.clone());
                forget(provenance, &child);
                provenance.insert(child, origin.clone());
            }
        }
    }
}

/// The readable provenance of a cache document's compact one:
/// `{pointer: {layer, doc, account?, via?}}`.
pub fn expand_provenance(provenance: &Value, origins: &Value) -> Value {
    let Some(paths) = provenance.as_object() else {
        return json!({});
    };
    let expanded = paths.iter().filter_map(|(path, n)| {
        let origin = origins.get(usize::try_from(n.as_u64()?).ok()?)?;
        let mut out = json!({"layer": origin.get(0)?, "doc": origin.get(1)?});
        for (i, field) in [(2, "account"), (3, "via")] {
            if let Some(value) = origin.get(i).filter(|v| !v.is_null()) {
                out[field] = value.clone();
            }
        }
        Some((path.clone(), out))
    });
    Value::Object(expanded.collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domains::phones::model::parse_provision_config;

    fn origin(layer: LayerKind, doc: &str) -> Origin {
        Origin {
            layer,
            doc: doc.into(),
            account: None,
            via: None,
        }
    }

    fn layer(kind: LayerKind, doc: &str, rank: usize, value: Value) -> Layer {
        Layer {
            origin: origin(kind, doc),
            value: value.as_object().unwrap().clone(),
            rank,
        }
    }

    fn locks(account: &str, locks: Value) -> (String, LockTree) {
        let pc =
            parse_provision_config("pc", &json!({"account_id": account, "locks": locks})).unwrap();
        (account.to_string(), pc.value.locks)
    }

    fn leaf_origins(merged: &Merged) -> Vec<(String, String)> {
        merged
            .provenance
            .iter()
            .map(|(p, o)| (p.clone(), o.doc.clone()))
            .collect()
    }

    #[test]
    fn recursive_merge_replaces_arrays_and_null_removes() {
        let layers = [
            layer(
                LayerKind::ModelDefaults,
                "m",
                0,
                json!({"a": {"x": 1, "y": [1, 2]}, "b": 1, "c": {"d": 1}}),
            ),
            layer(
                LayerKind::Unit,
                "u",
                1,
                json!({"a": {"y": [3], "z": {}}, "b": null, "c": 5}),
            ),
            layer(LayerKind::Policy, "p", 1, json!({"c": {"e": 2}, "f": {}})),
        ];
        let merged = merge(&layers, &json!({}), &[]);
        assert_eq!(
            Value::Object(merged.config.clone()),
            json!({"a": {"x": 1, "y": [3], "z": {}}, "c": {"e": 2}, "f": {}})
        );
        assert_eq!(
            leaf_origins(&merged),
            [
                ("/a/x".into(), "m".into()),
                ("/a/y".into(), "u".into()),
                ("/a/z".into(), "u".into()),
                ("/c/e".into(), "p".into()),
                ("/f".into(), "p".into())
            ]
        );
    }

    #[test]
    fn the_compact_provenance_expands_back() {
        let layers = [
            layer(LayerKind::Unit, "u", 0, json!({"a": 1, "b": 2})),
            layer(LayerKind::Policy, "p", 0, json!({"c": 3})),
        ];
        let merged = merge(&layers, &json!({}), &[]);
        let (paths, origins) = merged.compact_provenance();
        assert_eq!(paths, json!({"/a": 0, "/b": 0, "/c": 1}));
        assert_eq!(
            origins,
            json!([["unit", "u", null, null], ["policy", "p", null, null]])
        );
        assert_eq!(
            expand_provenance(&paths, &origins),
            json!({"/a": {"layer": "unit", "doc": "u"}, "/b": {"layer": "unit", "doc": "u"}, "/c": {"layer": "policy", "doc": "p"}})
        );
    }

    #[test]
    fn an_empty_object_leaf_loses_its_provenance_once_filled() {
        let layers = [
            layer(LayerKind::Unit, "u", 0, json!({"a": {}})),
            layer(LayerKind::Policy, "p", 0, json!({"a": {"b": 1}})),
            layer(LayerKind::AccountConfig, "c", 0, json!({"a": {}})),
        ];
        let merged = merge(&layers, &json!({}), &[]);
        assert_eq!(Value::Object(merged.config.clone()), json!({"a": {"b": 1}}));
        assert_eq!(leaf_origins(&merged), [("/a/b".into(), "p".into())]);
    }

    #[test]
    fn locks_bind_descendants_and_units_but_not_the_locking_account() {
        // chain: provider (0) → customer (1); units rank 2.
        let chain = [
            locks(
                "provider",
                json!({"codecs": true, "net": {"vlan": "locked"}}),
            ),
            locks("customer", json!({"ring": true})),
        ];
        let layers = [
            layer(
                LayerKind::AccountDefaults,
                "pc-provider",
                0,
                json!({"net": {"vlan": 10}}),
            ),
            layer(
                LayerKind::AccountDefaults,
                "pc-customer",
                1,
                json!({"net": {"vlan": 20, "mtu": 1400}}),
            ),
            layer(
                LayerKind::Unit,
                "unit",
                2,
                json!({"codecs": ["opus"], "ring": "x", "net": 7, "other": 1}),
            ),
            layer(
                LayerKind::AccountConfig,
                "pc-provider",
                0,
                json!({"codecs": ["pcmu"]}),
            ),
            layer(
                LayerKind::AccountConfig,
                "pc-customer",
                1,
                json!({"codecs": ["g722"], "ring": "y", "net": null}),
            ),
        ];
        let merged = merge(&layers, &json!({}), &chain);
        assert_eq!(
            Value::Object(merged.config.clone()),
            json!({"codecs": ["pcmu"], "ring": "y", "net": {"vlan": 10, "mtu": 1400}, "other": 1})
        );
        let dropped: Vec<(String, String, String)> = merged
            .dropped
            .iter()
            .map(|d| (d.origin.doc.clone(), d.path.clone(), d.reason.clone()))
            .collect();
        assert_eq!(
            dropped,
            [
                (
                    "pc-customer".into(),
                    "/net/vlan".into(),
                    "locked by account provider; ignored".into()
                ),
                (
                    "unit".into(),
                    "/codecs".into(),
                    "locked by account provider; ignored".into()
                ),
                (
                    "unit".into(),
                    "/net".into(),
                    "locked by account provider; ignored".into()
                ),
                (
                    "unit".into(),
                    "/ring".into(),
                    "locked by account customer; ignored".into()
                ),
                (
                    "pc-customer".into(),
                    "/codecs".into(),
                    "locked by account provider; ignored".into()
                ),
                (
                    "pc-customer".into(),
                    "/net".into(),
                    "locked by account provider; ignored".into()
                ),
            ]
        );
    }

    #[test]
    fn schema_violations_leave_the_weaker_value() {
        let schema =
            json!({"properties": {"vlan": {"type": "integer", "maximum": 4094, "default": 1}}});
        let layers = [
            layer(LayerKind::ModelDefaults, "m", 0, json!({"vlan": 1})),
            layer(LayerKind::Unit, "u", 0, json!({"vlan": 100})),
            layer(LayerKind::Policy, "p", 0, json!({"vlan": 9999})),
        ];
        let merged = merge(&layers, &schema, &[]);
        assert_eq!(merged.config["vlan"], 100);
        assert_eq!(merged.provenance["/vlan"].doc, "u");
        assert_eq!(merged.dropped.len(), 1);
        assert_eq!(merged.dropped[0].path, "/vlan");
        assert!(merged.dropped[0].reason.contains("above the maximum"));
    }
}
