//! Tests across vendors: golden renders of every file of one model per
//! vendor family (`fixtures/phones/vendors/<brand>/<model>/<file>`,
//! `UPDATE_EXPECT=1` regenerates; each is checked for its native format
//! too), the reference's request table (§3.2), grammar properties over
//! random MACs (seeded; `CALDERA_TEST_SEED` replays), hostile names and
//! User-Agents, no secrets in model-common files, and escaping.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{Value, json};

use super::catalogue::EffectiveModel;
use super::{
    FileClass, FileSpec, ModelRef, all, by_brand, catalogue, config_problems, effective_model,
    models, registry, sample, templates, vendor_of_user_agent, vendors_claiming,
};
use crate::domains::phones::mac::Mac;

fn model(brand: &str, model: &str) -> EffectiveModel {
    effective_model(catalogue(), brand, None, model).unwrap_or_else(|| panic!("{brand}/{model}"))
}

fn model_ref(model: &EffectiveModel) -> ModelRef<'_> {
    ModelRef {
        brand: &model.brand,
        family: Some(&model.family),
        model: &model.model,
        meta: model.meta(),
    }
}

fn files(model: &EffectiveModel, mac: &Mac) -> Vec<FileSpec> {
    by_brand(&model.brand)
        .unwrap()
        .files(&model_ref(model), mac)
}

fn render(file: &FileSpec, context: &Value) -> String {
    registry()
        .expect("templates compile")
        .render(file.template, context)
        .unwrap_or_else(|e| panic!("{}: {e}", file.name))
}

fn context_for(model: &EffectiveModel, file: &FileSpec, mac: &Mac) -> Value {
    match file.class {
        FileClass::Common => sample::common_context(model),
        FileClass::Device => sample::device_context(model, mac),
    }
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/phones/vendors")
}

const GOLDEN_MODELS: [(&str, &str, &str); 7] = [
    ("yealink", "t46s", "805ec0123456"),
    ("polycom", "vvx500", "0004f282e824"),
    ("cisco", "spa504g", "0002fdff2103"),
    ("cisco", "cp-8841-3pcc", "00562b043615"),
    ("grandstream", "gxp2170", "000b828aa872"),
    ("snom", "d785", "000413922d24"),
    ("fanvil", "x5u", "0c383e557eb1"),
];

#[test]
fn golden_files_of_every_vendor() {
    for (brand, id, mac) in GOLDEN_MODELS {
        let model = model(brand, id);
        let mac = Mac::parse(mac).unwrap();
        for file in files(&model, &mac) {
            let text = render(&file, &context_for(&model, &file, &mac));
            check_format(brand, &file, &text);
            let path = fixtures().join(brand).join(id).join(&file.name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            expect_test::expect_file![path].assert_eq(&text);
        }
    }
}

/// The vendor's real format, beyond "looks like the golden file".
fn check_format(brand: &str, file: &FileSpec, text: &str) {
    let name = &file.name;
    match brand {
        "yealink" => check_key_value(name, text),
        "fanvil" => check_fanvil(name, text),
        _ => check_xml(brand, name, text),
    }
}

fn check_key_value(name: &str, text: &str) {
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("#!version:1.0.0.1"),
        "{name}: first line"
    );
    let mut keys = BTreeSet::new();
    for line in lines.filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if let Some(include) = line.strip_prefix("include:config ") {
            assert!(
                include.starts_with('"') && include.ends_with('"'),
                "{name}: {line}"
            );
            continue;
        }
        let (key, _) = line
            .split_once(" = ")
            .unwrap_or_else(|| panic!("{name}: {line:?}"));
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "{name}: {key}"
        );
        assert!(keys.insert(key.to_string()), "{name}: {key} twice");
    }
}

fn check_fanvil(name: &str, text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("<<VOIP CONFIG FILE>>Version:"),
        "{name}"
    );
    assert_eq!(lines.last(), Some(&"<<END OF FILE>>"), "{name}");
    let mut module = String::new();
    let mut seen = BTreeSet::new();
    for line in &lines[1..lines.len() - 1] {
        if line.is_empty() {
            continue;
        }
        if let Some(header) = line.strip_prefix('<').and_then(|l| l.strip_suffix('>')) {
            assert!(header.ends_with(" MODULE"), "{name}: {line}");
            assert!(seen.insert(header.to_string()), "{name}: {header} twice");
            module = header.to_string();
            continue;
        }
        assert!(!module.is_empty(), "{name}: {line:?} outside a module");
        let (key, _) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("{name}: {line:?}"));
        assert!(!key.trim().is_empty(), "{name}: {line:?}");
    }
}

