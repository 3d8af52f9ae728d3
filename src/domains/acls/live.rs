//! The merge of the ACL shard outputs kept as incremental state (pure, no
//! IO), so that an edit reaches the served answers with work in proportion
//! to the edit instead of to the whole list.
//!
//! * `LiveMerge` holds, for every network, the candidates the shards give
//!   for it, and the winner under the precedence (`Digested::rank`).
//!   Applying a new version of a shard walks the old and the new digest
//!   side by side (both in address order) and touches only the networks
//!   whose entry changed.
//! * The winners are kept per list in address order, in pages of about
//!   `page_size` entries, each page pre-rendered as `acl.conf` lines and
//!   JSON text. A changed winner re-renders only its page; page boundaries
//!   never show in an answer (pages are concatenated).
//! * `freeze` takes an immutable snapshot (`Frozen`, reference-counted
//!   pages, shared by every node); `NodeAnswer` adds a node's static
//!   section: the few dynamic entries its static entries overrule are found
//!   by lookup, and only the pages holding them are rendered again for that
//!   node. An answer is then a copy of pre-rendered pages.
//!
//! `model::merge` is the from-scratch reference the tests compare with:
//! every answer here is byte for byte what it gives for the same shards.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::model::{self, Digest, Digested, Net};

/// The page size used by the service: a page holds `PAGE_SIZE / 2` to
/// `2 * PAGE_SIZE` entries (a list's only page may hold fewer), so one
/// changed entry re-renders at most ~64 kB.
pub const PAGE_SIZE: usize = 128;

/// The incrementally maintained merge of the dynamic (shard) outputs.
#[derive(Debug)]
pub struct LiveMerge {
    page_size: usize,
    /// Shard output id → the digest last applied for it.
    shards: HashMap<String, Digest>,
    /// Network → every shard's candidate for it (at most one per shard).
    contests: HashMap<Net, Vec<Arc<Digested>>>,
    /// List name → its winners, paged.
    lists: BTreeMap<String, Pages>,
    /// The snapshot of the current state, until the next change.
    frozen: Option<Arc<Frozen>>,
    /// Pages rendered so far (what an edit costs, for tests and benches).
    rendered: u64,
    /// Every winner as `key → entry`, the dynamic part of Kazoo's merged
    /// object: made on first use (`object`), then kept up to date.
    object: Option<Arc<Map<String, Value>>>,
}

impl Default for LiveMerge {
    fn default() -> Self {
        LiveMerge::with_page_size(PAGE_SIZE)
    }
}

impl LiveMerge {
    /// A merge whose pages hold about `page_size` entries (at least 1).
    pub fn with_page_size(page_size: usize) -> LiveMerge {
        LiveMerge {
            page_size: page_size.max(1),
            shards: HashMap::new(),
            contests: HashMap::new(),
            lists: BTreeMap::new(),
            frozen: None,
            rendered: 0,
            object: None,
        }
    }

    /// Applies the current version of the shard output `id` (`None`: it
    /// no longer exists).
    pub fn apply(&mut self, id: &str, digest: Option<Digest>) {
        let old = self.shards.remove(id).unwrap_or_default();
        let mut new = digest.unwrap_or_default();
        let mut held = old.entries.into_iter().peekable();
        for slot in &mut new.entries {
            while let Some(gone) = held.next_if(|e| e.net < slot.net) {
                self.contest(gone.net, Some(&gone), None);
            }
            match held.next_if(|e| e.net == slot.net) {
                // Unchanged: keep the entry the state already holds.
                Some(same) if same.rank() == slot.rank() => *slot = same,
                replaced => self.contest(slot.net, replaced.as_ref(), Some(slot.clone())),
            }
        }
        for gone in held {
            self.contest(gone.net, Some(&gone), None);
        }
        if !new.entries.is_empty() {
            self.shards.insert(id.to_string(), new);
        }
    }

