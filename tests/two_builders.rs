//! High availability through the real daemon: two building instances (A
//! and B, one cache database, different `node`) and a replica
//! (`build.enabled = false`) while a seeded random sequence
//! (`CALDERA_TEST_SEED`) of over a thousand source edits, in `_bulk_docs`
//! batches, covers every domain — sysconf categories, auth-by-ip devices
//! and carriers, the static ACLs, gateways, carriers, rulesets and their
//! rules, phone accounts, provision configs, policies, profiles, units and
//! devices, edge classes and edges — and A and B are killed with SIGKILL
//! and restarted at random moments (never both at once). At the end the
//! cache equals a from-scratch build of the final sources (so no edit is
//! lost), no cache document has conflicting revisions, and the replica
//! serves what the from-scratch daemon serves.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fastrand::Rng;
use serde_json::{Value, json};

use crate::common::{TestEnv, wait_equals_from_scratch};
use crate::edge::{KEY, edge_doc};
use crate::support::couch::Couch;
use crate::support::daemon::{Daemon, DaemonConfig};
use crate::support::{eventually, metric_sample, seed};

/// Batches of source edits, and edits per batch (each document counts).
const BATCHES: usize = 60;
const EDITS_PER_BATCH: usize = 24;
const SDN: &str = "ha.example.net";
const CATEGORIES: usize = 8;
const RULESETS: [&str; 2] = ["r0", "r1"];
const PREFIXES: [&str; 4] = ["", "3", "33", "4"];
const ACCOUNTS: [&str; 2] = ["acc-a", "acc-b"];
const UNITS: usize = 6;
const EDGES: usize = 6;
/// The seed's edge classes (created by the daemon at start-up).
const CLASSES: [(&str, &str); 2] = [("static", "default"), ("mobile", "c2cbus")];

fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    items[rng.usize(..items.len())]
}

/// The test's source databases (physical names).
struct Dbs {
    system_config: String,
    sip_auth: String,
    offnet: String,
    units: String,
    provisioning: String,
    edge_config: String,
    edge_registry: String,
    rulesets: [String; 2],
}

impl Dbs {
    fn of(env: &TestEnv) -> Dbs {
        let db = |key: &str| format!("{}_{key}", env.names.prefix);
        Dbs {
            system_config: env.names.system_config.clone(),
            sip_auth: db("sip_auth"),
            offnet: db("offnet"),
            units: db("units"),
            provisioning: db("provisioning"),
            edge_config: db("edge_config"),
            edge_registry: db("edge_registry"),
            rulesets: [db("rules_a"), db("rules_b")],
        }
    }

    async fn create(&self, couch: &Couch) {
        for db in [
            &self.sip_auth,
            &self.offnet,
            &self.units,
            &self.provisioning,
            &self.rulesets[0],
            &self.rulesets[1],
        ] {
            couch.create_db(db).await;
        }
    }
}

/// One random source edit: (database, document, delete it).
fn random_edit(rng: &mut Rng, dbs: &Dbs) -> (String, Value, bool) {
    let delete = rng.u8(..10) == 0;
    let (db, doc) = match rng.u8(..26) {
        0..=2 => (&dbs.system_config, sysconf_doc(rng)),
        3 => (&dbs.system_config, ecallmgr(rng)),
        4..=5 => (&dbs.sip_auth, ip_device(rng)),
        6 => (&dbs.offnet, carrier_resource(rng)),
        7..=8 => (&dbs.provisioning, gateway(rng)),
        9 => (
            &dbs.provisioning,
            json!({"_id": format!("carrier:{SDN}:c{}", rng.u8(..2)), "try": rng.u8(1..3)}),
        ),
        10 => {
            let db = &dbs.rulesets[rng.usize(..2)];
            let doc =
                json!({"_id": format!("ruleset:{SDN}:{}", pick(rng, &RULESETS)), "database": db});
            (&dbs.provisioning, doc)
        }
        11..=13 => (&dbs.rulesets[rng.usize(..2)], rule(rng)),
        14 => (&dbs.units, account(rng)),
        15..=16 => (&dbs.units, provision_doc(rng)),
        17..=19 => (&dbs.units, unit(rng)),
        20 => (&dbs.sip_auth, phone_device(rng)),
        21..=22 => (&dbs.edge_registry, edge(rng)),
        _ => (&dbs.edge_config, edge_class(rng)),
    };
    // The seed's classes stay (the daemon recreates them at start).
    let delete = delete && doc["type"] != "edge_class";
    (db.clone(), doc, delete)
}

