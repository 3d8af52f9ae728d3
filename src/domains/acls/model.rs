//! Pure core of the ACLs: which source documents give which entries (Kazoo's
//! views `credentials/lookup_by_ip` and `resources/listing_active_by_weight`
//! and the static `acls` of `system_config/ecallmgr`), how an address string
//! is cut, the entry shape, the deterministic precedence, the merge served
//! to clients and FreeSWITCH's `acl.conf`. No IO: DNS answers come in as
//! plain data (`DnsAnswer`).
//!
//! Precedence (a deliberate improvement over Kazoo's "last message wins"):
//! static system entries are never overwritten, neither by an entry under
//! the same name nor by one for the same network in the same list; then
//! devices, then peered resources, then resources; between two entries of
//! the same class the lower `authorizing_id` wins.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::domains::Issue;
use crate::xml::push_escaped;

/// Source holding auth-by-ip devices and local (account) resources.
pub const SIP_AUTH: &str = "sip_auth";
/// Source holding global resources (carriers).
pub const OFFNET: &str = "offnet";
/// Source holding the `ecallmgr` category with the static `acls`.
pub const SYSTEM_CONFIG: &str = "system_config";
/// Synthetic source fed by the resolver: one document per hostname.
pub const DNS: &str = "dns";
/// The category document carrying the static ACLs.
pub const ECALLMGR: &str = "ecallmgr";
/// The output holding the static ACLs of every section.
pub const SYSTEM_KEY: &str = "system";
/// Number of shards per dynamic source; a document's entries live in the
/// output `<source>.<shard>` (see `shard_of`).
pub const SHARDS: u32 = 64;

const DEFAULT_SECTION: &str = "default";
const TRUSTED: &str = "trusted";

/// The shard of a source document: FNV-1a of its id, stable across runs,
/// versions and platforms (it names cache documents).
pub fn shard_of(id: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % SHARDS
}

/// The output key of a shard: `sip_auth.07`.
pub fn shard_key(source: &str, shard: u32) -> String {
    format!("{source}.{shard:02}")
}

/// The source and shard of a shard output key.
pub fn parse_shard_key(key: &str) -> Option<(&'static str, u32)> {
    let (source, shard) = key.split_once('.')?;
    let source = [SIP_AUTH, OFFNET].into_iter().find(|s| *s == source)?;
    let shard: u32 = shard.parse().ok()?;
    (shard < SHARDS && shard_key(source, shard) == key).then_some((source, shard))
}

/// Every output key the ACLs can have.
pub fn all_output_keys() -> Vec<String> {
    let mut keys = vec![SYSTEM_KEY.to_string()];
    for source in [SIP_AUTH, OFFNET] {
        keys.extend((0..SHARDS).map(|n| shard_key(source, n)));
    }
    keys
}

/// Where a dynamic entry comes from; the order is the precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// An auth-by-ip device (`credentials/lookup_by_ip`).
    Device,
    /// A peered local resource's gateway (`credentials/lookup_by_ip`).
    PeeredResource,
    /// A resource's gateway or `inbound_ips` (`listing_active_by_weight`).
    Resource,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Device, Class::PeeredResource, Class::Resource];

    pub fn name(self) -> &'static str {
        match self {
            Class::Device => "device",
            Class::PeeredResource => "peered_resource",
            Class::Resource => "resource",
        }
    }
}