fn check_xml(brand: &str, name: &str, text: &str) {
    let doc = roxmltree::Document::parse(text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
    let root = doc.root_element().tag_name().name();
    let expected = match (brand, name) {
        ("polycom", n) if n.ends_with("directory.xml") => "directory",
        ("polycom", n) if n.ends_with("-phone.cfg") || n.starts_with("site-") => "polycomConfig",
        ("polycom", _) => "APPLICATION",
        ("cisco", _) => "flat-profile",
        ("grandstream", "phonebook.xml") => "AddressBook",
        ("grandstream", _) => "gs_provision",
        ("snom", _) => "settings",
        _ => unreachable!("{brand}"),
    };
    assert_eq!(root, expected, "{name}");
    // One value per parameter: a repeated element would leave the phone to pick.
    if matches!(brand, "cisco" | "grandstream") {
        let mut seen = BTreeSet::new();
        for node in doc
            .descendants()
            .filter(|n| n.is_element() && !n.children().any(|c| c.is_element()))
        {
            let tag = node.tag_name().name();
            if !matches!(tag, "FirstName" | "phonenumber" | "mac") {
                assert!(seen.insert(tag.to_string()), "{name}: {tag} twice");
            }
        }
    }
    if brand == "snom" {
        for node in doc.descendants().filter(|n| {
            n.is_element()
                && n.parent_element().is_some_and(|p| {
                    matches!(p.tag_name().name(), "phone-settings" | "functionKeys")
                })
        }) {
            assert!(
                node.attribute("perm").is_some(),
                "{name}: {} has no perm",
                node.tag_name().name()
            );
        }
    }
}

#[test]
fn the_registry_escape_function_makes_no_difference() {
    let mut escaping = registry().unwrap();
    escaping.register_escape_fn(handlebars::html_escape);
    for (brand, id, mac) in GOLDEN_MODELS {
        let model = model(brand, id);
        let mac = Mac::parse(mac).unwrap();
        for file in files(&model, &mac) {
            let context = context_for(&model, &file, &mac);
            let escaped = escaping.render(file.template, &context).unwrap();
            assert_eq!(escaped, render(&file, &context), "{}", file.name);
        }
    }
}

#[test]
fn every_file_of_every_catalogue_model_renders_in_strict_mode() {
    let mac = Mac::parse("0c383e000001").unwrap();
    for (brand, family, id) in models(catalogue()) {
        let model = effective_model(catalogue(), &brand, Some(&family), &id).unwrap();
        let vendor = by_brand(&brand).unwrap();
        assert!(
            vendor.model_problems(&model_ref(&model)).is_empty(),
            "{brand}/{id}"
        );
        let files = files(&model, &mac);
        assert!(
            files.iter().any(|f| f.class == FileClass::Common),
            "{brand}/{id}"
        );
        assert!(
            files.iter().any(|f| f.class == FileClass::Device),
            "{brand}/{id}"
        );
        for file in files {
            let text = render(&file, &context_for(&model, &file, &mac));
            check_format(&brand, &file, &text);
        }
    }
}

#[test]
fn strict_mode_refuses_a_context_without_what_the_template_needs() {
    let model = model("yealink", "t46s");
    let mac = Mac::parse("805ec0123456").unwrap();
    let device = files(&model, &mac)
        .into_iter()
        .find(|f| f.name.ends_with(".cfg") && f.class == FileClass::Device);
    let mut context = sample::device_context(&model, &mac);
    context["lines"] = json!([{"line": 1}]);
    let error = registry()
        .unwrap()
        .render(device.unwrap().template, &context);
    assert!(error.is_err(), "a line without its fields must not render");
}

#[test]
fn every_template_is_used_and_every_used_template_ships() {
    let mac = Mac::parse("805ec0123456").unwrap();
    let shipped: BTreeSet<&str> = templates().iter().map(|(name, _)| *name).collect();
    let mut used = BTreeSet::new();
    for (brand, family, id) in models(catalogue()) {
        let model = effective_model(catalogue(), &brand, Some(&family), &id).unwrap();
        for file in files(&model, &mac) {
            assert!(shipped.contains(file.template), "{}", file.template);
            assert!(
                file.template.starts_with(&format!("{brand}/")),
                "{}",
                file.template
            );
            used.insert(file.template);
        }
    }
    assert_eq!(used, shipped);
}

/// Marker secrets everywhere a model-common file could pick one up from.
fn hostile_common_context(model: &EffectiveModel) -> Value {
    let mac = Mac::parse("805ec0123456").unwrap();
    let mut context = sample::common_context(model);
    // As if the core had leaked device fields into a common context: the
    // common templates must not read them, and without `mac` the file is
    // still treated as model-common.
    let device = sample::device_context(model, &mac);
    context["unit"] = json!({"id": "u", "name": "n", "provisioning": {"username": "u", "password": "MARKER-UNIT-SECRET"}});
    context["lines"] = device["lines"].clone();
    for line in context["lines"].as_array_mut().unwrap() {
        line["password"] = json!("MARKER-LINE-SECRET");
    }
    let secrets = json!({
        "yealink": {"static": {"auto_provision": {"server": {"password": "MARKER-CONFIG-SECRET"}, "aes_key_16": {"com": "MARKER-CONFIG-SECRET"}}}, "security": {"user_password": "admin:MARKER-CONFIG-SECRET"}, "account": {"1": {"password": "MARKER-CONFIG-SECRET"}}},
        "polycom": {"device": {"auth": {"localAdminPassword": "MARKER-CONFIG-SECRET"}}, "reg": {"1": {"auth": {"password": "MARKER-CONFIG-SECRET"}}}},
        "cisco": {"Admin_Passwd": "MARKER-CONFIG-SECRET", "Password_1_": "MARKER-CONFIG-SECRET"},
        "grandstream": {"P2": "MARKER-CONFIG-SECRET", "P34": "MARKER-CONFIG-SECRET", "P406": "MARKER-CONFIG-SECRET", "P1361": "MARKER-CONFIG-SECRET"},
        "snom": {"admin_mode_password": "MARKER-CONFIG-SECRET", "http_pass": "MARKER-CONFIG-SECRET", "user_pass": {"1": "MARKER-CONFIG-SECRET"}},
        "fanvil": {"MMI CONFIG MODULE": {"--MMI Account--": {"Account1 Password": "MARKER-CONFIG-SECRET"}}, "SIP CONFIG MODULE": {"SIP1 Register Pswd": "MARKER-CONFIG-SECRET"}}
    });
    super::merge(&mut context["config"], &secrets);
    context
}

#[test]
fn model_common_files_never_carry_secrets() {
    let mac = Mac::parse("805ec0123456").unwrap();
    let mut rendered = 0;
    for (brand, family, id) in models(catalogue()) {
        let model = effective_model(catalogue(), &brand, Some(&family), &id).unwrap();
        let context = hostile_common_context(&model);
        for file in files(&model, &mac)
            .into_iter()
            .filter(|f| f.class == FileClass::Common)
        {
            let text = render(&file, &context);
            assert!(
                !text.contains("MARKER"),
                "{brand}/{id} {}:\n{text}",
                file.name
            );
            rendered += 1;
        }
    }
    assert!(rendered >= 20, "{rendered}");
}

#[test]
fn configuration_cannot_replace_a_lines_identity() {
    let mac = Mac::parse("0c383e000001").unwrap();
    for (brand, family, id) in models(catalogue()) {
        let model = effective_model(catalogue(), &brand, Some(&family), &id).unwrap();
        let mut context = sample::device_context(&model, &mac);
        let takeover = json!({
            "yealink": {"account": {"1": {"password": "TAKEOVER", "sip_server": {"1": {"address": "TAKEOVER"}}}}},
            "polycom": {"reg.1.auth.password": "TAKEOVER", "reg.1.server.1.address": "TAKEOVER"},
            "cisco": {"Password_1_": "TAKEOVER", "Proxy_1_": "TAKEOVER", "Short_Name_1_": "TAKEOVER"},
            "grandstream": {"P34": "TAKEOVER", "P47": "TAKEOVER", "P406": "TAKEOVER"},
            "snom": {"user_pass": {"1": "TAKEOVER"}, "user_host": {"2": "TAKEOVER"}},
            "fanvil": {"SIP CONFIG MODULE": {"SIP1 Register Pswd": "TAKEOVER", "SIP2 Register Addr": "TAKEOVER"}}
        });
        super::merge(&mut context["config"], &takeover);
        for file in files(&model, &mac) {
            let text = render(&file, &context);
            assert!(!text.contains("TAKEOVER"), "{brand}/{id} {}", file.name);
        }
    }
}

#[test]
fn user_values_cannot_inject_lines_or_markup() {
    let hostile =
        "Bob\naccount.1.password = pwn\"/><evil a=\"&\r<<END OF FILE>>\n<SIP CONFIG MODULE>";
    let mac = Mac::parse("0c383e000001").unwrap();
    for (brand, id, _) in GOLDEN_MODELS {
        let model = model(brand, id);
        let mut context = sample::device_context(&model, &mac);
        context["lines"][0]["display_name"] = json!(hostile);
        context["lines"][0]["label"] = json!(hostile);
        context["config"]["phone_book"]["entries"][0]["name"] = json!(hostile);
        context["config"]["keys"][0]["label"] = json!(hostile);
        for file in files(&model, &mac) {
            let text = render(&file, &context);
            check_format(brand, &file, &text);
            for line in text.lines() {
                assert!(
                    !line.starts_with("account.1.password = pwn"),
                    "{brand} {}",
                    file.name
                );
                assert!(!line.starts_with("<evil"), "{brand} {}", file.name);
            }
            if brand != "yealink" && brand != "fanvil" {
                let doc = roxmltree::Document::parse(&text).unwrap();
                assert!(doc.descendants().all(|n| n.tag_name().name() != "evil"));
            }
        }
    }
}

#[test]
fn master_and_boot_files_name_only_served_files() {
    let mac = Mac::parse("805ec0123456").unwrap();
    for (brand, id) in [
        ("yealink", "t46s"),
        ("polycom", "vvx410"),
        ("polycom", "soundstationip6000"),
    ] {
        let model = model(brand, id);
        let all_files = files(&model, &mac);
        let names: BTreeSet<String> = all_files.iter().map(|f| f.name.clone()).collect();
        for file in &all_files {
            let text = render(file, &context_for(&model, file, &mac));
            let named: Vec<String> = if brand == "yealink" {
                if !file.name.ends_with(".boot") {
                    continue;
                }
                text.lines()
                    .filter_map(|l| l.strip_prefix("include:config \""))
                    .map(|l| l.trim_end_matches('"').to_string())
                    .collect()
            } else if let Some(list) = text.split("CONFIG_FILES=\"").nth(1) {
                list.split('"')
                    .next()
                    .unwrap()
                    .split(", ")
                    .map(|n| n.replace("[PHONE_MAC_ADDRESS]", &mac.lower()))
                    .collect()
            } else {
                continue;
            };
            assert!(!named.is_empty(), "{}", file.name);
            for name in named {
                assert!(
                    names.contains(&name),
                    "{} names {name}, not served",
                    file.name
                );
            }
        }
    }
}

/// The reference's §3.2 rows: what the vendor grammars say about each
/// request. `vendors` are the vendors whose per-device grammar claims the
/// path (all with `mac`); `ua_vendor`/`ua_mac` what the User-Agent says.
struct Row {
    path: &'static str,
    ua: &'static str,
    vendors: &'static [&'static str],
    mac: Option<&'static str>,
    ua_vendor: Option<&'static str>,
    ua_mac: Option<&'static str>,
}

