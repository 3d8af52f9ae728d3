//! Per-class manifests (pure): for one (edge type, sub-type), the master
//! packages assigned to it in execution order, each with its templates at
//! their latest versions and the effective path/owner/group/permissions,
//! and for every master and template the set-log sequence that last
//! changed it (`changed_at`), from which deltas are cut.
//!
//! `changed_at` of a master = the newest set-log entry that changed the
//! master itself (create/update/delete), its assignment to this class, or
//! the class. `changed_at` of a template in a master = the newest of that,
//! the template's versions and its link to the master. An edge at set
//! version `s` must receive exactly the entries newer than `s`, so a delta
//! is "everything whose `changed_at` is above `s`" (see `delta`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::model::{
    self, ACTIVE, AssignState, Class, DELETED, FileRef, Render, SetChange, assign_doc_id,
    link_doc_id, master_doc_id, template_doc_id,
};
use super::store::Store;

/// Effective owner, group and mode when neither the template nor its
/// master package gives one.
pub const FALLBACK_OWNER: &str = "root";
pub const FALLBACK_MODE: u32 = 0o644;

/// A problem found while building a manifest: the document and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    pub doc: Option<String>,
    pub reason: String,
}

impl Finding {
    pub fn doc(doc: &str, reason: impl Into<String>) -> Finding {
        Finding {
            doc: Some(doc.to_string()),
            reason: reason.into(),
        }
    }
}

/// One template as the class's edges get it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateEntry {
    pub template_id: u64,
    pub name: String,
    pub description: String,
    /// Target path (template's, else `<master path>/<name>`); may hold
    /// `$edge_id`. `None`: nowhere to install it (packages refuse).
    pub path: Option<String>,
    pub owner: String,
    pub group: String,
    pub mode: u32,
    pub render: Render,
    /// The latest version, in hundredths, and its comment.
    pub version: u64,
    pub comment: String,
    pub sha256: Option<String>,
    pub file: FileRef,
    pub changed_at: u64,
}

/// One master package as the class's edges get it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MasterEntry {
    pub master_id: u64,
    pub name: String,
    pub description: String,
    /// 1 active; 0 deleted or unassigned with uninstall (ships `uninstall.sh` only).
    pub status: u8,
    pub execution_sequence: Option<i64>,
    /// Directory inside the package.
    pub dir: String,
    pub changed_at: u64,
    pub uninstall: Option<FileRef>,
    pub pre_script: Option<FileRef>,
    pub post_script: Option<FileRef>,
    pub templates: Vec<TemplateEntry>,
}

/// What every edge of one class receives, and when each part last changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassManifest {
    pub edge_type: String,
    pub edge_sub_type: String,
    /// The global set log's newest entry (the seed's `latest_set_version`).
    pub latest_set_seq: u64,
    /// Its time (unix seconds): the packages' fixed mtime.
    pub latest_set_time: i64,
    /// Template variables of the class (edge variables override them).
    pub vars: Map<String, Value>,
    pub pre_gen: Option<FileRef>,
    pub post_gen: Option<FileRef>,
    /// In execution order: `execution_sequence` ascending, none first, then id.
    pub masters: Vec<MasterEntry>,
}

impl ClassManifest {
    pub fn class(&self) -> Class {
        Class {
            edge_type: self.edge_type.clone(),
            edge_sub_type: self.edge_sub_type.clone(),
        }
    }

    /// Every attachment a package of this class may need.
    pub fn file_refs(&self) -> Vec<&FileRef> {
        let mut refs: Vec<&FileRef> = self.pre_gen.iter().chain(&self.post_gen).collect();
        for master in &self.masters {
            refs.extend(
                [&master.uninstall, &master.pre_script, &master.post_script]
                    .into_iter()
                    .flatten(),
            );
            refs.extend(master.templates.iter().map(|t| &t.file));
        }
        refs
    }
}

