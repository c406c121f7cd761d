//! AVX2/FMA kernels for the K-quant types of Q4_K_M and Q5_K_M files: Q4_K, Q5_K and Q6_K
//! (256-value super-blocks of eight 32-value sub-blocks, each with its own small integer
//! scale). As in llama.cpp, activations are quantized to Q8_K (256 signed bytes, an f32 scale
//! and the sums of each 16 bytes, by candle's own `BlockQ8K::from_float`).
//!
//! A super-block's dot product is exact integer arithmetic (`maddubs` of the unsigned weight
//! values with the activation bytes, `madd` with the sub-block scales, eight i32 lanes) turned
//! into f32 once: `d_w · d_y · Σ scale_i · q_i · y` minus the minimum (Q4_K, Q5_K:
//! `dmin_w · d_y · Σ min_i · Σ y`) or offset (Q6_K: `32 · Σ scale_i · Σ y`, still in integers)
//! terms, which use the activation's precomputed sums. Each weight super-block is unpacked once
//! per tile of activation rows by the tile driver shared with the 32-value types
//! ([`super::avx2::dot_rows`]), so every row's result is the same whatever its batch.

use std::arch::x86_64::*;

use anyhow::Result;
use candle_core::quantized::k_quants::BlockQ8K;

use super::avx2::{block_bytes, check_size, dot_rows, f16_at, quantize_rows, WeightRow};
use super::{by_columns, RowsMatMul};

/// Values per super-block.
pub(super) const QK_K: usize = 256;
/// Bytes of one Q8_K block (f32 d, 256 signed bytes, 16 i16 sums), as candle's `repr(C)`
/// `BlockQ8K`.
const Q8K_BYTES: usize = 4 + QK_K + 32;

/// One super-block of 256 activations quantized to 8 bits: the bytes, the sums of each 16 and
/// of each 32 of them, and the scale.
#[derive(Clone, Copy)]
pub(super) struct Q8KBlock {
    pub(super) qs: [i8; QK_K],
    pub(super) bsums: [i16; 16],
    pub(super) sums32: [i16; 8],
    pub(super) d: f32,
}

/// `m` activation rows of `k` values (a multiple of 256) quantized to Q8_K.
fn quantize_q8k(x: &[f32], m: usize, k: usize) -> Vec<Q8KBlock> {
    let blocks = quantize_rows::<BlockQ8K>(x, m, k);
    // SAFETY: BlockQ8K is a `repr(C)` block of Q8K_BYTES plain bytes (candle asserts it).
    let bytes = unsafe { block_bytes(&blocks, Q8K_BYTES) };
    bytes
        .chunks_exact(Q8K_BYTES)
        .map(|b| {
            let bsums: [i16; 16] =
                std::array::from_fn(|i| i16::from_le_bytes([b[260 + 2 * i], b[261 + 2 * i]]));
            Q8KBlock {
                qs: std::array::from_fn(|i| b[4 + i] as i8),
                // At most 32 · 128 in magnitude: no overflow.
                sums32: std::array::from_fn(|i| bsums[2 * i] + bsums[2 * i + 1]),
                bsums,
                d: f32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
            }
        })
        .collect()
}

