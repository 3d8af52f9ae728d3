//! Snom (D7xx, 7xx). The phone asks for the model file `snom<Model>.htm`
//! (`snomD785.htm`; `meta.name` is the model as Snom spells it), whose
//! `<setting-files>` point it to its own file `snom<Model>-<MAC>.htm`, the
//! MAC in upper case (Snom expands `{mac}` so). The XML variants
//! `snom<Model>.xml` and `<MAC>.xml` carry the same settings. Files are
//! `<settings><phone-settings>` XML with a `perm` on every setting (`R`:
//! provisioning owns it) and `idx` on per-identity ones, and function keys
//! in `<functionKeys>`. Newer firmware puts the upper-case MAC in the
//! User-Agent (`… snomD785-SIP 10.1.33.33 … 000413922D24 SXM:0 UXM:0)`).

use handlebars::Helper;
use serde_json::{Map, Value};

use super::grammar::{Case, any_hex12, bounded, mac_between, starts_with_ignore_case};
use super::helpers::{hash_text, xml_escape};
use super::params::{Bools, Frame, KeyKind, Neutral, Param, Params, Path, finish, scalar_text};
use super::{FileClass, FileSpec, ModelRef, Vendor, named_files};
use crate::domains::phones::mac::Mac;

pub struct Snom;

pub const BRAND: &str = "snom";

const XML: &str = "application/xml";

const ON_OFF: Bools = Bools {
    yes: "on",
    no: "off",
};

/// The permission caldera gives every setting it writes: the user may read
/// it, provisioning keeps it.
const PERM: &str = "R";

pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "snom/common.xml.hbs",
        include_str!("templates/snom/common.xml.hbs"),
    ),
    (
        "snom/device.xml.hbs",
        include_str!("templates/snom/device.xml.hbs"),
    ),
];

/// The model as Snom spells it in file names: `D785`, `720`.
fn snom_name<'a>(model: &ModelRef<'a>) -> Option<&'a str> {
    let name = model.meta.get("name").and_then(Value::as_str)?;
    let ok =
        !name.is_empty() && name.len() <= 16 && name.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then_some(name)
}

impl Vendor for Snom {
    fn brand(&self) -> &'static str {
        BRAND
    }

    fn files(&self, model: &ModelRef<'_>, mac: &Mac) -> Vec<FileSpec> {
        named_files(
            self,
            model,
            mac,
            XML,
            &[
                ("common_htm", FileClass::Common, "snom/common.xml.hbs"),
                ("common_xml", FileClass::Common, "snom/common.xml.hbs"),
                ("device_htm", FileClass::Device, "snom/device.xml.hbs"),
                ("device_xml", FileClass::Device, "snom/device.xml.hbs"),
            ],
        )
    }

    fn file_name(&self, role: &str, model: &ModelRef<'_>, mac: Option<&Mac>) -> Option<String> {
        let name = snom_name(model);
        match role {
            "common_htm" => name.map(|n| format!("snom{n}.htm")),
            "common_xml" => name.map(|n| format!("snom{n}.xml")),
            "device_htm" => name
                .zip(mac)
                .map(|(n, m)| format!("snom{n}-{}.htm", m.upper())),
            "device_xml" => mac.map(|m| format!("{}.xml", m.upper())),
            // As `<setting-files>` names it: the phone puts its MAC for `{mac}`.
            "device_rule" => name.map(|n| format!("snom{n}-{{mac}}.htm")),
            _ => None,
        }
    }

    fn mac_in_file(&self, file: &str) -> Option<Mac> {
        if let Some(mac) = mac_between(file, "", ".xml", Case::Upper) {
            return Some(mac);
        }
        // `snom<Model>-<MAC>.htm` or `.xml`, the model being letters and digits.
        let rest = file.strip_prefix("snom")?;
        let (model, tail) = rest.split_once('-')?;
        if model.is_empty() || !model.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        mac_between(tail, "", ".htm", Case::Upper)
            .or_else(|| mac_between(tail, "", ".xml", Case::Upper))
    }

    fn recognises_user_agent(&self, user_agent: &str) -> bool {
        product_token(user_agent).is_some()
    }

    fn mac_in_user_agent(&self, user_agent: &str) -> Option<Mac> {
        product_token(user_agent)?;
        bounded(user_agent)?
            .split_whitespace()
            .map(|word| word.trim_end_matches(')'))
            .find_map(any_hex12)
    }

    fn model_in_user_agent(&self, user_agent: &str) -> Option<String> {
        let product = product_token(user_agent)?;
        let model = product[4..].split('-').next()?.to_ascii_lowercase();
        (!model.is_empty()).then_some(model)
    }

    fn model_problems(&self, model: &ModelRef<'_>) -> Vec<String> {
        match snom_name(model) {
            Some(_) => Vec::new(),
            None => vec![format!(
                "snom {}: meta.name (as Snom spells the model) is missing",
                model.model
            )],
        }
    }
}

