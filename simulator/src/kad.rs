//! Kademlia as libp2p runs it: 64-bit ids (plenty for a million nodes: the chance of two
//! equal ids is below 1e-7), k-buckets by XOR distance with least-recently-seen eviction of
//! dead entries, and iterative lookups with `alpha` requests in flight that end when the k
//! closest nodes known have all answered. Hops and lookup latency come out of the model.
//!
//! [`Tables`] holds every node's routing table; [`Lookup`] is one lookup's state machine
//! (sans-IO: the world sends its requests and feeds back answers and timeouts).

use rand::Rng;

/// A node's index in the world.
pub type Node = u32;

/// Every node's routing table.
pub struct Tables {
    /// Bucket size.
    pub k: usize,
    ids: Vec<u64>,
    /// Per node, per bucket (= length of the common prefix with the owner), contacts
    /// oldest first.
    buckets: Vec<Vec<Vec<Node>>>,
}

/// The bucket `b` falls into in `a`'s table: the length of their common prefix.
pub fn bucket_index(a: u64, b: u64) -> usize {
    (a ^ b).leading_zeros().min(63) as usize
}

impl Tables {
    /// Empty tables for nodes with these ids.
    pub fn new(ids: Vec<u64>, k: usize) -> Self {
        let n = ids.len();
        Self {
            k,
            ids,
            buckets: (0..n).map(|_| Vec::new()).collect(),
        }
    }

    /// A node's id.
    pub fn id(&self, node: Node) -> u64 {
        self.ids[node as usize]
    }

    /// Contacts in `node`'s table.
    pub fn len(&self, node: Node) -> usize {
        self.buckets[node as usize].iter().map(Vec::len).sum()
    }

    /// Whether `node`'s table is empty.
    pub fn is_empty(&self, node: Node) -> bool {
        self.buckets[node as usize].iter().all(Vec::is_empty)
    }

    /// `owner` heard from `peer` (a server-mode node): refreshes it, or adds it when its
    /// bucket has room or the bucket's oldest entry is dead (libp2p pings the oldest and
    /// replaces it when it does not answer; `alive` stands for that ping).
    pub fn seen(&mut self, owner: Node, peer: Node, alive: impl Fn(Node) -> bool) {
        if owner == peer {
            return;
        }
        let b = bucket_index(self.ids[owner as usize], self.ids[peer as usize]);
        let k = self.k;
        let table = &mut self.buckets[owner as usize];
        if table.len() <= b {
            table.resize_with(b + 1, Vec::new);
        }
        let bucket = &mut table[b];
        if let Some(i) = bucket.iter().position(|&p| p == peer) {
            bucket.remove(i);
            bucket.push(peer);
        } else if bucket.len() < k {
            bucket.push(peer);
        } else if !alive(bucket[0]) {
            bucket.remove(0);
            bucket.push(peer);
        }
    }

    /// `owner` found `peer` unresponsive: drops it.
    pub fn remove(&mut self, owner: Node, peer: Node) {
        let b = bucket_index(self.ids[owner as usize], self.ids[peer as usize]);
        if let Some(bucket) = self.buckets[owner as usize].get_mut(b) {
            bucket.retain(|&p| p != peer);
        }
    }

    /// Up to `n` contacts of `node` closest to `target`, closest first.
    pub fn closest(&self, node: Node, target: u64, n: usize) -> Vec<Node> {
        let mut out = Vec::new();
        self.closest_into(node, target, n, &mut out);
        out.into_iter().map(|(_, p)| p).collect()
    }

