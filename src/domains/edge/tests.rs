//! Tests of the edge core: manifests and deltas over hand-made stores,
//! packages read back from their tar.gz bytes, render failures, the
//! builder's outputs through the index.

use std::collections::BTreeMap;
use std::io::Read;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::delta::{self, Since};
use super::manifest::{self, ClassManifest};
use super::model::{self, Class, EdgeRecord, FileRef, sha256_hex};
use super::package::{self, PackageError};
use super::store::Store;

fn store(docs: &[(String, Value)]) -> Store {
    Store::from_docs(docs.iter().map(|(id, v)| (id.as_str(), Ok(v))))
}

fn digest(content: &[u8]) -> String {
    format!(
        "md5-{}",
        STANDARD.encode(&sha256_hex(content).as_bytes()[..16])
    )
}

/// A small configuration builder for tests.
#[derive(Default)]
struct Config {
    docs: Vec<(String, Value)>,
    files: BTreeMap<String, Vec<u8>>,
    seq: u64,
}

impl Config {
    fn class(&mut self, t: &str, s: &str) -> &mut Self {
        let class = Class::new(t, s).unwrap();
        self.docs.push((
            model::class_doc_id(&class),
            json!({"type": "edge_class", "edge_type": t, "edge_sub_type": s}),
        ));
        self
    }

    fn template(&mut self, id: u64, name: &str, path: &str) -> &mut Self {
        self.docs.push((
            model::template_doc_id(id),
            json!({"type": "config_template", "template_id": id, "name": name,
                   "description": format!("{name} description"), "path": path,
                   "owner": "root", "group": "adm", "permissions": 640}),
        ));
        self
    }

    fn attach(&mut self, doc: &str, name: &str, content: &[u8]) -> Value {
        let d = digest(content);
        self.files.insert(model::digest_key(&d), content.to_vec());
        let _ = doc;
        json!({ name: {"digest": d, "length": content.len(), "stub": true} })
    }

    fn version(&mut self, t: u64, n: u64, content: &[u8]) -> &mut Self {
        let id = model::version_doc_id(t, n);
        let attachments = self.attach(&id, model::TEMPLATE_FILE, content);
        self.docs.push((
            id,
            json!({"type": "template_version", "template_id": t, "version": n,
                   "comment": format!("v{n}"), "sha256": sha256_hex(content),
                   "_attachments": attachments}),
        ));
        self.log(json!({"kind": "template_version", "template_id": t, "version": n}))
    }

    fn master(&mut self, m: u64, name: &str, seq: Option<i64>, status: u8) -> &mut Self {
        let id = model::master_doc_id(m);
        let mut attachments = self.attach(&id, model::PRE_SCRIPT, b"echo pre\n");
        let post = self.attach(&id, model::POST_SCRIPT, b"status_check() { true; }\n");
        let un = self.attach(&id, model::UNINSTALL_SCRIPT, b"rm -f /etc/x\n");
        attachments[model::POST_SCRIPT] = post[model::POST_SCRIPT].clone();
        attachments[model::UNINSTALL_SCRIPT] = un[model::UNINSTALL_SCRIPT].clone();
        self.docs.retain(|(i, _)| *i != id);
        self.docs.push((
            id,
            json!({"type": "master_package", "master_id": m, "name": name,
                   "description": "d", "status": status, "execution_sequence": seq,
                   "_attachments": attachments}),
        ));
        self.log(json!({"kind": "master_update", "master_id": m}))
    }

    fn link(&mut self, m: u64, t: u64) -> &mut Self {
        self.docs.push((
            model::link_doc_id(m, t),
            json!({"type": "mp_template", "master_id": m, "template_id": t}),
        ));
        self.log(json!({"kind": "link", "master_id": m, "template_id": t}))
    }

