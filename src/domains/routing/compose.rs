//! A ruleset's lookup table composed from its two cache documents (pure):
//! the ruleset's rules and distinct gwlist entries (`Skeleton`: each entry
//! names a gateway or a carrier and carries the overlay of the levels above
//! the gateway) and its domain's gateway directory (`Directory`: every
//! gateway folded over default → carrier → gateway, and the carriers'
//! `try`).
//!
//! Composing resolves every entry against the directory (decisions 6–8:
//! carrier members, `try`, disabled and address-less gateways rejected,
//! position priorities); the overlay folds the upper levels onto each
//! gateway in one step (`model::Overlay`): its scalars when composing (the
//! gateways that come out alike are shared, and so are the resolutions of
//! entries that differ only in their overlays' attrs), its attrs per
//! answer (`table::Rules::attrs`). Recomposing after the directory changed
//! resolves again only the entries that name a changed gateway or a
//! carrier one of whose members (or whose `try`) changed, and keeps the old
//! table — round-robin state included — when none of them answers
//! differently.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::model::{Acc, Overlay};
use super::table::{Expansion, Gateway, Identity, Member, Rules, Table};

/// What a gwlist entry names.
#[derive(Debug)]
enum Target {
    Gateway(String),
    /// A carrier, with the entry's own `try`.
    Carrier {
        id: String,
        tries: Option<usize>,
    },
    /// Neither a gwid nor a carrierid: always rejected.
    Neither,
}

/// One distinct gwlist entry of a ruleset.
#[derive(Debug)]
struct Spec {
    target: Target,
    overlay: usize,
    /// The default priority its position gives.
    position: f64,
}

/// A ruleset's cache document, read: the rules and the entries to resolve.
#[derive(Debug)]
pub struct Skeleton {
    rules: Arc<Rules>,
    sip_domain_name: String,
    specs: Vec<Spec>,
    overlays: Vec<Arc<Overlay>>,
    /// By overlay: the first overlay with the same scalars (what resolving
    /// a gateway's fields but `attrs` depends on).
    scalars: Vec<usize>,
    /// The entries naming each gateway and each carrier.
    by_gwid: HashMap<String, Vec<usize>>,
    by_carrier: HashMap<String, Vec<usize>>,
}

/// A gateway of the directory: its identity and its fold up to the gateway
/// level.
#[derive(Debug, PartialEq)]
struct Base {
    /// The document defining it (for the errors a table reports).
    doc: String,
    gwid: Arc<str>,
    carrierid: Option<Arc<str>>,
    address: Option<Arc<str>>,
    host: Option<Arc<str>>,
    /// The fold's scalars (its `attrs` apart, shared by the gateways
    /// resolved without attrs of their own).
    acc: Acc,
    attrs: Arc<Map<String, Value>>,
}

/// A domain's gateway directory, read.
#[derive(Debug, Default)]
pub struct Directory {
    gateways: BTreeMap<String, Base>,
    /// Carrier → its members' gwids, sorted.
    members: HashMap<String, Vec<String>>,
    tries: HashMap<String, usize>,
}

fn text(value: Option<&Value>) -> Option<String> {
    value.and_then(Value::as_str).map(str::to_string)
}

fn index(value: Option<&Value>, what: &str) -> Result<usize, String> {
    value
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| format!("{what} is not an index"))
}

impl Skeleton {
    /// Reads a ruleset's cache document content.
    ///
    /// # Errors
    /// The content does not have the shape the builder writes.
    pub fn compile(content: &Value) -> Result<Skeleton, String> {
        let list = |name: &str| {
            content
                .get(name)
                .and_then(Value::as_array)
                .ok_or_else(|| format!("{name} is not a list"))
        };
        let mut overlays = list("overlays")?
            .iter()
            .map(|overlay| Overlay::from_json(overlay).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        overlays.shrink_to_fit();
        let mut specs = list("entries")?
            .iter()
            .map(|entry| compile_spec(entry, overlays.len()))
            .collect::<Result<Vec<_>, _>>()?;
        specs.shrink_to_fit();
        let mut classes: HashMap<String, usize> = HashMap::new();
        let mut scalars = Vec::with_capacity(overlays.len());
        for (i, overlay) in list("overlays")?.iter().enumerate() {
            let mut fields = overlay.as_object().cloned().unwrap_or_default();
            fields.remove("attrs");
            let class = Value::Object(fields).to_string();
            scalars.push(*classes.entry(class).or_insert(i));
        }
        let attrs = specs
            .iter()
            .map(|spec| match spec.target {
                Target::Neither => None,
                _ => Some(&overlays[spec.overlay])
                    .filter(|overlay| overlay.adds_attrs())
                    .cloned(),
            })
            .collect();
        let rules = Rules::compile(content, specs.len())?.with_attrs(attrs);
        let mut by_gwid: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_carrier: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, spec) in specs.iter().enumerate() {
            match &spec.target {
                Target::Gateway(gwid) => by_gwid.entry(gwid.clone()).or_default().push(i),
                Target::Carrier { id, .. } => by_carrier.entry(id.clone()).or_default().push(i),
                Target::Neither => {}
            }
        }
        Ok(Skeleton {
            rules: Arc::new(rules),
            sip_domain_name: text(content.get("sip_domain_name"))
                .ok_or("sip_domain_name is not a string")?,
            specs,
            overlays,
            scalars,
            by_gwid,
            by_carrier,
        })
    }

