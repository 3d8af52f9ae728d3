//! Grandstream (GXP, GRP, GXV). The phone asks, in order, for `cfg<mac>`,
//! `cfg<mac>.xml`, the model file `cfg<model>.xml` (`cfggxp2170.xml`) and
//! `cfg.xml`. Files are `<gs_provision><config>` XML whose elements are
//! P-codes (`<P47>` SIP server of account 1); per-account codes follow a
//! numbering of their own (`account_code`). GXP21xx firmware 1.0.x reads
//! XML at the extension-less `cfg<mac>` too, which caldera serves when
//! `meta.bare_cfg` is true so that the first request of every boot is not a
//! miss. `phonebook.xml` is fetched from the phone book path (P331) with
//! the MAC only in the User-Agent (`… DevId 000b828aa872`).

use handlebars::Helper;
use serde_json::Value;

use super::grammar::{Case, bounded, mac_between, starts_with_ignore_case};
use super::helpers::xml_escape;
use super::params::{Frame, KeyKind, Neutral, ONE_ZERO, Params, Path, finish, flatten_flat};
use super::{FileClass, FileSpec, ModelRef, Vendor, named_files};
use crate::domains::phones::mac::Mac;

pub struct Grandstream;

pub const BRAND: &str = "grandstream";

const XML: &str = "application/xml";

pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "grandstream/common.xml.hbs",
        include_str!("templates/grandstream/common.xml.hbs"),
    ),
    (
        "grandstream/device.xml.hbs",
        include_str!("templates/grandstream/device.xml.hbs"),
    ),
    (
        "grandstream/phonebook.xml.hbs",
        include_str!("templates/grandstream/phonebook.xml.hbs"),
    ),
];

/// The model as the model file spells it: `meta.file_model`, else the id.
fn file_model<'a>(model: &ModelRef<'a>) -> Option<&'a str> {
    let name = model
        .meta
        .get("file_model")
        .and_then(Value::as_str)
        .unwrap_or(model.model);
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    ok.then_some(name)
}

impl Vendor for Grandstream {
    fn brand(&self) -> &'static str {
        BRAND
    }

    fn names_secret(&self, name: &str) -> bool {
        name.strip_prefix('P')
            .and_then(|digits| digits.parse().ok())
            .is_some_and(secret_code)
            || super::params::names_a_secret(name)
    }

    fn files(&self, model: &ModelRef<'_>, mac: &Mac) -> Vec<FileSpec> {
        named_files(
            self,
            model,
            mac,
            XML,
            &[
                ("common", FileClass::Common, "grandstream/common.xml.hbs"),
                (
                    "device_bare",
                    FileClass::Device,
                    "grandstream/device.xml.hbs",
                ),
                ("device", FileClass::Device, "grandstream/device.xml.hbs"),
                (
                    "phonebook",
                    FileClass::Device,
                    "grandstream/phonebook.xml.hbs",
                ),
            ],
        )
    }

    fn file_name(&self, role: &str, model: &ModelRef<'_>, mac: Option<&Mac>) -> Option<String> {
        let bare = model.meta.get("bare_cfg").and_then(Value::as_bool) == Some(true);
        match role {
            "common" => file_model(model).map(|m| format!("cfg{m}.xml")),
            "device_bare" if bare => mac.map(|m| format!("cfg{m}")),
            "device" => mac.map(|m| format!("cfg{m}.xml")),
            "phonebook" => Some("phonebook.xml".to_string()),
            _ => None,
        }
    }

    fn mac_in_file(&self, file: &str) -> Option<Mac> {
        ["", ".xml", ".bin"]
            .iter()
            .find_map(|suffix| mac_between(file, "cfg", suffix, Case::Lower))
    }

    fn recognises_user_agent(&self, user_agent: &str) -> bool {
        bounded(user_agent).is_some_and(|ua| starts_with_ignore_case(ua, "Grandstream "))
    }

    fn mac_in_user_agent(&self, user_agent: &str) -> Option<Mac> {
        if !self.recognises_user_agent(user_agent) {
            return None;
        }
        let mut words = bounded(user_agent)?.split_whitespace();
        words.find(|w| w.eq_ignore_ascii_case("DevId"))?;
        Mac::parse(words.next()?)
    }

    fn model_in_user_agent(&self, user_agent: &str) -> Option<String> {
        if !self.recognises_user_agent(user_agent) {
            return None;
        }
        // `Grandstream Model HW GXP2135 SW …` or `Grandstream GXP2000 (…)`.
        let words: Vec<&str> = bounded(user_agent)?.split_whitespace().take(8).collect();
        let model = match words.as_slice() {
            [_, model_word, hw, model, ..]
                if model_word.eq_ignore_ascii_case("Model") && hw.eq_ignore_ascii_case("HW") =>
            {
                model
            }
            [_, model, ..] => model,
            _ => return None,
        };
        let model = model.to_ascii_lowercase();
        model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
            .then_some(model)
    }

    fn model_problems(&self, model: &ModelRef<'_>) -> Vec<String> {
        match file_model(model) {
            Some(_) => Vec::new(),
            None => vec![format!(
                "grandstream {:?}: meta.file_model (lower-case letters and digits) is needed for the model file",
                model.model
            )],
        }
    }
}

