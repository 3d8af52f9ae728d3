//! Rendering phone files: a handlebars registry in strict mode holding the
//! shipped templates (`vendors::templates()`, helpers from
//! `vendors::register_helpers`), with `template` override documents
//! registered over them. Pure (the registries are memoised, which changes
//! nothing observable).
//!
//! Overrides come from operators, so they are contained: they may not use
//! partials or decorators (a partial can include itself, and unbounded
//! recursion would take the whole daemon down), the `log` helper is gone
//! (it would write configuration — SIP passwords — into the logs), and a
//! rendered file is capped in size. A template that does not compile or
//! does not render is an error on the files it renders, never a panic.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

use handlebars::template::{Template, TemplateElement};
use handlebars::{Handlebars, no_escape};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::vendors;

/// The largest file a template may render.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// Distinct override sets kept compiled.
const CACHE_SIZE: usize = 256;

/// One `template` document applied to a render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateOverride {
    /// The override document's id.
    pub doc: String,
    /// The shipped template it replaces.
    pub template: String,
    /// The body, or why the override has none usable.
    pub source: Result<String, String>,
}

/// Compiled templates, ready to render.
pub struct Templates {
    handlebars: Handlebars<'static>,
    /// Templates that cannot be used, with why.
    broken: BTreeMap<String, String>,
    /// Which override document provides a template.
    overridden: BTreeMap<String, String>,
}

impl Templates {
    /// Renders template `name` with `context`.
    ///
    /// # Errors
    /// The template is missing or broken, a value it names is missing
    /// (strict mode), or the result is too large.
    pub fn render(&self, name: &str, context: &Value) -> Result<String, String> {
        let what = match self.overridden.get(name) {
            Some(doc) => format!("template {name} (override {doc})"),
            None => format!("template {name}"),
        };
        if let Some(why) = self.broken.get(name) {
            return Err(format!("{what}: {why}"));
        }
        if !self.handlebars.has_template(name) {
            return Err(format!("{what} is not shipped"));
        }
        let mut out = Capped::default();
        let rendered = self.handlebars.render_to_write(name, context, &mut out);
        if out.over {
            // Checked while writing: nested loops could otherwise grow the
            // output without bound before any check after the fact.
            return Err(format!(
                "{what} renders more than the {MAX_FILE_BYTES}-byte limit"
            ));
        }
        rendered.map_err(|err| format!("{what}: {}", render_error(&err)))?;
        String::from_utf8(out.bytes).map_err(|_| format!("{what} rendered invalid UTF-8"))
    }

    /// The override document behind a template, if any.
    pub fn override_of(&self, name: &str) -> Option<&str> {
        self.overridden.get(name).map(String::as_str)
    }
}

