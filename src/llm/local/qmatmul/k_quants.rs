//! The K-quant types of Q4_K_M and Q5_K_M files, Q4_K, Q5_K and Q6_K (256-value super-blocks
//! of 32- or 16-value sub-blocks, each with its own small integer scale), decoded from their
//! GGUF bytes into integers for the packed kernels (`packed_k`), and the Q8_K activation
//! blocks those kernels multiply them with (as in llama.cpp: 256 signed bytes, an f32 scale
//! and the sums of each 16 bytes, quantized by `act_quant`).

use super::block32::f16_at;

/// Values per super-block.
pub(super) const QK_K: usize = 256;

/// One super-block of 256 activations quantized to 8 bits: the bytes, the sums of each 16 and
/// of each 32 of them, and the scale.
#[derive(Clone, Copy)]
pub(super) struct Q8KBlock {
    pub(super) qs: [i8; QK_K],
    pub(super) bsums: [i16; 16],
    pub(super) sums32: [i16; 8],
    pub(super) d: f32,
}

/// A K-quant weight type.
pub(super) trait BlockK: Send + Sync + 'static {
    /// The type's name, for errors.
    const NAME: &'static str;
    /// Bytes of one block in a GGUF file.
    const BYTES: usize;
    /// Values sharing one integer scale: 32 (Q4_K, Q5_K) or 16 (Q6_K).
    const SUB: usize;
    /// Subtracted from every value `q` (Q6_K: 32).
    const OFFSET: i32;
    /// Whether the sub-blocks have minimums (Q4_K, Q5_K).
    const HAS_MIN: bool;
    /// Bits per value `q`: the packed kernels' AVX2 tiles size their i16 sums by it.
    const BITS: u32;
    /// The block stored as `bytes` ([`Self::BYTES`] of them), as integers.
    fn ints(bytes: &[u8]) -> KInts;
}

/// A K-quant super-block as integers: value `i` is
/// `d · scales[i / SUB] · (q[i] - OFFSET) - dmin · mins[i / 32]`.
pub(super) struct KInts {
    pub(super) q: [u8; QK_K],
    pub(super) scales: [i8; 16],
    pub(super) mins: [u8; 8],
    pub(super) d: f32,
    pub(super) dmin: f32,
}

/// The 6-bit scales and minimums of Q4_K and Q5_K's eight sub-blocks, from their 12 packed
/// bytes (llama.cpp's `get_scale_min_k4`).
fn scales_and_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut scales = [0; 8];
    let mut mins = [0; 8];
    for j in 0..8 {
        (scales[j], mins[j]) = match j < 4 {
            true => (s[j] & 63, s[j + 4] & 63),
            false => (
                (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
                (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
            ),
        };
    }
    (scales, mins)
}

/// The 4-bit values of Q4_K and Q5_K: each 32 bytes of `qs` hold sub-block `2j` in their low
/// nibbles and `2j + 1` in their high ones.
fn nibbles(qs: &[u8]) -> [u8; QK_K] {
    let mut q = [0; QK_K];
    for (j, bytes) in qs.chunks_exact(32).enumerate() {
        for (l, &b) in bytes.iter().enumerate() {
            q[64 * j + l] = b & 0xF;
            q[64 * j + 32 + l] = b >> 4;
        }
    }
    q
}

/// [`KInts`] of Q4_K or Q5_K from the 12 bytes of packed scales and minimums.
fn scale_min_ints(q: [u8; QK_K], packed: &[u8], d: f32, dmin: f32) -> KInts {
    let (scales, mins) = scales_and_mins(packed);
    KInts {
        q,
        scales: std::array::from_fn(|i| if i < 8 { scales[i] as i8 } else { 0 }),
        mins,
        d,
        dmin,
    }
}

/// Q4_K: f16 `d` and `dmin`, 12 bytes of 6-bit sub-block scales and minimums, 128 bytes of
/// 4-bit values.
pub(super) struct Q4KBlock;

impl BlockK for Q4KBlock {
    const NAME: &'static str = "Q4_K";
    const BYTES: usize = 144;
    const SUB: usize = 32;
    const OFFSET: i32 = 0;
    const HAS_MIN: bool = true;
    const BITS: u32 = 4;

    fn ints(b: &[u8]) -> KInts {
        scale_min_ints(nibbles(&b[16..144]), &b[4..16], f16_at(b, 0), f16_at(b, 2))
    }
}

/// Q5_K: as Q4_K, with a fifth bit per value (bit `i` of `qh[l]` for value `l` of sub-block
/// `i`) in 32 bytes before the nibbles.
pub(super) struct Q5KBlock;

impl BlockK for Q5KBlock {
    const NAME: &'static str = "Q5_K";
    const BYTES: usize = 176;
    const SUB: usize = 32;
    const OFFSET: i32 = 0;
    const HAS_MIN: bool = true;
    const BITS: u32 = 5;

    fn ints(b: &[u8]) -> KInts {
        let qh = &b[16..48];
        let mut q = nibbles(&b[48..176]);
        for (i, v) in q.iter_mut().enumerate() {
            *v |= ((qh[i % 32] >> (i / 32)) & 1) << 4;
        }
        scale_min_ints(q, &b[4..16], f16_at(b, 0), f16_at(b, 2))
    }
}

/// Q6_K: `d · scale_g · (q - 32)` with 6-bit `q` (128 bytes of low nibbles, 64 of 2-bit
/// pairs), a signed 8-bit scale per 16 values `g`, then f16 `d`.
pub(super) struct Q6KBlock;

impl BlockK for Q6KBlock {
    const NAME: &'static str = "Q6_K";
    const BYTES: usize = 210;
    const SUB: usize = 16;
    const OFFSET: i32 = 32;
    const HAS_MIN: bool = false;
    const BITS: u32 = 6;

    fn ints(b: &[u8]) -> KInts {
        let (ql, qh) = (&b[0..128], &b[128..192]);
        let mut q = [0; QK_K];
        // Each 128 values: 64 bytes of low nibbles (values 0..32 and 32..64 in the low nibbles
        // of the two halves, 64..96 and 96..128 in the high ones) and 32 bytes of 2-bit pairs
        // (the four 32-value quarters in bits 0-1, 2-3, 4-5 and 6-7).
        for j in 0..2 {
            for l in 0..32 {
                let (lo, hi, h) = (ql[64 * j + l], ql[64 * j + 32 + l], qh[32 * j + l]);
                let low = [lo & 0xF, hi & 0xF, lo >> 4, hi >> 4];
                for (t, low) in low.into_iter().enumerate() {
                    q[128 * j + 32 * t + l] = low | (((h >> (2 * t)) & 3) << 4);
                }
            }
        }
        KInts {
            q,
            scales: std::array::from_fn(|i| b[192 + i] as i8),
            mins: [0; 8],
            d: f16_at(b, 208),
            dmin: 0.0,
        }
    }
}
