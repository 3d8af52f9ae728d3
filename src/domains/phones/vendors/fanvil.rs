//! Fanvil (X, i series). The phone asks for its model file (a name per
//! model and hardware, `meta.file_id`: `F0V00X5U0000.cfg`) and `<mac>.cfg`.
//! Files are Fanvil's text format: a `<<VOIP CONFIG FILE>>Version:…` first
//! line, `<… MODULE>` sections of `Name :value` lines (names padded to 19
//! columns), `--Name--` markers opening sub-lists inside a module, and a
//! closing `<<END OF FILE>>`. The User-Agent ends with the MAC (`Fanvil
//! X5U-V2 2.12.16.17 0c383e557eb1`).

use std::collections::BTreeMap;

use handlebars::Helper;
use serde_json::{Map, Value};

use super::grammar::{Case, any_hex12, bounded, mac_between};
use super::helpers::{hash_text, line_text};
use super::params::{
    Frame, KeyKind, Neutral, ONE_ZERO, Params, Path, finish, natural_cmp, scalar_text,
};
use super::{FileClass, FileSpec, ModelRef, Vendor, named_files};
use crate::domains::phones::mac::Mac;

pub struct Fanvil;

pub const BRAND: &str = "fanvil";

const TEXT: &str = "text/plain; charset=utf-8";

const SIP: &str = "SIP CONFIG MODULE";

pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "fanvil/common.cfg.hbs",
        include_str!("templates/fanvil/common.cfg.hbs"),
    ),
    (
        "fanvil/device.cfg.hbs",
        include_str!("templates/fanvil/device.cfg.hbs"),
    ),
];

fn file_id<'a>(model: &ModelRef<'a>) -> Option<&'a str> {
    let id = model.meta.get("file_id").and_then(Value::as_str)?;
    let ok = !id.is_empty()
        && id.len() <= 40
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !id.contains("..");
    ok.then_some(id)
}

impl Vendor for Fanvil {
    fn brand(&self) -> &'static str {
        BRAND
    }

    fn files(&self, model: &ModelRef<'_>, mac: &Mac) -> Vec<FileSpec> {
        named_files(
            self,
            model,
            mac,
            TEXT,
            &[
                ("common", FileClass::Common, "fanvil/common.cfg.hbs"),
                ("device", FileClass::Device, "fanvil/device.cfg.hbs"),
            ],
        )
    }

    fn file_name(&self, role: &str, model: &ModelRef<'_>, mac: Option<&Mac>) -> Option<String> {
        match role {
            "common" => file_id(model).map(|id| format!("{id}.cfg")),
            "device" => mac.map(|m| format!("{m}.cfg")),
            _ => None,
        }
    }

    fn mac_in_file(&self, file: &str) -> Option<Mac> {
        mac_between(file, "", ".cfg", Case::Lower)
    }

    fn recognises_user_agent(&self, user_agent: &str) -> bool {
        model_token(user_agent).is_some()
    }

    fn mac_in_user_agent(&self, user_agent: &str) -> Option<Mac> {
        model_token(user_agent)?;
        any_hex12(bounded(user_agent)?.split_whitespace().last()?)
    }

    fn model_in_user_agent(&self, user_agent: &str) -> Option<String> {
        // `X5U-V2` is the X5U, hardware version 2.
        let token = model_token(user_agent)?;
        let model = token.split("-V").next()?.to_ascii_lowercase();
        (!model.is_empty() && model.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(model)
    }

    fn model_problems(&self, model: &ModelRef<'_>) -> Vec<String> {
        match file_id(model) {
            Some(_) => Vec::new(),
            None => vec![format!(
                "fanvil {}: meta.file_id is missing, so no model-common file",
                model.model
            )],
        }
    }
}

fn model_token(user_agent: &str) -> Option<&str> {
    let mut words = bounded(user_agent)?.split_whitespace();
    words.next().filter(|w| w.eq_ignore_ascii_case("fanvil"))?;
    words.next()
}