/// When each part of the configuration last changed, from the set log.
#[derive(Default)]
struct ChangedAt {
    template: BTreeMap<u64, u64>,
    master: BTreeMap<u64, u64>,
    link: BTreeMap<(u64, u64), u64>,
    assignment: BTreeMap<u64, u64>,
    class: u64,
}

fn bump<K: Ord>(map: &mut BTreeMap<K, u64>, key: K, seq: u64) {
    let slot = map.entry(key).or_insert(0);
    *slot = (*slot).max(seq);
}

impl ChangedAt {
    fn of(store: &Store, class: &Class) -> ChangedAt {
        let mut at = ChangedAt::default();
        for entry in &store.log {
            let seq = entry.seq;
            match &entry.change {
                SetChange::TemplateVersion { template_id, .. } => {
                    bump(&mut at.template, *template_id, seq);
                }
                SetChange::Master { master_id } => bump(&mut at.master, *master_id, seq),
                SetChange::Link {
                    master_id,
                    template_id,
                } => bump(&mut at.link, (*master_id, *template_id), seq),
                SetChange::Assignment {
                    master_id,
                    class: c,
                } if c == class => {
                    bump(&mut at.assignment, *master_id, seq);
                }
                SetChange::Class { class: c } if c == class => at.class = at.class.max(seq),
                SetChange::Assignment { .. } | SetChange::Class { .. } => {}
            }
        }
        at
    }

    fn master(&self, master_id: u64) -> u64 {
        let get = |map: &BTreeMap<u64, u64>| map.get(&master_id).copied().unwrap_or(0);
        get(&self.master).max(get(&self.assignment)).max(self.class)
    }

    fn template(&self, master_at: u64, master_id: u64, template_id: u64) -> u64 {
        let version = self.template.get(&template_id).copied().unwrap_or(0);
        let link = self
            .link
            .get(&(master_id, template_id))
            .copied()
            .unwrap_or(0);
        master_at.max(version).max(link)
    }
}

/// The manifest of `class`, or `None` when the class does not exist.
///
/// A class exists when its `edge_class` document does, or when some master
/// package is assigned to it: the assignments are what its edges receive,
/// the class document only adds variables and scripts. So an index that
/// holds an assignment but not (or no longer) its class document still
/// serves the assigned packages instead of an empty set that would let an
/// edge believe it is up to date (issue 15).
pub fn class_manifest(store: &Store, class: &Class) -> Option<(ClassManifest, Vec<Finding>)> {
    let mut findings = Vec::new();
    let bare;
    let edge_class = match store.classes.get(class) {
        Some(edge_class) => edge_class,
        None if store.assignments.get(class).is_some_and(|a| !a.is_empty()) => {
            findings.push(Finding::doc(
                &model::class_doc_id(class),
                format!(
                    "edge class {class} has no document; its assignments are served without class variables or scripts"
                ),
            ));
            bare = model::EdgeClass {
                class: class.clone(),
                vars: Map::new(),
                pre_gen: None,
                post_gen: None,
            };
            &bare
        }
        None => return None,
    };
    let changed = ChangedAt::of(store, class);
    let mut masters = Vec::new();
    let assigned = store.assignments.get(class).cloned().unwrap_or_default();
    for (master_id, state) in assigned {
        let Some(master) = store.masters.get(&master_id) else {
            let reason = match store.problem(&master_doc_id(master_id)) {
                Some(why) => format!("master package {master_id} is unreadable: {why}"),
                None => format!("master package {master_id} does not exist"),
            };
            findings.push(Finding::doc(&assign_doc_id(master_id, class), reason));
            continue;
        };
        let master_at = changed.master(master_id);
        let templates = master_templates(store, master, master_at, &changed, &mut findings);
        let status = match state {
            AssignState::Assigned => master.status,
            AssignState::Uninstall => DELETED,
        };
        masters.push(MasterEntry {
            master_id,
            name: master.name.clone(),
            description: master.description.clone(),
            status,
            execution_sequence: master.execution_sequence,
            dir: model::master_dir(master.execution_sequence, &master.name, master_id),
            changed_at: master_at,
            uninstall: master.uninstall.clone(),
            pre_script: master.pre_script.clone(),
            post_script: master.post_script.clone(),
            templates,
        });
    }
    masters.sort_by_key(|m| {
        (
            m.execution_sequence.is_some(),
            m.execution_sequence,
            m.master_id,
        )
    });
    check_layout(&masters, &mut findings);
    let manifest = ClassManifest {
        edge_type: class.edge_type.clone(),
        edge_sub_type: class.edge_sub_type.clone(),
        latest_set_seq: store.latest_seq(),
        latest_set_time: store.latest_time(),
        vars: edge_class.vars.clone(),
        pre_gen: edge_class.pre_gen.clone(),
        post_gen: edge_class.post_gen.clone(),
        masters,
    };
    Some((manifest, findings))
}