/// A K-quant weight type: its blocks as kept in memory, unpacked once per tile.
pub(super) trait BlockK: Copy + Send + Sync {
    /// The type's name, for errors.
    const NAME: &'static str;
    /// Bytes of one block in a GGUF file.
    const BYTES: usize;
    /// A block made ready for [`Self::fma`].
    type Unpacked;
    /// The block read from its file bytes.
    fn read(bytes: &[u8]) -> Self;
    /// # Safety
    /// AVX2 must be available.
    unsafe fn unpack(&self) -> Self::Unpacked;
    /// `acc` plus the block's dot product with `y`, in eight f32 lanes.
    ///
    /// # Safety
    /// AVX2 and FMA must be available.
    unsafe fn fma(w: &Self::Unpacked, y: &Q8KBlock, acc: __m256) -> __m256;
    /// Values sharing one integer scale: 32 (Q4_K, Q5_K) or 16 (Q6_K).
    const SUB: usize;
    /// Subtracted from every value `q` (Q6_K: 32).
    const OFFSET: i32;
    /// Whether the sub-blocks have minimums (Q4_K, Q5_K).
    const HAS_MIN: bool;
    /// Bits per value `q`: the packed kernels' AVX2 tiles size their i16 sums by it.
    const BITS: u32;
    /// The block as integers, for the packed kernels (`packed_k`).
    ///
    /// # Safety
    /// AVX2 must be available.
    unsafe fn ints(&self) -> KInts;
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

/// [`KInts`] of an unpacked Q4_K or Q5_K block.
///
/// # Safety
/// AVX must be available.
#[inline(always)]
unsafe fn scale_min_ints(u: &ScaleMinBlock, scales: &[u8; 8], mins: &[u8; 8]) -> KInts {
    let mut q = [0u8; QK_K];
    for (i, v) in u.q.iter().enumerate() {
        _mm256_storeu_si256(q.as_mut_ptr().add(32 * i) as *mut __m256i, *v);
    }
    KInts {
        q,
        scales: std::array::from_fn(|i| if i < 8 { scales[i] as i8 } else { 0 }),
        mins: *mins,
        d: u.d,
        dmin: u.dmin,
    }
}

/// `Σ_i scales[i] · q[i] · y_i` over the eight 32-value sub-blocks, in eight i32 lanes (exact:
/// at most 8 · 2 · 2 · 63 · 128 · 127 in magnitude).
///
/// # Safety
/// AVX2 must be available.
#[inline(always)]
unsafe fn scaled_sum(q: &[__m256i; 8], scales: &[__m256i; 8], y: &Q8KBlock) -> __m256i {
    let mut sum = _mm256_setzero_si256();
    for i in 0..8 {
        let yv = _mm256_loadu_si256(y.qs.as_ptr().add(32 * i) as *const __m256i);
        let p16 = _mm256_maddubs_epi16(q[i], yv);
        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(scales[i], p16));
    }
    sum
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

/// A Q4_K or Q5_K super-block unpacked: `d · scale_i · q - dmin · min_i` for the values `q`
/// of sub-block `i`.
pub(super) struct ScaleMinBlock {
    q: [__m256i; 8],
    /// Sub-block `i`'s scale in every i16 lane.
    scales: [__m256i; 8],
    /// The eight minimums, as i16.
    mins: __m128i,
    d: f32,
    dmin: f32,
}

impl ScaleMinBlock {
    /// # Safety
    /// AVX2 must be available.
    #[inline(always)]
    unsafe fn new(q: [__m256i; 8], scales: &[u8; 8], mins: &[u8; 8], d: f32, dmin: f32) -> Self {
        // Loops, not closures: a closure would not inherit the caller's AVX2.
        let mut broadcast = [_mm256_setzero_si256(); 8];
        for (v, &s) in broadcast.iter_mut().zip(scales) {
            *v = _mm256_set1_epi16(s as i16);
        }
        Self {
            q,
            scales: broadcast,
            mins: _mm_cvtepu8_epi16(_mm_loadl_epi64(mins.as_ptr() as *const __m128i)),
            d,
            dmin,
        }
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[inline(always)]
    unsafe fn fma(&self, y: &Q8KBlock, acc: __m256) -> __m256 {
        let sum = scaled_sum(&self.q, &self.scales, y);
        let acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(self.d * y.d), acc);
        let sums32 = _mm_loadu_si128(y.sums32.as_ptr() as *const __m128i);
        let mins = _mm256_set_m128i(_mm_setzero_si128(), _mm_madd_epi16(self.mins, sums32));
        _mm256_fmadd_ps(
            _mm256_cvtepi32_ps(mins),
            _mm256_set1_ps(-self.dmin * y.d),
            acc,
        )
    }
}

/// 32 bytes of nibbles as two vectors of 32 values: the low nibbles, then the high ones.
///
/// # Safety
/// AVX2 must be available; `qs` holds 32 bytes.
#[inline(always)]
unsafe fn nibble_pair(qs: *const u8) -> (__m256i, __m256i) {
    let bits = _mm256_loadu_si256(qs as *const __m256i);
    let m4 = _mm256_set1_epi8(0xF);
    (
        _mm256_and_si256(bits, m4),
        _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4),
    )
}

/// Q4_K: super-block scale and minimum, sub-block scales and minimums decoded from their 6-bit
/// packing, 4-bit values (sub-block `2j` in the low nibbles of `qs[32j..32j + 32]`, `2j + 1`
/// in the high ones).
#[derive(Clone, Copy)]
pub(super) struct Q4KBlock {
    d: f32,
    dmin: f32,
    scales: [u8; 8],
    mins: [u8; 8],
    qs: [u8; 128],
}

impl BlockK for Q4KBlock {
    const NAME: &'static str = "Q4_K";
    const BITS: u32 = 4;
    const BYTES: usize = 144;
    type Unpacked = ScaleMinBlock;

    fn read(b: &[u8]) -> Self {
        let (scales, mins) = scales_and_mins(&b[4..16]);
        Self {
            d: f16_at(b, 0),
            dmin: f16_at(b, 2),
            scales,
            mins,
            qs: b[16..144].try_into().expect("128 bytes"),
        }
    }

