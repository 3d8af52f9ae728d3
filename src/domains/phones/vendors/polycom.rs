//! Polycom UC Software phones (VVX, SoundPoint IP, SoundStation IP). The
//! phone asks for the per-MAC master `<mac>.cfg`, falling back to the
//! shared master `000000000000.cfg`; a master is `<APPLICATION
//! CONFIG_FILES="…">` and names the configuration files to load, earlier
//! names winning. caldera's masters name `<mac>-phone.cfg` (lines and the
//! unit's whole configuration) and the model file `site-<model>.cfg` (the
//! account's configuration). Configuration files are `<polycomConfig>` XML
//! whose attributes are the dotted parameter names. The phone also asks for
//! `<mac>-directory.xml` (contacts) and uploads logs and local changes with
//! PUT. Its User-Agent names the model but carries no MAC.

use handlebars::Helper;

use super::grammar::{Case, bounded, mac_between};
use super::helpers::xml_escape;
use super::params::{
    Frame, KeyKind, Neutral, ONE_ZERO, Params, Path, dotted, finish, flatten_nested,
};
use super::{FileClass, FileSpec, ModelRef, Vendor, named_files};
use crate::domains::phones::mac::Mac;

pub struct Polycom;

pub const BRAND: &str = "polycom";

const XML: &str = "application/xml";

pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "polycom/master.cfg.hbs",
        include_str!("templates/polycom/master.cfg.hbs"),
    ),
    (
        "polycom/site.cfg.hbs",
        include_str!("templates/polycom/site.cfg.hbs"),
    ),
    (
        "polycom/phone.cfg.hbs",
        include_str!("templates/polycom/phone.cfg.hbs"),
    ),
    (
        "polycom/directory.xml.hbs",
        include_str!("templates/polycom/directory.xml.hbs"),
    ),
];

/// Per-MAC names the phones request; the first three are served, the
/// others are recognised so that probing them counts as probing a MAC.
const DEVICE_SUFFIXES: [&str; 12] = [
    ".cfg",
    "-phone.cfg",
    "-directory.xml",
    "-web.cfg",
    "-license.cfg",
    "-calls.xml",
    "-boot.log",
    "-app.log",
    // The Stromboli layout: reg-basic, sip-basic and site per MAC.
    "-reg-basic.cfg",
    "-sip-basic.cfg",
    "-site.cfg",
    "-contacts.xml",
];

/// What the phone uploads: logs, local setting changes (the overrides
/// file), contacts and call lists.
const UPLOAD_SUFFIXES: [&str; 5] = [
    "-boot.log",
    "-app.log",
    "-phone.cfg",
    "-directory.xml",
    "-calls.xml",
];

impl Vendor for Polycom {
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
                ("common_master", FileClass::Common, "polycom/master.cfg.hbs"),
                ("site", FileClass::Common, "polycom/site.cfg.hbs"),
                ("master", FileClass::Device, "polycom/master.cfg.hbs"),
                ("phone", FileClass::Device, "polycom/phone.cfg.hbs"),
                ("directory", FileClass::Device, "polycom/directory.xml.hbs"),
            ],
        )
    }

    fn file_name(&self, role: &str, model: &ModelRef<'_>, mac: Option<&Mac>) -> Option<String> {
        let model_ok = !model.model.is_empty()
            && model
                .model
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        // The masters name the site file, so they need it too.
        match role {
            "common_master" => model_ok.then(|| "000000000000.cfg".to_string()),
            "site" => model_ok.then(|| format!("site-{}.cfg", model.model)),
            "master" => mac.filter(|_| model_ok).map(|m| format!("{m}.cfg")),
            "phone" => mac.map(|m| format!("{m}-phone.cfg")),
            "directory" => mac.map(|m| format!("{m}-directory.xml")),
            _ => None,
        }
    }

    fn mac_in_file(&self, file: &str) -> Option<Mac> {
        DEVICE_SUFFIXES
            .iter()
            .find_map(|suffix| mac_between(file, "", suffix, Case::Lower))
    }

    fn recognises_user_agent(&self, user_agent: &str) -> bool {
        product_token(user_agent).is_some()
    }

    /// Polycom's provisioning User-Agent never carries the MAC.
    fn mac_in_user_agent(&self, _user_agent: &str) -> Option<Mac> {
        None
    }

    fn model_in_user_agent(&self, user_agent: &str) -> Option<String> {
        // `PolycomVVX-VVX_500-UA/5.9.7.4477` → `VVX_500`.
        let product = product_token(user_agent)?;
        let part = product.split('-').nth(1)?;
        let (series, number) = part.split_once('_')?;
        let series = match series {
            "SSIP" => "soundstationip",
            "SPIP" => "soundpointip",
            other => return Some(format!("{other}{number}").to_ascii_lowercase()),
        };
        Some(format!("{series}{number}").to_ascii_lowercase())
    }

    fn accepts_upload(&self, file: &str) -> bool {
        UPLOAD_SUFFIXES
            .iter()
            .any(|suffix| mac_between(file, "", suffix, Case::Lower).is_some())
    }

    fn model_problems(&self, model: &ModelRef<'_>) -> Vec<String> {
        match self.file_name("site", model, None) {
            Some(_) => Vec::new(),
            None => vec![format!(
                "polycom {:?}: not a model id usable in a file name",
                model.model
            )],
        }
    }
}