fn sysconf_doc(rng: &mut Rng) -> Value {
    let mut doc = json!({"_id": format!("cat{}", rng.usize(..CATEGORIES)), "pvt_type": "config",
                         "default": {"k": rng.u32(..1000), "nested": {"a": rng.bool()}}});
    if rng.bool() {
        doc["builder-a"] = json!({"k": format!("node {}", rng.u8(..9))});
    }
    doc
}

fn address(rng: &mut Rng) -> String {
    format!("198.51.100.{}", rng.u8(1..60))
}

fn ecallmgr(rng: &mut Rng) -> Value {
    let acls: serde_json::Map<String, Value> = (0..rng.usize(0..4))
        .map(|i| {
            let entry = json!({"type": pick(rng, &["allow", "deny"]), "network-list-name": "trusted",
                               "cidr": format!("{}/32", address(rng))});
            (format!("static-{i}"), entry)
        })
        .collect();
    json!({"_id": "ecallmgr", "pvt_type": "config", "default": {"acls": acls}})
}

fn ip_device(rng: &mut Rng) -> Value {
    json!({"_id": format!("ipdev-{}", rng.u8(..10)), "pvt_type": "device", "pvt_account_id": pick(rng, &ACCOUNTS),
           "enabled": rng.u8(..5) != 0, "sip": {"method": "ip", "ip": address(rng)}})
}

fn carrier_resource(rng: &mut Rng) -> Value {
    let gateways: Vec<Value> = (0..rng.usize(1..3))
        .map(|_| json!({"server": address(rng), "enabled": rng.u8(..4) != 0}))
        .collect();
    json!({"_id": format!("carrier-{}", rng.u8(..4)), "pvt_type": "resource", "enabled": rng.u8(..5) != 0,
           "gateways": gateways})
}

fn gateway(rng: &mut Rng) -> Value {
    let gwid = format!("g{}", rng.u8(..4));
    let mut doc = json!({"_id": format!("gateway:{SDN}:{gwid}"), "address": format!("{gwid}:{}", rng.u16(5060..5070))});
    if rng.bool() {
        doc["carrierid"] = json!(format!("c{}", rng.u8(..2)));
    }
    doc
}

fn rule(rng: &mut Rng) -> Value {
    let gwlist: Vec<Value> = (0..rng.usize(1..3))
        .map(|_| match rng.u8(..3) {
            0 => json!({"carrierid": format!("c{}", rng.u8(..2))}),
            _ => json!({"gwid": format!("g{}", rng.u8(..4))}),
        })
        .collect();
    json!({"_id": format!("rule:{}", pick(rng, &PREFIXES)), "gwlist": gwlist})
}

fn account(rng: &mut Rng) -> Value {
    let id = pick(rng, &ACCOUNTS);
    let realm = format!("{id}-{}.example.net", rng.u8(..3));
    json!({"_id": id, "type": "account", "realm": realm, "enabled": rng.u8(..6) != 0})
}

fn phone_config(rng: &mut Rng) -> Value {
    json!({"vlan": rng.u16(1..4000), "ring": pick(rng, &["a", "b"])})
}

/// A provision config, policy or profile.
fn provision_doc(rng: &mut Rng) -> Value {
    let account = pick(rng, &ACCOUNTS);
    match rng.u8(..3) {
        0 => {
            json!({"_id": format!("pc-{account}"), "type": "provision_config", "account_id": account,
                    "config": phone_config(rng), "locks": {}})
        }
        1 => json!({"_id": format!("pol-{}", rng.u8(..3)), "type": "policy", "account_id": account,
                    "config": phone_config(rng)}),
        _ => {
            json!({"_id": format!("prof-{}", rng.u8(..2)), "type": "profile", "account_id": account,
                    "policies": [format!("pol-{}", rng.u8(..3))]})
        }
    }
}

fn unit(rng: &mut Rng) -> Value {
    let n = rng.usize(..UNITS);
    json!({"_id": format!("unit-{n}"), "type": "unit", "account_id": pick(rng, &ACCOUNTS),
           "mac_address": format!("0015650000{n:02}"), "brand": "yealink", "model": "t46s",
           "config": phone_config(rng), "profiles": [format!("prof-{}", rng.u8(..2))],
           "enabled": rng.u8(..5) != 0,
           "lines": [{"line": 1, "device_id": format!("dev-{}", rng.u8(..3))}]})
}

fn phone_device(rng: &mut Rng) -> Value {
    let id = format!("dev-{}", rng.u8(..3));
    json!({"_id": id, "pvt_type": "device", "pvt_account_id": pick(rng, &ACCOUNTS),
           "sip": {"method": "password", "username": id, "password": format!("p{}", rng.u16(..))}})
}

