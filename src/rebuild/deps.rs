//! The dependency map: for every output, what its last build read; for every
//! document (or whole source), the outputs that read it.
//!
//! Invariant: the two directions always agree; `set` replaces an output's
//! dependencies atomically, `remove` forgets an output entirely (an absent
//! output is brought back by its root document, not by its old reads).

use std::collections::{BTreeSet, HashMap, HashSet};

use super::index::Dep;
use crate::domains::Domain;

/// An output: its domain and key.
pub type OutputId = (Domain, String);

#[derive(Debug, Default)]
pub struct DepGraph {
    by_output: HashMap<OutputId, BTreeSet<Dep>>,
    by_dep: HashMap<Dep, HashSet<OutputId>>,
}

impl DepGraph {
    /// Records what `output`'s latest build read.
    pub fn set(&mut self, output: OutputId, deps: BTreeSet<Dep>) {
        self.unlink(&output);
        for dep in &deps {
            self.by_dep
                .entry(dep.clone())
                .or_default()
                .insert(output.clone());
        }
        self.by_output.insert(output, deps);
    }

    pub fn remove(&mut self, output: &OutputId) {
        self.unlink(output);
        self.by_output.remove(output);
    }

    /// The outputs that read `dep`.
    pub fn dependents<'a>(&'a self, dep: &Dep) -> impl Iterator<Item = &'a OutputId> + use<'a> {
        self.by_dep.get(dep).into_iter().flatten()
    }

    /// Every output with recorded dependencies.
    pub fn outputs(&self) -> impl Iterator<Item = &OutputId> {
        self.by_output.keys()
    }

    pub fn len(&self) -> usize {
        self.by_output.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_output.is_empty()
    }

    fn unlink(&mut self, output: &OutputId) {
        let Some(old) = self.by_output.get(output) else {
            return;
        };
        for dep in old {
            if let Some(outputs) = self.by_dep.get_mut(dep) {
                outputs.remove(output);
                if outputs.is_empty() {
                    self.by_dep.remove(dep);
                }
            }
        }
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
        assert!(
            graph.by_dep.keys().all(|dep| *dep == doc("z")),
            "no empty entries are left behind"
        );
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
            assert_eq!(graph.by_dep.len(), read.len(), "seed {seed}, step {step}");
        }
    }
}