    fn assign(&mut self, m: u64, t: &str, s: &str) -> &mut Self {
        let class = Class::new(t, s).unwrap();
        self.docs.push((
            model::assign_doc_id(m, &class),
            json!({"type": "mp_assign", "master_id": m, "edge_type": t, "edge_sub_type": s}),
        ));
        self.log(json!({"kind": "assign", "master_id": m, "edge_type": t, "edge_sub_type": s}))
    }

    fn unassign(&mut self, m: u64, t: &str, s: &str) -> &mut Self {
        let class = Class::new(t, s).unwrap();
        let id = model::assign_doc_id(m, &class);
        self.docs.retain(|(i, _)| *i != id);
        self.log(json!({"kind": "unassign", "master_id": m, "edge_type": t, "edge_sub_type": s}))
    }

    fn log(&mut self, mut entry: Value) -> &mut Self {
        self.seq += 1;
        entry["type"] = json!("set_log");
        entry["set_seq"] = json!(self.seq);
        entry["created_at"] = json!(format!("2024-01-01T00:00:{:02}Z", self.seq % 60));
        self.docs.push((model::set_log_doc_id(self.seq), entry));
        self
    }

    fn manifest(&self, t: &str, s: &str) -> ClassManifest {
        let (manifest, findings) =
            manifest::class_manifest(&store(&self.docs), &Class::new(t, s).unwrap()).unwrap();
        assert!(findings.is_empty(), "{findings:?}");
        manifest
    }

    fn lookup(&self) -> impl Fn(&FileRef) -> Option<Vec<u8>> + '_ {
        |file| self.files.get(&file.key()).cloned()
    }
}

/// (master id, [template ids]) of a delta.
fn shape(manifest: &ClassManifest, since: Since) -> Vec<(u64, Vec<u64>)> {
    delta::select(manifest, since)
        .iter()
        .map(|s| {
            (
                s.master.master_id,
                s.templates.iter().map(|t| t.template_id).collect(),
            )
        })
        .collect()
}

fn edge_record(id: &str, vars: Value) -> EdgeRecord {
    EdgeRecord {
        doc: format!("edge:{id}"),
        edge_id: id.into(),
        edge_type: "static".into(),
        edge_sub_type: "default".into(),
        mac_addresses: vec![],
        tags: vec![],
        vars: serde_json::from_value(vars).unwrap(),
        token_sha256: None,
    }
}

#[test]
fn the_originals_fixture_delta() {
    // Set rows (0.01, t1 v1), (0.02, t2 v1), (0.03, t1 v2); static/default
    // has masters 1 {t1, t2} and 2 {t1}, linked before the log began.
    let mut c = Config::default();
    c.class("static", "default").class("mobile", "default");
    c.template(1, "a.conf", "/etc/a.conf")
        .template(2, "b.conf", "/etc/b.conf");
    c.version(1, 1, b"a1")
        .version(2, 1, b"b1")
        .version(1, 2, b"a2");
    for (id, doc) in [
        (
            model::master_doc_id(1),
            json!({"type": "master_package", "master_id": 1, "name": "one", "status": 1}),
        ),
        (
            model::master_doc_id(2),
            json!({"type": "master_package", "master_id": 2, "name": "two", "status": 1}),
        ),
        (
            model::link_doc_id(1, 1),
            json!({"type": "mp_template", "master_id": 1, "template_id": 1}),
        ),
        (
            model::link_doc_id(1, 2),
            json!({"type": "mp_template", "master_id": 1, "template_id": 2}),
        ),
        (
            model::link_doc_id(2, 1),
            json!({"type": "mp_template", "master_id": 2, "template_id": 1}),
        ),
    ] {
        c.docs.push((id, doc));
    }
    for m in [1, 2] {
        let class = Class::new("static", "default").unwrap();
        c.docs.push((
            model::assign_doc_id(m, &class),
            json!({"type": "mp_assign", "master_id": m, "edge_type": "static", "edge_sub_type": "default"}),
        ));
    }
    let manifest = c.manifest("static", "default");
    assert_eq!(manifest.latest_set_seq, 3);
    assert_eq!(
        shape(&manifest, Since::After(1)),
        [(1, vec![1, 2]), (2, vec![1])]
    );
    assert_eq!(
        shape(&manifest, Since::After(2)),
        [(1, vec![1]), (2, vec![1])]
    );
    assert!(shape(&manifest, Since::After(3)).is_empty());
    assert_eq!(
        shape(&manifest, Since::Full),
        [(1, vec![1, 2]), (2, vec![1])]
    );
    let selected = delta::select(&manifest, Since::After(1));
    let text = delta::template_set_answer(&selected, manifest.latest_set_seq, "a1b2c3");
    let answer: Value = serde_json::from_slice(&text).unwrap();
    // The seed's key order.
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.starts_with(r#"{"data":[{"name":"one","description":"#),
        "{text}"
    );
    assert_eq!(answer["latest_set_version"], "0.03");
    let t = &answer["data"][0]["config_template"][0];
    assert_eq!(
        t["latest_version"],
        json!({"version_no": "0.02", "comment": "v2"})
    );
    assert_eq!(t["permissions"], 640);
    assert_eq!(t["path"], "/etc/a.conf");
    assert_eq!(answer["data"][0]["execution_sequence"], Value::Null);
    assert!(c.manifest("mobile", "default").masters.is_empty());
}

