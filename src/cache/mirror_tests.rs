//! Tests of the mirror: revision order, statistics, observers, and the
//! store-backed mirror (spilling, restart, reload, damage).

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::cache::{Content, JsonText, serialized_content_hash};

/// A consistent entry: its hash is that of its content.
fn entry(id: &str, rev: &str, content: Value) -> CacheEntry {
    let errors = json!([]);
    let text = JsonText::of(&content);
    CacheEntry {
        id: id.into(),
        rev: rev.into(),
        domain: id.split(':').next().unwrap().into(),
        key: id.split_once(':').unwrap().1.into(),
        hash: serialized_content_hash(text.as_str().as_bytes(), &errors, false),
        content: Content::Text(text),
        errors,
        stale: false,
        bytes: 10,
    }
}

fn checkpoint(seq: &str) -> Checkpoint {
    Checkpoint {
        db: "cache".into(),
        marker: "m".into(),
        seq: json!(seq),
    }
}

#[test]
fn late_echoes_do_not_revive_older_revisions() {
    let mirror = Mirror::default();
    mirror.apply_written(Update::Live(entry("sysconf:a", "2-b", json!(2))));
    mirror.apply_feed(Update::Live(entry("sysconf:a", "1-a", json!(1))));
    assert_eq!(*mirror.get("sysconf:a").unwrap().content.value(), json!(2));
    mirror.apply_written(Update::Deleted {
        id: "sysconf:a".into(),
        rev: "3-c".into(),
    });
    mirror.apply_feed(Update::Live(entry("sysconf:a", "2-b", json!(2))));
    assert!(mirror.get("sysconf:a").is_none());
    mirror.apply_feed(Update::Live(entry("sysconf:a", "4-d", json!(4))));
    assert_eq!(*mirror.get("sysconf:a").unwrap().content.value(), json!(4));
}

/// While a full build is made, the ids other instances wrote (the feed's
/// changes) are noted, not this process's own writes nor ignored echoes.
#[test]
fn feed_changes_are_noted_while_recording() {
    let mirror = Mirror::default();
    mirror.apply_feed(Update::Live(entry("sysconf:before", "1-a", json!(1))));
    mirror.record_feed_changes();
    mirror.apply_feed(Update::Live(entry("sysconf:other", "1-a", json!(1))));
    mirror.apply_feed(Update::Deleted {
        id: "sysconf:before".into(),
        rev: "2-b".into(),
    });
    mirror.apply_written(Update::Live(entry("sysconf:own", "1-a", json!(1))));
    // A late echo of an older revision changes nothing.
    mirror.apply_feed(Update::Live(entry("sysconf:own", "1-a", json!(1))));
    let noted = mirror.take_feed_changes();
    let mut noted: Vec<&str> = noted.iter().map(String::as_str).collect();
    noted.sort_unstable();
    assert_eq!(noted, ["sysconf:before", "sysconf:other"]);
    mirror.apply_feed(Update::Live(entry("sysconf:after", "1-a", json!(1))));
    assert!(mirror.take_feed_changes().is_empty(), "no longer recording");
}

#[test]
fn stats_follow_replacements_and_deletions() {
    let mirror = Mirror::default();
    mirror.replace_all(vec![
        entry("sysconf:a", "1-a", json!(1)),
        entry("sysconf:b", "1-a", json!(1)),
    ]);
    assert!(mirror.is_loaded());
    assert_eq!(mirror.stats()["sysconf"].documents, 2);
    mirror.apply_feed(Update::Live(entry("sysconf:a", "2-a", json!(2))));
    mirror.apply_feed(Update::Deleted {
        id: "sysconf:b".into(),
        rev: "2-x".into(),
    });
    assert_eq!(
        mirror.stats()["sysconf"],
        DomainStats {
            documents: 1,
            bytes: 10,
            with_errors: 0,
            stale: 0
        }
    );
    assert_eq!(mirror.ids_of("sysconf"), ["sysconf:a"]);
}

/// Records what it is told, as `put id` / `remove id` / `reset n`.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

