//! Telemetry: the seed's answers and report shapes, X-Forwarded-For
//! trusted only from configured proxies (spoofed, missing), the proxy
//! policy off/log/enforce (switched by SIGHUP), late and repeated reports,
//! and the report list's order and page boundaries.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{EdgeEnv, edge_doc};
use crate::support::daemon::Reply;
use crate::support::eventually;

const PROXY: &str = "a00001";

impl EdgeEnv {
    pub(super) async fn report(
        &self,
        kind: &str,
        proxy: &str,
        status: &str,
        body: &Value,
        xff: Option<&str>,
    ) -> Reply {
        let mut request = self
            .daemon
            .http()
            .post(self.url(&format!("/edge_telemetry/package_{kind}/{proxy}/{status}/")))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).unwrap());
        if let Some(xff) = xff {
            request = request.header("x-forwarded-for", xff);
        }
        self.send(request).await
    }

    /// Rewrites one config key and reloads with SIGHUP.
    async fn reload(&mut self, key: &str, value: impl Into<toml::Value>) {
        let needle = "configuration reloaded";
        let before = self
            .daemon
            .logs()
            .iter()
            .filter(|l| l.contains(needle))
            .count();
        self.daemon.config.set(key, value);
        std::fs::write(self.daemon.config_path(), self.daemon.config.toml()).unwrap();
        self.daemon.sighup();
        eventually("the reload", Duration::from_secs(10), async || {
            let now = self
                .daemon
                .logs()
                .iter()
                .filter(|l| l.contains(needle))
                .count();
            (now > before)
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        })
        .await;
    }

    async fn reports_in_db(&self, edge_id: &str) -> Vec<Value> {
        let docs = self.env.couch.docs_by_id(&self.db("edge_telemetry")).await;
        docs.into_iter()
            .filter(|(id, _)| id.starts_with(&format!("report:{edge_id}:")))
            .map(|(_, doc)| doc)
            .collect()
    }
}

fn body(edge: &str, package: &str, version: &str) -> Value {
    json!({"edge_id": edge, "package_name": package, "template_set_version": version})
}