/// The P-code of `field` for SIP account `account` (1-based). Account 1 has
/// codes of its own; account n ≥ 2 uses `P{n+2}xx`, the numbering of
/// Grandstream's GXP21xx configuration template.
pub fn account_code(account: u32, field: &str) -> Option<String> {
    let first = match field {
        "active" => 271,
        "account_name" => 270,
        "sip_server" => 47,
        "user_id" => 35,
        "auth_id" => 36,
        "password" => 34,
        "display_name" => 3,
        _ => return None,
    };
    let offset = match field {
        "active" => 1,
        "sip_server" => 2,
        "user_id" => 4,
        "auth_id" => 5,
        "password" => 6,
        "display_name" => 7,
        _ => 17, // account_name
    };
    match account {
        1 => Some(format!("P{first}")),
        2..=6 => Some(format!("P{}", (account + 2) * 100 + offset)),
        _ => None,
    }
}

/// The P-codes of the eight vocoder choices of account `account`.
fn vocoder_codes(account: u32) -> Option<[u32; 8]> {
    match account {
        1 => Some([57, 58, 59, 60, 61, 62, 46, 98]),
        2..=6 => {
            let base = (account + 2) * 100 + 50;
            Some(std::array::from_fn(|i| base + 1 + i as u32))
        }
        _ => None,
    }
}

fn native_codec(name: &str) -> Option<&'static str> {
    match name {
        "pcmu" => Some("0"),
        "pcma" => Some("8"),
        "g722" => Some("9"),
        "g729" => Some("18"),
        "g726-32" => Some("2"),
        "ilbc" => Some("98"),
        _ => None,
    }
}

fn p(code: u32) -> Path {
    Path(vec![format!("P{code}")])
}

pub fn params(frame: &Frame<'_>, problems: &mut Vec<String>) -> Params {
    let mut out = Params::default();
    let neutral = Neutral::read(frame.config, problems);
    let codecs: Vec<&str> = neutral
        .codecs
        .iter()
        .filter_map(|c| native_codec(c))
        .collect();
    if let Some(&last) = codecs.last() {
        for account in frame.account_lines() {
            let Some(codes) = vocoder_codes(account) else {
                continue;
            };
            // Grandstream offers every choice; repeating the last listed
            // codec in the remaining choices is how a list is restricted.
            for (i, code) in codes.into_iter().enumerate() {
                out.set(p(code), *codecs.get(i).unwrap_or(&last));
            }
        }
    }
    if let Some(server) = &neutral.ntp_server {
        out.set(p(30), server);
    }
    if let Some(url) = &neutral.phone_book.url {
        match url.split_once("://") {
            Some((scheme, path))
                if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
            {
                let mode = if scheme.eq_ignore_ascii_case("https") {
                    "3"
                } else {
                    "1"
                };
                out.set(p(330), mode);
                out.set(p(331), path.trim_end_matches('/'));
            }
            _ => problems.push(
                "phone_book.url: Grandstream fetches phone books over http or https only".into(),
            ),
        }
    }
    for key in frame.keys(&neutral, problems) {
        if key.key > 7 {
            problems.push(format!(
                "keys: key {}: caldera maps Grandstream keys 1-7",
                key.key
            ));
            continue;
        }
        // Multi-purpose key k: mode P(322+k), account, name and value P(300+3k-2..3k).
        let k = key.key;
        let mode = match key.kind {
            KeyKind::SpeedDial => "0",
            KeyKind::Blf => "1",
        };
        out.set(p(322 + k), mode);
        out.set(p(300 + 3 * k - 2), (key.line - 1).to_string());
        out.set(p(300 + 3 * k - 1), &key.label);
        out.set(p(300 + 3 * k), &key.value);
    }
    if let Some(native) = frame.native(BRAND) {
        flatten_flat(native, ONE_ZERO, key_ok, &mut out, problems);
    }
    finish(&mut out, frame, line_owned, secret);
    out
}