#[test]
fn assignments_unassignments_and_deletes_reach_the_right_classes() {
    let mut c = Config::default();
    c.class("static", "default").class("mid", "default");
    c.template(1, "a.conf", "/etc/a.conf").version(1, 1, b"a"); // 1
    c.template(2, "b.conf", "/etc/b.conf").version(2, 1, b"b"); // 2
    c.master(1, "base", Some(2), 1).link(1, 1).link(1, 2); // 3, 4, 5
    c.master(2, "extra", Some(1), 1).link(2, 2); // 6, 7
    c.assign(1, "static", "default"); // 8
    c.assign(2, "mid", "default"); // 9
    c.version(2, 2, b"b2"); // 10: both classes
    c.assign(2, "static", "default"); // 11: static only
    c.unassign(2, "mid", "default"); // 12: mid loses it, silently
    c.master(1, "base", Some(2), 0); // 13: deleted
    let st = c.manifest("static", "default");
    // Execution order: sequence 1 (extra) before 2 (base).
    assert_eq!(
        st.masters.iter().map(|m| m.master_id).collect::<Vec<_>>(),
        [2, 1]
    );
    assert_eq!(shape(&st, Since::After(9)), [(2, vec![2]), (1, vec![1, 2])]);
    assert_eq!(
        shape(&st, Since::After(10)),
        [(2, vec![2]), (1, vec![1, 2])]
    );
    assert_eq!(shape(&st, Since::After(11)), [(1, vec![1, 2])]);
    assert!(shape(&st, Since::After(13)).is_empty());
    let mid = c.manifest("mid", "default");
    assert!(mid.masters.is_empty());
    assert!(shape(&mid, Since::After(8)).is_empty());
    // A later version of a deleted master's template does not re-run its uninstall.
    c.version(1, 2, b"a2"); // 14
    let st = c.manifest("static", "default");
    assert!(shape(&st, Since::After(13)).is_empty());
    assert_eq!(shape(&st, Since::Full), [(2, vec![2]), (1, vec![1, 2])]);
}

