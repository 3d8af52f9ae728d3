//! Cisco (and Linksys) SPA 3xx/5xx and Cisco MPP 78xx/88xx in third-party
//! call control firmware: one brand, two families that differ only in file
//! names (`meta.profile`, set per family). Both start from the profile rule
//! `/spa$PSN.cfg` (SPA: `spa504G.cfg`) or `/$PSN.xml` (MPP:
//! `CP-8841-3PCC.xml`) with `$PSN` the product series (`meta.psn`). That
//! model-common file sets the second profile rule to the per-device file,
//! `spa$MA.xml` or `$MA.xml`, with `$MA` the phone's lower-case MAC. Files
//! are `<flat-profile>` XML, one element per parameter. The User-Agent
//! carries the MAC in parentheses (`Cisco-CP-8841-3PCC/11.0
//! (00562b043615)`), except on some SPA firmware.

use handlebars::Helper;
use serde_json::Value;

use super::grammar::{Case, any_hex12, bounded, mac_between, starts_with_ignore_case};
use super::helpers::xml_escape;
use super::params::{Bools, Frame, KeyKind, Neutral, Params, Path, finish, flatten_flat};
use super::{FileClass, FileSpec, ModelRef, Vendor, named_files};
use crate::domains::phones::mac::Mac;

pub struct Cisco;

pub const BRAND: &str = "cisco";

const XML: &str = "application/xml";

const YES_NO: Bools = Bools {
    yes: "Yes",
    no: "No",
};

pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "cisco/common.xml.hbs",
        include_str!("templates/cisco/common.xml.hbs"),
    ),
    (
        "cisco/device.xml.hbs",
        include_str!("templates/cisco/device.xml.hbs"),
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    Spa,
    Mpp,
}

fn profile(meta: &Value) -> Option<Profile> {
    match meta.get("profile")?.as_str()? {
        "spa" => Some(Profile::Spa),
        "mpp" => Some(Profile::Mpp),
        _ => None,
    }
}

/// The product series number: `504G`, `CP-8841-3PCC`.
fn psn(meta: &Value) -> Option<&str> {
    let psn = meta.get("psn")?.as_str()?;
    let ok = !psn.is_empty()
        && psn.len() <= 32
        && psn.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    ok.then_some(psn)
}

impl Vendor for Cisco {
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
                ("common", FileClass::Common, "cisco/common.xml.hbs"),
                ("device", FileClass::Device, "cisco/device.xml.hbs"),
            ],
        )
    }

    fn file_name(&self, role: &str, model: &ModelRef<'_>, mac: Option<&Mac>) -> Option<String> {
        let profile = profile(model.meta)?;
        match (role, profile) {
            ("common", Profile::Spa) => psn(model.meta).map(|psn| format!("spa{psn}.cfg")),
            ("common", Profile::Mpp) => psn(model.meta).map(|psn| format!("{psn}.xml")),
            ("device", Profile::Spa) => mac.map(|m| format!("spa{m}.xml")),
            ("device", Profile::Mpp) => mac.map(|m| format!("{m}.xml")),
            // The per-device file as a profile rule names it: `$MA` is the MAC.
            ("device_rule", Profile::Spa) => Some("spa$MA.xml".to_string()),
            ("device_rule", Profile::Mpp) => Some("$MA.xml".to_string()),
            _ => None,
        }
    }

    fn mac_in_file(&self, file: &str) -> Option<Mac> {
        mac_between(file, "spa", ".xml", Case::Lower)
            .or_else(|| mac_between(file, "spa", ".cfg", Case::Lower))
            .or_else(|| mac_between(file, "", ".xml", Case::Lower))
    }

    fn recognises_user_agent(&self, user_agent: &str) -> bool {
        product(user_agent).is_some()
    }

    fn mac_in_user_agent(&self, user_agent: &str) -> Option<Mac> {
        product(user_agent)?;
        // The first parenthesised group that is a MAC; the SPA's second
        // group is a serial number (`CBT141400UK`).
        bounded(user_agent)?
            .split('(')
            .skip(1)
            .filter_map(|rest| rest.split_once(')').map(|(group, _)| group))
            .find_map(any_hex12)
    }

    fn model_in_user_agent(&self, user_agent: &str) -> Option<String> {
        let product = product(user_agent)?;
        let model = product.replace("SPA-", "SPA").to_ascii_lowercase();
        (!model.is_empty()).then_some(model)
    }

    fn model_problems(&self, model: &ModelRef<'_>) -> Vec<String> {
        let mut problems = Vec::new();
        if profile(model.meta).is_none() {
            problems.push(format!(
                "cisco {}: meta.profile must be \"spa\" or \"mpp\"",
                model.model
            ));
        }
        if psn(model.meta).is_none() {
            problems.push(format!(
                "cisco {}: meta.psn is missing, so no model-common file",
                model.model
            ));
        }
        problems
    }
}

