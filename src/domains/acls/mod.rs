//! ACLs (Kazoo's `sysconf_acls` / `ecallmgr_fs_acls`): who may send SIP
//! without a digest challenge (`trusted`) and which gear is authoritative.
//!
//! Outputs, all pure functions of the sources (see `model` for the rules):
//!
//! * `acls:system`: the static `acls` of every section of
//!   `system_config/ecallmgr`, checked and normalised;
//! * `acls:sip_auth.NN` and `acls:offnet.NN` (`NN` < `model::SHARDS`): the
//!   dynamic entries of the source documents whose id hashes to shard `NN`
//!   (devices, peered resources, resources), already reduced by the
//!   precedence within the shard, plus the hostnames they name. Sharding
//!   keeps one device edit to one small output; a shard reads its members
//!   through the index view `acls:shard:NN`, not the whole source.
//!
//! Hostnames are resolved outside the builder: the resolver (`resolver`)
//! reads the hostnames the outputs list and feeds its answers back as
//! documents of the synthetic source `dns` (id = hostname), which builders
//! read like any other document, so a changed answer rebuilds exactly the
//! outputs that used that name. `service` merges the outputs for a node
//! (static section by node → zone → `default`, then the precedence) and
//! renders JSON and FreeSWITCH's `acl.conf`; it keeps the merge as
//! incremental state (`live`), so an edit costs in proportion to the edit.

#[cfg(test)]
mod dns_tests;
pub mod live;
#[cfg(test)]
mod live_tests;
pub mod model;
pub mod resolver;
pub mod service;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use crate::couch::Body;
use crate::domains::{Builder, Built, Domain};
use crate::rebuild::index::{Index, Reads, SourceDoc};

use model::{DNS, ECALLMGR, OFFNET, SIP_AUTH, SYSTEM_CONFIG, SYSTEM_KEY};

/// Sources fed by caldera itself rather than by a followed database.
pub const SYNTHETIC_SOURCES: [&str; 1] = [DNS];

/// Builds `acls:system` and the `acls:<source>.<shard>` outputs.
pub struct AclsBuilder;

impl Builder for AclsBuilder {
    fn domain(&self) -> Domain {
        Domain::Acls
    }

    fn sources(&self) -> &'static [&'static str] {
        &[SYSTEM_CONFIG, SIP_AUTH, OFFNET, DNS]
    }

    fn roots(&self, source: &str, id: &str, doc: Option<&SourceDoc>) -> Vec<String> {
        match source {
            SYSTEM_CONFIG if id == ECALLMGR => vec![SYSTEM_KEY.to_string()],
            // A shard exists while it has members (its build returns
            // `Absent` when they give nothing); membership itself is the
            // view `acls:shard:NN`.
            SIP_AUTH | OFFNET if doc.is_some() => {
                vec![model::shard_key(source, model::shard_of(id))]
            }
            _ => Vec::new(),
        }
    }

    fn all_keys(&self, index: &Index) -> Vec<String> {
        let mut keys = BTreeSet::from([SYSTEM_KEY.to_string()]);
        for source in [SIP_AUTH, OFFNET] {
            let shards: BTreeSet<u32> =
                index.docs(source).map(|d| model::shard_of(&d.id)).collect();
            keys.extend(shards.into_iter().map(|n| model::shard_key(source, n)));
        }
        keys.into_iter().collect()
    }

    fn view_keys(&self, source: &str, doc: &SourceDoc) -> Vec<String> {
        match source {
            SIP_AUTH | OFFNET => vec![shard_view(model::shard_of(&doc.id))],
            _ => Vec::new(),
        }
    }

    fn build(&self, key: &str, reads: &mut Reads<'_>) -> Built {
        if key == SYSTEM_KEY {
            let doc = reads.get(SYSTEM_CONFIG, ECALLMGR);
            let body = doc.map(|d| &d.body);
            if let Some(Body::Malformed(reason)) = body {
                return Built::Failed {
                    issues: vec![crate::domains::Issue::doc(
                        SYSTEM_CONFIG,
                        ECALLMGR,
                        reason.clone(),
                    )],
                };
            }
            let json = doc.and_then(|d| d.json());
            let mut dns = dns_reader(reads);
            let (content, issues) = model::system_content(json.as_ref(), &mut dns);
            return Built::Content { content, issues };
        }
        let Some((source, shard)) = model::parse_shard_key(key) else {
            return Built::Absent;
        };
        let members: Vec<_> = reads.view(source, &shard_view(shard)).collect();
        let mut built = model::Shard::default();
        for doc in members {
            match &doc.body {
                Body::Json(text) => {
                    let mut dns = dns_reader(reads);
                    built.add_doc(source, &doc.id, &text.parse(), &mut dns);
                }
                Body::Malformed(reason) => built.add_malformed(source, &doc.id, reason),
            }
        }
        match built.finish() {
            Some((content, issues)) => Built::Content { content, issues },
            None => Built::Absent,
        }
    }
}

/// The view key filing a source document under its shard.
fn shard_view(shard: u32) -> String {
    format!("acls:shard:{shard:02}")
}

/// Hostname → the resolver's answer, read (and so depended on) through
/// `reads`.
fn dns_reader<'r, 'a>(
    reads: &'r mut Reads<'a>,
) -> impl FnMut(&str) -> Option<model::DnsAnswer> + use<'r, 'a> {
    move |host: &str| {
        let doc = reads.get(DNS, host)?;
        doc.json().as_ref().map(model::dns_answer)
    }
}