const YEALINK_UA: &str = "Yealink SIP-T46S 66.86.0.15 80:5e:c0:12:34:56";
const POLYCOM_UA: &str = "FileTransport PolycomVVX-VVX_500-UA/5.9.7.4477 Type/Application";
const SPA_UA: &str = "Cisco/SPA508G-7.4.8a (0002FDFF2103)(CBT141400UK)";
const GS_UA: &str = "Grandstream Model HW GXP2135 SW 1.0.7.97 DevId 000b828aa872";
const SNOM_UA: &str = "Mozilla/4.0 (compatible; snomD785-SIP 10.1.33.33 2010.12-00004-g9ba52f5 000413922D24 SXM:0 UXM:0)";

const ROWS: &[Row] = &[
    Row {
        path: "y000000000000.boot",
        ua: YEALINK_UA,
        vendors: &[],
        mac: None,
        ua_vendor: Some("yealink"),
        ua_mac: Some("805ec0123456"),
    },
    Row {
        path: "805ec0123456.boot",
        ua: YEALINK_UA,
        vendors: &["yealink"],
        mac: Some("805ec0123456"),
        ua_vendor: Some("yealink"),
        ua_mac: Some("805ec0123456"),
    },
    Row {
        path: "y000000000066.cfg",
        ua: YEALINK_UA,
        vendors: &[],
        mac: None,
        ua_vendor: Some("yealink"),
        ua_mac: Some("805ec0123456"),
    },
    Row {
        path: "805ec0123456.cfg",
        ua: YEALINK_UA,
        vendors: &["yealink", "polycom", "fanvil"],
        mac: Some("805ec0123456"),
        ua_vendor: Some("yealink"),
        ua_mac: Some("805ec0123456"),
    },
    // Row 5: the path and the User-Agent disagree on the MAC.
    Row {
        path: "805ec0123456.cfg",
        ua: "Yealink SIP-T46S 66.86.0.15 80:5e:c0:aa:bb:cc",
        vendors: &["yealink", "polycom", "fanvil"],
        mac: Some("805ec0123456"),
        ua_vendor: Some("yealink"),
        ua_mac: Some("805ec0aabbcc"),
    },
    Row {
        path: "805ec0123456.cfg",
        ua: "curl/8.5.0",
        vendors: &["yealink", "polycom", "fanvil"],
        mac: Some("805ec0123456"),
        ua_vendor: None,
        ua_mac: None,
    },
    Row {
        path: "0004f282e824.cfg",
        ua: POLYCOM_UA,
        vendors: &["yealink", "polycom", "fanvil"],
        mac: Some("0004f282e824"),
        ua_vendor: Some("polycom"),
        ua_mac: None,
    },
    Row {
        path: "000000000000.cfg",
        ua: POLYCOM_UA,
        vendors: &[],
        mac: None,
        ua_vendor: Some("polycom"),
        ua_mac: None,
    },
    Row {
        path: "0004f282e824-phone.cfg",
        ua: POLYCOM_UA,
        vendors: &["polycom"],
        mac: Some("0004f282e824"),
        ua_vendor: Some("polycom"),
        ua_mac: None,
    },
    Row {
        path: "0004f282e824-directory.xml",
        ua: POLYCOM_UA,
        vendors: &["polycom"],
        mac: Some("0004f282e824"),
        ua_vendor: Some("polycom"),
        ua_mac: None,
    },
    Row {
        path: "0004f282e824-boot.log",
        ua: "FileTransport PolycomVVX-VVX_500-UA/5.9.7.47435 Type/Updater",
        vendors: &["polycom"],
        mac: Some("0004f282e824"),
        ua_vendor: Some("polycom"),
        ua_mac: None,
    },
    Row {
        path: "3111-44500-001.sip.ld",
        ua: POLYCOM_UA,
        vendors: &[],
        mac: None,
        ua_vendor: Some("polycom"),
        ua_mac: None,
    },
    Row {
        path: "spa508G.cfg",
        ua: SPA_UA,
        vendors: &[],
        mac: None,
        ua_vendor: Some("cisco"),
        ua_mac: Some("0002fdff2103"),
    },
    Row {
        path: "spa0002fdff2103.xml",
        ua: SPA_UA,
        vendors: &["cisco"],
        mac: Some("0002fdff2103"),
        ua_vendor: Some("cisco"),
        ua_mac: Some("0002fdff2103"),
    },
    Row {
        path: "CP-8841-3PCC.xml",
        ua: "Cisco-CP-8841-3PCC/11.0 (00562b043615)",
        vendors: &[],
        mac: None,
        ua_vendor: Some("cisco"),
        ua_mac: Some("00562b043615"),
    },
    Row {
        path: "cfg000b828aa872.xml",
        ua: GS_UA,
        vendors: &["grandstream"],
        mac: Some("000b828aa872"),
        ua_vendor: Some("grandstream"),
        ua_mac: Some("000b828aa872"),
    },
    Row {
        path: "phonebook.xml",
        ua: GS_UA,
        vendors: &[],
        mac: None,
        ua_vendor: Some("grandstream"),
        ua_mac: Some("000b828aa872"),
    },
    Row {
        path: "snomD785.htm",
        ua: SNOM_UA,
        vendors: &[],
        mac: None,
        ua_vendor: Some("snom"),
        ua_mac: Some("000413922d24"),
    },
    Row {
        path: "snomD785-000413922D24.htm",
        ua: SNOM_UA,
        vendors: &["snom"],
        mac: Some("000413922d24"),
        ua_vendor: Some("snom"),
        ua_mac: Some("000413922d24"),
    },
    Row {
        path: "snom720-8.9.3.80-SIP-r.bin",
        ua: "Mozilla/4.0 (compatible; snom720 8.9.3.80)",
        vendors: &[],
        mac: None,
        ua_vendor: Some("snom"),
        ua_mac: None,
    },
    Row {
        path: "0c383e557eb1.cfg",
        ua: "Fanvil X5U-V2 2.12.16.17 0c383e557eb1",
        vendors: &["yealink", "polycom", "fanvil"],
        mac: Some("0c383e557eb1"),
        ua_vendor: Some("fanvil"),
        ua_mac: Some("0c383e557eb1"),
    },
    // Gigaset's `<mac>.xml` is Cisco MPP's grammar too; the unit's brand decides.
    Row {
        path: "7c2f80e0d605.xml",
        ua: "Gigaset N870 IP PRO/83.V2.11.0+build.a546b91;7C2F80E0D605",
        vendors: &["cisco"],
        mac: Some("7c2f80e0d605"),
        ua_vendor: None,
        ua_mac: None,
    },
    Row {
        path: "Config0080f0c8c381.cfg",
        ua: "Panasonic_KX-UT113/01.133 (0080f0c8c381)",
        vendors: &[],
        mac: None,
        ua_vendor: None,
        ua_mac: None,
    },
    Row {
        path: "1400E91B4524.cfg",
        ua: "Mitel6940 MAC:14-00-E9-1B-45-24 V:6.4.0.140-SIP",
        vendors: &[],
        mac: None,
        ua_vendor: None,
        ua_mac: None,
    },
    Row {
        path: "001565000000.cfg",
        ua: "yealink SIP-T22P 7.61.0.80 00:15:65:00:00:00",
        vendors: &["yealink", "polycom", "fanvil"],
        mac: Some("001565000000"),
        ua_vendor: Some("yealink"),
        ua_mac: Some("001565000000"),
    },
    Row {
        path: "0004f2abcdef-reg-basic.cfg",
        ua: "FileTransport PolycomVVX-VVX_410-UA/5.9.5.0614 Type/Application",
        vendors: &["polycom"],
        mac: Some("0004f2abcdef"),
        ua_vendor: Some("polycom"),
        ua_mac: None,
    },
    Row {
        path: "..%2f..%2fetc%2fpasswd",
        ua: YEALINK_UA,
        vendors: &[],
        mac: None,
        ua_vendor: Some("yealink"),
        ua_mac: Some("805ec0123456"),
    },
    Row {
        path: "805ec0123456.cfg/../../x",
        ua: YEALINK_UA,
        vendors: &[],
        mac: None,
        ua_vendor: Some("yealink"),
        ua_mac: Some("805ec0123456"),
    },
];

