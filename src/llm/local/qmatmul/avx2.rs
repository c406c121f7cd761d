//! AVX2/FMA kernels for the 32-value block types: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 (the default
//! model's layers are Q4_1 and its tied embedding Q8_0; files quantized to K-quants fall back
//! to Q5_0, Q5_1 and Q8_0 for rows whose length is not a multiple of 256). Activations are
//! quantized to 8 bits per block (Q8_1 for the types with a minimum, Q8_0 for the others, by
//! candle's own `from_float`), then each weight block is unpacked once and dotted with a tile
//! of activation rows (llama.cpp's arithmetic: integer block dot products in eight i32 lanes,
//! scaled and accumulated in f32 vector registers, lanes summed once per row).
//!
//! The tile driver ([`WeightRow`], [`dot_rows`]) is shared with the 256-value K-quant kernels
//! (`k_quants`). Every row is summed in the same order whatever its tile: even blocks in one
//! accumulator, odd blocks in another, added at the end. Tiles of up to 4 rows interleave the
//! two chains (latency hiding for one row); tiles of 8 run the even blocks, then the odd ones
//! (8 chains are enough). So a row's result is bit for bit the same in any batch (see the
//! tests).

use std::arch::x86_64::*;

use anyhow::{bail, Result};
use candle_core::quantized::k_quants::{BlockQ8_0, BlockQ8_1};
use candle_core::quantized::GgmlType;

use super::{by_columns, RowsMatMul};

/// Bytes of one Q8_1 block (f16 d, f16 s, 32 signed bytes) and one Q8_0 block (f16 d, 32
/// signed bytes), as in GGUF files and candle's `repr(C)` block types.
const Q8_1_BYTES: usize = 36;
const Q8_0_BYTES: usize = 34;

pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// One block of 32 activations quantized to 8 bits: the bytes and their scale.
#[derive(Clone, Copy)]
struct Q8Block {
    qs: [i8; 32],
    d: f32,
}

/// Quantized activation rows, unpacked, and for Q8_1 the block sums `s` (scale times the sum
/// of the bytes) that the minimums of Q4_1 and Q5_1 multiply.
struct ActRows {
    blocks: Vec<Q8Block>,
    s: Vec<f32>,
}

/// Reads `blocks` as bytes.
///
/// # Safety
/// `T` must be a `repr(C)` block of exactly `size` plain bytes.
pub(super) unsafe fn block_bytes<T>(blocks: &[T], size: usize) -> &[u8] {
    debug_assert_eq!(std::mem::size_of::<T>(), size);
    std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(blocks))
}

/// `m` activation rows of `k` values quantized to blocks of type `B` by candle's own
/// `from_float`.
pub(super) fn quantize_rows<B: GgmlType>(x: &[f32], m: usize, k: usize) -> Vec<B> {
    let kb = k / B::BLCK_SIZE;
    let mut blocks = vec![B::zeros(); m * kb];
    for r in 0..m {
        B::from_float(&x[r * k..(r + 1) * k], &mut blocks[r * kb..(r + 1) * kb]);
    }
    blocks
}

fn quantize_q8_1(x: &[f32], m: usize, k: usize) -> ActRows {
    let blocks = quantize_rows::<BlockQ8_1>(x, m, k);
    // SAFETY: BlockQ8_1 is a `repr(C)` block of Q8_1_BYTES plain bytes (candle asserts it).
    let bytes = unsafe { block_bytes(&blocks, Q8_1_BYTES) };
    let blocks = bytes.chunks_exact(Q8_1_BYTES);
    let mut rows = ActRows {
        blocks: Vec::with_capacity(blocks.len()),
        s: Vec::with_capacity(blocks.len()),
    };
    for b in blocks {
        rows.blocks.push(Q8Block {
            qs: std::array::from_fn(|i| b[4 + i] as i8),
            d: f16_at(b, 0),
        });
        rows.s.push(f16_at(b, 2));
    }
    rows
}

fn quantize_q8_0(x: &[f32], m: usize, k: usize) -> ActRows {
    let blocks = quantize_rows::<BlockQ8_0>(x, m, k);
    // SAFETY: BlockQ8_0 is a `repr(C)` block of Q8_0_BYTES plain bytes (candle asserts it).
    let bytes = unsafe { block_bytes(&blocks, Q8_0_BYTES) };
    let blocks = bytes
        .chunks_exact(Q8_0_BYTES)
        .map(|b| Q8Block {
            qs: std::array::from_fn(|i| b[2 + i] as i8),
            d: f16_at(b, 0),
        })
        .collect();
    ActRows {
        blocks,
        s: Vec::new(),
    }
}

