//! The README's phone provisioning quick start on the demo documents of
//! `fixtures/couch/` (what `scripts/demo` loads), through the real daemon:
//! every demo unit — one per vendor — is built without errors beyond the
//! locked values the demo refuses on purpose, and each phone gets every one
//! of its files with the request paths and User-Agents real phones send
//! (Globex's phones through Digest auth).

use std::path::Path;

use reqwest::StatusCode;
use serde_json::Value;

use crate::phones::{PhonesEnv, get, phone, wait_status};
use crate::support::daemon::{Daemon, Reply};

pub const ACME: &str = "acme.sip.example.net";
pub const GLOBEX: &str = "globex.sip.example.net";
const YEALINK: &str = "Yealink SIP-T46S 66.86.0.15 80:5e:c0:12:34:56";

/// (unit, realm, User-Agent) of every demo phone.
pub const PHONES: [(&str, &str, &str); 7] = [
    ("unit-acme-yealink", ACME, YEALINK),
    (
        "unit-acme-polycom",
        ACME,
        "FileTransport PolycomVVX-VVX_410-UA/5.9.5.0614 Type/Application",
    ),
    (
        "unit-acme-spa",
        ACME,
        "Cisco/SPA504G-7.6.2 (0002FDFF2103)(CCQ161501AB)",
    ),
    (
        "unit-acme-mpp",
        ACME,
        "Cisco-CP-8841-3PCC/11.3.1 (00562b043615)",
    ),
    (
        "unit-globex-grandstream",
        GLOBEX,
        "Grandstream Model HW GXP2170 SW 1.0.11.3 DevId 000b828aa872",
    ),
    (
        "unit-globex-snom",
        GLOBEX,
        "Mozilla/4.0 (compatible; snomD785-SIP 10.1.33.33 2010.12-00004-g9ba52f5 000413922D24 SXM:0 UXM:0)",
    ),
    (
        "unit-globex-fanvil",
        GLOBEX,
        "Fanvil X5U-V2 2.12.16.17 0c383e557eb1",
    ),
];

pub async fn load_demo(env: &PhonesEnv) {
    for (dir, db) in [("units", &env.units), ("sip_auth", &env.sip_auth)] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/couch")
            .join(dir);
        for entry in std::fs::read_dir(path).unwrap() {
            let path = entry.unwrap().path();
            let mut doc: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            doc["_id"] = path.file_stem().unwrap().to_string_lossy().into();
            env.env.couch.upsert(db, &doc).await;
        }
    }
}

/// A GET through Globex's Digest credentials (the demo's provision config).
async fn digest_get(daemon: &Daemon, path: &str, realm: &str, ua: &str) -> Reply {
    let challenge = get(daemon, path, realm, ua).await;
    assert_eq!(challenge.status, StatusCode::UNAUTHORIZED, "{path}");
    let offered = challenge.headers["www-authenticate"].to_str().unwrap();
    let nonce = offered
        .split("nonce=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap();
    let authorization = caldera::domains::phones::auth::client_authorization(
        caldera::domains::phones::auth::Algorithm::Sha256,
        "globex-phones",
        "demo-provisioning-secret",
        realm,
        nonce,
        "GET",
        path,
        "9b1c2d3e",
    );
    phone(
        daemon,
        reqwest::Method::GET,
        path,
        realm,
        ua,
        &[("Authorization", authorization.as_str())],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_demo_phone_gets_its_files_as_the_readme_says() {
    let env = PhonesEnv::new().await;
    load_demo(&env).await;
    let daemon = Daemon::start_ready(&env.config()).await;
    // The README's quick-start curl: a real Yealink configuration.
    let cfg = wait_status(&daemon, "/805ec0123456.cfg", ACME, YEALINK, StatusCode::OK).await;
    for line in [
        "#!version:1.0.0.1",
        "account.1.user_name = sales-desk",
        "account.1.password = demo-sip-secret-1",
        "account.1.sip_server.1.address = acme.sip.example.net",
        "account.1.codec.g729.enable = 0",
        "phone_setting.ring_type = Ring2.wav",
        "features.dnd.allow = 0",
        "local_time.ntp_server1 = ntp.acme.example.net",
        "static.network.vlan.internet_port_vid = 20",
    ] {
        assert!(
            cfg.text.lines().any(|l| l == line),
            "{line} in\n{}",
            cfg.text
        );
    }
    for (unit, realm, ua) in PHONES {
        let view = daemon.get(&format!("/v1/units/{unit}")).await;
        assert_eq!(view.json["served"], true, "{unit}: {}", view.text);
        let unexpected: Vec<&Value> = view.json["errors"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| !e["reason"].as_str().unwrap().contains("locked by account"))
            .collect();
        assert!(unexpected.is_empty(), "{unit}: {unexpected:?}");
        let device: Vec<String> = view.json["files"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let common: Vec<String> = view.json["common_files"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert!(
            !device.is_empty() && !common.is_empty(),
            "{unit}: {}",
            view.text
        );
        let globex = realm == GLOBEX;
        for file in device.iter().chain(&common) {
            let path = format!("/{file}");
            let reply = if globex && device.contains(file) {
                digest_get(&daemon, &path, realm, ua).await
            } else {
                get(&daemon, &path, realm, ua).await
            };
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{unit} {path}: {}",
                reply.text
            );
            let admin = daemon.get(&format!("/v1/units/{unit}/files/{file}")).await;
            if device.contains(file) {
                assert_eq!(
                    reply.text, admin.text,
                    "{unit} {path}: what the admin API shows"
                );
            }
            let content_type = reply.headers["content-type"].to_str().unwrap();
            if content_type.contains("xml") {
                assert!(reply.text.starts_with('<'), "{unit} {path}: {}", reply.text);
            }
        }
    }
    // Model-common files never need credentials, per-device ones of
    // Globex always do.
    let common = get(&daemon, "/snomD785.htm", GLOBEX, PHONES[5].2).await;
    assert_eq!(common.status, StatusCode::OK);
    let device = get(&daemon, "/snomD785-000413922D24.htm", GLOBEX, PHONES[5].2).await;
    assert_eq!(device.status, StatusCode::UNAUTHORIZED);
}
