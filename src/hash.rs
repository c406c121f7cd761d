//! The hashes of cai, in one place.
//!
//! - FNV-1a 64 ([`Fnv1a`], [`fnv1a`]): stable, non-cryptographic, for record ids, seeds and
//!   trainers' resume fingerprints, equal on every platform and Rust version (unlike `std`'s
//!   `DefaultHasher`). Existing runs depend on these values; the tests pin them.
//! - SHA-256: [`sha256_file`] and [`sha256_hex`] are the plain hash of a file's or a text's bytes
//!   (what `sha256sum` prints); [`Sha256Parts`] (and [`sha256_parts`], [`sha256_json`]) hash a
//!   sequence of parts with ONE joining rule, each part length-prefixed, for manifests'
//!   fingerprints, model and folder hashes, cache keys and pair ids.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};

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

/// SHA-256 over a sequence of parts. The one joining rule: each part is written as its length
/// (8 bytes, little-endian) and then its bytes, so `["ab", "c"]` and `["a", "bc"]` differ and
/// no part's content can imitate a boundary. [`Sha256Parts::u64`] writes a fixed-width number
/// (8 bytes, no prefix: its width is already known).
#[derive(Debug, Clone, Default)]
pub struct Sha256Parts(Sha256);

impl Sha256Parts {
    pub fn new() -> Self {
        Self::default()
    }

    /// One length-prefixed part.
    pub fn part(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        let bytes = bytes.as_ref();
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    /// One part: the compact JSON text of `v` (`Value::to_string`).
    pub fn json(&mut self, v: &Value) -> &mut Self {
        self.part(v.to_string())
    }

    /// The 8 little-endian bytes of `x` (fixed width, so not length-prefixed).
    pub fn u64(&mut self, x: u64) -> &mut Self {
        self.0.update(x.to_le_bytes());
        self
    }

    /// The 32 bytes of the hash.
    pub fn digest(&self) -> [u8; 32] {
        self.0.clone().finalize().into()
    }

    /// The hash as 64 hex digits.
    pub fn hex(&self) -> String {
        hex(&self.digest())
    }
}

/// SHA-256 of `parts` joined by the rule of [`Sha256Parts`], hex.
pub fn sha256_parts(parts: &[&[u8]]) -> String {
    let mut h = Sha256Parts::new();
    parts.iter().for_each(|p| {
        h.part(p);
    });
    h.hex()
}

/// SHA-256 of the JSON texts of `parts` joined by the rule of [`Sha256Parts`], hex: the
/// fingerprints of manifests and stages.
pub fn sha256_json(parts: &[&Value]) -> String {
    let mut h = Sha256Parts::new();
    parts.iter().for_each(|p| {
        h.json(p);
    });
    h.hex()
}

/// The plain SHA-256 of `bytes` (no prefix).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The plain SHA-256 of `bytes` (no prefix), hex: equal to `sha256sum` of a file holding them.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha256(bytes))
}

/// The plain SHA-256 of a file's bytes, hex, read in a stream (weights can be gigabytes).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex(&h.finalize().into()))
}

/// SHA-256 of files of `dir`, named relative to it: for each name in the given order, the name
/// and the hex [`sha256_file`] of the file as two parts of [`Sha256Parts`]. The hash of a
/// folder's (or a model's) files; the caller picks and orders the names.
pub fn sha256_files<P: AsRef<Path>>(dir: &Path, names: &[P]) -> Result<String> {
    let mut h = Sha256Parts::new();
    for name in names {
        let name = name.as_ref();
        h.part(name.to_string_lossy().as_bytes())
            .part(sha256_file(&dir.join(name))?);
    }
    Ok(h.hex())
}

fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
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

    /// The one joining rule, pinned with values computed in Python: `f(b) = u64le(len(b)) + b`,
    /// `sha256(f(b"ab") + f(b"c"))` and `sha256(f(b'{"a":1}') + f(b'"x"'))`; a plain hash is
    /// `hashlib.sha256(b"abc")` (the FIPS 180-2 test vector), with no prefix.
    #[test]
    fn one_sha256_helper_joins_parts_by_length_prefix() {
        let ab_c = "43ee655579de01ca739b3f95c1c2d3f46d353b2c0df818064ea594506cdb2617";
        assert_eq!(sha256_parts(&[b"ab", b"c"]), ab_c);
        assert_eq!(Sha256Parts::new().part("ab").part("c").hex(), ab_c);
        assert_ne!(sha256_parts(&[b"a", b"bc"]), ab_c);
        // A NUL inside a part cannot imitate a boundary (it could with NUL separators).
        assert_ne!(
            sha256_parts(&[b"a\0b", b"c"]),
            sha256_parts(&[b"a", b"b\0c"])
        );
        assert_eq!(
            sha256_json(&[&serde_json::json!({"a": 1}), &serde_json::json!("x")]),
            "8bdb5e586e4a4b337a53c4718e9dde0c6da2674075f7d48ea1ccbc541b095fed"
        );
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_hex(b"abc"), abc);
        assert_eq!(sha256(b"abc")[0], 0xba);
    }

    /// A file's hash is the plain sha256 of its bytes (what `sha256sum` prints), streamed.
    #[test]
    fn sha256_file_is_the_plain_hash_of_the_bytes() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("abc.txt");
        std::fs::write(&path, b"abc")?;
        assert_eq!(
            sha256_file(&path)?,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Larger than any copy buffer: equal to the in-memory hash.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &big)?;
        assert_eq!(sha256_file(&path)?, sha256_hex(&big));
        let err = sha256_file(&dir.path().join("missing")).unwrap_err();
        assert!(format!("{err:#}").contains("cannot open"), "{err:#}");
        Ok(())
    }
}
