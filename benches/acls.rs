//! ACL benchmark (run: `cargo bench --bench acls`).
//!
//! At the pure level, as the engine runs the builder: 50k auth-by-ip
//! devices and 5k resources (4k global in `offnet`, 1k local in
//! `sip_auth`) whose gateways name 2k distinct hostnames, with the DNS
//! answers already in the `dns` source. Measures the full build (every
//! output built and hashed as the writer hashes it), the service's first
//! answers, one device edit to visible (rebuild of the dirty output, hash,
//! the service's incremental merge and renderings) side by side with a
//! from-scratch merge of the same outputs (what the service did before),
//! Kazoo's merged object per sysconf request, memoised `freeswitch.xml`
//! answers per second from the service, and resolving the 2k hostnames
//! against a loopback hickory-server with the daemon's resolver.

#[path = "acl_data.rs"]
mod acl_data;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caldera::cache::mirror::Mirror;
use caldera::cache::{CacheEntry, content_hash, doc_id};
use caldera::couch::Body;
use caldera::domains::acls::AclsBuilder;
use caldera::domains::acls::live::LiveMerge;
use caldera::domains::acls::model::{self, DNS, OFFNET, SIP_AUTH, SYSTEM_CONFIG};
use caldera::domains::acls::resolver::{DnsSettings, Outcome, Resolver};
use caldera::domains::acls::service::AclsService;
use caldera::domains::{Builder, Built, Domain};
use caldera::rebuild::deps::DepGraph;
use caldera::rebuild::index::{Dep, Index, Reads, SourceDoc, SourceId};
use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use serde_json::{Value, json};

use acl_data::{HOSTNAMES, device, host_addresses, resource};

const DEVICES: usize = 50_000;
const RESOURCES: usize = 5_000;
const EDITS: usize = 200;

fn put(index: &mut Index, source: &str, doc: Value, rev: u64) -> Option<Arc<SourceDoc>> {
    let id = doc["_id"].as_str().unwrap_or_default().to_string();
    index.upsert(
        &SourceId::from(source),
        SourceDoc {
            id,
            rev: format!("{rev}-b"),
            body: Body::of(&doc),
        },
    )
}

fn index() -> Index {
    let mut index = Index::with_keyer(Arc::new(|source: &str, doc: &SourceDoc| {
        AclsBuilder.view_keys(source, doc)
    }));
    for n in 0..DEVICES {
        put(&mut index, SIP_AUTH, device(n), 1);
    }
    for n in 0..RESOURCES {
        let source = if n % 5 == 0 { SIP_AUTH } else { OFFNET };
        put(&mut index, source, resource(n), 1);
    }
    for h in 0..HOSTNAMES {
        let addresses: Vec<String> = host_addresses(h).iter().map(|a| a.to_string()).collect();
        let body = json!({ "_id": format!("gw{h}.bench.test"), "addresses": addresses, "error": null, "resolved_at": 1 });
        put(&mut index, DNS, body, 1);
    }
    let system = json!({ "_id": "ecallmgr", "default": { "acls": {
        "kamailio-1": {"type": "allow", "network-list-name": "authoritative", "cidr": "10.255.0.11/32"},
        "scanner": {"type": "deny", "network-list-name": "trusted", "cidr": "10.0.0.9/32"} } } });
    put(&mut index, SYSTEM_CONFIG, system, 1);
    index
}