fn master_templates(
    store: &Store,
    master: &model::Master,
    master_at: u64,
    changed: &ChangedAt,
    findings: &mut Vec<Finding>,
) -> Vec<TemplateEntry> {
    let mut entries = Vec::new();
    for template_id in store.master_templates(master.master_id) {
        let link = link_doc_id(master.master_id, template_id);
        let Some(template) = store.templates.get(&template_id) else {
            let reason = match store.problem(&template_doc_id(template_id)) {
                Some(why) => format!("template {template_id} is unreadable: {why}"),
                None => format!("template {template_id} does not exist"),
            };
            findings.push(Finding::doc(&link, reason));
            continue;
        };
        // A template without versions has nothing to install yet.
        let Some(version) = store.latest_version(template_id) else {
            continue;
        };
        let path = template.path.clone().or_else(|| {
            master
                .path
                .as_ref()
                .map(|dir| format!("{dir}/{}", template.name))
        });
        if path.is_none() {
            findings.push(Finding::doc(
                &template_doc_id(template_id),
                format!(
                    "template {template_id} has no path and master package {} has no default path",
                    master.master_id
                ),
            ));
        }
        entries.push(TemplateEntry {
            template_id,
            name: template.name.clone(),
            description: template.description.clone(),
            path,
            owner: template
                .owner
                .clone()
                .or_else(|| master.user.clone())
                .unwrap_or_else(|| FALLBACK_OWNER.into()),
            group: template
                .group
                .clone()
                .or_else(|| master.group.clone())
                .unwrap_or_else(|| FALLBACK_OWNER.into()),
            mode: template
                .permissions
                .or(master.permission)
                .unwrap_or(FALLBACK_MODE),
            render: template.render,
            version: version.version,
            comment: version.comment.clone(),
            sha256: version.sha256.clone(),
            file: version.file.clone(),
            changed_at: changed.template(master_at, master.master_id, template_id),
        });
    }
    entries
}

/// Two templates of one master with the same file name would overwrite
/// each other in its directory; a file name equal to a generated script
/// would replace it; two masters installing the same path fight over it.
fn check_layout(masters: &[MasterEntry], findings: &mut Vec<Finding>) {
    let mut paths: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for master in masters.iter().filter(|m| m.status == ACTIVE) {
        let mut names: BTreeSet<&str> = BTreeSet::new();
        for template in &master.templates {
            let Some(path) = &template.path else { continue };
            let name = model::file_name(path);
            let doc = template_doc_id(template.template_id);
            if model::RESERVED_FILE_NAMES.contains(&name) {
                findings.push(Finding::doc(
                    &doc,
                    format!("file name {name:?} is reserved for the package's own scripts"),
                ));
            } else if !names.insert(name) {
                findings.push(Finding::doc(
                    &doc,
                    format!(
                        "file name {name:?} is used twice in master package {}",
                        master.master_id
                    ),
                ));
            }
            // One template in several masters installs the same file twice:
            // allowed (the seed says so); two templates on one path are not.
            if let Some((m, t)) = paths.insert(path, (master.master_id, template.template_id))
                && t != template.template_id
            {
                findings.push(Finding::doc(
                    &doc,
                    format!(
                        "path {path:?} is also installed by template {t} of master package {m}"
                    ),
                ));
            }
        }
    }
}