/// A network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Net {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Net {
    pub fn host(addr: IpAddr) -> Net {
        Net {
            addr,
            prefix: max_prefix(addr),
        }
    }

    /// `198.51.100.23/32`, `2001:db8::1/128`, `198.18.40.0/28`.
    pub fn cidr(self) -> String {
        format!("{}/{}", self.addr, self.prefix)
    }

    /// Kazoo's key: the bare address for a host, the CIDR otherwise.
    pub fn key(self) -> String {
        if self.prefix == max_prefix(self.addr) {
            self.addr.to_string()
        } else {
            self.cidr()
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// What an address string names, once cut as Kazoo cuts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Net(Net),
    /// A hostname (lower case, no trailing dot) to resolve.
    Host(String),
}

/// Cuts an address string as Kazoo does, but strictly: everything from the
/// first `;` goes (`;transport=tcp`), then a `host:port` loses its port
/// (IPv6 literals keep their colons; `[v6]:port` works too). Accepts an IP
/// (v4 or v6), a CIDR, or a hostname.
///
/// # Errors
/// A human reason when the string is empty, a bad CIDR, a bad port, or
/// neither an address nor a hostname.
pub fn parse_target(raw: &str) -> Result<Target, String> {
    let text = raw.split(';').next().unwrap_or_default().trim();
    if text.is_empty() {
        return Err(format!("{raw:?} holds no address"));
    }
    if text.contains('/') {
        return parse_cidr(text).map(Target::Net);
    }
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(Target::Net(Net::host(addr)));
    }
    let host = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{raw:?}: unclosed '['"))?;
        let addr: Ipv6Addr = inside
            .parse()
            .map_err(|_| format!("{raw:?}: {inside:?} is not an IPv6 address"))?;
        if !after.is_empty() {
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| format!("{raw:?}: unexpected text after ']'"))?;
            check_port(raw, port)?;
        }
        return Ok(Target::Net(Net::host(IpAddr::V6(addr))));
    } else if let Some((host, port)) = text.split_once(':') {
        if port.contains(':') {
            return Err(format!("{raw:?} is not an address"));
        }
        check_port(raw, port)?;
        host
    } else {
        text
    };
    if let Ok(addr) = host.parse::<Ipv4Addr>() {
        return Ok(Target::Net(Net::host(IpAddr::V4(addr))));
    }
    check_hostname(raw, host).map(Target::Host)
}

fn parse_cidr(text: &str) -> Result<Net, String> {
    let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{text:?} is not a CIDR: {addr:?} is not an IP address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max_prefix(addr))
        .ok_or_else(|| {
            format!(
                "{text:?} is not a CIDR: the prefix length must be 0 to {}",
                max_prefix(addr)
            )
        })?;
    Ok(Net { addr, prefix })
}

fn check_port(raw: &str, port: &str) -> Result<(), String> {
    match port.parse::<u32>() {
        Ok(1..=65_535) => Ok(()),
        _ => Err(format!("{raw:?}: port {port:?} is not 1 to 65535")),
    }
}

fn check_hostname(raw: &str, host: &str) -> Result<String, String> {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let all_digits = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if host.len() > 253 || all_digits || !host.split('.').all(label_ok) {
        return Err(format!("{raw:?} is neither an IP address nor a hostname"));
    }
    Ok(host)
}

/// A hostname's DNS answer, as the resolver stores it in the `dns` source.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsAnswer {
    /// The addresses (the last good ones when `error` is set), sorted.
    pub addresses: Vec<IpAddr>,
    /// Why the last lookup failed, if it did.
    pub error: Option<String>,
}

/// The body of a `dns` document. `resolved_at` is for people only: no
/// build output depends on it.
pub fn dns_body(answer: &DnsAnswer, resolved_at: u64) -> Value {
    let addresses: Vec<String> = answer.addresses.iter().map(ToString::to_string).collect();
    json!({ "addresses": addresses, "error": answer.error, "resolved_at": resolved_at })
}

/// Reads a `dns` document body.
pub fn dns_answer(body: &Value) -> DnsAnswer {
    let mut addresses: Vec<IpAddr> = body
        .get("addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str()?.parse().ok())
        .collect();
    addresses.sort();
    addresses.dedup();
    let error = body
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string);
    DnsAnswer { addresses, error }
}

/// Looks a hostname up in the `dns` source (`None`: not resolved yet).
pub type DnsLookup<'a> = dyn FnMut(&str) -> Option<DnsAnswer> + 'a;

/// The hostnames an output names, with the addresses it used for each
/// (what the resolver refreshes, and seeds itself from after a restart).
pub type Hostnames = BTreeMap<String, Vec<String>>;

fn note_host(hostnames: &mut Hostnames, host: &str, answer: Option<&DnsAnswer>) {
    let addresses = answer.map_or_else(Vec::new, |a| {
        a.addresses.iter().map(ToString::to_string).collect()
    });
    hostnames.insert(host.to_string(), addresses);
}

/// The hostnames (and the addresses used) an output's content names.
pub fn content_hostnames(content: &Value) -> impl Iterator<Item = (&str, Vec<IpAddr>)> {
    content
        .get("hostnames")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(host, addresses)| {
            let addresses = addresses
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str()?.parse().ok())
                .collect();
            (host.as_str(), addresses)
        })
}

/// JavaScript truthiness, as Kazoo's CouchDB views test fields.
fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

