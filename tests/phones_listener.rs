//! The phones listener's own handler (no router, no middleware stack)
//! through the real daemon: requests are still counted by route, method
//! and status, `/healthz` answers, and the per-unit request log (whose
//! texts are shared between consecutive entries) reads right when a phone
//! changes its User-Agent or method.

use reqwest::StatusCode;

use crate::phones::{PhonesEnv, REALM, YEALINK_UA, get, phone, wait_status};
use crate::support::daemon::Daemon;

const FILE: &str = "/805ec0123456.cfg";

/// The value of the sample of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (set, value) = line
            .strip_prefix(name)?
            .strip_prefix('{')?
            .split_once("} ")?;
        labels
            .iter()
            .all(|l| set.split(',').any(|s| s == *l))
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

fn phones_requests(text: &str, route: &str, method: &str, status: &str) -> f64 {
    let labels = [
        "listener=\"phones\"".to_string(),
        format!("route=\"{route}\""),
        format!("method=\"{method}\""),
        format!("status=\"{status}\""),
    ];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    sample(text, "caldera_http_requests_total", &labels).unwrap_or(0.0)
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
    let timed = sample(
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
