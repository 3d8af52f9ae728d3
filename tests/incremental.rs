//! The central property: after any sequence of source edits, the cache is
//! what a from-scratch build of the final sources gives, and every answer
//! is what the final sources say. Randomised, seeded (`CALDERA_TEST_SEED`).

use std::collections::BTreeMap;
use std::time::Duration;

use fastrand::Rng;
use reqwest::StatusCode;
use serde_json::{Map, Value, json};

use crate::common::{
    TestEnv, assert_equals_from_scratch, check_answers, expected_content, get_path, key_paths,
    wait_cache_equals_sources,
};
use crate::support::couch::Couch;
use crate::support::daemon::{Daemon, query_value, sysconf_path};
use crate::support::seed;

const CATEGORIES: usize = 20;
const OPERATIONS: usize = 200;
/// Sections a category may have; `n1` is the daemon's node, `test_zone` its zone.
const SECTIONS: [&str; 5] = [
    "default",
    "test_zone",
    "n1",
    "n2",
    "ecallmgr@kz1.example.net",
];
const KEYS: [&str; 6] = ["k0", "k1", "k2", "k3", "k4", "k5"];
const INNER: [&str; 4] = ["a", "b", "c", "d"];

fn category(rng: &mut Rng) -> String {
    format!("cat{:02}", rng.usize(..CATEGORIES))
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.u8(..10) {
        0 => Value::Null,
        1 => json!(rng.bool()),
        2 | 3 => json!(rng.i64(-1000..1000)),
        4 => json!(format!("s{}", rng.u32(..100_000))),
        5 => json!(
            (0..rng.usize(0..4))
                .map(|_| rng.u8(..10))
                .collect::<Vec<_>>()
        ),
        _ if depth < 3 => {
            let mut object = Map::new();
            for _ in 0..rng.usize(1..4) {
                object.insert(
                    INNER[rng.usize(..INNER.len())].to_string(),
                    random_value(rng, depth + 1),
                );
            }
            Value::Object(object)
        }
        _ => json!(format!("leaf{}", rng.u16(..))),
    }
}

fn random_section(rng: &mut Rng) -> Value {
    let mut section = Map::new();
    for _ in 0..rng.usize(1..5) {
        section.insert(
            KEYS[rng.usize(..KEYS.len())].to_string(),
            random_value(rng, 1),
        );
    }
    Value::Object(section)
}

fn random_doc(rng: &mut Rng, id: &str) -> Value {
    let mut doc = Map::new();
    doc.insert("_id".into(), json!(id));
    doc.insert("pvt_type".into(), json!("config"));
    for _ in 0..rng.usize(1..5) {
        doc.insert(
            SECTIONS[rng.usize(..SECTIONS.len())].to_string(),
            random_section(rng),
        );
    }
    Value::Object(doc)
}

/// A random key path of 1–3 names.
fn random_key(rng: &mut Rng) -> Vec<String> {
    let mut key = vec![KEYS[rng.usize(..KEYS.len())].to_string()];
    for _ in 0..rng.usize(0..3) {
        key.push(INNER[rng.usize(..INNER.len())].to_string());
    }
    key
}

/// Sets `section.key...` inside `doc`, replacing non-objects on the way.
fn force_path(doc: &mut Value, section: &str, key: &[String], value: Value) {
    let mut current = doc;
    for name in std::iter::once(&section.to_string()).chain(&key[..key.len() - 1]) {
        if !current.get(name).is_some_and(Value::is_object) {
            current[name.as_str()] = json!({});
        }
        current = &mut current[name.as_str()];
    }
    current[key[key.len() - 1].as_str()] = value;
}

/// Whether the daemon must refuse to set `section.key` in `doc` because a
/// step of the path exists but is not an object.
fn path_blocked(doc: Option<&Value>, section: &str, key: &[String]) -> bool {
    let Some(doc) = doc else {
        return false;
    };
    let mut current = doc;
    for name in std::iter::once(&section.to_string()).chain(key.iter()) {
        let Some(object) = current.as_object() else {
            return true;
        };
        match object.get(name) {
            Some(next) => current = next,
            None => return false,
        }
    }
    false
}

