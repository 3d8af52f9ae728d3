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
//! Templates read `model.meta` (file naming), `account.realm`, `mac.*`
//! and `lines[].*`; the parameter helpers read `config`, `model.meta`,
//! `lines[].line`, `account.realm` and whether `mac` is present (a
//! model-common context has no `mac`). `unit` and `files` are not used by
//! the shipped templates; overrides may use them.
//!
//! # Configuration keys
//!
//! `config` holds two kinds of keys (the catalogue describes both):
//!
//! * cross-vendor keys every template maps to its own parameters:
//!   `codecs` (ordered list), `time.ntp_server`, `phone_book` (`name`,
//!   `url`, `entries`), `keys` (BLF and speed-dial keys by position) and
//!   `provisioning.url`;
//! * `config.<brand>`: the vendor's own parameters, keys being the
//!   vendor's parameter names (the seed's idea), flattened into the file by
//!   the vendor's `<brand>_params` helper, winning over the cross-vendor
//!   mapping of the same parameter. Template overrides can place any other
//!   subtree with `{{flatten <subtree> format="lines"|"attributes"|"elements"}}`.
//!
//! User values go through `{{xml …}}` or `{{kv …}}` (escaping for XML, and
//! for one-line `key = value` formats); both fail on a value the context
//! lacks unless called with `optional=true`, as strict mode would.
//!
//! Whatever a configuration says, a file never carries a parameter that
//! identifies a line (credentials, registrar, label: only `lines` set
//! them), and a model-common file never carries a parameter whose name
//! says it is a secret.
//!
//! # Names several vendors claim
//!
//! `<mac>.cfg` is per-device for Yealink, Polycom and Fanvil, and
//! `<MAC>.xml` for Snom is `<mac>.xml` for Cisco MPP when the MAC has no
//! letters. `mac_in_file` of each of these vendors accepts such a name, so
//! the core must resolve a request by the unit that owns the MAC (in the
//! request's account) and then ask *that unit's* vendor whether the name is
//! one of its files, never the other way round. Model-common names shared
//! by several models of one brand in an account (`y000000000000.boot`,
//! Polycom's `000000000000.cfg`) are disambiguated by
//! `Vendor::model_in_user_agent`.
//!
//! # Catalogue shape
//!
//! `catalogue()` is a tree `{brand: node}`, a node being
//! `{"description": …, "schema": {JSON-Schema subset}, "meta": {…},
//! "families": {family: node}}` at vendor level, `"models": {model: node}`
//! at family level. The effective node of a model merges vendor → family →
//! model, the child winning (objects merged recursively): see
//! `effective_model`. `meta` carries what the vendor code needs to name
//! files and map keys: `lines` and `line_keys` (counts) for every model,
//! and per vendor Yealink's `file_id`, Cisco's `profile` (`spa`/`mpp`) and
//! `psn`, Grandstream's `file_model` (default: the model id) and
//! `bare_cfg`, Snom's `name`, Fanvil's `file_id`; `model_problems` reports
//! what a model lacks. Schemas use the JSON-Schema subset of the spec plus
//! `items` (the element schema of an array, for `codecs` and `keys`).

use handlebars::Handlebars;
use serde_json::Value;

use super::mac::Mac;

mod catalogue;
pub mod cisco;
pub mod fanvil;
pub mod grammar;
pub mod grandstream;
mod helpers;
pub mod params;
pub mod polycom;
pub mod sample;
pub mod snom;
pub mod yealink;

#[cfg(test)]
mod tests;

pub use catalogue::{EffectiveModel, defaults, effective_model, merge, models};
pub use helpers::{line_text, provisioning_url, xml_escape};

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

/// A file a vendor may produce: its role (what `Vendor::file_name` is
/// asked to name), its class and the shipped template that renders it.
pub(crate) type FileRole = (&'static str, FileClass, &'static str);