/// `snomD785-SIP`, `snom720`, `snom320-SIP` in `Mozilla/4.0 (compatible; …)`.
fn product_token(user_agent: &str) -> Option<&str> {
    let ua = bounded(user_agent)?;
    let after = ua.split_once("compatible;").map(|(_, rest)| rest)?;
    let word = after
        .split_whitespace()
        .next()?
        .trim_end_matches([';', ')']);
    (starts_with_ignore_case(word, "snom")
        && word.len() > 4
        && word[4..]
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric()))
    .then_some(word)
}

/// Neutral codec names as Snom's `codec_priority_list` spells them.
fn native_codec(name: &str) -> Option<&'static str> {
    match name {
        "pcmu" => Some("pcmu"),
        "pcma" => Some("pcma"),
        "g722" => Some("g722"),
        "g729" => Some("g729"),
        "g726-32" => Some("g726-32"),
        _ => None,
    }
}

fn setting(name: &str, idx: Option<String>, text: impl Into<String>) -> (Path, Param) {
    let mut path = vec![name.to_string()];
    let mut attrs = Vec::new();
    if let Some(idx) = idx {
        attrs.push(("idx".to_string(), idx.clone()));
        path.push(idx);
    }
    attrs.push(("perm".to_string(), PERM.to_string()));
    (
        Path(path),
        Param {
            text: text.into(),
            attrs,
        },
    )
}

pub fn params(frame: &Frame<'_>, problems: &mut Vec<String>) -> Params {
    let mut out = Params::default();
    let mut put = |(path, param): (Path, Param)| out.set_param(path, param);
    let neutral = Neutral::read(frame.config, problems);
    let codecs: Vec<&str> = neutral
        .codecs
        .iter()
        .filter_map(|c| native_codec(c))
        .collect();
    if !codecs.is_empty() {
        // telephone-event keeps RFC 2833 DTMF offered.
        let list = format!("{},telephone-event", codecs.join(","));
        for line in frame.account_lines() {
            put(setting(
                "codec_priority_list",
                Some(line.to_string()),
                list.clone(),
            ));
        }
    }
    if let Some(server) = &neutral.ntp_server {
        put(setting("ntp_server", None, server.clone()));
    }
    if let Some(url) = &neutral.phone_book.url {
        put(setting("dkey_directory", None, format!("url {url}")));
    }
    for key in frame.keys(&neutral, problems) {
        let text = match key.kind {
            KeyKind::Blf => format!("blf <sip:{}>", frame.sip_target(&key.value)),
            KeyKind::SpeedDial => format!("speed {}", key.value),
        };
        // Snom numbers function keys from 0.
        let (path, mut param) = setting("fkey", Some((key.key - 1).to_string()), text);
        param
            .attrs
            .insert(1, ("context".to_string(), "active".to_string()));
        param
            .attrs
            .insert(2, ("label".to_string(), key.label.clone()));
        put((path, param));
    }
    if let Some(native) = frame.native(BRAND) {
        flatten_snom(native, &mut out, problems);
    }
    finish(&mut out, frame, line_owned, |p| {
        super::params::names_a_secret(&p.0[0])
    });
    out
}

/// `config.snom`: `{name: scalar}`, `{name: {"value": …, "perm": …}}`, or a
/// per-identity `{name: {"1": …, "2": …}}` whose entries take either form.
fn flatten_snom(native: &Map<String, Value>, out: &mut Params, problems: &mut Vec<String>) {
    for (name, value) in native {
        if !key_ok(name) {
            problems.push(format!("{name:?} is not a Snom setting name"));
            continue;
        }
        match value {
            Value::Null => {}
            Value::Object(entries) if !entries.contains_key("value") => {
                for (idx, entry) in entries {
                    if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) {
                        problems.push(format!("{name}: {idx:?} is not an index"));
                        continue;
                    }
                    snom_value(name, Some(idx.clone()), entry, out, problems);
                }
            }
            value => snom_value(name, None, value, out, problems),
        }
    }
}

