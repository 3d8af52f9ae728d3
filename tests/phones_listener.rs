//! The phones listener's own handler (no router, no middleware stack)
//! through the real daemon: requests are still counted by route, method
//! and status, `/healthz` answers, and the per-unit request log (whose
//! texts are shared between consecutive entries) reads right when a phone
//! changes its User-Agent or method; the header read timeout and the
//! upload body deadline still hold.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::phones::{PhonesEnv, REALM, YEALINK_UA, get, phone, wait_status};
use crate::support::daemon::Daemon;
use crate::support::metric_sample;

const FILE: &str = "/805ec0123456.cfg";

fn phones_requests(text: &str, route: &str, method: &str, status: &str) -> f64 {
    let labels = [
        "listener=\"phones\"".to_string(),
        format!("route=\"{route}\""),
        format!("method=\"{method}\""),
        format!("status=\"{status}\""),
    ];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    metric_sample(text, "caldera_http_requests_total", &labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_phones_listener_counts_every_request_and_logs_each_one() {
    let env = PhonesEnv::new().await;
    env.seed().await;
    let daemon = Daemon::start_ready(&env.config()).await;
    wait_status(&daemon, FILE, REALM, YEALINK_UA, StatusCode::OK).await;
    let before = daemon.get("/metrics").await.text;
    let gets_before = phones_requests(&before, "/{*file}", "GET", "200");
    assert!(
        gets_before >= 1.0,
        "the first file GET is counted:\n{before}"
    );

    for _ in 0..3 {
        assert_eq!(
            get(&daemon, FILE, REALM, YEALINK_UA).await.status,
            StatusCode::OK
        );
    }
    let upgraded = "Yealink SIP-T46S 66.86.0.160 80:5e:c0:12:34:56";
    assert_eq!(
        get(&daemon, FILE, REALM, upgraded).await.status,
        StatusCode::OK
    );
    let head = phone(&daemon, reqwest::Method::HEAD, FILE, REALM, upgraded, &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    let unknown = get(&daemon, "/805ec0999999.cfg", REALM, YEALINK_UA).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let brew = reqwest::Method::from_bytes(b"BREW").unwrap();
    let odd = phone(&daemon, brew, FILE, REALM, YEALINK_UA, &[]).await;
    assert_eq!(odd.status, StatusCode::NOT_FOUND);
    assert_eq!(
        odd.text, "Not Found\n",
        "an unknown method is the uniform 404"
    );
    let health = daemon
        .http()
        .get(daemon.phones_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.text().await.unwrap(), "ok\n");

    let text = daemon.get("/metrics").await.text;
    assert_eq!(
        phones_requests(&text, "/{*file}", "GET", "200") - gets_before,
        4.0,
        "{text}"
    );
    assert_eq!(
        phones_requests(&text, "/{*file}", "HEAD", "200"),
        1.0,
        "{text}"
    );
    assert!(
        phones_requests(&text, "/{*file}", "GET", "404") >= 1.0,
        "{text}"
    );
    // Made-up methods share one label value (bounded cardinality).
    assert_eq!(
        phones_requests(&text, "/{*file}", "other", "404"),
        1.0,
        "{text}"
    );
    assert_eq!(
        phones_requests(&text, "/healthz", "GET", "200"),
        1.0,
        "{text}"
    );
    let timed = metric_sample(
        &text,
        "caldera_http_request_seconds_count",
        &["listener=\"phones\"", "route=\"/{*file}\""],
    );
    assert!(timed.is_some_and(|n| n >= 7.0), "{timed:?}\n{text}");

    // Newest first: the HEAD, the upgraded phone's GET, then the three
    // GETs before it (the unknown MAC and the odd method name no unit).
    let log = daemon.get("/v1/units/unit-1/requests").await;
    let requests = log.json["requests"].as_array().expect("requests");
    let seen: Vec<(&str, &str, &str, i64)> = requests
        .iter()
        .take(5)
        .map(|r| {
            (
                r["method"].as_str().unwrap(),
                r["user_agent"].as_str().unwrap(),
                r["file"].as_str().unwrap(),
                r["status"].as_i64().unwrap(),
            )
        })
        .collect();
    let file = FILE.trim_start_matches('/');
    assert_eq!(
        seen,
        vec![
            ("HEAD", upgraded, file, 200),
            ("GET", upgraded, file, 200),
            ("GET", YEALINK_UA, file, 200),
            ("GET", YEALINK_UA, file, 200),
            ("GET", YEALINK_UA, file, 200),
        ],
        "{}",
        log.text
    );
    assert_eq!(log.json["last_seen"]["method"], "HEAD", "{}", log.text);
    assert_eq!(
        log.json["last_seen"]["user_agent"], upgraded,
        "{}",
        log.text
    );
}

/// Sends `request`, then reads until the server closes or `wait` passes.
async fn exchange(addr: std::net::SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The limits and deadlines of the shared HTTP layer still hold on the
/// phones listener's own handler: a head that never ends is hung up on
/// after `http.header_read_timeout_ms`, an upload whose body stalls is
/// answered 408 after `http.request_timeout_ms`, and phones keep being
/// served meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn the_phones_listener_hangs_up_on_stalled_heads_and_uploads() {
    let env = PhonesEnv::new().await;
    env.seed().await;
    let mut config = env.config();
    config
        .set("http.header_read_timeout_ms", 500)
        .set("http.request_timeout_ms", 600);
    let daemon = Daemon::start_ready(&config).await;
    wait_status(&daemon, FILE, REALM, YEALINK_UA, StatusCode::OK).await;

    let started = Instant::now();
    let head = format!("GET {FILE} HTTP/1.1\r\nHost: {REALM}\r\nX-Slow:");
    let answer = exchange(daemon.phones, head.as_bytes(), Duration::from_secs(10)).await;
    let closed_after = started.elapsed();
    assert!(
        closed_after < Duration::from_secs(5),
        "a head that never ended kept the connection for {closed_after:?}"
    );
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer:?}");

    let started = Instant::now();
    let upload = format!(
        "PUT /805ec0123456-local.cfg HTTP/1.1\r\nHost: {REALM}\r\nUser-Agent: {YEALINK_UA}\r\nContent-Length: 1000\r\n\r\nonly part of it"
    );
    let answer = exchange(daemon.phones, upload.as_bytes(), Duration::from_secs(10)).await;
    let answered_after = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        answered_after < Duration::from_secs(5),
        "the stalled upload was answered after {answered_after:?}"
    );

    assert_eq!(
        get(&daemon, FILE, REALM, YEALINK_UA).await.status,
        StatusCode::OK
    );
    let text = daemon.get("/metrics").await.text;
    assert_eq!(
        phones_requests(&text, "/{*file}", "PUT", "408"),
        1.0,
        "{text}"
    );
}