/// The product token: `PolycomVVX-VVX_500-UA/…`, `PolyEdge-Edge_E450-UA/…`.
fn product_token(user_agent: &str) -> Option<&str> {
    bounded(user_agent)?.split_whitespace().find(|word| {
        (word.starts_with("Polycom") || word.starts_with("PolyEdge")) && word.contains("-UA/")
    })
}

/// Neutral codec names and Polycom's `voice.codecPref` names.
const CODECS: [(&str, &str); 4] = [
    ("pcmu", "G711_Mu"),
    ("pcma", "G711_A"),
    ("g722", "G722"),
    ("g729", "G729_AB"),
];

pub fn params(frame: &Frame<'_>, problems: &mut Vec<String>) -> Params {
    let mut out = Params::default();
    let neutral = Neutral::read(frame.config, problems);
    if !neutral.codecs.is_empty() {
        for (name, native) in CODECS {
            // 0 leaves the codec out; 1 is the most preferred.
            let rank = neutral.codecs.iter().position(|c| c == name);
            out.set(
                dotted(&format!("voice.codecPref.{native}")),
                rank.map_or(0, |r| r + 1).to_string(),
            );
        }
        for codec in neutral
            .codecs
            .iter()
            .filter(|c| !CODECS.iter().any(|(n, _)| n == c))
        {
            problems.push(format!("codecs: Polycom has no {codec}"));
        }
    }
    if let Some(server) = &neutral.ntp_server {
        out.set(dotted("tcpIpApp.sntp.address"), server);
        out.set(dotted("tcpIpApp.sntp.address.overrideDHCP"), "1");
    }
    if neutral.phone_book.url.is_some() {
        problems.push(
            "phone_book.url: Polycom has no remote XML phone book; use phone_book.entries".into(),
        );
    }
    let mut resource = 0;
    for key in frame.keys(&neutral, problems) {
        if key.kind != KeyKind::Blf {
            problems.push(format!("keys: key {}: Polycom keys are BLF only", key.key));
            continue;
        }
        // BLF resources fill the line keys after the registrations, in order.
        resource += 1;
        let base = format!("attendant.resourceList.{resource}");
        out.set(
            dotted(&format!("{base}.address")),
            frame.sip_target(&key.value),
        );
        out.set(dotted(&format!("{base}.label")), &key.label);
        out.set(dotted(&format!("{base}.type")), "normal");
    }
    if let Some(native) = frame.native(BRAND) {
        flatten_nested(native, ONE_ZERO, key_ok, &mut out, problems);
    }
    finish(&mut out, frame, line_owned, |p| {
        super::params::names_a_secret(&p.joined("."))
    });
    out
}

/// An XML attribute name (no colon: namespaces mean nothing to the phone).
pub(super) fn key_ok(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !name.ends_with('.')
        && !name.contains("..")
}

/// `reg.N.*` parameters that identify a line.
fn line_owned(path: &Path) -> bool {
    const OWNED: [&str; 6] = [
        "address",
        "auth.userId",
        "auth.password",
        "label",
        "displayName",
        "server.1.address",
    ];
    path.is_numbered_member("reg", &OWNED)
}

/// One ` name="value"` attribute per line, for the element the template opens.
pub fn write_params(params: &Params, _: &Helper<'_>) -> String {
    let mut out = String::new();
    for (path, param) in params.iter() {
        out.push_str("\n    ");
        out.push_str(&path.joined("."));
        out.push_str("=\"");
        out.push_str(&xml_escape(&param.text));
        out.push('"');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_name_the_model_but_no_mac() {
        for (ua, model) in [
            (
                "FileTransport PolycomVVX-VVX_500-UA/5.9.7.4477 Type/Application",
                "vvx500",
            ),
            (
                "FileTransport PolycomVVX-VVX_500-UA/5.9.7.47435 Type/Updater",
                "vvx500",
            ),
            (
                "FileTransport PolycomVVX-VVX_410-UA/5.9.5.0614 Type/Application",
                "vvx410",
            ),
            (
                "FileTransport PolycomSoundStationIP-SSIP_6000-UA/4.0.4.2906",
                "soundstationip6000",
            ),
            (
                "FileTransport PolycomSoundPointIP-SPIP_650-UA/4.0.1.13681",
                "soundpointip650",
            ),
            ("FileTransport PolyEdge-Edge_E450-UA/8.0.0.1234", "edgee450"),
        ] {
            assert!(Polycom.recognises_user_agent(ua), "{ua}");
            assert_eq!(
                Polycom.model_in_user_agent(ua).as_deref(),
                Some(model),
                "{ua}"
            );
            assert_eq!(Polycom.mac_in_user_agent(ua), None);
        }
        assert!(!Polycom.recognises_user_agent("Polycom fan club"));
    }

    #[test]
    fn uploads_are_the_names_the_phone_puts() {
        assert!(Polycom.accepts_upload("0004f282e824-boot.log"));
        assert!(Polycom.accepts_upload("0004f282e824-phone.cfg"));
        assert!(!Polycom.accepts_upload("0004f282e824.cfg"));
        assert!(!Polycom.accepts_upload("../0004f282e824-app.log"));
    }

    #[test]
    fn line_identity_belongs_to_lines() {
        assert!(line_owned(&dotted("reg.1.auth.password")));
        assert!(line_owned(&dotted("reg.2.server.1.address")));
        assert!(!line_owned(&dotted("reg.1.server.1.port")));
        assert!(!line_owned(&dotted("reg.1.ringType")));
    }
}