/// One weight row's blocks as the tile kernel sees them.
pub(super) trait WeightRow {
    /// One block of quantized activations, as [`Self::fma`] takes it.
    type Act;
    /// A block made ready for [`Self::fma`] (unpacked once per tile).
    type Block;
    /// Block `b`.
    ///
    /// # Safety
    /// AVX2 must be available and `b` below the row's block count.
    unsafe fn block(&self, b: usize) -> Self::Block;
    /// `acc` plus the product of weight block `w` and activation block `y`, in eight f32 lanes
    /// (whose sum is the block's contribution to the dot product).
    ///
    /// # Safety
    /// AVX2 and FMA must be available.
    unsafe fn fma(w: &Self::Block, y: &Self::Act, acc: __m256) -> __m256;
}

/// Adds weight block `b` times the matching block of `R` rows of `y` (row `r`'s blocks start
/// at `at[r]`) into the rows' accumulators.
///
/// # Safety
/// AVX2 and FMA must be available; `y` holds block `at[r] + b` for every `r`.
#[inline(always)]
unsafe fn add_block<W: WeightRow, const R: usize>(
    w: &W,
    b: usize,
    y: &[W::Act],
    at: &[usize; R],
    acc: &mut [__m256; R],
) {
    let wb = w.block(b);
    for r in 0..R {
        acc[r] = W::fma(&wb, y.get_unchecked(at[r] + b), acc[r]);
    }
}

/// Dots one weight row of `kb` blocks with `R` rows of `y` (rows `first..first + R`) into
/// `out[..R]`: even and odd blocks in separate accumulators, interleaved.
///
/// # Safety
/// AVX2 and FMA must be available; `y` holds rows `first..first + R` of `kb` blocks;
/// `out.len() >= R`.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_interleaved<W: WeightRow, const R: usize>(
    w: &W,
    kb: usize,
    y: &[W::Act],
    first: usize,
    out: &mut [f32],
) {
    let at: [usize; R] = std::array::from_fn(|r| (first + r) * kb);
    let mut even = [_mm256_setzero_ps(); R];
    let mut odd = [_mm256_setzero_ps(); R];
    let mut b = 0;
    while b + 1 < kb {
        add_block(w, b, y, &at, &mut even);
        add_block(w, b + 1, y, &at, &mut odd);
        b += 2;
    }
    if b < kb {
        add_block(w, b, y, &at, &mut even);
    }
    for r in 0..R {
        out[r] = hsum(_mm256_add_ps(even[r], odd[r]));
    }
}

/// As [`tile_interleaved`] for 8 rows, the even blocks first and then the odd ones: the same
/// sums in the same order, with each weight block unpacked once per 8 rows.
///
/// # Safety
/// As for [`tile_interleaved`] with `R = 8`.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_of_8<W: WeightRow>(w: &W, kb: usize, y: &[W::Act], first: usize, out: &mut [f32]) {
    let at: [usize; 8] = std::array::from_fn(|r| (first + r) * kb);
    let even = every_other_block(w, kb, y, &at, 0);
    let odd = every_other_block(w, kb, y, &at, 1);
    for r in 0..8 {
        out[r] = hsum(_mm256_add_ps(even[r], odd[r]));
    }
}

/// The blocks `start, start + 2, …` of 8 rows, one accumulator per row.
///
/// # Safety
/// As for [`add_block`].
#[target_feature(enable = "avx2,fma")]
unsafe fn every_other_block<W: WeightRow>(
    w: &W,
    kb: usize,
    y: &[W::Act],
    at: &[usize; 8],
    start: usize,
) -> [__m256; 8] {
    let mut acc = [_mm256_setzero_ps(); 8];
    for b in (start..kb).step_by(2) {
        add_block(w, b, y, at, &mut acc);
    }
    acc
}

/// Dots one weight row with every row of `y` (`out.len()` of them): tiles of 8, then 4, then
/// what is left.
///
/// # Safety
/// AVX2 and FMA must be available; `y` holds `out.len()` rows of `kb` blocks.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot_rows<W: WeightRow>(w: &W, kb: usize, y: &[W::Act], out: &mut [f32]) {
    let mut first = 0;
    while first < out.len() {
        let o = &mut out[first..];
        let rows = match o.len() {
            1 => 1,
            2 => 2,
            3 => 3,
            4..=7 => 4,
            _ => 8,
        };
        match rows {
            1 => tile_interleaved::<W, 1>(w, kb, y, first, o),
            2 => tile_interleaved::<W, 2>(w, kb, y, first, o),
            3 => tile_interleaved::<W, 3>(w, kb, y, first, o),
            4 => tile_interleaved::<W, 4>(w, kb, y, first, o),
            _ => tile_of_8(w, kb, y, first, o),
        }
        first += rows;
    }
}

