//! Where each attribute of a resolved route came from (the console's route
//! tester, `GET /v1/routes/{sdn}/{groupid}/{number}?explain=true`). Pure,
//! over the answer and the two cache documents the table was composed of:
//! the ruleset document (per rule, its gwlist entries, each with the
//! overlay of ruleset → destination → rule → entry) and the domain's
//! gateway directory (every gateway folded over default → carrier →
//! gateway). A field set by both was merged (attrs) or taken from the more
//! specific route levels (scalars), as `model` folds them.

use serde_json::{Map, Value, json};

use super::model::TIMEOUTS;

/// Fields besides `attrs` that a level may set.
const SCALARS: [&str; 2] = ["weight", "priority"];

/// `answer` with `origins` added to each gateway: `{field: {from, …}}`
/// for each attribute key (`attrs.<key>`), timeout, weight and priority.
pub fn explain(mut answer: Value, ruleset: &Value, directory: &Value) -> Value {
    let prefix = answer["prefix"].as_str().unwrap_or_default().to_string();
    let route = RouteLevels {
        ruleset: answer["ruleset"].clone(),
        destination: answer["destination"].clone(),
        rule: answer["rule"].clone(),
    };
    let entries = rule_entries(ruleset, &prefix);
    if let Some(gateways) = answer["gateways"].as_array_mut() {
        for gateway in gateways {
            let entry = entries.iter().find(|e| {
                e["gwid"] == gateway["gwid"]
                    || (e.get("gwid").is_none() && e["carrierid"] == gateway["carrierid"])
            });
            let overlay = entry
                .and_then(|e| ruleset["overlays"].get(e["overlay"].as_u64()? as usize))
                .cloned()
                .unwrap_or(Value::Null);
            let definition = &directory["gateways"][gateway["gwid"].as_str().unwrap_or("")];
            let origins = origins(gateway, &overlay, definition, entry.copied(), &route);
            gateway["origins"] = Value::Object(origins);
        }
    }
    answer
}

struct RouteLevels {
    ruleset: Value,
    destination: Value,
    rule: Value,
}

/// The entries (gwid or carrier, position, overlay) of the rule at `prefix`.
fn rule_entries<'a>(ruleset: &'a Value, prefix: &str) -> Vec<&'a Value> {
    ruleset["rules"][prefix]["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|pair| ruleset["entries"].get(pair.get(1)?.as_u64()? as usize))
        .collect()
}

fn origins(
    gateway: &Value,
    overlay: &Value,
    definition: &Value,
    entry: Option<&Value>,
    route: &RouteLevels,
) -> Map<String, Value> {
    let route_from = json!({
        "from": "route", "levels": "ruleset → destination → rule → entry",
        "ruleset": route.ruleset, "destination": route.destination, "rule": route.rule,
        "entry": entry.map(|e| e["position"].clone()),
    });
    let gateway_from = json!({
        "from": "gateway", "levels": "default → carrier → gateway",
        "doc": definition["doc"], "carrier": definition["carrierid"],
    });
    let pick = |in_route: bool, in_gateway: bool, merged: bool| -> Value {
        match (in_route, in_gateway) {
            (true, true) if merged => {
                json!({"from": "both", "route": route_from, "gateway": gateway_from})
            }
            (true, _) => route_from.clone(),
            (false, true) => gateway_from.clone(),
            (false, false) => json!({"from": "default"}),
        }
    };
    let mut out = Map::new();
    let empty = Map::new();
    let attrs = gateway["attrs"].as_object().unwrap_or(&empty);
    for key in attrs.keys() {
        let in_route = overlay["attrs"].get(key).is_some();
        let in_gateway = definition["attrs"].get(key).is_some();
        out.insert(format!("attrs.{key}"), pick(in_route, in_gateway, true));
    }
    for field in TIMEOUTS.iter().chain(&SCALARS) {
        let in_route = overlay.get(*field).is_some_and(|v| !v.is_null());
        let in_gateway = definition.get(*field).is_some_and(|v| !v.is_null());
        let origin = match (*field, in_route || in_gateway) {
            ("priority", false) => {
                json!({"from": "gwlist position", "entry": entry.map(|e| e["position"].clone()),
                                          "local_bonus": gateway["local"] == true})
            }
            _ => pick(in_route, in_gateway, false),
        };
        out.insert((*field).to_string(), origin);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_field_names_the_levels_that_set_it() {
        let ruleset = json!({
            "rules": {"33": {"entries": [[0, 1]]}},
            "entries": [{"carrierid": "b", "overlay": 0, "position": 0},
                        {"gwid": "gw1", "overlay": 1, "position": 0}],
            "overlays": [{"attrs": {}}, {"attrs": {"region": ["fr"]}, "progress_timeout": 8}],
        });
        let directory = json!({"gateways": {"gw1": {"doc": "gateway:x:gw1", "carrierid": "a",
            "attrs": {"cdr": "a", "region": ["eu"]}, "weight": 2}}});
        let answer = json!({"ruleset": "ruleset:x:default", "rule": "rule:33", "prefix": "33",
            "destination": "france", "gateways": [{"gwid": "gw1", "carrierid": "a", "local": false,
            "attrs": {"cdr": "a", "region": ["eu", "fr"]}}]});
        let explained = explain(answer, &ruleset, &directory);
        let origins = &explained["gateways"][0]["origins"];
        assert_eq!(origins["attrs.cdr"]["from"], "gateway");
        assert_eq!(origins["attrs.cdr"]["doc"], "gateway:x:gw1");
        assert_eq!(origins["attrs.region"]["from"], "both");
        assert_eq!(origins["progress_timeout"]["from"], "route");
        assert_eq!(origins["progress_timeout"]["rule"], "rule:33");
        assert_eq!(origins["weight"]["from"], "gateway");
        assert_eq!(origins["answer_timeout"]["from"], "default");
        assert_eq!(origins["priority"]["from"], "gwlist position");
    }
}
