//! Smooth weighted round-robin (nginx's algorithm), pure and deterministic.
//!
//! Each round every member's `current` grows by its weight; the member with
//! the largest `current` (the first one on ties) leads and gives back the
//! total. Over `sum(weights)` rounds with a fixed membership each member
//! leads exactly `weight` times, spread out rather than in bursts.
//!
//! `order` ranks a whole group: the leader comes from the persistent state
//! (one round per call), the rest from the same algorithm run on a copy
//! without the members already placed, so it never disturbs the rotation.

/// The state of one group, indexed by member slot (a slot not taking part
/// in a round keeps its value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Smooth {
    current: Vec<i64>,
}

impl Smooth {
    /// One round among `members` (`(slot, weight)`), returning the position
    /// in `members` of the leader; `None` when `members` is empty.
    pub fn pick(&mut self, members: &[(usize, u64)]) -> Option<usize> {
        let total: i64 = members.iter().map(|(_, w)| *w as i64).sum();
        let mut best: Option<(usize, i64)> = None;
        for (position, (slot, weight)) in members.iter().enumerate() {
            if self.current.len() <= *slot {
                self.current.resize(slot + 1, 0);
            }
            self.current[*slot] += *weight as i64;
            let value = self.current[*slot];
            if best.is_none_or(|(_, b)| value > b) {
                best = Some((position, value));
            }
        }
        let (position, _) = best?;
        self.current[members[position].0] -= total;
        Some(position)
    }

    /// All of `members`, ranked: positions in `members`, leader first.
    pub fn order(&mut self, members: &[(usize, u64)]) -> Vec<usize> {
        let mut ranked = Vec::with_capacity(members.len());
        let Some(leader) = self.pick(members) else {
            return ranked;
        };
        ranked.push(leader);
        let mut scratch = self.clone();
        let mut rest: Vec<(usize, (usize, u64))> = members
            .iter()
            .copied()
            .enumerate()
            .filter(|(position, _)| *position != leader)
            .collect();
        while !rest.is_empty() {
            let slots: Vec<(usize, u64)> = rest.iter().map(|(_, m)| *m).collect();
            let next = scratch.pick(&slots).expect("rest is not empty");
            ranked.push(rest.remove(next).0);
        }
        ranked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_member_leads_exactly_weight_times_per_cycle() {
        let members = [(0, 5), (1, 1), (2, 1), (3, 3)];
        let mut state = Smooth::default();
        let mut leads = [0; 4];
        for _ in 0..10 {
            leads[state.order(&members)[0]] += 1;
        }
        assert_eq!(leads, [5, 1, 1, 3]);
        // nginx's reference sequence for 5/1/1: a a b a c a a.
        let mut state = Smooth::default();
        let seq: String = (0..7)
            .map(|_| ["a", "b", "c"][state.pick(&[(0, 5), (1, 1), (2, 1)]).unwrap()])
            .collect();
        assert_eq!(seq, "aabacaa");
    }

    #[test]
    fn order_ranks_every_member_once_and_is_deterministic() {
        let members = [(0, 2), (4, 1), (7, 3)];
        let mut a = Smooth::default();
        let mut b = Smooth::default();
        for _ in 0..12 {
            let ranked = a.order(&members);
            assert_eq!(ranked, b.order(&members));
            let mut sorted = ranked.clone();
            sorted.sort();
            assert_eq!(sorted, [0, 1, 2]);
        }
        assert!(Smooth::default().order(&[]).is_empty());
    }
}
