//! A fast, unkeyed hasher for the maps a worker consults on every request, whose keys
//! weft makes itself: metric keys (ids and pointers) and endpoint addresses (from the
//! config or discovery, never from a client). SipHash, std's default, guards against
//! keys an attacker chooses, which these are not; it cost ~700 instructions a request
//! (two pool lookups by endpoint) where this costs a few dozen.

/// Builds `KeyHasher`s.
#[derive(Default, Clone, Copy)]
pub struct BuildKeyHasher;

pub struct KeyHasher(u64);

impl std::hash::BuildHasher for BuildKeyHasher {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100000001b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n)
            .wrapping_mul(0x9E3779B97F4A7C15)
            .rotate_left(29);
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(n as u64);
    }
    fn write_isize(&mut self, n: isize) {
        self.write_u64(n as u64);
    }
}