    /// Replaces one shard's candidate for `net` and moves the winner if it
    /// changed.
    fn contest(
        &mut self,
        net: Net,
        withdrawn: Option<&Arc<Digested>>,
        offered: Option<Arc<Digested>>,
    ) {
        let candidates = self.contests.entry(net).or_default();
        let before = winner(candidates);
        if let Some(withdrawn) = withdrawn {
            candidates.retain(|c| !Arc::ptr_eq(c, withdrawn));
        }
        candidates.extend(offered);
        let after = winner(candidates);
        if candidates.is_empty() {
            self.contests.remove(&net);
        }
        let max = self.bounds().1;
        if before.as_ref().map(Arc::as_ptr) == after.as_ref().map(Arc::as_ptr) {
            return;
        }
        self.frozen = None;
        if let Some(object) = &mut self.object {
            // Copied only if a request still holds the previous version.
            let object = Arc::make_mut(object);
            if let Some(before) = &before {
                object.remove(&before.key);
            }
            if let Some(after) = &after {
                object.insert(after.key.clone(), after.entry.clone());
            }
        }
        match (before, after) {
            (Some(before), Some(after)) if before.list == after.list => {
                self.pages(&after.list).replace(after);
            }
            (before, after) => {
                if let Some(before) = before {
                    self.withdraw(&before);
                }
                if let Some(after) = after {
                    self.pages(&after.list).insert(after, max);
                }
            }
        }
    }

    fn withdraw(&mut self, entry: &Digested) {
        let (min, max) = self.bounds();
        let Some(pages) = self.lists.get_mut(&entry.list) else {
            return;
        };
        pages.remove(entry.net, min, max);
        if pages.len == 0 {
            self.lists.remove(&entry.list);
        }
    }

    fn pages(&mut self, list: &str) -> &mut Pages {
        if !self.lists.contains_key(list) {
            self.lists.insert(list.to_string(), Pages::default());
        }
        self.lists.get_mut(list).expect("just inserted")
    }

    /// A page is merged with a neighbour below `min` entries and split
    /// above `max`.
    fn bounds(&self) -> (usize, usize) {
        (self.page_size / 2, 2 * self.page_size)
    }

    /// The winning entry for a network.
    pub fn winner(&self, net: Net) -> Option<Arc<Digested>> {
        winner(self.contests.get(&net)?)
    }

    /// How many pages were rendered since this merge was made.
    pub fn pages_rendered(&self) -> u64 {
        self.rendered
    }

    /// How many networks have an entry.
    pub fn len(&self) -> usize {
        self.contests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.contests.is_empty()
    }

    /// A snapshot of the winners, every page rendered (only the pages
    /// changed since the last snapshot are rendered now).
    pub fn freeze(&mut self) -> Arc<Frozen> {
        if let Some(frozen) = &self.frozen {
            return frozen.clone();
        }
        let rendered = &mut self.rendered;
        let lists = self
            .lists
            .iter_mut()
            .map(|(name, pages)| FrozenList {
                name: name.clone(),
                len: pages.len,
                pages: pages.pages.iter_mut().map(|p| p.frozen(rendered)).collect(),
            })
            .collect();
        let frozen = Arc::new(Frozen { lists });
        self.frozen = Some(frozen.clone());
        frozen
    }

    /// Every winner as `key → entry` (the dynamic part of Kazoo's merged
    /// object). The first call builds it; from then on every change keeps
    /// it current, so callers only pay for the copy they take.
    pub fn object(&mut self) -> Arc<Map<String, Value>> {
        let lists = &self.lists;
        let object = self.object.get_or_insert_with(|| {
            let winners = lists
                .values()
                .flat_map(|l| &l.pages)
                .flat_map(|p| p.entries.iter());
            Arc::new(winners.map(|e| (e.key.clone(), e.entry.clone())).collect())
        });
        object.clone()
    }

    /// The answer for a node whose static section is `statics`.
    pub fn answer(&mut self, statics: Option<&Map<String, Value>>) -> NodeAnswer {
        let frozen = self.freeze();
        let statics = statics.cloned().unwrap_or_default();
        let mut shadowed = BTreeSet::new();
        let mut hidden: HashMap<String, usize> = HashMap::new();
        for (net, shadow) in model::shadows(&statics) {
            if let Some(entry) = self.winner(net)
                && shadow.covers(&entry)
                && shadowed.insert(net)
            {
                *hidden.entry(entry.list.clone()).or_default() += 1;
            }
        }
        NodeAnswer {
            frozen,
            statics,
            shadowed,
            hidden,
        }
    }