/// Kazoo's `kz_json:is_true`: `true` or `"true"`.
fn is_true(value: Option<&Value>) -> bool {
    matches!(value, Some(Value::Bool(true))) || value.and_then(Value::as_str) == Some("true")
}

fn text<'v>(doc: &'v Value, path: &[&str]) -> Option<&'v str> {
    let mut value = doc;
    for name in path {
        value = value.get(name)?;
    }
    value.as_str()
}

/// One candidate entry: its class and Kazoo-shaped entry.
#[derive(Debug, Clone, PartialEq)]
struct Candidate {
    class: Class,
    entry: Map<String, Value>,
}

impl Candidate {
    /// The total order of the precedence: class, then `authorizing_id`,
    /// then the entry's JSON (any remaining tie is an identical entry).
    fn rank(&self) -> (Class, &str, String) {
        let id = self
            .entry
            .get("authorizing_id")
            .and_then(Value::as_str)
            .unwrap_or("");
        (
            self.class,
            id,
            Value::Object(self.entry.clone()).to_string(),
        )
    }
}

/// The entries of one shard, built document by document.
#[derive(Debug, Default)]
pub struct Shard {
    candidates: BTreeMap<String, Candidate>,
    hostnames: Hostnames,
    issues: Vec<Issue>,
}

impl Shard {
    /// Adds everything one source document contributes.
    pub fn add_doc(&mut self, source: &str, id: &str, doc: &Value, dns: &mut DnsLookup<'_>) {
        if !doc.is_object() {
            self.issues
                .push(Issue::doc(source, id, "the document is not a JSON object"));
            return;
        }
        if source == SIP_AUTH {
            self.lookup_by_ip(source, id, doc, dns);
        }
        self.listing_active_by_weight(source, id, doc, dns);
    }

    /// Records a document that could not be parsed.
    pub fn add_malformed(&mut self, source: &str, id: &str, reason: &str) {
        self.issues.push(Issue::doc(source, id, reason));
    }

    /// `credentials/lookup_by_ip`: auth-by-ip devices and peered resources.
    fn lookup_by_ip(&mut self, source: &str, id: &str, doc: &Value, dns: &mut DnsLookup<'_>) {
        if truthy(doc.get("pvt_deleted")) || doc.get("enabled") == Some(&Value::Bool(false)) {
            return;
        }
        let account = text(doc, &["pvt_account_id"]);
        match text(doc, &["pvt_type"]) {
            Some("device") => {
                let sip = doc.get("sip");
                let ip = sip.and_then(|s| s.get("ip"));
                if !truthy(ip) || text(doc, &["sip", "method"]) != Some("ip") {
                    return;
                }
                let inbound = sip.and_then(|s| s.get("inbound_ip"));
                let key = if truthy(inbound) { inbound } else { ip };
                let kind = if text(doc, &["device_type"]) == Some("mobile") {
                    "mobile"
                } else {
                    "device"
                };
                let field = if truthy(inbound) {
                    "sip.inbound_ip"
                } else {
                    "sip.ip"
                };
                let Some(raw) = self.string_field(source, id, field, key) else {
                    return;
                };
                self.add_address(source, id, field, raw, Class::Device, account, kind, dns);
            }
            Some("resource") if truthy(doc.get("peer")) => {
                let Some(gateways) = self.gateways(source, id, doc) else {
                    return;
                };
                for (n, gateway) in gateways.iter().enumerate() {
                    let inbound = gateway.get("inbound_ip");
                    let (field, value) = if truthy(inbound) {
                        (format!("gateways[{n}].inbound_ip"), inbound)
                    } else if truthy(gateway.get("server")) {
                        (format!("gateways[{n}].server"), gateway.get("server"))
                    } else {
                        continue;
                    };
                    let Some(raw) = self.string_field(source, id, &field, value) else {
                        continue;
                    };
                    let class = Class::PeeredResource;
                    self.add_address(source, id, &field, raw, class, account, "resource", dns);
                }
            }
            _ => {}
        }
    }

