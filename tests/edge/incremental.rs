//! Incremental equals from-scratch for the edge store: after a seeded
//! random sequence of management calls, direct CouchDB edits (registry,
//! classes, broken and deleted documents), a restart and a kill -9, the
//! cache's edge documents — manifests, precomputed packages, files,
//! registry shards, the catalog — equal what a fresh daemon builds from the
//! final sources alone, and both daemons answer every edge the same.

use std::collections::BTreeMap;
use std::time::Duration;

use fastrand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{EdgeEnv, edge_doc};
use crate::support::couch::Couch;
use crate::support::daemon::Daemon;
use crate::support::{eventually, seed};

const CLASSES: [(&str, &str); 4] = [
    ("static", "default"),
    ("mid", "default"),
    ("mobile", "c2cbus"),
    ("static", "nuc"),
];

/// The edge documents of a cache database: id → hash.
async fn edge_hashes(couch: &Couch, cache: &str) -> BTreeMap<String, Value> {
    couch
        .docs_by_id(cache)
        .await
        .into_iter()
        .filter(|(id, _)| id.starts_with("edge:"))
        .map(|(id, doc)| (id, doc["hash"].clone()))
        .collect()
}

/// Waits until the cache stops changing.
async fn settled(couch: &Couch, cache: &str) -> BTreeMap<String, Value> {
    let mut last = edge_hashes(couch, cache).await;
    let mut stable = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = edge_hashes(couch, cache).await;
        if now == last {
            stable += 1;
            if stable == 3 {
                return now;
            }
        } else {
            stable = 0;
            last = now;
        }
    }
    panic!("the cache did not settle");
}

struct Run {
    rng: Rng,
    templates: Vec<u64>,
    masters: Vec<u64>,
    edges: Vec<String>,
}

impl Run {
    fn class(&mut self) -> (&'static str, &'static str) {
        CLASSES[self.rng.usize(..CLASSES.len())]
    }