    /// Checks the internal invariants: every page non-empty, in order and
    /// within its bounds; every paged entry the winner of its network;
    /// every winner paged once; the kept object equal to the winners.
    #[cfg(test)]
    pub(super) fn check(&self) -> Result<(), String> {
        let (min, max) = self.bounds();
        let mut paged = 0;
        for (list, pages) in &self.lists {
            let mut last: Option<Net> = None;
            let count: usize = pages.pages.iter().map(|p| p.entries.len()).sum();
            if count != pages.len || count == 0 {
                return Err(format!(
                    "list {list}: counted {count}, recorded {}",
                    pages.len
                ));
            }
            for (n, page) in pages.pages.iter().enumerate() {
                let size = page.entries.len();
                let alone = pages.pages.len() == 1;
                if size == 0 || size > max || (size < min && !alone) {
                    return Err(format!(
                        "list {list}: page {n} holds {size} (bounds {min}..={max})"
                    ));
                }
                for entry in page.entries.iter() {
                    if last.is_some_and(|l| l >= entry.net) || entry.list != *list {
                        return Err(format!("list {list}: {} out of place", entry.key));
                    }
                    last = Some(entry.net);
                    match self.winner(entry.net) {
                        Some(w) if Arc::ptr_eq(&w, entry) => paged += 1,
                        _ => return Err(format!("list {list}: {} is not the winner", entry.key)),
                    }
                }
            }
        }
        if paged != self.contests.len() {
            return Err(format!(
                "{paged} entries paged for {} networks",
                self.contests.len()
            ));
        }
        if let Some(object) = &self.object {
            let winners = self.contests.values().filter_map(|c| winner(c));
            let expected: Map<String, Value> =
                winners.map(|e| (e.key.clone(), e.entry.clone())).collect();
            if **object != expected {
                return Err("the kept object differs from the winners".into());
            }
        }
        Ok(())
    }
}

fn winner(candidates: &[Arc<Digested>]) -> Option<Arc<Digested>> {
    candidates
        .iter()
        .min_by(|a, b| a.rank().cmp(&b.rank()))
        .cloned()
}

/// One list's winners in address order, in pages.
#[derive(Debug, Default)]
struct Pages {
    pages: Vec<Page>,
    len: usize,
}

#[derive(Debug, Clone)]
struct Page {
    entries: Arc<Vec<Arc<Digested>>>,
    /// `None` once the entries changed, until the next snapshot.
    rendered: Option<Arc<Rendered>>,
}

/// A page's `acl.conf` lines and JSON members (`"key":{entry}`, comma
/// separated).
#[derive(Debug, Clone)]
struct Rendered {
    xml: String,
    json: String,
}

impl Page {
    fn new(entries: Vec<Arc<Digested>>) -> Page {
        Page {
            entries: Arc::new(entries),
            rendered: None,
        }
    }

    fn first_net(&self) -> Net {
        self.entries.first().expect("pages are never empty").net
    }

    /// The entries, to change (copied if a snapshot holds them); the
    /// rendering is dropped.
    fn edit(&mut self) -> &mut Vec<Arc<Digested>> {
        self.rendered = None;
        Arc::make_mut(&mut self.entries)
    }

    /// The page as a snapshot holds it, rendered now if it changed
    /// (counted in `renders`).
    fn frozen(&mut self, renders: &mut u64) -> FrozenPage {
        let entries = &self.entries;
        let rendered = self.rendered.get_or_insert_with(|| {
            *renders += 1;
            Arc::new(render(entries.iter().map(Arc::as_ref)))
        });
        FrozenPage {
            entries: self.entries.clone(),
            rendered: rendered.clone(),
        }
    }
}

fn render<'a>(entries: impl Iterator<Item = &'a Digested> + Clone) -> Rendered {
    let mut xml = String::with_capacity(entries.clone().map(|e| e.xml.len()).sum());
    let mut json = String::with_capacity(entries.clone().map(|e| e.json.len() + 1).sum());
    for entry in entries {
        xml.push_str(&entry.xml);
        if !json.is_empty() {
            json.push(',');
        }
        json.push_str(&entry.json);
    }
    Rendered { xml, json }
}