#[test]
fn the_reference_request_table() {
    for row in ROWS {
        let claims = vendors_claiming(row.path);
        let brands: Vec<&str> = claims.iter().map(|(v, _)| v.brand()).collect();
        assert_eq!(brands, row.vendors, "{}", row.path);
        for (vendor, mac) in &claims {
            assert_eq!(
                Some(mac.lower().as_str()),
                row.mac,
                "{} by {}",
                row.path,
                vendor.brand()
            );
        }
        assert_eq!(
            vendor_of_user_agent(row.ua).map(|v| v.brand()),
            row.ua_vendor,
            "{}",
            row.ua
        );
        let ua_mac = vendor_of_user_agent(row.ua).and_then(|v| v.mac_in_user_agent(row.ua));
        assert_eq!(
            ua_mac.map(|m| m.lower()).as_deref(),
            row.ua_mac,
            "{}",
            row.ua
        );
    }
    // Row 5 is the one whose path and User-Agent MACs differ: the core denies it.
    let mismatched: Vec<&Row> = ROWS
        .iter()
        .filter(|r| r.mac.is_some() && r.ua_mac.is_some() && r.mac != r.ua_mac)
        .collect();
    assert_eq!(mismatched.len(), 1);
    assert_eq!(
        mismatched[0].ua,
        "Yealink SIP-T46S 66.86.0.15 80:5e:c0:aa:bb:cc"
    );
}