    /// `resources/listing_active_by_weight`: enabled resources' enabled
    /// gateways (`enabled` strictly true, as Kazoo's `is_true`) and their
    /// legacy `inbound_ips`.
    fn listing_active_by_weight(
        &mut self,
        source: &str,
        id: &str,
        doc: &Value,
        dns: &mut DnsLookup<'_>,
    ) {
        if text(doc, &["pvt_type"]) != Some("resource")
            || !truthy(doc.get("enabled"))
            || truthy(doc.get("pvt_deleted"))
        {
            return;
        }
        match doc.get("inbound_ips") {
            None | Some(Value::Null) => {}
            Some(Value::Array(ips)) => {
                for (n, ip) in ips.iter().enumerate() {
                    let field = format!("inbound_ips[{n}]");
                    if let Some(raw) = self.string_field(source, id, &field, Some(ip)) {
                        let class = Class::Resource;
                        self.add_address(source, id, &field, raw, class, None, "resource", dns);
                    }
                }
            }
            Some(_) => self
                .issues
                .push(Issue::doc(source, id, "inbound_ips is not a list")),
        }
        let Some(gateways) = self.gateways(source, id, doc) else {
            return;
        };
        for (n, gateway) in gateways.iter().enumerate() {
            if !is_true(gateway.get("enabled")) {
                continue;
            }
            let field = format!("gateways[{n}].server");
            if let Some(raw) = self.string_field(source, id, &field, gateway.get("server")) {
                let class = Class::Resource;
                self.add_address(source, id, &field, raw, class, None, "resource", dns);
            }
        }
    }

