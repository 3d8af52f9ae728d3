//! The edge store's CouchDB primitives (IO): creating its databases and the
//! seed's edge classes at start-up, allocating integer ids, appending to the
//! set log, finding the newest document of an id prefix.
//!
//! Concurrency: every allocation is a compare-and-set that CouchDB decides,
//! so any number of caldera instances may write at once.
//! * Template and master ids come from counter documents updated with their
//!   `_rev` (409 → read again); a number is never handed out twice, even if
//!   its document is later deleted.
//! * Set-log entries are created as `set_log:<n>` without a `_rev`; a 409
//!   means another writer took `n`, so the next is tried. Entry `n` is only
//!   ever created after `n - 1` exists, so the log has no holes that a
//!   later entry could be seen across.

use serde_json::{Map, Value, json};

use super::model::{self, Class, SEED_CLASSES, render_set_version};
use crate::couch::{Db, Error, ErrorKind, KeyRange, Result};

/// Tries of one compare-and-set before giving up.
const ATTEMPTS: usize = 64;

/// The marker that the seed's classes were installed into this incarnation
/// of `edge_config` (so a class an operator deleted stays deleted).
const SEEDED: &str = "caldera-edge-seeded";

fn conflict_error(db: &Db, what: &str) -> Error {
    Error::new(
        ErrorKind::Conflict,
        format!("PUT {}/{what}", db.name()),
        "too many concurrent writers; try again",
    )
}

/// Creates the edge databases (with the configured credentials) and, once
/// per `edge_config` incarnation, the seed's ten edge classes; idempotent.
///
/// # Errors
/// CouchDB refused or could not be reached.
pub async fn prepare(config: &Db, others: &[Db]) -> Result<()> {
    for db in std::iter::once(config).chain(others) {
        if db.create().await? {
            tracing::info!(db = db.name(), "created an edge store database");
        }
    }
    if config.get_local(SEEDED).await?.is_some() {
        return Ok(());
    }
    for (edge_type, sub) in SEED_CLASSES {
        let class = Class::new(edge_type, sub).expect("the seed's classes are valid");
        let doc = json!({
            "_id": model::class_doc_id(&class),
            "type": "edge_class",
            "edge_type": edge_type,
            "edge_sub_type": sub,
        });
        match config.put(&doc).await {
            Ok(_) => {}
            Err(err) if err.is(ErrorKind::Conflict) => {}
            Err(err) => return Err(err),
        }
    }
    config
        .put_local(SEEDED, &json!({ "classes": SEED_CLASSES.len() }))
        .await?;
    tracing::info!(db = config.name(), "installed the seed's edge classes");
    Ok(())
}

/// The next integer id from a counter document.
///
/// # Errors
/// CouchDB failed, or the counter kept conflicting.
pub async fn next_id(db: &Db, counter: &str) -> Result<u64> {
    for _ in 0..ATTEMPTS {
        let current = db.get(counter).await?;
        let last = current
            .as_ref()
            .and_then(|d| d.get("last"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if last >= model::MAX_ID {
            return Err(Error::new(
                ErrorKind::Fatal,
                format!("PUT {}/{counter}", db.name()),
                "every id is used",
            ));
        }
        let mut doc = json!({ "_id": counter, "type": "counter", "last": last + 1 });
        if let Some(rev) = current.as_ref().and_then(|d| d.get("_rev")) {
            doc["_rev"] = rev.clone();
        }
        match db.put(&doc).await {
            Ok(_) => return Ok(last + 1),
            Err(err) if err.is(ErrorKind::Conflict) => continue,
            Err(err) => return Err(err),
        }
    }
    Err(conflict_error(db, counter))
}

/// Creates a document under a fresh id from `counter` (skipping ids whose
/// document already exists, e.g. imported data ahead of the counter).
///
/// # Errors
/// CouchDB failed.
pub async fn create_with_id(
    db: &Db,
    counter: &str,
    make: impl Fn(u64) -> Value,
) -> Result<(u64, String)> {
    for _ in 0..ATTEMPTS {
        let id = next_id(db, counter).await?;
        match db.put(&make(id)).await {
            Ok(rev) => return Ok((id, rev)),
            Err(err) if err.is(ErrorKind::Conflict) => continue,
            Err(err) => return Err(err),
        }
    }
    Err(conflict_error(db, counter))
}

/// The id of the newest document whose id starts with `prefix`.
///
/// # Errors
/// CouchDB failed.
pub async fn newest_with_prefix(db: &Db, prefix: &str) -> Result<Option<String>> {
    let end = format!("{prefix}\u{fff0}");
    let rows = db
        .all_docs_range(&KeyRange {
            start: &end,
            end: prefix,
            descending: true,
            include_docs: false,
            limit: Some(1),
        })
        .await?;
    Ok(rows.into_iter().next().map(|row| row.key))
}

/// The number at the end of a zero-padded id (`set_log:000000000012` → 12).
fn trailing_number(id: &str) -> Option<u64> {
    id.rsplit(':').next()?.parse().ok()
}

/// Creates a document numbered after the newest one of `prefix`
/// (`<prefix><n>`), trying the following numbers on 409.
///
/// # Errors
/// CouchDB failed, or the numbers ran out.
pub async fn create_numbered(
    db: &Db,
    prefix: &str,
    max: u64,
    make: impl Fn(u64) -> Value,
) -> Result<(u64, String)> {
    let newest = newest_with_prefix(db, prefix).await?;
    let mut n = newest.as_deref().and_then(trailing_number).unwrap_or(0) + 1;
    for attempt in 0..ATTEMPTS {
        if n > max {
            break;
        }
        match db.put(&make(n)).await {
            Ok(rev) => return Ok((n, rev)),
            Err(err) if err.is(ErrorKind::Conflict) => {
                // Re-read now and then: many writers may be ahead of us.
                n = if attempt % 8 == 7 {
                    let newest = newest_with_prefix(db, prefix).await?;
                    (newest.as_deref().and_then(trailing_number).unwrap_or(0) + 1).max(n + 1)
                } else {
                    n + 1
                };
            }
            Err(err) => return Err(err),
        }
    }
    Err(conflict_error(db, prefix))
}

/// Appends one entry to the set log; returns its sequence.
///
/// # Errors
/// CouchDB failed.
pub async fn append_set_log(db: &Db, kind: &str, fields: Value, now: &str) -> Result<u64> {
    let fields: Map<String, Value> = match fields {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let (seq, _) = create_numbered(db, "set_log:", 999_999_999_999, |seq| {
        let mut doc = fields.clone();
        doc.insert("_id".into(), json!(model::set_log_doc_id(seq)));
        doc.insert("type".into(), json!("set_log"));
        doc.insert("set_seq".into(), json!(seq));
        doc.insert("set_version".into(), json!(render_set_version(seq)));
        doc.insert("kind".into(), json!(kind));
        doc.insert("created_at".into(), json!(now));
        Value::Object(doc)
    })
    .await?;
    Ok(seq)
}
