//! Yealink (T2x/T4x/T5x). Newer firmware asks for `<mac>.boot`, then
//! `y000000000000.boot`; a boot file names the `.cfg` files to load. Older
//! firmware asks for the model-common `y0000000000XX.cfg` (XX = the model's
//! hardware id, `meta.file_id`: T46S 66, T42G 29, …) and `<mac>.cfg`
//! directly. Files are `key = value` text whose first line must be
//! `#!version:1.0.0.1`. The User-Agent ends with the MAC, with or without
//! colons (`Yealink SIP-T46G 28.72.0.1 00:15:65:4a:a9:37`).

use handlebars::Helper;
use serde_json::Value;

use super::grammar::{Case, bounded, mac_between, starts_with_ignore_case};
use super::helpers::line_text;
use super::params::{
    Frame, KeyKind, Neutral, ONE_ZERO, Params, Path, dotted, finish, flatten_nested,
};
use super::{FileClass, FileSpec, ModelRef, Vendor, named_files};
use crate::domains::phones::mac::Mac;

pub struct Yealink;

pub const BRAND: &str = "yealink";

const TEXT: &str = "text/plain; charset=utf-8";

pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "yealink/common.boot.hbs",
        include_str!("templates/yealink/common.boot.hbs"),
    ),
    (
        "yealink/common.cfg.hbs",
        include_str!("templates/yealink/common.cfg.hbs"),
    ),
    (
        "yealink/device.boot.hbs",
        include_str!("templates/yealink/device.boot.hbs"),
    ),
    (
        "yealink/device.cfg.hbs",
        include_str!("templates/yealink/device.cfg.hbs"),
    ),
];

/// The model's hardware id as the common file spells it, 12 digits.
fn padded_file_id(meta: &Value) -> Option<String> {
    let id = match meta.get("file_id")? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let ok = (1..=3).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| format!("{id:0>12}"))
}

impl Vendor for Yealink {
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
                ("common_boot", FileClass::Common, "yealink/common.boot.hbs"),
                ("common_cfg", FileClass::Common, "yealink/common.cfg.hbs"),
                ("device_boot", FileClass::Device, "yealink/device.boot.hbs"),
                ("device_cfg", FileClass::Device, "yealink/device.cfg.hbs"),
            ],
        )
    }

    fn file_name(&self, role: &str, model: &ModelRef<'_>, mac: Option<&Mac>) -> Option<String> {
        let id = padded_file_id(model.meta);
        match role {
            // The boot file only makes sense when it can name the model file.
            "common_boot" => id.map(|_| "y000000000000.boot".to_string()),
            "common_cfg" => id.map(|id| format!("y{id}.cfg")),
            "device_boot" => id.and(mac).map(|m| format!("{m}.boot")),
            "device_cfg" => mac.map(|m| format!("{m}.cfg")),
            _ => None,
        }
    }

    fn mac_in_file(&self, file: &str) -> Option<Mac> {
        [".cfg", ".boot", "-local.cfg", "-contact.xml"]
            .iter()
            .find_map(|suffix| mac_between(file, "", suffix, Case::Lower))
    }

    fn recognises_user_agent(&self, user_agent: &str) -> bool {
        model_token(user_agent).is_some()
    }

    /// With local backup on, the phone uploads its local changes and its
    /// contacts.
    fn accepts_upload(&self, file: &str) -> bool {
        ["-local.cfg", "-contact.xml"]
            .iter()
            .any(|suffix| mac_between(file, "", suffix, Case::Lower).is_some())
    }

    fn mac_in_user_agent(&self, user_agent: &str) -> Option<Mac> {
        model_token(user_agent)?;
        let last = bounded(user_agent)?.split_whitespace().last()?;
        Mac::parse(last)
    }

    fn model_in_user_agent(&self, user_agent: &str) -> Option<String> {
        let token = model_token(user_agent)?;
        let bare = if starts_with_ignore_case(token, "SIP-") {
            &token[4..]
        } else {
            token
        };
        let model = bare.to_ascii_lowercase();
        (!model.is_empty()
            && model
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .then_some(model)
    }

    fn model_problems(&self, model: &ModelRef<'_>) -> Vec<String> {
        match padded_file_id(model.meta) {
            Some(_) => Vec::new(),
            None => vec![format!(
                "yealink {}: meta.file_id (1-3 digits) is missing, so no model-common file",
                model.model
            )],
        }
    }
}

/// The model token of a Yealink User-Agent: the word after `Yealink`
/// (`SIP-T46S`, `W60B`), or the first word of the video phones' agent,
/// which has no brand (`VP530P 23.70.0.40 …`).
fn model_token(user_agent: &str) -> Option<&str> {
    let mut words = bounded(user_agent)?.split_whitespace();
    let first = words.next()?;
    if first.eq_ignore_ascii_case("yealink") {
        // `Yealink SIP VP-T49G …` puts the model after a bare `SIP`.
        return match words.next()? {
            sip if sip.eq_ignore_ascii_case("SIP") => words.next(),
            model => Some(model),
        };
    }
    let vp = first.strip_prefix("VP")?;
    let digits = vp.strip_suffix('P').unwrap_or(vp);
    (digits.len() == 3 && digits.bytes().all(|b| b.is_ascii_digit())).then_some(first)
}