/// The eight lanes added up (pairwise).
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0b01));
    _mm_cvtss_f32(s)
}

/// The minimum terms of Q4_1 or Q5_1 for 8 weight rows and every activation row `r`:
/// `mins[r][j] = Σ_b m_{j,b} · s_{r,b}`, with `m8` the 8 weight rows' minimums interleaved
/// (`m8[b * 8 + j]`) and `s` the activation rows' block sums. A lane sums one weight row's
/// terms in block order with fused multiply-adds, so the result does not depend on the other
/// rows of either side.
///
/// # Safety
/// AVX2 and FMA must be available; `m8` holds `8 * kb` values and `s` holds `mins.len()` rows
/// of `kb` values.
#[target_feature(enable = "avx2,fma")]
unsafe fn minimums(m8: &[f32], kb: usize, s: &[f32], mins: &mut [[f32; 8]]) {
    for (r, out) in mins.iter_mut().enumerate() {
        let s = &s[r * kb..(r + 1) * kb];
        let mut acc = _mm256_setzero_ps();
        for (b, &sb) in s.iter().enumerate() {
            let m = _mm256_loadu_ps(m8.as_ptr().add(b * 8));
            acc = _mm256_fmadd_ps(m, _mm256_set1_ps(sb), acc);
        }
        _mm256_storeu_ps(out.as_mut_ptr(), acc);
    }
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
    if !k.is_multiple_of(block_values) || bytes != n * k / block_values * block_bytes {
        bail!("{what} tensor of {bytes} bytes does not hold {n}x{k} values");
    }
    Ok(())
}

/// A weight type of 32-value blocks, each kept with its scale as f32 (an exact conversion of
/// the file's f16) and unpacked to 32 bytes per tile.
pub(super) trait Block32: Copy + Send + Sync {
    /// The type's name, for errors.
    const NAME: &'static str;
    /// Bytes of one block in a GGUF file.
    const BYTES: usize;
    /// Unsigned values with a per-block minimum (dotted with Q8_1 activations, whose block
    /// sums the minimums multiply), or signed values (dotted with Q8_0 activations).
    const HAS_MIN: bool;
    /// For signed types, what makes every value non-negative (`q + OFFSET` fits a byte
    /// unsigned): the packed kernels (`packed`) multiply unsigned weight bytes.
    const OFFSET: i32;
    /// Bits per value: the packed kernels' AVX2 tiles size their i16 sums by it.
    const BITS: u32;
    /// The block read from its file bytes, and its minimum (0 for signed types).
    fn read(bytes: &[u8]) -> (Self, f32);
    /// The block's scale.
    fn d(&self) -> f32;
    /// The 32 quantized values, one byte each: unsigned when [`Self::HAS_MIN`], else signed.
    ///
    /// # Safety
    /// AVX2 must be available.
    unsafe fn values(&self) -> __m256i;
}

/// 32 nibbles, low ones (values 0..16) then high ones (values 16..32), as bytes.
#[inline(always)]
unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
    let v = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(v, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
    _mm256_set_m128i(hi, lo)
}

/// The 32 bits of `qh` (little endian) as bytes: 0xFF where the bit is set, else 0
/// (llama.cpp's `bytes_from_bits_32`).
#[inline(always)]
unsafe fn bits_to_bytes(qh: u32) -> __m256i {
    let shuffle = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), shuffle);
    // Every bit but byte i's own (i % 8) set: all ones exactly where that bit is.
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// Q4_0: `d · (q - 8)` with 4-bit `q`.
#[derive(Clone, Copy)]
pub(super) struct Q4_0Block {
    d: f32,
    qs: [u8; 16],
}

impl Block32 for Q4_0Block {
    const NAME: &'static str = "Q4_0";
    const BITS: u32 = 4;
    const BYTES: usize = 18;
    const HAS_MIN: bool = false;
    const OFFSET: i32 = 8;

    fn read(b: &[u8]) -> (Self, f32) {
        let qs = b[2..18].try_into().expect("16 bytes");
        (
            Self {
                d: f16_at(b, 0),
                qs,
            },
            0.0,
        )
    }

    fn d(&self) -> f32 {
        self.d
    }

    #[inline(always)]
    unsafe fn values(&self) -> __m256i {
        _mm256_sub_epi8(nibbles(&self.qs), _mm256_set1_epi8(8))
    }
}