/// `P` and digits: Grandstream's parameter names.
fn key_ok(name: &str) -> bool {
    name.strip_prefix('P').is_some_and(|digits| {
        !digits.is_empty() && digits.len() <= 6 && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The number of a `Pnnn` path.
fn code_of(path: &Path) -> Option<u32> {
    path.last().strip_prefix('P')?.parse().ok()
}

/// Whether `code` is field `offset` of one of accounts 2-6 (`P{n+2}xx`).
fn is_account_field(code: u32, offsets: &[u32]) -> bool {
    (400..900).contains(&code) && offsets.contains(&(code % 100))
}

/// The identity P-codes of accounts 1-6 (see `account_code`).
fn line_owned(path: &Path) -> bool {
    code_of(path).is_some_and(|code| {
        [271, 270, 47, 35, 36, 34, 3].contains(&code)
            || is_account_field(code, &[1, 2, 4, 5, 6, 7, 17])
    })
}

/// P-codes that hold secrets: the admin and user passwords, the
/// provisioning server password, every account password.
fn secret(path: &Path) -> bool {
    code_of(path).is_some_and(secret_code)
}

fn secret_code(code: u32) -> bool {
    [2, 196, 1361, 34].contains(&code) || is_account_field(code, &[6])
}

pub fn write_params(params: &Params, _: &Helper<'_>) -> String {
    let mut out = String::new();
    for (path, param) in params.iter() {
        let code = path.last();
        out.push_str(&format!(
            "    <{code}>{}</{code}>\n",
            xml_escape(&param.text)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_give_model_and_mac() {
        for (ua, model, mac) in [
            (
                "Grandstream Model HW GXP2135 SW 1.0.7.97 DevId 000b828aa872",
                "gxp2135",
                "000b828aa872",
            ),
            (
                "Grandstream Model HW GXV3240 V1.6B SW 1.0.1.27 DevId 000b82632815",
                "gxv3240",
                "000b82632815",
            ),
            (
                "Grandstream Model HW GRP2601W SW 1.0.7.32 DevId EC:74:D7:89:1A:76",
                "grp2601w",
                "ec74d7891a76",
            ),
            (
                "Grandstream GXP2000 (gxp2000e.bin:1.2.5.3/boot55e.bin:1.1.6.9) DevId 000b822726c8",
                "gxp2000",
                "000b822726c8",
            ),
        ] {
            assert!(Grandstream.recognises_user_agent(ua), "{ua}");
            assert_eq!(
                Grandstream.model_in_user_agent(ua).as_deref(),
                Some(model),
                "{ua}"
            );
            assert_eq!(
                Grandstream.mac_in_user_agent(ua).unwrap().lower(),
                mac,
                "{ua}"
            );
        }
        assert!(!Grandstream.recognises_user_agent("GrandstreamX"));
    }

    #[test]
    fn account_codes_follow_the_template_numbering() {
        assert_eq!(account_code(1, "sip_server").unwrap(), "P47");
        assert_eq!(account_code(2, "sip_server").unwrap(), "P402");
        assert_eq!(account_code(2, "account_name").unwrap(), "P417");
        assert_eq!(account_code(6, "password").unwrap(), "P806");
        assert_eq!(account_code(7, "password"), None);
        assert_eq!(
            vocoder_codes(2).unwrap(),
            [451, 452, 453, 454, 455, 456, 457, 458]
        );
    }

    #[test]
    fn line_identity_agrees_with_the_account_codes() {
        let fields = [
            "active",
            "account_name",
            "sip_server",
            "user_id",
            "auth_id",
            "password",
            "display_name",
        ];
        let owned: Vec<u32> = (1..=6)
            .flat_map(|a| fields.iter().map(move |f| account_code(a, f).unwrap()))
            .map(|c| c[1..].parse().unwrap())
            .collect();
        for code in 1..10_000 {
            assert_eq!(line_owned(&p(code)), owned.contains(&code), "P{code}");
        }
    }

    #[test]
    fn line_identity_and_secrets() {
        assert!(line_owned(&p(34)));
        assert!(line_owned(&p(406)));
        assert!(!line_owned(&p(30)));
        assert!(secret(&p(2)));
        assert!(secret(&p(506)));
        assert!(!secret(&p(330)));
    }
}
