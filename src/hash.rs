//! Stable, non-cryptographic hashes for record ids, seeds and resume fingerprints: FNV-1a 64,
//! equal on every platform and Rust version (unlike `std`'s `DefaultHasher`).
//!
//! Existing runs depend on these values (record ids in JSONL files, per-record seeds, trainers'
//! resume checks); the tests pin them.

/// FNV-1a 64 over a stream of bytes.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// The 8 little-endian bytes of `x`.
    pub fn write_u64(&mut self, x: u64) {
        self.write(&x.to_le_bytes());
    }

    pub fn finish(&self) -> u64 {
        self.0
    }

    /// The hash as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// FNV-1a 64 of `parts`, each followed by the byte 0xff (which no UTF-8 text contains), so
/// `["ab", "c"]` and `["a", "bc"]` differ.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h = Fnv1a::default();
    for part in parts {
        h.write(part);
        h.write(&[0xff]);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Today's values (computed independently): record ids, seeds and fingerprints of
    /// existing runs must not change.
    #[test]
    fn values_are_pinned() {
        assert_eq!(fnv1a(&[b"abc"]), 0xfc18_2483_ee08_06dc);
        // A prompt record's id: role, 0, content, 0 of each message.
        assert_eq!(fnv1a(&[b"user\0hi\0"]), 0x214a_3978_c5ab_be5c);
        // A per-record seed: the run seed's bytes and the record id.
        assert_eq!(
            fnv1a(&[&7u64.to_le_bytes(), b"pair-1"]),
            0xa8e1_eced_25ab_3206
        );
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        let mut h = Fnv1a::default();
        [3, 1, 2, 3].into_iter().for_each(|x| h.write_u64(x));
        assert_eq!(h.hex(), "b981081392b03a26");
    }
}
