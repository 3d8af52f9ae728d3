//! The handlebars helpers the shipped templates use: per-format escaping of
//! every user value (`xml`, `kv`), one "native parameters" helper per
//! vendor that writes the whole parameter set in that vendor's syntax, the
//! file names a template refers to (`file_name`), the provisioning base URL,
//! Grandstream's numbered per-account P-codes, and `flatten`, which writes
//! any configuration subtree as native lines, attributes or elements. Helpers write straight
//! to the output, so the registry's own escaping never applies twice. Pure.

use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext, RenderError,
    RenderErrorReason, ScopedJson,
};
use serde_json::Value;

use super::params::{Frame, Params};
use super::{ModelRef, by_brand, cisco, fanvil, grandstream, polycom, snom, yealink};
use crate::domains::phones::mac::Mac;

/// Builds one vendor's native parameters for the context being rendered.
type Build = fn(&Frame<'_>, &mut Vec<String>) -> Params;
/// Writes them in the vendor's syntax (the helper's hash may select a part).
type Write = fn(&Params, &Helper<'_>) -> String;

struct NativeParams {
    build: Build,
    write: Write,
}

impl HelperDef for NativeParams {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let frame = Frame::from_context(ctx.data());
        let params = (self.build)(&frame, &mut Vec::new());
        out.write(&(self.write)(&params, h))?;
        Ok(())
    }
}

/// The native parameter helpers, by name.
pub(super) fn native_helpers() -> [(&'static str, Build, Write); 6] {
    [
        ("yealink_params", yealink::params, yealink::write_params),
        ("polycom_params", polycom::params, polycom::write_params),
        ("cisco_params", cisco::params, cisco::write_params),
        (
            "grandstream_params",
            grandstream::params,
            grandstream::write_params,
        ),
        ("snom_params", snom::params, snom::write_params),
        ("fanvil_params", fanvil::params, fanvil::write_params),
    ]
}

pub(super) fn register(registry: &mut Handlebars<'_>) {
    registry.register_helper("xml", Box::new(xml_helper));
    registry.register_helper("kv", Box::new(kv_helper));
    registry.register_helper("file_name", Box::new(file_name_helper));
    registry.register_helper("provisioning_url", Box::new(ProvisioningUrl));
    registry.register_helper("gs_param", Box::new(gs_param_helper));
    registry.register_helper("flatten", Box::new(flatten_helper));
    for (name, build, write) in native_helpers() {
        registry.register_helper(name, Box::new(NativeParams { build, write }));
    }
}

/// Text for XML element content and attribute values (`crate::xml`).
pub fn xml_escape(text: &str) -> String {
    crate::xml::escape(text)
}

/// Text for a `key = value` line: control characters (line breaks above
/// all, which would start a new parameter) are dropped.
pub fn line_text(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() && !matches!(c, '\u{2028}' | '\u{2029}'))
        .collect()
}

/// A helper argument as text: strings as they are, numbers and booleans in
/// JSON form, anything missing or structured as nothing.
fn arg_text(h: &Helper<'_>, index: usize) -> String {
    match h.param(index).map(|p| p.value()) {
        Some(Value::String(s)) => s.clone(),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
        _ => String::new(),
    }
}

/// The escaped value's text. Handlebars' strict mode does not reach helper
/// arguments, so the escaping helpers apply it themselves: a value the
/// context lacks is an error (a misspelt field must not render as
/// nothing), unless the call says `optional=true`.
fn escaped_arg(
    h: &Helper<'_>,
    registry: &Handlebars<'_>,
    helper: &str,
) -> Result<String, RenderError> {
    let param = h
        .param(0)
        .ok_or_else(|| other(format!("{helper}: needs a value")))?;
    let optional = h
        .hash_get("optional")
        .is_some_and(|v| v.value() == &Value::Bool(true));
    if registry.strict_mode() && param.is_value_missing() && !optional {
        let path = param.relative_path().map_or("?", String::as_str);
        return Err(other(format!("{helper}: {path} is not in the context")));
    }
    Ok(arg_text(h, 0))
}

fn xml_helper(
    h: &Helper<'_>,
    registry: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    out.write(&xml_escape(&escaped_arg(h, registry, "xml")?))?;
    Ok(())
}

fn kv_helper(
    h: &Helper<'_>,
    registry: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    out.write(&line_text(&escaped_arg(h, registry, "kv")?))?;
    Ok(())
}

/// `{{file_name "role"}}`: the name of another file of the same model (and
/// unit), computed by the same code as `Vendor::files`, so a master file
/// or boot file can never name a file the phone will not be served.
fn file_name_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    ctx: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let role = arg_text(h, 0);
    let root = ctx.data();
    let model = &root["model"];
    let text = |key: &str| model.get(key).and_then(Value::as_str);
    let brand = text("brand").unwrap_or_default();
    let vendor =
        by_brand(brand).ok_or_else(|| other(format!("file_name: unknown brand {brand:?}")))?;
    let model_ref = ModelRef {
        brand,
        family: text("family"),
        model: text("model").unwrap_or_default(),
        meta: model.get("meta").unwrap_or(&Value::Null),
    };
    let mac = root
        .get("mac")
        .and_then(|m| m.get("lower"))
        .and_then(Value::as_str)
        .and_then(Mac::parse);
    let name = vendor
        .file_name(&role, &model_ref, mac.as_ref())
        .ok_or_else(|| {
            other(format!(
                "file_name: {brand} has no file {role:?} for this model"
            ))
        })?;
    out.write(&name)?;
    Ok(())
}