fn native_codec(name: &str) -> Option<&'static str> {
    match name {
        "pcmu" => Some("PCMU"),
        "pcma" => Some("PCMA"),
        "g722" => Some("G722"),
        "g729" => Some("G729"),
        "g726-32" => Some("G726-32"),
        "ilbc" => Some("iLBC"),
        _ => None,
    }
}

pub fn params(frame: &Frame<'_>, problems: &mut Vec<String>) -> Params {
    let mut out = Params::default();
    let neutral = Neutral::read(frame.config, problems);
    let codecs: Vec<&str> = neutral
        .codecs
        .iter()
        .filter_map(|c| native_codec(c))
        .collect();
    if !codecs.is_empty() {
        for line in frame.account_lines() {
            out.set(
                Path(vec![SIP.into(), format!("SIP{line} VoiceCodecMap")]),
                codecs.join(","),
            );
        }
    }
    if let Some(server) = &neutral.ntp_server {
        let clock = ["PHONE FEATURE MODULE", "--DateTime Config--"];
        out.set(Path::of(&[clock[0], clock[1], "Enable SNTP"]), "1");
        out.set(Path::of(&[clock[0], clock[1], "SNTP Server"]), server);
    }
    if let Some(url) = &neutral.phone_book.url {
        let book = ["PHONE FEATURE MODULE", "--Xml PhoneBook--"];
        let name = neutral.phone_book.name.as_deref().unwrap_or("Directory");
        out.set(Path::of(&[book[0], book[1], "XML-PBook1 Name"]), name);
        out.set(Path::of(&[book[0], book[1], "XML-PBook1 Addr"]), url);
    }
    for key in frame.keys(&neutral, problems) {
        let keys = ["DSSKEY CONFIG MODULE", "--Sidekey Config1--"];
        let mode = match key.kind {
            KeyKind::Blf => "b",
            KeyKind::SpeedDial => "f",
        };
        let field = |name: &str| {
            Path(vec![
                keys[0].into(),
                keys[1].into(),
                format!("Fkey{} {name}", key.key),
            ])
        };
        // Type 1 is a memory key; its value is `<number>@<line>/<mode>`.
        out.set(field("Type"), "1");
        out.set(field("Value"), format!("{}@{}/{mode}", key.value, key.line));
        out.set(field("Title"), &key.label);
    }
    if let Some(native) = frame.native(BRAND) {
        flatten_fanvil(native, &mut out, problems);
    }
    finish(&mut out, frame, line_owned, |p| {
        super::params::names_a_secret(p.last())
    });
    out
}

/// `config.fanvil`: `{"<NAME> MODULE": {"Name": scalar, "--List--": {"Name": scalar}}}`.
fn flatten_fanvil(native: &Map<String, Value>, out: &mut Params, problems: &mut Vec<String>) {
    for (module, body) in native {
        let Some(body) = body.as_object().filter(|_| module_ok(module)) else {
            problems.push(format!(
                "{module:?} is not a Fanvil module (\"<NAME> MODULE\": {{…}})"
            ));
            continue;
        };
        for (name, value) in body {
            match value {
                Value::Null => {}
                Value::Object(list) if marker_ok(name) => {
                    for (inner, value) in list {
                        put(
                            out,
                            problems,
                            vec![module.clone(), name.clone(), inner.clone()],
                            value,
                        );
                    }
                }
                value => put(out, problems, vec![module.clone(), name.clone()], value),
            }
        }
    }
}

fn put(out: &mut Params, problems: &mut Vec<String>, path: Vec<String>, value: &Value) {
    let name = path.last().map_or("", String::as_str);
    if !name_ok(name) {
        problems.push(format!("{name:?} is not a Fanvil parameter name"));
        return;
    }
    match scalar_text(value, ONE_ZERO) {
        Some(text) => out.set(Path(path), text),
        None if value.is_null() => {}
        None => problems.push(format!("{name:?}: value is not a scalar")),
    }
}

fn module_ok(name: &str) -> bool {
    name.ends_with(" MODULE")
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b' ' | b'_'))
}

