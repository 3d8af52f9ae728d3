//! Every `edge_config` document typed at once (pure): templates and their
//! versions, master packages, links, assignments, edge classes and the set
//! log, plus the reason each unreadable document was left out. Builders
//! derive every edge output from a `Store`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::model::{
    AssignState, Class, ConfigDoc, EdgeClass, Master, SetEntry, Template, TemplateVersion,
    parse_config_doc,
};

/// The typed content of `edge_config`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Store {
    pub templates: BTreeMap<u64, Template>,
    /// template id → version number → version.
    pub versions: BTreeMap<u64, BTreeMap<u64, TemplateVersion>>,
    pub masters: BTreeMap<u64, Master>,
    /// (master id, template id).
    pub links: BTreeSet<(u64, u64)>,
    pub assignments: BTreeMap<Class, BTreeMap<u64, AssignState>>,
    pub classes: BTreeMap<Class, EdgeClass>,
    /// The set log in sequence order.
    pub log: Vec<SetEntry>,
    /// Documents left out: id → reason.
    pub problems: BTreeMap<String, String>,
}

/// A document as the store takes it: its JSON, or why it could not be read.
pub type RawDoc<'a> = (&'a str, Result<&'a Value, &'a str>);

impl Store {
    pub fn from_docs<'a>(docs: impl IntoIterator<Item = RawDoc<'a>>) -> Store {
        let mut store = Store::default();
        for (id, body) in docs {
            match body {
                Err(reason) => {
                    store.problems.insert(id.to_string(), reason.to_string());
                }
                Ok(json) => match parse_config_doc(id, json) {
                    Ok(doc) => store.add(doc),
                    Err(reason) => {
                        store.problems.insert(id.to_string(), reason);
                    }
                },
            }
        }
        store.log.sort_by_key(|e| e.seq);
        store
    }

    fn add(&mut self, doc: ConfigDoc) {
        match doc {
            ConfigDoc::Template(t) => {
                self.templates.insert(t.template_id, t);
            }
            ConfigDoc::Version(v) => {
                self.versions
                    .entry(v.template_id)
                    .or_default()
                    .insert(v.version, v);
            }
            ConfigDoc::Master(m) => {
                self.masters.insert(m.master_id, m);
            }
            ConfigDoc::Link {
                master_id,
                template_id,
            } => {
                self.links.insert((master_id, template_id));
            }
            ConfigDoc::Assignment(a) => {
                self.assignments
                    .entry(a.class)
                    .or_default()
                    .insert(a.master_id, a.state);
            }
            ConfigDoc::Class(c) => {
                self.classes.insert(c.class.clone(), c);
            }
            ConfigDoc::SetEntry(e) => self.log.push(e),
            ConfigDoc::Other => {}
        }
    }

    /// The newest version of a template.
    pub fn latest_version(&self, template_id: u64) -> Option<&TemplateVersion> {
        self.versions
            .get(&template_id)
            .and_then(|v| v.values().next_back())
    }

    /// The templates of a master package, by template id.
    pub fn master_templates(&self, master_id: u64) -> impl Iterator<Item = u64> + '_ {
        self.links
            .range((master_id, 0)..=(master_id, u64::MAX))
            .map(|(_, t)| *t)
    }

    /// The newest set-log entry's sequence (0: empty log).
    pub fn latest_seq(&self) -> u64 {
        self.log.last().map_or(0, |e| e.seq)
    }

    /// The newest set-log entry's time (unix seconds; 0: empty log).
    pub fn latest_time(&self) -> i64 {
        self.log.last().map_or(0, |e| e.time)
    }

    pub fn problem(&self, id: &str) -> Option<&str> {
        self.problems.get(id).map(String::as_str)
    }
}
