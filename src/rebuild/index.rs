//! The in-memory index of source documents, by source and id, and the
//! recording reader through which builders see it.
//!
//! Builders never see the index directly: every read goes through `Reads`,
//! which records what was read. Those records are the dependency map, so a
//! change rebuilds exactly the outputs that read the changed document (or a
//! whole source they listed).
//!
//! Views: an index built with a `Keyer` also files every document under the
//! keys the keyer gives it (like the keys a CouchDB map function emits), so a
//! builder can ask "every gateway of carrier C" without reading, and thus
//! depending on, a whole source. Reading a view records `Dep::View`; the
//! engine touches a key whenever a document enters, leaves or changes under it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use crate::couch::Body;
use crate::json::TextPool;

/// A source's logical name (`system_config`, `sip_auth`, …), independent of
/// the physical database name the configuration gives it.
pub type SourceId = Arc<str>;

/// A source document as last seen on its feed.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceDoc {
    pub id: String,
    pub rev: String,
    pub body: Body,
}

impl SourceDoc {
    /// The JSON body, parsed (documents are kept as text: `crate::json`),
    /// or `None` when the document could not be parsed.
    pub fn json(&self) -> Option<Value> {
        self.body.value()
    }

    /// Only what `T` names of the body (the rest skipped unparsed); `None`
    /// when the document is malformed or has another shape.
    pub fn read<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        match &self.body {
            Body::Json(text) => text.read(),
            Body::Malformed(_) => None,
        }
    }
}

/// Something an output's build read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dep {
    /// One document (present or not).
    Doc(SourceId, String),
    /// Every document of a source.
    Source(SourceId),
    /// Every document of a source filed under a view key.
    View(SourceId, String),
}

/// The view keys of a document (pure; namespaced by the domain that reads
/// them, e.g. `routing:carrier:…`).
pub type Keyer = Arc<dyn Fn(&str, &SourceDoc) -> Vec<String> + Send + Sync>;

/// The ids filed under one view key, in id order. Most keys hold one
/// document (a unit's MAC, an account's realm): that one is kept inline,
/// since a `BTreeSet` of one id allocates a whole node (~300 bytes, measured
/// as the largest share of a phone unit's views).
#[derive(Debug)]
enum ViewIds {
    One(String),
    Many(BTreeSet<String>),
}

impl ViewIds {
    fn insert(&mut self, id: &str) {
        match self {
            ViewIds::One(only) if only == id => {}
            ViewIds::One(only) => {
                let only = std::mem::take(only);
                *self = ViewIds::Many(BTreeSet::from([only, id.to_string()]));
            }
            ViewIds::Many(ids) => {
                if !ids.contains(id) {
                    ids.insert(id.to_string());
                }
            }
        }
    }

