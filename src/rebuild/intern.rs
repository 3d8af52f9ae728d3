//! Interning: each distinct key stored once and named by a dense `u32`, so
//! the structures that refer to it (the dependency map's two directions)
//! hold four bytes per reference instead of a copy of the key.
//!
//! Written here rather than taken from an interner crate because ids must be
//! *released* when the last reference goes (a dependency no output reads
//! any more costs nothing) and reused, which the common interners (append
//! only) do not do. The table is `hashbrown::HashTable` holding only ids;
//! each key lives once, in `keys`.

use std::hash::{BuildHasher, Hash};

use hashbrown::DefaultHashBuilder;
use hashbrown::HashTable;

/// Keys by dense id; released ids are reused.
pub struct Interner<K> {
    keys: Vec<Option<K>>,
    table: HashTable<u32>,
    free: Vec<u32>,
    hasher: DefaultHashBuilder,
}

impl<K> Default for Interner<K> {
    fn default() -> Self {
        Interner {
            keys: Vec::new(),
            table: HashTable::new(),
            free: Vec::new(),
            hasher: DefaultHashBuilder::default(),
        }
    }
}

impl<K: Hash + Eq> Interner<K> {
    /// The id of `key`, if interned.
    pub fn find<Q>(&self, key: &Q) -> Option<u32>
    where
        Q: Hash + Eq + ?Sized,
        K: std::borrow::Borrow<Q>,
    {
        let hash = self.hasher.hash_one(key);
        self.table
            .find(hash, |&id| {
                self.keys[id as usize].as_ref().map(|k| k.borrow()) == Some(key)
            })
            .copied()
    }

    /// The id of `key`, interning it when new.
    pub fn intern(&mut self, key: K) -> u32 {
        if let Some(id) = self.find(&key) {
            return id;
        }
        let hash = self.hasher.hash_one(&key);
        let id = match self.free.pop() {
            Some(id) => {
                self.keys[id as usize] = Some(key);
                id
            }
            None => {
                let id = u32::try_from(self.keys.len()).expect("fewer than 2^32 keys");
                self.keys.push(Some(key));
                id
            }
        };
        let (keys, hasher) = (&self.keys, &self.hasher);
        self.table.insert_unique(hash, id, |&other| {
            hasher.hash_one(
                keys[other as usize]
                    .as_ref()
                    .expect("interned ids are live"),
            )
        });
        id
    }

    /// Forgets `id`; it may be handed out again.
    pub fn release(&mut self, id: u32) {
        let Some(key) = self.keys.get_mut(id as usize).and_then(Option::take) else {
            return;
        };
        let hash = self.hasher.hash_one(&key);
        if let Ok(entry) = self.table.find_entry(hash, |&other| other == id) {
            entry.remove();
        }
        self.free.push(id);
    }

    pub fn get(&self, id: u32) -> Option<&K> {
        self.keys.get(id as usize)?.as_ref()
    }

    /// Every live key with its id.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &K)> {
        self.keys
            .iter()
            .enumerate()
            .filter_map(|(id, key)| Some((id as u32, key.as_ref()?)))
    }

    /// How many keys are live.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// One past the largest id ever handed out (for tables indexed by id).
    pub fn capacity(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_released_and_reused() {
        let mut interner: Interner<String> = Interner::default();
        let a = interner.intern("a".into());
        let b = interner.intern("b".into());
        assert_ne!(a, b);
        assert_eq!(interner.intern("a".into()), a);
        assert_eq!(interner.find("b"), Some(b));
        interner.release(a);
        assert_eq!(interner.find("a"), None);
        assert_eq!(interner.len(), 1);
        let c = interner.intern("c".into());
        assert_eq!(c, a, "a released id is reused");
        assert_eq!(interner.get(c).map(String::as_str), Some("c"));
        assert_eq!(interner.find("b"), Some(b));
        let live: Vec<_> = interner.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(live, ["c", "b"]);
    }

    /// Many interns and releases agree with a plain map.
    #[test]
    fn random_interns_and_releases_agree_with_a_map() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut interner: Interner<u64> = Interner::default();
        let mut model = std::collections::HashMap::new();
        for _ in 0..20_000 {
            let key = rng.u64(..500);
            if rng.bool() {
                let id = interner.intern(key);
                assert_eq!(*model.entry(key).or_insert(id), id);
            } else if let Some(id) = model.remove(&key) {
                interner.release(id);
            }
            assert_eq!(interner.len(), model.len());
        }
        for (key, id) in &model {
            assert_eq!(interner.find(key), Some(*id));
            assert_eq!(interner.get(*id), Some(key));
        }
    }
}