/// A fresh 32-hex-digit revision id.
fn rev_id(rng: &mut Rng) -> String {
    (0..32)
        .map(|_| char::from_digit(rng.u32(..16), 16).expect("a hex digit"))
        .collect()
}

fn generation(rev: &Value) -> u64 {
    rev.as_str()
        .and_then(|r| r.split_once('-'))
        .and_then(|(g, _)| g.parse().ok())
        .unwrap_or(0)
}

struct Run<'a> {
    rng: Rng,
    couch: &'a Couch,
    db: String,
    daemon: &'a Daemon,
    stale_conflicts: usize,
    replicated: usize,
    api_writes: usize,
    defaults: usize,
}

impl Run<'_> {
    async fn op(&mut self, step: usize) {
        let id = category(&mut self.rng);
        match self.rng.u8(..100) {
            0..15 => {
                let doc = random_doc(&mut self.rng, &id);
                self.couch.upsert(&self.db, &doc).await;
            }
            15..35 => self.edit_directly(&id).await,
            35..43 => {
                self.couch.delete(&self.db, &id).await;
            }
            43..53 => self.stale_write(&id).await,
            53..76 => self.api_put(&id).await,
            76..83 => self.api_default(&id, step).await,
            83..92 => self.replicated_branch(&id).await,
            _ => self.api_burst(&id).await,
        }
    }

    /// Changes one nested value through CouchDB directly.
    async fn edit_directly(&mut self, id: &str) {
        loop {
            let Some(mut doc) = self.couch.get(&self.db, id).await else {
                let doc = random_doc(&mut self.rng, id);
                self.couch.upsert(&self.db, &doc).await;
                return;
            };
            let section = SECTIONS[self.rng.usize(..SECTIONS.len())];
            let key = random_key(&mut self.rng);
            let value = random_value(&mut self.rng, 1);
            force_path(&mut doc, section, &key, value);
            match self.couch.try_put(&self.db, &doc).await {
                Ok(_) => return,
                Err((StatusCode::CONFLICT, _)) => continue,
                Err((status, body)) => panic!("PUT {id}: {status} {body}"),
            }
        }
    }

    /// A second client writes with a revision that another write has
    /// already replaced: CouchDB answers 409, and the client retries on the
    /// current revision.
    async fn stale_write(&mut self, id: &str) {
        let Some(stale) = self.couch.get(&self.db, id).await else {
            return;
        };
        // The first client moves the document on.
        let mut first = stale.clone();
        first["default"] = random_section(&mut self.rng);
        self.couch.put(&self.db, &first).await;
        // The second client still holds the old revision.
        let mut second = stale.clone();
        second["n2"] = random_section(&mut self.rng);
        match self.couch.try_put(&self.db, &second).await {
            Err((StatusCode::CONFLICT, _)) => self.stale_conflicts += 1,
            other => panic!("a stale _rev must be refused with 409, got {other:?}"),
        }
        // Retry: re-read, re-apply the change, write.
        loop {
            let mut current = self.couch.get(&self.db, id).await.expect("still there");
            current["n2"] = second["n2"].clone();
            match self.couch.try_put(&self.db, &current).await {
                Ok(_) => return,
                Err((StatusCode::CONFLICT, _)) => continue,
                Err((status, body)) => panic!("PUT {id}: {status} {body}"),
            }
        }
    }

    /// A write through the daemon's API; it must be visible once answered.
    async fn api_put(&mut self, id: &str) {
        let key = random_key(&mut self.rng);
        let value = if self.rng.u8(..10) == 0 {
            Value::Null
        } else {
            random_value(&mut self.rng, 1)
        };
        let node_specific = self.rng.bool();
        let section = if node_specific {
            ["n1", "n2", "test_zone"][self.rng.usize(..3)]
        } else {
            "default"
        };
        let body = if node_specific {
            json!({"value": value, "node_specific": true, "node": section})
        } else {
            json!({"value": value})
        };
        let current = self.couch.get(&self.db, id).await;
        let blocked = path_blocked(current.as_ref(), section, &key);
        if blocked && value.is_null() {
            // Deleting below a non-object: the spec does not say; skip.
            return;
        }
        let keys: Vec<&str> = key.iter().map(String::as_str).collect();
        let reply = self.daemon.sysconf_put(id, &keys, &body).await;
        if blocked {
            assert_eq!(
                reply.status,
                StatusCode::CONFLICT,
                "PUT {id}/{key:?}: {}",
                reply.text
            );
            return;
        }
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "PUT {id}/{key:?} {body}: {}",
            reply.text
        );
        assert_eq!(reply.json["value"], value, "{}", reply.text);
        assert_eq!(reply.json["section"], section, "{}", reply.text);
        self.api_writes += 1;
        if !value.is_null() {
            // The write returns only once visible: asking that section
            // first (node = the section) must give the value back.
            let node = if section == "default" {
                "default"
            } else {
                section
            };
            let got = self.daemon.sysconf_get(id, &keys, Some(node)).await;
            assert_eq!(
                got.status,
                StatusCode::OK,
                "GET after PUT {id}/{key:?}: {}",
                got.text
            );
            assert_eq!(
                got.json["value"], value,
                "GET after PUT {id}/{key:?}: {}",
                got.text
            );
        }
        let stored = self.couch.get(&self.db, id).await;
        let at = stored.as_ref().and_then(|s| get_path(&s[section], &key));
        if value.is_null() {
            assert!(
                at.is_none(),
                "{id}: {section}.{key:?} not deleted: {stored:?}"
            );
        } else {
            assert_eq!(at, Some(&value), "{id}: {section}.{key:?} in {stored:?}");
        }
    }

    /// A get with a default for a key that never existed: the default is
    /// answered and written under `default`.
    async fn api_default(&mut self, id: &str, step: usize) {
        let key = format!("dflt{step}");
        let default = random_value(&mut self.rng, 2);
        let path = format!(
            "{}?default={}",
            sysconf_path(id, &[&key]),
            query_value(&default.to_string())
        );
        let reply = self.daemon.get(&path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
        assert_eq!(reply.json["value"], default, "{path}: {}", reply.text);
        assert_eq!(reply.json["section"], "default", "{path}: {}", reply.text);
        let stored = self
            .couch
            .get(&self.db, id)
            .await
            .expect("the default created it");
        assert_eq!(stored["default"][&key], default, "{stored}");
        self.defaults += 1;
    }

    /// Stores a conflicting revision as replication would (`new_edits:
    /// false`): depending on its generation and id it wins or not.
    async fn replicated_branch(&mut self, id: &str) {
        let current = self.couch.get(&self.db, id).await;
        let base = current.as_ref().map_or(1, |d| generation(&d["_rev"]));
        let gen_ = base + self.rng.u64(0..2);
        let mut doc = random_doc(&mut self.rng, id);
        doc["_rev"] = json!(format!("{gen_}-{}", rev_id(&mut self.rng)));
        let results = self.couch.bulk_docs_replicated(&self.db, &[doc]).await;
        assert!(
            results.iter().all(|r| r.get("error").is_none()),
            "new_edits=false write refused: {results:?}"
        );
        self.replicated += 1;
    }

    /// Several API writes to one category at once (the daemon retries its
    /// read-modify-write on 409).
    async fn api_burst(&mut self, id: &str) {
        let current = self.couch.get(&self.db, id).await;
        let mut writes = Vec::new();
        for (i, key) in ["b0", "b1", "b2"].iter().enumerate() {
            let section = SECTIONS[self.rng.usize(..3)];
            if path_blocked(current.as_ref(), section, &[key.to_string()]) {
                continue;
            }
            let value = json!({ "burst": i, "r": self.rng.u32(..) });
            writes.push((key.to_string(), section, value));
        }
        let daemon = self.daemon;
        let replies = futures_util::future::join_all(writes.iter().map(|(key, section, value)| {
            let body = if *section == "default" {
                json!({"value": value})
            } else {
                json!({"value": value, "node_specific": true, "node": section})
            };
            async move { daemon.sysconf_put(id, &[key], &body).await }
        }))
        .await;
        let stored = self.couch.get(&self.db, id).await.expect("written");
        for ((key, section, value), reply) in writes.iter().zip(&replies) {
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "burst PUT {id}/{key}: {}",
                reply.text
            );
            assert_eq!(&stored[*section][key], value, "burst {id}: {stored}");
            self.api_writes += 1;
        }
    }
}

