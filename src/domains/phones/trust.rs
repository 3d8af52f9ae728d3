//! Trusted (address, MAC) pairs: the devices each source address was
//! served to, so that a MAC scanner behind a NAT does not lock out the real
//! phones behind the same address. Pure: the clock (unix seconds) is the
//! caller's; the state file's IO is `trust_store`'s.
//!
//! A pair is remembered when a per-device file is served (with the unit's
//! credentials, when it has some) and holds for `ttl` after it was last
//! seen. While its source cools down, a request for a remembered MAC with
//! the same User-Agent (compared by a 64-bit hash) is decided as if the
//! source were not throttled; anything else gets the cool-down's 429, so a
//! scanner learns nothing from which MACs are remembered. Requiring the
//! exact User-Agent means a scanner must guess the phone's firmware string
//! as well as its MAC; a phone whose firmware changed during a cool-down is
//! treated as new until the cool-down ends.
//!
//! Memory is bounded: an LRU per shard (the table's `max` split evenly),
//! its nodes in a slab with index links, so a lookup or a refresh takes a
//! shard lock and a hash probe and allocates nothing once the shard is
//! full (the evicted node's slot is reused).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::mac::Mac;

/// Shards of the table, so phones served on different threads rarely wait
/// on each other.
const SHARDS: usize = 16;

/// A pair's last-seen time is rewritten only when it moved this far (of
/// the TTL, at least a minute): an LRU move is memory only, but a changed
/// time must be saved, and saving every request's time would rewrite the
/// state file at every interval.
const SEEN_STEP_DIVISOR: u64 = 64;

/// FNV-1a (64 bits): cheap and stable across builds, so hashes saved in the
/// state file still match after an upgrade.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// One remembered device: the source (already keyed as the limiter keys
/// it, an IPv6 address as its /64), the MAC, the User-Agent's hash and when
/// it was last served (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    pub source: IpAddr,
    pub mac: Mac,
    pub agent: u64,
    pub seen: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    source: IpAddr,
    mac: Mac,
}

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Node {
    key: Key,
    agent: u64,
    seen: u64,
    /// Towards the most recently used end.
    newer: u32,
    /// Towards the least recently used end.
    older: u32,
}

/// A bounded least-recently-used map of pairs.
#[derive(Debug)]
pub struct Lru {
    index: HashMap<Key, u32>,
    nodes: Vec<Node>,
    newest: u32,
    oldest: u32,
    capacity: usize,
}

impl Lru {
    pub fn new(capacity: usize) -> Lru {
        Lru {
            index: HashMap::new(),
            nodes: Vec::new(),
            newest: NIL,
            oldest: NIL,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Remembers `pair` as the most recent; returns true when the stored
    /// state changed (a new pair, another User-Agent, or a last-seen time
    /// that moved by `step` or more).
    pub fn touch(&mut self, pair: Pair, step: u64) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let key = Key {
            source: pair.source,
            mac: pair.mac,
        };
        if let Some(&slot) = self.index.get(&key) {
            self.move_to_front(slot);
            let node = &mut self.nodes[slot as usize];
            let changed = node.agent != pair.agent || pair.seen >= node.seen.saturating_add(step);
            if changed {
                node.agent = pair.agent;
                node.seen = pair.seen;
            }
            return changed;
        }
        self.shrink_to(self.capacity - 1);
        let node = Node {
            key,
            agent: pair.agent,
            seen: pair.seen,
            newer: NIL,
            older: NIL,
        };
        let slot = self.nodes.len() as u32;
        self.nodes.push(node);
        self.index.insert(key, slot);
        self.link_front(slot);
        true
    }

    /// The User-Agent hash and last-seen time of a pair, if remembered.
    pub fn get(&self, source: IpAddr, mac: Mac) -> Option<(u64, u64)> {
        let slot = *self.index.get(&Key { source, mac })?;
        let node = &self.nodes[slot as usize];
        Some((node.agent, node.seen))
    }

    /// Changes the size limit, evicting the least recently used pairs.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        self.shrink_to(capacity);
    }

    /// Forgets the pairs last seen before `cutoff`; returns how many.
    pub fn forget_older_than(&mut self, cutoff: u64) -> usize {
        // Keys, not slots: a removal moves the slab's last node.
        let stale: Vec<Key> = self
            .nodes
            .iter()
            .filter(|node| node.seen < cutoff)
            .map(|node| node.key)
            .collect();
        for key in &stale {
            if let Some(&slot) = self.index.get(key) {
                self.remove(slot);
            }
        }
        stale.len()
    }

