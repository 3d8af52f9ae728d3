//! Issue 15's scenario, literally.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::EdgeEnv;

#[tokio::test(flavor = "multi_thread")]
async fn issue15_repro() {
    let e = EdgeEnv::start().await;
    let t = e.template("ntp.conf", "/etc/ntp.conf").await;
    e.version(t, b"server 0.pool.ntp.org\n", "v1").await;
    e.version(t, b"server 1.pool.ntp.org\n", "v2").await;
    let m = e.master("timesync", &[]).await;
    e.link(m, t).await;
    let r = e.assign(m, "static", "default").await;
    println!("assign: {} {}", r.status, r.text);
    let db = e.db("edge_registry");
    e.env.couch.post(&db, &json!({"type":"edge","edge_id":"e0a1b2","mac_addresses":["AA:BB:CC:00:11:22"],"edge_type":"static","edge_sub_type":"default"})).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = e.get("/template_set/latest?edge_id=e0a1b2").await;
    println!("set: {} {}", r.status, r.text);
    let r = e.get("/config_package?mac_address=aa-bb-cc-00-11-22").await;
    println!("pkg: {} {}", r.status, r.text);
    let _ = (Method::GET, StatusCode::OK);
}
