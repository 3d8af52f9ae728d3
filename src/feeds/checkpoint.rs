//! A followed database's `_local` documents: the incarnation marker and this
//! node's checkpoint.
//!
//! `_local` documents vanish with their database, so a marker that is gone or
//! different means the database was deleted and re-created — the one
//! detection that works on both CouchDB (which ends the feed) and
//! pouchdb-server (which keeps a dead feed open forever).

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::couch::{Db, Result, Seq};

const MARKER_DOC: &str = "caldera-marker";

/// The database's incarnation marker, created when missing. All caldera
/// instances share it.
///
/// # Errors
/// CouchDB cannot be read or written.
pub async fn marker(db: &Db) -> Result<String> {
    if let Some(token) = read_marker(db).await? {
        return Ok(token);
    }
    // Several followers of one database start together in one process (the
    // engine's and the phones shell's of `units`): without this lock each
    // could create its own marker, and all but the last would see the
    // database as re-created at their first check and reload it.
    static CREATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _creating = CREATING.lock().await;
    if let Some(token) = read_marker(db).await? {
        return Ok(token);
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    // On CouchDB a concurrent creator may overwrite ours (it does not check
    // `_rev` on `_local` documents), so adopt whatever is stored afterwards.
    db.put_local(MARKER_DOC, &json!({ "marker": token }))
        .await?;
    Ok(read_marker(db).await?.unwrap_or(token))
}

/// The stored marker, if any (never creates one).
pub async fn read_marker(db: &Db) -> Result<Option<String>> {
    let doc = db.get_local(MARKER_DOC).await?;
    Ok(doc.and_then(|d| d.get("marker").and_then(Value::as_str).map(str::to_string)))
}

/// Saves this node's checkpoint at most once per interval.
pub struct Checkpointer {
    db: Db,
    doc: String,
    node: String,
    marker: String,
    interval: Duration,
    saved: Option<Seq>,
    saved_at: Option<Instant>,
    pending: Option<Seq>,
}

impl Checkpointer {
    pub fn new(db: Db, node: &str, marker: String, interval: Duration) -> Checkpointer {
        Checkpointer {
            db,
            doc: format!("caldera-checkpoint-{node}"),
            node: node.to_string(),
            marker,
            interval,
            saved: None,
            saved_at: None,
            pending: None,
        }
    }

    /// A sequence the consumer reports durable.
    pub fn offer(&mut self, seq: Seq) {
        if self.saved.as_ref() != Some(&seq) {
            self.pending = Some(seq);
        }
    }

    /// When the pending checkpoint should be saved, if there is one.
    pub fn due_at(&self) -> Option<Instant> {
        self.pending.as_ref()?;
        Some(
            self.saved_at
                .map_or_else(Instant::now, |at| at + self.interval),
        )
    }

    /// Saves the pending checkpoint; returns the saved sequence.
    ///
    /// # Errors
    /// The write failed; the checkpoint stays pending.
    pub async fn save(&mut self) -> Result<Option<Seq>> {
        let Some(seq) = self.pending.clone() else {
            return Ok(None);
        };
        let updated_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let content = json!({
            "caldera": 1,
            "since": seq,
            "marker": self.marker,
            "node": self.node,
            "updated_at": updated_at,
        });
        self.saved_at = Some(Instant::now());
        self.db.put_local(&self.doc, &content).await?;
        self.pending = None;
        self.saved = Some(seq.clone());
        Ok(Some(seq))
    }
}