impl Observer for Recorder {
    fn reset(&self, entries: &Entries<'_>) {
        let mut contents = Vec::new();
        for domain in ["phones", "sysconf"] {
            entries.each_of_domain(domain, |e| {
                contents.push(format!("{}={}", e.id, e.content.text().as_str()));
            });
        }
        self.0
            .lock()
            .unwrap()
            .push(format!("reset {}", contents.join(" ")));
    }
    fn put(&self, entry: &Arc<CacheEntry>) {
        self.0
            .lock()
            .unwrap()
            .push(format!("put {} {}", entry.id, entry.rev));
    }
    fn remove(&self, id: &str) {
        self.0.lock().unwrap().push(format!("remove {id}"));
    }
}

#[test]
fn observers_see_every_applied_change_and_no_ignored_one() {
    let mirror = Mirror::default();
    mirror.apply_written(Update::Live(entry("sysconf:a", "1-a", json!(1))));
    let recorder = Arc::new(Recorder::default());
    mirror.observe(recorder.clone());
    mirror.apply_written(Update::Live(entry("sysconf:b", "1-b", json!(1))));
    mirror.apply_feed(Update::Live(entry("sysconf:b", "1-b", json!(1))));
    mirror.apply_feed(Update::Deleted {
        id: "sysconf:a".into(),
        rev: "2-a".into(),
    });
    mirror.replace_all(vec![entry("sysconf:c", "1-c", json!(3))]);
    assert_eq!(
        *recorder.0.lock().unwrap(),
        [
            "reset sysconf:a=1",
            "put sysconf:b 1-b",
            "remove sysconf:a",
            "reset sysconf:c=3"
        ]
    );
}

fn store_at(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("cache.redb")).unwrap()
}

const WAIT: Duration = Duration::from_secs(10);

/// Phones contents leave memory once committed and are read back whole;
/// other domains stay in memory.
#[test]
fn spilled_contents_are_read_back_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (mirror, resume) = Mirror::with_store(store_at(&dir)).unwrap();
    assert_eq!(resume, None);
    let unit = json!({"files": {"a.cfg": {"body": "x=1\n", "etag": "e"}}});
    mirror.begin_reload();
    mirror.reload_put(entry("phones:unit:u1", "1-a", unit.clone()));
    mirror.reload_put(entry("sysconf:c", "1-a", json!({"k": 1})));
    mirror.finish_reload(Some(checkpoint("7")));
    assert!(mirror.flush(WAIT));
    assert_eq!(
        mirror.meta("phones:unit:u1").unwrap().content,
        Content::Spilled
    );
    assert!(matches!(
        mirror.meta("sysconf:c").unwrap().content,
        Content::Text(_)
    ));
    assert_eq!(*mirror.get("phones:unit:u1").unwrap().content.value(), unit);
    assert_eq!(mirror.stats()["phones"].documents, 1);
    assert_eq!(mirror.pending_bytes(), 0);
    assert_eq!(mirror.store_healthy(), Some(true));
}

/// What was committed comes back after a restart with its checkpoint; a
/// change queued after the checkpoint is kept too, and the echo of an
/// older revision is still refused.
#[test]
fn a_restart_resumes_from_the_stores_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mirror, _) = Mirror::with_store(store_at(&dir)).unwrap();
        mirror.replace_all(vec![entry("phones:unit:u1", "1-a", json!({"v": 1}))]);
        mirror.checkpoint(checkpoint("3"));
        mirror.apply_feed(Update::Live(entry(
            "phones:unit:u1",
            "2-b",
            json!({"v": 2}),
        )));
        mirror.apply_feed(Update::Live(entry("sysconf:c", "1-a", json!(5))));
        mirror.apply_written(Update::Deleted {
            id: "sysconf:c".into(),
            rev: "2-a".into(),
        });
        mirror.checkpoint(checkpoint("5"));
        assert!(mirror.flush(WAIT));
    }
    let (mirror, resume) = Mirror::with_store(store_at(&dir)).unwrap();
    assert_eq!(resume, Some(checkpoint("5")));
    assert!(!mirror.is_loaded(), "warm only once the feed caught up");
    assert_eq!(
        *mirror.get("phones:unit:u1").unwrap().content.value(),
        json!({"v": 2})
    );
    assert!(mirror.get("sysconf:c").is_none());
    mirror.apply_feed(Update::Live(entry("sysconf:c", "1-a", json!(5))));
    assert!(
        mirror.get("sysconf:c").is_none(),
        "a late echo is not revived"
    );
    mirror.caught_up();
    assert!(mirror.is_loaded());
}