    fn gateways<'d>(&mut self, source: &str, id: &str, doc: &'d Value) -> Option<&'d [Value]> {
        match doc.get("gateways") {
            None | Some(Value::Null) => None,
            Some(Value::Array(gateways)) => Some(gateways),
            Some(_) => {
                self.issues
                    .push(Issue::doc(source, id, "gateways is not a list"));
                None
            }
        }
    }

    fn string_field<'d>(
        &mut self,
        source: &str,
        id: &str,
        field: &str,
        value: Option<&'d Value>,
    ) -> Option<&'d str> {
        match value {
            Some(Value::String(s)) => Some(s),
            None | Some(Value::Null) => None,
            Some(other) => {
                let reason = format!("{field} is not a string: {other}");
                self.issues.push(Issue::doc(source, id, reason));
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_address(
        &mut self,
        source: &str,
        id: &str,
        field: &str,
        raw: &str,
        class: Class,
        account: Option<&str>,
        kind: &str,
        dns: &mut DnsLookup<'_>,
    ) {
        let nets = match parse_target(raw) {
            Ok(Target::Net(net)) => vec![net],
            Ok(Target::Host(host)) => {
                let answer = dns(&host);
                note_host(&mut self.hostnames, &host, answer.as_ref());
                match answer {
                    None => {
                        let reason = format!("{field} {host:?}: not resolved yet");
                        self.issues.push(Issue::doc(source, id, reason));
                        return;
                    }
                    Some(answer) => {
                        if let Some(error) = &answer.error {
                            let keeping = if answer.addresses.is_empty() {
                                "no address to use".to_string()
                            } else {
                                "keeping the last good addresses".to_string()
                            };
                            let reason = format!("{field} {host:?}: {error}; {keeping}");
                            self.issues.push(Issue::doc(source, id, reason));
                        }
                        answer.addresses.into_iter().map(Net::host).collect()
                    }
                }
            }
            Err(reason) => {
                self.issues
                    .push(Issue::doc(source, id, format!("{field}: {reason}")));
                return;
            }
        };
        for net in nets {
            let mut entry = Map::new();
            entry.insert("type".into(), json!("allow"));
            entry.insert("network-list-name".into(), json!(TRUSTED));
            entry.insert("cidr".into(), json!(net.cidr()));
            if let Some(account) = account {
                entry.insert("account_id".into(), json!(account));
            }
            entry.insert("authorizing_id".into(), json!(id));
            entry.insert("authorizing_type".into(), json!(kind));
            self.offer(net.key(), Candidate { class, entry });
        }
    }

    fn offer(&mut self, key: String, candidate: Candidate) {
        match self.candidates.get(&key) {
            Some(held) if held.rank() <= candidate.rank() => {}
            _ => {
                self.candidates.insert(key, candidate);
            }
        }
    }

    /// The shard's cache content (`None` when it has nothing at all), and
    /// its problems.
    pub fn finish(self) -> Option<(Value, Vec<Issue>)> {
        if self.candidates.is_empty() && self.hostnames.is_empty() && self.issues.is_empty() {
            return None;
        }
        let mut content = Map::new();
        for class in Class::ALL {
            let entries: Map<String, Value> = self
                .candidates
                .iter()
                .filter(|(_, c)| c.class == class)
                .map(|(key, c)| (key.clone(), Value::Object(c.entry.clone())))
                .collect();
            content.insert(class.name().into(), Value::Object(entries));
        }
        content.insert("hostnames".into(), json!(self.hostnames));
        let mut issues = self.issues;
        issues.sort();
        issues.dedup();
        Some((Value::Object(content), issues))
    }
}

/// The static ACLs of the `ecallmgr` category: for every section that has
/// an `acls` key, its entries checked and normalised (a bare IP becomes
/// `IP/32`, a hostname its resolved `/32`s and `/128`s, as Kazoo 4.3 does).
/// `doc` is `None` when the category does not exist.
pub fn system_content(doc: Option<&Value>, dns: &mut DnsLookup<'_>) -> (Value, Vec<Issue>) {
    let mut issues = Vec::new();
    let mut sections = Map::new();
    let mut hostnames = Hostnames::new();
    let issue = |reason: String| Issue::doc(SYSTEM_CONFIG, ECALLMGR, reason);
    if let Some(doc) = doc {
        let Some(fields) = doc.as_object() else {
            issues.push(issue("the document is not a JSON object".into()));
            return (json!({ "sections": {}, "hostnames": {} }), issues);
        };
        for (section, value) in fields {
            if section.starts_with('_') || section.starts_with("pvt_") {
                continue;
            }
            let Some(acls) = value.as_object().and_then(|s| s.get("acls")) else {
                continue;
            };
            let mut entries = Map::new();
            match acls {
                Value::Object(acls) => {
                    for (name, entry) in acls {
                        let checked = system_entry(entry, &mut hostnames, dns);
                        match checked {
                            Ok((entry, problem)) => {
                                entries.insert(name.clone(), entry);
                                if let Some(problem) = problem {
                                    issues.push(issue(format!("{section}.acls.{name}: {problem}")));
                                }
                            }
                            Err(reason) => {
                                issues.push(issue(format!("{section}.acls.{name}: {reason}")));
                            }
                        }
                    }
                }
                Value::Null => {}
                _ => issues.push(issue(format!(
                    "{section}.acls is not an object; this section gives no static entries"
                ))),
            }
            sections.insert(section.clone(), Value::Object(entries));
        }
    }
    let content = json!({ "sections": sections, "hostnames": hostnames });
    (content, issues)
}

/// One static entry, checked; `Ok` may carry a problem that did not stop it
/// (a hostname that failed to resolve and kept its last good addresses).
fn system_entry(
    entry: &Value,
    hostnames: &mut Hostnames,
    dns: &mut DnsLookup<'_>,
) -> Result<(Value, Option<String>), String> {
    let Some(fields) = entry.as_object() else {
        return Err("the entry is not an object".into());
    };
    let mut out = fields.clone();
    match fields.get("type") {
        None => {
            out.insert("type".into(), json!("allow"));
        }
        Some(Value::String(t)) if t == "allow" || t == "deny" => {}
        Some(other) => return Err(format!("type {other} is not \"allow\" or \"deny\"")),
    }
    match fields.get("network-list-name") {
        Some(Value::String(name)) if !name.trim().is_empty() && !name.contains(['<', '"']) => {}
        _ => return Err("network-list-name is missing or not a list name".into()),
    }
    let (texts, was_list) = match fields.get("cidr") {
        Some(Value::String(s)) => (vec![s.as_str()], false),
        Some(Value::Array(items)) if !items.is_empty() => {
            let texts: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            (texts.ok_or("cidr holds a non-string")?, true)
        }
        _ => return Err("cidr is missing, empty or not a string or a list".into()),
    };
    let mut cidrs = Vec::new();
    let mut problem = None;
    let mut resolved = false;
    for text in texts {
        match parse_target(text)? {
            Target::Net(net) => cidrs.push(net.cidr()),
            Target::Host(host) => {
                resolved = true;
                let answer = dns(&host);
                note_host(hostnames, &host, answer.as_ref());
                match answer {
                    None => problem = Some(format!("{host:?}: not resolved yet")),
                    Some(answer) => {
                        if let Some(error) = answer.error {
                            problem = Some(format!("{host:?}: {error}"));
                        }
                        cidrs.extend(answer.addresses.into_iter().map(|a| Net::host(a).cidr()));
                    }
                }
            }
        }
    }
    let cidr = if was_list || resolved {
        json!(cidrs)
    } else {
        json!(cidrs.pop().unwrap_or_default())
    };
    out.insert("cidr".into(), cidr);
    Ok((Value::Object(out), problem))
}

/// The static section used for `node`: the node's, the zone's, then
/// `default`, the whole value of the first one present (as sysconf get).
pub fn system_section<'a>(
    system: &'a Value,
    node: &str,
    zone: &str,
) -> Option<&'a Map<String, Value>> {
    let sections = system.get("sections")?.as_object()?;
    let order: Vec<&str> = if node == DEFAULT_SECTION {
        vec![DEFAULT_SECTION]
    } else {
        vec![node, zone, DEFAULT_SECTION]
    };
    order
        .into_iter()
        .find_map(|name| sections.get(name))
        .and_then(Value::as_object)
}