fn marker_ok(name: &str) -> bool {
    name.len() > 4 && name.starts_with("--") && name.ends_with("--") && name_ok(name)
}

/// A parameter name: printable ASCII without the separator `:` or markup.
fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && !name.starts_with(' ')
        && name
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && !matches!(b, b':' | b'<' | b'>'))
}

/// `SIPn …` identity lines of the SIP module.
fn line_owned(path: &Path) -> bool {
    const OWNED: [&str; 7] = [
        "Phone Number",
        "Display Name",
        "Sip Name",
        "Register Addr",
        "Register User",
        "Register Pswd",
        "Enable Reg",
    ];
    path.0[0] == SIP
        && path.last().strip_prefix("SIP").is_some_and(|rest| {
            rest.split_once(' ').is_some_and(|(n, field)| {
                !n.is_empty()
                    && n.bytes().all(|b| b.is_ascii_digit())
                    && OWNED.contains(&field.trim())
            })
        })
}

/// `module="<NAME> MODULE"` writes that module's lines (the template wrote
/// its header); `except="<NAME> MODULE"` every other module with headers;
/// no hash, every module.
pub fn write_params(params: &Params, h: &Helper<'_>) -> String {
    let only = hash_text(h, "module");
    let except = hash_text(h, "except");
    let mut modules: BTreeMap<&str, Vec<(&Path, &str)>> = BTreeMap::new();
    for (path, param) in params.iter() {
        modules
            .entry(&path.0[0])
            .or_default()
            .push((path, &param.text));
    }
    let mut names: Vec<&str> = modules.keys().copied().collect();
    names.sort_by(|a, b| natural_cmp(a, b));
    let mut out = String::new();
    for module in names {
        match (&only, &except) {
            (Some(only), _) if only != module => continue,
            (_, Some(except)) if except == module => continue,
            _ => {}
        }
        if only.is_none() {
            out.push_str(&format!("\n<{module}>\n"));
        }
        write_module(&modules[module], &mut out);
    }
    out
}

/// A module's plain lines first, then each sub-list under its marker.
fn write_module(entries: &[(&Path, &str)], out: &mut String) {
    let line = |name: &str, value: &str| format!("{name:<19}:{}\n", line_text(value));
    for (path, text) in entries.iter().filter(|(p, _)| p.0.len() == 2) {
        out.push_str(&line(path.last(), text));
    }
    let mut marker: Option<&str> = None;
    for (path, text) in entries.iter().filter(|(p, _)| p.0.len() == 3) {
        if marker != Some(path.0[1].as_str()) {
            marker = Some(&path.0[1]);
            out.push_str(&line(&path.0[1], ""));
        }
        out.push_str(&line(path.last(), text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_give_model_and_mac() {
        for (ua, model, mac) in [
            (
                "Fanvil X5U-V2 2.12.16.17 0c383e557eb1",
                "x5u",
                "0c383e557eb1",
            ),
            (
                "Fanvil i10SV 2.12.10.1 0c383e2397f4",
                "i10sv",
                "0c383e2397f4",
            ),
            ("Fanvil X4U 2.12.1 0C383E112233", "x4u", "0c383e112233"),
        ] {
            assert!(Fanvil.recognises_user_agent(ua), "{ua}");
            assert_eq!(
                Fanvil.model_in_user_agent(ua).as_deref(),
                Some(model),
                "{ua}"
            );
            assert_eq!(Fanvil.mac_in_user_agent(ua).unwrap().lower(), mac, "{ua}");
        }
        assert!(!Fanvil.recognises_user_agent("Fanvilish X5U"));
    }

    #[test]
    fn line_identity_belongs_to_lines() {
        assert!(line_owned(&Path::of(&[SIP, "SIP1 Register Pswd"])));
        assert!(line_owned(&Path::of(&[SIP, "SIP12 Enable Reg"])));
        assert!(!line_owned(&Path::of(&[SIP, "SIP1 VoiceCodecMap"])));
        assert!(!line_owned(&Path::of(&[
            "PHONE FEATURE MODULE",
            "SIP1 Register Pswd"
        ])));
    }
}
