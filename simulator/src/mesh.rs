//! The gossip mesh of full nodes, as gossipsub keeps it: each member holds about `D` mesh
//! peers (links are two-way); one that falls below `D_low` grafts random members at its next
//! heartbeat, one above `D_high` prunes back to `D`. A message is pushed to every mesh peer
//! but the one it came from; duplicates are dropped by the message's seen set.
//!
//! Lazy gossip (IHAVE/IWANT) is not modelled: adverts are small and frequent, and eager push
//! over a connected mesh delivers them; the calibration against real nodes (see
//! `simulator/README.md`) checks that this is close enough.

use rand::seq::IndexedRandom;
use rand::Rng;

use crate::kad::Node;

/// Mesh membership and links.
pub struct Mesh {
    /// Target degree.
    pub degree: usize,
    /// Graft below this.
    pub low: usize,
    /// Prune above this.
    pub high: usize,
    /// Members, by slot.
    members: Vec<Node>,
    /// Slot of each node (`u32::MAX` when not a member).
    slot: Vec<u32>,
    /// Mesh peers per slot (as nodes).
    peers: Vec<Vec<Node>>,
    /// Whether each slot is online.
    online: Vec<bool>,
    /// Online slots, for random grafts.
    online_slots: Vec<u32>,
    /// Index of each slot in `online_slots` (`u32::MAX` when offline).
    online_at: Vec<u32>,
}

impl Mesh {
    /// A mesh over `members` (all offline until [`Mesh::join`]).
    pub fn new(nodes: usize, members: Vec<Node>, degree: usize, low: usize, high: usize) -> Self {
        let mut slot = vec![u32::MAX; nodes];
        for (i, &m) in members.iter().enumerate() {
            slot[m as usize] = i as u32;
        }
        let n = members.len();
        Self {
            degree,
            low,
            high,
            members,
            slot,
            peers: vec![Vec::new(); n],
            online: vec![false; n],
            online_slots: Vec::new(),
            online_at: vec![u32::MAX; n],
        }
    }

    /// Members, by slot.
    pub fn members(&self) -> &[Node] {
        &self.members
    }

    /// `node`'s slot, if it is a member.
    pub fn slot(&self, node: Node) -> Option<usize> {
        let s = *self.slot.get(node as usize)?;
        (s != u32::MAX).then_some(s as usize)
    }

    /// Mesh peers of `node`.
    pub fn peers(&self, node: Node) -> &[Node] {
        self.slot(node).map_or(&[], |s| &self.peers[s])
    }

    /// Online members.
    pub fn online(&self) -> usize {
        self.online_slots.len()
    }

    fn link(&mut self, a: usize, b: usize) {
        let (na, nb) = (self.members[a], self.members[b]);
        if a == b || self.peers[a].contains(&nb) {
            return;
        }
        self.peers[a].push(nb);
        self.peers[b].push(na);
    }

    fn unlink(&mut self, a: usize, b: usize) {
        let (na, nb) = (self.members[a], self.members[b]);
        self.peers[a].retain(|&p| p != nb);
        self.peers[b].retain(|&p| p != na);
    }

    /// `node` comes online and grafts up to `D` random online members. Returns the peers
    /// that now exceed `D_high` (they prune at their next heartbeat).
    pub fn join(&mut self, node: Node, rng: &mut impl Rng) -> Vec<Node> {
        let Some(s) = self.slot(node) else {
            return Vec::new();
        };
        if self.online[s] {
            return Vec::new();
        }
        self.online[s] = true;
        self.online_at[s] = self.online_slots.len() as u32;
        self.online_slots.push(s as u32);
        self.graft(s, rng);
        self.peers[s]
            .iter()
            .copied()
            .filter(|&p| self.peers[self.slot(p).expect("member")].len() > self.high)
            .collect()
    }

    /// `node` goes offline: its links drop. Returns its former peers now below `D_low`
    /// (they graft at their next heartbeat).
    pub fn leave(&mut self, node: Node) -> Vec<Node> {
        let Some(s) = self.slot(node) else {
            return Vec::new();
        };
        if !self.online[s] {
            return Vec::new();
        }
        self.online[s] = false;
        let at = self.online_at[s] as usize;
        let last = *self.online_slots.last().expect("online");
        self.online_slots.swap_remove(at);
        if last as usize != s {
            self.online_at[last as usize] = at as u32;
        }
        self.online_at[s] = u32::MAX;
        let former = std::mem::take(&mut self.peers[s]);
        for &p in &former {
            let ps = self.slot(p).expect("member");
            self.peers[ps].retain(|&x| x != node);
        }
        former
            .into_iter()
            .filter(|&p| self.peers[self.slot(p).expect("member")].len() < self.low)
            .collect()
    }

    /// The heartbeat of `node`: graft up to `D` when below `D_low`, prune to `D` when above
    /// `D_high`.
    pub fn heartbeat(&mut self, node: Node, rng: &mut impl Rng) {
        let Some(s) = self.slot(node) else {
            return;
        };
        if !self.online[s] {
            return;
        }
        if self.peers[s].len() < self.low {
            self.graft(s, rng);
        } else if self.peers[s].len() > self.high {
            while self.peers[s].len() > self.degree {
                let i = rng.random_range(0..self.peers[s].len());
                let p = self.peers[s][i];
                let ps = self.slot(p).expect("member");
                self.unlink(s, ps);
            }
        }
    }

    fn graft(&mut self, s: usize, rng: &mut impl Rng) {
        let others = self.online_slots.len().saturating_sub(1);
        let want = self.degree.min(others);
        let mut tries = 0;
        while self.peers[s].len() < want && tries < 20 * self.degree {
            tries += 1;
            let Some(&o) = self.online_slots.choose(rng) else {
                break;
            };
            let o = o as usize;
            if o != s && self.peers[o].len() < self.high {
                self.link(s, o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn members_keep_their_degree_through_churn_and_links_are_symmetric() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let members: Vec<Node> = (0..300).map(|i| i * 2).collect();
        let mut mesh = Mesh::new(600, members.clone(), 6, 4, 12);
        for &m in &members {
            mesh.join(m, &mut rng);
        }
        for round in 0..5 {
            let mut low = Vec::new();
            for &m in members.iter().skip(round).step_by(7) {
                low.extend(mesh.leave(m));
            }
            for m in low {
                mesh.heartbeat(m, &mut rng);
            }
            for &m in members.iter().skip(round).step_by(7) {
                for p in mesh.join(m, &mut rng) {
                    mesh.heartbeat(p, &mut rng);
                }
            }
        }
        for &m in &members {
            let peers = mesh.peers(m);
            assert!((4..=12).contains(&peers.len()), "{m}: {}", peers.len());
            for &p in peers {
                assert!(mesh.peers(p).contains(&m), "link {m}-{p} one-way");
            }
        }
        assert_eq!(mesh.slot(1), None);
        assert_eq!(mesh.online(), 300);
    }
}