impl Pages {
    /// The page where `net` is or belongs: the last one starting at or
    /// before it (the first page for a network before every page).
    fn find(&self, net: Net) -> usize {
        self.pages
            .partition_point(|p| p.first_net() <= net)
            .saturating_sub(1)
    }

    fn insert(&mut self, entry: Arc<Digested>, max: usize) {
        self.len += 1;
        if self.pages.is_empty() {
            self.pages.push(Page::new(vec![entry]));
            return;
        }
        let at = self.find(entry.net);
        let entries = self.pages[at].edit();
        match entries.binary_search_by(|e| e.net.cmp(&entry.net)) {
            Ok(slot) => {
                // A network has one winner: this cannot happen, but keep
                // the count true if it does.
                entries[slot] = entry;
                self.len -= 1;
            }
            Err(slot) => entries.insert(slot, entry),
        }
        self.split(at, max);
    }

    fn replace(&mut self, entry: Arc<Digested>) {
        let at = self.find(entry.net);
        let Some(page) = self.pages.get_mut(at) else {
            return;
        };
        let entries = page.edit();
        if let Ok(slot) = entries.binary_search_by(|e| e.net.cmp(&entry.net)) {
            entries[slot] = entry;
        }
    }

    fn remove(&mut self, net: Net, min: usize, max: usize) {
        let at = self.find(net);
        let Some(page) = self.pages.get_mut(at) else {
            return;
        };
        let Ok(slot) = page.entries.binary_search_by(|e| e.net.cmp(&net)) else {
            return;
        };
        page.edit().remove(slot);
        let left = page.entries.len();
        self.len -= 1;
        if left == 0 {
            self.pages.remove(at);
        } else if left < min && self.pages.len() > 1 {
            // Join the small page with a neighbour, split again if too big.
            let first = if at + 1 < self.pages.len() {
                at
            } else {
                at - 1
            };
            let second = self.pages.remove(first + 1);
            self.pages[first]
                .edit()
                .extend(second.entries.iter().cloned());
            self.split(first, max);
        }
    }

    /// Splits page `at` in two halves when it holds more than `max`.
    fn split(&mut self, at: usize, max: usize) {
        let page = &mut self.pages[at];
        if page.entries.len() <= max {
            return;
        }
        let half = page.entries.len() / 2;
        let second = page.edit().split_off(half);
        self.pages.insert(at + 1, Page::new(second));
    }
}

/// An immutable snapshot of the winners: per list (by name), pre-rendered
/// pages in address order.
#[derive(Debug)]
pub struct Frozen {
    lists: Vec<FrozenList>,
}

#[derive(Debug)]
struct FrozenList {
    name: String,
    len: usize,
    pages: Vec<FrozenPage>,
}

#[derive(Debug)]
struct FrozenPage {
    entries: Arc<Vec<Arc<Digested>>>,
    rendered: Arc<Rendered>,
}

impl Frozen {
    /// How many dynamic entries (winners) the snapshot holds.
    pub fn len(&self) -> usize {
        self.lists.iter().map(|l| l.len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    /// How many pages the snapshot holds.
    pub fn pages(&self) -> usize {
        self.lists.iter().map(|l| l.pages.len()).sum()
    }
}

/// The ACLs served to one node: the snapshot, the node's static section
/// and the dynamic entries it overrules. Rendering copies pre-rendered
/// pages; only a page holding an overruled entry is rendered again.
#[derive(Debug)]
pub struct NodeAnswer {
    frozen: Arc<Frozen>,
    statics: Map<String, Value>,
    /// The networks whose winner a static entry overrules.
    shadowed: BTreeSet<Net>,
    /// List → how many of its winners are overruled.
    hidden: HashMap<String, usize>,
}

/// One list of an answer: its visible dynamic part and its static entries.
struct ListView<'a> {
    name: &'a str,
    dynamic: Option<&'a FrozenList>,
    statics: Vec<(&'a str, &'a Value)>,
}

impl NodeAnswer {
    /// Every list with something to show, by name (as `model::Merged`).
    fn lists(&self) -> Vec<ListView<'_>> {
        let mut lists: BTreeMap<&str, ListView<'_>> = BTreeMap::new();
        for list in &self.frozen.lists {
            let hidden = self.hidden.get(&list.name).copied().unwrap_or(0);
            if list.len > hidden {
                let name = list.name.as_str();
                let view = ListView {
                    name,
                    dynamic: Some(list),
                    statics: Vec::new(),
                };
                lists.insert(name, view);
            }
        }
        for (name, entry) in &self.statics {
            let list = model::list_name(entry);
            let view = lists.entry(list).or_insert_with(|| ListView {
                name: list,
                dynamic: None,
                statics: Vec::new(),
            });
            view.statics.push((name, entry));
        }
        lists.into_values().collect()
    }