/// The product of a Cisco/Linksys User-Agent: `SPA508G` from
/// `Cisco/SPA508G-7.4.8a (…)`, `SPA-942` from `Linksys/SPA-942-6.1.5(a)`,
/// `CP-8841-3PCC` from `Cisco-CP-8841-3PCC/11.0 (…)`.
fn product(user_agent: &str) -> Option<String> {
    let ua = bounded(user_agent)?;
    let first = ua.split_whitespace().next()?;
    if starts_with_ignore_case(first, "Cisco-CP-") {
        let product = first[6..].split('/').next()?;
        return product
            .to_ascii_uppercase()
            .ends_with("-3PCC")
            .then(|| product.to_string());
    }
    let rest = if starts_with_ignore_case(first, "Cisco/") {
        &first[6..]
    } else if starts_with_ignore_case(first, "Linksys/") {
        &first[8..]
    } else {
        return None;
    };
    if !starts_with_ignore_case(rest, "SPA") {
        return None;
    }
    // The product ends where `-<version digit>` starts.
    let end = rest
        .char_indices()
        .find(|&(i, c)| {
            c == '-' && rest[i + 1..].starts_with(|d: char| d.is_ascii_digit()) && i > 4
        })
        .map_or(rest.len(), |(i, _)| i);
    Some(rest[..end].to_string())
}

/// Neutral codec names and the values of Cisco's `Preferred_Codec`.
fn native_codec(name: &str, mpp: bool) -> Option<&'static str> {
    match name {
        "pcmu" => Some("G711u"),
        "pcma" => Some("G711a"),
        "g722" => Some("G722"),
        "g729" => Some("G729a"),
        "g726-32" if !mpp => Some("G726-32"),
        "ilbc" if mpp => Some("iLBC"),
        _ => None,
    }
}

pub fn params(frame: &Frame<'_>, problems: &mut Vec<String>) -> Params {
    let mut out = Params::default();
    let neutral = Neutral::read(frame.config, problems);
    let mpp = profile(frame.meta) == Some(Profile::Mpp);
    let codecs: Vec<&str> = neutral
        .codecs
        .iter()
        .filter_map(|c| {
            let native = native_codec(c, mpp);
            if native.is_none() {
                problems.push(format!("codecs: this Cisco model has no {c}"));
            }
            native
        })
        .collect();
    if codecs.len() > 3 {
        problems.push(
            "codecs: Cisco phones take three preferred codecs; the rest are not offered".into(),
        );
    }
    if !codecs.is_empty() {
        for line in frame.account_lines() {
            let slots = [
                "Preferred_Codec",
                "Second_Preferred_Codec",
                "Third_Preferred_Codec",
            ];
            for (slot, codec) in slots
                .iter()
                .zip(codecs.iter().chain(std::iter::repeat(&"Unspecified")))
            {
                out.set(numbered(slot, line), *codec);
            }
            out.set(numbered("Use_Pref_Codec_Only", line), "Yes");
        }
    }
    if let Some(server) = &neutral.ntp_server {
        out.set(Path::of(&["Primary_NTP_Server"]), server);
    }
    if let Some(url) = &neutral.phone_book.url {
        out.set(Path::of(&["XML_Directory_Service_URL"]), url);
        let name = neutral.phone_book.name.as_deref().unwrap_or("Directory");
        out.set(Path::of(&["XML_Directory_Service_Name"]), name);
    }
    for key in frame.keys(&neutral, problems) {
        let target = frame.sip_target(&key.value);
        let function = match key.kind {
            KeyKind::Blf => format!("fnc=blf+sd+cp;sub={target};nme={}", key.label),
            KeyKind::SpeedDial => format!("fnc=sd;ext={target};nme={}", key.label),
        };
        out.set(numbered("Extension", key.key), "Disabled");
        out.set(numbered("Short_Name", key.key), &key.label);
        out.set(numbered("Extended_Function", key.key), function);
    }
    if let Some(native) = frame.native(BRAND) {
        flatten_flat(native, YES_NO, key_ok, &mut out, problems);
    }
    finish(
        &mut out,
        frame,
        |p| line_owned(p, &frame.lines),
        |p| super::params::names_a_secret(p.last()),
    );
    out
}