    /// [`Tables::closest`] as `(distance, node)` into `out`, reading only the buckets it
    /// needs. With `c` the common prefix of the owner and `target`: bucket `c`'s contacts
    /// are closer than any other; then the deeper buckets (all at distance with top bit
    /// `c`); then buckets `c - 1`, `c - 2`, ..., each farther than the one before.
    pub fn closest_into(&self, node: Node, target: u64, n: usize, out: &mut Vec<(u64, Node)>) {
        out.clear();
        let table = &self.buckets[node as usize];
        let own = self.ids[node as usize];
        let c = if own == target {
            table.len()
        } else {
            bucket_index(own, target)
        };
        let take = |range: &mut dyn Iterator<Item = &Vec<Node>>, out: &mut Vec<(u64, Node)>| {
            let start = out.len();
            for bucket in range {
                out.extend(bucket.iter().map(|&p| (self.ids[p as usize] ^ target, p)));
            }
            out[start..].sort_unstable();
        };
        if c < table.len() {
            take(&mut std::iter::once(&table[c]), out);
            if out.len() < n {
                take(&mut table[c + 1..].iter(), out);
            }
        }
        for i in (0..c.min(table.len())).rev() {
            if out.len() >= n {
                break;
            }
            take(&mut std::iter::once(&table[i]), out);
        }
        out.truncate(n);
    }

    /// Fills every table in `servers` (DHT server-mode nodes) as a long-running network
    /// has them: each bucket holds `k` nodes drawn at random from the ids that fall in it
    /// (or all of them when fewer).
    pub fn warm_start(&mut self, servers: &[Node], rng: &mut impl Rng) {
        let mut sorted: Vec<(u64, Node)> =
            servers.iter().map(|&n| (self.ids[n as usize], n)).collect();
        sorted.sort_unstable();
        let k = self.k;
        for &(id, node) in &sorted {
            let mut table: Vec<Vec<Node>> = Vec::new();
            for b in 0..64usize {
                // Ids sharing b bits with `id` and differing at bit b: one contiguous range.
                let keep = if b == 0 { 0 } else { u64::MAX << (64 - b) };
                let flip = 1u64 << (63 - b);
                let lo = (id & keep) | (!id & flip);
                let hi = lo | (flip - 1);
                let start = sorted.partition_point(|&(x, _)| x < lo);
                let end = sorted.partition_point(|&(x, _)| x <= hi);
                let bucket: Vec<Node> = if end - start <= k {
                    sorted[start..end].iter().map(|&(_, n)| n).collect()
                } else {
                    rand::seq::index::sample(rng, end - start, k)
                        .into_iter()
                        .map(|i| sorted[start + i].1)
                        .collect()
                };
                table.push(bucket);
                // Deeper buckets are empty once no other id shares b + 1 bits with ours.
                let own_lo = id & (keep | flip);
                let own_hi = own_lo | (flip - 1);
                let own = sorted.partition_point(|&(x, _)| x <= own_hi)
                    - sorted.partition_point(|&(x, _)| x < own_lo);
                if own <= 1 {
                    break;
                }
            }
            while table.last().is_some_and(Vec::is_empty) {
                table.pop();
            }
            self.buckets[node as usize] = table;
        }
    }
}

/// Candidates a lookup keeps, closest first (a lookup only ever asks among the k closest
/// that have not failed; this leaves room for many failures).
const MAX_CANDIDATES: usize = 256;

/// Why a lookup runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A node joining (or refreshing): a lookup of its own id.
    Join,
    /// A worker announcing a model: find the k closest, then store a provider record there.
    Provide(u16),
    /// A client looking for workers of a model.
    FindProviders(u16),
    /// A measurement probe: the closest nodes of a random key.
    Probe,
}

/// A candidate in a lookup.
#[derive(Clone, Copy, Debug)]
struct Cand {
    node: Node,
    dist: u64,
    state: State,
    /// Requests on the path that found it (1 for the origin's own contacts).
    hop: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    New,
    Waiting,
    Answered,
    Failed,
}

/// One iterative lookup.
#[derive(Clone, Debug)]
pub struct Lookup {
    /// Who looks.
    pub origin: Node,
    /// The key looked up.
    pub target: u64,
    /// Why.
    pub purpose: Purpose,
    /// When it started, µs.
    pub started: u64,
    cands: Vec<Cand>,
    in_flight: usize,
    /// Requests sent.
    pub requests: u32,
    /// Requests that failed (timeout or lost).
    pub failures: u32,
    /// Providers found (provider lookups): the first answer's hop count and time.
    pub found: Option<(u8, u64)>,
}

