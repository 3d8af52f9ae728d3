//! Golden tests of the pure core against `fixtures/sysconf/`: each
//! `build/<case>.input.json` category document must build into
//! `build/<case>.expected.json` (run with `UPDATE_EXPECT=1` to regenerate,
//! then review the diff), and `lookups.json` holds a table of lookups with
//! their expected section and value.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

use super::{SOURCE, SysconfBuilder, model};
use crate::couch::Body;
use crate::domains::{Builder, Built};
use crate::rebuild::index::{Index, Reads, SourceDoc, SourceId};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sysconf")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Builds the category `id` from an index holding `body`, as the engine does.
fn build(id: &str, body: Body) -> (Built, Value) {
    let mut index = Index::default();
    let source: SourceId = Arc::from(SOURCE);
    index.upsert(
        &source,
        SourceDoc {
            id: id.to_string(),
            rev: "1-x".into(),
            body,
        },
    );
    let mut reads = Reads::new(&index);
    let built = SysconfBuilder.build(id, &mut reads);
    let (deps, _) = reads.finish();
    (
        built,
        json!(deps.iter().map(|d| format!("{d:?}")).collect::<Vec<_>>()),
    )
}

fn describe(built: &Built, deps: Value) -> Value {
    let issues = |issues: &[crate::domains::Issue]| {
        json!(
            issues
                .iter()
                .map(|i| json!({ "doc": i.doc, "reason": i.reason }))
                .collect::<Vec<_>>()
        )
    };
    match built {
        Built::Absent => json!({ "built": "absent", "deps": deps }),
        Built::Content {
            content,
            issues: found,
        } => {
            json!({ "built": "content", "content": content, "issues": issues(found), "deps": deps })
        }
        Built::Failed { issues: found } => {
            json!({ "built": "failed", "issues": issues(found), "deps": deps })
        }
    }
}

#[test]
fn golden_builds() {
    let dir = fixtures().join("build");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures/sysconf/build exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".input.json"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 4, "the golden cases are missing");
    for input in cases {
        let name = input
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".input.json", "");
        let doc = read_json(&input);
        let id = doc
            .get("_id")
            .and_then(Value::as_str)
            .unwrap_or(&name)
            .to_string();
        let (built, deps) = build(&id, Body::of(&doc));
        let actual = serde_json::to_string_pretty(&describe(&built, deps)).unwrap() + "\n";
        expect_test::expect_file![dir.join(format!("{name}.expected.json"))].assert_eq(&actual);
    }
}

#[test]
fn a_malformed_document_fails_its_output_only() {
    let (built, _) = build(
        "broken",
        Body::Malformed("nesting deeper than 128 levels".into()),
    );
    let Built::Failed { issues } = built else {
        panic!("expected a failed build, got {built:?}")
    };
    assert_eq!(issues[0].doc.as_deref(), Some("broken"));
    assert!(issues[0].reason.contains("nesting"));
}

#[test]
fn a_missing_document_is_absent_but_still_a_dependency() {
    let index = Index::default();
    let mut reads = Reads::new(&index);
    assert_eq!(SysconfBuilder.build("gone", &mut reads), Built::Absent);
    assert_eq!(
        reads.finish().0.len(),
        1,
        "creating the document must rebuild the output"
    );
}

#[test]
fn lookup_table() {
    let table = read_json(&fixtures().join("lookups.json"));
    let (content, _) = model::category_content(&table["document"], "ecallmgr");
    let cases = table["cases"].as_array().expect("cases is a list");
    assert!(cases.len() >= 8);
    for case in cases {
        let key: Vec<String> = serde_json::from_value(case["key"].clone()).unwrap();
        let node = case["node"].as_str().unwrap();
        let zone = case["zone"].as_str().unwrap();
        let found = model::lookup(&content, &key, node, zone);
        let actual = found.map(|f| (f.section.to_string(), f.value.clone()));
        let expected = case["section"]
            .as_str()
            .map(|s| (s.to_string(), case["value"].clone()));
        assert_eq!(actual, expected, "{}", case["why"]);
    }
}