fn other(message: String) -> RenderError {
    RenderErrorReason::Other(message).into()
}

/// `(provisioning_url)`: the base URL phones reach caldera at, without a
/// trailing slash: `config.provisioning.url` when set, else
/// `http://<account realm>` (the Host that selects the account).
struct ProvisioningUrl;

impl HelperDef for ProvisioningUrl {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        _: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        Ok(ScopedJson::Derived(Value::String(provisioning_url(
            ctx.data(),
        ))))
    }
}

pub fn provisioning_url(context: &Value) -> String {
    let configured = context
        .pointer("/config/provisioning/url")
        .and_then(Value::as_str)
        .map(|url| url.trim_end_matches('/'))
        .filter(|url| !url.is_empty());
    match configured {
        Some(url) => url.to_string(),
        None => {
            let realm = context
                .pointer("/account/realm")
                .and_then(Value::as_str)
                .unwrap_or_default();
            format!("http://{realm}")
        }
    }
}

/// `{{gs_param line "field" value}}`: `<Pnnn>value</Pnnn>` with the P-code
/// of `field` for SIP account `line`.
fn gs_param_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let line = h
        .param(0)
        .and_then(|p| p.value().as_u64())
        .ok_or_else(|| other("gs_param: the first argument is a line number".into()))?;
    let field = arg_text(h, 1);
    let code = grandstream::account_code(line as u32, &field).ok_or_else(|| {
        other(format!(
            "gs_param: no P-code for {field:?} of account {line}"
        ))
    })?;
    out.write(&format!("<{code}>{}</{code}>", xml_escape(&arg_text(h, 2))))?;
    Ok(())
}

/// `{{flatten subtree format="lines"|"attributes"|"elements"}}`: any
/// configuration subtree as native parameters, for template overrides that
/// place a subtree of their own (`{{flatten config.site_extras
/// format="attributes"}}` inside a Polycom element). Nested keys join with
/// dots; names the format cannot carry are skipped, values escaped; no
/// cross-vendor mapping and no filtering (that is `<brand>_params`).
fn flatten_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let Some(tree) = h.param(0).and_then(|p| p.value().as_object()) else {
        return Ok(());
    };
    let format = hash_text(h, "format").unwrap_or_else(|| "lines".to_string());
    let key_ok: fn(&str) -> bool = match format.as_str() {
        "lines" => yealink::key_ok,
        "attributes" => polycom::key_ok,
        "elements" => cisco::key_ok,
        other => return Err(self::other(format!("flatten: unknown format {other:?}"))),
    };
    let mut params = Params::default();
    super::params::flatten_nested(
        tree,
        super::params::ONE_ZERO,
        key_ok,
        &mut params,
        &mut Vec::new(),
    );
    let mut text = String::new();
    for (path, param) in params.iter() {
        let name = path.joined(".");
        match format.as_str() {
            "lines" => text.push_str(&format!("{name} = {}\n", line_text(&param.text))),
            "attributes" => text.push_str(&format!("\n    {name}=\"{}\"", xml_escape(&param.text))),
            _ => text.push_str(&format!("  <{name}>{}</{name}>\n", xml_escape(&param.text))),
        }
    }
    out.write(&text)?;
    Ok(())
}

/// The hash argument `name` of a helper call, as text.
pub(super) fn hash_text(h: &Helper<'_>, name: &str) -> Option<String> {
    h.hash_get(name)
        .and_then(|v| v.value().as_str())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_escape_neutralises_markup_and_controls() {
        assert_eq!(
            xml_escape("A&B <x> \"q\" 'a'\r\n\u{0}z"),
            "A&amp;B &lt;x&gt; &quot;q&quot; &apos;a&apos;z"
        );
        assert_eq!(xml_escape("Zoë 東京"), "Zoë 東京");
    }

    #[test]
    fn line_text_cannot_start_a_new_line() {
        assert_eq!(
            line_text("Bob\naccount.1.password = x"),
            "Bobaccount.1.password = x"
        );
        assert_eq!(line_text("a\r\u{85}b\u{2028}\u{2029}"), "ab");
    }

    #[test]
    fn flatten_writes_any_subtree_in_the_chosen_syntax() {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        register(&mut registry);
        let data = serde_json::json!({"extra": {"a": {"b": 1, "c": "x<y"}, "bad name": 2}});
        let render = |t: &str| registry.render_template(t, &data).unwrap();
        assert_eq!(render("{{flatten extra}}"), "a.b = 1\na.c = x<y\n");
        assert_eq!(
            render("<e{{flatten extra format=\"attributes\"}}/>"),
            "<e\n    a.b=\"1\"\n    a.c=\"x&lt;y\"/>"
        );
        assert_eq!(
            render("{{flatten extra format=\"elements\"}}"),
            "  <a.b>1</a.b>\n  <a.c>x&lt;y</a.c>\n"
        );
        assert_eq!(render("{{flatten missing}}"), "");
        assert!(
            registry
                .render_template("{{flatten extra format=\"yaml\"}}", &data)
                .is_err()
        );
    }

    #[test]
    fn provisioning_url_prefers_the_configured_base() {
        let context = serde_json::json!({
            "account": {"realm": "acme.example.net"},
            "config": {"provisioning": {"url": "https://prov.example.net/p/"}}
        });
        assert_eq!(provisioning_url(&context), "https://prov.example.net/p");
        let context = serde_json::json!({"account": {"realm": "acme.example.net"}, "config": {}});
        assert_eq!(provisioning_url(&context), "http://acme.example.net");
    }
}
