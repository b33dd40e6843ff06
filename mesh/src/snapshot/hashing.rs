//! Consistent hashing for `lb = "ring_hash" | "maglev"`: the per-route hash policies
//! that make a request's key, and the tables that map a key to an endpoint.
//!
//! Tables are built when a snapshot is compiled (a reload, a discovery change), on the
//! control thread, never on a worker; they hold every endpoint of the cluster. Health
//! does not rebuild them: a lookup that lands on an endpoint that may not be used
//! walks on to the next entry (the next point clockwise on the ring, the next slot of
//! the Maglev table), so only the keys of the endpoints that are out move, each to a
//! pseudo-random other endpoint, and they come back when it does.
//!
//! Hashes are xxHash64 (Envoy's choice): stable across processes and builds, so every
//! worker and every weft instance maps a key to the same endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use xxhash_rust::xxh64::xxh64;

/// What a request's hash key is made of (`hash_policy = [..]` on a route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPolicy {
    pub source: HashSource,
    /// When this policy gave a key, the ones after it are not looked at.
    pub terminal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashSource {
    /// A request header (lowercase name); every value of it.
    Header(String),
    /// A cookie; when the request has none and `ttl` is set, weft makes one and sets it
    /// on the response, so the client's next requests land where this one did.
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: Option<String>,
    },
    /// The client's IP address.
    SourceIp,
    /// A query parameter.
    QueryParameter(String),
}

/// The hash of some bytes, as the tables and the policies use it.
pub fn hash(bytes: &[u8]) -> u64 {
    xxh64(bytes, 0)
}

/// Folds one policy's hash into the key so far (Envoy's rotate-and-xor), so the order
/// of the policies matters and two equal parts do not cancel.
pub fn combine(key: Option<u64>, part: u64) -> u64 {
    match key {
        None => part,
        Some(k) => k.rotate_left(1) ^ part,
    }
}

/// A cluster's consistent-hash table: entries are indexes into its endpoints.
#[derive(Debug, PartialEq, Eq)]
pub enum HashTable {
    /// Ketama: points sorted by hash; a key belongs to the first point at or after it.
    Ring(Vec<(u64, u32)>),
    /// Maglev's lookup table, `MAGLEV_TABLE_SIZE` slots.
    Maglev(Vec<u32>),
}

/// The ring has at least this many points (Envoy's `minimum_ring_size`).
pub const MIN_RING_SIZE: u64 = 1024;
/// Maglev's table size: a prime, so every skip visits every slot (Envoy's default).
pub const MAGLEV_TABLE_SIZE: usize = 65537;

