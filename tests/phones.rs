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
    /// global overrides of the templates of `<mac>.cfg` and
    /// `y000000000066.cfg` (so the tests control those bytes).
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

/// The templates of the Yealink T46S's `<mac>.cfg` and `y000000000066.cfg`
/// (asked from the vendor module, so the tests follow it).
fn templates() -> (String, String) {
    use caldera::domains::phones::mac::Mac;
    use caldera::domains::phones::vendors::{self, ModelRef};
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
    let of = |name: &str| {
        files
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("the T46S has {name}: {files:?}"))
            .template
            .to_string()
    };
    (of(&format!("{MAC}.cfg")), of("y000000000066.cfg"))
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

/// The value of every `WWW-Authenticate` header.
fn challenges(reply: &Reply) -> Vec<String> {
    reply
        .headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

fn nonce_of(challenge: &str) -> String {
    challenge
        .split("nonce=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a nonce")
        .to_string()
}

/// Gives `unit-1` its own HTTP credentials.
async fn protect_unit(env: &PhonesEnv, allow_basic: bool) {
    let mut unit = env.env.couch.get(&env.units, "unit-1").await.unwrap();
    unit["provisioning"] =
        json!({"username": "desk-1", "password": "http-secret-9", "allow_basic": allow_basic});
    env.unit_doc(unit).await;
}

async fn digest_get(
    daemon: &Daemon,
    path: &str,
    algorithm: caldera::domains::phones::auth::Algorithm,
    password: &str,
    extra: &[(&str, &str)],
) -> Reply {
    let challenge = get(daemon, path, REALM, YEALINK_UA).await;
    assert_eq!(
        challenge.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        challenge.text
    );
    let nonce = nonce_of(&challenges(&challenge)[0]);
    let authorization = caldera::domains::phones::auth::client_authorization(
        algorithm, "desk-1", password, REALM, &nonce, "GET", path, "0a4f113b",
    );
    let mut headers = vec![("Authorization", authorization.as_str())];
    headers.extend_from_slice(extra);
    phone(
        daemon,
        reqwest::Method::GET,
        path,
        REALM,
        YEALINK_UA,
        &headers,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn per_device_credentials_with_digest_and_basic_and_no_secret_in_any_log() {
    use base64::Engine as _;
    use caldera::domains::phones::auth::Algorithm;
    let env = PhonesEnv::new().await;
    env.seed().await;
    protect_unit(&env, true).await;
    let daemon = Daemon::start_ready(&env.config()).await;
    let challenge = wait_status(
        &daemon,
        "/805ec0123456.cfg",
        REALM,
        YEALINK_UA,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let offered = challenges(&challenge);
    assert_eq!(offered.len(), 3, "{offered:?}");
    assert!(
        offered[0].starts_with("Digest realm=\"acme.sip.example.net\"")
            && offered[0].contains("algorithm=SHA-256")
    );
    assert!(offered[1].contains("algorithm=MD5") && offered[1].contains("qop=\"auth\""));
    assert!(offered[2].starts_with("Basic realm="));
    assert!(!challenge.text.contains("alice"), "a 401 carries no file");
    for algorithm in [Algorithm::Sha256, Algorithm::Md5] {
        let ok = digest_get(
            &daemon,
            "/805ec0123456.cfg",
            algorithm,
            "http-secret-9",
            &[],
        )
        .await;
        assert_eq!(ok.status, StatusCode::OK, "{algorithm:?}: {}", ok.text);
        assert!(ok.text.contains("alice-secret-1"));
        let wrong = digest_get(&daemon, "/805ec0123456.cfg", algorithm, "guess", &[]).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    }
    let basic = |password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("desk-1:{password}"))
        )
    };
    let ok = phone(
        &daemon,
        reqwest::Method::GET,
        "/805ec0123456.cfg",
        REALM,
        YEALINK_UA,
        &[("Authorization", &basic("http-secret-9"))],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let wrong = phone(
        &daemon,
        reqwest::Method::GET,
        "/805ec0123456.cfg",
        REALM,
        YEALINK_UA,
        &[("Authorization", &basic("nope"))],
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    // Model-common files carry no secrets and need no credentials.
    let common = get(&daemon, "/y000000000066.cfg", REALM, YEALINK_UA).await;
    assert_eq!(common.status, StatusCode::OK);
    // An unknown MAC is still the uniform 404, never a 401.
    let unknown = get(&daemon, "/805ec0999999.cfg", REALM, "curl/8.5.0").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // The account's provision config gives credentials to units without their own.
    env.unit_doc(json!({"_id": "pc-acme", "type": "provision_config", "account_id": ACME,
                        "provisioning": {"username": "acme-phones", "password": "account-secret-7"}}))
        .await;
    let mut unit = env.env.couch.get(&env.units, "unit-1").await.unwrap();
    unit.as_object_mut().unwrap().remove("provisioning");
    env.unit_doc(unit).await;
    let challenge = eventually(
        "the account's credentials apply",
        Duration::from_secs(20),
        async || {
            let reply = get(&daemon, "/805ec0123456.cfg", REALM, YEALINK_UA).await;
            if reply.status == StatusCode::UNAUTHORIZED && challenges(&reply).len() == 2 {
                Ok(reply)
            } else {
                Err(format!("{} {:?}", reply.status, challenges(&reply)))
            }
        },
    )
    .await;
    let nonce = nonce_of(&challenges(&challenge)[0]);
    let authorization = client_authorization(
        Algorithm::Sha256,
        "acme-phones",
        "account-secret-7",
        REALM,
        &nonce,
        "GET",
        "/805ec0123456.cfg",
        "c1",
    );
    let ok = phone(
        &daemon,
        reqwest::Method::GET,
        "/805ec0123456.cfg",
        REALM,
        YEALINK_UA,
        &[("Authorization", &authorization)],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);

    let requests = daemon.get("/v1/units/unit-1/requests").await;
    let reasons: Vec<&str> = requests.json["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"wrong credentials") && reasons.contains(&"credentials required"),
        "{reasons:?}"
    );
    assert_eq!(requests.json["last_seen"]["status"], 200);
    // Secrets never reach a log line: passwords, HA1 digests, Authorization values.
    let stored =
        caldera::domains::phones::auth::Stored::new("desk-1", REALM, "http-secret-9", true);
    let logs = daemon.logs().join("\n");
    assert!(
        logs.contains("caldera::security"),
        "the security log is written"
    );
    for secret in [
        "http-secret-9",
        "alice-secret-1",
        "account-secret-7",
        &stored.ha1_md5,
        &stored.ha1_sha256,
        "0a4f113b",
        &basic("http-secret-9")[6..],
    ] {
        assert!(!logs.contains(secret), "{secret} appears in the logs");
    }
}

use caldera::domains::phones::auth::client_authorization;

#[tokio::test(flavor = "multi_thread")]
async fn mac_enumeration_cools_the_source_down_while_an_authenticated_phone_keeps_working() {
    use caldera::domains::phones::auth::Algorithm;
    let env = PhonesEnv::new().await;
    env.seed().await;
    protect_unit(&env, false).await;
    let mut config = env.config();
    config
        .set("phones.rate_limit.misses", 5)
        .set("phones.rate_limit.cooldown_secs", 2)
        .set("phones.trusted_proxies", "127.0.0.1");
    let daemon = Daemon::start_ready(&config).await;
    wait_status(
        &daemon,
        "/805ec0123456.cfg",
        REALM,
        YEALINK_UA,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let scanner = [("X-Forwarded-For", "198.51.100.66")];
    // Successes never count.
    for _ in 0..20 {
        let ok = digest_get(
            &daemon,
            "/805ec0123456.cfg",
            Algorithm::Sha256,
            "http-secret-9",
            &scanner,
        )
        .await;
        assert_eq!(ok.status, StatusCode::OK);
    }
    // Denials that are not unknown MACs never count either: a User-Agent
    // whose MAC is not the path's, another vendor's User-Agent, a file the
    // model does not produce, malformed paths.
    let polycom = "FileTransport PolycomVVX-VVX_500-UA/5.9.7.4477 Type/Application";
    for _ in 0..4 {
        for (path, ua) in [
            (
                "/805ec0123456.cfg",
                "Yealink SIP-T46S 66.86.0.15 80:5e:c0:aa:bb:cc",
            ),
            ("/805ec0123456.cfg", polycom),
            ("/805ec0123456-phone.cfg", YEALINK_UA),
            ("/a/b/c", YEALINK_UA),
        ] {
            let reply = phone(&daemon, reqwest::Method::GET, path, REALM, ua, &scanner).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path} ({ua})");
        }
    }
    let mut statuses = Vec::new();
    for i in 0..8 {
        let path = format!("/805ec0{i:06x}.cfg");
        let ua = format!("Yealink SIP-T46S 66.86.0.15 80:5e:c0:00:00:{i:02x}");
        statuses.push(
            phone(&daemon, reqwest::Method::GET, &path, REALM, &ua, &scanner)
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [404, 404, 404, 404, 404, 429, 429, 429]);
    let limited = phone(
        &daemon,
        reqwest::Method::GET,
        "/805ec0000009.cfg",
        REALM,
        YEALINK_UA,
        &scanner,
    )
    .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers.get("retry-after").is_some());
    // Behind the same address: the authenticated phone is served, an
    // unauthenticated device request is not, common files still are.
    let ok = digest_get(
        &daemon,
        "/805ec0123456.cfg",
        Algorithm::Md5,
        "http-secret-9",
        &scanner,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let common = phone(
        &daemon,
        reqwest::Method::GET,
        "/y000000000066.cfg",
        REALM,
        YEALINK_UA,
        &scanner,
    )
    .await;
    assert_eq!(common.status, StatusCode::OK);
    // Another source is not affected.
    let other = phone(
        &daemon,
        reqwest::Method::GET,
        "/805ec0000001.cfg",
        REALM,
        YEALINK_UA,
        &[("X-Forwarded-For", "203.0.113.5")],
    )
    .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let recovered = phone(
        &daemon,
        reqwest::Method::GET,
        "/805ec0000001.cfg",
        REALM,
        "Yealink SIP-T46S 66.86.0.15 80:5e:c0:00:00:01",
        &scanner,
    )
    .await;
    assert_eq!(
        recovered.status,
        StatusCode::NOT_FOUND,
        "the cool-down ends"
    );
    assert!(daemon.logged("cooldown_started"));
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_lists_conditional_requests_head_and_log_uploads() {
    let env = PhonesEnv::new().await;
    env.seed().await;
    env.unit_doc(
        json!({"_id": "unit-vvx", "type": "unit", "account_id": ACME, "mac_address": "0004f2abcdef",
                        "brand": "polycom", "model": "vvx500"}),
    )
    .await;
    let mut config = env.config();
    config
        .set("phones.trusted_proxies", "127.0.0.1")
        .set("phones.max_upload_bytes", 64);
    let daemon = Daemon::start_ready(&config).await;
    let first = wait_status(
        &daemon,
        "/805ec0123456.cfg",
        REALM,
        YEALINK_UA,
        StatusCode::OK,
    )
    .await;
    let etag = first.headers["etag"].to_str().unwrap().to_string();
    let modified = first.headers["last-modified"].to_str().unwrap().to_string();
    assert_eq!(first.headers["cache-control"], "private, no-cache");
    let again = phone(
        &daemon,
        reqwest::Method::GET,
        "/805ec0123456.cfg",
        REALM,
        YEALINK_UA,
        &[("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.text.is_empty());
    assert_eq!(again.headers["etag"].to_str().unwrap(), etag);
    let since = phone(
        &daemon,
        reqwest::Method::GET,
        "/805ec0123456.cfg",
        REALM,
        YEALINK_UA,
        &[("If-Modified-Since", &modified)],
    )
    .await;
    assert_eq!(since.status, StatusCode::NOT_MODIFIED);
    let changed = phone(
        &daemon,
        reqwest::Method::GET,
        "/805ec0123456.cfg",
        REALM,
        YEALINK_UA,
        &[("If-None-Match", "\"other\"")],
    )
    .await;
    assert_eq!(changed.status, StatusCode::OK);
    let head = phone(
        &daemon,
        reqwest::Method::HEAD,
        "/805ec0123456.cfg",
        REALM,
        YEALINK_UA,
        &[],
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.text.is_empty());
    assert_eq!(
        head.headers["content-length"].to_str().unwrap(),
        first.text.len().to_string()
    );
    assert_eq!(head.headers["etag"].to_str().unwrap(), etag);

    // Polycom log uploads: accepted for a known Polycom, capped in size.
    const VVX_UA: &str = "FileTransport PolycomVVX-VVX_500-UA/5.9.7.47435 Type/Updater";
    wait_status(
        &daemon,
        "/0004f2abcdef-phone.cfg",
        REALM,
        VVX_UA,
        StatusCode::OK,
    )
    .await;
    let put = |path: &str, body: &str, ua: &str| {
        daemon
            .http()
            .put(daemon.phones_url(path))
            .header("Host", REALM)
            .header("User-Agent", ua.to_string())
            .body(body.to_string())
    };
    for taken in [
        "/0004f2abcdef-boot.log",
        "/0004f2abcdef-app.log",
        "/0004f2abcdef-calls.xml",
    ] {
        let reply = daemon.try_send(put(taken, "ok", VVX_UA)).await.unwrap();
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{taken}");
    }
    let large = daemon
        .try_send(put("/0004f2abcdef-app.log", &"x".repeat(65), VVX_UA))
        .await
        .unwrap();
    assert_eq!(large.status, StatusCode::PAYLOAD_TOO_LARGE);
    let unknown = daemon
        .try_send(put("/0004f2999999-boot.log", "x", VVX_UA))
        .await
        .unwrap();
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let not_an_upload = daemon
        .try_send(put("/0004f2abcdef.cfg", "x", VVX_UA))
        .await
        .unwrap();
    assert_eq!(not_an_upload.status, StatusCode::NOT_FOUND);
    // A Yealink does not upload: its vendor refuses the name.
    let yealink = daemon
        .try_send(put("/805ec0123456-boot.log", "x", YEALINK_UA))
        .await
        .unwrap();
    assert_eq!(yealink.status, StatusCode::NOT_FOUND);

    // An allow list: only its networks get the account's files.
    env.unit_doc(json!({"_id": "pc-acme", "type": "provision_config", "account_id": ACME, "allowed_cidrs": ["10.0.0.0/8"]})).await;
    wait_status(
        &daemon,
        "/805ec0123456.cfg",
        REALM,
        YEALINK_UA,
        StatusCode::NOT_FOUND,
    )
    .await;
    let inside = phone(
        &daemon,
        reqwest::Method::GET,
        "/805ec0123456.cfg",
        REALM,
        YEALINK_UA,
        &[("X-Forwarded-For", "10.1.2.3")],
    )
    .await;
    assert_eq!(inside.status, StatusCode::OK);
    let outside = phone(
        &daemon,
        reqwest::Method::GET,
        "/y000000000066.cfg",
        REALM,
        YEALINK_UA,
        &[("X-Forwarded-For", "192.0.2.1")],
    )
    .await;
    assert_eq!(outside.status, StatusCode::NOT_FOUND);
    let reasons = |log: &Value| -> Vec<String> {
        log["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["reason"].as_str().map(str::to_string))
            .collect()
    };
    let vvx = reasons(&daemon.get("/v1/units/unit-vvx/requests").await.json);
    assert!(vvx.contains(&"log upload".to_string()), "{vvx:?}");
    let yealink = reasons(&daemon.get("/v1/units/unit-1/requests").await.json);
    assert!(
        yealink.contains(&"the unit's vendor does not upload this file".to_string()),
        "{yealink:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_do_not_hurt_the_listener() {
    let env = PhonesEnv::new().await;
    env.seed().await;
    let daemon = Daemon::start_ready(&env.config()).await;
    wait_status(
        &daemon,
        "/805ec0123456.cfg",
        REALM,
        YEALINK_UA,
        StatusCode::OK,
    )
    .await;
    let huge = format!(
        "GET /805ec0123456.cfg HTTP/1.1\r\nHost: {REALM}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let (status, _, _) = raw(daemon.phones, huge.as_bytes());
    assert!(
        status == 431 || status == 400 || status == 0,
        "huge headers: {status}"
    );
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, _, _) = raw(
        daemon.phones,
        format!("GET /x HTTP/1.1\r\nHost: {REALM}\r\n{many}\r\n").as_bytes(),
    );
    assert!(
        status == 431 || status == 400 || status == 0,
        "many headers: {status}"
    );
    let (status, _, _) = raw(
        daemon.phones,
        b"GET /\xff\xfe.cfg HTTP/1.1\r\nHost: acme.sip.example.net\r\nConnection: close\r\n\r\n",
    );
    assert!(
        matches!(status, 400 | 404),
        "raw bytes in the path: {status}"
    );
    let (status, _, _) = raw(daemon.phones, b"GET /805ec0123456.cfg HTTP/1.1\r\nHost: acme.sip.example.net\r\nUser-Agent: \xc3\x28 bad utf8\r\nConnection: close\r\n\r\n");
    assert!(
        matches!(status, 200 | 400 | 404),
        "bad UTF-8 in the User-Agent: {status}"
    );
    let (status, _, _) = raw(
        daemon.phones,
        b"GET /805ec0123456.cfg HTTP/1.1\r\nHost: bad host\r\nConnection: close\r\n\r\n",
    );
    assert!(matches!(status, 400 | 404), "a bad Host: {status}");
    let (status, _, _) = raw(daemon.phones, b"GARBAGE\r\n\r\n");
    assert!(matches!(status, 0 | 400), "not HTTP: {status}");
    let long_ua = format!("Yealink SIP-T46S {} 80:5e:c0:12:34:56", "9".repeat(8000));
    let reply = get(&daemon, "/805ec0123456.cfg", REALM, &long_ua).await;
    assert_eq!(
        reply.status,
        StatusCode::NOT_FOUND,
        "an 8 kB User-Agent is no phone's (the vendors bound what they parse)"
    );
    let reply = get(
        &daemon,
        "/805ec0123456.cfg",
        "acme.sip.example.net:99999999999",
        YEALINK_UA,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "an odd port is stripped");
    // Still serving.
    let reply = get(&daemon, "/805ec0123456.cfg", REALM, YEALINK_UA).await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// (method, path, host, user agent, the unit (brand, model, MAC) whose file
/// it is, or `None` for a denial).
type Row<'a> = (
    &'a str,
    String,
    &'a str,
    &'a str,
    Option<(&'a str, &'a str, &'a str)>,
);

/// What the core must answer for a file of a unit, given what the vendor
/// module says the model produces (so the table holds before and after the
/// vendors land): 200 when the vendor lists the file, else 404.
fn vendor_lists(brand: &str, model: &str, mac: &str, file: &str) -> bool {
    use caldera::domains::phones::catalogue::effective_model;
    use caldera::domains::phones::mac::Mac;
    use caldera::domains::phones::vendors::{self, ModelRef};
    let Some(vendor) = vendors::by_brand(brand) else {
        return false;
    };
    let mut notes = Vec::new();
    let Ok(m) = effective_model(brand, None, model, &mut |_| Vec::new(), &mut notes) else {
        return false;
    };
    let model_ref = ModelRef {
        brand,
        family: Some(&m.family),
        model,
        meta: &m.meta,
    };
    vendor
        .files(&model_ref, &Mac::parse(mac).unwrap())
        .iter()
        .any(|f| f.name == file)
}

#[tokio::test(flavor = "multi_thread")]
async fn realistic_phone_requests_get_what_their_model_produces() {
    let env = PhonesEnv::new().await;
    env.seed().await;
    let units = [
        ("u-polycom", "polycom", "vvx500", "0004f282e824"),
        ("u-spa", "cisco", "spa508g", "0002fdff2103"),
        ("u-mpp", "cisco", "cp-8841-3pcc", "00562b043615"),
        ("u-gs", "grandstream", "gxp2135", "000b828aa872"),
        ("u-snom", "snom", "d785", "000413922d24"),
        ("u-fanvil", "fanvil", "x5u", "0c383e557eb1"),
    ];
    for (id, brand, model, mac) in units {
        env.unit_doc(json!({"_id": id, "type": "unit", "account_id": ACME, "mac_address": mac, "brand": brand, "model": model})).await;
    }
    let daemon = Daemon::start_ready(&env.config()).await;
    wait_status(
        &daemon,
        "/805ec0123456.cfg",
        REALM,
        YEALINK_UA,
        StatusCode::OK,
    )
    .await;
    let polycom = "FileTransport PolycomVVX-VVX_500-UA/5.9.7.4477 Type/Application";
    let spa = "Cisco/SPA508G-7.4.8a (0002FDFF2103)(CBT141400UK)";
    let gs = "Grandstream Model HW GXP2135 SW 1.0.7.97 DevId 000b828aa872";
    let snom = "Mozilla/4.0 (compatible; snomD785-SIP 10.1.33.33 2010.12-00004-g9ba52f5 000413922D24 SXM:0 UXM:0)";
    // (method, path, host, user agent, unit (brand, model, mac) whose file it is, or None for a denial)
    let yealink = Some(("yealink", "t46s", MAC));
    let rows: Vec<Row> = vec![
        (
            "GET",
            "/y000000000000.boot".into(),
            REALM,
            YEALINK_UA,
            yealink,
        ),
        (
            "GET",
            "/805ec0123456.boot".into(),
            REALM,
            YEALINK_UA,
            yealink,
        ),
        (
            "GET",
            "/y000000000066.cfg".into(),
            REALM,
            YEALINK_UA,
            yealink,
        ),
        (
            "GET",
            "/805ec0123456.cfg".into(),
            REALM,
            YEALINK_UA,
            yealink,
        ),
        (
            "GET",
            "/805ec0123456.cfg".into(),
            REALM,
            "Yealink SIP-T46S 66.86.0.15 80:5e:c0:aa:bb:cc",
            None,
        ),
        (
            "GET",
            "/0004f282e824.cfg".into(),
            REALM,
            polycom,
            Some(("polycom", "vvx500", "0004f282e824")),
        ),
        (
            "GET",
            "/000000000000.cfg".into(),
            REALM,
            polycom,
            Some(("polycom", "vvx500", "0004f282e824")),
        ),
        (
            "GET",
            "/0004f282e824-phone.cfg".into(),
            REALM,
            polycom,
            Some(("polycom", "vvx500", "0004f282e824")),
        ),
        (
            "GET",
            "/0004f282e824-directory.xml".into(),
            REALM,
            polycom,
            Some(("polycom", "vvx500", "0004f282e824")),
        ),
        ("GET", "/3111-44500-001.sip.ld".into(), REALM, polycom, None),
        (
            "GET",
            "/spa508G.cfg".into(),
            REALM,
            spa,
            Some(("cisco", "spa508g", "0002fdff2103")),
        ),
        (
            "GET",
            "/spa0002fdff2103.xml".into(),
            REALM,
            spa,
            Some(("cisco", "spa508g", "0002fdff2103")),
        ),
        (
            "GET",
            "/CP-8841-3PCC.xml".into(),
            REALM,
            "Cisco-CP-8841-3PCC/11.0 (00562b043615)",
            Some(("cisco", "cp-8841-3pcc", "00562b043615")),
        ),
        (
            "GET",
            "/cfg000b828aa872.xml".into(),
            REALM,
            gs,
            Some(("grandstream", "gxp2135", "000b828aa872")),
        ),
        (
            "GET",
            "/phonebook.xml".into(),
            REALM,
            gs,
            Some(("grandstream", "gxp2135", "000b828aa872")),
        ),
        (
            "GET",
            "/snomD785.htm".into(),
            REALM,
            snom,
            Some(("snom", "d785", "000413922d24")),
        ),
        (
            "GET",
            "/snomD785-000413922D24.htm".into(),
            REALM,
            snom,
            Some(("snom", "d785", "000413922d24")),
        ),
        (
            "GET",
            "/firmware/snom720-8.9.3.80-SIP-r.bin?mac=000000000000".into(),
            REALM,
            "Mozilla/4.0 (compatible; snom720 8.9.3.80)",
            None,
        ),
        (
            "GET",
            "/0c383e557eb1.cfg".into(),
            REALM,
            "Fanvil X5U-V2 2.12.16.17 0c383e557eb1",
            Some(("fanvil", "x5u", "0c383e557eb1")),
        ),
        (
            "GET",
            format!("/{ACME}/805ec0123456.cfg"),
            "p.kazoo.io",
            YEALINK_UA,
            yealink,
        ),
        (
            "GET",
            "/805ec0123456.cfg".into(),
            "other-tenant.example.net",
            YEALINK_UA,
            None,
        ),
        (
            "GET",
            "/..%2f..%2fetc%2fpasswd".into(),
            REALM,
            YEALINK_UA,
            None,
        ),
        (
            "HEAD",
            "/805ec0123456.cfg".into(),
            REALM,
            YEALINK_UA,
            yealink,
        ),
        // A browser or script is not the unit's phone (the unit has no
        // credentials to ask for instead).
        ("GET", "/805ec0123456.cfg".into(), REALM, "curl/8.5.0", None),
        // A Polycom asking for the Yealink's `<mac>.cfg` (a name both use).
        ("GET", "/805ec0123456.cfg".into(), REALM, polycom, None),
        // Vendors caldera does not provision.
        (
            "GET",
            "/7c2f80e0d605.xml".into(),
            REALM,
            "Gigaset N870 IP PRO/83.V2.11.0+build.a546b91;7C2F80E0D605",
            None,
        ),
        (
            "GET",
            "/Config0080f0c8c381.cfg".into(),
            REALM,
            "Panasonic_KX-UT113/01.133 (0080f0c8c381)",
            None,
        ),
        (
            "GET",
            "/1400E91B4524.cfg".into(),
            REALM,
            "Mitel6940 MAC:14-00-E9-1B-45-24 V:6.4.0.140-SIP",
            None,
        ),
        // The account-id prefix with a MAC the account does not have.
        (
            "GET",
            format!("/{ACME}/001565000000.cfg"),
            "p.kazoo.io",
            "yealink SIP-T22P 7.61.0.80 00:15:65:00:00:00",
            None,
        ),
        (
            "GET",
            "/0004f282e824-reg-basic.cfg".into(),
            REALM,
            polycom,
            None,
        ),
        (
            "GET",
            "/805ec0123456.cfg/../../x".into(),
            REALM,
            YEALINK_UA,
            None,
        ),
    ];
    assert!(rows.len() >= 15);
    for (method, path, host, ua, owner) in rows {
        let file = path.rsplit('/').next().unwrap().split('?').next().unwrap();
        let expected = match owner {
            Some((brand, model, mac)) => {
                assert!(
                    vendor_lists(brand, model, mac, file),
                    "{brand} {model} produces {file}"
                );
                StatusCode::OK
            }
            None => StatusCode::NOT_FOUND,
        };
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let reply = phone(&daemon, method.clone(), &path, host, ua, &[]).await;
        assert_eq!(reply.status, expected, "{method} {path} ({ua})");
        if expected == StatusCode::OK && method == reqwest::Method::GET {
            let format = &reply.headers["content-type"];
            assert!(!reply.text.is_empty(), "{path}");
            if format.to_str().unwrap().contains("xml") {
                assert!(
                    reply.text.trim_start().starts_with('<'),
                    "{path}: {}",
                    reply.text
                );
            }
        }
    }
    // The Polycom's upload (row 11 of the reference's table).
    let upload = daemon
        .try_send(
            daemon
                .http()
                .put(daemon.phones_url("/0004f282e824-boot.log"))
                .header("Host", REALM)
                .header(
                    "User-Agent",
                    "FileTransport PolycomVVX-VVX_500-UA/5.9.7.47435 Type/Updater",
                )
                .body("boot log"),
        )
        .await
        .unwrap();
    assert_eq!(upload.status, StatusCode::NO_CONTENT);
}

#[test]
fn caldera_render_prints_what_a_phone_receives() {
    use crate::support::daemon::run_cli;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let env = runtime.block_on(async {
        let env = PhonesEnv::new().await;
        env.seed().await;
        env
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("caldera.toml");
    std::fs::write(&path, env.config().toml()).unwrap();
    let config = path.to_str().unwrap();
    let (status, stdout, stderr) = run_cli(&[
        "render",
        "--config",
        config,
        "--realm",
        REALM,
        "--mac",
        "80:5E:C0:12:34:56",
        "--file",
        "805ec0123456.cfg",
    ]);
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains("account.1.password = alice-secret-1") && stdout.contains("vlan = 10"),
        "{stdout}"
    );
    let (status, stdout, _) =
        run_cli(&["render", "--config", config, "--realm", REALM, "--mac", MAC]);
    assert!(status.success());
    let all: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(all["unit"], "unit-1");
    assert!(
        all["files"]["y000000000066.cfg"]["body"]
            .as_str()
            .unwrap()
            .contains("realm = acme.sip.example.net")
    );
    let (status, _, stderr) = run_cli(&[
        "render",
        "--config",
        config,
        "--realm",
        "nowhere.example.net",
        "--mac",
        MAC,
    ]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let (status, _, _) = run_cli(&[
        "render",
        "--config",
        config,
        "--realm",
        REALM,
        "--mac",
        "001565bbbbbb",
    ]);
    assert_eq!(status.code(), Some(1), "a disabled unit is not rendered");
    let (status, _, _) = run_cli(&[
        "render", "--config", config, "--realm", REALM, "--mac", "zz",
    ]);
    assert_eq!(status.code(), Some(64));
    let (status, _, stderr) = run_cli(&[
        "render", "--config", config, "--realm", REALM, "--mac", MAC, "--file", "nope.cfg",
    ]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("805ec0123456.cfg"),
        "the error lists the files: {stderr}"
    );
    drop(runtime);
}

/// Model-common names several models of an account share: Polycom's
/// `000000000000.cfg` (its User-Agent has no MAC) goes by the model the
/// User-Agent names, Yealink's `y000000000000.boot` by the asking phone's
/// own unit, else by its User-Agent's model.
#[tokio::test(flavor = "multi_thread")]
async fn shared_common_names_go_to_the_asking_model() {
    let env = PhonesEnv::new().await;
    env.seed().await;
    for (id, brand, model, mac) in [
        ("u-vvx410", "polycom", "vvx410", "0004f2000410"),
        ("u-vvx500", "polycom", "vvx500", "0004f2000500"),
        ("u-t54w", "yealink", "t54w", "805ec0000054"),
    ] {
        env.unit_doc(json!({"_id": id, "type": "unit", "account_id": ACME, "mac_address": mac, "brand": brand, "model": model})).await;
    }
    // The T46S's common files are overridden by the seed; the T54W's are
    // the shipped ones: drop the override so both name their model file.
    assert!(env.env.couch.delete(&env.units, "tpl-common").await);
    let daemon = Daemon::start_ready(&env.config()).await;
    let vvx410 = "FileTransport PolycomVVX-VVX_410-UA/5.9.5.0614 Type/Application";
    let vvx500 = "FileTransport PolycomVVX-VVX_500-UA/5.9.7.4477 Type/Application";
    let master = wait_status(&daemon, "/000000000000.cfg", REALM, vvx410, StatusCode::OK).await;
    assert!(master.text.contains("site-vvx410.cfg"), "{}", master.text);
    let master = get(&daemon, "/000000000000.cfg", REALM, vvx500).await;
    assert!(master.text.contains("site-vvx500.cfg"), "{}", master.text);
    // A T54W the account knows, and one it does not yet: both get the
    // T54W's boot file; the T46S its own.
    for ua in [
        "Yealink SIP-T54W 96.86.0.100 80:5e:c0:00:00:54",
        "Yealink SIP-T54W 96.86.0.100 80:5e:c0:99:99:99",
    ] {
        let boot = wait_status(&daemon, "/y000000000000.boot", REALM, ua, StatusCode::OK).await;
        assert!(
            boot.text.contains("y000000000096.cfg"),
            "{ua}: {}",
            boot.text
        );
    }
    let boot = get(&daemon, "/y000000000000.boot", REALM, YEALINK_UA).await;
    assert!(boot.text.contains("y000000000066.cfg"), "{}", boot.text);
}
