//! Routing through the real daemon: randomised edits (seeded,
//! `CALDERA_TEST_SEED`) across `provisioning` and the ruleset databases —
//! including deleting a ruleset database and switching a ruleset's
//! `database` — with a kill -9 and a clean restart in between, after which
//! every routing cache document (rulesets and gateway directories) equals a
//! from-scratch build of the final documents and the HTTP lookups answer
//! exactly what a from-scratch table answers; a carrier edit reaches the
//! lookups without rewriting any ruleset document; plus the HTTP error
//! shapes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use caldera::couch::Body;
use caldera::domains::routing::RoutingBuilder;
use caldera::domains::routing::model::PROVISIONING;
use caldera::domains::routing::service::{build_table, routing_index};
use caldera::domains::{Builder, Built};
use caldera::rebuild::index::{Index, Reads, SourceDoc, SourceId};
use fastrand::Rng;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::TestEnv;
use crate::support::couch::Couch;
use crate::support::daemon::Daemon;
use crate::support::{eventually, seed};

const SDN: &str = "example.net";
const RULESETS: [&str; 2] = ["r0", "r1"];
const GATEWAYS: [&str; 4] = ["g0", "g1", "g2", "g3"];
const CARRIERS: [&str; 2] = ["c0", "c1"];
const PREFIXES: [&str; 4] = ["", "3", "33", "4"];
const NUMBERS: [&str; 4] = ["331", "34", "4", "5"];

struct Routing {
    env: TestEnv,
    provisioning: String,
    /// Ruleset database names (physical, with the test's prefix).
    databases: [String; 3],
}

impl Routing {
    async fn new() -> Routing {
        let env = TestEnv::new().await;
        let provisioning = format!("{}_provisioning", env.names.prefix);
        env.couch.create_db(&provisioning).await;
        let databases = ["ra", "rb", "rc"].map(|d| format!("{}_{d}", env.names.prefix));
        Routing {
            env,
            provisioning,
            databases,
        }
    }

    fn couch(&self) -> &Couch {
        &self.env.couch
    }

    async fn put(&self, db: &str, doc: Value) {
        if self.couch().db_info(db).await.is_none() {
            self.couch().create_db(db).await;
        }
        self.couch().upsert(db, &doc).await;
    }

    /// The index a from-scratch build reads: provisioning and every ruleset
    /// database a ruleset names, as they are in CouchDB now.
    async fn index(&self) -> Index {
        let mut index = routing_index();
        let docs = self.docs(&self.provisioning).await;
        index.replace(&SourceId::from(PROVISIONING), docs);
        for (source, db) in RoutingBuilder.dynamic_sources(&index) {
            let docs = self.docs(&db).await;
            index.replace(&SourceId::from(source.as_str()), docs);
        }
        index
    }

    async fn docs(&self, db: &str) -> BTreeMap<String, Arc<SourceDoc>> {
        if self.couch().db_info(db).await.is_none() {
            return BTreeMap::new();
        }
        self.couch()
            .docs_by_id(db)
            .await
            .into_iter()
            .map(|(id, body)| {
                let rev = body["_rev"].as_str().unwrap_or_default().to_string();
                let doc = SourceDoc {
                    id: id.clone(),
                    rev,
                    body: Body::of(&body),
                };
                (id, Arc::new(doc))
            })
            .collect()
    }

    /// Routing cache documents that differ from a from-scratch build.
    async fn differences(&self) -> Result<(), String> {
        let index = self.index().await;
        let mut expected = BTreeMap::new();
        for key in RoutingBuilder.all_keys(&index) {
            let mut reads = Reads::new(&index);
            if let Built::Content { content, issues } = RoutingBuilder.build(&key, &mut reads) {
                expected.insert(format!("routing:{key}"), (content, issues.len()));
            }
        }
        let cache: BTreeMap<String, Value> = self
            .couch()
            .docs_by_id(&self.env.names.cache)
            .await
            .into_iter()
            .filter(|(id, _)| id.starts_with("routing:"))
            .collect();
        if cache.keys().ne(expected.keys()) {
            return Err(format!(
                "cache has {:?}, expected {:?}",
                cache.keys().collect::<Vec<_>>(),
                expected.keys().collect::<Vec<_>>()
            ));
        }
        for (id, (content, issues)) in &expected {
            let doc = &cache[id];
            if doc["content"] != *content {
                return Err(format!("{id}: content differs from a from-scratch build"));
            }
            let errors = doc["errors"].as_array().map_or(0, Vec::len);
            if errors != *issues || doc["stale"] != json!(false) {
                return Err(format!(
                    "{id}: errors {errors} (expected {issues}), stale {}",
                    doc["stale"]
                ));
            }
        }
        Ok(())
    }