/// Collects output up to `MAX_FILE_BYTES`, then fails every write.
#[derive(Default)]
struct Capped {
    bytes: Vec<u8>,
    over: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_FILE_BYTES {
            self.over = true;
            return Err(std::io::Error::other("output limit reached"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn render_error(err: &handlebars::RenderError) -> String {
    let mut text = err.reason().to_string();
    if let Some(line) = err.line_no {
        text.push_str(&format!(" (line {line}"));
        if let Some(column) = err.column_no {
            text.push_str(&format!(", column {column}"));
        }
        text.push(')');
    }
    text
}

/// The shipped templates, compiled once: the vendors' own registry
/// (strict mode, their helpers, no HTML escaping), without `log`. A
/// shipped template that does not compile (a build defect the vendors'
/// tests catch) fails every shipped file with the reason, not the daemon.
fn shipped() -> &'static (Handlebars<'static>, BTreeMap<String, String>) {
    static SHIPPED: LazyLock<(Handlebars<'static>, BTreeMap<String, String>)> =
        LazyLock::new(|| {
            let (mut handlebars, broken) = match vendors::registry() {
                Ok(registry) => (registry, BTreeMap::new()),
                Err(err) => {
                    let mut registry = Handlebars::new();
                    registry.set_strict_mode(true);
                    registry.register_escape_fn(no_escape);
                    vendors::register_helpers(&mut registry);
                    let why = format!("the shipped templates do not compile: {err}");
                    let broken = vendors::templates()
                        .iter()
                        .map(|(name, _)| (name.to_string(), why.clone()))
                        .collect();
                    (registry, broken)
                }
            };
            handlebars.unregister_helper("log");
            (handlebars, broken)
        });
    &SHIPPED
}

/// Whether a shipped template of this name exists.
pub fn is_shipped(name: &str) -> bool {
    vendors::templates().iter().any(|(n, _)| *n == name)
}

/// Why an override source cannot be used, if it cannot.
pub fn check_override(source: &str) -> Result<Template, String> {
    let template = Template::compile(source).map_err(|err| format!("does not compile: {err}"))?;
    if uses_partials(&template) {
        return Err("uses partials or decorators, which template overrides may not".into());
    }
    Ok(template)
}

fn uses_partials(template: &Template) -> bool {
    template.elements.iter().any(|element| match element {
        TemplateElement::PartialExpression(_)
        | TemplateElement::PartialBlock(_)
        | TemplateElement::DecoratorExpression(_)
        | TemplateElement::DecoratorBlock(_) => true,
        TemplateElement::HelperBlock(helper) => {
            helper.template.as_ref().is_some_and(uses_partials)
                || helper.inverse.as_ref().is_some_and(uses_partials)
        }
        _ => false,
    })
}

/// The templates with `overrides` applied (compiled once per distinct set).
pub fn templates(overrides: &[TemplateOverride]) -> Arc<Templates> {
    static CACHE: LazyLock<Mutex<HashMap<[u8; 32], Arc<Templates>>>> =
        LazyLock::new(Mutex::default);
    let mut key = Sha256::new();
    for o in overrides {
        let source = match &o.source {
            Ok(text) => format!("ok:{text}"),
            Err(why) => format!("err:{why}"),
        };
        for part in [&o.doc, &o.template, &source] {
            key.update(part.len().to_le_bytes());
            key.update(part.as_bytes());
        }
    }
    let key: [u8; 32] = key.finalize().into();
    if let Some(found) = lock(&CACHE).get(&key) {
        return found.clone();
    }
    let built = Arc::new(compile(overrides));
    let mut cache = lock(&CACHE);
    if cache.len() >= CACHE_SIZE {
        cache.clear();
    }
    cache.insert(key, built.clone());
    built
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn compile(overrides: &[TemplateOverride]) -> Templates {
    let (shipped, shipped_broken) = shipped();
    let mut handlebars = shipped.clone();
    let mut broken = shipped_broken.clone();
    let mut overridden = BTreeMap::new();
    for o in overrides {
        overridden.insert(o.template.clone(), o.doc.clone());
        match o
            .source
            .as_deref()
            .map_err(Clone::clone)
            .and_then(check_override)
        {
            Ok(template) => {
                broken.remove(&o.template);
                handlebars.register_template(&o.template, template);
            }
            Err(why) => {
                broken.insert(o.template.clone(), why);
            }
        }
    }
    Templates {
        handlebars,
        broken,
        overridden,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn over(template: &str, source: &str) -> TemplateOverride {
        TemplateOverride {
            doc: "tpl".into(),
            template: template.into(),
            source: Ok(source.into()),
        }
    }

    #[test]
    fn strict_mode_names_the_missing_value() {
        let t = templates(&[over("yealink/common.cfg.hbs", "a={{config.missing}}\n")]);
        let err = t
            .render("yealink/common.cfg.hbs", &json!({"config": {}}))
            .unwrap_err();
        assert!(err.contains("override tpl"), "{err}");
        assert!(err.contains("missing"), "{err}");
        let ok = t.render(
            "yealink/common.cfg.hbs",
            &json!({"config": {"missing": "<&>"}}),
        );
        assert_eq!(ok.unwrap(), "a=<&>\n", "no HTML escaping");
    }

    #[test]
    fn overrides_cannot_use_partials_or_log() {
        for source in [
            "{{> yealink/common.cfg.hbs}}",
            "{{#if x}}{{> p}}{{/if}}",
            "{{#*inline \"p\"}}x{{/inline}}",
        ] {
            let t = templates(&[over("yealink/common.cfg.hbs", source)]);
            let err = t
                .render("yealink/common.cfg.hbs", &json!({"x": true}))
                .unwrap_err();
            assert!(err.contains("partials"), "{source}: {err}");
        }
        let t = templates(&[over("yealink/common.cfg.hbs", "{{log config}}")]);
        assert!(
            t.render("yealink/common.cfg.hbs", &json!({"config": 1}))
                .is_err()
        );
        let t = templates(&[over("yealink/common.cfg.hbs", "{{#each")]);
        assert!(
            t.render("yealink/common.cfg.hbs", &json!({}))
                .unwrap_err()
                .contains("does not compile")
        );
    }

    #[test]
    fn shipped_templates_render_without_overrides() {
        let t = templates(&[]);
        assert!(is_shipped("yealink/common.cfg.hbs"));
        let context = json!({
            "account": {"id": "a", "name": "A", "realm": "acme.sip.example.net"},
            "model": {"brand": "yealink", "family": "t4x", "model": "t46s", "meta": {"file_id": "66"}},
            "config": {}, "files": {"common": [], "device": []},
        });
        let body = t.render("yealink/common.cfg.hbs", &context).unwrap();
        assert!(body.starts_with("#!version:1.0.0.1"), "{body}");
        // Strict mode: a context without what the template reads fails.
        assert!(t.render("yealink/common.cfg.hbs", &json!({})).is_err());
        assert!(
            t.render("nope.hbs", &json!({}))
                .unwrap_err()
                .contains("not shipped")
        );
    }

    #[test]
    fn huge_output_is_refused() {
        let t = templates(&[over(
            "yealink/common.cfg.hbs",
            "{{#each items}}{{../big}}{{/each}}",
        )]);
        let big = "x".repeat(1 << 16);
        let items: Vec<u32> = (0..20).collect();
        let err = t
            .render(
                "yealink/common.cfg.hbs",
                &json!({"big": big, "items": items}),
            )
            .unwrap_err();
        assert!(err.contains("limit"), "{err}");
    }
}
