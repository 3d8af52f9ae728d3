//! set_version: after a seeded random sequence of template versions,
//! links, assignments, unassignments, master updates and deletes (through
//! the API), every class's edge at every earlier set version receives
//! exactly the delta an independent model says, and never misses a
//! template whose version changed since.
//!
//! The model works "at the time": each change marks what it touched among
//! the assignments that exist when it happens; the daemon works "at read
//! time" from the set log. The two must agree.

use std::collections::{BTreeMap, BTreeSet};

use fastrand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{EdgeEnv, edge_doc};
use crate::support::seed;

const CLASSES: [(&str, &str, &str); 3] = [
    ("static", "default", "aaaaa0"),
    ("mid", "default", "bbbbb0"),
    ("mobile", "c2cbus", "ccccc0"),
];

type Class = usize;

/// (master, status, [(template, version)]), in execution order.
type Delta = Vec<(u64, u8, Vec<(u64, u64)>)>;

#[derive(Default, Clone)]
struct Model {
    seq: u64,
    /// template → latest version (0: none yet).
    versions: BTreeMap<u64, u64>,
    /// master → (status, execution sequence).
    masters: BTreeMap<u64, (u8, Option<i64>)>,
    links: BTreeSet<(u64, u64)>,
    /// (class, master) → uninstall state?
    assigned: BTreeMap<(Class, u64), bool>,
    master_touch: BTreeMap<(Class, u64), u64>,
    item_touch: BTreeMap<(Class, u64, u64), u64>,
}

impl Model {
    fn bump(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn classes_of(&self, master: u64) -> Vec<Class> {
        self.assigned
            .keys()
            .filter(|(_, m)| *m == master)
            .map(|(c, _)| *c)
            .collect()
    }

    fn version(&mut self, template: u64) {
        let seq = self.bump();
        *self.versions.entry(template).or_insert(0) += 1;
        let touched: Vec<(Class, u64)> = self
            .assigned
            .keys()
            .filter(|(_, m)| self.links.contains(&(*m, template)))
            .copied()
            .collect();
        for (class, master) in touched {
            self.item_touch.insert((class, master, template), seq);
        }
    }

    fn link(&mut self, master: u64, template: u64) {
        let seq = self.bump();
        self.links.insert((master, template));
        for class in self.classes_of(master) {
            self.item_touch.insert((class, master, template), seq);
        }
    }

    fn master_changed(&mut self, master: u64) {
        let seq = self.bump();
        for class in self.classes_of(master) {
            self.master_touch.insert((class, master), seq);
        }
    }

    fn assign(&mut self, class: Class, master: u64, uninstall: Option<bool>) {
        let seq = self.bump();
        match uninstall {
            None => {
                self.assigned.insert((class, master), false);
            }
            Some(true) => {
                self.assigned.insert((class, master), true);
            }
            Some(false) => {
                self.assigned.remove(&(class, master));
            }
        }
        self.master_touch.insert((class, master), seq);
    }

    /// (master, status, [(template, version)]) the class's edge at `since` receives.
    fn delta(&self, class: Class, since: Option<u64>) -> Delta {
        let mut masters: Vec<(Option<i64>, u64, u8)> = self
            .assigned
            .iter()
            .filter(|((c, _), _)| *c == class)
            .map(|((_, m), uninstall)| {
                let (status, order) = self.masters[m];
                (order, *m, if *uninstall { 0 } else { status })
            })
            .collect();
        masters.sort_by_key(|(order, m, _)| (order.is_some(), *order, *m));
        let mut out = Vec::new();
        for (_, master, status) in masters {
            let templates: Vec<(u64, u64)> = self
                .links
                .iter()
                .filter(|(m, t)| *m == master && self.versions.get(t).copied().unwrap_or(0) > 0)
                .map(|(_, t)| (*t, self.versions[t]))
                .collect();
            let master_at = self
                .master_touch
                .get(&(class, master))
                .copied()
                .unwrap_or(0);
            let chosen: Vec<(u64, u64)> = match since {
                None => templates,
                Some(_) if status == 0 => templates,
                Some(s) if master_at > s => templates,
                Some(s) => templates
                    .into_iter()
                    .filter(|(t, _)| {
                        self.item_touch
                            .get(&(class, master, *t))
                            .is_some_and(|at| *at > s)
                    })
                    .collect(),
            };
            let wanted = if status == 0 {
                since.is_none_or(|s| master_at > s)
            } else {
                !chosen.is_empty()
            };
            if wanted {
                out.push((master, status, chosen));
            }
        }
        out
    }

    /// Every (master, template, version) an up-to-date edge of the class has installed.
    fn installed(&self, class: Class) -> BTreeSet<(u64, u64, u64)> {
        self.delta(class, None)
            .into_iter()
            .filter(|(_, status, _)| *status == 1)
            .flat_map(|(m, _, ts)| ts.into_iter().map(move |(t, v)| (m, t, v)))
            .collect()
    }
}

fn shape(answer: &Value) -> Delta {
    answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let templates = m["config_template"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    let version = t["latest_version"]["version_no"].as_str().unwrap();
                    let v: f64 = version.parse().unwrap();
                    (
                        t["template_id"].as_u64().unwrap(),
                        (v * 100.0).round() as u64,
                    )
                })
                .collect();
            (
                m["master_package_id"].as_u64().unwrap(),
                m["status"].as_u64().unwrap() as u8,
                templates,
            )
        })
        .collect()
}