/// One dynamic entry of a shard output, parsed and pre-rendered once per
/// version of the shard, so serving after an edit re-reads only the
/// changed shard and merges by concatenation.
#[derive(Debug, Clone, PartialEq)]
pub struct Digested {
    /// Kazoo's key, always `net.key()` (one network, one key).
    pub key: String,
    pub entry: Value,
    pub(super) class: Class,
    pub(super) net: Net,
    pub(super) list: String,
    authorizing_id: String,
    /// `"key":{entry}` as JSON text.
    pub(super) json: String,
    /// The `<node …/>` line of `acl.conf`.
    pub(super) xml: String,
}

/// A shard output's entries, digested (see `Digested`), in address order,
/// at most one per network (the shard's winner under the precedence).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Digest {
    pub entries: Vec<Arc<Digested>>,
}

/// Digests a shard output's content. An entry is filed under the network
/// of its first CIDR and keyed by that network (the builder always keys it
/// so; a cache document keyed otherwise cannot give two keys for one
/// network). Entries without a usable CIDR are left out.
pub fn digest(content: &Value) -> Digest {
    let mut entries = Vec::new();
    for class in Class::ALL {
        let Some(found) = content.get(class.name()).and_then(Value::as_object) else {
            continue;
        };
        for entry in found.values() {
            let Some(net) = cidr_texts(entry).first().and_then(|c| parse_cidr(c).ok()) else {
                continue;
            };
            entries.push(Digested::new(class, net, entry));
        }
    }
    entries.sort_unstable_by(|a, b| a.net.cmp(&b.net).then_with(|| a.rank().cmp(&b.rank())));
    // The first of each network is its winner: drop the others.
    entries.dedup_by(|later, earlier| later.net == earlier.net);
    Digest {
        entries: entries.into_iter().map(Arc::new).collect(),
    }
}

impl Digested {
    fn new(class: Class, net: Net, entry: &Value) -> Digested {
        let key = net.key();
        let mut xml = String::with_capacity(64);
        node_lines(&mut xml, entry);
        Digested {
            json: format!("{}:{entry}", Value::String(key.clone())),
            key,
            class,
            net,
            list: list_name(entry).to_string(),
            authorizing_id: text(entry, &["authorizing_id"])
                .unwrap_or_default()
                .to_string(),
            xml,
            entry: entry.clone(),
        }
    }

    /// The precedence as a total order, lower wins: class, then
    /// `authorizing_id`, then the entry's JSON (a remaining tie is an
    /// identical entry).
    pub(super) fn rank(&self) -> (Class, &str, &str) {
        (self.class, &self.authorizing_id, &self.json)
    }

    /// `true` when `self` wins over `other` for the same network.
    pub(super) fn wins(&self, other: &Digested) -> bool {
        self.rank() < other.rank()
    }
}

/// What one static entry overrules: the dynamic entry at a network when it
/// has the static entry's name, or is in the static entry's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shadow<'a> {
    Named(&'a str),
    InList(&'a str),
}

impl Shadow<'_> {
    /// Whether the dynamic entry `entry` (at the shadow's network) is
    /// overruled.
    pub fn covers(self, entry: &Digested) -> bool {
        match self {
            Shadow::Named(name) => entry.key == name,
            Shadow::InList(list) => entry.list == list,
        }
    }
}