/// The files among `roles` that `vendor` names for `model` and `mac`, all
/// of `content_type` (a role the model has no name for is left out).
pub(crate) fn named_files<V: Vendor + ?Sized>(
    vendor: &V,
    model: &ModelRef<'_>,
    mac: &Mac,
    content_type: &'static str,
    roles: &[FileRole],
) -> Vec<FileSpec> {
    roles
        .iter()
        .filter_map(|&(role, class, template)| {
            let name = vendor.file_name(role, model, Some(mac))?;
            Some(FileSpec {
                name,
                class,
                template,
                content_type,
            })
        })
        .collect()
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
    /// Model-common names never depend on `mac`.
    fn files(&self, model: &ModelRef<'_>, mac: &Mac) -> Vec<FileSpec>;

    /// The model-common files of `model` (what the core builds once per
    /// account and model).
    fn common_files(&self, model: &ModelRef<'_>) -> Vec<FileSpec> {
        // Any MAC will do: common names do not contain it.
        let placeholder = Mac::parse("020000000000").expect("a valid MAC literal");
        self.files(model, &placeholder)
            .into_iter()
            .filter(|f| f.class == FileClass::Common)
            .collect()
    }

    /// The MAC this vendor's per-device file grammar puts in `file` (a bare
    /// name, no directory), if `file` is such a name.
    fn mac_in_file(&self, file: &str) -> Option<Mac>;

    /// Whether `user_agent` is one of this vendor's phones.
    fn recognises_user_agent(&self, user_agent: &str) -> bool;

    /// The MAC in one of this vendor's User-Agents, when it carries one.
    fn mac_in_user_agent(&self, user_agent: &str) -> Option<Mac>;

    /// The catalogue model id one of this vendor's User-Agents names
    /// (`t46s`, `vvx500`, `cp-8841-3pcc`), when it names one. The core uses
    /// it to pick among models sharing a common file name.
    fn model_in_user_agent(&self, _user_agent: &str) -> Option<String> {
        None
    }

    /// The name of the file playing `role` for `model` (and `mac`, for
    /// per-device roles); the roles are each vendor's own (`device_cfg`,
    /// `site`, …). `files` is built from it, and templates reach it through
    /// the `file_name` helper.
    fn file_name(&self, _role: &str, _model: &ModelRef<'_>, _mac: Option<&Mac>) -> Option<String> {
        None
    }

    /// Whether the phone uploads `file` (a bare name) with PUT: logs, and
    /// for Polycom its local changes, contacts and call lists. The core
    /// accepts and discards such uploads (size-capped).
    fn accepts_upload(&self, _file: &str) -> bool {
        false
    }

    /// What the catalogue entry of `model` lacks for this vendor to name or
    /// render its files (`meta.file_id` missing, …). Files that cannot be
    /// named are left out of `files`.
    fn model_problems(&self, _model: &ModelRef<'_>) -> Vec<String> {
        Vec::new()
    }

    /// Whether a parameter name in this vendor's files holds a secret, for
    /// masking a file shown to people (`phones::mask`): by its words, unless
    /// the vendor's names say nothing (Grandstream's P-codes).
    fn names_secret(&self, name: &str) -> bool {
        params::names_a_secret(name)
    }
}

static VENDORS: &[&dyn Vendor] = &[
    &yealink::Yealink,
    &polycom::Polycom,
    &cisco::Cisco,
    &grandstream::Grandstream,
    &snom::Snom,
    &fanvil::Fanvil,
];

/// Every vendor, in a fixed order.
pub fn all() -> &'static [&'static dyn Vendor] {
    VENDORS
}

pub fn by_brand(brand: &str) -> Option<&'static dyn Vendor> {
    VENDORS.iter().copied().find(|v| v.brand() == brand)
}

/// The shipped templates: `(name, source)`, names `<brand>/<file>.hbs`.
pub fn templates() -> &'static [(&'static str, &'static str)] {
    static TEMPLATES: std::sync::LazyLock<Vec<(&'static str, &'static str)>> =
        std::sync::LazyLock::new(|| {
            [
                yealink::TEMPLATES,
                polycom::TEMPLATES,
                cisco::TEMPLATES,
                grandstream::TEMPLATES,
                snom::TEMPLATES,
                fanvil::TEMPLATES,
            ]
            .concat()
        });
    &TEMPLATES
}

/// Registers the handlebars helpers the shipped templates use.
pub fn register_helpers(registry: &mut Handlebars<'_>) {
    helpers::register(registry);
}

/// A strict-mode registry holding the helpers and every shipped template,
/// as the core renders them (without HTML escaping: the shipped templates
/// escape every user value with the format's helper, so the registry's
/// escape function makes no difference to them).
pub fn registry() -> Result<Handlebars<'static>, handlebars::TemplateError> {
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    registry.register_escape_fn(handlebars::no_escape);
    register_helpers(&mut registry);
    for (name, source) in templates() {
        registry.register_template_string(name, source)?;
    }
    Ok(registry)
}

/// The shipped parameter catalogue (see the module comment for its shape).
pub fn catalogue() -> &'static Value {
    static CATALOGUE: std::sync::LazyLock<Value> = std::sync::LazyLock::new(catalogue::shipped);
    &CATALOGUE
}

/// The vendor whose phones send `user_agent`, if any.
pub fn vendor_of_user_agent(user_agent: &str) -> Option<&'static dyn Vendor> {
    VENDORS
        .iter()
        .copied()
        .find(|v| v.recognises_user_agent(user_agent))
}

/// Every vendor whose per-device grammar accepts `file`, with the MAC it
/// reads (several for the names in "Names several vendors claim").
pub fn vendors_claiming(file: &str) -> Vec<(&'static dyn Vendor, Mac)> {
    VENDORS
        .iter()
        .filter_map(|v| v.mac_in_file(file).map(|mac| (*v, mac)))
        .collect()
}

/// What the configuration of a render context (see "Render context") says
/// that the context's vendor cannot write: unknown codecs, keys past the
/// model's keys, malformed native parameter names or values. The files
/// render anyway, without those; the core reports these on the unit.
pub fn config_problems(context: &Value) -> Vec<String> {
    let brand = context
        .pointer("/model/brand")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let frame = params::Frame::from_context(context);
    let mut problems = Vec::new();
    match helpers::native_helpers()
        .into_iter()
        .find(|(name, _, _)| name.strip_suffix("_params") == Some(brand))
    {
        Some((_, build, _)) => {
            build(&frame, &mut problems);
        }
        None => problems.push(format!("no vendor {brand:?}")),
    }
    problems
}