async fn proxies(e: &EdgeEnv) {
    e.register(&[
        edge_doc(PROXY, "mid", "default", &[], json!({})),
        edge_doc("b00001", "static", "default", &[], json!({})),
        edge_doc("c00001", "mobile", "default", &[], json!({})),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_answer_and_fold_as_the_seed_says() {
    let e = EdgeEnv::start_with(|c| {
        c.set("edge.report_timezone", "Asia/Kolkata");
    })
    .await;
    proxies(&e).await;
    let edge = "c00001";
    let reply = e
        .report(
            "download",
            PROXY,
            "success",
            &body(edge, "c00001-1.tar.gz", "0.05"),
            Some("203.0.113.9, 198.51.100.7"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json,
        json!({"message": "success", "description": "Package Download Successful"})
    );
    let reply = e
        .report(
            "download",
            PROXY,
            "failed",
            &body(edge, "c00001-2.tar.gz", "0.06"),
            Some("198.51.100.7"),
        )
        .await;
    assert_eq!(
        reply.json,
        json!({"message": "success", "description": "Package Download Failed"})
    );
    let reply = e
        .report(
            "consumption",
            "b00001",
            "success",
            &body(edge, "c00001-1.tar.gz", "0.05"),
            None,
        )
        .await;
    assert_eq!(
        reply.json,
        json!({"message": "success", "description": "Package Consumption Successful"})
    );
    let reply = e
        .report(
            "consumption",
            "b00001",
            "anything",
            &body(edge, "c00001-2.tar.gz", "0.06"),
            None,
        )
        .await;
    assert_eq!(
        reply.json,
        json!({"message": "success", "description": "Package Consumption Failed"})
    );
    // Repeated and late reports are never refused.
    for _ in 0..2 {
        let reply = e
            .report(
                "download",
                PROXY,
                "success",
                &body(edge, "c00001-2.tar.gz", "0.06"),
                Some("198.51.100.7"),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let stored = e.reports_in_db(edge).await;
    assert_eq!(stored.len(), 6, "one immutable document per report");
    let first = stored
        .iter()
        .find(|d| d["template_set_version"] == "0.05" && d["kind"] == "download")
        .unwrap();
    assert_eq!(
        first["ip_address"], "198.51.100.7",
        "the right-most hop that is not a trusted proxy"
    );
    assert_eq!(first["forwarded_for"], "203.0.113.9, 198.51.100.7");
    assert_eq!(first["proxy_edge_id"], PROXY);
    assert_eq!(first["proxy_check"], "ok");

    assert_eq!(
        e.get("/edge_telemetry/report_list/").await.json,
        json!({"data": {"edge_id_list": [edge]}})
    );
    let report = e.get(&format!("/edge_telemetry/report/{edge}")).await.json;
    let data = report["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(
        data[0]["template_set_version"], "0.06",
        "newest set version first"
    );
    assert_eq!(data[0]["report"]["downloaded"]["success"], true);
    assert_eq!(
        data[0]["report"]["consumed"],
        json!({"success": false}),
        "no date_time without success"
    );
    // %d-%m-%Y %H:%M:%S in edge.report_timezone (Asia/Kolkata, UTC+05:30).
    let received: jiff::Timestamp = first["received_at"].as_str().unwrap().parse().unwrap();
    let kolkata = jiff::tz::TimeZone::get("Asia/Kolkata").unwrap();
    let local = received.to_zoned(kolkata);
    assert_eq!(
        data[1]["report"]["downloaded"]["date_time"],
        local.strftime("%d-%m-%Y %H:%M:%S").to_string()
    );
    assert_eq!(data[1]["package_name"], "c00001-1.tar.gz");
    assert_eq!(data[1]["edge_id"], edge);

    let info = e
        .get(&format!("/edge_telemetry_info/report/{edge}/"))
        .await
        .json;
    assert_eq!(info["meta"]["code"], 200);
    assert_eq!(info["data"]["template_set_version"], "0.06");
    assert_eq!(info["data"]["downloaded"], true);
    assert_eq!(info["data"]["consumed"], false);
    assert_eq!(info["data"]["consumed_time"], Value::Null);
    assert_eq!(info["data"]["ip_address"], "198.51.100.7");
    let none = e.get("/edge_telemetry_info/report/dddddd/").await;
    assert_eq!(
        (
            none.status,
            none.json["meta"]["code"].clone(),
            none.json["data"].clone()
        ),
        (StatusCode::OK, json!(204), json!({}))
    );
    let list = e.get("/edge_telemetry_info_list/report/1/").await.json;
    assert_eq!(
        list["pagination"],
        json!({"total": 1, "page": 1, "per_page": 20})
    );
    // The list shows %Y-%m-%d %H:%M:%S; its entry is the latest (0.06),
    // whose download succeeded with the repeated reports.
    let listed_time = list["data"][0]["downloaded_time"].as_str().unwrap();
    assert!(
        &listed_time[4..5] == "-" && listed_time.len() == 19,
        "{listed_time}"
    );

    // Malformed bodies.
    let reply = e
        .report(
            "download",
            PROXY,
            "success",
            &json!({"edge_id": "NOPE", "package_name": "p", "template_set_version": "1"}),
            None,
        )
        .await;
    assert_eq!(
        reply.json,
        json!({"message": {"edge_id": "Invalid edge id"}})
    );
    let reply = e
        .report(
            "download",
            PROXY,
            "success",
            &json!({"edge_id": edge, "template_set_version": "1"}),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json["message"]["package_name"].is_string());
    let reply = e
        .report("download", "BAD", "success", &body(edge, "p", "0.01"), None)
        .await;
    assert_eq!(
        reply.json,
        json!({"message": {"proxy_edge_id": "Invalid edge id"}})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    // The test client is 127.0.0.1, which is not a trusted proxy here.
    let mut e = EdgeEnv::start_with(|c| {
        c.set("edge.trusted_proxies", "10.0.0.0/8");
    })
    .await;
    proxies(&e).await;
    let reply = e
        .report(
            "download",
            PROXY,
            "success",
            &body("e00001", "p", "0.01"),
            Some("1.2.3.4"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = e
        .report(
            "download",
            PROXY,
            "success",
            &body("e00002", "p", "0.01"),
            None,
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "a missing header never fails a report"
    );
    let spoofed = &e.reports_in_db("e00001").await[0];
    assert_eq!(
        spoofed["ip_address"], "127.0.0.1",
        "a spoofed header is ignored"
    );
    assert_eq!(spoofed["forwarded_for"], "1.2.3.4", "but kept");
    assert_eq!(spoofed["forwarded_for_ignored"], true);
    let missing = &e.reports_in_db("e00002").await[0];
    assert_eq!(missing["ip_address"], "127.0.0.1");
    assert_eq!(missing["forwarded_for"], Value::Null);
    // Trusting loopback: the header counts.
    e.reload("edge.trusted_proxies", "127.0.0.1").await;
    e.report(
        "download",
        PROXY,
        "success",
        &body("e00003", "p", "0.01"),
        Some("1.2.3.4, 5.6.7.8"),
    )
    .await;
    assert_eq!(e.reports_in_db("e00003").await[0]["ip_address"], "5.6.7.8");
    // Strict mode refuses a report without the header.
    e.reload("edge.require_forwarded_for", true).await;
    let reply = e
        .report(
            "download",
            PROXY,
            "success",
            &body("e00004", "p", "0.01"),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.json["message"]["x-forwarded-for"].is_string(),
        "{}",
        reply.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_policy_off_log_and_enforce() {
    let mut e = EdgeEnv::start().await;
    proxies(&e).await;
    // log (the default): accepted, recorded.
    for (proxy, edge, check) in [
        ("c00001", "f00001", "bad_type"),
        ("eeeeee", "f00002", "unknown"),
        ("b00001", "f00003", "ok"),
    ] {
        let reply = e
            .report("download", proxy, "success", &body(edge, "p", "0.01"), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{proxy}");
        assert_eq!(
            e.reports_in_db(edge).await[0]["proxy_check"],
            check,
            "{proxy}"
        );
    }
    e.reload("edge.proxy_policy", "enforce").await;
    for proxy in ["c00001", "eeeeee"] {
        let reply = e
            .report(
                "consumption",
                proxy,
                "success",
                &body("f00004", "p", "0.01"),
                None,
            )
            .await;
        assert_eq!(
            (reply.status, reply.json.clone()),
            (
                StatusCode::BAD_REQUEST,
                json!({"message": "Something went wrong", "description": "Invalid proxy edge"})
            ),
            "{proxy}"
        );
    }
    assert!(
        e.reports_in_db("f00004").await.is_empty(),
        "refused reports are not stored"
    );
    let reply = e
        .report(
            "consumption",
            PROXY,
            "success",
            &body("f00004", "p", "0.01"),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "a mid edge may proxy");
    e.reload("edge.proxy_policy", "off").await;
    let reply = e
        .report(
            "download",
            "c00001",
            "success",
            &body("f00005", "p", "0.01"),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(e.reports_in_db("f00005").await[0]["proxy_check"], "skipped");
    let metrics = e.daemon.get("/metrics").await.text;
    assert!(
        metrics
            .contains("caldera_edge_reports_total{kind=\"consumption\",proxy_check=\"refused\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_report_list_pages_by_first_report_then_edge_id() {
    let e = EdgeEnv::start().await;
    proxies(&e).await;
    // 25 edges report in this order; some again later (their first report stays).
    let order: Vec<String> = (0..25)
        .map(|i| format!("{:06x}", 0x100000 + (i * 7919) % 25))
        .collect();
    for (i, edge) in order.iter().enumerate() {
        let version = if i == 10 { "0.00" } else { "0.02" };
        e.report(
            "download",
            PROXY,
            "success",
            &body(edge, "p", version),
            None,
        )
        .await;
    }
    for edge in order.iter().take(5) {
        e.report(
            "consumption",
            PROXY,
            "success",
            &body(edge, "p", "0.03"),
            None,
        )
        .await;
    }
    // Two edges with the very same first report time: edge id decides.
    let telemetry = e.db("edge_telemetry");
    for edge in ["fffff2", "fffff1"] {
        let summary = json!({
            "_id": format!("summary:{edge}"), "type": "telemetry_summary", "edge_id": edge,
            "first_reported_at": "2000-01-01T00:00:00Z", "last_reported_at": "2000-01-01T00:00:00Z",
            "versions": [{"package_name": "p", "template_set_version": "0.01", "set_seq": 1,
                "downloaded": {"success": true, "at": "2000-01-01T00:00:00Z"},
                "consumed": {"success": false, "at": null}, "ip_address": "192.0.2.1",
                "proxy_edge_id": PROXY, "last_reported_at": "2000-01-01T00:00:00Z"}],
        });
        e.env.couch.put(&telemetry, &summary).await;
    }
    let mut expected: Vec<String> = vec!["fffff1".into(), "fffff2".into()];
    expected.extend(
        order
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 10)
            .map(|(_, e)| e.clone()),
    );
    let ids = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["edge_id"].as_str().unwrap().to_string())
            .collect()
    };
    let page1 = e.get("/edge_telemetry_info_list/report/1/").await.json;
    assert_eq!(
        page1["pagination"],
        json!({"total": 26, "page": 1, "per_page": 20})
    );
    assert_eq!(page1["meta"]["code"], 200);
    assert_eq!(ids(&page1), expected[..20]);
    let page2 = e.get("/edge_telemetry_info_list/report/2").await.json;
    assert_eq!(ids(&page2), expected[20..]);
    let page3 = e.get("/edge_telemetry_info_list/report/3/").await.json;
    assert_eq!(page3["data"], json!([]));
    assert_eq!(page3["pagination"]["total"], 26);
    let small = e
        .get("/edge_telemetry_info_list/report/3/?per_page=10")
        .await
        .json;
    assert_eq!(ids(&small), expected[20..]);
    // The latest report of an edge is its highest set version.
    assert_eq!(page1["data"][2]["template_set_version"], "0.03");
    assert_eq!(page1["data"][2]["consumed"], true);
    for bad in ["0", "-1", "abc", "99999999999999999999"] {
        let reply = e
            .get(&format!("/edge_telemetry_info_list/report/{bad}/"))
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let ids_listed = e.get("/edge_telemetry/report_list").await.json;
    assert_eq!(
        ids_listed["data"]["edge_id_list"].as_array().unwrap().len(),
        27
    );
}