    /// Every pair, least recently used first (the order that rebuilds the
    /// same recency when touched back in).
    pub fn pairs(&self) -> impl Iterator<Item = Pair> + '_ {
        let mut slot = self.oldest;
        std::iter::from_fn(move || {
            let node = self.nodes.get(slot as usize)?;
            slot = node.newer;
            Some(Pair {
                source: node.key.source,
                mac: node.key.mac,
                agent: node.agent,
                seen: node.seen,
            })
        })
    }

    fn shrink_to(&mut self, capacity: usize) {
        while self.nodes.len() > capacity && self.oldest != NIL {
            self.remove(self.oldest);
        }
    }

    fn unlink(&mut self, slot: u32) {
        let Node { newer, older, .. } = self.nodes[slot as usize];
        match newer {
            NIL => self.newest = older,
            n => self.nodes[n as usize].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            o => self.nodes[o as usize].newer = newer,
        }
    }

    fn link_front(&mut self, slot: u32) {
        let node = &mut self.nodes[slot as usize];
        node.newer = NIL;
        node.older = self.newest;
        match self.newest {
            NIL => self.oldest = slot,
            n => self.nodes[n as usize].newer = slot,
        }
        self.newest = slot;
    }

    fn move_to_front(&mut self, slot: u32) {
        if self.newest != slot {
            self.unlink(slot);
            self.link_front(slot);
        }
    }

    /// Removes a node, moving the slab's last node into its slot so the
    /// slab stays dense.
    fn remove(&mut self, slot: u32) {
        self.unlink(slot);
        let removed = self.nodes[slot as usize].key;
        self.index.remove(&removed);
        let last = (self.nodes.len() - 1) as u32;
        self.nodes.swap_remove(slot as usize);
        if slot == last {
            return;
        }
        // The node that moved: repoint its neighbours and its index entry.
        let moved = self.nodes[slot as usize];
        match moved.newer {
            NIL => self.newest = slot,
            n => self.nodes[n as usize].older = slot,
        }
        match moved.older {
            NIL => self.oldest = slot,
            o => self.nodes[o as usize].newer = slot,
        }
        self.index.insert(moved.key, slot);
    }
}

/// What a throttled request is, as far as trust goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Its credentials were accepted: proof, not a guess.
    Authenticated,
    /// A remembered (address, MAC) pair with the same User-Agent.
    Remembered,
    /// Anything else: the cool-down's 429.
    Stranger,
}

/// The table's settings (`phones.trusted_pair*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustLimits {
    /// How long after it was last served a pair holds, in seconds.
    pub ttl: u64,
    /// Most pairs remembered (0: none, trust is off).
    pub max: usize,
}

impl TrustLimits {
    fn step(&self) -> u64 {
        (self.ttl / SEEN_STEP_DIVISOR).max(60)
    }

    /// Shard `i`'s share of `max` (the shares add up to `max` exactly).
    fn per_shard(&self, i: usize) -> usize {
        self.max / SHARDS + usize::from(i < self.max % SHARDS)
    }
}

/// The sharded table the phones service keeps.
pub struct Trust {
    shards: Vec<Mutex<Lru>>,
    /// Bumped on every change worth saving (see `Lru::touch`).
    changes: AtomicU64,
}

impl Trust {
    pub fn new(limits: TrustLimits) -> Trust {
        Trust {
            shards: (0..SHARDS)
                .map(|i| Mutex::new(Lru::new(limits.per_shard(i))))
                .collect(),
            changes: AtomicU64::new(0),
        }
    }