/// Neutral codec names and Yealink's payload names.
const CODECS: [(&str, &str); 6] = [
    ("pcmu", "pcmu"),
    ("pcma", "pcma"),
    ("g722", "g722"),
    ("g729", "g729"),
    ("g726-32", "g726_32"),
    ("ilbc", "ilbc"),
];

pub fn params(frame: &Frame<'_>, problems: &mut Vec<String>) -> Params {
    let mut out = Params::default();
    let neutral = Neutral::read(frame.config, problems);
    if !neutral.codecs.is_empty() {
        for line in frame.account_lines() {
            for (name, native) in CODECS {
                let rank = neutral.codecs.iter().position(|c| c == name);
                let base = format!("account.{line}.codec.{native}");
                out.set(
                    dotted(&format!("{base}.enable")),
                    if rank.is_some() { "1" } else { "0" },
                );
                out.set(
                    dotted(&format!("{base}.priority")),
                    rank.map_or(0, |r| r + 1).to_string(),
                );
            }
        }
    }
    if let Some(server) = &neutral.ntp_server {
        out.set(dotted("local_time.ntp_server1"), server);
    }
    if let Some(url) = &neutral.phone_book.url {
        out.set(dotted("remote_phonebook.data.1.url"), url);
        let name = neutral.phone_book.name.as_deref().unwrap_or("Directory");
        out.set(dotted("remote_phonebook.data.1.name"), name);
    }
    for key in frame.keys(&neutral, problems) {
        let base = format!("linekey.{}", key.key);
        let kind = match key.kind {
            KeyKind::Blf => "16",
            KeyKind::SpeedDial => "13",
        };
        out.set(dotted(&format!("{base}.type")), kind);
        out.set(dotted(&format!("{base}.value")), &key.value);
        out.set(dotted(&format!("{base}.label")), &key.label);
        out.set(dotted(&format!("{base}.line")), key.line.to_string());
    }
    if let Some(native) = frame.native(BRAND) {
        flatten_nested(native, ONE_ZERO, key_ok, &mut out, problems);
    }
    finish(&mut out, frame, line_owned, |p| {
        super::params::names_a_secret(&p.joined("."))
    });
    out
}

pub(super) fn key_ok(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// `account.N.*` parameters that identify a line; only the unit's lines set them.
fn line_owned(path: &Path) -> bool {
    const OWNED: [&str; 8] = [
        "enable",
        "label",
        "display_name",
        "auth_name",
        "user_name",
        "password",
        "sip_server_host",
        "sip_server.1.address",
    ];
    path.is_numbered_member("account", &OWNED)
}

pub fn write_params(params: &Params, _: &Helper<'_>) -> String {
    let mut out = String::new();
    for (path, param) in params.iter() {
        out.push_str(&path.joined("."));
        out.push_str(" = ");
        out.push_str(&line_text(&param.text));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_of_every_generation_give_model_and_mac() {
        for (ua, model, mac) in [
            (
                "Yealink SIP-T46G 28.72.0.1 00:15:65:4a:a9:37",
                "t46g",
                Some("0015654aa937"),
            ),
            (
                "yealink SIP-T28P 2.70.0.140 00:15:65:13:ae:0b",
                "t28p",
                Some("00156513ae0b"),
            ),
            (
                "Yealink SIP-T56A  58.80.0.25 001565f429a4",
                "t56a",
                Some("001565f429a4"),
            ),
            (
                "VP530P 23.70.0.40 00:15:65:31:4b:c0",
                "vp530p",
                Some("001565314bc0"),
            ),
            (
                "Yealink SIP-T46S 66.86.0.15 80:5e:c0:12:34:56",
                "t46s",
                Some("805ec0123456"),
            ),
            ("Yealink W60B 77.83.0.10", "w60b", None),
            (
                "Yealink SIP VP-T49G 51.80.0.100 00:15:65:11:22:33",
                "vp-t49g",
                Some("001565112233"),
            ),
        ] {
            assert!(Yealink.recognises_user_agent(ua), "{ua}");
            assert_eq!(
                Yealink.model_in_user_agent(ua).as_deref(),
                Some(model),
                "{ua}"
            );
            assert_eq!(
                Yealink.mac_in_user_agent(ua).map(|m| m.lower()).as_deref(),
                mac,
                "{ua}"
            );
        }
        for ua in ["curl/8.5.0", "VP53 1.0", "Mozilla/5.0 Yealink", ""] {
            assert!(!Yealink.recognises_user_agent(ua), "{ua}");
        }
    }

    #[test]
    fn uploads_are_local_backups() {
        assert!(Yealink.accepts_upload("805ec0123456-local.cfg"));
        assert!(Yealink.accepts_upload("805ec0123456-contact.xml"));
        assert!(!Yealink.accepts_upload("805ec0123456.cfg"));
    }

    #[test]
    fn line_identity_belongs_to_lines() {
        assert!(line_owned(&dotted("account.1.password")));
        assert!(line_owned(&dotted("account.12.sip_server.1.address")));
        assert!(!line_owned(&dotted("account.1.sip_server.1.port")));
        assert!(!line_owned(&dotted("account.1.codec.pcmu.enable")));
        assert!(!line_owned(&dotted("accounts.1.password")));
    }
}