/// Builds `keys` on `workers` threads, as the engine does; returns the
/// outputs with their dependencies.
fn build(index: &Index, keys: &[String], workers: usize) -> Vec<(String, Built, BTreeSet<Dep>)> {
    let one = |key: &String| {
        let mut reads = Reads::new(index);
        let built = AclsBuilder.build(key, &mut reads);
        (key.clone(), built, reads.finish().0)
    };
    if workers < 2 || keys.len() < 2 {
        return keys.iter().map(one).collect();
    }
    let chunk = keys.len().div_ceil(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = keys
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// What the writer does per output: size check and hash.
fn hash(built: &Built) -> Option<(String, usize)> {
    let Built::Content { content, .. } = built else {
        return None;
    };
    let size = serde_json::to_vec(content).map_or(0, |b| b.len());
    Some((content_hash(content, &json!([]), false), size))
}

fn entry(key: &str, built: &Built, rev: u64) -> Option<CacheEntry> {
    let Built::Content { content, .. } = built else {
        return None;
    };
    let (hash, bytes) = hash(built)?;
    Some(CacheEntry {
        id: doc_id(Domain::Acls, key),
        rev: format!("{rev}-b"),
        domain: "acls".into(),
        key: key.to_string(),
        hash,
        content: content.clone().into(),
        errors: json!([]),
        stale: false,
        bytes,
    })
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "ACL benchmark: {DEVICES} devices, {RESOURCES} resources, {HOSTNAMES} hostnames, {workers} workers"
    );
    let started = Instant::now();
    let mut index = index();
    println!("  index loaded in {:.0?}", started.elapsed());

    // Full build, as the engine's first pass (build + writer's hash).
    let started = Instant::now();
    let keys = AclsBuilder.all_keys(&index);
    let outputs = build(&index, &keys, workers);
    let built = started.elapsed();
    let hashed: Vec<_> = outputs.iter().filter_map(|(_, b, _)| hash(b)).collect();
    let full = started.elapsed();
    let max_bytes = hashed.iter().map(|(_, s)| *s).max().unwrap_or(0);
    let total_bytes: usize = hashed.iter().map(|(_, s)| *s).sum();
    println!(
        "  full build: {} outputs in {:.0?} (built {:.0?}, hashed {:.0?}); {:.0} source entries/s; largest output {} kB, total {} MB",
        outputs.len(),
        full,
        built,
        full - built,
        (DEVICES + 2 * RESOURCES) as f64 / full.as_secs_f64(),
        max_bytes / 1000,
        total_bytes / 1_000_000
    );

    let mut deps = DepGraph::default();
    let mirror = Arc::new(Mirror::default());
    let mut entries = Vec::new();
    for (key, built, read) in &outputs {
        deps.set((Domain::Acls, key.clone()), read.clone());
        entries.extend(entry(key, built, 1));
    }
    mirror.replace_all(entries);
    let service = AclsService::new(mirror.clone(), NODE.into(), ZONE.into());
    first_answer(&service);
    let mut scratch = Scratch::new(&outputs);
    scratch.parts();

    // One device edit → visible: the dirty output rebuilt and hashed, then
    // served by the service (incremental) and, side by side, by a
    // from-scratch merge of every digest (what the service did before).
    let mut times = EditTimes::default();
    let mut rng = fastrand::Rng::with_seed(7);
    for edit in 0..EDITS {
        let n = rng.usize(..DEVICES);
        let mut doc = device(n);
        doc["sip"]["ip"] = json!(Ipv4Addr::from(0x0b00_0000u32 + edit as u32).to_string());
        let started = Instant::now();
        let built = edit_device(&mut index, &mut deps, doc, 2 + edit as u64);
        for (key, built, _) in &built {
            if let Some(entry) = entry(key, built, 2 + edit as u64) {
                mirror.apply_written(caldera::cache::mirror::Update::Live(entry));
            }
        }
        times.rebuild.push(started.elapsed());
        let serving = Instant::now();
        let served = service.view(None).unwrap();
        assert!(served.xml().len() > 1000);
        times.visible_xml.push(started.elapsed());
        times.live_xml.push(serving.elapsed());
        assert!(served.lists_json().len() > 1000);
        times.live_json.push(serving.elapsed());

        let serving = Instant::now();
        for (key, built, _) in &built {
            scratch.replace(key, built);
        }
        let merged = scratch.merged();
        let xml = merged.freeswitch_xml();
        times.scratch_xml.push(serving.elapsed());
        let lists = merged.lists_json().0;
        times.scratch_json.push(serving.elapsed());
        assert!(xml == served.xml() && lists == served.lists_json());
        let (apply, pages) = scratch.live_edit(&built);
        times.live_apply.push(apply);
        times.pages_rendered += pages;
    }
    times.print();
    merged_object(&service, &scratch);

    // Memoised answers, as GET /v1/acls/freeswitch.xml serves them.
    let started = Instant::now();
    let mut requests = 0u64;
    let mut bytes = 0usize;
    while started.elapsed() < Duration::from_secs(2) {
        let served = service.view(None).unwrap();
        bytes += served.xml_bytes().clone().len();
        requests += 1;
    }
    println!(
        "  freeswitch.xml from the service (memo hit, one thread): {:.0} requests/s, {} kB each",
        requests as f64 / started.elapsed().as_secs_f64(),
        bytes / requests as usize / 1000
    );

    dns_refresh();
}

const NODE: &str = "ecallmgr@bench";
const ZONE: &str = "local";

/// The service's first answers after start: every shard digested and
/// applied, then each rendering made once.
fn first_answer(service: &AclsService) {
    let started = Instant::now();
    let served = service.view(None).unwrap();
    let state = started.elapsed();
    let xml = served.xml().len();
    let with_xml = started.elapsed();
    let json = served.lists_json().len();
    let with_json = started.elapsed();
    let merged = service
        .merged(None)
        .unwrap()
        .as_object()
        .map_or(0, |m| m.len());
    println!(
        "  first answers after start ({merged} entries, XML {} kB, JSON {} kB): state {state:.0?}, + XML {:.1?}, + JSON lists {:.1?}, + merged object {:.0?}",
        xml / 1000,
        json / 1000,
        with_xml - state,
        with_json - with_xml,
        started.elapsed() - with_json
    );
}

/// Rebuilds what one device edit makes dirty, as the engine does.
fn edit_device(
    index: &mut Index,
    deps: &mut DepGraph,
    doc: Value,
    rev: u64,
) -> Vec<(String, Built, BTreeSet<Dep>)> {
    let old = put(index, SIP_AUTH, doc, rev);
    let id = old.as_ref().map(|d| d.id.clone()).unwrap_or_default();
    let new = index.get(SIP_AUTH, &id).cloned();
    let sid = SourceId::from(SIP_AUTH);
    let mut dirty: BTreeSet<String> = BTreeSet::new();
    let mut touched = vec![Dep::Doc(sid.clone(), id.clone()), Dep::Source(sid.clone())];
    for doc in [old.as_deref(), new.as_deref()].into_iter().flatten() {
        dirty.extend(AclsBuilder.roots(SIP_AUTH, &id, Some(doc)));
        touched.extend(
            AclsBuilder
                .view_keys(SIP_AUTH, doc)
                .into_iter()
                .map(|k| Dep::View(sid.clone(), k)),
        );
    }
    for dep in &touched {
        dirty.extend(deps.dependents(dep).map(|(_, k)| k.clone()));
    }
    let keys: Vec<String> = dirty.into_iter().collect();
    assert_eq!(keys.len(), 1, "one device edit rebuilds one output");
    let outputs = build(index, &keys, 1);
    for (key, _, read) in &outputs {
        deps.set((Domain::Acls, key.clone()), read.clone());
    }
    outputs
}

#[derive(Default)]
struct EditTimes {
    rebuild: Vec<Duration>,
    visible_xml: Vec<Duration>,
    live_xml: Vec<Duration>,
    live_json: Vec<Duration>,
    scratch_xml: Vec<Duration>,
    scratch_json: Vec<Duration>,
    live_apply: Vec<Duration>,
    pages_rendered: u64,
}

impl EditTimes {
    fn print(&mut self) {
        let edits = self.rebuild.len();
        let p = |samples: &mut Vec<Duration>| {
            format!(
                "p50 {:.2?} p99 {:.2?}",
                percentile(samples, 0.5),
                percentile(samples, 0.99)
            )
        };
        println!("  one device edit ({edits} edits):");
        println!("    rebuild + hash: {}", p(&mut self.rebuild));
        println!(
            "    to visible in acl.conf (rebuild, hash, then the service): {}",
            p(&mut self.visible_xml)
        );
        println!(
            "    serving after the edit, incremental (re-digest the shard, apply, copy pages): acl.conf {}; + JSON lists {}",
            p(&mut self.live_xml),
            p(&mut self.live_json)
        );
        println!(
            "    serving after the edit, from scratch (re-digest the shard, merge every digest; the old service): acl.conf {}; + JSON lists {}",
            p(&mut self.scratch_xml),
            p(&mut self.scratch_json)
        );
        println!(
            "    live merge alone (apply the re-digested shard, snapshot): {}; {:.2} pages rendered per edit",
            p(&mut self.live_apply),
            self.pages_rendered as f64 / edits as f64
        );
    }
}

/// The from-scratch path, and a bare live merge, over the same outputs.
struct Scratch {
    system: Option<Value>,
    digests: BTreeMap<String, model::Digest>,
    contents: Vec<Value>,
    live: LiveMerge,
}

impl Scratch {
    fn new(outputs: &[(String, Built, BTreeSet<Dep>)]) -> Scratch {
        let mut this = Scratch {
            system: None,
            digests: BTreeMap::new(),
            contents: Vec::new(),
            live: LiveMerge::default(),
        };
        for (key, built, _) in outputs {
            let Built::Content { content, .. } = built else {
                continue;
            };
            if key == model::SYSTEM_KEY {
                this.system = Some(content.clone());
            } else {
                this.contents.push(content.clone());
                this.replace(key, built);
                this.live.apply(key, Some(model::digest(content)));
            }
        }
        this.live.freeze();
        this
    }

    fn replace(&mut self, key: &str, built: &Built) {
        if let Built::Content { content, .. } = built {
            self.digests.insert(key.to_string(), model::digest(content));
        } else {
            self.digests.remove(key);
        }
    }

    fn merged(&self) -> model::Merged<'_> {
        let shards: Vec<&model::Digest> = self.digests.values().collect();
        model::merge(self.system.as_ref(), &shards, NODE, ZONE)
    }

    /// Applies a rebuilt shard to the bare live merge and snapshots it;
    /// the time and the pages rendered.
    fn live_edit(&mut self, built: &[(String, Built, BTreeSet<Dep>)]) -> (Duration, u64) {
        let rendered = self.live.pages_rendered();
        let started = Instant::now();
        for (key, built, _) in built {
            let digest = match built {
                Built::Content { content, .. } => Some(model::digest(content)),
                _ => None,
            };
            self.live.apply(key, digest);
        }
        let frozen = self.live.freeze();
        let elapsed = started.elapsed();
        assert!(!frozen.is_empty());
        (elapsed, self.live.pages_rendered() - rendered)
    }

    /// Where from-scratch serving time goes.
    fn parts(&self) {
        let mut digest_times = Vec::new();
        let mut merge_times = Vec::new();
        let mut xml_times = Vec::new();
        let mut json_times = Vec::new();
        for _ in 0..10 {
            let started = Instant::now();
            let digests: Vec<model::Digest> = self.contents.iter().map(model::digest).collect();
            digest_times.push(started.elapsed());
            let shards: Vec<&model::Digest> = digests.iter().collect();
            let started = Instant::now();
            let merged = model::merge(self.system.as_ref(), &shards, NODE, ZONE);
            merge_times.push(started.elapsed());
            let started = Instant::now();
            let xml = merged.freeswitch_xml();
            xml_times.push(started.elapsed());
            let started = Instant::now();
            let json = merged.lists_json();
            json_times.push(started.elapsed());
            assert!(!xml.is_empty() && !json.0.is_empty());
        }
        let (applied, frozen) = {
            let mut live = LiveMerge::default();
            let started = Instant::now();
            for (key, digest) in &self.digests {
                live.apply(key, Some(digest.clone()));
            }
            let applied = started.elapsed();
            let started = Instant::now();
            let frozen = live.freeze();
            (applied, (started.elapsed(), frozen.pages()))
        };
        println!(
            "  from-scratch serving parts: digest all shards p50 {:.1?}, merge p50 {:.1?}, XML render p50 {:.1?}, JSON lists p50 {:.1?}; live merge from scratch: every digest applied {applied:.1?}, {} pages, first snapshot {:.1?}",
            percentile(&mut digest_times, 0.5),
            percentile(&mut merge_times, 0.5),
            percentile(&mut xml_times, 0.5),
            percentile(&mut json_times, 0.5),
            frozen.1,
            frozen.0
        );
    }
}

