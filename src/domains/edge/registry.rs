//! The edge registry as cache outputs (pure): edges in `SHARDS` shards by
//! edge id (`edges.NN`: edge id → record) and their MAC addresses in
//! `SHARDS` shards by MAC (`macs.NN`: MAC → edge id), so a device call
//! finds an edge by id or by any MAC with two map lookups, and one registry
//! edit rewrites one or two small documents.
//!
//! A shard reads its members through the index views `edge:edges:NN` and
//! `edge:macs:NN`. Conflicts are settled the same way every time: among
//! documents claiming one edge id (or one MAC) the lowest document id wins;
//! the others are reported on the shard.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::manifest::Finding;
use super::model::{EdgeRecord, is_edge_doc, normalise_mac, parse_edge};

/// Shards of each kind.
pub const SHARDS: u32 = 64;

/// FNV-1a: stable across builds and platforms (the shard of a key is part
/// of the cache layout).
pub fn shard_of(key: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in key.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % SHARDS
}

pub fn edges_key(shard: u32) -> String {
    format!("edges.{shard:02}")
}

pub fn macs_key(shard: u32) -> String {
    format!("macs.{shard:02}")
}

pub fn edges_view(shard: u32) -> String {
    format!("edge:edges:{shard:02}")
}

pub fn macs_view(shard: u32) -> String {
    format!("edge:macs:{shard:02}")
}

/// The shard of an output key `edges.NN` / `macs.NN`.
pub fn parse_shard_key(key: &str) -> Option<(&'static str, u32)> {
    let (kind, number) = key.split_once('.')?;
    let kind = match kind {
        "edges" => "edges",
        "macs" => "macs",
        _ => return None,
    };
    let shard: u32 = number.parse().ok()?;
    (number.len() == 2 && shard < SHARDS).then_some((kind, shard))
}

/// The edge id a registry document claims, or its own id when it has none
/// (so an unreadable edge is still reported by some shard).
fn claimed_id<'a>(doc_id: &'a str, json: Option<&'a Value>) -> &'a str {
    json.and_then(|j| j.get("edge_id"))
        .and_then(Value::as_str)
        .unwrap_or(doc_id)
}

/// The view keys of a registry document (`None`: unreadable JSON).
pub fn view_keys(doc_id: &str, json: Option<&Value>) -> Vec<String> {
    if json.is_some_and(|j| !is_edge_doc(j)) {
        return Vec::new();
    }
    let mut keys = vec![edges_view(shard_of(claimed_id(doc_id, json)))];
    if let Some(macs) = json
        .and_then(|j| j.get("mac_addresses"))
        .and_then(Value::as_array)
    {
        for mac in macs
            .iter()
            .filter_map(|m| m.as_str().and_then(normalise_mac))
        {
            keys.push(macs_view(shard_of(&mac)));
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// The output keys a registry document belongs to.
pub fn output_keys(doc_id: &str, json: Option<&Value>) -> Vec<String> {
    view_keys(doc_id, json)
        .into_iter()
        .filter_map(|view| {
            let (kind, number) = view.strip_prefix("edge:")?.split_once(':')?;
            Some(format!("{kind}.{number}"))
        })
        .collect()
}

/// A registry document as a shard reads it.
pub type RegistryDoc<'a> = (&'a str, Result<&'a Value, &'a str>);

/// The edges of one shard: `{"edges": {edge_id: record}}`, and problems.
pub fn edges_shard<'a>(docs: impl IntoIterator<Item = RegistryDoc<'a>>) -> (Value, Vec<Finding>) {
    let mut edges: BTreeMap<String, EdgeRecord> = BTreeMap::new();
    let mut findings = Vec::new();
    for (id, body) in docs {
        let json = match body {
            Ok(json) => json,
            Err(reason) => {
                findings.push(Finding::doc(id, reason));
                continue;
            }
        };
        match parse_edge(id, json) {
            Err(reason) => findings.push(Finding::doc(id, reason)),
            Ok((record, problems)) => {
                findings.extend(problems.into_iter().map(|p| Finding::doc(id, p)));
                if let Some(winner) = edges.get(&record.edge_id) {
                    findings.push(Finding::doc(
                        id,
                        format!(
                            "edge_id {:?} is already registered by {}",
                            record.edge_id, winner.doc
                        ),
                    ));
                } else {
                    edges.insert(record.edge_id.clone(), record);
                }
            }
        }
    }
    (json!({ "edges": edges }), findings)
}

/// The MACs of one shard: `{"macs": {mac: edge_id}}`, and problems.
pub fn macs_shard<'a>(
    shard: u32,
    docs: impl IntoIterator<Item = RegistryDoc<'a>>,
) -> (Value, Vec<Finding>) {
    let mut macs: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut findings = Vec::new();
    for (id, body) in docs {
        // Unreadable documents are reported by their edges shard.
        let Ok(json) = body else { continue };
        let Ok((record, _)) = parse_edge(id, json) else {
            continue;
        };
        for mac in record.mac_addresses.iter().filter(|m| shard_of(m) == shard) {
            match macs.get(mac) {
                Some((edge_id, doc)) if *edge_id != record.edge_id => findings.push(Finding::doc(
                    id,
                    format!("MAC address {mac} already belongs to edge {edge_id} ({doc})"),
                )),
                Some(_) => {}
                None => {
                    macs.insert(mac.clone(), (record.edge_id.clone(), id.to_string()));
                }
            }
        }
    }
    let macs: BTreeMap<String, String> = macs.into_iter().map(|(m, (e, _))| (m, e)).collect();
    (json!({ "macs": macs }), findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_settle_conflicts_by_lowest_document_id() {
        let a = json!({"type": "edge", "edge_id": "a1b2c3", "edge_type": "mobile",
            "edge_sub_type": "c2cbus", "mac_addresses": ["00:11:22:33:44:55"]});
        let b = json!({"type": "edge", "edge_id": "a1b2c3", "edge_type": "static",
            "edge_sub_type": "default", "mac_addresses": []});
        let c = json!({"type": "edge", "edge_id": "d4e5f6", "edge_type": "static",
            "edge_sub_type": "default", "mac_addresses": ["00-11-22-33-44-55"]});
        let (content, findings) = edges_shard([("doc-a", Ok(&a)), ("doc-b", Ok(&b))]);
        assert_eq!(content["edges"]["a1b2c3"]["edge_type"], "mobile");
        assert_eq!(findings.len(), 1);
        assert!(findings[0].reason.contains("already registered by doc-a"));
        let shard = shard_of("00:11:22:33:44:55");
        let (content, findings) = macs_shard(shard, [("doc-a", Ok(&a)), ("doc-c", Ok(&c))]);
        assert_eq!(content["macs"]["00:11:22:33:44:55"], "a1b2c3");
        assert_eq!(findings.len(), 1);
        assert_eq!(output_keys("doc-c", Some(&c)), {
            let mut keys = vec![edges_key(shard_of("d4e5f6")), macs_key(shard)];
            keys.sort();
            keys
        });
        assert!(view_keys("x", Some(&json!({"type": "other"}))).is_empty());
        assert_eq!(parse_shard_key("edges.07"), Some(("edges", 7)));
        assert_eq!(parse_shard_key("edges.64"), None);
        assert_eq!(parse_shard_key("edges.7"), None);
    }
}
