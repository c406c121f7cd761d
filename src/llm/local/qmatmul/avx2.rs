//! AVX2/FMA kernels for the two quantized types of the default model: Q4_1 (the layers) and
//! Q8_0 (the tied embedding / output projection). Activations are quantized to 8 bits per
//! block (Q8_1 or Q8_0, by candle's own `from_float`), then each weight block is unpacked once
//! and dotted with a tile of activation rows (llama.cpp's arithmetic: integer block dot
//! products in eight i32 lanes, scaled and accumulated in f32 vector registers, lanes summed
//! once per row).
//!
//! Every row is summed in the same order whatever its tile: even blocks in one accumulator,
//! odd blocks in another, added at the end. Tiles of up to 4 rows interleave the two chains
//! (latency hiding for one row); tiles of 8 run the even blocks, then the odd ones (8 chains
//! are enough). So a row's result is bit for bit the same in any batch (see the tests).

use std::arch::x86_64::*;

use anyhow::{bail, Result};
use candle_core::quantized::k_quants::{BlockQ8_0, BlockQ8_1};
use candle_core::quantized::GgmlType;

use super::{by_columns, RowsMatMul};

/// Bytes of one Q4_1 block (f16 d, f16 m, 16 bytes of nibbles), one Q8_1 block (f16 d, f16 s,
/// 32 signed bytes) and one Q8_0 block (f16 d, 32 signed bytes), as in GGUF files and candle's
/// `repr(C)` block types.
const Q4_1_BYTES: usize = 20;
const Q8_1_BYTES: usize = 36;
const Q8_0_BYTES: usize = 34;

fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Quantized activation rows, unpacked: 32 signed bytes and a scale per block, and for Q8_1
/// the block sums `s` (scale times the sum of the bytes) that Q4_1's minimums multiply.
struct ActRows {
    qs: Vec<[i8; 32]>,
    d: Vec<f32>,
    s: Vec<f32>,
}

impl ActRows {
    fn with_capacity(blocks: usize) -> Self {
        Self {
            qs: Vec::with_capacity(blocks),
            d: Vec::with_capacity(blocks),
            s: Vec::with_capacity(blocks),
        }
    }
}

/// Reads `blocks` as bytes.
///
/// # Safety
/// `T` must be a `repr(C)` block of exactly `size` plain bytes.
unsafe fn block_bytes<T>(blocks: &[T], size: usize) -> &[u8] {
    debug_assert_eq!(std::mem::size_of::<T>(), size);
    std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(blocks))
}

/// `m` activation rows of `k` values quantized to blocks of type `B` by candle's own
/// `from_float`.
fn quantize_rows<B: GgmlType>(x: &[f32], m: usize, k: usize) -> Vec<B> {
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
    let mut rows = ActRows::with_capacity(bytes.len() / Q8_1_BYTES);
    for b in bytes.chunks_exact(Q8_1_BYTES) {
        rows.d.push(f16_at(b, 0));
        rows.s.push(f16_at(b, 2));
        rows.qs.push(std::array::from_fn(|i| b[4 + i] as i8));
    }
    rows
}

fn quantize_q8_0(x: &[f32], m: usize, k: usize) -> ActRows {
    let blocks = quantize_rows::<BlockQ8_0>(x, m, k);
    // SAFETY: BlockQ8_0 is a `repr(C)` block of Q8_0_BYTES plain bytes (candle asserts it).
    unpack_q8_0(unsafe { block_bytes(&blocks, Q8_0_BYTES) })
}

fn unpack_q8_0(bytes: &[u8]) -> ActRows {
    let mut rows = ActRows::with_capacity(bytes.len() / Q8_0_BYTES);
    for b in bytes.chunks_exact(Q8_0_BYTES) {
        rows.d.push(f16_at(b, 0));
        rows.qs.push(std::array::from_fn(|i| b[2 + i] as i8));
    }
    rows
}

/// One weight row's blocks as the tile kernel sees them.
trait WeightRow {
    /// A block made ready for [`Self::dot`] (unpacked once per tile).
    type Block: Copy;
    /// Block `b`.
    ///
    /// # Safety
    /// AVX2 must be available and `b` below the row's block count.
    unsafe fn block(&self, b: usize) -> Self::Block;
    /// The block's integer dot product with 32 activation bytes, in eight i32 lanes.
    ///
    /// # Safety
    /// AVX2 must be available.
    unsafe fn dot(w: Self::Block, y: __m256i) -> __m256i;
    /// Scale of block `b` (`b` below the block count).
    fn scale(&self, b: usize) -> f32;
}