/// The networks the static entries of a section overrule, and how.
pub fn shadows(statics: &Map<String, Value>) -> Vec<(Net, Shadow<'_>)> {
    let mut found = Vec::new();
    for (name, entry) in statics {
        if let Ok(Target::Net(net)) = parse_target(name) {
            found.push((net, Shadow::Named(name)));
        }
        let list = list_name(entry);
        for cidr in cidr_texts(entry) {
            if let Ok(net) = parse_cidr(cidr) {
                found.push((net, Shadow::InList(list)));
            }
        }
    }
    found
}

/// The ACLs served to one node: the winning dynamic entries (by address)
/// and the static entries of the node's section (by name).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Merged<'a> {
    dynamic: Vec<&'a Digested>,
    statics: Vec<(&'a str, &'a Value)>,
}

/// Merges the system output and the digested shards for `node`/`zone` with
/// the deterministic precedence, from scratch; the result does not depend
/// on the order of `shards`. (`service` keeps the same merge as
/// incremental state, `live::LiveMerge`; this is its reference.)
pub fn merge<'a>(
    system: Option<&'a Value>,
    shards: &[&'a Digest],
    node: &str,
    zone: &str,
) -> Merged<'a> {
    let statics = system.and_then(|s| system_section(s, node, zone));
    // Every shard is in address order: a k-way merge keeps that order,
    // and puts the candidates for one network next to each other.
    let size = shards.iter().map(|s| s.entries.len()).sum();
    let mut heads: BinaryHeap<Reverse<(Net, usize, usize)>> = shards
        .iter()
        .enumerate()
        .filter_map(|(n, shard)| Some(Reverse((shard.entries.first()?.net, n, 0))))
        .collect();
    let mut dynamic: Vec<&Digested> = Vec::with_capacity(size);
    while let Some(Reverse((_, n, at))) = heads.pop() {
        let entry = &*shards[n].entries[at];
        if let Some(next) = shards[n].entries.get(at + 1) {
            heads.push(Reverse((next.net, n, at + 1)));
        }
        match dynamic.last_mut() {
            Some(last) if last.net == entry.net => {
                if entry.wins(last) {
                    *last = entry;
                }
            }
            _ => dynamic.push(entry),
        }
    }
    // Static entries are never overruled. Done per static entry (a few)
    // by binary search (one dynamic entry per network), not per dynamic
    // one (many).
    let mut shadowed = vec![false; dynamic.len()];
    for (net, shadow) in statics.map(shadows).unwrap_or_default() {
        if let Ok(at) = dynamic.binary_search_by(|e| e.net.cmp(&net))
            && shadow.covers(dynamic[at])
        {
            shadowed[at] = true;
        }
    }
    let mut flags = shadowed.into_iter();
    dynamic.retain(|_| !flags.next().unwrap_or(false));
    let statics = statics
        .into_iter()
        .flatten()
        .map(|(name, entry)| (name.as_str(), entry))
        .collect();
    Merged { dynamic, statics }
}