    pub fn sip_domain_name(&self) -> &str {
        &self.sip_domain_name
    }

    /// The documents whose problems concern this table under `directory`:
    /// the gateways and carriers its entries name or reach.
    pub fn used_docs(&self, directory: &Directory) -> BTreeSet<String> {
        let sdn = &self.sip_domain_name;
        let mut docs = BTreeSet::new();
        let gateway = |docs: &mut BTreeSet<String>, gwid: &str| {
            if let Some(base) = directory.gateways.get(gwid) {
                docs.insert(base.doc.clone());
                if let Some(carrierid) = &base.carrierid {
                    docs.insert(format!("carrier:{sdn}:{carrierid}"));
                }
            }
        };
        for gwid in self.by_gwid.keys() {
            docs.insert(format!("gateway:{sdn}:{gwid}"));
            gateway(&mut docs, gwid);
        }
        for carrierid in self.by_carrier.keys() {
            docs.insert(format!("carrier:{sdn}:{carrierid}"));
            for gwid in directory.members(carrierid) {
                gateway(&mut docs, gwid);
            }
        }
        docs
    }
}

fn compile_spec(entry: &Value, overlays: usize) -> Result<Spec, String> {
    let target = if let Some(gwid) = text(entry.get("gwid")) {
        Target::Gateway(gwid)
    } else if let Some(id) = text(entry.get("carrierid")) {
        let tries = match entry.get("try") {
            None => None,
            tries => Some(index(tries, "try")?),
        };
        Target::Carrier { id, tries }
    } else {
        Target::Neither
    };
    let overlay = match target {
        Target::Neither => 0,
        _ => index(entry.get("overlay"), "an overlay reference")?,
    };
    if !matches!(target, Target::Neither) && overlay >= overlays {
        return Err(format!("overlay {overlay} is out of range"));
    }
    let position = entry.get("position").and_then(Value::as_f64).unwrap_or(0.0);
    Ok(Spec {
        target,
        overlay,
        position,
    })
}

impl Directory {
    /// Reads a gateway directory's cache document content.
    ///
    /// # Errors
    /// The content does not have the shape the builder writes.
    pub fn compile(content: &Value) -> Result<Directory, String> {
        let object = |name: &str| {
            content
                .get(name)
                .and_then(Value::as_object)
                .ok_or_else(|| format!("{name} is not an object"))
        };
        let mut directory = Directory::default();
        for (gwid, fields) in object("gateways")? {
            let fields = fields.as_object().ok_or("a gateway is not an object")?;
            let shared = |name: &str| text(fields.get(name)).map(Arc::from);
            let mut acc = Acc::from_json(fields).map_err(|why| format!("gateway {gwid}: {why}"))?;
            let base = Base {
                doc: text(fields.get("doc")).ok_or("a gateway names no document")?,
                gwid: Arc::from(gwid.as_str()),
                carrierid: shared("carrierid"),
                address: shared("address"),
                host: shared("host"),
                attrs: Arc::new(std::mem::take(&mut acc.attrs)),
                acc,
            };
            if let Some(carrierid) = &base.carrierid {
                let members = directory.members.entry(carrierid.to_string()).or_default();
                members.push(gwid.clone());
            }
            directory.gateways.insert(gwid.clone(), base);
        }
        for (carrierid, tries) in object("tries")? {
            let tries = index(Some(tries), "a carrier's try")?;
            directory.tries.insert(carrierid.clone(), tries);
        }
        Ok(directory)
    }

    /// A carrier's members, in gwid order.
    fn members(&self, carrierid: &str) -> &[String] {
        self.members.get(carrierid).map_or(&[], Vec::as_slice)
    }
}

/// A gateway with an entry's overlay folded on but for `attrs` (which the
/// table folds per answer, `Rules::attrs`).
#[derive(Clone)]
struct Resolved {
    disabled: bool,
    priority: Option<f64>,
    /// `None` when it has no address (or is disabled).
    gateway: Option<Arc<Gateway>>,
}