/// Issue 15: a fresh edge (no `set_version`) gets its class's whole set,
/// whatever order the versions, the link and the assignment came in — an
/// assignment made after the last template version included (the
/// original only saw it after a re-version); then a delete reaches the
/// edge at its last set version as a status-0 delta.
#[test]
fn a_fresh_edge_gets_the_whole_set_in_any_order_and_then_the_delete() {
    let steps = ["v1", "v2", "link", "assign"];
    for order in permutations(&steps) {
        if order.iter().position(|s| *s == "v1") > order.iter().position(|s| *s == "v2") {
            continue;
        }
        let mut c = Config::default();
        c.class("static", "default");
        c.template(1, "ntp.conf", "/etc/ntp.conf");
        c.master(1, "timesync", None, 1);
        for step in &order {
            match *step {
                "v1" => c.version(1, 1, b"server a\n"),
                "v2" => c.version(1, 2, b"server b\n"),
                "link" => c.link(1, 1),
                _ => c.assign(1, "static", "default"),
            };
        }
        let manifest = c.manifest("static", "default");
        let latest = manifest.latest_set_seq;
        assert_eq!(latest, 5, "{order:?}");
        let since = Since::for_request(None, latest);
        assert_eq!(since, Since::Full, "no set_version is not the latest one");
        assert_eq!(shape(&manifest, since), [(1, vec![1])], "{order:?}");
        let text = delta::template_set_answer(&delta::select(&manifest, since), latest, "e0a1b2");
        let answer: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(answer["latest_set_version"], "0.05");
        assert_eq!(answer["data"][0]["status"], 1);
        assert_eq!(
            answer["data"][0]["config_template"][0]["latest_version"]["version_no"],
            "0.02"
        );
        // Up to date: nothing.
        assert!(shape(&manifest, Since::for_request(Some(5), latest)).is_empty());

        c.master(1, "timesync", None, 0); // 6: "Delete master package"
        let manifest = c.manifest("static", "default");
        let since = Since::for_request(Some(5), manifest.latest_set_seq);
        let selected = delta::select(&manifest, since);
        assert_eq!(selected.len(), 1, "{order:?}");
        assert_eq!(selected[0].master.status, 0);
        assert!(selected[0].master.uninstall.is_some());
        assert!(shape(&manifest, Since::After(6)).is_empty());
    }
}

/// Issue 15's root cause: management writes reached the index while the
/// seed's class documents (written at start-up, outside the management
/// calls) had not been loaded yet; the class then had no manifest, and its
/// edges got `data: []` with the latest set version — and would have kept
/// believing they were up to date. An assignment alone makes its class
/// exist (reported), so the assigned packages are served.
#[test]
fn an_assignment_makes_its_class_exist_without_the_class_document() {
    let mut c = Config::default();
    c.template(1, "ntp.conf", "/etc/ntp.conf");
    c.version(1, 1, b"a").version(1, 2, b"b");
    c.master(1, "timesync", None, 1).link(1, 1);
    let class = Class::new("static", "default").unwrap();
    assert!(manifest::class_manifest(&store(&c.docs), &class).is_none());
    c.assign(1, "static", "default");
    let (manifest, findings) = manifest::class_manifest(&store(&c.docs), &class).unwrap();
    assert_eq!(shape(&manifest, Since::Full), [(1, vec![1])]);
    assert_eq!(findings.len(), 1);
    assert_eq!(
        findings[0].doc.as_deref(),
        Some("edge_class:static:default")
    );
    assert!(manifest.vars.is_empty() && manifest.pre_gen.is_none());
    // The assignment is a root of the class's outputs, so the engine
    // builds them when it arrives; unassigned, the class is gone again.
    use crate::domains::Builder;
    let roots =
        super::EdgeBuilder.roots(model::EDGE_CONFIG, &model::assign_doc_id(1, &class), None);
    assert_eq!(roots, ["class:static:default", "package:static:default"]);
    c.unassign(1, "static", "default");
    assert!(manifest::class_manifest(&store(&c.docs), &class).is_none());
    // With its document the class needs no assignment and reports nothing.
    c.class("static", "default");
    assert!(c.manifest("static", "default").masters.is_empty());
}

/// Every ordering of `items`.
fn permutations<'a>(items: &[&'a str]) -> Vec<Vec<&'a str>> {
    if items.is_empty() {
        return vec![Vec::new()];
    }
    let mut all = Vec::new();
    for (i, first) in items.iter().enumerate() {
        let mut rest = items.to_vec();
        rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, *first);
            all.push(tail);
        }
    }
    all
}

/// path, mode, uid, gid, user, group, content.
type Listed = (String, u32, u64, u64, String, String, Vec<u8>);