/// Random lookups over the final sources: existing and missing categories,
/// keys present somewhere in the document and keys that are not, and
/// several nodes.
fn random_triples(
    rng: &mut Rng,
    sources: &BTreeMap<String, Value>,
    count: usize,
) -> Vec<(String, Vec<String>, Option<String>)> {
    let nodes = [
        None,
        Some("n1"),
        Some("n2"),
        Some("n3"),
        Some("default"),
        Some("test_zone"),
    ];
    (0..count)
        .map(|_| {
            let id = if rng.u8(..10) == 0 {
                "never_existed".to_string()
            } else {
                category(rng)
            };
            let paths = sources.get(&id).map(key_paths).unwrap_or_default();
            let key = if paths.is_empty() || rng.u8(..5) == 0 {
                random_key(rng)
            } else {
                paths[rng.usize(..paths.len())].clone()
            };
            let node = nodes[rng.usize(..nodes.len())].map(str::to_string);
            (id, key, node)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn random_edits_converge_to_the_from_scratch_cache() {
    let seed = seed("random_edits_converge_to_the_from_scratch_cache");
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    let mut rng = Rng::with_seed(seed);
    // Some categories exist before the daemon starts.
    for i in 0..CATEGORIES / 2 {
        let id = format!("cat{i:02}");
        let doc = random_doc(&mut rng, &id);
        env.couch.put(&db, &doc).await;
    }
    let config = env.config("n1");
    let daemon = Daemon::start_ready(&config).await;

    let mut run = Run {
        rng,
        couch: &env.couch,
        db: db.clone(),
        daemon: &daemon,
        stale_conflicts: 0,
        replicated: 0,
        api_writes: 0,
        defaults: 0,
    };
    for step in 0..OPERATIONS {
        run.op(step).await;
    }
    eprintln!(
        "seed {seed}: {} stale-revision conflicts, {} replicated branches, {} API writes, {} defaults",
        run.stale_conflicts, run.replicated, run.api_writes, run.defaults
    );
    assert!(
        run.stale_conflicts > 0 && run.api_writes > 0,
        "the mix lacks conflicts or API writes"
    );
    let mut rng = run.rng;

    // (a) The cache equals the final sources; deleted categories have no
    // cache document.
    wait_cache_equals_sources(&env.couch, &env.names, Duration::from_secs(30)).await;
    let sources = env.couch.docs_by_id(&db).await;
    for i in 0..CATEGORIES {
        let id = format!("cat{i:02}");
        let whole = daemon.get(&sysconf_path(&id, &[])).await;
        match sources.get(&id) {
            Some(doc) => {
                assert_eq!(whole.status, StatusCode::OK, "{id}: {}", whole.text);
                assert_eq!(whole.json["document"], expected_content(doc), "{id}");
            }
            None => assert_eq!(whole.status, StatusCode::NOT_FOUND, "{id}: {}", whole.text),
        }
    }

    // (c) Every answer equals a lookup on the final sources.
    let triples = random_triples(&mut rng, &sources, 300);
    if let Err(why) = check_answers(&daemon, &sources, &triples).await {
        panic!("seed {seed}: {why}");
    }

    // (b) A fresh daemon on the same sources, with an empty cache database,
    // builds identical cache documents.
    assert_equals_from_scratch(&env.couch, &config, "scratch").await;

    // The conflicts are real: some document still carries _conflicts.
    let mut conflicted = 0;
    for id in sources.keys() {
        if let Some(doc) = env.couch.get_with_conflicts(&db, id).await
            && doc.get("_conflicts").is_some()
        {
            conflicted += 1;
        }
    }
    eprintln!("seed {seed}: {conflicted} categories end with conflicting revisions");
}
