//! FNV-1a, 64 bits: equal bytes, equal digests on every machine and in every process. Not
//! cryptographic; it names what a cache was made from (the tuning cache's kernel sources) and
//! tells apart what the processes of a run hold (`mae`'s data-parallel checks).

/// A running FNV-1a digest.
#[derive(Clone, Debug)]
pub struct Fnv(u64);

impl Fnv {
    /// The empty digest.
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    /// Add `bytes`.
    pub fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The digest of what was added.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv::new()
    }
}

#[cfg(test)]
mod tests {
    /// The published test vectors of 64-bit FNV-1a.
    #[test]
    fn digests_match_the_published_vectors() {
        let digest = |text: &str| {
            let mut h = super::Fnv::new();
            h.add(text.as_bytes());
            h.finish()
        };
        assert_eq!(digest(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(digest("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(digest("foobar"), 0x8594_4171_f739_67e8);
    }
}