fn edge(rng: &mut Rng) -> Value {
    let n = rng.usize(..EDGES);
    let (t, s) = CLASSES[rng.usize(..CLASSES.len())];
    let mac = format!("02:00:00:00:00:{n:02x}");
    let vars = json!({"lan_ip": format!("10.0.0.{}", rng.u8(1..250))});
    edge_doc(&format!("{n:06x}"), t, s, &[&mac], vars)
}

fn edge_class(rng: &mut Rng) -> Value {
    let (t, s) = CLASSES[rng.usize(..CLASSES.len())];
    json!({"_id": format!("edge_class:{t}:{s}"), "type": "edge_class", "edge_type": t, "edge_sub_type": s,
           "vars": {"mtu": rng.u16(1200..1500)}})
}

/// Writes a batch of edits with one `_bulk_docs` per database, on the
/// current revisions (one `_all_docs` read per database); a document some
/// other writer moved on meanwhile (the daemons create the edge classes)
/// is written again on its own.
async fn write_batch(couch: &Couch, edits: Vec<(String, Value, bool)>) -> usize {
    let mut by_db: BTreeMap<String, BTreeMap<String, (Value, bool)>> = BTreeMap::new();
    for (db, doc, delete) in edits {
        let id = doc["_id"].as_str().expect("an _id").to_string();
        // Two edits of one document in a batch: the later wins.
        by_db.entry(db).or_default().insert(id, (doc, delete));
    }
    let mut written = 0;
    for (db, docs) in by_db {
        let revs = couch.revs(&db, docs.keys()).await;
        let mut bodies = Vec::new();
        for (id, (mut doc, delete)) in docs {
            match (revs.get(&id), delete) {
                (None, true) => continue,
                (Some(rev), true) => doc = json!({"_id": id, "_rev": rev, "_deleted": true}),
                (Some(rev), false) => doc["_rev"] = json!(rev),
                (None, false) => {}
            }
            bodies.push(doc);
        }
        written += bodies.len();
        for (body, result) in bodies.iter().zip(couch.bulk_docs(&db, &bodies).await) {
            match result.get("error").and_then(Value::as_str) {
                None => {}
                Some("conflict") if body["_deleted"] == true => {
                    couch
                        .delete(&db, body["_id"].as_str().expect("an _id"))
                        .await;
                }
                Some("conflict") => {
                    couch.upsert(&db, body).await;
                }
                Some(error) => panic!("_bulk_docs {db}: {error}: {result}"),
            }
        }
    }
    written
}

/// A builder that may be down: its configuration and its process.
struct Builder {
    config: DaemonConfig,
    daemon: Option<Daemon>,
    /// Batches to wait before starting it again.
    down_for: usize,
    kills: usize,
}

impl Builder {
    fn is_up(&mut self) -> bool {
        self.daemon.as_mut().is_some_and(Daemon::is_running)
    }

    fn kill(&mut self, rng: &mut Rng) {
        if let Some(daemon) = self.daemon.as_mut() {
            daemon.kill9();
        }
        self.daemon = None;
        self.down_for = rng.usize(1..4);
        self.kills += 1;
    }

    /// Started again once its pause is over (not waited for: edits keep
    /// coming while it loads).
    async fn tick(&mut self) {
        if self.daemon.is_some() {
            return;
        }
        if self.down_for > 0 {
            self.down_for -= 1;
            return;
        }
        self.daemon = Some(Daemon::start(&self.config).await);
    }

    async fn ensure_ready(&mut self) -> &Daemon {
        if !self.is_up() {
            self.daemon = Some(Daemon::start(&self.config).await);
        }
        let daemon = self.daemon.as_ref().expect("started");
        daemon.wait_ready().await;
        daemon
    }
}

/// `caldera_cache_writes_total{outcome}` of a daemon.
async fn writes(daemon: &Daemon, outcome: &str) -> f64 {
    let text = daemon.get("/metrics").await.text;
    let label = format!("outcome=\"{outcome}\"");
    metric_sample(&text, "caldera_cache_writes_total", &[&label]).unwrap_or(0.0)
}

/// What a daemon serves for every domain, as (path, status, body) — the
/// paths of the final sources' outputs; signed edge URLs (which carry an
/// expiry) left out.
async fn answers(daemon: &Daemon, dbs: &Dbs, couch: &Couch) -> Vec<(String, u16, String)> {
    let mut paths: Vec<String> = (0..CATEGORIES)
        .map(|i| format!("/v1/sysconf/cat{i}"))
        .collect();
    paths.push("/v1/acls?node=builder-a".into());
    paths.push("/v1/acls/freeswitch.xml?node=builder-a".into());
    for ruleset in RULESETS {
        for number in ["331", "34", "4", "5"] {
            paths.push(format!("/v1/routes/{SDN}/{ruleset}/{number}"));
        }
    }
    for id in couch.docs_by_id(&dbs.units).await.keys() {
        if id.starts_with("unit-") {
            paths.push(format!("/v1/units/{id}"));
        }
    }
    for n in 0..EDGES {
        paths.push(format!("/api/v1.0/template_set/latest?edge_id={n:06x}"));
    }
    let mut out = Vec::new();
    for path in paths {
        let reply = daemon.get(&path).await;
        let mut json = reply.json.clone();
        strip_volatile(&mut json);
        let body = if json.is_null() {
            reply.text
        } else {
            json.to_string()
        };
        out.push((path, reply.status.as_u16(), body));
    }
    out
}