    /// Removes `id`; `true` when nothing is left.
    fn remove(&mut self, id: &str) -> bool {
        match self {
            ViewIds::One(only) => only == id,
            ViewIds::Many(ids) => {
                ids.remove(id);
                match ids.len() {
                    0 => true,
                    1 => {
                        let last = ids.pop_first().unwrap_or_default();
                        *self = ViewIds::One(last);
                        false
                    }
                    _ => false,
                }
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &String> {
        let (one, many) = match self {
            ViewIds::One(only) => (Some(only), None),
            ViewIds::Many(ids) => (None, Some(ids)),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// Every followed source's current documents.
#[derive(Default)]
pub struct Index {
    sources: HashMap<SourceId, BTreeMap<String, Arc<SourceDoc>>>,
    /// source → view key → ids filed under it.
    views: HashMap<SourceId, HashMap<String, ViewIds>>,
    keyer: Option<Keyer>,
    /// Sources whose texts are shared with other holders (`TextPool`).
    shared: HashSet<SourceId>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("sources", &self.sources)
            .field("views", &self.views)
            .finish_non_exhaustive()
    }
}

impl Index {
    /// An index that files documents into views with `keyer`.
    pub fn with_keyer(keyer: Keyer) -> Index {
        Index {
            keyer: Some(keyer),
            ..Index::default()
        }
    }

    /// Shares the texts of `sources`' documents with the other holders of
    /// the same documents (`json::TextPool`).
    pub fn share_texts_of(&mut self, sources: impl IntoIterator<Item = SourceId>) {
        self.shared.extend(sources);
    }

    /// The copy of `body`'s text another holder already keeps, when
    /// `source` is shared and that copy is not this one.
    fn shared_copy(&self, source: &str, body: &Body) -> Option<Body> {
        let Body::Json(text) = body else {
            return None;
        };
        if !self.shared.contains(source) {
            return None;
        }
        let shared = TextPool::global().share(text.clone());
        (!shared.same_copy(text)).then_some(Body::Json(shared))
    }

    /// The view keys `doc` is filed under in `source`.
    pub fn view_keys(&self, source: &str, doc: &SourceDoc) -> Vec<String> {
        self.keyer
            .as_ref()
            .map_or_else(Vec::new, |k| k(source, doc))
    }

    /// The documents of `source` filed under `key`, in id order.
    pub fn view<'a>(
        &'a self,
        source: &str,
        key: &str,
    ) -> impl Iterator<Item = &'a Arc<SourceDoc>> + use<'a> {
        let ids = self.views.get(source).and_then(|v| v.get(key));
        let docs = self.sources.get(source);
        ids.into_iter()
            .flat_map(ViewIds::iter)
            .filter_map(move |id| docs?.get(id))
    }

    /// Forgets a source entirely (a dynamic source no longer followed),
    /// returning what it held.
    pub fn drop_source(&mut self, source: &str) -> BTreeMap<String, Arc<SourceDoc>> {
        self.views.remove(source);
        self.sources.remove(source).unwrap_or_default()
    }

    fn file(&mut self, source: &SourceId, doc: &SourceDoc, add: bool) {
        let Some(keyer) = &self.keyer else {
            return;
        };
        let keys = keyer(source, doc);
        if keys.is_empty() {
            return;
        }
        let views = self.views.entry(source.clone()).or_default();
        for key in keys {
            if add {
                match views.get_mut(&key) {
                    Some(ids) => ids.insert(&doc.id),
                    None => {
                        views.insert(key, ViewIds::One(doc.id.clone()));
                    }
                }
            } else if let Some(ids) = views.get_mut(&key)
                && ids.remove(&doc.id)
            {
                views.remove(&key);
            }
        }
    }

    pub fn get(&self, source: &str, id: &str) -> Option<&Arc<SourceDoc>> {
        self.sources.get(source)?.get(id)
    }

    /// A source's documents in id order.
    pub fn docs<'a>(&'a self, source: &str) -> impl Iterator<Item = &'a Arc<SourceDoc>> + use<'a> {
        self.sources
            .get(source)
            .into_iter()
            .flat_map(|docs| docs.values())
    }

    pub fn len(&self, source: &str) -> usize {
        self.sources.get(source).map_or(0, BTreeMap::len)
    }

    /// Stores `doc`, returning the previous version.
    pub fn upsert(&mut self, source: &SourceId, mut doc: SourceDoc) -> Option<Arc<SourceDoc>> {
        if let Some(body) = self.shared_copy(source, &doc.body) {
            doc.body = body;
        }
        self.file(source, &doc, true);
        let docs = self.sources.entry(source.clone()).or_default();
        let old = docs.insert(doc.id.clone(), Arc::new(doc));
        if let Some(old) = &old {
            self.unfile_replaced(source, old);
        }
        old
    }

    pub fn remove(&mut self, source: &str, id: &str) -> Option<Arc<SourceDoc>> {
        let old = self.sources.get_mut(source)?.remove(id)?;
        let (source, _) = self.sources.get_key_value(source)?;
        let source = source.clone();
        self.file(&source, &old, false);
        Some(old)
    }

    /// Removes the view entries of a replaced version that the current
    /// version is not filed under.
    fn unfile_replaced(&mut self, source: &SourceId, old: &SourceDoc) {
        let Some(keyer) = &self.keyer else {
            return;
        };
        let stale = keyer(source, old);
        if stale.is_empty() {
            return;
        }
        let current = self.sources.get(source).and_then(|d| d.get(&old.id));
        let keep = current.map_or_else(Vec::new, |doc| keyer(source, doc));
        let Some(views) = self.views.get_mut(source) else {
            return;
        };
        for key in stale.into_iter().filter(|k| !keep.contains(k)) {
            if let Some(ids) = views.get_mut(&key)
                && ids.remove(&old.id)
            {
                views.remove(&key);
            }
        }
    }

    /// Swaps a whole source, returning what it held before.
    pub fn replace(
        &mut self,
        source: &SourceId,
        mut docs: BTreeMap<String, Arc<SourceDoc>>,
    ) -> BTreeMap<String, Arc<SourceDoc>> {
        for doc in docs.values_mut() {
            if let Some(body) = self.shared_copy(source, &doc.body) {
                Arc::make_mut(doc).body = body;
            }
        }
        self.views.remove(source);
        for doc in docs.values() {
            self.file(source, doc, true);
        }
        self.sources
            .insert(source.clone(), docs)
            .unwrap_or_default()
    }
}

/// A builder's view of the index; records every read.
pub struct Reads<'a> {
    index: &'a Index,
    deps: BTreeSet<Dep>,
    revs: BTreeMap<SourceId, BTreeMap<String, String>>,
}

impl<'a> Reads<'a> {
    pub fn new(index: &'a Index) -> Reads<'a> {
        Reads {
            index,
            deps: BTreeSet::new(),
            revs: BTreeMap::new(),
        }
    }

    /// One document; a miss is recorded too, so its creation rebuilds.
    pub fn get(&mut self, source: &str, id: &str) -> Option<&'a Arc<SourceDoc>> {
        let source = self.source_id(source);
        self.deps.insert(Dep::Doc(source.clone(), id.to_string()));
        let doc = self.index.get(&source, id)?;
        self.revs
            .entry(source)
            .or_default()
            .insert(doc.id.clone(), doc.rev.clone());
        Some(doc)
    }

    /// Every document of a source, in id order; any change to the source
    /// rebuilds the reader.
    pub fn all(&mut self, source: &str) -> impl Iterator<Item = &'a Arc<SourceDoc>> + use<'a> {
        let source = self.source_id(source);
        self.deps.insert(Dep::Source(source.clone()));
        let revs = self.revs.entry(source.clone()).or_default();
        for doc in self.index.docs(&source) {
            revs.insert(doc.id.clone(), doc.rev.clone());
        }
        self.index.docs(&source)
    }

    /// The documents of `source` filed under view `key`, in id order; a
    /// document entering, leaving or changing under the key rebuilds the
    /// reader.
    pub fn view(
        &mut self,
        source: &str,
        key: &str,
    ) -> impl Iterator<Item = &'a Arc<SourceDoc>> + use<'a> {
        let source = self.source_id(source);
        self.deps.insert(Dep::View(source.clone(), key.to_string()));
        let revs = self.revs.entry(source.clone()).or_default();
        for doc in self.index.view(&source, key) {
            revs.insert(doc.id.clone(), doc.rev.clone());
        }
        self.index.view(&source, key)
    }

    /// What was read: the dependencies, and the revision of each document seen.
    pub fn finish(self) -> (BTreeSet<Dep>, BTreeMap<SourceId, BTreeMap<String, String>>) {
        (self.deps, self.revs)
    }

    fn source_id(&self, name: &str) -> SourceId {
        self.index
            .sources
            .get_key_value(name)
            .map_or_else(|| Arc::from(name), |(k, _)| k.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(id: &str, rev: &str) -> SourceDoc {
        SourceDoc {
            id: id.into(),
            rev: rev.into(),
            body: Body::of(&json!({"_id": id})),
        }
    }

    #[test]
    fn reads_record_hits_misses_and_whole_sources() {
        let mut index = Index::default();
        let source: SourceId = Arc::from("system_config");
        index.upsert(&source, doc("a", "1-x"));
        index.upsert(&source, doc("b", "2-y"));
        let mut reads = Reads::new(&index);
        assert!(reads.get("system_config", "a").is_some());
        assert!(reads.get("system_config", "missing").is_none());
        let (deps, revs) = reads.finish();
        assert_eq!(
            deps.into_iter().collect::<Vec<_>>(),
            [
                Dep::Doc(source.clone(), "a".into()),
                Dep::Doc(source.clone(), "missing".into())
            ]
        );
        assert_eq!(
            revs[&source],
            BTreeMap::from([("a".to_string(), "1-x".to_string())])
        );

        let mut reads = Reads::new(&index);
        let ids: Vec<_> = reads.all("system_config").map(|d| d.id.clone()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(
            reads.finish().0.into_iter().collect::<Vec<_>>(),
            [Dep::Source(source)]
        );
    }

    /// Files every document under `view:<field v>`, when it has one.
    fn keyed() -> Index {
        Index::with_keyer(Arc::new(|_, doc: &SourceDoc| {
            let json = doc.json().unwrap_or_default();
            json["v"]
                .as_str()
                .map(|v| vec![format!("view:{v}")])
                .unwrap_or_default()
        }))
    }

    fn filed(id: &str, view: &str) -> SourceDoc {
        SourceDoc {
            id: id.into(),
            rev: "1-a".into(),
            body: Body::of(&json!({"_id": id, "v": view})),
        }
    }

    fn in_view(index: &Index, key: &str) -> Vec<String> {
        index.view("s", key).map(|d| d.id.clone()).collect()
    }

    /// Views hold one id inline and several in order, through moves back
    /// and forth, and a key with nothing left is gone.
    #[test]
    fn views_keep_their_ids_in_order_as_documents_move() {
        let mut index = keyed();
        let source: SourceId = Arc::from("s");
        index.upsert(&source, filed("m", "x"));
        assert_eq!(in_view(&index, "view:x"), ["m"]);
        index.upsert(&source, filed("m", "x"));
        assert_eq!(in_view(&index, "view:x"), ["m"], "filed once");
        index.upsert(&source, filed("c", "x"));
        index.upsert(&source, filed("t", "x"));
        assert_eq!(in_view(&index, "view:x"), ["c", "m", "t"]);
        index.upsert(&source, filed("c", "y"));
        index.upsert(&source, filed("t", "y"));
        assert_eq!(in_view(&index, "view:x"), ["m"], "back to one");
        assert_eq!(in_view(&index, "view:y"), ["c", "t"]);
        index.remove("s", "m");
        assert!(in_view(&index, "view:x").is_empty());
        assert!(
            !index.views["s"].contains_key("view:x"),
            "an empty key goes"
        );
        index.remove("s", "missing");
        index.remove("s", "t");
        index.remove("s", "c");
        assert!(index.views["s"].is_empty());
        index.upsert(&source, filed("a", "z"));
        assert_eq!(in_view(&index, "view:z"), ["a"]);
    }

    fn text_of(index: &Index, source: &str, id: &str) -> crate::json::JsonText {
        match &index.get(source, id).unwrap().body {
            Body::Json(text) => text.clone(),
            Body::Malformed(why) => panic!("{why}"),
        }
    }

    /// A shared source's documents keep the one copy of a text another
    /// holder (the phones shell) has, by upsert and by replace; other
    /// sources keep their own.
    #[test]
    fn shared_sources_hold_one_copy_of_a_text_another_holder_has() {
        use crate::json::JsonText;
        let mut index = Index::default();
        let units: SourceId = Arc::from("units_shared_test");
        let other: SourceId = Arc::from("other_test");
        index.share_texts_of([units.clone()]);
        let body = json!({"_id": "u", "shared-test": 1});
        let elsewhere = TextPool::global().share(JsonText::of(&body));
        for source in [&units, &other] {
            index.upsert(
                source,
                SourceDoc {
                    id: "u".into(),
                    rev: "1-a".into(),
                    body: Body::of(&body),
                },
            );
        }
        assert!(text_of(&index, &units, "u").same_copy(&elsewhere));
        assert!(!text_of(&index, &other, "u").same_copy(&elsewhere));
        let replaced = SourceDoc {
            id: "v".into(),
            rev: "1-a".into(),
            body: Body::of(&body),
        };
        index.replace(
            &units,
            BTreeMap::from([("v".to_string(), Arc::new(replaced))]),
        );
        assert!(text_of(&index, &units, "v").same_copy(&elsewhere));
        assert_eq!(text_of(&index, &units, "v").parse(), body);
    }
}