impl Lookup {
    /// A lookup of `target` by `origin`, seeded with its own closest contacts (`(node,
    /// id)`).
    pub fn new(
        origin: Node,
        target: u64,
        purpose: Purpose,
        started: u64,
        seeds: impl IntoIterator<Item = (Node, u64)>,
    ) -> Self {
        let mut l = Self {
            origin,
            target,
            purpose,
            started,
            cands: Vec::new(),
            in_flight: 0,
            requests: 0,
            failures: 0,
            found: None,
        };
        for (node, id) in seeds {
            l.add(node, id, 1);
        }
        l
    }

    /// Where `node` (with `id`) is among the candidates (sorted by distance: a binary
    /// search).
    fn index(&self, node: Node, id: u64) -> Option<usize> {
        let dist = id ^ self.target;
        let mut i = self.cands.partition_point(|c| c.dist < dist);
        while i < self.cands.len() && self.cands[i].dist == dist {
            if self.cands[i].node == node {
                return Some(i);
            }
            i += 1;
        }
        None
    }

    fn add(&mut self, node: Node, id: u64, hop: u8) {
        if node == self.origin || self.index(node, id).is_some() {
            return;
        }
        let dist = id ^ self.target;
        let at = self.cands.partition_point(|c| c.dist < dist);
        if at >= MAX_CANDIDATES {
            return;
        }
        self.cands.insert(
            at,
            Cand {
                node,
                dist,
                state: State::New,
                hop,
            },
        );
    }

    /// The next requests to send (node, its hop) to keep `alpha` in flight among the `k`
    /// closest candidates that have not failed.
    pub fn next_requests(&mut self, k: usize, alpha: usize) -> Vec<(Node, u8)> {
        let mut out = Vec::new();
        let mut seen = 0;
        for c in self.cands.iter_mut() {
            if self.in_flight >= alpha || seen >= k {
                break;
            }
            if c.state == State::Failed {
                continue;
            }
            seen += 1;
            if c.state == State::New {
                c.state = State::Waiting;
                self.in_flight += 1;
                self.requests += 1;
                out.push((c.node, c.hop));
            }
        }
        out
    }

    /// `node` (with `id`) answered with `contacts` (`(node, id)`).
    pub fn answered(
        &mut self,
        node: Node,
        id: u64,
        contacts: impl IntoIterator<Item = (Node, u64)>,
    ) {
        let Some(i) = self.index(node, id) else {
            return;
        };
        let c = &mut self.cands[i];
        if c.state != State::Waiting {
            return;
        }
        c.state = State::Answered;
        let hop = c.hop.saturating_add(1);
        self.in_flight -= 1;
        for (n, id) in contacts {
            self.add(n, id, hop);
        }
        // Far candidates that were never asked can go: only the closest matter.
        while self.cands.len() > MAX_CANDIDATES
            && self.cands.last().is_some_and(|c| c.state != State::Waiting)
        {
            self.cands.pop();
        }
    }

    /// `node` (with `id`) did not answer in time.
    pub fn failed(&mut self, node: Node, id: u64) {
        if let Some(i) = self.index(node, id) {
            let c = &mut self.cands[i];
            if c.state == State::Waiting {
                c.state = State::Failed;
                self.in_flight -= 1;
                self.failures += 1;
            }
        }
    }

    /// The hop count of `node` (with `id`) in this lookup.
    pub fn hop_of(&self, node: Node, id: u64) -> u8 {
        self.index(node, id).map_or(0, |i| self.cands[i].hop)
    }

    /// Whether it is over: nothing in flight and the `k` closest live candidates answered.
    pub fn finished(&self, k: usize) -> bool {
        self.in_flight == 0
            && !self
                .cands
                .iter()
                .filter(|c| c.state != State::Failed)
                .take(k)
                .any(|c| c.state == State::New)
    }

    /// The `k` closest nodes that answered.
    pub fn result(&self, k: usize) -> Vec<Node> {
        self.cands
            .iter()
            .filter(|c| c.state == State::Answered)
            .take(k)
            .map(|c| c.node)
            .collect()
    }

