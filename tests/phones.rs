//! Phone provisioning through the real daemon and a real CouchDB-compatible
//! server: serving (uniform 404s byte for byte, Digest/Basic, rate limits,
//! CIDR allow lists, ETag/304/HEAD, log uploads, realistic requests, hostile
//! requests), the admin read API, and that secrets never reach the logs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::TestEnv;
use crate::support::daemon::{Daemon, DaemonConfig, Reply};
use crate::support::eventually;

pub const ACME: &str = "acct-acme";
pub const OTHER: &str = "acct-other";
pub const REALM: &str = "acme.sip.example.net";
pub const YEALINK_UA: &str = "Yealink SIP-T46S 66.86.0.15 80:5e:c0:12:34:56";
pub const MAC: &str = "805ec0123456";

/// One test's `units` and `sip_auth` databases.
pub struct PhonesEnv {
    pub env: TestEnv,
    pub units: String,
    pub sip_auth: String,
}

impl PhonesEnv {
    pub async fn new() -> PhonesEnv {
        let env = TestEnv::new().await;
        let units = format!("{}_units", env.names.prefix);
        let sip_auth = format!("{}_sip_auth", env.names.prefix);
        env.couch.create_db(&units).await;
        env.couch.create_db(&sip_auth).await;
        PhonesEnv {
            env,
            units,
            sip_auth,
        }
    }

    pub async fn unit_doc(&self, doc: Value) -> String {
        self.env.couch.upsert(&self.units, &doc).await
    }

    pub async fn device(&self, doc: Value) -> String {
        self.env.couch.upsert(&self.sip_auth, &doc).await
    }

    pub fn config(&self) -> DaemonConfig {
        self.env.config("n1")
    }

    /// Two accounts, each with a Yealink; the first with a line, and
    /// global overrides of every template the minimal Yealink uses (so the
    /// tests control the bytes).
    pub async fn seed(&self) {
        for doc in [
            json!({"_id": ACME, "type": "account", "name": "Acme", "realm": REALM}),
            json!({"_id": OTHER, "type": "account", "name": "Other", "realm": "other-tenant.example.net"}),
            json!({"_id": "unit-1", "type": "unit", "account_id": ACME, "name": "Desk 1", "mac_address": "80:5E:C0:12:34:56",
                   "brand": "yealink", "model": "t46s", "config": {"vlan": 10},
                   "lines": [{"line": 1, "device_id": "dev-1", "label": "Alice"}]}),
            json!({"_id": "unit-other", "type": "unit", "account_id": OTHER, "mac_address": "001565aaaaaa",
                   "brand": "yealink", "model": "t46s"}),
            json!({"_id": "unit-off", "type": "unit", "account_id": ACME, "mac_address": "001565bbbbbb",
                   "brand": "yealink", "model": "t46s", "enabled": false}),
            json!({"_id": "tpl-device", "type": "template", "brand": "yealink", "file": device_template(),
                   "template": "#!version:1.0.0.1\n{{#each lines}}account.{{line}}.user_name = {{username}}\naccount.{{line}}.password = {{password}}\n{{/each}}vlan = {{config.vlan}}\n"}),
            json!({"_id": "tpl-common", "type": "template", "brand": "yealink", "file": common_template(),
                   "template": "#!version:1.0.0.1\nrealm = {{account.realm}}\n"}),
        ] {
            self.unit_doc(doc).await;
        }
        self.device(json!({"_id": "dev-1", "pvt_type": "device", "pvt_account_id": ACME,
                           "sip": {"method": "password", "username": "alice", "password": "alice-secret-1"}}))
            .await;
    }
}

/// The template names the minimal Yealink's files use (asked from the
/// vendor module, so the tests follow it).
fn templates() -> (String, String) {
    use caldera::domains::phones::mac::Mac;
    use caldera::domains::phones::vendors::{self, FileClass, ModelRef};
    let meta = json!({"file_id": "66"});
    let model = ModelRef {
        brand: "yealink",
        family: Some("t4x"),
        model: "t46s",
        meta: &meta,
    };
    let files = vendors::by_brand("yealink")
        .unwrap()
        .files(&model, &Mac::parse(MAC).unwrap());
    let of = |class| {
        files
            .iter()
            .find(|f| f.class == class)
            .unwrap()
            .template
            .to_string()
    };
    (of(FileClass::Device), of(FileClass::Common))
}

pub fn device_template() -> String {
    templates().0
}

pub fn common_template() -> String {
    templates().1
}

/// A request on the phones listener.
pub async fn phone(
    daemon: &Daemon,
    method: reqwest::Method,
    path: &str,
    host: &str,
    ua: &str,
    extra: &[(&str, &str)],
) -> Reply {
    let mut request = daemon
        .http()
        .request(method, daemon.phones_url(path))
        .header("Host", host)
        .header("User-Agent", ua);
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    daemon
        .try_send(request)
        .await
        .expect("the phones listener answers")
}

pub async fn get(daemon: &Daemon, path: &str, host: &str, ua: &str) -> Reply {
    phone(daemon, reqwest::Method::GET, path, host, ua, &[]).await
}

/// Waits until the phones listener serves `path` with `status`.
pub async fn wait_status(
    daemon: &Daemon,
    path: &str,
    host: &str,
    ua: &str,
    status: StatusCode,
) -> Reply {
    eventually(
        &format!("{path} answers {status}"),
        Duration::from_secs(30),
        async || {
            let reply = get(daemon, path, host, ua).await;
            if reply.status == status {
                Ok(reply)
            } else {
                Err(format!("{} {}", reply.status, reply.text))
            }
        },
    )
    .await
}

