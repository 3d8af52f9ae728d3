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

use std::borrow::Cow;

use serde::Serialize;

use super::manifest::{ClassManifest, MasterEntry, TemplateEntry};
use super::model::{
    ACTIVE, has_edge_id_placeholder, permissions_number, render_set_version, substitute_edge_id,
};

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
/// their `config_template`s) and the global `latest_set_version`, as JSON
/// text in the seed's key order (serialised straight from the manifest:
/// this is the hot path of every poll).
pub fn template_set_answer(selected: &[Selected<'_>], latest_seq: u64, edge_id: &str) -> Vec<u8> {
    let answer = AnswerJson {
        data: selected
            .iter()
            .map(|s| MasterJson {
                name: &s.master.name,
                description: &s.master.description,
                status: s.master.status,
                execution_sequence: s.master.execution_sequence,
                master_package_id: s.master.master_id,
                config_template: s
                    .templates
                    .iter()
                    .map(|t| TemplateJson::new(t, edge_id))
                    .collect(),
            })
            .collect(),
        latest_set_version: render_set_version(latest_seq),
    };
    serde_json::to_vec(&answer).expect("answers serialize")
}

#[derive(Serialize)]
struct AnswerJson<'a> {
    data: Vec<MasterJson<'a>>,
    latest_set_version: String,
}

#[derive(Serialize)]
struct MasterJson<'a> {
    name: &'a str,
    description: &'a str,
    status: u8,
    execution_sequence: Option<i64>,
    master_package_id: u64,
    config_template: Vec<TemplateJson<'a>>,
}

#[derive(Serialize)]
struct TemplateJson<'a> {
    name: &'a str,
    description: &'a str,
    path: Option<Cow<'a, str>>,
    owner: &'a str,
    group: &'a str,
    permissions: u64,
    template_id: u64,
    latest_version: VersionJson<'a>,
}

#[derive(Serialize)]
struct VersionJson<'a> {
    version_no: String,
    comment: &'a str,
}

impl<'a> TemplateJson<'a> {
    fn new(template: &'a TemplateEntry, edge_id: &str) -> TemplateJson<'a> {
        let path = template.path.as_deref().map(|p| {
            if has_edge_id_placeholder(p) {
                Cow::Owned(substitute_edge_id(p, edge_id))
            } else {
                Cow::Borrowed(p)
            }
        });
        TemplateJson {
            name: &template.name,
            description: &template.description,
            path,
            owner: &template.owner,
            group: &template.group,
            permissions: permissions_number(template.mode),
            template_id: template.template_id,
            latest_version: VersionJson {
                version_no: render_set_version(template.version),
                comment: &template.comment,
            },
        }
    }
}