/// Removes what differs between two instances serving the same cache:
/// signed download paths (they expire) and request logs.
fn strip_volatile(value: &mut Value) {
    if let Some(object) = value.as_object_mut() {
        for field in ["path", "requests", "built_by", "built_at", "node"] {
            object.remove(field);
        }
        for child in object.values_mut() {
            strip_volatile(child);
        }
    } else if let Some(list) = value.as_array_mut() {
        list.iter_mut().for_each(strip_volatile);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_builders_under_kill_9_and_a_replica_end_as_a_from_scratch_build() {
    let seed = seed("two builders");
    let mut rng = Rng::with_seed(seed);
    let env = TestEnv::new().await;
    let dbs = Dbs::of(&env);
    dbs.create(&env.couch).await;
    let builder = |node: &str| {
        let mut config = env.config(node);
        config
            .set("edge.download_key", KEY)
            .set("edge.trusted_proxies", "127.0.0.0/8");
        config
    };
    let mut a = Builder {
        config: builder("builder-a"),
        daemon: None,
        down_for: 0,
        kills: 0,
    };
    let mut b = Builder {
        config: builder("builder-b"),
        daemon: None,
        down_for: 0,
        kills: 0,
    };
    let mut replica_config = builder("replica");
    replica_config.set("build.enabled", false);
    a.ensure_ready().await;
    b.ensure_ready().await;
    let replica = Daemon::start_ready(&replica_config).await;

    let started = Instant::now();
    let mut edits = 0;
    for _ in 0..BATCHES {
        let batch = (0..EDITS_PER_BATCH)
            .map(|_| random_edit(&mut rng, &dbs))
            .collect();
        edits += write_batch(&env.couch, batch).await;
        // Kill one builder now and then, only while the other runs.
        let (a_up, b_up) = (a.is_up(), b.is_up());
        match rng.u8(..100) {
            0..=7 if a_up && b_up => a.kill(&mut rng),
            8..=15 if a_up && b_up => b.kill(&mut rng),
            _ => {}
        }
        a.tick().await;
        b.tick().await;
        tokio::time::sleep(Duration::from_millis(rng.u64(0..40))).await;
    }
    eprintln!(
        "seed {seed}: {edits} edits in {:?}, builder A killed {} times, B {} times",
        started.elapsed(),
        a.kills,
        b.kills
    );
    assert!(edits >= 1000, "only {edits} edits");
    assert!(a.kills + b.kills >= 2, "seed {seed}: too few kills");

    // Both builders up; the cache equals a from-scratch build.
    a.ensure_ready().await;
    b.ensure_ready().await;
    let scratch =
        wait_equals_from_scratch(&env.couch, &a.config, "scratch", Duration::from_secs(60)).await;
    let conflicted = env.couch.conflicted_ids(&env.names.cache).await;
    assert!(
        conflicted.is_empty(),
        "seed {seed}: conflicts in {conflicted:?}"
    );

    // The replica serves what a from-scratch build serves.
    let wanted = answers(&scratch, &dbs, &env.couch).await;
    let found = wanted
        .iter()
        .filter(|(_, status, _)| *status == 200)
        .count();
    eprintln!("seed {seed}: {found} of {} answers are 200", wanted.len());
    assert!(found * 2 >= wanted.len(), "seed {seed}: {wanted:?}");
    eventually(
        &format!("seed {seed}: the replica serves the from-scratch answers"),
        Duration::from_secs(30),
        async || {
            let served = answers(&replica, &dbs, &env.couch).await;
            match served.iter().zip(&wanted).find(|(s, w)| s != w) {
                None => Ok(()),
                Some((s, w)) => Err(format!("replica {s:?}\nscratch {w:?}")),
            }
        },
    )
    .await;
    let mut conflicts = 0.0;
    for builder in [&a, &b] {
        if let Some(daemon) = &builder.daemon {
            conflicts += writes(daemon, "conflict").await;
        }
    }
    eprintln!("seed {seed}: {conflicts} write conflicts in the builders' last lives");
}