/// Sends exact bytes and reads one answer (for paths an HTTP client would
/// normalise): status, headers (lower-case names), body.
pub fn raw(addr: SocketAddr, request: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect to the phones listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break answer.len(),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = answer.get(head_end + 4..).unwrap_or_default().to_vec();
    while body.len() < length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    (status, headers, body)
}

/// A denial as the client sees it: status, headers without `date`, body.
fn shape(reply: &Reply) -> (StatusCode, Vec<(String, String)>, String) {
    let mut headers: Vec<(String, String)> = reply
        .headers
        .iter()
        .filter(|(n, _)| n.as_str() != "date")
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    headers.sort();
    (reply.status, headers, reply.text.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn phones_get_their_files_and_every_denial_is_the_same_404() {
    let env = PhonesEnv::new().await;
    env.seed().await;
    let daemon = Daemon::start_ready(&env.config()).await;
    let device = wait_status(
        &daemon,
        "/805ec0123456.cfg",
        REALM,
        YEALINK_UA,
        StatusCode::OK,
    )
    .await;
    assert!(
        device.text.contains("account.1.user_name = alice"),
        "{}",
        device.text
    );
    assert!(device.text.contains("account.1.password = alice-secret-1"));
    assert!(device.text.contains("vlan = 10"));
    assert_eq!(device.content_type(), "text/plain; charset=utf-8");
    assert!(device.headers.get("etag").is_some());
    let common = get(&daemon, "/y000000000066.cfg", REALM, YEALINK_UA).await;
    assert_eq!(common.status, StatusCode::OK, "{}", common.text);
    assert_eq!(
        common.text,
        "#!version:1.0.0.1\nrealm = acme.sip.example.net\n"
    );
    // Port and case do not matter in Host; the account id prefix works too.
    let by_port = get(
        &daemon,
        "/805ec0123456.cfg",
        "ACME.sip.example.net:8080",
        YEALINK_UA,
    )
    .await;
    assert_eq!(by_port.text, device.text);
    let by_prefix = get(
        &daemon,
        &format!("/{ACME}/805ec0123456.cfg"),
        "p.kazoo.io",
        YEALINK_UA,
    )
    .await;
    assert_eq!(by_prefix.text, device.text);

    let reference = get(
        &daemon,
        "/805ec0999999.cfg",
        REALM,
        "Yealink SIP-T46S 66.86.0.15 80:5e:c0:99:99:99",
    )
    .await;
    assert_eq!(reference.status, StatusCode::NOT_FOUND);
    let denials: Vec<(&str, String, &str, &str)> = vec![
        (
            "unknown realm",
            "/805ec0123456.cfg".into(),
            "nowhere.example.net",
            YEALINK_UA,
        ),
        (
            "MAC of another account",
            "/001565aaaaaa.cfg".into(),
            REALM,
            "Yealink SIP-T46S 66.86.0.15 00:15:65:aa:aa:aa",
        ),
        (
            "cross-tenant host",
            "/805ec0123456.cfg".into(),
            "other-tenant.example.net",
            YEALINK_UA,
        ),
        (
            "disabled unit",
            "/001565bbbbbb.cfg".into(),
            REALM,
            "Yealink SIP-T46S 66.86.0.15 00:15:65:bb:bb:bb",
        ),
        (
            "file not in the set",
            "/805ec0123456-directory.xml".into(),
            REALM,
            YEALINK_UA,
        ),
        (
            "UA/path mismatch",
            "/805ec0123456.cfg".into(),
            REALM,
            "Yealink SIP-T46S 66.86.0.15 80:5e:c0:aa:bb:cc",
        ),
        (
            "unknown account prefix",
            "/acct-nope/805ec0123456.cfg".into(),
            REALM,
            YEALINK_UA,
        ),
        ("no MAC at all", "/favicon.ico".into(), REALM, "curl/8.5.0"),
        (
            "encoded traversal",
            "/..%2f..%2fetc%2fpasswd".into(),
            REALM,
            YEALINK_UA,
        ),
    ];
    for (what, path, host, ua) in &denials {
        let reply = get(&daemon, path, host, ua).await;
        assert_eq!(shape(&reply), shape(&reference), "{what}: {path}");
    }
    for method in [
        reqwest::Method::DELETE,
        reqwest::Method::OPTIONS,
        reqwest::Method::PATCH,
    ] {
        let reply = phone(
            &daemon,
            method.clone(),
            "/805ec0123456.cfg",
            REALM,
            YEALINK_UA,
            &[],
        )
        .await;
        assert_eq!(shape(&reply), shape(&reference), "method {method}");
    }
    // Paths an HTTP client would normalise, sent as raw bytes.
    let expected = raw(
        daemon.phones,
        format!("GET /805ec0999999.cfg HTTP/1.1\r\nHost: {REALM}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    for path in [
        "/805ec0123456.cfg/../../x",
        "/../805ec0123456.cfg",
        "/./805ec0123456.cfg",
        "/%2e%2e%2f805ec0123456.cfg",
        "/805ec0123456.cfg%00",
        "/a\\..\\b",
    ] {
        let (status, mut headers, body) = raw(daemon.phones, format!("GET {path} HTTP/1.1\r\nHost: {REALM}\r\nUser-Agent: {YEALINK_UA}\r\nConnection: close\r\n\r\n").as_bytes());
        headers.retain(|(n, _)| n != "date");
        let mut reference_headers = expected.1.clone();
        reference_headers.retain(|(n, _)| n != "date");
        assert_eq!(
            (status, headers, body),
            (expected.0, reference_headers, expected.2.clone()),
            "raw {path}"
        );
    }
}
