//! The parameter schemas of the catalogue: a JSON-Schema subset (`type`,
//! `enum`, `minimum`/`maximum`, `minLength`/`maxLength`, `pattern`,
//! `default`, `description`, nested `properties`, `items`,
//! `additionalProperties: false`). Pure.
//!
//! Written by hand: the general JSON Schema crates validate a whole
//! instance and report errors, but a configuration layer must be
//! *cleaned* — violating leaves removed so the weaker layer's value stands,
//! the rest kept — which is a different walk. `null` is never a violation:
//! in a layer it means "remove this key".

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use regex::Regex;
use serde_json::{Map, Value};

use super::model::pointer_escape;

/// One value a schema refuses, by JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    pub path: String,
    pub reason: String,
}

/// Compiled `pattern`s, shared by every build (patterns repeat across
/// thousands of units). Bounded: cleared when it grows past the cap.
fn pattern(source: &str) -> Option<Arc<Regex>> {
    static CACHE: LazyLock<Mutex<HashMap<String, Option<Arc<Regex>>>>> =
        LazyLock::new(Mutex::default);
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(found) = cache.get(source) {
        return found.clone();
    }
    if cache.len() > 4096 {
        cache.clear();
    }
    let compiled = regex::RegexBuilder::new(source)
        .size_limit(1 << 20)
        .build()
        .ok()
        .map(Arc::new);
    cache.insert(source.to_string(), compiled.clone());
    compiled
}

/// `object` with the values `schema` refuses removed, and the refusals.
/// `path` is the JSON pointer of `object` itself.
pub fn clean(
    schema: &Value,
    object: &Map<String, Value>,
    path: &str,
) -> (Map<String, Value>, Vec<Violation>) {
    let mut violations = Vec::new();
    let kept = clean_object(schema, object, path, &mut violations);
    (kept, violations)
}

fn clean_object(
    schema: &Value,
    object: &Map<String, Value>,
    path: &str,
    violations: &mut Vec<Violation>,
) -> Map<String, Value> {
    let properties = schema.get("properties").and_then(Value::as_object);
    let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
    let mut kept = Map::new();
    for (key, value) in object {
        let child = format!("{path}/{}", pointer_escape(key));
        if value.is_null() {
            kept.insert(key.clone(), Value::Null);
            continue;
        }
        match properties.and_then(|p| p.get(key)) {
            Some(sub) => {
                if let Some(value) = clean_value(sub, value, &child, violations) {
                    kept.insert(key.clone(), value);
                }
            }
            None if closed => violations.push(Violation {
                path: child,
                reason: "is not a parameter of this model".into(),
            }),
            None => {
                kept.insert(key.clone(), value.clone());
            }
        }
    }
    kept
}

/// The value as the schema accepts it (objects partially), or `None`.
fn clean_value(
    schema: &Value,
    value: &Value,
    path: &str,
    violations: &mut Vec<Violation>,
) -> Option<Value> {
    if let Err(reason) = check_scalar(schema, value) {
        violations.push(Violation {
            path: path.to_string(),
            reason,
        });
        return None;
    }
    match value {
        Value::Object(map) if has_structure(schema) => {
            let kept = clean_object(schema, map, path, violations);
            // Emptied by the cleaning: dropping the key keeps the layer
            // from creating an empty object the author never wrote.
            (map.is_empty() || !kept.is_empty()).then_some(Value::Object(kept))
        }
        Value::Array(items) => match schema.get("items").filter(|s| s.is_object()) {
            Some(item_schema) => {
                let mut inner = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    check_whole(item_schema, item, &format!("{path}/{i}"), &mut inner);
                }
                if inner.is_empty() {
                    Some(value.clone())
                } else {
                    // Arrays are replaced whole, so a bad element drops the array.
                    violations.extend(inner);
                    None
                }
            }
            None => Some(value.clone()),
        },
        _ => Some(value.clone()),
    }
}

fn has_structure(schema: &Value) -> bool {
    schema.get("properties").is_some() || schema.get("additionalProperties").is_some()
}

