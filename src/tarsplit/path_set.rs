//! The set of cleaned paths seen so far, for tar-split's duplicate-path rule.
//!
//! It is filled once per file entry during the sizing pass, which nothing can overlap; a
//! `HashSet<Vec<u8>>` cost an allocation per path (and a free per path when dropped) and was
//! half of that pass for a layer of 44,000 files. Here every path is appended to one arena and
//! the table holds only its keyed hash and place.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// Paths, each stored once; answers whether a path was already inserted, exactly.
#[derive(Default)]
pub struct PathSet {
    /// Keyed with a random key, as `HashSet` is, so that forged names cannot collide on purpose.
    keys: RandomState,
    /// Every distinct path, back to back.
    arena: Vec<u8>,
    /// Hash → the place in `arena` of the first path inserted with that hash.
    first: HashMap<u64, (usize, usize), BuildHasherDefault<Prehashed>>,
    /// Other paths whose hash equals a first path's (almost never: a 64-bit collision).
    collided: HashSet<Vec<u8>>,
}

impl PathSet {
    /// Inserts `path`; false if it was already there.
    pub fn insert(&mut self, path: &[u8]) -> bool {
        self.insert_hashed(self.keys.hash_one(path), path)
    }

    fn insert_hashed(&mut self, hash: u64, path: &[u8]) -> bool {
        match self.first.entry(hash) {
            Entry::Vacant(slot) => {
                slot.insert((self.arena.len(), path.len()));
                self.arena.extend_from_slice(path);
                true
            }
            Entry::Occupied(slot) => {
                let (start, len) = *slot.get();
                if &self.arena[start..start + len] == path {
                    false
                } else {
                    self.collided.insert(path.to_vec())
                }
            }
        }
    }
}

/// The table's hasher: its keys are hashes already.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; anything else still hashes, slowly but correctly.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_like_a_hash_set() {
        let mut set = PathSet::default();
        let mut reference = HashSet::new();
        for i in 0..5000u32 {
            let path = format!("d{}/f{}", i % 37, (i * 7919) % 1500).into_bytes();
            assert_eq!(set.insert(&path), reference.insert(path.clone()), "{i}");
        }
        assert!(set.insert(b""));
        assert!(!set.insert(b""));
    }

    #[test]
    fn colliding_hashes_stay_exact() {
        // Force every path onto one hash: only the collision list tells them apart.
        let mut set = PathSet::default();
        let paths: [&[u8]; 5] = [b"a", b"b", b"c", b"b", b"a"];
        for (i, path) in paths.iter().enumerate() {
            let new = set.insert_hashed(0, path);
            assert_eq!(new, i < 3, "{i}");
        }
    }
}
