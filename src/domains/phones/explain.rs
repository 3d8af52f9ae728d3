//! "Why this value" (`GET /v1/units/{id}/why`, the console's Phones view):
//! for every leaf of a unit's merged configuration, the layer and document
//! that set it, and the attempts the merge refused on the way — with the
//! account whose lock decided, when a lock did. Pure, over what the unit's
//! cache document holds: the configuration, its expanded provenance and
//! its errors, whose refused-value reasons `dropped_reason` writes and
//! `parse_dropped` reads back (one format, here).

use serde_json::{Map, Value, json};

use super::merge::Dropped;

/// The error reason of a value the merge refused: `"<layer> <pointer>: <why>"`.
pub fn dropped_reason(dropped: &Dropped) -> String {
    format!(
        "{} {}: {}",
        dropped.origin.layer.name(),
        dropped.path,
        dropped.reason
    )
}

/// A refused value read back from an error: `(layer, pointer, why, locking account)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub doc: String,
    pub layer: String,
    pub path: String,
    pub reason: String,
    pub locked_by: Option<String>,
}

const LAYERS: [&str; 5] = [
    "model_defaults",
    "account_defaults",
    "unit",
    "policy",
    "account_config",
];

/// Reads a unit error written by `dropped_reason`; `None` for other errors.
pub fn parse_dropped(doc: &str, reason: &str) -> Option<Refused> {
    let (layer, rest) = reason.split_once(' ')?;
    if !LAYERS.contains(&layer) || !rest.starts_with('/') {
        return None;
    }
    let (path, why) = rest.split_once(": ")?;
    let locked_by = why
        .strip_prefix("locked by account ")
        .and_then(|r| r.strip_suffix("; ignored"))
        .map(str::to_string);
    Some(Refused {
        doc: doc.to_string(),
        layer: layer.to_string(),
        path: path.to_string(),
        reason: why.to_string(),
        locked_by,
    })
}

/// Whether a refusal at `attempt` bears on the leaf at `leaf`: the same
/// path, a parent replaced, or a child set below a scalar.
fn related(attempt: &str, leaf: &str) -> bool {
    let under =
        |a: &str, b: &str| a.len() > b.len() && a.starts_with(b) && a.as_bytes()[b.len()] == b'/';
    attempt == leaf || under(leaf, attempt) || under(attempt, leaf)
}

/// Every leaf: `{path, value, set_by, refused: [...], decided_by_lock}`,
/// plus the refusals that bear on no leaf (`unplaced`: nothing of theirs
/// stands), as `{"values": [...], "unplaced": [...]}`.
pub fn explain(config: &Value, provenance: &Value, errors: &Value) -> Value {
    let refused: Vec<Refused> = errors
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| parse_dropped(e["doc"].as_str()?, e["reason"].as_str()?))
        .collect();
    let empty = Map::new();
    let provenance = provenance.as_object().unwrap_or(&empty);
    let mut placed = vec![false; refused.len()];
    let values: Vec<Value> = provenance
        .iter()
        .map(|(path, set_by)| {
            let mine: Vec<&Refused> = refused
                .iter()
                .enumerate()
                .filter(|(_, r)| related(&r.path, path))
                .map(|(i, r)| {
                    placed[i] = true;
                    r
                })
                .collect();
            let lock = mine.iter().find_map(|r| r.locked_by.clone());
            json!({
                "path": path,
                "value": config.pointer(path).cloned().unwrap_or(Value::Null),
                "set_by": set_by,
                "refused": mine.iter().map(|r| refused_json(r)).collect::<Vec<_>>(),
                "decided_by_lock": lock,
            })
        })
        .collect();
    let unplaced: Vec<Value> = refused
        .iter()
        .zip(placed)
        .filter(|(_, p)| !p)
        .map(|(r, _)| refused_json(r))
        .collect();
    json!({"values": values, "unplaced": unplaced})
}

fn refused_json(r: &Refused) -> Value {
    json!({"doc": r.doc, "layer": r.layer, "path": r.path, "reason": r.reason, "locked_by": r.locked_by})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domains::phones::merge::{LayerKind, Origin};

    #[test]
    fn reads_back_what_it_writes() {
        let dropped = Dropped {
            origin: Origin {
                layer: LayerKind::Unit,
                doc: "unit-1".into(),
                account: None,
                via: None,
            },
            path: "/yealink/features/dnd".into(),
            reason: "locked by account acme; ignored".into(),
            locked_by: Some("acme".into()),
        };
        let parsed = parse_dropped("unit-1", &dropped_reason(&dropped)).unwrap();
        assert_eq!(parsed.layer, "unit");
        assert_eq!(parsed.path, "/yealink/features/dnd");
        assert_eq!(parsed.locked_by.as_deref(), Some("acme"));
        assert_eq!(parse_dropped("unit-1", "profile p is missing"), None);
    }

    #[test]
    fn each_leaf_gets_its_setter_and_the_refusals_that_bear_on_it() {
        let config = json!({"dnd": {"allow": 0}, "vlan": 10});
        let provenance = json!({
            "/dnd/allow": {"layer": "account_config", "doc": "provision_config:acme", "account": "acme"},
            "/vlan": {"layer": "unit", "doc": "unit-1"},
        });
        let errors = json!([
            {"db": "units", "doc": "unit-1", "reason": "unit /dnd/allow: locked by account acme; ignored"},
            {"db": "units", "doc": "policy-1", "reason": "policy /ring: 7 is above the maximum 5"},
            {"db": "units", "doc": "unit-1", "reason": "line 2 names a missing device"},
        ]);
        let why = explain(&config, &provenance, &errors);
        let dnd = &why["values"][0];
        assert_eq!(dnd["path"], "/dnd/allow");
        assert_eq!(dnd["value"], 0);
        assert_eq!(dnd["set_by"]["layer"], "account_config");
        assert_eq!(dnd["decided_by_lock"], "acme");
        assert_eq!(dnd["refused"][0]["doc"], "unit-1");
        let vlan = &why["values"][1];
        assert_eq!(vlan["refused"], json!([]));
        assert_eq!(vlan["decided_by_lock"], Value::Null);
        assert_eq!(why["unplaced"][0]["path"], "/ring");
    }
}
