//! Deltas (pure): what an edge at a given set version receives from its
//! class manifest, and the seed's `template_set/latest` answer for it.
//!
//! * No set version (or one above the latest, e.g. after a restore): the
//!   full set — every active master package with templates, every deleted
//!   one (so its uninstall runs).
//! * Set version `s`: a master whose own `changed_at` is above `s` comes
//!   whole; otherwise only its templates changed after `s`. A deleted
//!   master comes only when its own change is newer than `s` (a later
//!   template version does not re-run its uninstall).
//!
//! Masters without any template to list are left out (nothing to install),
//! except deleted ones.

use serde_json::{Value, json};

use super::manifest::{ClassManifest, MasterEntry, TemplateEntry};
use super::model::{ACTIVE, permissions_number, render_set_version, substitute_edge_id};

/// From which set version a delta is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Since {
    /// Everything.
    Full,
    /// What changed after this sequence.
    After(u64),
}

impl Since {
    /// The effective starting point for a requested set version: absent or
    /// ahead of the log → the full set.
    pub fn for_request(set_seq: Option<u64>, latest: u64) -> Since {
        match set_seq {
            Some(seq) if seq <= latest => Since::After(seq),
            _ => Since::Full,
        }
    }

    pub fn seq(self) -> Option<u64> {
        match self {
            Since::Full => None,
            Since::After(seq) => Some(seq),
        }
    }
}

/// One master package of a delta with the templates it brings.
#[derive(Debug, Clone, PartialEq)]
pub struct Selected<'a> {
    pub master: &'a MasterEntry,
    pub templates: Vec<&'a TemplateEntry>,
}

/// The master packages (in execution order) an edge at `since` receives.
pub fn select(manifest: &ClassManifest, since: Since) -> Vec<Selected<'_>> {
    manifest
        .masters
        .iter()
        .filter_map(|master| {
            let templates: Vec<&TemplateEntry> = match since {
                Since::Full => master.templates.iter().collect(),
                Since::After(_) if master.status != ACTIVE => master.templates.iter().collect(),
                Since::After(s) if master.changed_at > s => master.templates.iter().collect(),
                Since::After(s) => master
                    .templates
                    .iter()
                    .filter(|t| t.changed_at > s)
                    .collect(),
            };
            let wanted = match since {
                _ if master.status != ACTIVE => since.seq().is_none_or(|s| master.changed_at > s),
                _ => !templates.is_empty(),
            };
            wanted.then_some(Selected { master, templates })
        })
        .collect()
}

/// The seed's answer to `template_set/latest`: `data` (master packages with
/// their `config_template`s) and the global `latest_set_version`.
pub fn template_set_answer(selected: &[Selected<'_>], latest_seq: u64, edge_id: &str) -> Value {
    let data: Vec<Value> = selected.iter().map(|s| master_json(s, edge_id)).collect();
    json!({ "data": data, "latest_set_version": render_set_version(latest_seq) })
}

fn master_json(selected: &Selected<'_>, edge_id: &str) -> Value {
    let master = selected.master;
    let templates: Vec<Value> = selected
        .templates
        .iter()
        .map(|t| template_json(t, edge_id))
        .collect();
    json!({
        "name": master.name,
        "description": master.description,
        "status": master.status,
        "execution_sequence": master.execution_sequence,
        "master_package_id": master.master_id,
        "config_template": templates,
    })
}

fn template_json(template: &TemplateEntry, edge_id: &str) -> Value {
    json!({
        "name": template.name,
        "description": template.description,
        "path": template.path.as_deref().map(|p| substitute_edge_id(p, edge_id)),
        "owner": template.owner,
        "group": template.group,
        "permissions": permissions_number(template.mode),
        "template_id": template.template_id,
        "latest_version": {
            "version_no": render_set_version(template.version),
            "comment": template.comment,
        },
    })
}