/// A reload interrupted before its end leaves no checkpoint: the next
/// start reloads rather than trusting half a reload.
#[test]
fn an_interrupted_reload_leaves_no_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mirror, _) = Mirror::with_store(store_at(&dir)).unwrap();
        mirror.replace_all(vec![entry("sysconf:a", "1-a", json!(1))]);
        mirror.checkpoint(checkpoint("3"));
        mirror.begin_reload();
        mirror.reload_put(entry("sysconf:b", "1-a", json!(2)));
        assert!(mirror.flush(WAIT));
    }
    let (_, resume) = Mirror::with_store(store_at(&dir)).unwrap();
    assert_eq!(resume, None);
}

/// A reload keeps exactly what it loaded, in memory and in the store.
#[test]
fn a_reload_drops_what_it_did_not_load() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mirror, _) = Mirror::with_store(store_at(&dir)).unwrap();
        mirror.replace_all(vec![
            entry("phones:unit:a", "1-a", json!(1)),
            entry("phones:unit:b", "1-a", json!(2)),
        ]);
        mirror.begin_reload();
        mirror.reload_put(entry("phones:unit:b", "2-a", json!(3)));
        mirror.finish_reload(Some(checkpoint("9")));
        assert_eq!(mirror.ids_of("phones"), ["phones:unit:b"]);
        assert!(mirror.flush(WAIT));
    }
    let (mirror, resume) = Mirror::with_store(store_at(&dir)).unwrap();
    assert_eq!(resume, Some(checkpoint("9")));
    assert_eq!(mirror.ids_of("phones"), ["phones:unit:b"]);
    assert_eq!(
        *mirror.get("phones:unit:b").unwrap().content.value(),
        json!(3)
    );
}

/// A record that no longer matches what the mirror holds is never
/// returned: it is reported, queued for repair, and the store gives up
/// its checkpoint so the next start rebuilds.
#[test]
fn a_damaged_record_is_not_served_and_is_queued_for_repair() {
    let dir = tempfile::tempdir().unwrap();
    let (mirror, _) = Mirror::with_store(store_at(&dir)).unwrap();
    mirror.replace_all(vec![entry("phones:unit:a", "1-a", json!({"v": 1}))]);
    mirror.checkpoint(checkpoint("4"));
    assert!(mirror.flush(WAIT));
    // Another content under the same revision, written behind the
    // mirror's back (as a hand edit that kept the checksums right would).
    let store = &mirror.spill.as_ref().unwrap().store;
    let forged = entry("phones:unit:a", "1-a", json!({"v": "forged"}));
    store.apply(&[Op::Put(Arc::new(forged))]).unwrap();
    assert!(mirror.get("phones:unit:a").is_none());
    assert_eq!(mirror.damaged_records(), 1);
    assert_eq!(mirror.take_repairs(), ["phones:unit:a"]);
    assert_eq!(store.checkpoint().unwrap(), None);
    assert_eq!(mirror.store_healthy(), Some(false));
    // The repair brings the content back into memory.
    mirror.apply_written(Update::Live(entry("phones:unit:a", "1-a", json!({"v": 1}))));
    assert_eq!(
        *mirror.get("phones:unit:a").unwrap().content.value(),
        json!({"v": 1})
    );
}

/// Observers registered on a store-backed mirror are told the spilled
/// contents too.
#[test]
fn observers_are_reset_with_spilled_contents() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mirror, _) = Mirror::with_store(store_at(&dir)).unwrap();
        mirror.replace_all(vec![
            entry("phones:unit:a", "1-a", json!(1)),
            entry("sysconf:c", "1-a", json!(2)),
        ]);
        mirror.checkpoint(checkpoint("1"));
        assert!(mirror.flush(WAIT));
    }
    let (mirror, _) = Mirror::with_store(store_at(&dir)).unwrap();
    let recorder = Arc::new(Recorder::default());
    mirror.observe(recorder.clone());
    assert_eq!(
        *recorder.0.lock().unwrap(),
        ["reset phones:unit:a=1 sysconf:c=2"]
    );
}