impl<'a> Merged<'a> {
    /// `list → (dynamic entries, static entries)`, lists by name.
    #[allow(clippy::type_complexity)]
    fn lists(&self) -> BTreeMap<&'a str, (Vec<&'a Digested>, Vec<(&'a str, &'a Value)>)> {
        let mut lists: BTreeMap<&str, (Vec<&Digested>, Vec<(&str, &Value)>)> = BTreeMap::new();
        for entry in &self.dynamic {
            lists.entry(entry.list.as_str()).or_default().0.push(entry);
        }
        for (name, entry) in &self.statics {
            lists
                .entry(list_name(entry))
                .or_default()
                .1
                .push((name, entry));
        }
        lists
    }

    /// Kazoo's merged object, `name or address → entry` (a static entry
    /// and a dynamic one never share a key: the static one wins).
    pub fn object(&self) -> Map<String, Value> {
        let dynamic = self
            .dynamic
            .iter()
            .map(|e| (e.key.clone(), e.entry.clone()));
        let statics = self
            .statics
            .iter()
            .map(|(name, entry)| (name.to_string(), (*entry).clone()));
        dynamic.chain(statics).collect()
    }

    /// The lists as JSON text: all of them, `{list: {name or address:
    /// entry}}`, and each one. Within a list: the dynamic entries by
    /// address, then the static ones by name.
    pub fn lists_json(&self) -> (String, BTreeMap<String, String>) {
        let mut each = BTreeMap::new();
        for (list, (dynamic, statics)) in self.lists() {
            let size: usize = dynamic.iter().map(|e| e.json.len() + 1).sum();
            let mut json = String::with_capacity(size + 2);
            json.push('{');
            let mut first = true;
            for entry in dynamic {
                if !std::mem::take(&mut first) {
                    json.push(',');
                }
                json.push_str(&entry.json);
            }
            for (name, entry) in statics {
                if !std::mem::take(&mut first) {
                    json.push(',');
                }
                json.push_str(&static_json(name, entry));
            }
            json.push('}');
            each.insert(list.to_string(), json);
        }
        let mut all = String::with_capacity(each.values().map(|j| j.len() + 32).sum());
        all.push('{');
        for (n, (list, json)) in each.iter().enumerate() {
            if n > 0 {
                all.push(',');
            }
            push_json_key(&mut all, list);
            all.push_str(json);
        }
        all.push('}');
        (all, each)
    }

    /// FreeSWITCH's `acl.conf` (Kazoo 4.3's shape: one `<list>` per list
    /// with `default="deny"`, one `<node>` per CIDR, `ports` when the entry
    /// has them). FreeSWITCH lets the later of two equal prefixes win: the
    /// static entries come last, so they are never overruled.
    pub fn freeswitch_xml(&self) -> String {
        let lists = self.lists();
        let size: usize = self.dynamic.iter().map(|e| e.xml.len()).sum();
        let mut xml = String::with_capacity(size + 64 * self.statics.len() + 512);
        xml.push_str(XML_HEAD);
        for (list, (dynamic, statics)) in lists {
            push_list_open(&mut xml, list);
            for entry in dynamic {
                xml.push_str(&entry.xml);
            }
            for (_, entry) in statics {
                node_lines(&mut xml, entry);
            }
            xml.push_str(XML_LIST_CLOSE);
        }
        xml.push_str(XML_TAIL);
        xml
    }
}

/// `acl.conf` up to the first `<list>`.
pub(super) const XML_HEAD: &str = concat!(
    "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n",
    "<document type=\"freeswitch/xml\">\n  <section name=\"configuration\">\n",
    "    <configuration name=\"acl.conf\" description=\"caldera generated ACL lists\">\n",
    "      <network-lists>\n"
);
/// `acl.conf` after the last `</list>`.
pub(super) const XML_TAIL: &str =
    "      </network-lists>\n    </configuration>\n  </section>\n</document>\n";
/// The end of one `<list>`.
pub(super) const XML_LIST_CLOSE: &str = "        </list>\n";

/// The start of one `<list>`.
pub(super) fn push_list_open(xml: &mut String, list: &str) {
    xml.push_str("        <list name=\"");
    push_escaped(xml, list);
    xml.push_str("\" default=\"deny\">\n");
}

/// `"name":` as JSON text.
pub(super) fn push_json_key(json: &mut String, name: &str) {
    json.push_str(&Value::String(name.to_string()).to_string());
    json.push(':');
}

/// A static entry as JSON text, `"name":{entry}`.
pub(super) fn static_json(name: &str, entry: &Value) -> String {
    format!("{}:{entry}", Value::String(name.to_string()))
}

/// The `<node>` lines of one entry (one per CIDR).
pub(super) fn node_lines(xml: &mut String, entry: &Value) {
    let kind = entry.get("type").and_then(Value::as_str).unwrap_or("allow");
    let ports = match entry.get("ports") {
        Some(Value::Array(ports)) if !ports.is_empty() => {
            let ports: Vec<String> = ports
                .iter()
                .map(|p| match p {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            let mut text = String::from(" ports=\"");
            push_escaped(&mut text, &ports.join(","));
            text.push('"');
            text
        }
        _ => String::new(),
    };
    for cidr in cidr_texts(entry) {
        xml.push_str("          <node type=\"");
        push_escaped(xml, kind);
        xml.push_str("\" cidr=\"");
        push_escaped(xml, cidr);
        xml.push('"');
        xml.push_str(&ports);
        xml.push_str("/>\n");
    }
}

pub(super) fn list_name(entry: &Value) -> &str {
    entry
        .get("network-list-name")
        .and_then(Value::as_str)
        .unwrap_or(TRUSTED)
}

fn cidr_texts(entry: &Value) -> Vec<&str> {
    match entry.get("cidr") {
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}