    /// Hops to the closest node that answered.
    pub fn hops(&self) -> u8 {
        self.cands
            .iter()
            .find(|c| c.state == State::Answered)
            .map_or(0, |c| c.hop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn network(n: usize, k: usize) -> (Tables, rand_chacha::ChaCha8Rng) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let ids: Vec<u64> = (0..n).map(|_| rng.random()).collect();
        let mut t = Tables::new(ids, k);
        let all: Vec<Node> = (0..n as Node).collect();
        t.warm_start(&all, &mut rng);
        (t, rng)
    }

    /// Runs a lookup to completion with instant answers.
    fn run(t: &Tables, origin: Node, target: u64, k: usize) -> Lookup {
        let seeds = t
            .closest(origin, target, k)
            .into_iter()
            .map(|n| (n, t.id(n)));
        let mut l = Lookup::new(origin, target, Purpose::Join, 0, seeds);
        while !l.finished(k) {
            for (node, _) in l.next_requests(k, 3) {
                let contacts = t.closest(node, target, k).into_iter().map(|n| (n, t.id(n)));
                l.answered(node, t.id(node), contacts);
            }
        }
        l
    }

    #[test]
    fn warm_tables_put_every_contact_in_its_bucket_and_fill_far_buckets() {
        let (t, _) = network(2000, 8);
        for node in 0..50 {
            for (b, bucket) in t.buckets[node as usize].iter().enumerate() {
                assert!(bucket.len() <= 8);
                for &p in bucket {
                    assert_eq!(bucket_index(t.id(node), t.id(p)), b);
                }
            }
            // The far half of the id space holds ~1000 nodes: its bucket is full.
            assert_eq!(t.buckets[node as usize][0].len(), 8);
        }
    }

    #[test]
    fn lookups_find_the_true_closest_nodes_in_about_log_n_hops() {
        let (t, mut rng) = network(5000, 20);
        for _ in 0..20 {
            let origin = rng.random_range(0..5000);
            let target: u64 = rng.random();
            let l = run(&t, origin, target, 20);
            let mut truth: Vec<(u64, Node)> = (0..5000)
                .filter(|&n| n != origin)
                .map(|n| (t.id(n) ^ target, n))
                .collect();
            truth.sort_unstable();
            assert_eq!(l.result(20)[0], truth[0].1, "finds the closest node");
            // The bucket walk agrees with sorting the whole table.
            let mut all: Vec<(u64, Node)> = t.buckets[origin as usize]
                .iter()
                .flatten()
                .map(|&p| (t.id(p) ^ target, p))
                .collect();
            all.sort_unstable();
            all.truncate(20);
            let walk: Vec<Node> = t.closest(origin, target, 20);
            assert_eq!(walk, all.iter().map(|x| x.1).collect::<Vec<_>>());
            let own = t.closest(origin, t.id(origin), 20);
            let mut mine: Vec<(u64, Node)> = t.buckets[origin as usize]
                .iter()
                .flatten()
                .map(|&p| (t.id(p) ^ t.id(origin), p))
                .collect();
            mine.sort_unstable();
            assert_eq!(own, mine.iter().take(20).map(|x| x.1).collect::<Vec<_>>());
            assert!((1..=8).contains(&l.hops()), "{} hops", l.hops());
            assert!(l.requests >= 20);
        }
    }

    #[test]
    fn lru_entries_are_kept_while_alive_and_replaced_when_dead() {
        let ids: Vec<u64> = vec![0, 1 << 63, (1 << 63) | 1, (1 << 63) | 2];
        let mut t = Tables::new(ids, 2);
        t.seen(0, 1, |_| true);
        t.seen(0, 2, |_| true);
        t.seen(0, 3, |_| true);
        assert_eq!(
            t.buckets[0][0],
            vec![1, 2],
            "full bucket, oldest alive: newcomer dropped"
        );
        t.seen(0, 3, |n| n != 1);
        assert_eq!(t.buckets[0][0], vec![2, 3], "oldest dead: replaced");
        t.remove(0, 2);
        assert_eq!(t.len(0), 1);
    }
}