    /// The page's rendering for this node: shared, or rendered again
    /// without the overruled entries.
    fn page<'a>(&self, page: &'a FrozenPage) -> Cow<'a, Rendered> {
        let first = page.entries.first().map(|e| e.net);
        let last = page.entries.last().map(|e| e.net);
        let touched = match (first, last) {
            (Some(first), Some(last)) => self.shadowed.range(first..=last).next().is_some(),
            _ => false,
        };
        if !touched {
            return Cow::Borrowed(page.rendered.as_ref());
        }
        let visible = page
            .entries
            .iter()
            .map(Arc::as_ref)
            .filter(|e| !self.shadowed.contains(&e.net));
        Cow::Owned(render(visible))
    }

    /// FreeSWITCH's `acl.conf`, as `model::Merged::freeswitch_xml`.
    pub fn freeswitch_xml(&self) -> String {
        let size: usize = self
            .frozen
            .lists
            .iter()
            .flat_map(|l| &l.pages)
            .map(|p| p.rendered.xml.len())
            .sum();
        let mut xml = String::with_capacity(size + 128 * self.statics.len() + 1024);
        xml.push_str(model::XML_HEAD);
        for list in self.lists() {
            model::push_list_open(&mut xml, list.name);
            for page in list.dynamic.into_iter().flat_map(|l| &l.pages) {
                xml.push_str(&self.page(page).xml);
            }
            for (_, entry) in list.statics {
                model::node_lines(&mut xml, entry);
            }
            xml.push_str(model::XML_LIST_CLOSE);
        }
        xml.push_str(model::XML_TAIL);
        xml
    }

    /// Every list as JSON text, `{list: {name or address: entry}}`, and
    /// where in it each list's own object is (as `model::Merged::lists_json`).
    pub fn lists_json(&self) -> (String, BTreeMap<String, Range<usize>>) {
        let size: usize = self
            .frozen
            .lists
            .iter()
            .flat_map(|l| &l.pages)
            .map(|p| p.rendered.json.len() + 1)
            .sum();
        let mut json = String::with_capacity(size + 256 * self.statics.len() + 64);
        let mut ranges = BTreeMap::new();
        json.push('{');
        for (n, list) in self.lists().into_iter().enumerate() {
            if n > 0 {
                json.push(',');
            }
            model::push_json_key(&mut json, list.name);
            let start = json.len();
            json.push('{');
            let mut empty = true;
            for page in list.dynamic.into_iter().flat_map(|l| &l.pages) {
                let rendered = self.page(page);
                if rendered.json.is_empty() {
                    continue;
                }
                if !std::mem::take(&mut empty) {
                    json.push(',');
                }
                json.push_str(&rendered.json);
            }
            for (name, entry) in list.statics {
                if !std::mem::take(&mut empty) {
                    json.push(',');
                }
                json.push_str(&model::static_json(name, entry));
            }
            json.push('}');
            ranges.insert(list.name.to_string(), start..json.len());
        }
        json.push('}');
        (json, ranges)
    }

    /// Kazoo's merged object, as `model::Merged::object`, from the
    /// dynamic part `LiveMerge::object` gave for the same state: a copy of
    /// it without the overruled entries, with the static ones.
    pub fn object(&self, dynamic: &Map<String, Value>) -> Map<String, Value> {
        let mut object = dynamic.clone();
        // A dynamic entry is keyed by its network (`Digested::key`).
        for net in &self.shadowed {
            object.remove(&net.key());
        }
        for (name, entry) in &self.statics {
            object.insert(name.clone(), entry.clone());
        }
        object
    }
}