fn read_tar(bytes: &[u8]) -> Vec<Listed> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            (
                entry.path().unwrap().to_string_lossy().into_owned(),
                header.mode().unwrap(),
                header.uid().unwrap(),
                header.gid().unwrap(),
                header.username().unwrap().unwrap_or("").to_string(),
                header.groupname().unwrap().unwrap_or("").to_string(),
                data,
            )
        })
        .collect()
}

fn package_config() -> Config {
    let mut c = Config::default();
    c.class("static", "default");
    c.template(1, "a.conf", "/etc/app/a.conf")
        .version(1, 1, b"ip={{lan_ip}} id={{edge_id}}\n");
    c.template(2, "blob.bin", "/opt/\"$edge_id\"/blob.bin");
    c.docs.last_mut().unwrap().1["render"] = json!("raw");
    c.version(2, 1, &[0xff, 0x00, 0xfe, b'{', b'{']);
    c.master(1, "Base Pkg", Some(3), 1).link(1, 1).link(1, 2);
    c.assign(1, "static", "default");
    c
}

#[test]
fn packages_are_deterministic_and_read_back() {
    let c = package_config();
    let manifest = c.manifest("static", "default");
    let selected = delta::select(&manifest, Since::Full);
    let edge = edge_record("a1b2c3", json!({"lan_ip": "10.0.0.1"}));
    let request = package::Request {
        manifest: &manifest,
        selected: &selected,
        since: Since::Full,
        edge: Some(&edge),
    };
    let lookup = c.lookup();
    let first = package::build(&request, &lookup).unwrap();
    let second = package::build(&request, &lookup).unwrap();
    assert_eq!(first, second);
    assert_eq!(first.sha256, sha256_hex(&first.bytes));
    let entries = read_tar(&first.bytes);
    let listing: Vec<(&str, u32)> = entries.iter().map(|e| (e.0.as_str(), e.1)).collect();
    assert_eq!(
        listing,
        [
            ("manifest.json", 0o644),
            ("manifest.sha256", 0o644),
            ("3_base_pkg/", 0o755),
            ("3_base_pkg/a.conf", 0o644),
            ("3_base_pkg/blob.bin", 0o644),
            ("3_base_pkg/postscript.sh", 0o755),
            ("3_base_pkg/prescript.sh", 0o755),
            ("install.sh", 0o755),
            ("package_sequence.txt", 0o644),
            ("template_path.txt", 0o644),
        ]
    );
    assert!(
        entries
            .iter()
            .all(|e| e.2 == 0 && e.3 == 0 && e.4 == "root" && e.5 == "root")
    );
    let file = |name: &str| &entries.iter().find(|e| e.0 == name).unwrap().6;
    assert_eq!(file("3_base_pkg/a.conf"), b"ip=10.0.0.1 id=a1b2c3\n");
    assert_eq!(file("3_base_pkg/blob.bin"), &[0xff, 0x00, 0xfe, b'{', b'{']);
    assert_eq!(file("package_sequence.txt"), b"3_base_pkg\n");
    assert_eq!(
        file("template_path.txt"),
        b"/etc/app/a.conf\n/opt/a1b2c3/blob.bin\n"
    );
    let prescript = String::from_utf8(file("3_base_pkg/prescript.sh").clone()).unwrap();
    assert!(prescript.starts_with("echo pre\n"), "{prescript}");
    assert!(
        prescript
            .contains("caldera_install 'a.conf' '/etc/app/a.conf' 'root' 'adm' 0640 || return 1\n")
    );
    // Every file's sha256 is in manifest.sha256, and manifest.json agrees.
    let sums = String::from_utf8(file("manifest.sha256").clone()).unwrap();
    for entry in entries
        .iter()
        .filter(|e| !e.0.ends_with('/') && e.0 != "manifest.sha256")
    {
        assert!(
            sums.contains(&format!("{}  {}\n", sha256_hex(&entry.6), entry.0)),
            "{} missing from manifest.sha256",
            entry.0
        );
    }
    let manifest_json: Value = serde_json::from_slice(file("manifest.json")).unwrap();
    assert_eq!(manifest_json["edge_id"], "a1b2c3");
    assert_eq!(manifest_json["to_set_version"], "0.06");
    let listed = &manifest_json["packages"][0]["files"][0];
    assert_eq!(listed["path"], "/etc/app/a.conf");
    assert_eq!(listed["permissions"], "0640");
    assert_eq!(listed["sha256"], sha256_hex(b"ip=10.0.0.1 id=a1b2c3\n"));
    // Another edge, other bytes.
    let other = edge_record("d4e5f6", json!({"lan_ip": "10.0.0.2"}));
    let request = package::Request {
        edge: Some(&other),
        ..request
    };
    assert_ne!(
        package::build(&request, &lookup).unwrap().sha256,
        first.sha256
    );
}