fn render(seq: u64) -> String {
    format!("{}.{:02}", seq / 100, seq % 100)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_class_at_every_earlier_version_gets_exactly_its_delta() {
    let seed = seed("edge set versions");
    let mut rng = Rng::with_seed(seed);
    let e = EdgeEnv::start().await;
    let edges: Vec<Value> = CLASSES
        .iter()
        .map(|(t, s, id)| edge_doc(id, t, s, &[], json!({})))
        .collect();
    e.register(&edges).await;
    let mut model = Model::default();
    let mut snapshots: Vec<[BTreeSet<(u64, u64, u64)>; 3]> = vec![Default::default()];
    let mut templates = Vec::new();
    for i in 0..4 {
        let id = e
            .template(&format!("t{i}.conf"), &format!("/etc/t{i}.conf"))
            .await;
        model.versions.insert(id, 0);
        templates.push(id);
    }
    let mut masters: Vec<u64> = Vec::new();
    for step in 0..45 {
        let op = if masters.is_empty() {
            0
        } else {
            rng.usize(0..10)
        };
        let what;
        match op {
            0 => {
                let order = rng.bool().then(|| rng.i64(0..5));
                let mut extra = Vec::new();
                let text = order.map(|o| o.to_string());
                if let Some(text) = &text {
                    extra.push(("execution_sequence", text.as_str()));
                }
                let m = e.master(&format!("m{step}"), &extra).await;
                model.masters.insert(m, (1, order));
                masters.push(m);
                model.master_changed(m);
                what = format!("create master {m}");
            }
            1..=3 => {
                let t = templates[rng.usize(..templates.len())];
                e.version(t, format!("step {step}").as_bytes(), "v").await;
                model.version(t);
                what = format!("version of template {t}");
            }
            4 => {
                let (m, t) = (
                    masters[rng.usize(..masters.len())],
                    templates[rng.usize(..templates.len())],
                );
                let reply = e
                    .send(
                        e.daemon
                            .http()
                            .post(e.url(&format!("/master_package_config/{m}/assign/{t}/"))),
                    )
                    .await;
                if model.links.contains(&(m, t)) {
                    assert_eq!(
                        reply.json["message"],
                        "Master package config already assigned"
                    );
                    continue;
                }
                assert_eq!(
                    reply.json["message"], "Master package config assigned",
                    "{}",
                    reply.text
                );
                model.link(m, t);
                what = format!("link {m} {t}");
            }
            5 | 6 => {
                let m = masters[rng.usize(..masters.len())];
                let class = rng.usize(..CLASSES.len());
                let (t, s, _) = CLASSES[class];
                let reply = e.assign(m, t, s).await;
                match model.assigned.get(&(class, m)) {
                    Some(false) => {
                        assert_eq!(reply.json["message"], "Package already assigned");
                        continue;
                    }
                    _ => assert_eq!(reply.json["message"], "Package assigned", "{}", reply.text),
                }
                model.assign(class, m, None);
                what = format!("assign {m} to {t}/{s}");
            }
            7 => {
                let m = masters[rng.usize(..masters.len())];
                let class = rng.usize(..CLASSES.len());
                let (t, s, _) = CLASSES[class];
                let uninstall = rng.bool();
                let reply = e
                    .json(
                        Method::DELETE,
                        &format!("/master_package/assign/{m}/"),
                        &json!({"edge_type": t, "edge_sub_type": s, "uninstall": uninstall}),
                    )
                    .await;
                let noop = match model.assigned.get(&(class, m)) {
                    None => true,
                    Some(true) => uninstall,
                    Some(false) => false,
                };
                if noop {
                    assert_eq!(
                        reply.json["message"], "Invalid package id",
                        "{}",
                        reply.text
                    );
                    continue;
                }
                assert_eq!(reply.json["message"], "Package deleted", "{}", reply.text);
                model.assign(class, m, Some(uninstall));
                what = format!("unassign {m} from {t}/{s} (uninstall {uninstall})");
            }
            8 => {
                let m = masters[rng.usize(..masters.len())];
                let reply = e
                    .urlencoded(
                        Method::PUT,
                        &format!("/master_package/{m}/"),
                        &[("description", &format!("step {step}"))],
                    )
                    .await;
                assert_eq!(reply.json["message"], "Master Package updated");
                model.master_changed(m);
                what = format!("update master {m}");
            }
            _ => {
                let m = masters[rng.usize(..masters.len())];
                let reply = e
                    .send(
                        e.daemon
                            .http()
                            .delete(e.url(&format!("/master_package/{m}/"))),
                    )
                    .await;
                assert_eq!(reply.json["message"], "Master Package deleted");
                if model.masters[&m].0 == 0 {
                    continue;
                }
                model.masters.get_mut(&m).unwrap().0 = 0;
                model.master_changed(m);
                what = format!("delete master {m}");
            }
        }
        let latest = e.template_set(CLASSES[0].2, None).await["latest_set_version"].clone();
        assert_eq!(
            latest,
            render(model.seq).as_str(),
            "seed {seed}, step {step} ({what})"
        );
        snapshots.push([0, 1, 2].map(|c| model.installed(c)));
    }
    for (class, (t, s, edge)) in CLASSES.iter().enumerate() {
        let full = e.template_set(edge, None).await;
        assert_eq!(
            shape(&full),
            model.delta(class, None),
            "seed {seed}: {t}/{s}, full set"
        );
        for since in 0..=model.seq {
            let answer = e.template_set(edge, Some(&render(since))).await;
            let got = shape(&answer);
            assert_eq!(
                got,
                model.delta(class, Some(since)),
                "seed {seed}: {t}/{s} at set version {}",
                render(since)
            );
            // Never miss a template that is new or changed since.
            let received: BTreeSet<(u64, u64, u64)> = got
                .iter()
                .flat_map(|(m, _, ts)| ts.iter().map(move |(t, v)| (*m, *t, *v)))
                .collect();
            for item in model
                .installed(class)
                .difference(&snapshots[since as usize][class])
            {
                assert!(
                    received.contains(item),
                    "seed {seed}: {t}/{s} at {since} misses {item:?}"
                );
            }
        }
        // Ahead of the log (a restored edge): the full set.
        let ahead = e.template_set(edge, Some(&render(model.seq + 5))).await;
        assert_eq!(shape(&ahead), shape(&full));
    }
    let reply = e
        .get(&format!(
            "/template_set/latest?edge_id={}&set_version=1.2.3",
            CLASSES[0].2
        ))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}