    #[inline(always)]
    unsafe fn unpack(&self) -> ScaleMinBlock {
        let mut q = [_mm256_setzero_si256(); 8];
        for j in 0..4 {
            (q[2 * j], q[2 * j + 1]) = nibble_pair(self.qs.as_ptr().add(32 * j));
        }
        ScaleMinBlock::new(q, &self.scales, &self.mins, self.d, self.dmin)
    }

    #[inline(always)]
    unsafe fn fma(w: &ScaleMinBlock, y: &Q8KBlock, acc: __m256) -> __m256 {
        w.fma(y, acc)
    }

    const SUB: usize = 32;
    const OFFSET: i32 = 0;
    const HAS_MIN: bool = true;

    unsafe fn ints(&self) -> KInts {
        scale_min_ints(&self.unpack(), &self.scales, &self.mins)
    }
}

/// Q5_K: as Q4_K, with a fifth bit per value (bit `i` of `qh[l]` for value `l` of sub-block
/// `i`).
#[derive(Clone, Copy)]
pub(super) struct Q5KBlock {
    d: f32,
    dmin: f32,
    scales: [u8; 8],
    mins: [u8; 8],
    qh: [u8; 32],
    qs: [u8; 128],
}

impl BlockK for Q5KBlock {
    const NAME: &'static str = "Q5_K";
    const BITS: u32 = 5;
    const BYTES: usize = 176;
    type Unpacked = ScaleMinBlock;

    fn read(b: &[u8]) -> Self {
        let (scales, mins) = scales_and_mins(&b[4..16]);
        Self {
            d: f16_at(b, 0),
            dmin: f16_at(b, 2),
            scales,
            mins,
            qh: b[16..48].try_into().expect("32 bytes"),
            qs: b[48..176].try_into().expect("128 bytes"),
        }
    }

    #[inline(always)]
    unsafe fn unpack(&self) -> ScaleMinBlock {
        let hbits = _mm256_loadu_si256(self.qh.as_ptr() as *const __m256i);
        let one = _mm256_set1_epi8(1);
        let mut q = [_mm256_setzero_si256(); 8];
        for j in 0..4 {
            (q[2 * j], q[2 * j + 1]) = nibble_pair(self.qs.as_ptr().add(32 * j));
        }
        for (i, q) in q.iter_mut().enumerate() {
            // Bit i of every byte to bit 4 (the shift crosses bytes; the mask drops that).
            let bit = _mm256_and_si256(_mm256_srl_epi16(hbits, _mm_cvtsi32_si128(i as i32)), one);
            *q = _mm256_or_si256(*q, _mm256_slli_epi16(bit, 4));
        }
        ScaleMinBlock::new(q, &self.scales, &self.mins, self.d, self.dmin)
    }

    #[inline(always)]
    unsafe fn fma(w: &ScaleMinBlock, y: &Q8KBlock, acc: __m256) -> __m256 {
        w.fma(y, acc)
    }

    const SUB: usize = 32;
    const OFFSET: i32 = 0;
    const HAS_MIN: bool = true;

    unsafe fn ints(&self) -> KInts {
        scale_min_ints(&self.unpack(), &self.scales, &self.mins)
    }
}

/// Q6_K: `d · scale_g · (q - 32)` with 6-bit `q` (4 bits in `ql`, 2 in `qh`) and a signed
/// 8-bit scale per 16 values `g`.
#[derive(Clone, Copy)]
pub(super) struct Q6KBlock {
    d: f32,
    scales: [i8; 16],
    ql: [u8; 128],
    qh: [u8; 64],
}

/// A Q6_K super-block unpacked.
pub(super) struct Q6KUnpacked {
    /// The values `q` (0..64) of each 32-value sub-block.
    q: [__m256i; 8],
    /// Sub-block `i`'s two scales: `scales[2i]` in the low eight i16 lanes (its first 16
    /// values), `scales[2i + 1]` in the high ones.
    scales: [__m256i; 8],
    /// The 16 scales as i16, for the offset term against the activations' 16-value sums.
    scales16: __m256i,
    d: f32,
}

impl BlockK for Q6KBlock {
    const NAME: &'static str = "Q6_K";
    const BITS: u32 = 6;
    const BYTES: usize = 210;
    type Unpacked = Q6KUnpacked;

    fn read(b: &[u8]) -> Self {
        Self {
            ql: b[0..128].try_into().expect("128 bytes"),
            qh: b[128..192].try_into().expect("64 bytes"),
            scales: std::array::from_fn(|i| b[192 + i] as i8),
            d: f16_at(b, 208),
        }
    }