/// What a resolved gateway's fields but `attrs` come from: its definition
/// and the fold's timeouts, weight and `local_gateway_extra_priority`.
type Scalars<'a> = (&'a str, [Option<serde_json::Number>; 4], u64, u64);

/// What an entry's resolution depends on: what it names (kind, name,
/// `try`), its position's priority and its overlay's scalars.
type SpecKey<'a> = (u8, &'a str, Option<usize>, u64, usize);

/// Resolves entries against one directory, sharing the gateways resolved
/// alike (same gateway, same overlay scalars), those whose fields come out
/// the same across overlays, and the resolutions of entries that differ
/// only in their overlays' attrs (the rules with attrs of their own).
struct Resolver<'a> {
    skeleton: &'a Skeleton,
    directory: &'a Directory,
    resolved: HashMap<(usize, &'a str), Resolved>,
    gateways: HashMap<Scalars<'a>, Arc<Gateway>>,
    expansions: HashMap<SpecKey<'a>, Arc<Expansion>>,
}

impl<'a> Resolver<'a> {
    fn new(skeleton: &'a Skeleton, directory: &'a Directory) -> Resolver<'a> {
        Resolver {
            skeleton,
            directory,
            resolved: HashMap::new(),
            gateways: HashMap::new(),
            expansions: HashMap::new(),
        }
    }

    /// `expansion`, shared with the entries that resolve alike.
    fn shared(&mut self, spec: &'a Spec) -> Arc<Expansion> {
        let scalars = self.skeleton.scalars.get(spec.overlay).copied();
        let key = match &spec.target {
            Target::Gateway(gwid) => (0, gwid.as_str(), None, scalars),
            Target::Carrier { id, tries } => (1, id.as_str(), *tries, scalars),
            Target::Neither => (2, "", None, None),
        };
        let key = (
            key.0,
            key.1,
            key.2,
            spec.position.to_bits(),
            key.3.unwrap_or(usize::MAX),
        );
        if let Some(found) = self.expansions.get(&key) {
            return found.clone();
        }
        let expansion = Arc::new(self.expansion(spec));
        self.expansions.insert(key, expansion.clone());
        expansion
    }

    /// Decisions 6 and 7: a gwid entry is one gateway; a carrier entry its
    /// carrier's usable gateways, with `try` when it selects fewer.
    fn expansion(&mut self, spec: &Spec) -> Expansion {
        let (skeleton, directory) = (self.skeleton, self.directory);
        let sdn = &skeleton.sip_domain_name;
        let mut candidates = Vec::new();
        let mut rejected = Vec::new();
        let (tries, carrierid) = match &spec.target {
            Target::Gateway(gwid) => {
                match directory.gateways.get_key_value(gwid) {
                    None => rejected.push(json!({
                        "gwid": gwid, "reason": format!("no gateway {gwid} in {sdn}"),
                    })),
                    Some((gwid, _)) => self.candidate(gwid, spec, &mut candidates, &mut rejected),
                }
                (None, Value::Null)
            }
            Target::Carrier { id, tries } => {
                let members = directory.members(id);
                if members.is_empty() {
                    rejected.push(json!({
                        "carrierid": id, "reason": format!("carrier {id} has no gateways in {sdn}"),
                    }));
                }
                for gwid in members {
                    self.candidate(gwid, spec, &mut candidates, &mut rejected);
                }
                let usable = candidates.len();
                let tries = tries
                    .or_else(|| directory.tries.get(id).copied())
                    .map_or(usable, |t| t.min(usable));
                ((usable > 0 && tries < usable).then_some(tries), json!(id))
            }
            Target::Neither => {
                rejected.push(json!({ "reason": "the entry has neither gwid nor carrierid" }));
                (None, Value::Null)
            }
        };
        // Held for the table's life: no room to grow.
        candidates.shrink_to_fit();
        rejected.shrink_to_fit();
        Expansion {
            candidates,
            tries,
            carrierid,
            rejected,
        }
    }

    /// One gateway of an entry: `(gateway, priority)`, or a rejection.
    fn candidate(
        &mut self,
        gwid: &'a str,
        spec: &Spec,
        candidates: &mut Vec<Member>,
        rejected: &mut Vec<Value>,
    ) {
        let directory = self.directory;
        let base = &directory.gateways[gwid];
        let resolved = self.resolve(gwid, spec.overlay);
        let carrierid = base.carrierid.as_deref();
        let reject =
            |reason: String| json!({ "gwid": gwid, "carrierid": carrierid, "reason": reason });
        if resolved.disabled {
            rejected.push(reject("disabled".into()));
            return;
        }
        match resolved.gateway {
            Some(gateway) => candidates.push(Member {
                gateway,
                priority: resolved.priority.unwrap_or(spec.position),
            }),
            None => rejected.push(reject(format!("gateway {gwid} has no address"))),
        }
    }

    fn resolve(&mut self, gwid: &'a str, overlay: usize) -> Resolved {
        let overlay = self.skeleton.scalars[overlay];
        if let Some(found) = self.resolved.get(&(overlay, gwid)) {
            return found.clone();
        }
        let base = &self.directory.gateways[gwid];
        let over = &self.skeleton.overlays[overlay];
        let acc = over.compose_scalars(&base.acc);
        let gateway = match &base.address {
            Some(address) if !acc.disabled() => {
                let scalars = (
                    gwid,
                    acc.timeouts.clone(),
                    acc.weight(),
                    acc.local_extra().to_bits(),
                );
                let gateway = self.gateways.entry(scalars).or_insert_with(|| {
                    let identity = Identity {
                        gwid: &base.gwid,
                        carrierid: base.carrierid.as_ref(),
                        address,
                        host: base.host.as_ref(),
                    };
                    Arc::new(Gateway::new(&identity, &acc, base.attrs.clone()))
                });
                Some(gateway.clone())
            }
            _ => None,
        };
        let resolved = Resolved {
            disabled: acc.disabled(),
            priority: acc.priority,
            gateway,
        };
        self.resolved.insert((overlay, gwid), resolved.clone());
        resolved
    }
}