/// Q4_1: `d · q + m` with 4-bit `q`.
#[derive(Clone, Copy)]
pub(super) struct Q4_1Block {
    d: f32,
    qs: [u8; 16],
}

impl Block32 for Q4_1Block {
    const NAME: &'static str = "Q4_1";
    const BITS: u32 = 4;
    const BYTES: usize = 20;
    const HAS_MIN: bool = true;
    const OFFSET: i32 = 0;

    fn read(b: &[u8]) -> (Self, f32) {
        let qs = b[4..20].try_into().expect("16 bytes");
        (
            Self {
                d: f16_at(b, 0),
                qs,
            },
            f16_at(b, 2),
        )
    }

    fn d(&self) -> f32 {
        self.d
    }

    #[inline(always)]
    unsafe fn values(&self) -> __m256i {
        nibbles(&self.qs)
    }
}

/// Q5_0: `d · (q - 16)` with 5-bit `q` (4 bits in `qs`, the fifth in `qh`).
#[derive(Clone, Copy)]
pub(super) struct Q5_0Block {
    d: f32,
    qh: u32,
    qs: [u8; 16],
}

impl Block32 for Q5_0Block {
    const NAME: &'static str = "Q5_0";
    const BITS: u32 = 5;
    const BYTES: usize = 22;
    const HAS_MIN: bool = false;
    const OFFSET: i32 = 16;

    fn read(b: &[u8]) -> (Self, f32) {
        let qh = u32::from_le_bytes(b[2..6].try_into().expect("4 bytes"));
        let qs = b[6..22].try_into().expect("16 bytes");
        (
            Self {
                d: f16_at(b, 0),
                qh,
                qs,
            },
            0.0,
        )
    }

    fn d(&self) -> f32 {
        self.d
    }

    #[inline(always)]
    unsafe fn values(&self) -> __m256i {
        // q - 16 is the nibble when the fifth bit is set, else the nibble with 0xF0 on top.
        let high = _mm256_andnot_si256(bits_to_bytes(self.qh), _mm256_set1_epi8(0xF0u8 as i8));
        _mm256_or_si256(nibbles(&self.qs), high)
    }
}

/// Q5_1: `d · q + m` with 5-bit `q` (4 bits in `qs`, the fifth in `qh`).
#[derive(Clone, Copy)]
pub(super) struct Q5_1Block {
    d: f32,
    qh: u32,
    qs: [u8; 16],
}

impl Block32 for Q5_1Block {
    const NAME: &'static str = "Q5_1";
    const BITS: u32 = 5;
    const BYTES: usize = 24;
    const HAS_MIN: bool = true;
    const OFFSET: i32 = 0;

    fn read(b: &[u8]) -> (Self, f32) {
        let qh = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
        let qs = b[8..24].try_into().expect("16 bytes");
        (
            Self {
                d: f16_at(b, 0),
                qh,
                qs,
            },
            f16_at(b, 2),
        )
    }

    fn d(&self) -> f32 {
        self.d
    }

    #[inline(always)]
    unsafe fn values(&self) -> __m256i {
        let high = _mm256_and_si256(bits_to_bytes(self.qh), _mm256_set1_epi8(0x10));
        _mm256_or_si256(nibbles(&self.qs), high)
    }
}

/// Q8_0: `d · q` with signed 8-bit `q`.
#[derive(Clone, Copy)]
pub(super) struct Q8_0Block {
    d: f32,
    qs: [i8; 32],
}

impl Block32 for Q8_0Block {
    const NAME: &'static str = "Q8_0";
    const BITS: u32 = 8;
    const BYTES: usize = Q8_0_BYTES;
    const HAS_MIN: bool = false;
    const OFFSET: i32 = 128;

    fn read(b: &[u8]) -> (Self, f32) {
        let qs = std::array::from_fn(|i| b[2 + i] as i8);
        (
            Self {
                d: f16_at(b, 0),
                qs,
            },
            0.0,
        )
    }

    fn d(&self) -> f32 {
        self.d
    }

    #[inline(always)]
    unsafe fn values(&self) -> __m256i {
        _mm256_loadu_si256(self.qs.as_ptr() as *const __m256i)
    }
}

/// One weight row of a [`Block32`] type (for types with a minimum, without the minimum terms:
/// those come from [`minimums`]).
struct Row32<'a, B> {
    blocks: &'a [B],
}