    #[inline(always)]
    unsafe fn unpack(&self) -> Q6KUnpacked {
        let m2 = _mm256_set1_epi8(3);
        let mut q = [_mm256_setzero_si256(); 8];
        // Each 128 values: 64 bytes of low nibbles (sub-blocks 4j, 4j + 1 in the low nibbles
        // of the two halves, 4j + 2, 4j + 3 in the high ones) and 32 bytes of 2-bit pairs
        // (sub-block 4j + t in bits 2t, 2t + 1).
        for j in 0..2 {
            let (lo0, hi0) = nibble_pair(self.ql.as_ptr().add(64 * j));
            let (lo1, hi1) = nibble_pair(self.ql.as_ptr().add(64 * j + 32));
            let h = _mm256_loadu_si256(self.qh.as_ptr().add(32 * j) as *const __m256i);
            for (t, low) in [lo0, lo1, hi0, hi1].into_iter().enumerate() {
                let shift = _mm_cvtsi32_si128(2 * t as i32);
                let pair = _mm256_and_si256(_mm256_srl_epi16(h, shift), m2);
                q[4 * j + t] = _mm256_or_si256(low, _mm256_slli_epi16(pair, 4));
            }
        }
        let s = &self.scales;
        // Loops, not closures: a closure would not inherit the caller's AVX2.
        let mut scales = [_mm256_setzero_si256(); 8];
        for (i, v) in scales.iter_mut().enumerate() {
            *v = _mm256_set_m128i(
                _mm_set1_epi16(s[2 * i + 1] as i16),
                _mm_set1_epi16(s[2 * i] as i16),
            );
        }
        Q6KUnpacked {
            q,
            scales,
            scales16: _mm256_cvtepi8_epi16(_mm_loadu_si128(s.as_ptr() as *const __m128i)),
            d: self.d,
        }
    }

    #[inline(always)]
    unsafe fn fma(w: &Q6KUnpacked, y: &Q8KBlock, acc: __m256) -> __m256 {
        let sum = scaled_sum(&w.q, &w.scales, y);
        // Σ scale_g · 32 · Σ_g y, exact (at most 32 · 16 · 128 · 16 · 128 in magnitude).
        let bsums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
        let offset = _mm256_slli_epi32(_mm256_madd_epi16(w.scales16, bsums), 5);
        let sum = _mm256_sub_epi32(sum, offset);
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(w.d * y.d), acc)
    }

    const SUB: usize = 16;
    const OFFSET: i32 = 32;
    const HAS_MIN: bool = false;

    unsafe fn ints(&self) -> KInts {
        let u = self.unpack();
        let mut q = [0u8; QK_K];
        for (i, v) in u.q.iter().enumerate() {
            _mm256_storeu_si256(q.as_mut_ptr().add(32 * i) as *mut __m256i, *v);
        }
        KInts {
            q,
            scales: self.scales,
            mins: [0; 8],
            d: self.d,
            dmin: 0.0,
        }
    }
}

/// One weight row of a [`BlockK`] type.
struct RowK<'a, B> {
    blocks: &'a [B],
}

impl<B: BlockK> WeightRow for RowK<'_, B> {
    type Act = Q8KBlock;
    type Block = B::Unpacked;

    #[inline(always)]
    unsafe fn block(&self, b: usize) -> B::Unpacked {
        self.blocks.get_unchecked(b).unpack()
    }

    #[inline(always)]
    unsafe fn fma(w: &B::Unpacked, y: &Q8KBlock, acc: __m256) -> __m256 {
        B::fma(w, y, acc)
    }
}

/// The kernel for a [`BlockK`] type.
pub(super) struct KernelK<B> {
    blocks: Vec<B>,
    n: usize,
    k: usize,
}

pub(super) type Q4KAvx2 = KernelK<Q4KBlock>;
pub(super) type Q5KAvx2 = KernelK<Q5KBlock>;
pub(super) type Q6KAvx2 = KernelK<Q6KBlock>;

impl<B: BlockK> KernelK<B> {
    /// The kernel for `n` rows of `k` values stored as `data` (the tensor's GGUF bytes).
    pub(super) fn new(data: &[u8], n: usize, k: usize) -> Result<Self> {
        check_size(B::NAME, data.len(), (QK_K, B::BYTES), n, k)?;
        Ok(Self {
            blocks: data.chunks_exact(B::BYTES).map(B::read).collect(),
            n,
            k,
        })
    }
}

impl<B: BlockK> RowsMatMul for KernelK<B> {
    fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]) {
        let kb = self.k / QK_K;
        let y = quantize_q8k(x, m, self.k);
        by_columns(self.n, m, dst, |first, out| {
            for (c, out) in (first..).zip(out.chunks_mut(m)) {
                let row = RowK {
                    blocks: &self.blocks[c * kb..(c + 1) * kb],
                };
                // SAFETY: `rows_matmul` builds this kernel only when AVX2 and FMA are detected;
                // `y` holds `m == out.len()` rows of `kb` blocks.
                unsafe { dot_rows(&row, kb, &y, out) }
            }
        });
    }
}
