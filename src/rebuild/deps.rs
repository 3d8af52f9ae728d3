//! The dependency map: for every output, what its last build read; for every
//! document (or whole source, or view key), the outputs that read it.
//!
//! Invariant: the two directions always agree; `set` replaces an output's
//! dependencies atomically, `remove` forgets an output entirely (an absent
//! output is brought back by its root document, not by its old reads).
//!
//! Memory: outputs and dependencies are interned (`rebuild::intern`), so
//! each is stored once however many edges name it, and an edge costs four
//! bytes in each direction (measured at 20k phone units, 24 dependencies
//! each: 60 MB as sets of `Dep`s both ways, see BENCHMARKS.md for now). A
//! dependency no output reads any more is released. `set` with the
//! dependencies an output already has changes nothing, which is what a
//! rebuild after most edits finds (a policy edit does not change what its
//! units read), so re-recording costs lookups, not relinking.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::index::{Dep, SourceId};
use super::intern::Interner;
use crate::domains::Domain;

/// An output: its domain and key.
pub type OutputId = (Domain, String);

/// Up to this many readers are a list; more, a set (a policy read by ten
/// thousand units must not cost a linear scan per unit relinked).
const FEW_READERS: usize = 32;

/// The outputs that read one dependency.
#[derive(Debug)]
enum Readers {
    Few(Vec<u32>),
    Many(HashSet<u32>),
}

impl Readers {
    fn insert(&mut self, output: u32) {
        match self {
            Readers::Few(list) if list.len() < FEW_READERS => {
                if !list.contains(&output) {
                    list.push(output);
                }
            }
            Readers::Few(list) => {
                let mut set: HashSet<u32> = list.drain(..).collect();
                set.insert(output);
                *self = Readers::Many(set);
            }
            Readers::Many(set) => {
                set.insert(output);
            }
        }
    }

    fn remove(&mut self, output: u32) {
        match self {
            Readers::Few(list) => {
                if let Some(at) = list.iter().position(|&o| o == output) {
                    list.swap_remove(at);
                }
            }
            Readers::Many(set) => {
                set.remove(&output);
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Readers::Few(list) => list.is_empty(),
            Readers::Many(set) => set.is_empty(),
        }
    }

    fn iter(&self) -> Box<dyn Iterator<Item = u32> + '_> {
        match self {
            Readers::Few(list) => Box::new(list.iter().copied()),
            Readers::Many(set) => Box::new(set.iter().copied()),
        }
    }
}

#[derive(Default)]
pub struct DepGraph {
    outputs: Interner<OutputId>,
    /// Dependencies in their interned form (`dep_key`).
    deps: Interner<Box<str>>,
    /// Source names by the number `dep_key` writes for them.
    sources: Vec<SourceId>,
    source_numbers: HashMap<SourceId, usize>,
    /// By output id: its dependency ids, sorted.
    by_output: Vec<Option<Box<[u32]>>>,
    /// By dependency id: the outputs that read it.
    by_dep: Vec<Option<Readers>>,
}

impl std::fmt::Debug for DepGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DepGraph")
            .field("outputs", &self.outputs.len())
            .field("deps", &self.deps.len())
            .finish_non_exhaustive()
    }
}

impl DepGraph {
    /// Records what `output`'s latest build read.
    pub fn set(&mut self, output: OutputId, deps: BTreeSet<Dep>) {
        let out = self.outputs.intern(output);
        let mut ids: Vec<u32> = deps.iter().map(|dep| self.intern_dep(dep)).collect();
        ids.sort_unstable();
        grow(&mut self.by_output, out);
        let old = self.by_output[out as usize].take().unwrap_or_default();
        if *old == *ids {
            self.by_output[out as usize] = Some(old);
            return;
        }
        for &dep in old.iter().filter(|d| ids.binary_search(d).is_err()) {
            self.unlink(dep, out);
        }
        for &dep in ids.iter().filter(|d| old.binary_search(d).is_err()) {
            grow(&mut self.by_dep, dep);
            self.by_dep[dep as usize]
                .get_or_insert_with(|| Readers::Few(Vec::new()))
                .insert(out);
        }
        self.by_output[out as usize] = Some(ids.into_boxed_slice());
    }

    pub fn remove(&mut self, output: &OutputId) {
        let Some(out) = self.outputs.find(output) else {
            return;
        };
        let old = self.by_output[out as usize].take().unwrap_or_default();
        for &dep in old.iter() {
            self.unlink(dep, out);
        }
        self.outputs.release(out);
    }