#[test]
fn the_reference_model_common_requests_are_model_files() {
    let mac = Mac::parse("805ec0123456").unwrap();
    for (brand, id, path, class) in [
        ("yealink", "t46s", "y000000000000.boot", FileClass::Common),
        ("yealink", "t46s", "y000000000066.cfg", FileClass::Common),
        ("yealink", "t46s", "805ec0123456.boot", FileClass::Device),
        ("polycom", "vvx500", "000000000000.cfg", FileClass::Common),
        (
            "polycom",
            "vvx500",
            "805ec0123456-directory.xml",
            FileClass::Device,
        ),
        ("cisco", "spa508g", "spa508G.cfg", FileClass::Common),
        (
            "cisco",
            "cp-8841-3pcc",
            "CP-8841-3PCC.xml",
            FileClass::Common,
        ),
        (
            "cisco",
            "cp-8841-3pcc",
            "805ec0123456.xml",
            FileClass::Device,
        ),
        (
            "grandstream",
            "gxp2135",
            "cfggxp2135.xml",
            FileClass::Common,
        ),
        (
            "grandstream",
            "gxp2135",
            "cfg805ec0123456",
            FileClass::Device,
        ),
        ("grandstream", "gxp2135", "phonebook.xml", FileClass::Device),
        ("snom", "d785", "snomD785.htm", FileClass::Common),
        (
            "snom",
            "d785",
            "snomD785-805EC0123456.htm",
            FileClass::Device,
        ),
        ("snom", "d785", "805EC0123456.xml", FileClass::Device),
        ("fanvil", "x5u", "F0V00X5U0000.cfg", FileClass::Common),
    ] {
        let files = files(&model(brand, id), &mac);
        let file = files.iter().find(|f| f.name == path);
        assert_eq!(
            file.map(|f| f.class),
            Some(class),
            "{brand}/{id} {path}: {files:?}"
        );
    }
}

