//! The 32-value block types Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 (the default model's layers are
//! Q4_1 and its tied embedding Q8_0; files quantized to K-quants fall back to Q5_0, Q5_1 and
//! Q8_0 for rows whose length is not a multiple of 256), decoded from their GGUF bytes into
//! integers for the packed kernels (`packed`).

use anyhow::{bail, Result};

/// The little-endian f16 at `b[at..at + 2]`, as f32.
/// The little-endian f16 at `b[at..at + 2]`, as f32.
pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Checks that `bytes` hold `n` rows of `k` values in blocks of `block_values` values and
/// `block_bytes` bytes.
pub(super) fn check_size(
    what: &str,
    bytes: usize,
    (block_values, block_bytes): (usize, usize),
    n: usize,
    k: usize,
) -> Result<()> {
    // Checked: a crafted file's dims may overflow (2^32 x 2^32 wrapped to 0 bytes, then the
    // repacked buffers were sized from them).
    let want = n
        .checked_mul(k / block_values)
        .and_then(|blocks| blocks.checked_mul(block_bytes));
    if !k.is_multiple_of(block_values) || want != Some(bytes) {
        bail!("{what} tensor of {bytes} bytes does not hold {n}x{k} values");
    }
    Ok(())
}

/// A block of 32 values as integers: value `i` is `d · q[i] + min`.
pub(super) struct Ints32 {
    pub(super) q: [i8; 32],
    pub(super) d: f32,
    pub(super) min: f32,
}

/// A weight type of 32-value blocks, each with an f16 scale (and for some an f16 minimum).
pub(super) trait Block32 {
    /// The type's name, for errors.
    const NAME: &'static str;
    /// Bytes of one block in a GGUF file.
    const BYTES: usize;
    /// Unsigned values with a per-block minimum (dotted with activations whose block sums the
    /// minimums multiply), or signed values without one.
    const HAS_MIN: bool;
    /// For signed types, what makes every value non-negative (`q + OFFSET` fits a byte
    /// unsigned): the packed kernels multiply unsigned weight bytes.
    const OFFSET: i32;
    /// Bits per value: the packed kernels' AVX2 tiles size their i16 sums by it.
    const BITS: u32;
    /// The block stored as `bytes` ([`Self::BYTES`] of them), as integers (`min` 0 for the
    /// signed types).
    fn ints(bytes: &[u8]) -> Ints32;
}

/// The 32 values of 16 bytes of nibbles (values 0..16 in the low nibbles, 16..32 in the high
/// ones), each with `high[i]` (0 or 16: a fifth bit) added and `offset` taken away.
fn nibbles(qs: &[u8], high: impl Fn(usize) -> u8, offset: i8) -> [i8; 32] {
    std::array::from_fn(|i| {
        let nibble = match i < 16 {
            true => qs[i] & 0xF,
            false => qs[i - 16] >> 4,
        };
        (nibble | high(i)) as i8 - offset
    })
}

/// Bit `i` of the little-endian `qh` as a fifth value bit (16 or 0).
fn fifth_bit(qh: &[u8]) -> impl Fn(usize) -> u8 + '_ {
    move |i| ((qh[i / 8] >> (i % 8)) & 1) << 4
}

/// Q4_0: f16 `d`, then 16 bytes of 4-bit `q`; value `d · (q - 8)`.
pub(super) struct Q4_0Block;

impl Block32 for Q4_0Block {
    const NAME: &'static str = "Q4_0";
    const BYTES: usize = 18;
    const HAS_MIN: bool = false;
    const OFFSET: i32 = 8;
    const BITS: u32 = 4;

    fn ints(b: &[u8]) -> Ints32 {
        Ints32 {
            q: nibbles(&b[2..18], |_| 0, 8),
            d: f16_at(b, 0),
            min: 0.0,
        }
    }
}

/// Q4_1: f16 `d` and `m`, then 16 bytes of 4-bit `q`; value `d · q + m`.
pub(super) struct Q4_1Block;

impl Block32 for Q4_1Block {
    const NAME: &'static str = "Q4_1";
    const BYTES: usize = 20;
    const HAS_MIN: bool = true;
    const OFFSET: i32 = 0;
    const BITS: u32 = 4;

    fn ints(b: &[u8]) -> Ints32 {
        Ints32 {
            q: nibbles(&b[4..20], |_| 0, 0),
            d: f16_at(b, 0),
            min: f16_at(b, 2),
        }
    }
}

/// Q5_0: f16 `d`, the fifth bits `qh` (4 bytes), 16 bytes of nibbles; value `d · (q - 16)`.
pub(super) struct Q5_0Block;

impl Block32 for Q5_0Block {
    const NAME: &'static str = "Q5_0";
    const BYTES: usize = 22;
    const HAS_MIN: bool = false;
    const OFFSET: i32 = 16;
    const BITS: u32 = 5;

    fn ints(b: &[u8]) -> Ints32 {
        Ints32 {
            q: nibbles(&b[6..22], fifth_bit(&b[2..6]), 16),
            d: f16_at(b, 0),
            min: 0.0,
        }
    }
}

/// Q5_1: f16 `d` and `m`, the fifth bits `qh` (4 bytes), 16 bytes of nibbles; value
/// `d · q + m`.
pub(super) struct Q5_1Block;

impl Block32 for Q5_1Block {
    const NAME: &'static str = "Q5_1";
    const BYTES: usize = 24;
    const HAS_MIN: bool = true;
    const OFFSET: i32 = 0;
    const BITS: u32 = 5;

    fn ints(b: &[u8]) -> Ints32 {
        Ints32 {
            q: nibbles(&b[8..24], fifth_bit(&b[4..8]), 0),
            d: f16_at(b, 0),
            min: f16_at(b, 2),
        }
    }
}

/// Q8_0: f16 `d`, then 32 signed bytes `q`; value `d · q`.
pub(super) struct Q8_0Block;

impl Block32 for Q8_0Block {
    const NAME: &'static str = "Q8_0";
    const BYTES: usize = 34;
    const HAS_MIN: bool = false;
    const OFFSET: i32 = 128;
    const BITS: u32 = 8;

    fn ints(b: &[u8]) -> Ints32 {
        Ints32 {
            q: std::array::from_fn(|i| b[2 + i] as i8),
            d: f16_at(b, 0),
            min: 0.0,
        }
    }
}