/// Validates a value completely (array elements: nothing is kept partially).
fn check_whole(schema: &Value, value: &Value, path: &str, violations: &mut Vec<Violation>) {
    if value.is_null() {
        return;
    }
    if let Err(reason) = check_scalar(schema, value) {
        violations.push(Violation {
            path: path.to_string(),
            reason,
        });
        return;
    }
    match value {
        Value::Object(map) if has_structure(schema) => {
            clean_object(schema, map, path, violations);
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items").filter(|s| s.is_object()) {
                for (i, item) in items.iter().enumerate() {
                    check_whole(item_schema, item, &format!("{path}/{i}"), violations);
                }
            }
        }
        _ => {}
    }
}

/// The keywords about the value itself (not its members).
fn check_scalar(schema: &Value, value: &Value) -> Result<(), String> {
    if let Some(types) = schema.get("type") {
        let allowed: Vec<&str> = match types {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !allowed.is_empty() && !allowed.iter().any(|t| has_type(value, t)) {
            return Err(format!(
                "{} is not of type {}",
                describe(value),
                allowed.join(" or ")
            ));
        }
    }
    if let Some(Value::Array(choices)) = schema.get("enum")
        && !choices.contains(value)
    {
        let list: Vec<String> = choices.iter().map(Value::to_string).collect();
        return Err(format!(
            "{} is not one of {}",
            describe(value),
            list.join(", ")
        ));
    }
    if let Some(number) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && number < min
        {
            return Err(format!(
                "{value} is below the minimum {}",
                schema["minimum"]
            ));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && number > max
        {
            return Err(format!(
                "{value} is above the maximum {}",
                schema["maximum"]
            ));
        }
    }
    if let Some(text) = value.as_str() {
        let length = text.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && length < min
        {
            return Err(format!(
                "{} is shorter than {min} characters",
                describe(value)
            ));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && length > max
        {
            return Err(format!(
                "{} is longer than {max} characters",
                describe(value)
            ));
        }
        if let Some(source) = schema.get("pattern").and_then(Value::as_str)
            && let Some(regex) = pattern(source)
            && !regex.is_match(text)
        {
            return Err(format!(
                "{} does not match the pattern {source:?}",
                describe(value)
            ));
        }
    }
    Ok(())
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        // A type this subset does not know restricts nothing.
        _ => true,
    }
}

/// A short rendering of a value for messages (long strings cut).
fn describe(value: &Value) -> String {
    match value {
        Value::Object(_) => "an object".into(),
        Value::Array(_) => "a list".into(),
        Value::String(text) if text.chars().count() > 40 => {
            let cut: String = text.chars().take(40).collect();
            format!("{cut:?}…")
        }
        other => other.to_string(),
    }
}

/// Problems with a schema itself (for `phone_model` writes): wrong keyword
/// types, unknown types, patterns that do not compile, defaults the schema
/// refuses.
pub fn check_schema(schema: &Value, path: &str) -> Vec<Violation> {
    let mut problems = Vec::new();
    check_schema_node(schema, path, &mut problems);
    problems
}

fn check_schema_node(schema: &Value, path: &str, problems: &mut Vec<Violation>) {
    let mut problem = |keyword: &str, reason: String| {
        problems.push(Violation {
            path: format!("{path}/{keyword}"),
            reason,
        });
    };
    let Some(node) = schema.as_object() else {
        problems.push(Violation {
            path: path.to_string(),
            reason: "a schema is an object".into(),
        });
        return;
    };
    const TYPES: [&str; 7] = [
        "string", "number", "integer", "boolean", "object", "array", "null",
    ];
    match node.get("type") {
        None => {}
        Some(Value::String(t)) if TYPES.contains(&t.as_str()) => {}
        Some(Value::Array(ts))
            if ts
                .iter()
                .all(|t| t.as_str().is_some_and(|t| TYPES.contains(&t))) => {}
        Some(other) => problem(
            "type",
            format!("{other} is not a type (one of {})", TYPES.join(", ")),
        ),
    }
    if node.get("enum").is_some_and(|e| !e.is_array()) {
        problem("enum", "enum is a list".into());
    }
    for keyword in ["minimum", "maximum"] {
        if node.get(keyword).is_some_and(|v| !v.is_number()) {
            problem(keyword, format!("{keyword} is a number"));
        }
    }
    for keyword in ["minLength", "maxLength"] {
        if node.get(keyword).is_some_and(|v| !v.is_u64()) {
            problem(keyword, format!("{keyword} is a non-negative integer"));
        }
    }
    match node.get("pattern") {
        None => {}
        Some(Value::String(source)) if pattern(source).is_some() => {}
        Some(_) => problem("pattern", "pattern is not a regular expression".into()),
    }
    if let Some(default) = node.get("default")
        && let Err(reason) = check_scalar(schema, default)
    {
        problem("default", format!("the default {reason}"));
    }
    match node.get("properties") {
        None => {}
        Some(Value::Object(properties)) => {
            for (key, sub) in properties {
                check_schema_node(
                    sub,
                    &format!("{path}/properties/{}", pointer_escape(key)),
                    problems,
                );
            }
        }
        Some(_) => problems.push(Violation {
            path: format!("{path}/properties"),
            reason: "properties is an object".into(),
        }),
    }
    if let Some(items) = node.get("items") {
        check_schema_node(items, &format!("{path}/items"), problems);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "vlan": {"type": "integer", "minimum": 1, "maximum": 4094},
            "codecs": {"type": "array", "items": {"enum": ["pcmu", "pcma", "g722", "opus"]}},
            "tz": {"type": "string", "pattern": "^[A-Z][a-z]+/[A-Za-z_]+$", "default": "Europe/Paris"},
            "ring": {"type": "string", "enum": ["a", "b"], "default": "a"},
            "net": {"type": "object", "additionalProperties": false, "properties": {
                "ntp": {"type": "string", "minLength": 3, "default": "pool.ntp.org"},
                "mtu": {"type": ["integer", "null"], "maximum": 1500}}},
            "label": {"maxLength": 5}
        }})
    }

    fn cleaned(value: Value) -> (Value, Vec<String>) {
        let (kept, violations) = clean(&schema(), value.as_object().unwrap(), "/config");
        let reasons = violations
            .into_iter()
            .map(|v| format!("{} {}", v.path, v.reason))
            .collect();
        (Value::Object(kept), reasons)
    }

    #[test]
    fn violating_leaves_are_dropped_and_the_rest_kept() {
        let (kept, reasons) = cleaned(json!({
            "vlan": 5000, "codecs": ["pcmu", "gsm"], "tz": "paris", "ring": "c",
            "net": {"ntp": "x", "mtu": 1400, "dns": "1.1.1.1"}, "label": "abcdef",
            "free": {"any": "thing"}, "gone": null
        }));
        assert_eq!(
            kept,
            json!({"net": {"mtu": 1400}, "free": {"any": "thing"}, "gone": null})
        );
        assert_eq!(
            reasons,
            [
                "/config/codecs/1 \"gsm\" is not one of \"pcmu\", \"pcma\", \"g722\", \"opus\"",
                "/config/label \"abcdef\" is longer than 5 characters",
                "/config/net/dns is not a parameter of this model",
                "/config/net/ntp \"x\" is shorter than 3 characters",
                "/config/ring \"c\" is not one of \"a\", \"b\"",
                "/config/tz \"paris\" does not match the pattern \"^[A-Z][a-z]+/[A-Za-z_]+$\"",
                "/config/vlan 5000 is above the maximum 4094",
            ]
        );
    }

    #[test]
    fn good_values_pass_untouched() {
        let value = json!({"vlan": 10, "codecs": ["opus"], "tz": "Europe/Paris", "net": {"mtu": null}, "label": "ab"});
        let (kept, reasons) = cleaned(value.clone());
        assert!(reasons.is_empty(), "{reasons:?}");
        assert_eq!(kept, value);
        let (_, reasons) = cleaned(json!({"vlan": "10", "net": 3}));
        assert_eq!(
            reasons,
            [
                "/config/net 3 is not of type object",
                "/config/vlan \"10\" is not of type integer"
            ]
        );
        // 10.0 is an integer in JSON Schema; 10.5 is not.
        assert!(cleaned(json!({"vlan": 10.0})).1.is_empty());
        assert_eq!(cleaned(json!({"vlan": 10.5})).1.len(), 1);
    }

    #[test]
    fn broken_schemas_are_reported() {
        let problems = check_schema(
            &json!({"type": "thing", "properties": {"a": {"pattern": "(", "minimum": "1"},
                    "b": {"type": "integer", "default": "x"}}}),
            "/schema",
        );
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/schema/type",
                "/schema/properties/a/minimum",
                "/schema/properties/a/pattern",
                "/schema/properties/b/default"
            ]
        );
        assert!(check_schema(&schema(), "").is_empty());
    }
}