#[test]
fn render_errors_refuse_the_package_and_class_builds_need_static_content() {
    let c = package_config();
    let manifest = c.manifest("static", "default");
    let selected = delta::select(&manifest, Since::Full);
    let lookup = c.lookup();
    let bare = edge_record("a1b2c3", json!({}));
    let request = package::Request {
        manifest: &manifest,
        selected: &selected,
        since: Since::Full,
        edge: Some(&bare),
    };
    let err = package::build(&request, &lookup).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, PackageError::Render { template_id: 1, .. }),
        "{text}"
    );
    assert!(
        text.contains("a.conf") && text.contains("0.01") && text.contains("a1b2c3"),
        "{text}"
    );
    assert!(text.contains("lan_ip"), "{text}");
    let class_wide = package::Request {
        edge: None,
        ..request
    };
    assert!(matches!(
        package::build(&class_wide, &lookup),
        Err(PackageError::NeedsEdge(_))
    ));
    let missing = |_: &FileRef| None;
    assert!(matches!(
        package::build(&request, &missing),
        Err(PackageError::MissingFile { .. })
    ));
}

#[test]
fn static_classes_build_once_for_every_edge() {
    let mut c = Config::default();
    c.class("static", "default");
    c.template(1, "motd", "/etc/motd")
        .version(1, 1, b"welcome \\{{not a var}}\n");
    c.master(1, "base", None, 1)
        .link(1, 1)
        .assign(1, "static", "default");
    let manifest = c.manifest("static", "default");
    let selected = delta::select(&manifest, Since::Full);
    let request = package::Request {
        manifest: &manifest,
        selected: &selected,
        since: Since::Full,
        edge: None,
    };
    let built = package::build(&request, &c.lookup()).unwrap();
    let entries = read_tar(&built.bytes);
    let motd = &entries.iter().find(|e| e.0 == "base/motd").unwrap().6;
    assert_eq!(motd, b"welcome {{not a var}}\n");
    let manifest_json: Value = serde_json::from_slice(&entries[0].6).unwrap();
    assert_eq!(manifest_json.get("edge_id"), None);
}

#[test]
fn broken_documents_are_reported_not_fatal() {
    let mut c = Config::default();
    c.class("static", "default");
    c.docs.push((
        model::template_doc_id(1),
        json!({"type": "config_template", "template_id": 1, "name": "x", "path": "relative"}),
    ));
    c.master(1, "base", None, 1)
        .link(1, 1)
        .assign(1, "static", "default");
    c.docs.push((
        model::assign_doc_id(9, &Class::new("static", "default").unwrap()),
        json!({"type": "mp_assign", "master_id": 9, "edge_type": "static", "edge_sub_type": "default"}),
    ));
    let store = store(&c.docs);
    let (manifest, findings) =
        manifest::class_manifest(&store, &Class::new("static", "default").unwrap()).unwrap();
    assert_eq!(manifest.masters.len(), 1);
    let reasons: Vec<&str> = findings.iter().map(|f| f.reason.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("template 1 is unreadable")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("master package 9 does not exist")),
        "{reasons:?}"
    );
}