    fn shard(&self, mac: Mac) -> std::sync::MutexGuard<'_, Lru> {
        // The MAC's low bits vary most (a vendor's OUI is the high half);
        // the address is left out so one NAT's phones spread over shards.
        let index = fnv1a64(&mac.bytes()) as usize % SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers a device served from `source` (limiter-keyed).
    pub fn remember(&self, pair: Pair, limits: &TrustLimits) {
        if limits.max == 0 {
            return;
        }
        if self.shard(pair.mac).touch(pair, limits.step()) {
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether a request for `mac` with a User-Agent hashing to `agent`
    /// from `source` is a remembered pair at `now`.
    pub fn holds(&self, pair: Pair, limits: &TrustLimits) -> bool {
        if limits.max == 0 {
            return false;
        }
        self.shard(pair.mac)
            .get(pair.source, pair.mac)
            .is_some_and(|(agent, seen)| {
                agent == pair.agent && pair.seen < seen.saturating_add(limits.ttl)
            })
    }

    /// How a request from a cooling source stands: `pair` is its (source,
    /// MAC, User-Agent hash, now) when it names a device.
    pub fn standing(
        &self,
        authenticated: bool,
        pair: Option<Pair>,
        limits: &TrustLimits,
    ) -> Standing {
        if authenticated {
            Standing::Authenticated
        } else if pair.is_some_and(|pair| self.holds(pair, limits)) {
            Standing::Remembered
        } else {
            Standing::Stranger
        }
    }

    /// Applies new limits: shards shrink at once, expired pairs go.
    pub fn apply(&self, limits: &TrustLimits, now: u64) {
        let cutoff = now.saturating_sub(limits.ttl);
        for (i, shard) in self.shards.iter().enumerate() {
            let mut lru = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let before = lru.len();
            lru.set_capacity(limits.per_shard(i));
            lru.forget_older_than(cutoff);
            if lru.len() != before {
                self.changes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Pairs remembered now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A counter that moves whenever there is something new to save.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Every pair not expired at `now` (for the state file), each shard
    /// oldest first.
    pub fn snapshot(&self, limits: &TrustLimits, now: u64) -> Vec<Pair> {
        let cutoff = now.saturating_sub(limits.ttl);
        let mut pairs = Vec::new();
        for shard in &self.shards {
            let lru = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            pairs.extend(lru.pairs().filter(|p| p.seen >= cutoff));
        }
        pairs
    }

    /// Takes back pairs from the state file (unexpired ones, in order).
    pub fn restore(&self, pairs: &[Pair], limits: &TrustLimits, now: u64) -> usize {
        let cutoff = now.saturating_sub(limits.ttl);
        let mut restored = 0;
        for pair in pairs.iter().filter(|p| p.seen >= cutoff && p.seen <= now) {
            self.remember(*pair, limits);
            restored += 1;
        }
        restored
    }
}

/// The state file's first line; a file without it is not ours.
const HEADER: &str = "# caldera phones trusted pairs v1";

/// The state file's text: a header, then one pair per line
/// (`<source> <mac> <agent hash, hex> <last seen, unix seconds>`).
pub fn encode(pairs: &[Pair]) -> String {
    let mut text = String::with_capacity(HEADER.len() + 1 + pairs.len() * 48);
    text.push_str(HEADER);
    text.push('\n');
    for pair in pairs {
        use std::fmt::Write;
        let _ = writeln!(
            text,
            "{} {} {:016x} {}",
            pair.source, pair.mac, pair.agent, pair.seen
        );
    }
    text
}

/// The pairs of a state file's text; any line that does not read is an
/// error for the whole file (it is written whole, by rename, so a bad line
/// means it is not what caldera wrote).
pub fn decode(text: &str) -> Result<Vec<Pair>, String> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err("the first line is not the state file's header".to_string());
    }
    lines
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(n, line)| decode_line(line).ok_or_else(|| format!("line {} does not read", n + 2)))
        .collect()
}

fn decode_line(line: &str) -> Option<Pair> {
    let mut fields = line.split(' ');
    let pair = Pair {
        source: fields.next()?.parse().ok()?,
        mac: Mac::parse(fields.next()?)?,
        agent: u64::from_str_radix(fields.next()?, 16).ok()?,
        seen: fields.next()?.parse().ok()?,
    };
    fields.next().is_none().then_some(pair)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(n: u32, seen: u64) -> Pair {
        Pair {
            source: "192.0.2.1".parse().unwrap(),
            mac: Mac::parse(&format!("0015{n:08x}")).unwrap(),
            agent: 7,
            seen,
        }
    }

    fn check_links(lru: &Lru) {
        let forward: Vec<Pair> = lru.pairs().collect();
        assert_eq!(forward.len(), lru.len(), "every node is linked once");
        assert_eq!(lru.index.len(), lru.len());
        for (slot, node) in lru.nodes.iter().enumerate() {
            assert_eq!(lru.index[&node.key], slot as u32);
        }
    }

    #[test]
    fn the_least_recently_used_pair_goes_first() {
        let mut lru = Lru::new(3);
        for n in 0..3 {
            assert!(lru.touch(pair(n, 100), 60));
        }
        // A refresh of the oldest moves it to the front.
        assert!(
            !lru.touch(pair(0, 110), 60),
            "a time that moved less than a step"
        );
        assert!(lru.touch(pair(3, 100), 60));
        check_links(&lru);
        let kept: Vec<Mac> = lru.pairs().map(|p| p.mac).collect();
        assert_eq!(kept, vec![pair(2, 0).mac, pair(0, 0).mac, pair(3, 0).mac]);
        assert_eq!(lru.get(pair(1, 0).source, pair(1, 0).mac), None);
        assert_eq!(lru.get(pair(0, 0).source, pair(0, 0).mac), Some((7, 100)));
        // Another User-Agent, or a time a step later, is a change to save.
        assert!(lru.touch(
            Pair {
                agent: 8,
                ..pair(0, 100)
            },
            60
        ));
        assert!(lru.touch(pair(0, 160), 60));
        lru.set_capacity(1);
        check_links(&lru);
        assert_eq!(
            lru.pairs().map(|p| p.mac).collect::<Vec<_>>(),
            vec![pair(0, 0).mac]
        );
        let mut off = Lru::new(0);
        assert!(!off.touch(pair(0, 1), 60));
        assert!(off.is_empty());
    }

    #[test]
    fn the_table_stays_within_its_limit_under_100k_distinct_macs() {
        let limits = TrustLimits {
            ttl: 3 * 86_400,
            max: 1_000,
        };
        let trust = Trust::new(limits);
        for n in 0..100_000 {
            trust.remember(pair(n, 1_000 + u64::from(n)), &limits);
            if n % 10_000 == 0 {
                assert!(trust.len() <= limits.max);
            }
        }
        assert!(trust.len() <= limits.max, "{}", trust.len());
        assert!(
            trust.len() > limits.max * 9 / 10,
            "the shards fill evenly: {}",
            trust.len()
        );
        for shard in &trust.shards {
            check_links(&shard.lock().unwrap());
        }
        // The most recent survive, the first are gone.
        let now = 200_000;
        assert!(trust.holds(
            Pair {
                seen: now,
                ..pair(99_999, 0)
            },
            &limits
        ));
        assert!(!trust.holds(
            Pair {
                seen: now,
                ..pair(0, 0)
            },
            &limits
        ));
    }

    #[test]
    fn a_pair_holds_with_its_user_agent_until_its_ttl() {
        let limits = TrustLimits {
            ttl: 1_000,
            max: 100,
        };
        let trust = Trust::new(limits);
        trust.remember(pair(1, 5_000), &limits);
        assert!(trust.holds(pair(1, 5_999), &limits));
        assert!(!trust.holds(pair(1, 6_000), &limits), "expired");
        assert!(
            !trust.holds(
                Pair {
                    agent: 8,
                    ..pair(1, 5_500)
                },
                &limits
            ),
            "another User-Agent"
        );
        let elsewhere = Pair {
            source: "192.0.2.2".parse().unwrap(),
            ..pair(1, 5_500)
        };
        assert!(!trust.holds(elsewhere, &limits), "another address");
        assert!(!trust.holds(pair(2, 5_500), &limits), "another MAC");
        assert_eq!(
            trust.standing(false, Some(pair(1, 5_500)), &limits),
            Standing::Remembered
        );
        assert_eq!(trust.standing(true, None, &limits), Standing::Authenticated);
        assert_eq!(
            trust.standing(false, Some(pair(2, 5_500)), &limits),
            Standing::Stranger
        );
        assert_eq!(trust.standing(false, None, &limits), Standing::Stranger);
        let off = TrustLimits { max: 0, ..limits };
        assert!(!trust.holds(pair(1, 5_500), &off));
        trust.remember(pair(3, 5_000), &off);
        assert_eq!(trust.len(), 1, "nothing is remembered while trust is off");
        // Expired pairs go on apply, and from snapshots.
        trust.remember(pair(4, 5_900), &limits);
        assert_eq!(trust.snapshot(&limits, 6_500), vec![pair(4, 5_900)]);
        let before = trust.changes();
        trust.apply(&limits, 6_500);
        assert_eq!(trust.len(), 1);
        assert!(trust.changes() > before);
    }

    #[test]
    fn forgetting_expired_pairs_keeps_the_links_whole() {
        let mut lru = Lru::new(100);
        for n in 0..50 {
            lru.touch(pair(n, u64::from(n % 7) * 100), 60);
        }
        // n % 7 in {0, 1, 2}: 8 + 7 + 7 of the 50.
        assert_eq!(lru.forget_older_than(300), 22);
        check_links(&lru);
        assert!(lru.pairs().all(|p| p.seen >= 300));
    }

    #[test]
    fn the_state_file_round_trips_and_a_bad_one_is_refused() {
        let v6 = Pair {
            source: "2001:db8::".parse().unwrap(),
            ..pair(9, 42)
        };
        let pairs = vec![pair(1, 1_700_000_000), v6];
        let text = encode(&pairs);
        assert!(text.starts_with(HEADER));
        assert_eq!(decode(&text).unwrap(), pairs);
        assert_eq!(decode(&format!("{HEADER}\n")).unwrap(), vec![]);
        assert!(decode("").is_err());
        assert!(decode("garbage\n").is_err());
        let truncated = &text[..text.len() - 5];
        assert!(decode(&format!("{truncated}x\n")).is_err());
        assert!(decode(&format!("{text}192.0.2.1 nope 7 1\n")).is_err());
        assert!(decode(&format!("{text}192.0.2.1 001565000001 7 1 extra\n")).is_err());
        // Restoring keeps only what has not expired (nor is in the future).
        let limits = TrustLimits { ttl: 100, max: 10 };
        let trust = Trust::new(limits);
        let restored = trust.restore(&[pair(1, 50), pair(2, 950), pair(3, 2_000)], &limits, 1_000);
        assert_eq!(restored, 1);
        assert!(trust.holds(pair(2, 1_000), &limits));
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c, "FNV-1a 64 of \"a\"");
    }
}
