//! Pure core: Kazoo's `system_config` category documents and the lookup,
//! write and delete rules on them. No IO.
//!
//! A category document holds one object per section: `default`, a zone, or
//! a node name (`ecallmgr@kz1.example.net`). A key is a path of one or more
//! names into a section.

use serde_json::{Map, Value};

use crate::domains::Issue;

/// The source name of the `system_config` database.
pub const SOURCE: &str = "system_config";

/// The section every lookup ends in and every plain write goes to.
pub const DEFAULT_SECTION: &str = "default";

/// Fields CouchDB manages that are not part of a category's content.
const COUCH_FIELDS: [&str; 5] = [
    "_rev",
    "_conflicts",
    "_attachments",
    "_revisions",
    "_deleted_conflicts",
];

/// A lookup's answer and the section it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found<'a> {
    pub section: &'a str,
    pub value: &'a Value,
}

/// The cache content of a category: the document without CouchDB's own
/// fields, plus the problems found in it.
pub fn category_content(doc: &Value, id: &str) -> (Value, Vec<Issue>) {
    let mut issues = Vec::new();
    let Some(fields) = doc.as_object() else {
        issues.push(Issue::doc(SOURCE, id, "the document is not a JSON object"));
        return (Value::Object(Map::new()), issues);
    };
    let mut content = Map::new();
    for (name, value) in fields {
        if COUCH_FIELDS.contains(&name.as_str()) {
            continue;
        }
        if is_section_name(name) && !value.is_object() {
            let reason = format!("section {name:?} is not an object; lookups skip it");
            issues.push(Issue::doc(SOURCE, id, reason));
        }
        content.insert(name.clone(), value.clone());
    }
    (Value::Object(content), issues)
}

/// Top-level names that are sections (not ids or Kazoo's private fields).
fn is_section_name(name: &str) -> bool {
    !(name.starts_with('_') || name.starts_with("pvt_") || name == "id")
}

/// The sections searched, in order: the node's, the zone's, then `default`.
/// Asking for node `default` searches only `default`, as Kazoo does.
pub fn search_order<'a>(node: &'a str, zone: &'a str) -> Vec<&'a str> {
    if node == DEFAULT_SECTION {
        return vec![DEFAULT_SECTION];
    }
    let mut order = vec![node];
    for section in [zone, DEFAULT_SECTION] {
        if !order.contains(&section) {
            order.push(section);
        }
    }
    order
}

/// The first section (in `search_order`) that defines `key`, taking its
/// whole value; an explicit `null` counts as defined.
pub fn lookup<'a>(
    content: &'a Value,
    key: &[String],
    node: &'a str,
    zone: &'a str,
) -> Option<Found<'a>> {
    search_order(node, zone).into_iter().find_map(|section| {
        let value = get_path(content.get(section)?, key)?;
        Some(Found { section, value })
    })
}

/// The value at `key` inside `value`; every step must be an object.
pub fn get_path<'a>(value: &'a Value, key: &[String]) -> Option<&'a Value> {
    key.iter()
        .try_fold(value, |current, name| current.as_object()?.get(name))
}

/// Why a write cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("{path} is not an object, so {key} cannot be set inside it")]
    NotAnObject { path: String, key: String },
}