    /// The outputs that read `dep`.
    pub fn dependents<'a>(&'a self, dep: &Dep) -> impl Iterator<Item = &'a OutputId> + use<'a> {
        let readers = self
            .find_dep(dep)
            .and_then(|id| self.by_dep.get(id as usize)?.as_ref());
        readers
            .into_iter()
            .flat_map(Readers::iter)
            .filter_map(|out| self.outputs.get(out))
    }

    /// Every output with recorded dependencies.
    pub fn outputs(&self) -> impl Iterator<Item = &OutputId> {
        self.outputs.iter().map(|(_, output)| output)
    }

    pub fn len(&self) -> usize {
        self.outputs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }

    /// How many distinct dependencies some output reads.
    pub fn dependency_count(&self) -> usize {
        self.deps.len()
    }

    /// Removes one edge; a dependency left without readers is released.
    fn unlink(&mut self, dep: u32, out: u32) {
        let Some(readers) = self.by_dep.get_mut(dep as usize).and_then(Option::as_mut) else {
            return;
        };
        readers.remove(out);
        if readers.is_empty() {
            self.by_dep[dep as usize] = None;
            self.deps.release(dep);
        }
    }

    fn intern_dep(&mut self, dep: &Dep) -> u32 {
        let source = dep_source(dep);
        let number = match self.source_numbers.get(source) {
            Some(&n) => n,
            None => {
                self.sources.push(source.clone());
                self.source_numbers
                    .insert(source.clone(), self.sources.len() - 1);
                self.sources.len() - 1
            }
        };
        self.deps.intern(dep_key(dep, number).into_boxed_str())
    }

    fn find_dep(&self, dep: &Dep) -> Option<u32> {
        let number = *self.source_numbers.get(dep_source(dep))?;
        self.deps.find(dep_key(dep, number).as_str())
    }
}

fn dep_source(dep: &Dep) -> &SourceId {
    let (Dep::Doc(source, _) | Dep::Source(source) | Dep::View(source, _)) = dep;
    source
}

/// A dependency as one string: its kind, its source's number, its name
/// (`d3:unit-1`, `s3:`, `v3:phones:pc:acct`).
fn dep_key(dep: &Dep, source: usize) -> String {
    let (kind, name) = match dep {
        Dep::Doc(_, id) => ('d', id.as_str()),
        Dep::Source(_) => ('s', ""),
        Dep::View(_, key) => ('v', key.as_str()),
    };
    format!("{kind}{source}:{name}")
}

/// Makes `table[id]` exist.
fn grow<T>(table: &mut Vec<Option<T>>, id: u32) {
    if table.len() <= id as usize {
        table.resize_with(id as usize + 1, || None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn doc(id: &str) -> Dep {
        Dep::Doc(Arc::from("s"), id.to_string())
    }

    #[test]
    fn both_directions_follow_replacement_and_removal() {
        let mut graph = DepGraph::default();
        let a = (Domain::Sysconf, "a".to_string());
        let b = (Domain::Sysconf, "b".to_string());
        graph.set(a.clone(), BTreeSet::from([doc("x"), doc("y")]));
        graph.set(b.clone(), BTreeSet::from([doc("y")]));
        let mut readers: Vec<_> = graph.dependents(&doc("y")).cloned().collect();
        readers.sort();
        assert_eq!(readers, [a.clone(), b.clone()]);

        graph.set(a.clone(), BTreeSet::from([doc("z")]));
        assert_eq!(
            graph.dependents(&doc("x")).count(),
            0,
            "old reads are forgotten"
        );
        assert_eq!(
            graph.dependents(&doc("y")).cloned().collect::<Vec<_>>(),
            std::slice::from_ref(&b)
        );

        graph.remove(&b);
        assert_eq!(graph.dependents(&doc("y")).count(), 0);
        assert_eq!(graph.len(), 1);
        assert_eq!(
            graph.dependency_count(),
            1,
            "no empty entries are left behind"
        );
        assert_eq!(graph.dependents(&doc("z")).count(), 1);
    }

    /// Random sets and removals agree with a plain model of both
    /// directions, and leave no dependency without a reader.
    #[test]
    fn random_updates_agree_with_a_plain_model() {
        let seed = std::env::var("CALDERA_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..));
        eprintln!("dep graph: seed {seed} (replay with CALDERA_TEST_SEED={seed})");
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut graph = DepGraph::default();
        let mut model: std::collections::BTreeMap<OutputId, BTreeSet<Dep>> = Default::default();
        let pool: Vec<Dep> = (0..8)
            .map(|n| doc(&n.to_string()))
            .chain([Dep::Source(Arc::from("s"))])
            .collect();
        for step in 0..2000 {
            let output = (Domain::Phones, format!("o{}", rng.u8(..6)));
            if rng.u8(..5) == 0 {
                graph.remove(&output);
                model.remove(&output);
            } else {
                let deps: BTreeSet<Dep> = (0..rng.usize(..5))
                    .map(|_| pool[rng.usize(..pool.len())].clone())
                    .collect();
                graph.set(output.clone(), deps.clone());
                model.insert(output, deps);
            }
            for dep in &pool {
                let mut found: Vec<&OutputId> = graph.dependents(dep).collect();
                found.sort();
                let wanted: Vec<&OutputId> = model
                    .iter()
                    .filter(|(_, deps)| deps.contains(dep))
                    .map(|(output, _)| output)
                    .collect();
                assert_eq!(found, wanted, "seed {seed}, step {step}, {dep:?}");
            }
            let mut outputs: Vec<&OutputId> = graph.outputs().collect();
            outputs.sort();
            assert!(
                outputs.iter().copied().eq(model.keys()),
                "seed {seed}, step {step}"
            );
            let read: BTreeSet<&Dep> = model.values().flatten().collect();
            assert_eq!(
                graph.dependency_count(),
                read.len(),
                "seed {seed}, step {step}"
            );
        }
    }
}