impl HashTable {
    /// The ring for `endpoints` (address, weight). Each endpoint has `weight x K`
    /// points, `K` the smallest power of two that makes the ring `MIN_RING_SIZE`: a
    /// point depends only on its endpoint's address, so an endpoint that leaves takes
    /// only its own arcs (unless `K` doubles).
    pub fn ring(endpoints: &[(SocketAddr, u32)]) -> HashTable {
        let total: u64 = endpoints.iter().map(|(_, w)| u64::from((*w).max(1))).sum();
        let per_weight = MIN_RING_SIZE.div_ceil(total.max(1)).next_power_of_two();
        let mut points = Vec::with_capacity((total * per_weight) as usize);
        for (i, (address, weight)) in endpoints.iter().enumerate() {
            let name = address.to_string();
            for n in 0..u64::from((*weight).max(1)) * per_weight {
                points.push((hash(format!("{name}_{n}").as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        HashTable::Ring(points)
    }

    /// Maglev's table for `endpoints` (address, weight): each endpoint fills slots
    /// along its own permutation, taking turns, an endpoint of weight w as often as
    /// w / (the largest weight) per round.
    pub fn maglev(endpoints: &[(SocketAddr, u32)]) -> HashTable {
        const EMPTY: u32 = u32::MAX;
        let m = MAGLEV_TABLE_SIZE as u64;
        let mut table = vec![EMPTY; MAGLEV_TABLE_SIZE];
        if endpoints.is_empty() {
            return HashTable::Maglev(Vec::new());
        }
        struct Builder {
            offset: u64,
            skip: u64,
            next: u64,
            weight: u64,
            credit: u64,
        }
        let mut builders: Vec<Builder> = endpoints
            .iter()
            .map(|(address, weight)| {
                let name = address.to_string();
                Builder {
                    offset: xxh64(name.as_bytes(), 0) % m,
                    skip: xxh64(name.as_bytes(), 1) % (m - 1) + 1,
                    next: 0,
                    weight: u64::from((*weight).max(1)),
                    credit: 0,
                }
            })
            .collect();
        let max_weight = builders.iter().map(|b| b.weight).max().unwrap_or(1);
        let mut filled = 0;
        while filled < MAGLEV_TABLE_SIZE {
            for (i, b) in builders.iter_mut().enumerate() {
                b.credit += b.weight;
                if b.credit < max_weight {
                    continue;
                }
                b.credit -= max_weight;
                let mut slot = ((b.offset + b.next * b.skip) % m) as usize;
                while table[slot] != EMPTY {
                    b.next += 1;
                    slot = ((b.offset + b.next * b.skip) % m) as usize;
                }
                table[slot] = i as u32;
                b.next += 1;
                filled += 1;
                if filled == MAGLEV_TABLE_SIZE {
                    break;
                }
            }
        }
        HashTable::Maglev(table)
    }

    /// The endpoint for `key`: the first one `usable` accepts, from the key's place on,
    /// or `None` when it accepts none.
    pub fn find(&self, key: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            HashTable::Ring(points) => {
                if points.is_empty() {
                    return None;
                }
                let start = points.partition_point(|(h, _)| *h < key) % points.len();
                (0..points.len())
                    .map(|step| points[(start + step) % points.len()].1 as usize)
                    .find(|&i| usable(i))
            }
            HashTable::Maglev(table) => {
                if table.is_empty() {
                    return None;
                }
                let start = (key % table.len() as u64) as usize;
                (0..table.len())
                    .map(|step| table[(start + step) % table.len()] as usize)
                    .find(|&i| usable(i))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(weights: &[u32]) -> Vec<(SocketAddr, u32)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| (SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080)), *w))
            .collect()
    }

    fn owners(table: &HashTable, keys: u64, usable: impl Fn(usize) -> bool + Copy) -> Vec<usize> {
        (0..keys)
            .map(|k| {
                table
                    .find(hash(&k.to_le_bytes()), usable)
                    .expect("an endpoint")
            })
            .collect()
    }

    #[test]
    fn ring_points_belong_to_their_endpoint_alone() {
        let five = HashTable::ring(&endpoints(&[1, 1, 1, 1, 1]));
        let HashTable::Ring(points) = &five else {
            panic!("a ring")
        };
        assert!(points.len() as u64 >= MIN_RING_SIZE);
        // The fifth endpoint leaves: only its keys move.
        let four = HashTable::ring(&endpoints(&[1, 1, 1, 1]));
        let (before, after) = (owners(&five, 1000, |_| true), owners(&four, 1000, |_| true));
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let owned = before.iter().filter(|&&i| i == 4).count();
        assert_eq!(moved, owned, "keys of staying endpoints moved");
        assert!(
            (100..300).contains(&owned),
            "{owned} of 1000 keys on one of 5"
        );
    }

    #[test]
    fn maglev_follows_weights_and_skips_what_may_not_be_used() {
        let table = HashTable::maglev(&endpoints(&[1, 2]));
        let HashTable::Maglev(slots) = &table else {
            panic!("maglev")
        };
        let heavy = slots.iter().filter(|&&i| i == 1).count() as f64;
        let share = heavy / slots.len() as f64;
        assert!((share - 2.0 / 3.0).abs() < 0.01, "{share}");
        // Endpoint 1 out: its keys go elsewhere, endpoint 0's stay.
        let before = owners(&table, 1000, |_| true);
        let after = owners(&table, 1000, |i| i != 1);
        for (b, a) in before.iter().zip(&after) {
            if *b == 0 {
                assert_eq!(a, b);
            }
            assert_eq!(*a, 0);
        }
        assert!(table.find(7, |_| false).is_none());
    }

    #[test]
    fn combining_keeps_order() {
        let (a, b) = (hash(b"a"), hash(b"b"));
        assert_ne!(combine(Some(a), b), combine(Some(b), a));
        assert_ne!(combine(Some(a), a), 0);
    }
}
