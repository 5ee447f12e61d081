//! [`Slab`]: values stored under small integer keys that are reused once freed; the one
//! container the world keeps its short-lived things in (jobs, DHT lookups, advert messages,
//! messages parked for a host core).
//!
//! A key is a `u32` index, so an event in the queue names its entry in four bytes. A removed
//! entry's key goes on a free list, and the next insert takes the key freed *last* (LIFO);
//! only when none is free does the slab grow. Which key a value gets therefore depends on
//! nothing but the order of inserts and removes, so a run stays deterministic, byte for
//! byte. Because keys are reused, a key kept past its entry's removal may name a newer
//! entry: whoever can outlive its entry (an event still in the queue) carries a serial
//! number of its own and compares it (see `world::dht` and `world::jobs`).

use std::ops::{Index, IndexMut};

/// Values under reusable `u32` keys; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Slab<T> {
    /// The entry under each key; `None` for a free key.
    entries: Vec<Option<T>>,
    /// Free keys; the last one is reused first.
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Slab<T> {
    /// An empty slab.
    pub fn new() -> Self {
        Self {
            entries: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Stores `value` under the key freed last, or under a new key (the number of keys so
    /// far) when none is free; returns the key.
    pub fn insert(&mut self, value: T) -> u32 {
        match self.free.pop() {
            Some(key) => {
                self.entries[key as usize] = Some(value);
                key
            }
            None => {
                let key = u32::try_from(self.entries.len()).expect("fewer than 2^32 keys");
                self.entries.push(Some(value));
                key
            }
        }
    }

    /// Takes the value under `key` out and frees the key; `None` (and nothing freed) when
    /// the key holds nothing.
    pub fn remove(&mut self, key: u32) -> Option<T> {
        let value = self.entries.get_mut(key as usize)?.take()?;
        self.free.push(key);
        Some(value)
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: u32) -> Option<&T> {
        self.entries.get(key as usize)?.as_ref()
    }

    /// The value under `key`, if any, to change.
    pub fn get_mut(&mut self, key: u32) -> Option<&mut T> {
        self.entries.get_mut(key as usize)?.as_mut()
    }

    /// Values stored.
    pub fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// Whether no value is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values and their keys, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(key, value)| Some((key as u32, value.as_ref()?)))
    }
}

/// `slab[key]`: the value under `key`; panics when there is none (a broken invariant).
impl<T> Index<u32> for Slab<T> {
    type Output = T;

    fn index(&self, key: u32) -> &T {
        self.get(key)
            .unwrap_or_else(|| panic!("slab: nothing under key {key}"))
    }
}

impl<T> IndexMut<u32> for Slab<T> {
    fn index_mut(&mut self, key: u32) -> &mut T {
        self.get_mut(key)
            .unwrap_or_else(|| panic!("slab: nothing under key {key}"))
    }
}

#[cfg(test)]
mod tests {
    use super::Slab;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn keys_count_up_then_the_last_freed_is_reused_first() {
        let mut s = Slab::new();
        assert_eq!((s.insert('a'), s.insert('b'), s.insert('c')), (0, 1, 2));
        assert_eq!(s.remove(0), Some('a'));
        assert_eq!(s.remove(2), Some('c'));
        assert_eq!(s.len(), 1);
        // LIFO: 2 was freed last.
        assert_eq!(s.insert('d'), 2);
        assert_eq!(s.insert('e'), 0);
        assert_eq!(s.insert('f'), 3);
        assert_eq!((s[0], s[1], s[2], s[3]), ('e', 'b', 'd', 'f'));
    }

    #[test]
    fn a_free_or_unknown_key_holds_nothing_and_is_not_freed_twice() {
        let mut s = Slab::new();
        let k = s.insert(7u8);
        assert_eq!(s.remove(k), Some(7));
        assert_eq!(s.remove(k), None);
        assert_eq!((s.get(k), s.get(99)), (None, None));
        assert_eq!(s.remove(99), None);
        assert!(s.is_empty());
        // Freed once, so reused once.
        assert_eq!((s.insert(1), s.insert(2)), (0, 1));
    }

    #[test]
    fn iteration_is_in_key_order_and_skips_free_keys() {
        let mut s = Slab::new();
        for v in 10..15 {
            s.insert(v);
        }
        s.remove(1);
        s.remove(3);
        *s.get_mut(4).expect("stored") += 100;
        let seen: Vec<(u32, i32)> = s.iter().map(|(k, &v)| (k, v)).collect();
        assert_eq!(seen, [(0, 10), (2, 12), (4, 114)]);
    }

    #[test]
    #[should_panic(expected = "nothing under key 0")]
    fn indexing_a_free_key_panics() {
        let mut s = Slab::new();
        let k = s.insert(1u8);
        s.remove(k);
        let _ = s[k];
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u16),
        /// Removes the key at this position among the stored ones (or an unknown key).
        Remove(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u16>().prop_map(Op::Insert),
            (0usize..40).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Against a map and a stack of freed keys: same contents, same keys, same order.
        #[test]
        fn behaves_as_a_map_with_a_stack_of_free_keys(ops in prop::collection::vec(op(), 0..200)) {
            let mut slab = Slab::new();
            let mut model: BTreeMap<u32, u16> = BTreeMap::new();
            let mut freed: Vec<u32> = Vec::new();
            let mut next = 0u32;
            for op in ops {
                match op {
                    Op::Insert(v) => {
                        let want = freed.pop().unwrap_or_else(|| { next += 1; next - 1 });
                        prop_assert_eq!(slab.insert(v), want);
                        model.insert(want, v);
                    }
                    Op::Remove(i) => {
                        let key = model.keys().nth(i).copied().unwrap_or(next + 1);
                        let want = model.remove(&key);
                        if want.is_some() {
                            freed.push(key);
                        }
                        prop_assert_eq!(slab.remove(key), want);
                    }
                }
                prop_assert_eq!(slab.len(), model.len());
                let got: Vec<(u32, u16)> = slab.iter().map(|(k, &v)| (k, v)).collect();
                let want: Vec<(u32, u16)> = model.iter().map(|(&k, &v)| (k, v)).collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