    async fn step(&mut self, e: &EdgeEnv, step: usize) {
        let registry = e.db("edge_registry");
        let config = e.db("edge_config");
        let couch = &e.env.couch;
        match self.rng.usize(0..16) {
            0 | 1 => {
                let id = e
                    .template(&format!("t{step}.conf"), &format!("/etc/app/t{step}.conf"))
                    .await;
                self.templates.push(id);
            }
            2..=4 if !self.templates.is_empty() => {
                let t = self.templates[self.rng.usize(..self.templates.len())];
                let content = match self.rng.usize(0..3) {
                    0 => format!("static {step}\n"),
                    1 => format!("ip={{{{lan_ip}}}} step {step}\n"),
                    _ => "mtu={{mtu}} id={{edge_id}}\n".to_string(),
                };
                e.version(t, content.as_bytes(), "random").await;
            }
            5 => {
                let order = self.rng.i64(0..4).to_string();
                let id = e
                    .master(
                        &format!("m{step}"),
                        &[("execution_sequence", order.as_str())],
                    )
                    .await;
                self.masters.push(id);
            }
            6 | 7 if !self.masters.is_empty() && !self.templates.is_empty() => {
                let m = self.masters[self.rng.usize(..self.masters.len())];
                let t = self.templates[self.rng.usize(..self.templates.len())];
                let url = e.url(&format!("/master_package_config/{m}/assign/{t}/"));
                let reply = e.send(e.daemon.http().post(url)).await;
                assert!(
                    reply.status.is_success() || reply.status == StatusCode::CONFLICT,
                    "{}",
                    reply.text
                );
            }
            8 | 9 if !self.masters.is_empty() => {
                let m = self.masters[self.rng.usize(..self.masters.len())];
                let (t, s) = self.class();
                if self.rng.u8(..3) == 0 {
                    let body =
                        json!({"edge_type": t, "edge_sub_type": s, "uninstall": self.rng.bool()});
                    e.json(
                        Method::DELETE,
                        &format!("/master_package/assign/{m}/"),
                        &body,
                    )
                    .await;
                } else {
                    e.assign(m, t, s).await;
                }
            }
            10 if !self.masters.is_empty() => {
                let m = self.masters[self.rng.usize(..self.masters.len())];
                if self.rng.bool() {
                    e.send(
                        e.daemon
                            .http()
                            .delete(e.url(&format!("/master_package/{m}/"))),
                    )
                    .await;
                } else {
                    let pre = format!("echo step {step}\n");
                    e.form(
                        Method::PUT,
                        &format!("/master_package/{m}/"),
                        &[("pre_script_file", Some("p"), pre.as_bytes())],
                    )
                    .await;
                }
            }
            11 | 12 => {
                // Registry: create or change an edge.
                let id = if self.edges.is_empty() || self.rng.bool() {
                    let id = format!("{:06x}", self.rng.u32(..0xffffff));
                    self.edges.push(id.clone());
                    id
                } else {
                    self.edges[self.rng.usize(..self.edges.len())].clone()
                };
                let (t, s) = self.class();
                let mac = format!(
                    "02:00:00:{:02x}:{:02x}:{:02x}",
                    self.rng.u8(..),
                    self.rng.u8(..),
                    self.rng.u8(..)
                );
                let vars = if self.rng.bool() {
                    json!({"lan_ip": format!("10.0.0.{}", step % 250)})
                } else {
                    json!({})
                };
                couch
                    .upsert(&registry, &edge_doc(&id, t, s, &[&mac], vars))
                    .await;
            }
            13 if !self.edges.is_empty() => {
                let i = self.rng.usize(..self.edges.len());
                let id = self.edges.swap_remove(i);
                couch.delete(&registry, &format!("edge-{id}")).await;
            }
            14 => {
                // Class variables, straight into CouchDB.
                let (t, s) = self.class();
                let id = format!("edge_class:{t}:{s}");
                let mut doc = couch.get(&config, &id).await.unwrap_or_else(
                    || json!({"_id": id, "type": "edge_class", "edge_type": t, "edge_sub_type": s}),
                );
                doc["vars"] = json!({"mtu": 1300 + step});
                couch.upsert(&config, &doc).await;
            }
            _ => {
                // Broken documents now and then.
                let doc = match self.rng.u8(..3) {
                    0 => {
                        json!({"_id": format!("bad-{step}"), "type": "edge", "edge_id": "", "edge_type": "x"})
                    }
                    1 => {
                        json!({"_id": format!("config_template:{:08}", 90_000 + step), "type": "config_template", "template_id": 90_000 + step, "name": "../x"})
                    }
                    _ => {
                        json!({"_id": format!("mp_template:{:08}:{:08}", 1, 80_000 + step), "type": "mp_template", "master_id": 1, "template_id": 80_000 + step})
                    }
                };
                let db = if doc["type"] == "edge" {
                    &registry
                } else {
                    &config
                };
                couch.upsert(db, &doc).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn edits_restarts_and_crashes_end_as_a_from_scratch_build() {
    let seed = seed("edge incremental");
    let mut run = Run {
        rng: Rng::with_seed(seed),
        templates: Vec::new(),
        masters: Vec::new(),
        edges: Vec::new(),
    };
    let e = EdgeEnv::start().await;
    let EdgeEnv { daemon, env } = e;
    let mut e = EdgeEnv { daemon, env };
    for step in 0..70 {
        run.step(&e, step).await;
        if step == 25 || step == 50 {
            let EdgeEnv { mut daemon, env } = e;
            if step == 25 {
                daemon.sigterm();
                assert!(daemon.wait_exit(Duration::from_secs(15)).await.success());
            } else {
                daemon.kill9();
            }
            let daemon = Daemon::start_ready(&daemon.config).await;
            e = EdgeEnv { daemon, env };
        }
    }
    let couch = e.env.couch.clone();
    let incremental = settled(&couch, &e.env.names.cache).await;
    for kind in [
        "edge:class:",
        "edge:package:",
        "edge:catalog",
        "edge:edges.",
    ] {
        assert!(
            incremental.keys().any(|k| k.starts_with(kind)),
            "seed {seed}: no {kind} documents"
        );
    }

    // A fresh daemon with its own cache database, from the same sources.
    let scratch_names = e.env.names.with_cache("scratch");
    let mut config = e.daemon.config.clone();
    config.set_databases(&scratch_names);
    config.set("node", "edge-scratch");
    config.label = "edge-scratch".into();
    let scratch = Daemon::start_ready(&config).await;
    let from_scratch = eventually(
        "the from-scratch build to match",
        Duration::from_secs(60),
        async || {
            let built = edge_hashes(&couch, &scratch_names.cache).await;
            if built == incremental {
                Ok(built)
            } else {
                let differ: Vec<&String> = incremental
                    .keys()
                    .chain(built.keys())
                    .filter(|k| incremental.get(*k) != built.get(*k))
                    .collect();
                Err(format!(
                    "seed {seed}: {} documents differ: {differ:?}",
                    differ.len()
                ))
            }
        },
    )
    .await;
    assert_eq!(from_scratch, incremental, "seed {seed}");

    // Both answer every edge alike, packages included.
    let scratch_api = |path: &str| format!("http://{}/api/v1.0{path}", scratch.api);
    for edge in &run.edges {
        for path in [
            format!("/template_set/latest?edge_id={edge}"),
            format!("/config_package?edge_id={edge}"),
        ] {
            let a = e.get(&path).await;
            let b = e.send(e.daemon.http().get(scratch_api(&path))).await;
            assert_eq!(a.status, b.status, "seed {seed}: {path}");
            let strip = |mut v: Value| {
                v.as_object_mut().map(|o| o.remove("path"));
                v
            };
            assert_eq!(strip(a.json), strip(b.json), "seed {seed}: {path}");
        }
    }
}