#[test]
fn user_agents_name_catalogue_models() {
    for (ua, brand, id) in [
        (YEALINK_UA, "yealink", "t46s"),
        (POLYCOM_UA, "polycom", "vvx500"),
        (SPA_UA, "cisco", "spa508g"),
        (
            "Cisco-CP-8841-3PCC/11.0 (00562b043615)",
            "cisco",
            "cp-8841-3pcc",
        ),
        (GS_UA, "grandstream", "gxp2135"),
        (SNOM_UA, "snom", "d785"),
        ("Mozilla/4.0 (compatible; snom720 8.9.3.80)", "snom", "720"),
        ("Fanvil X5U-V2 2.12.16.17 0c383e557eb1", "fanvil", "x5u"),
    ] {
        let vendor = vendor_of_user_agent(ua).unwrap();
        assert_eq!(vendor.brand(), brand);
        let named = vendor.model_in_user_agent(ua).unwrap();
        assert_eq!(named, id);
        assert!(
            effective_model(catalogue(), brand, None, &named).is_some(),
            "{named}"
        );
    }
}

/// Seeded randomness: `CALDERA_TEST_SEED` replays a failing run.
fn rng(test: &str) -> fastrand::Rng {
    let seed = std::env::var("CALDERA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("{test}: CALDERA_TEST_SEED={seed}");
    fastrand::Rng::with_seed(seed)
}

fn random_mac(rng: &mut fastrand::Rng) -> Mac {
    loop {
        let bytes: [u8; 6] = std::array::from_fn(|_| rng.u8(..));
        // Half the time only digits, where lower and upper case coincide.
        let text: String = if rng.bool() {
            (0..12).map(|_| char::from(b'0' + rng.u8(0..10))).collect()
        } else {
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        };
        if let Some(mac) = Mac::parse(&text).filter(|m| m.lower() != "000000000000") {
            return mac;
        }
    }
}

/// Per-device names more than one vendor's grammar accepts, and why: the
/// formats truly collide (see the module comment of `vendors`).
fn documented_collision(name: &str, mac: &Mac, brands: &BTreeSet<&str>) -> bool {
    let cfg = name == format!("{}.cfg", mac.lower())
        && brands.is_subset(&BTreeSet::from(["yealink", "polycom", "fanvil"]));
    let xml = (name == format!("{}.xml", mac.lower()) || name == format!("{}.xml", mac.upper()))
        && mac.lower() == mac.upper()
        && brands.is_subset(&BTreeSet::from(["cisco", "snom"]));
    cfg || xml
}

#[test]
fn every_file_is_recognised_by_its_own_grammar_and_no_other_unless_documented() {
    let mut rng = rng("grammar_properties");
    let models = models(catalogue());
    for _ in 0..300 {
        let mac = random_mac(&mut rng);
        let (brand, family, id) = &models[rng.usize(..models.len())];
        let model = effective_model(catalogue(), brand, Some(family), id).unwrap();
        let vendor = by_brand(brand).unwrap();
        let common: Vec<FileSpec> = files(&model, &mac)
            .into_iter()
            .filter(|f| f.class == FileClass::Common)
            .collect();
        assert_eq!(
            common,
            vendor.common_files(&model_ref(&model)),
            "{brand}/{id}: common names depend on the MAC"
        );
        for file in files(&model, &mac) {
            let claims = vendors_claiming(&file.name);
            match file.class {
                FileClass::Common => {
                    assert!(claims.is_empty(), "{} is common but MAC-shaped", file.name)
                }
                FileClass::Device if file.name == "phonebook.xml" => assert!(claims.is_empty()),
                FileClass::Device => {
                    assert_eq!(
                        vendor.mac_in_file(&file.name),
                        Some(mac),
                        "{brand} {}",
                        file.name
                    );
                    let others: BTreeSet<&str> = claims
                        .iter()
                        .map(|(v, _)| v.brand())
                        .filter(|b| b != brand)
                        .collect();
                    if !others.is_empty() {
                        let mut all = others.clone();
                        all.insert(brand);
                        assert!(
                            documented_collision(&file.name, &mac, &all),
                            "{} claimed by {others:?}",
                            file.name
                        );
                    }
                    assert!(claims.iter().all(|(_, m)| *m == mac), "{}", file.name);
                }
            }
        }
    }
}

#[test]
fn grammars_return_only_macs_written_in_the_name() {
    let mut rng = rng("grammar_fuzz");
    let pieces = [
        "spa", "cfg", "snom", "D785", "-", ".cfg", ".xml", ".htm", ".boot", "-phone", "/", "%2f",
        "..", "\0", "é", "０",
    ];
    for _ in 0..5000 {
        let mut name = String::new();
        for _ in 0..rng.usize(1..5) {
            if rng.bool() {
                name.push_str(pieces[rng.usize(..pieces.len())]);
            } else {
                let mac = random_mac(&mut rng);
                name.push_str(&if rng.bool() { mac.lower() } else { mac.upper() });
            }
        }
        for (vendor, mac) in vendors_claiming(&name) {
            assert!(
                name.contains(&mac.lower()) || name.contains(&mac.upper()),
                "{} read {mac} from {name:?}",
                vendor.brand()
            );
            assert!(
                name.is_ascii() && !name.contains(['/', '%', '\0']),
                "{} claimed {name:?}",
                vendor.brand()
            );
        }
    }
}

#[test]
fn hostile_file_names_are_claimed_by_no_vendor() {
    let long = format!("{}.cfg", "805ec0123456".repeat(90_000));
    for name in [
        "../805ec0123456.cfg",
        "805ec0123456.cfg/../../etc/passwd",
        "..%2f805ec0123456.cfg",
        "%38%30%35ec0123456.cfg",
        "805ec0123456.cfg%00",
        "805ec0123456\0.cfg",
        "805ec0123456.cfg\0",
        "805ec012345.cfg",
        "805ec01234567.cfg",
        "805ec012345g.cfg",
        "805EC0123456.cfg",
        "80:5e:c0:12:34:56.cfg",
        "８０５ec0123456.cfg",
        "805ec0123456.cfg ",
        " 805ec0123456.cfg",
        "805ec0123456.CFG",
        "spa805EC0123456.xml",
        "cfg805EC0123456.xml",
        "snomD785-805ec0123456.htm",
        "snomD785-805EC0123456.htm.bak",
        "snom/D785-805EC0123456.htm",
        "000000000000.cfg",
        "000000000000.xml",
        "",
        &long,
    ] {
        assert!(
            vendors_claiming(name).is_empty(),
            "{:?}",
            &name[..name.len().min(60)]
        );
    }
}

#[test]
fn absurd_user_agents_are_nobodys() {
    let padding = "x".repeat(8 * 1024);
    for ua in [
        format!("Yealink SIP-T46S {padding} 80:5e:c0:12:34:56"),
        format!("Yealink {padding}"),
        format!("FileTransport PolycomVVX-VVX_500-UA/5.9 {padding}"),
        format!("Cisco/SPA508G-7.4.8a (0002FDFF2103) {padding}"),
        format!("Grandstream Model HW GXP2135 SW 1 DevId 000b828aa872 {padding}"),
        format!("Mozilla/4.0 (compatible; snomD785-SIP 10 000413922D24 {padding})"),
        format!("Fanvil X5U {padding} 0c383e557eb1"),
        "\0Yealink SIP-T46S 1 80:5e:c0:12:34:56".to_string(),
        "Ｙealink SIP-T46S 1 80:5e:c0:12:34:56".to_string(),
    ] {
        for vendor in all() {
            assert!(!vendor.recognises_user_agent(&ua), "{}", vendor.brand());
            assert_eq!(vendor.mac_in_user_agent(&ua), None, "{}", vendor.brand());
            assert_eq!(vendor.model_in_user_agent(&ua), None, "{}", vendor.brand());
        }
    }
}

#[test]
fn no_two_vendors_recognise_the_same_real_user_agent() {
    for row in ROWS {
        let recognising: Vec<&str> = all()
            .iter()
            .filter(|v| v.recognises_user_agent(row.ua))
            .map(|v| v.brand())
            .collect();
        assert!(recognising.len() <= 1, "{}: {recognising:?}", row.ua);
    }
}

#[test]
fn config_problems_name_what_a_vendor_cannot_write() {
    let model = model("cisco", "spa504g");
    let mut context = sample::device_context(&model, &Mac::parse("0002fdff2103").unwrap());
    context["config"]["codecs"] = json!(["g722", "pcmu", "pcma", "g729", "ilbc", "speex"]);
    context["config"]["keys"] = json!([{"key": 1, "type": "blf", "value": "1002"}, {"key": 40, "type": "blf", "value": "1003"}]);
    context["config"]["cisco"] = json!({"Bad Name": "x", "VLAN_ID": {"nested": 1}});
    let problems = config_problems(&context);
    for expected in [
        "speex",
        "ilbc",
        "three preferred",
        "line 1",
        "key 40",
        "Bad Name",
        "VLAN_ID",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{expected} not in {problems:?}"
        );
    }
    assert!(
        config_problems(&sample::device_context(
            &model,
            &Mac::parse("0002fdff2103").unwrap()
        ))
        .is_empty()
    );
}