/// Adds weight block `b` times the matching block of `R` rows of `y` (row `r`'s blocks start
/// at `at[r]`) into the rows' accumulators: `acc[r] += scale_b · y.d · dot(w_b, y_b)`.
///
/// # Safety
/// AVX2 and FMA must be available; `y` holds block `at[r] + b` for every `r`.
#[inline(always)]
unsafe fn add_block<W: WeightRow, const R: usize>(
    w: &W,
    b: usize,
    y: &ActRows,
    at: &[usize; R],
    acc: &mut [__m256; R],
) {
    let wb = w.block(b);
    let ws = w.scale(b);
    let ones = _mm256_set1_epi16(1);
    for r in 0..R {
        let i = at[r] + b;
        let yv = _mm256_loadu_si256(y.qs.get_unchecked(i).as_ptr() as *const __m256i);
        let p = _mm256_madd_epi16(W::dot(wb, yv), ones);
        let scale = _mm256_set1_ps(ws * *y.d.get_unchecked(i));
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[r]);
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
    y: &ActRows,
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
unsafe fn tile_of_8<W: WeightRow>(w: &W, kb: usize, y: &ActRows, first: usize, out: &mut [f32]) {
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
    y: &ActRows,
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
unsafe fn dot_rows<W: WeightRow>(w: &W, kb: usize, y: &ActRows, out: &mut [f32]) {
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

/// The minimum terms of Q4_1 for 8 weight rows and every activation row `r`:
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

fn check_size(what: &str, bytes: usize, block: usize, n: usize, k: usize) -> Result<()> {
    if !k.is_multiple_of(32) || bytes != n * k / 32 * block {
        bail!("{what} tensor of {bytes} bytes does not hold {n}x{k} values");
    }
    Ok(())
}

/// Q4_1 weights: block scales and minimums as f32 (exact conversions of the f16 values), the
/// nibbles as stored. The minimums of each 8 weight rows are interleaved for [`minimums`]
/// (`m8[(c / 8) * 8 * kb + b * 8 + c % 8]`, zero past the last row).
pub(super) struct Q4_1Avx2 {
    qs: Vec<[u8; 16]>,
    d: Vec<f32>,
    m8: Vec<f32>,
    n: usize,
    k: usize,
}

impl Q4_1Avx2 {
    pub(super) fn new(data: &[u8], n: usize, k: usize) -> Result<Self> {
        check_size("Q4_1", data.len(), Q4_1_BYTES, n, k)?;
        let kb = k / 32;
        let blocks = data.chunks_exact(Q4_1_BYTES);
        let mut me = Self {
            qs: Vec::with_capacity(blocks.len()),
            d: Vec::with_capacity(blocks.len()),
            m8: vec![0.0; kb * n.next_multiple_of(8)],
            n,
            k,
        };
        for (i, bytes) in blocks.enumerate() {
            let (c, b) = (i / kb, i % kb);
            me.d.push(f16_at(bytes, 0));
            me.m8[c / 8 * 8 * kb + b * 8 + c % 8] = f16_at(bytes, 2);
            me.qs.push(bytes[4..20].try_into().expect("16 bytes"));
        }
        Ok(me)
    }
}

/// One Q4_1 weight row (nibbles and scales; the minimum terms come from [`minimums`]).
struct Q4_1Row<'a> {
    qs: &'a [[u8; 16]],
    d: &'a [f32],
}

impl WeightRow for Q4_1Row<'_> {
    type Block = __m256i;

    #[inline(always)]
    unsafe fn block(&self, b: usize) -> __m256i {
        let v = _mm_loadu_si128(self.qs.get_unchecked(b).as_ptr() as *const __m128i);
        let mask = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(v, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
        _mm256_set_m128i(hi, lo)
    }

    #[inline(always)]
    unsafe fn dot(w: __m256i, y: __m256i) -> __m256i {
        _mm256_maddubs_epi16(w, y)
    }

    #[inline(always)]
    fn scale(&self, b: usize) -> f32 {
        self.d[b]
    }
}

impl RowsMatMul for Q4_1Avx2 {
    fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]) {
        let kb = self.k / 32;
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
                    let blocks = (c0 + j) * kb..(c0 + j + 1) * kb;
                    let row = Q4_1Row {
                        qs: &self.qs[blocks.clone()],
                        d: &self.d[blocks],
                    };
                    // SAFETY: as above; `out` has one value per row of `y`.
                    unsafe { dot_rows(&row, kb, &y, out) };
                    for (o, mins) in out.iter_mut().zip(&mins) {
                        *o += mins[j];
                    }
                }
            }
        });
    }
}

/// Q8_0 weights: block scales as f32, the signed bytes as stored.
pub(super) struct Q8_0Avx2 {
    w: ActRows,
    n: usize,
    k: usize,
}

impl Q8_0Avx2 {
    pub(super) fn new(data: &[u8], n: usize, k: usize) -> Result<Self> {
        check_size("Q8_0", data.len(), Q8_0_BYTES, n, k)?;
        Ok(Self {
            w: unpack_q8_0(data),
            n,
            k,
        })
    }
}

/// One Q8_0 weight row.
struct Q8_0Row<'a> {
    qs: &'a [[i8; 32]],
    d: &'a [f32],
}

impl WeightRow for Q8_0Row<'_> {
    /// The bytes and their absolute values (`maddubs` takes unsigned × signed).
    type Block = (__m256i, __m256i);

    #[inline(always)]
    unsafe fn block(&self, b: usize) -> (__m256i, __m256i) {
        let w = _mm256_loadu_si256(self.qs.get_unchecked(b).as_ptr() as *const __m256i);
        (w, _mm256_sign_epi8(w, w))
    }

    #[inline(always)]
    unsafe fn dot((w, abs_w): (__m256i, __m256i), y: __m256i) -> __m256i {
        _mm256_maddubs_epi16(abs_w, _mm256_sign_epi8(y, w))
    }

    #[inline(always)]
    fn scale(&self, b: usize) -> f32 {
        self.d[b]
    }
}

impl RowsMatMul for Q8_0Avx2 {
    fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]) {
        let kb = self.k / 32;
        let y = quantize_q8_0(x, m, self.k);
        by_columns(self.n, m, dst, |first, out| {
            for (c, out) in (first..).zip(out.chunks_mut(m)) {
                let blocks = c * kb..(c + 1) * kb;
                let row = Q8_0Row {
                    qs: &self.w.qs[blocks.clone()],
                    d: &self.w.d[blocks],
                };
                // SAFETY: `rows_matmul` builds this kernel only when AVX2 and FMA are detected;
                // `y` holds `m == out.len()` rows of `kb` blocks.
                unsafe { dot_rows(&row, kb, &y, out) }
            }
        });
    }
}