fn snom_value(
    name: &str,
    idx: Option<String>,
    value: &Value,
    out: &mut Params,
    problems: &mut Vec<String>,
) {
    let (text, perm) = match value {
        Value::Object(form) => (
            form.get("value").and_then(|v| scalar_text(v, ON_OFF)),
            form.get("perm").and_then(Value::as_str),
        ),
        scalar => (scalar_text(scalar, ON_OFF), None),
    };
    let Some(text) = text else {
        problems.push(format!("{name}: value is not a scalar"));
        return;
    };
    let (path, mut param) = setting(name, idx, text);
    if let Some(perm) = perm {
        if matches!(perm, "R" | "RW" | "") {
            if let Some(slot) = param.attrs.iter_mut().find(|(k, _)| k == "perm") {
                slot.1 = perm.to_string();
            }
        } else {
            problems.push(format!("{name}: perm {perm:?} is not R, RW or empty"));
        }
    }
    out.set_param(path, param);
}

fn key_ok(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// The identity settings only the unit's lines set.
fn line_owned(path: &Path) -> bool {
    const OWNED: [&str; 7] = [
        "user_active",
        "user_realname",
        "user_idle_text",
        "user_name",
        "user_pname",
        "user_pass",
        "user_host",
    ];
    OWNED.contains(&path.0[0].as_str())
}

/// `section="functionKeys"` writes the function keys, anything else the
/// phone settings.
pub fn write_params(params: &Params, h: &Helper<'_>) -> String {
    let keys = hash_text(h, "section").as_deref() == Some("functionKeys");
    let mut out = String::new();
    for (path, param) in params
        .iter()
        .filter(|(path, _)| (path.0[0] == "fkey") == keys)
    {
        let name = &path.0[0];
        out.push_str("    <");
        out.push_str(name);
        for (attr, value) in &param.attrs {
            out.push_str(&format!(" {attr}=\"{}\"", xml_escape(value)));
        }
        out.push_str(&format!(">{}</{name}>\n", xml_escape(&param.text)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_give_model_and_mac_when_firmware_tells() {
        for (ua, model, mac) in [
            (
                "Mozilla/4.0 (compatible; snomD785-SIP 10.1.33.33 2010.12-00004-g9ba52f5 000413922D24 SXM:0 UXM:0)",
                "d785",
                Some("000413922d24"),
            ),
            (
                "Mozilla/4.0 (compatible; snom320-SIP 8.4.18 1.1.3-s)",
                "320",
                None,
            ),
            ("Mozilla/4.0 (compatible; snom720 8.9.3.80)", "720", None),
            (
                "Mozilla/4.0 (compatible; snom710-SIP 8.7.5.35 1.1.5-IFX-05.01.12 000413741767)",
                "710",
                Some("000413741767"),
            ),
        ] {
            assert!(Snom.recognises_user_agent(ua), "{ua}");
            assert_eq!(Snom.model_in_user_agent(ua).as_deref(), Some(model), "{ua}");
            assert_eq!(
                Snom.mac_in_user_agent(ua).map(|m| m.lower()).as_deref(),
                mac,
                "{ua}"
            );
        }
        assert!(!Snom.recognises_user_agent("Mozilla/5.0 (compatible; Googlebot/2.1)"));
        // The SIP User-Agent (mac_info_in_sip_register) is not an HTTP one.
        assert!(!Snom.recognises_user_agent("snomD785/10.1.198.12 0004130DD7C9"));
    }

    #[test]
    fn file_names_take_the_mac_in_upper_case_only() {
        assert!(Snom.mac_in_file("snomD785-000413922D24.htm").is_some());
        assert!(Snom.mac_in_file("snomD785-000413922d24.htm").is_none());
        assert!(Snom.mac_in_file("000413922D24.xml").is_some());
        assert!(Snom.mac_in_file("snomD785.htm").is_none());
        assert!(Snom.mac_in_file("snom-000413922D24.htm").is_none());
        assert!(Snom.mac_in_file("snomD7.85-000413922D24.htm").is_none());
    }
}