#[test]
fn models_without_naming_meta_get_only_files_that_render() {
    let mac = Mac::parse("805ec0123456").unwrap();
    for vendor in all() {
        let model = EffectiveModel {
            brand: vendor.brand().to_string(),
            family: "unknown".to_string(),
            model: "x9".to_string(),
            node: json!({"meta": {}, "schema": {}}),
        };
        let files = files(&model, &mac);
        for file in &files {
            render(file, &context_for(&model, file, &mac));
        }
        // Polycom and Grandstream name their files from the model id alone.
        if !matches!(vendor.brand(), "polycom" | "grandstream") {
            let problems = vendor.model_problems(&model_ref(&model));
            assert!(!problems.is_empty(), "{}", vendor.brand());
            let classes: Vec<FileClass> = files.iter().map(|f| f.class).collect();
            assert!(
                classes.iter().all(|c| *c == FileClass::Device),
                "{}: {files:?}",
                vendor.brand()
            );
        }
    }
    let hostile = json!({"file_id": "../../etc", "psn": "a/b", "profile": "mpp", "name": "D7 85"});
    for vendor in all() {
        let model = ModelRef {
            brand: vendor.brand(),
            family: None,
            model: "x9",
            meta: &hostile,
        };
        for file in vendor.files(&model, &mac) {
            assert!(!file.name.contains(['/', ' ']), "{}", file.name);
        }
    }
}