/// Sets (or, for `None`, deletes) `section.key...` in a category document.
/// Returns whether the document changed.
///
/// # Errors
/// A step of the path exists but is not an object; nothing is overwritten.
pub fn write_path(
    doc: &mut Value,
    section: &str,
    key: &[String],
    value: Option<&Value>,
) -> Result<bool, WriteError> {
    let mut path: Vec<String> = Vec::with_capacity(key.len() + 1);
    path.push(section.to_string());
    path.extend(key.iter().cloned());
    let (leaf, parents) = path
        .split_last()
        .expect("the path holds at least the section");
    let mut current = doc;
    for (depth, name) in parents.iter().enumerate() {
        let object = current
            .as_object_mut()
            .ok_or_else(|| not_an_object(&path[..depth], &path))?;
        if value.is_none() && !object.contains_key(name) {
            return Ok(false);
        }
        current = object
            .entry(name.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let object = current
        .as_object_mut()
        .ok_or_else(|| not_an_object(parents, &path))?;
    Ok(match value {
        Some(value) if object.get(leaf) == Some(value) => false,
        Some(value) => {
            object.insert(leaf.clone(), value.clone());
            true
        }
        None => object.remove(leaf).is_some(),
    })
}

fn not_an_object(prefix: &[String], path: &[String]) -> WriteError {
    WriteError::NotAnObject {
        path: prefix.join("."),
        key: path.join("."),
    }
}

/// A new category document holding one value.
pub fn new_category(id: &str, section: &str, key: &[String], value: &Value) -> Value {
    let mut doc = serde_json::json!({ "_id": id, "pvt_type": "config" });
    write_path(&mut doc, section, key, Some(value))
        .expect("a fresh document has only objects on the path");
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    fn doc() -> Value {
        json!({
            "_id": "ecallmgr",
            "default": {"fs_nodes": ["a"], "acls": {"x": 1}, "null_here": "default", "nested": {"a": {"b": 2}}},
            "local": {"fs_nodes": ["zone"]},
            "ecallmgr@kz1": {"fs_nodes": ["node"], "null_here": null, "acls": {"y": 2}}
        })
    }

    #[test]
    fn node_then_zone_then_default_whole_value() {
        let doc = doc();
        let found = |k: &[&str], node| lookup(&doc, &key(k), node, "local");
        assert_eq!(
            found(&["fs_nodes"], "ecallmgr@kz1"),
            Some(Found {
                section: "ecallmgr@kz1",
                value: &json!(["node"])
            })
        );
        assert_eq!(
            found(&["fs_nodes"], "ecallmgr@kz2"),
            Some(Found {
                section: "local",
                value: &json!(["zone"])
            })
        );
        // Whole-value precedence: the node's acls replace default's, no merge.
        assert_eq!(
            found(&["acls"], "ecallmgr@kz1"),
            Some(Found {
                section: "ecallmgr@kz1",
                value: &json!({"y": 2})
            })
        );
        // An explicit null is a hit and shadows default.
        assert_eq!(
            found(&["null_here"], "ecallmgr@kz1"),
            Some(Found {
                section: "ecallmgr@kz1",
                value: &Value::Null
            })
        );
        assert_eq!(
            found(&["nested", "a", "b"], "x"),
            Some(Found {
                section: "default",
                value: &json!(2)
            })
        );
        assert_eq!(found(&["nested", "a", "b", "c"], "x"), None);
        assert_eq!(found(&["missing"], "ecallmgr@kz1"), None);
        // Node "default" searches only the default section.
        assert_eq!(
            found(&["fs_nodes"], "default"),
            Some(Found {
                section: "default",
                value: &json!(["a"])
            })
        );
    }

    #[test]
    fn writes_create_paths_delete_leaves_and_refuse_to_clobber() {
        let mut doc = doc();
        assert_eq!(
            write_path(&mut doc, "default", &key(&["new", "deep"]), Some(&json!(5))),
            Ok(true)
        );
        assert_eq!(doc["default"]["new"]["deep"], json!(5));
        assert_eq!(
            write_path(&mut doc, "default", &key(&["new", "deep"]), Some(&json!(5))),
            Ok(false)
        );
        assert_eq!(
            write_path(&mut doc, "ecallmgr@kz1", &key(&["acls"]), None),
            Ok(true)
        );
        assert!(doc["ecallmgr@kz1"].get("acls").is_none());
        assert_eq!(
            write_path(&mut doc, "nowhere", &key(&["x"]), None),
            Ok(false)
        );
        assert!(
            doc.get("nowhere").is_none(),
            "deleting must not create sections"
        );
        let err = write_path(
            &mut doc,
            "default",
            &key(&["fs_nodes", "x"]),
            Some(&json!(1)),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "default.fs_nodes is not an object, so default.fs_nodes.x cannot be set inside it"
        );
    }

    #[test]
    fn content_drops_couch_fields_and_flags_bad_sections() {
        let (content, issues) = category_content(
            &json!({"_id": "c", "_rev": "3-x", "default": 5, "pvt_type": "config", "n": {}}),
            "c",
        );
        assert_eq!(
            content,
            json!({"_id": "c", "default": 5, "pvt_type": "config", "n": {}})
        );
        assert_eq!(issues.len(), 1);
        assert!(issues[0].reason.contains("\"default\" is not an object"));
    }
}