/// Sysconf get `ecallmgr`/`acls` wants the merged object by value: the
/// service copies its kept dynamic part per request (kept current through
/// edits); before, a kept copy per node was cloned, and built again from
/// scratch after every change.
fn merged_object(service: &AclsService, scratch: &Scratch) {
    let kept = Value::Object(scratch.merged().object());
    assert_eq!(kept, service.merged(None).unwrap());
    let mut served = Vec::new();
    let mut cloned = Vec::new();
    let mut rebuilt = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let value = service.merged(None).unwrap();
        served.push(started.elapsed());
        drop(value);
        let started = Instant::now();
        let value = kept.clone();
        cloned.push(started.elapsed());
        drop(value);
        let started = Instant::now();
        let value = Value::Object(scratch.merged().object());
        rebuilt.push(started.elapsed());
        drop(value);
    }
    println!(
        "  Kazoo's merged object per sysconf request: p50 {:.1?} (before: a kept copy cloned p50 {:.1?}; after a change, first merged and built p50 {:.1?})",
        percentile(&mut served, 0.5),
        percentile(&mut cloned, 0.5),
        percentile(&mut rebuilt, 0.5)
    );
}

/// Resolves the 2k hostnames against a loopback hickory-server.
fn dns_refresh() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let origin = Name::from_str("bench.test.").unwrap();
        let mut zone: InMemoryZoneHandler = InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            Name::from_str("ns.bench.test.").unwrap(),
            Name::from_str("admin.bench.test.").unwrap(),
            1,
            60,
            60,
            60,
            1,
        );
        zone.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1);
        for h in 0..HOSTNAMES {
            let owner = Name::from_str(&format!("gw{h}.bench.test.")).unwrap();
            for address in host_addresses(h) {
                zone.upsert_mut(Record::from_rdata(owner.clone(), 300, RData::A(A(address))), 1);
            }
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut server = Server::new(catalog);
        server.register_socket(socket);
        let concurrency = 32;
        let settings = DnsSettings {
            timeout: Duration::from_millis(500),
            concurrency,
            servers: vec![addr],
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
        };
        let resolver = Arc::new(Resolver::new(&settings).unwrap());
        let started = Instant::now();
        let hosts: Vec<String> = (0..HOSTNAMES).map(|h| format!("gw{h}.bench.test")).collect();
        let outcomes: Vec<Outcome> = futures_util::stream::iter(hosts)
            .map(|host| {
                let resolver = resolver.clone();
                async move { resolver.resolve(&host).await }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let elapsed = started.elapsed();
        let found = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Found { addresses, .. } if addresses.len() == 2 && addresses.iter().all(IpAddr::is_ipv4)))
            .count();
        println!(
            "  DNS: {HOSTNAMES} hostnames (SRV + A + AAAA each) against loopback hickory-server, {concurrency} at once: {elapsed:.0?} ({:.0} hostnames/s), {found} resolved",
            HOSTNAMES as f64 / elapsed.as_secs_f64()
        );
    });
}

use futures_util::StreamExt;
