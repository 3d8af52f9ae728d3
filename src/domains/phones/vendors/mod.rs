//! Phone vendors: which files each model asks for, the MAC grammars of
//! their file names and User-Agents, the shipped templates that render
//! those files in each vendor's native format, and the shipped parameter
//! catalogue ("unit options"). Pure: no IO, no clock.
//!
//! This module is the contract between the phones core (documents, merge,
//! builder, serving) and the vendor knowledge. The core never knows a
//! vendor's file names or formats; it asks this module.
//!
//! # Render context
//!
//! Every template is rendered by handlebars in strict mode with this
//! context (the core builds it; fields marked *device* are absent from
//! model-common files, which must never carry secrets):
//!
//! ```json
//! {
//!   "account": {"id": "…", "name": "…", "realm": "acme.sip.example.net"},
//!   "model":   {"brand": "yealink", "family": "t4x", "model": "t46s", "meta": {…}},
//!   "config":  { …the merged configuration (catalogue defaults included)… },
//!   "files":   {"common": ["y000000000066.cfg"], "device": ["805ec0123456.cfg"]},
//!   "unit":    {"id": "…", "name": "…"},                                   (device)
//!   "mac":     {"lower": "805ec0123456", "upper": "805EC0123456",
//!               "colons": "80:5e:c0:12:34:56"},                            (device)
//!   "lines":   [{"line": 1, "label": "…", "display_name": "…",
//!                "username": "…", "password": "…", "realm": "…"}]         (device)
//! }
//! ```
//!
//! For a model-common file, `config` is the merge of the layers that do not
//! depend on a unit (catalogue defaults, account `defaults`, account
//! `config`).
//!
//! # Catalogue shape
//!
//! `catalogue()` is a tree `{brand: node}`, a node being
//! `{"description": …, "schema": {JSON-Schema subset}, "meta": {…},
//! "families": {family: node}}` at vendor level, `"models": {model: node}`
//! at family level. The effective node of a model merges vendor → family →
//! model, the child winning (objects merged recursively). `meta` carries
//! what the vendor code needs to name files (e.g. Yealink's model number).

use handlebars::Handlebars;
use serde_json::Value;

use super::mac::Mac;

mod yealink;

/// Whether a file is shared by every unit of a model in an account, or
/// belongs to one unit (and then may carry its SIP credentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileClass {
    Common,
    Device,
}

/// One file a model produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// The exact name phones request, no directory (`805ec0123456.cfg`).
    pub name: String,
    pub class: FileClass,
    /// The shipped template that renders it: a name from `templates()`,
    /// also what a `template` override document's `file` names.
    pub template: &'static str,
    pub content_type: &'static str,
}

/// A model as the catalogue describes it.
#[derive(Debug, Clone, Copy)]
pub struct ModelRef<'a> {
    pub brand: &'a str,
    pub family: Option<&'a str>,
    pub model: &'a str,
    /// The effective `meta` of the model (vendor → family → model merged).
    pub meta: &'a Value,
}

/// What caldera knows about one vendor's phones.
pub trait Vendor: Sync {
    /// The brand as units name it (`yealink`).
    fn brand(&self) -> &'static str;

    /// Every file a unit of `model` with `mac` asks for, both classes.
    fn files(&self, model: &ModelRef<'_>, mac: &Mac) -> Vec<FileSpec>;

    /// The MAC this vendor's per-device file grammar puts in `file` (a bare
    /// name, no directory), if `file` is such a name.
    fn mac_in_file(&self, file: &str) -> Option<Mac>;

    /// Whether `user_agent` is one of this vendor's phones.
    fn recognises_user_agent(&self, user_agent: &str) -> bool;

    /// The MAC in one of this vendor's User-Agents, when it carries one.
    fn mac_in_user_agent(&self, user_agent: &str) -> Option<Mac>;
}

static VENDORS: &[&dyn Vendor] = &[&yealink::Yealink];

/// Every vendor, in a fixed order.
pub fn all() -> &'static [&'static dyn Vendor] {
    VENDORS
}

pub fn by_brand(brand: &str) -> Option<&'static dyn Vendor> {
    VENDORS.iter().copied().find(|v| v.brand() == brand)
}

/// The shipped templates: `(name, source)`, names `<brand>/<file>.hbs`.
pub fn templates() -> &'static [(&'static str, &'static str)] {
    yealink::TEMPLATES
}

/// Registers the handlebars helpers the shipped templates use.
pub fn register_helpers(_registry: &mut Handlebars<'_>) {}

/// The shipped parameter catalogue (see the module comment for its shape).
pub fn catalogue() -> &'static Value {
    static CATALOGUE: std::sync::LazyLock<Value> =
        std::sync::LazyLock::new(|| serde_json::json!({ "yealink": yealink::catalogue() }));
    &CATALOGUE
}
