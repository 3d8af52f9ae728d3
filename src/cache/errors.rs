//! The cache documents that carry errors, grouped and paged (`/v1/errors`,
//! the console's Errors view). Pure: the mirror hands its entries in under
//! its lock; nothing here reads or waits.
//!
//! Paging is by document id (`cursor` = the last id of the previous page),
//! so a page costs one pass over the entries and never sends the whole set.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::CacheEntry;

/// At most this many documents per page, whatever the caller asks.
pub const MAX_LIMIT: usize = 200;

/// Which documents a page lists.
#[derive(Debug, Default, Clone)]
pub struct ErrorFilter {
    pub domain: Option<String>,
    /// An entry matches when one of its errors names this source database.
    pub db: Option<String>,
}

impl ErrorFilter {
    fn matches(&self, entry: &CacheEntry) -> bool {
        self.domain.as_ref().is_none_or(|d| *d == entry.domain)
            && self
                .db
                .as_ref()
                .is_none_or(|db| error_dbs(entry).any(|e| e == db))
    }
}

/// One page.
#[derive(Debug)]
pub struct ErrorsPage {
    /// Documents with errors, in all (the filter aside).
    pub total: usize,
    /// Documents per (source database, domain), over every entry.
    pub groups: BTreeMap<(String, String), usize>,
    pub items: Vec<Arc<CacheEntry>>,
    /// The cursor of the next page, when there is one.
    pub next: Option<String>,
}

impl ErrorsPage {
    pub fn to_json(&self) -> Value {
        let groups: Vec<Value> = self
            .groups
            .iter()
            .map(|((db, domain), n)| json!({"db": db, "domain": domain, "documents": n}))
            .collect();
        let items: Vec<Value> = self
            .items
            .iter()
            .map(|e| json!({"id": e.id, "domain": e.domain, "key": e.key, "stale": e.stale, "errors": e.errors}))
            .collect();
        json!({"total": self.total, "groups": groups, "items": items, "next": self.next})
    }
}

/// The source databases an entry's errors name (`"?"` when one names none).
fn error_dbs(entry: &CacheEntry) -> impl Iterator<Item = &str> {
    entry
        .errors
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["db"].as_str().unwrap_or("?"))
}

/// The page of `entries` (every entry of the mirror) after `cursor`.
pub fn page<'a>(
    entries: impl Iterator<Item = &'a Arc<CacheEntry>>,
    filter: &ErrorFilter,
    cursor: Option<&str>,
    limit: usize,
) -> ErrorsPage {
    let limit = limit.clamp(1, MAX_LIMIT);
    let mut total = 0;
    let mut groups = BTreeMap::new();
    let mut matching = Vec::new();
    for entry in entries.filter(|e| e.has_errors()) {
        total += 1;
        let mut dbs: Vec<&str> = error_dbs(entry).collect();
        dbs.sort_unstable();
        dbs.dedup();
        for db in dbs {
            *groups
                .entry((db.to_string(), entry.domain.clone()))
                .or_insert(0) += 1;
        }
        if filter.matches(entry) && cursor.is_none_or(|c| entry.id.as_str() > c) {
            matching.push(entry.clone());
        }
    }
    // Only the first `limit + 1` ids need ordering, not every match.
    if matching.len() > limit + 1 {
        matching.select_nth_unstable_by(limit, |a, b| a.id.cmp(&b.id));
        matching.truncate(limit + 1);
    }
    matching.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let next = (matching.len() > limit).then(|| matching[limit - 1].id.clone());
    matching.truncate(limit);
    ErrorsPage {
        total,
        groups,
        items: matching,
        next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Content;

    fn entry(id: &str, domain: &str, errors: Value) -> Arc<CacheEntry> {
        Arc::new(CacheEntry {
            id: id.into(),
            rev: "1-a".into(),
            domain: domain.into(),
            key: id.split_once(':').map_or("", |(_, k)| k).into(),
            hash: String::new(),
            content: Content::of(&json!({})),
            errors,
            stale: false,
            bytes: 0,
        })
    }

    fn world() -> Vec<Arc<CacheEntry>> {
        let err = |db: &str| json!([{"db": db, "doc": "d", "reason": "bad"}]);
        vec![
            entry("sysconf:a", "sysconf", err("system_config")),
            entry("phones:unit:1", "phones", err("units")),
            entry("phones:unit:2", "phones", json!([])),
            entry("phones:unit:3", "phones", err("sip_auth")),
            entry("phones:unit:4", "phones", err("units")),
        ]
    }

    #[test]
    fn pages_follow_ids_and_groups_count_every_document() {
        let all = world();
        let first = page(all.iter(), &ErrorFilter::default(), None, 2);
        assert_eq!(first.total, 4);
        let ids: Vec<_> = first.items.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["phones:unit:1", "phones:unit:3"]);
        assert_eq!(first.next.as_deref(), Some("phones:unit:3"));
        assert_eq!(first.groups[&("units".into(), "phones".into())], 2);
        let second = page(
            all.iter(),
            &ErrorFilter::default(),
            first.next.as_deref(),
            2,
        );
        let ids: Vec<_> = second.items.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["phones:unit:4", "sysconf:a"]);
        assert_eq!(second.next, None);
    }

    #[test]
    fn filters_by_domain_and_database() {
        let all = world();
        let filter = ErrorFilter {
            domain: Some("phones".into()),
            db: Some("units".into()),
        };
        let found = page(all.iter(), &filter, None, 50);
        let ids: Vec<_> = found.items.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["phones:unit:1", "phones:unit:4"]);
        assert_eq!(found.total, 4);
    }
}