    async fn random_edit(&self, rng: &mut Rng) {
        let pick = |rng: &mut Rng, items: &[&'static str]| items[rng.usize(..items.len())];
        match rng.u8(..100) {
            0..=19 => {
                let gwid = pick(rng, &GATEWAYS);
                let mut gw = json!({"_id": format!("gateway:{SDN}:{gwid}"), "address": format!("{gwid}:{}", rng.u16(5060..5070))});
                if rng.bool() {
                    gw["carrierid"] = json!(pick(rng, &CARRIERS));
                }
                if rng.u8(..5) == 0 {
                    gw["disabled"] = json!(true);
                }
                self.put(&self.provisioning, gw).await;
            }
            20..=29 => {
                let carrier = pick(rng, &CARRIERS);
                let doc = json!({"_id": format!("carrier:{SDN}:{carrier}"), "try": rng.u8(1..3),
                                 "progress_timeout": rng.u8(1..9)});
                self.put(&self.provisioning, doc).await;
            }
            30..=39 => {
                let doc = json!({"_id": "host@sbc1", "type": "host", "host": "sbc1", "sip_domain_name": SDN,
                                 "disabled": rng.u8(..4) == 0,
                                 "sip_profiles": {"p": {"ingress_sip_ip": "192.0.2.1", "ingress_sip_port": rng.u16(5060..5070),
                                                        "egress": {"gwid": "hp", "carrierid": pick(rng, &CARRIERS)}}}});
                self.put(&self.provisioning, doc).await;
            }
            40..=54 => {
                // Switch a ruleset's database.
                let ruleset = pick(rng, &RULESETS);
                let db = &self.databases[rng.usize(..self.databases.len())];
                let doc = json!({"_id": format!("ruleset:{SDN}:{ruleset}"), "database": db});
                self.put(&self.provisioning, doc).await;
            }
            55..=59 => {
                let db = &self.databases[rng.usize(..self.databases.len())];
                if self.couch().db_info(db).await.is_some() {
                    self.couch().delete_db(db).await;
                }
            }
            _ => {
                let db = &self.databases[rng.usize(..self.databases.len())];
                let prefix = pick(rng, &PREFIXES);
                let id = format!("rule:{prefix}");
                if rng.u8(..6) == 0 {
                    if self.couch().db_info(db).await.is_some() {
                        self.couch().delete(db, &id).await;
                    }
                    return;
                }
                let gwlist: Vec<Value> = (0..rng.usize(1..4))
                    .map(|_| match rng.u8(..3) {
                        0 => json!({"carrierid": pick(rng, &CARRIERS)}),
                        1 => json!({"gwid": "hp"}),
                        _ => json!({"gwid": pick(rng, &GATEWAYS)}),
                    })
                    .collect();
                self.put(
                    db,
                    json!({"_id": id, "gwlist": gwlist, "disabled": rng.u8(..8) == 0}),
                )
                .await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn randomised_routing_edits_equal_a_from_scratch_build() {
    let seed = seed("randomised_routing_edits_equal_a_from_scratch_build");
    let mut rng = Rng::with_seed(seed);
    let routing = Routing::new().await;
    routing
        .put(
            &routing.provisioning,
            json!({"_id": format!("ruleset:{SDN}:r0"), "database": routing.databases[0]}),
        )
        .await;
    routing
        .put(
            &routing.databases[0],
            json!({"_id": "rule:", "gwlist": [{"gwid": "g0"}]}),
        )
        .await;
    let config = routing.env.config("n1");
    let mut daemon = Daemon::start_ready(&config).await;
    for round in 0..6 {
        for _ in 0..8 {
            routing.random_edit(&mut rng).await;
        }
        match round {
            // Killed in the middle of absorbing the edits.
            1 => {
                daemon.kill9();
                daemon = Daemon::start_ready(&config).await;
            }
            3 => {
                daemon.sigterm();
                assert!(daemon.wait_exit(Duration::from_secs(20)).await.success());
                daemon = Daemon::start_ready(&config).await;
            }
            _ => {}
        }
        eventually(
            &format!("seed {seed}, round {round}: the routing cache equals a from-scratch build"),
            Duration::from_secs(30),
            async || routing.differences().await,
        )
        .await;
    }
    // The HTTP answers agree with a from-scratch table.
    let index = routing.index().await;
    for ruleset in RULESETS {
        let Ok((table, _)) = build_table(&index, SDN, ruleset) else {
            let reply = daemon.get(&format!("/v1/routes/{SDN}/{ruleset}/331")).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
            assert_eq!(reply.json["error"], "unknown_ruleset");
            continue;
        };
        for number in NUMBERS {
            let reply = daemon
                .get(&format!("/v1/routes/{SDN}/{ruleset}/{number}?host=sbc1"))
                .await;
            match table.lookup(number, Some("sbc1")) {
                None => {
                    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
                    assert_eq!(reply.json["error"], "no_route");
                }
                Some(expected) => {
                    // Nothing was looked up before: both tables start their
                    // round-robin from zero, so the answers are equal whole.
                    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
                    assert_eq!(reply.json, expected, "seed {seed}: {ruleset}/{number}");
                }
            }
        }
    }
    // Only databases a ruleset names are followed (a stopped feed goes
    // once it has saved its last checkpoint).
    let mut wanted: Vec<String> = RoutingBuilder.dynamic_sources(&index).into_keys().collect();
    wanted.sort();
    eventually(
        &format!("seed {seed}: the followed ruleset databases"),
        Duration::from_secs(10),
        async || {
            let status = daemon.get("/v1/status").await;
            let followed: Vec<String> = status.json["feeds"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|f| {
                    f["source"]
                        .as_str()
                        .filter(|s| s.starts_with("ruleset_db:"))
                        .map(str::to_string)
                })
                .collect();
            if followed == wanted {
                Ok(())
            } else {
                Err(format!("following {followed:?}, want {wanted:?}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn route_errors_have_the_spec_shapes() {
    let routing = Routing::new().await;
    routing
        .put(
            &routing.provisioning,
            json!({"_id": format!("ruleset:{SDN}:r0"), "database": routing.databases[0]}),
        )
        .await;
    routing
        .put(
            &routing.provisioning,
            json!({"_id": format!("gateway:{SDN}:g0"), "address": "192.0.2.1:5060"}),
        )
        .await;
    routing
        .put(
            &routing.databases[0],
            json!({"_id": "rule:33", "gwlist": [{"gwid": "g0"}]}),
        )
        .await;
    let daemon = Daemon::start_ready(&routing.env.config("n1")).await;
    let found = eventually("the route is served", Duration::from_secs(20), async || {
        let reply = daemon.get(&format!("/v1/routes/{SDN}/r0/331?host=h")).await;
        (reply.status == StatusCode::OK)
            .then_some(reply)
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    assert_eq!(found.json["gateways"][0]["address"], "192.0.2.1:5060");
    let expect = |status: StatusCode, kind: &'static str| {
        move |reply: crate::support::daemon::Reply| {
            assert_eq!(
                (reply.status, reply.json["error"].as_str()),
                (status, Some(kind)),
                "{}",
                reply.text
            );
            assert!(reply.json["reason"].as_str().is_some_and(|r| !r.is_empty()));
        }
    };
    expect(StatusCode::NOT_FOUND, "no_route")(daemon.get(&format!("/v1/routes/{SDN}/r0/44")).await);
    expect(StatusCode::NOT_FOUND, "unknown_ruleset")(
        daemon.get(&format!("/v1/routes/{SDN}/nope/44")).await,
    );
    expect(StatusCode::BAD_REQUEST, "invalid_number")(
        daemon.get(&format!("/v1/routes/{SDN}/r0/33%201")).await,
    );
    // `caldera route` answers the same from CouchDB alone.
    let route = |number: &str| {
        std::process::Command::new(crate::support::daemon::binary())
            .args(["route", "--config"])
            .arg(daemon.config_path())
            .args([SDN, "r0", number, "--host", "h"])
            .output()
            .expect("caldera route runs")
    };
    let found = route("331");
    assert_eq!(
        found.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&found.stderr)
    );
    let answer: Value = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!(
        (
            answer["prefix"].as_str(),
            answer["gateways"][0]["gwid"].as_str()
        ),
        (Some("33"), Some("g0"))
    );
    let missing = route("44");
    assert_eq!(missing.status.code(), Some(1));
    let answer: Value = serde_json::from_slice(&missing.stdout).unwrap();
    assert_eq!(answer["error"], "no_route");
    assert_eq!(route("4 4").status.code(), Some(64));
    let table = daemon.get(&format!("/v1/routes/{SDN}/r0")).await;
    assert_eq!(table.status, StatusCode::OK, "{}", table.text);
    assert_eq!(
        table.json["rules"]["33"]["groups"][0]["gateways"][0]["gwid"],
        "g0"
    );
}

/// `/readyz` answers 200 only once every ruleset database a ruleset names
/// has loaded and its table is served: a SIP proxy that waits for
/// readiness must never see `unknown_ruleset` for a ruleset that exists.
#[tokio::test(flavor = "multi_thread")]
async fn ready_only_once_every_ruleset_table_is_served() {
    const RULES: usize = 3000;
    let routing = Routing::new().await;
    routing
        .put(
            &routing.provisioning,
            json!({"_id": format!("gateway:{SDN}:g0"), "address": "192.0.2.1:5060"}),
        )
        .await;
    for (r, db) in routing.databases.iter().enumerate() {
        routing
            .put(
                &routing.provisioning,
                json!({"_id": format!("ruleset:{SDN}:r{r}"), "database": db}),
            )
            .await;
        routing.couch().create_db(db).await;
        let rules: Vec<Value> = (0..RULES)
            .map(|i| json!({"_id": format!("rule:{}", 10_000 + i), "gwlist": [{"gwid": "g0"}]}))
            .collect();
        for chunk in rules.chunks(1000) {
            routing.couch().bulk_docs(db, chunk).await;
        }
    }
    let daemon = Daemon::start_ready(&routing.env.config("n1")).await;
    for r in 0..routing.databases.len() {
        let reply = daemon.get(&format!("/v1/routes/{SDN}/r{r}/1{r:04}9")).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "r{r} right after /readyz said ready: {}",
            reply.text
        );
    }
}

/// A carrier edit is one small write: the domain's gateway directory. The
/// ruleset documents stay as they are, and every lookup that reaches the
/// carrier answers the edit.
#[tokio::test(flavor = "multi_thread")]
async fn a_carrier_edit_rewrites_only_the_gateway_directory() {
    let routing = Routing::new().await;
    let prov = routing.provisioning.clone();
    routing
        .put(&prov, json!({"_id": format!("carrier:{SDN}:c0"), "try": 1}))
        .await;
    for gwid in GATEWAYS {
        let gateway = json!({"_id": format!("gateway:{SDN}:{gwid}"), "address": format!("{gwid}:5060"),
                             "carrierid": if gwid < "g2" { "c0" } else { "c1" }});
        routing.put(&prov, gateway).await;
    }
    for (r, db) in RULESETS.iter().zip(&routing.databases) {
        routing
            .put(
                &prov,
                json!({"_id": format!("ruleset:{SDN}:{r}"), "database": db}),
            )
            .await;
        for (prefix, entry) in [
            ("3", json!({"carrierid": "c0"})),
            ("4", json!({"gwid": "g3"})),
        ] {
            let rule = json!({"_id": format!("rule:{prefix}"), "gwlist": [entry]});
            routing.put(db, rule).await;
        }
    }
    let daemon = Daemon::start_ready(&routing.env.config("n1")).await;
    let cache = routing.env.names.cache.clone();
    let revs = async || {
        let mut revs = BTreeMap::new();
        for key in ["example.net:r0", "example.net:r1", "gateways@example.net"] {
            let rev = routing.couch().rev(&cache, &format!("routing:{key}")).await;
            revs.insert(key, rev.expect("the output exists"));
        }
        revs
    };
    let before = revs().await;
    routing
        .put(
            &prov,
            json!({"_id": format!("carrier:{SDN}:c0"), "try": 1, "progress_timeout": 9}),
        )
        .await;
    for r in RULESETS {
        eventually(
            &format!("{r} answers the carrier edit"),
            Duration::from_secs(20),
            async || {
                let reply = daemon.get(&format!("/v1/routes/{SDN}/{r}/31")).await;
                let timeout = &reply.json["gateways"][0]["progress_timeout"];
                (*timeout == json!(9))
                    .then_some(())
                    .ok_or_else(|| reply.text.clone())
            },
        )
        .await;
        let untouched = daemon.get(&format!("/v1/routes/{SDN}/{r}/41")).await;
        assert_eq!(untouched.json["gateways"][0]["progress_timeout"], json!(4));
    }
    let after = revs().await;
    assert_ne!(
        after["gateways@example.net"],
        before["gateways@example.net"]
    );
    for key in ["example.net:r0", "example.net:r1"] {
        assert_eq!(after[key], before[key], "{key} was rewritten");
    }
    routing.differences().await.unwrap();
}