/// The table of `skeleton` under `directory`, with fresh round-robin state.
pub fn compose(skeleton: &Skeleton, directory: &Directory) -> Table {
    let mut resolver = Resolver::new(skeleton, directory);
    let expansions = skeleton
        .specs
        .iter()
        .map(|spec| resolver.shared(spec))
        .collect();
    Table::new(skeleton.rules.clone(), expansions)
}

/// `table` (composed from `skeleton` under `old`) under `new`: `None` when
/// no entry resolves differently (the old table stays, round-robin state
/// included), else a new table that shares the unchanged entries.
pub fn recompose(
    skeleton: &Skeleton,
    table: &Table,
    old: &Directory,
    new: &Directory,
) -> Option<Table> {
    let mut resolver = Resolver::new(skeleton, new);
    let mut expansions = table.expansions().to_vec();
    let mut changed = false;
    for spec in affected(skeleton, old, new) {
        let expansion = resolver.shared(&skeleton.specs[spec]);
        if !expansions[spec].answers_alike(&expansion, skeleton.rules.attrs(spec)) {
            expansions[spec] = expansion;
            changed = true;
        }
    }
    changed.then(|| Table::new(skeleton.rules.clone(), expansions))
}

/// The entries whose resolution may differ between two directories: those
/// naming a gateway that changed, and those naming a carrier whose `try`
/// changed or that had or has a changed gateway as a member.
fn affected(skeleton: &Skeleton, old: &Directory, new: &Directory) -> BTreeSet<usize> {
    let mut gwids = BTreeSet::new();
    let mut carriers = BTreeSet::new();
    for gwid in old.gateways.keys().chain(new.gateways.keys()) {
        let versions = [old.gateways.get(gwid), new.gateways.get(gwid)];
        if versions[0] != versions[1] {
            gwids.insert(gwid.as_str());
            carriers.extend(
                versions
                    .into_iter()
                    .flatten()
                    .filter_map(|b| b.carrierid.as_deref()),
            );
        }
    }
    for carrierid in old.tries.keys().chain(new.tries.keys()) {
        if old.tries.get(carrierid) != new.tries.get(carrierid) {
            carriers.insert(carrierid.as_str());
        }
    }
    let named = |index: &HashMap<String, Vec<usize>>, key: &str| {
        index.get(key).cloned().unwrap_or_default()
    };
    let mut specs = BTreeSet::new();
    for gwid in gwids {
        specs.extend(named(&skeleton.by_gwid, gwid));
    }
    for carrierid in carriers {
        specs.extend(named(&skeleton.by_carrier, carrierid));
    }
    specs
}

/// Compiles a ruleset's table straight from the two contents (no
/// directory: the domain has no gateways).
///
/// # Errors
/// A content does not have the shape the builder writes.
pub fn compile(ruleset: &Value, directory: Option<&Value>) -> Result<Table, String> {
    let skeleton = Skeleton::compile(ruleset)?;
    let directory = match directory {
        Some(content) => Directory::compile(content)?,
        None => Directory::default(),
    };
    Ok(compose(&skeleton, &directory))
}
