//! The catalog (pure): every template, master package and edge class with
//! what the management listings show (ids, names, latest versions, links,
//! assignments) and the global latest set sequence — one small output the
//! listing endpoints answer from, so management reads never wait on CouchDB.

use serde_json::{Value, json};

use super::manifest::Finding;
use super::model::{AssignState, permissions_number, render_set_version};
use super::store::Store;

/// The catalog's content and every document the store could not read.
pub fn catalog(store: &Store) -> (Value, Vec<Finding>) {
    let templates: Vec<Value> = store
        .templates
        .values()
        .map(|t| {
            let latest = store.latest_version(t.template_id);
            json!({
                "id": t.template_id,
                "name": t.name,
                "description": t.description,
                "owner": t.owner,
                "group": t.group,
                "permissions": t.permissions.map(permissions_number),
                "path": t.path,
                "render": t.render.name(),
                "version": latest.map(|v| v.version),
                "version_no": latest.map(|v| render_set_version(v.version)),
                "comment": latest.map(|v| v.comment.clone()),
            })
        })
        .collect();
    let masters: Vec<Value> = store
        .masters
        .values()
        .map(|m| {
            let classes: Vec<Value> = store
                .assignments
                .iter()
                .filter_map(|(class, masters)| {
                    let state = masters.get(&m.master_id)?;
                    let state = match state {
                        AssignState::Assigned => "assigned",
                        AssignState::Uninstall => "uninstall",
                    };
                    Some(json!({
                        "edge_type": class.edge_type,
                        "edge_sub_type": class.edge_sub_type,
                        "state": state,
                    }))
                })
                .collect();
            json!({
                "id": m.master_id,
                "name": m.name,
                "description": m.description,
                "status": m.status,
                "execution_sequence": m.execution_sequence,
                "path": m.path,
                "user": m.user,
                "group": m.group,
                "permission": m.permission.map(permissions_number),
                "templates": store.master_templates(m.master_id).collect::<Vec<_>>(),
                "classes": classes,
            })
        })
        .collect();
    let classes: Vec<Value> = store
        .classes
        .keys()
        .map(|c| json!({ "edge_type": c.edge_type, "edge_sub_type": c.edge_sub_type }))
        .collect();
    let findings = store
        .problems
        .iter()
        .map(|(doc, reason)| Finding::doc(doc, reason.clone()))
        .collect();
    let content = json!({
        "latest_set_seq": store.latest_seq(),
        "latest_set_version": render_set_version(store.latest_seq()),
        "set_log_entries": store.log.len(),
        "templates": templates,
        "masters": masters,
        "classes": classes,
    });
    (content, findings)
}