impl<B: Block32> WeightRow for Row32<'_, B> {
    type Act = Q8Block;
    /// The values to multiply (absolute values for signed types: `maddubs` takes unsigned ×
    /// signed), the values whose signs go onto the activations (signed types), the scale.
    type Block = (__m256i, __m256i, f32);

    #[inline(always)]
    unsafe fn block(&self, b: usize) -> Self::Block {
        let block = self.blocks.get_unchecked(b);
        let v = block.values();
        match B::HAS_MIN {
            true => (v, v, block.d()),
            false => (_mm256_sign_epi8(v, v), v, block.d()),
        }
    }

    #[inline(always)]
    unsafe fn fma(&(w, signs, d): &Self::Block, y: &Q8Block, acc: __m256) -> __m256 {
        let yv = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
        let yv = match B::HAS_MIN {
            true => yv,
            false => _mm256_sign_epi8(yv, signs),
        };
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, yv), _mm256_set1_epi16(1));
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * y.d), acc)
    }
}

/// The kernel for a [`Block32`] type. For types with a minimum, the minimums of each 8 weight
/// rows are interleaved for [`minimums`] (`m8[(c / 8) * 8 * kb + b * 8 + c % 8]`, zero past
/// the last row).
pub(super) struct Kernel32<B> {
    blocks: Vec<B>,
    m8: Vec<f32>,
    n: usize,
    k: usize,
}

pub(super) type Q4_0Avx2 = Kernel32<Q4_0Block>;
pub(super) type Q4_1Avx2 = Kernel32<Q4_1Block>;
pub(super) type Q5_0Avx2 = Kernel32<Q5_0Block>;
pub(super) type Q5_1Avx2 = Kernel32<Q5_1Block>;
pub(super) type Q8_0Avx2 = Kernel32<Q8_0Block>;

impl<B: Block32> Kernel32<B> {
    /// The kernel for `n` rows of `k` values stored as `data` (the tensor's GGUF bytes).
    pub(super) fn new(data: &[u8], n: usize, k: usize) -> Result<Self> {
        check_size(B::NAME, data.len(), (32, B::BYTES), n, k)?;
        let kb = k / 32;
        let mut me = Self {
            blocks: Vec::with_capacity(n * kb),
            m8: match B::HAS_MIN {
                true => vec![0.0; kb * n.next_multiple_of(8)],
                false => Vec::new(),
            },
            n,
            k,
        };
        for (i, bytes) in data.chunks_exact(B::BYTES).enumerate() {
            let (block, min) = B::read(bytes);
            me.blocks.push(block);
            if B::HAS_MIN {
                let (c, b) = (i / kb, i % kb);
                me.m8[c / 8 * 8 * kb + b * 8 + c % 8] = min;
            }
        }
        Ok(me)
    }

    fn row(&self, c: usize) -> Row32<'_, B> {
        let kb = self.k / 32;
        Row32 {
            blocks: &self.blocks[c * kb..(c + 1) * kb],
        }
    }
}

impl<B: Block32> RowsMatMul for Kernel32<B> {
    fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]) {
        let kb = self.k / 32;
        if !B::HAS_MIN {
            let y = quantize_q8_0(x, m, self.k);
            by_columns(self.n, m, dst, |first, out| {
                for (c, out) in (first..).zip(out.chunks_mut(m)) {
                    // SAFETY: `rows_matmul` builds this kernel only when AVX2 and FMA are
                    // detected; `y` holds `m == out.len()` rows of `kb` blocks.
                    unsafe { dot_rows(&self.row(c), kb, &y.blocks, out) }
                }
            });
            return;
        }
        let y = quantize_q8_1(x, m, self.k);
        by_columns(self.n, m, dst, |first, out| {
            let mut mins = vec![[0f32; 8]; m];
            for (g, group) in out.chunks_mut(8 * m).enumerate() {
                let c0 = first + 8 * g;
                // Tasks start at multiples of 8, so `c0 / 8` is this group's index.
                let m8 = &self.m8[c0 / 8 * 8 * kb..(c0 / 8 + 1) * 8 * kb];
                // SAFETY: `rows_matmul` builds this kernel only when AVX2 and FMA are
                // detected; `m8` has `8 * kb` values and `y` holds `m` rows of `kb` blocks.
                unsafe { minimums(m8, kb, &y.s, &mut mins) };
                for (j, out) in group.chunks_mut(m).enumerate() {
                    // SAFETY: as above; `out` has one value per row of `y`.
                    unsafe { dot_rows(&self.row(c0 + j), kb, &y.blocks, out) };
                    for (o, mins) in out.iter_mut().zip(&mins) {
                        *o += mins[j];
                    }
                }
            }
        });
    }
}