/// `Name_N_`, Cisco's spelling of per-line and per-key parameters.
fn numbered(name: &str, n: u32) -> Path {
    Path(vec![format!("{name}_{n}_")])
}

/// An element name as the flat profile uses them (`G722.2_Enable_1_`).
pub(super) fn key_ok(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `<Name>_<N>_` parameters that identify a line; `Short_Name_N_` only on
/// the unit's lines (on other keys it is the label `keys` set).
fn line_owned(path: &Path, lines: &[u32]) -> bool {
    const OWNED: [&str; 7] = [
        "Line_Enable",
        "User_ID",
        "Password",
        "Auth_ID",
        "Use_Auth_ID",
        "Display_Name",
        "Proxy",
    ];
    let Some((base, number)) = path
        .last()
        .strip_suffix('_')
        .and_then(|stem| stem.rsplit_once('_'))
    else {
        return false;
    };
    let Ok(number) = number.parse::<u32>() else {
        return false;
    };
    OWNED.contains(&base) || (base == "Short_Name" && lines.contains(&number))
}

pub fn write_params(params: &Params, _: &Helper<'_>) -> String {
    let mut out = String::new();
    for (path, param) in params.iter() {
        let name = path.last();
        out.push_str(&format!("  <{name}>{}</{name}>\n", xml_escape(&param.text)));
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
                "Cisco/SPA508G-7.4.8a (0002FDFF2103)(CBT141400UK)",
                "spa508g",
                Some("0002fdff2103"),
            ),
            ("Cisco/SPA525G-7.4.7 (CBT141900G7)", "spa525g", None),
            (
                "Linksys/SPA-942-6.1.5(a) (88019FA42805)",
                "spa942",
                Some("88019fa42805"),
            ),
            (
                "Cisco-CP-8841-3PCC/11.0 (00562b043615)",
                "cp-8841-3pcc",
                Some("00562b043615"),
            ),
            (
                "Cisco-CP-7841-3PCC/11.3.1 (00562b043616)",
                "cp-7841-3pcc",
                Some("00562b043616"),
            ),
        ] {
            assert!(Cisco.recognises_user_agent(ua), "{ua}");
            assert_eq!(
                Cisco.model_in_user_agent(ua).as_deref(),
                Some(model),
                "{ua}"
            );
            assert_eq!(
                Cisco.mac_in_user_agent(ua).map(|m| m.lower()).as_deref(),
                mac,
                "{ua}"
            );
        }
        for ua in ["Cisco-CP-7960G/8.0", "Cisco AnyConnect", "curl/8.5.0"] {
            assert!(!Cisco.recognises_user_agent(ua), "{ua}");
        }
    }

    #[test]
    fn line_identity_belongs_to_lines() {
        assert!(line_owned(&Path::of(&["Password_1_"]), &[]));
        assert!(line_owned(&Path::of(&["Proxy_2_"]), &[]));
        assert!(line_owned(&Path::of(&["Short_Name_1_"]), &[1]));
        assert!(!line_owned(&Path::of(&["Short_Name_3_"]), &[1]));
        assert!(!line_owned(&Path::of(&["Proxy_Fallback_Intvl_1_"]), &[]));
        assert!(!line_owned(&Path::of(&["Preferred_Codec_1_"]), &[]));
        assert!(!line_owned(&Path::of(&["Primary_NTP_Server"]), &[]));
    }
}
