//! Quantized matrix products for several rows at once (batched decoding, short chunks).
//!
//! candle's quantized matmul walks every weight row once per activation row, so B sequences
//! cost B full passes over the weights. Here each weight row's blocks are dotted with all B
//! activation rows while they sit in L1 cache. The per-element arithmetic is candle's own
//! `GgmlType::vec_dot` on the same quantized activations, so a sequence's numbers do not depend
//! on which other sequences share its batch.
//!
//! Q4_1 (the default model's type) has no SIMD `vec_dot` in candle, so it gets its own AVX2/FMA
//! kernel: each weight block is unpacked once and dotted with up to 4 activation rows, with
//! llama.cpp's arithmetic (block sums scaled and accumulated in vector registers, lanes summed
//! once per row). It computes candle's quantities in another float order: equal to candle's
//! within rounding, and bit for bit the same whatever the batch (see the tests).

use std::borrow::Cow;

use anyhow::{bail, Result};
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0, BlockQ8_1,
};
use candle_core::quantized::{GgmlDType, GgmlType, QTensor};
use rayon::prelude::*;

/// `dst[m, n] = x[m, k] · Wᵀ` for a quantized `W[n, k]`.
pub trait RowsMatMul: Send + Sync {
    fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]);
}

struct Typed<T: GgmlType> {
    blocks: Vec<T>,
    n: usize,
    k: usize,
}

/// Weight rows handled by one task.
const COLS_PER_TASK: usize = 64;

impl<T: GgmlType + Send + Sync> RowsMatMul for Typed<T>
where
    T::VecDotType: Send + Sync,
{
    fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        let kb = k / T::BLCK_SIZE;
        let mut xq = vec![T::VecDotType::zeros(); m * kb];
        for r in 0..m {
            T::VecDotType::from_float(&x[r * k..(r + 1) * k], &mut xq[r * kb..(r + 1) * kb]);
        }
        by_columns(n, m, dst, |c, col_out| {
            let w = &self.blocks[c * kb..(c + 1) * kb];
            for (r, o) in col_out.iter_mut().enumerate() {
                *o = T::vec_dot(k, w, &xq[r * kb..(r + 1) * kb]);
            }
        });
    }
}

/// `dst[r, c] = col(c)[r]` for the `n` weight rows `c`, computed in parallel: `col(c, out)`
/// fills `out` (one value per activation row, `m` of them) for weight row `c`.
fn by_columns(n: usize, m: usize, dst: &mut [f32], col: impl Fn(usize, &mut [f32]) + Sync) {
    // Column-major scratch so each task writes one contiguous slice.
    let mut out_t = vec![0f32; n * m];
    out_t
        .par_chunks_mut(COLS_PER_TASK * m)
        .enumerate()
        .for_each(|(task, out)| {
            for (c, col_out) in out.chunks_mut(m).enumerate() {
                col(task * COLS_PER_TASK + c, col_out);
            }
        });
    for (c, values) in out_t.chunks(m).enumerate() {
        for (r, v) in values.iter().enumerate() {
            dst[r * n + c] = *v;
        }
    }
}

fn typed<T: GgmlType + Send + Sync + 'static>(
    data: Cow<'_, [u8]>,
    n: usize,
    k: usize,
) -> Result<Box<dyn RowsMatMul>>
where
    T::VecDotType: Send + Sync,
{
    let size = std::mem::size_of::<T>();
    if !k.is_multiple_of(T::BLCK_SIZE) || data.len() != n * k / T::BLCK_SIZE * size {
        bail!(
            "quantized tensor of {} bytes does not hold {n}x{k} values",
            data.len()
        );
    }
    let mut blocks = vec![T::zeros(); data.len() / size];
    // SAFETY: the block types are `repr(C)` plain data (floats and byte arrays), `blocks` has
    // exactly `data.len()` bytes, and GGUF tensor data is a packed array of these blocks.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), blocks.as_mut_ptr() as *mut u8, data.len());
    }
    Ok(Box::new(Typed { blocks, n, k }))
}

/// Q4_1 weights laid out for the AVX2 kernel: block scales and minimums as f32 (exact
/// conversions of the f16 values), the nibbles as stored.
struct Q4_1Avx2 {
    qs: Vec<[u8; 16]>,
    d: Vec<f32>,
    m: Vec<f32>,
    n: usize,
    k: usize,
}

/// Bytes of one Q4_1 block (f16 d, f16 m, 16 bytes of nibbles) and of one Q8_1 block (f16 d,
/// f16 s, 32 signed bytes), as in GGUF files and candle's `repr(C)` block types.
const Q4_1_BYTES: usize = 20;
const Q8_1_BYTES: usize = 36;

fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

impl Q4_1Avx2 {
    fn new(data: &[u8], n: usize, k: usize) -> Result<Self> {
        if !k.is_multiple_of(32) || data.len() != n * k / 32 * Q4_1_BYTES {
            bail!(
                "Q4_1 tensor of {} bytes does not hold {n}x{k} values",
                data.len()
            );
        }
        let blocks = data.chunks_exact(Q4_1_BYTES);
        let mut me = Self {
            qs: Vec::with_capacity(blocks.len()),
            d: Vec::with_capacity(blocks.len()),
            m: Vec::with_capacity(blocks.len()),
            n,
            k,
        };
        for b in blocks {
            me.d.push(f16_at(b, 0));
            me.m.push(f16_at(b, 2));
            me.qs.push(b[4..20].try_into().expect("16 bytes"));
        }
        Ok(me)
    }
}

/// Activation rows quantized to Q8_1 by candle's own `from_float`, unpacked.
struct Q8_1Rows {
    qs: Vec<[i8; 32]>,
    d: Vec<f32>,
    s: Vec<f32>,
}

fn quantize_q8_1(x: &[f32], m: usize, k: usize) -> Q8_1Rows {
    let kb = k / 32;
    let mut blocks = vec![BlockQ8_1::zeros(); m * kb];
    for r in 0..m {
        BlockQ8_1::from_float(&x[r * k..(r + 1) * k], &mut blocks[r * kb..(r + 1) * kb]);
    }
    // SAFETY: BlockQ8_1 is a `repr(C)` block of exactly Q8_1_BYTES plain bytes (candle asserts
    // its size); reading it as bytes is sound.
    let bytes = unsafe {
        std::slice::from_raw_parts(blocks.as_ptr() as *const u8, blocks.len() * Q8_1_BYTES)
    };
    let mut rows = Q8_1Rows {
        qs: Vec::with_capacity(blocks.len()),
        d: Vec::with_capacity(blocks.len()),
        s: Vec::with_capacity(blocks.len()),
    };
    for b in bytes.chunks_exact(Q8_1_BYTES) {
        rows.d.push(f16_at(b, 0));
        rows.s.push(f16_at(b, 2));
        rows.qs.push(std::array::from_fn(|i| b[4 + i] as i8));
    }
    rows
}

/// Dots one weight row with `R` activation rows (`y` rows `first..first + R`).
///
/// Per row, the integer dot products of a block stay in eight i32 lanes and are scaled and
/// accumulated in f32 vector registers, two accumulators (even and odd blocks) to hide the
/// multiply-add latency; the minimum terms `wm_b · ys_b` are a separate dot product. The lanes
/// are summed once per row (llama.cpp's arithmetic). A row's result does not depend on `R` or
/// on the other rows, so batching never changes a sequence's numbers.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `qs`, `d`, `m` hold one weight row of `kb` blocks and `y`
/// holds at least `first + R` rows of `kb` blocks each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_q4_1_rows<const R: usize>(
    qs: &[[u8; 16]],
    d: &[f32],
    m: &[f32],
    y: &Q8_1Rows,
    first: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let kb = qs.len();
    let mask = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    // acc[0][r]: even blocks of row r, acc[1][r]: odd blocks. Indexing both with constants
    // keeps them in registers.
    let mut acc = [[_mm256_setzero_ps(); R]; 2];
    let block = |b: usize, acc: &mut [__m256; R]| {
        let v = _mm_loadu_si128(qs[b].as_ptr() as *const __m128i);
        let lo = _mm_and_si128(v, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
        let w = _mm256_set_m128i(hi, lo);
        for (r, acc) in acc.iter_mut().enumerate() {
            let i = (first + r) * kb + b;
            let yv = _mm256_loadu_si256(y.qs[i].as_ptr() as *const __m256i);
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, yv), ones);
            let scale = _mm256_set1_ps(d[b] * y.d[i]);
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, *acc);
        }
    };
    let [even, odd] = &mut acc;
    let mut b = 0;
    while b + 1 < kb {
        block(b, even);
        block(b + 1, odd);
        b += 2;
    }
    if b < kb {
        block(b, even);
    }
    for (r, o) in out.iter_mut().take(R).enumerate() {
        let rows = (first + r) * kb..(first + r + 1) * kb;
        let sum = _mm256_add_ps(acc[0][r], acc[1][r]);
        *o = hsum(sum) + dot_f32(m, &y.s[rows]);
    }
}

/// The eight lanes added up (pairwise).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0b01));
    _mm_cvtss_f32(s)
}

/// `Σ a_i · b_i` over equal-length slices, eight lanes at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let x = _mm256_loadu_ps(a.as_ptr().add(i));
        let z = _mm256_loadu_ps(b.as_ptr().add(i));
        acc = _mm256_fmadd_ps(x, z, acc);
        i += 8;
    }
    let mut sum = hsum(acc);
    for j in i..n {
        sum += a[j] * b[j];
    }
    sum
}

/// Dots one weight row with every activation row, four rows at a time.
///
/// # Safety
/// As for [`dot_q4_1_rows`], with `out.len()` rows in `y`.
#[cfg(target_arch = "x86_64")]
unsafe fn dot_q4_1_avx2(qs: &[[u8; 16]], d: &[f32], m: &[f32], y: &Q8_1Rows, out: &mut [f32]) {
    let mut first = 0;
    while first < out.len() {
        let o = &mut out[first..];
        match o.len() {
            1 => dot_q4_1_rows::<1>(qs, d, m, y, first, o),
            2 => dot_q4_1_rows::<2>(qs, d, m, y, first, o),
            3 => dot_q4_1_rows::<3>(qs, d, m, y, first, o),
            _ => dot_q4_1_rows::<4>(qs, d, m, y, first, o),
        }
        first += 4;
    }
}

impl RowsMatMul for Q4_1Avx2 {
    fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]) {
        let kb = self.k / 32;
        let y = quantize_q8_1(x, m, self.k);
        by_columns(self.n, m, dst, |c, col_out| {
            let blocks = c * kb..(c + 1) * kb;
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `rows_matmul` builds this kernel only when AVX2 and FMA are detected;
            // the slices have the sizes the kernel requires.
            unsafe {
                dot_q4_1_avx2(
                    &self.qs[blocks.clone()],
                    &self.d[blocks.clone()],
                    &self.m[blocks],
                    &y,
                    col_out,
                );
            }
        });
    }
}

/// Q8_0 weights laid out for the AVX2 kernel: block scales as f32, the signed bytes as stored.
struct Q8_0Avx2 {
    qs: Vec<[i8; 32]>,
    d: Vec<f32>,
    n: usize,
    k: usize,
}

/// Bytes of one Q8_0 block (f16 d, 32 signed bytes), as in GGUF files and candle's block type.
const Q8_0_BYTES: usize = 34;

/// Rows of Q8_0 blocks unpacked: signed bytes and scales as f32.
struct Q8_0Rows {
    qs: Vec<[i8; 32]>,
    d: Vec<f32>,
}

fn unpack_q8_0(bytes: &[u8]) -> Q8_0Rows {
    let blocks = bytes.chunks_exact(Q8_0_BYTES);
    let mut rows = Q8_0Rows {
        qs: Vec::with_capacity(blocks.len()),
        d: Vec::with_capacity(blocks.len()),
    };
    for b in blocks {
        rows.d.push(f16_at(b, 0));
        rows.qs.push(std::array::from_fn(|i| b[2 + i] as i8));
    }
    rows
}

impl Q8_0Avx2 {
    fn new(data: &[u8], n: usize, k: usize) -> Result<Self> {
        if !k.is_multiple_of(32) || data.len() != n * k / 32 * Q8_0_BYTES {
            bail!(
                "Q8_0 tensor of {} bytes does not hold {n}x{k} values",
                data.len()
            );
        }
        let Q8_0Rows { qs, d } = unpack_q8_0(data);
        Ok(Self { qs, d, n, k })
    }
}

/// Activation rows quantized to Q8_0 by candle's own `from_float`, unpacked.
fn quantize_q8_0(x: &[f32], m: usize, k: usize) -> Q8_0Rows {
    let kb = k / 32;
    let mut blocks = vec![BlockQ8_0::zeros(); m * kb];
    for r in 0..m {
        BlockQ8_0::from_float(&x[r * k..(r + 1) * k], &mut blocks[r * kb..(r + 1) * kb]);
    }
    // SAFETY: BlockQ8_0 is a `repr(C)` block of exactly Q8_0_BYTES plain bytes (candle asserts
    // its size); reading it as bytes is sound.
    let bytes = unsafe {
        std::slice::from_raw_parts(blocks.as_ptr() as *const u8, blocks.len() * Q8_0_BYTES)
    };
    unpack_q8_0(bytes)
}

/// Q8_0 × Q8_0 for one weight row and `R` activation rows: llama.cpp's arithmetic (|w| times
/// y with w's signs, integer sums scaled and accumulated in f32 vectors; even and odd blocks in
/// two accumulators), one row's result independent of the others.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `qs`, `d` hold one weight row of `kb` blocks and `y`
/// holds at least `first + R` rows of `kb` blocks each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_q8_0_rows<const R: usize>(
    qs: &[[i8; 32]],
    d: &[f32],
    y: &Q8_0Rows,
    first: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let kb = qs.len();
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); R]; 2];
    let block = |b: usize, acc: &mut [__m256; R]| {
        let w = _mm256_loadu_si256(qs[b].as_ptr() as *const __m256i);
        let abs_w = _mm256_sign_epi8(w, w);
        for (r, acc) in acc.iter_mut().enumerate() {
            let i = (first + r) * kb + b;
            let yv = _mm256_loadu_si256(y.qs[i].as_ptr() as *const __m256i);
            let signed_y = _mm256_sign_epi8(yv, w);
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(abs_w, signed_y), ones);
            let scale = _mm256_set1_ps(d[b] * y.d[i]);
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, *acc);
        }
    };
    let [even, odd] = &mut acc;
    let mut b = 0;
    while b + 1 < kb {
        block(b, even);
        block(b + 1, odd);
        b += 2;
    }
    if b < kb {
        block(b, even);
    }
    for (r, o) in out.iter_mut().take(R).enumerate() {
        *o = hsum(_mm256_add_ps(acc[0][r], acc[1][r]));
    }
}

impl RowsMatMul for Q8_0Avx2 {
    fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]) {
        let kb = self.k / 32;
        let y = quantize_q8_0(x, m, self.k);
        by_columns(self.n, m, dst, |c, col_out| {
            let (qs, d) = (
                &self.qs[c * kb..(c + 1) * kb],
                &self.d[c * kb..(c + 1) * kb],
            );
            let mut first = 0;
            while first < m {
                let o = &mut col_out[first..];
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `rows_matmul` builds this kernel only when AVX2 and FMA are detected;
                // the slices have the sizes the kernel requires.
                unsafe {
                    match o.len() {
                        1 => dot_q8_0_rows::<1>(qs, d, &y, first, o),
                        2 => dot_q8_0_rows::<2>(qs, d, &y, first, o),
                        3 => dot_q8_0_rows::<3>(qs, d, &y, first, o),
                        _ => dot_q8_0_rows::<4>(qs, d, &y, first, o),
                    }
                }
                first += 4;
            }
        });
    }
}

fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The batched kernel for `q` (a 2-D `[n, k]` weight), or `None` for types without one.
pub fn rows_matmul(q: &QTensor) -> Result<Option<Box<dyn RowsMatMul>>> {
    let (n, k) = q.shape().dims2()?;
    let data = q.data()?;
    Ok(Some(match q.dtype() {
        GgmlDType::Q4_1 if has_avx2_fma() => Box::new(Q4_1Avx2::new(&data, n, k)?),
        GgmlDType::Q8_0 if has_avx2_fma() => Box::new(Q8_0Avx2::new(&data, n, k)?),
        GgmlDType::Q4_0 => typed::<BlockQ4_0>(data, n, k)?,
        GgmlDType::Q4_1 => typed::<BlockQ4_1>(data, n, k)?,
        GgmlDType::Q5_0 => typed::<BlockQ5_0>(data, n, k)?,
        GgmlDType::Q5_1 => typed::<BlockQ5_1>(data, n, k)?,
        GgmlDType::Q8_0 => typed::<BlockQ8_0>(data, n, k)?,
        GgmlDType::Q2K => typed::<BlockQ2K>(data, n, k)?,
        GgmlDType::Q3K => typed::<BlockQ3K>(data, n, k)?,
        GgmlDType::Q4K => typed::<BlockQ4K>(data, n, k)?,
        GgmlDType::Q5K => typed::<BlockQ5K>(data, n, k)?,
        GgmlDType::Q6K => typed::<BlockQ6K>(data, n, k)?,
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module, Tensor};

    fn rows(ours: &dyn RowsMatMul, x: &Tensor, m: usize, n: usize) -> Vec<f32> {
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let mut dst = vec![0f32; m * n];
        ours.matmul(&xs, m, &mut dst);
        dst
    }

    /// Reproducible values in [-1, 1) (a 64-bit LCG, high bits).
    fn uniform(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn rows_are_batch_invariant_and_equal_candles() {
        let dev = Device::Cpu;
        // 11 rows: two tiles of 4 and a partial one; k = 576: 18 blocks (even and odd
        // accumulators both used).
        let (m, k, n) = (11, 576, 96);
        let w = Tensor::from_vec(uniform(n * k, 1), (n, k), &dev).unwrap();
        let x = Tensor::from_vec(uniform(m * k, 2), (m, k), &dev).unwrap();
        let l1: Vec<f32> = x
            .abs()
            .unwrap()
            .matmul(&w.abs().unwrap().t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4_0] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let ours = rows_matmul(&q).unwrap().unwrap();
            let batch = rows(ours.as_ref(), &x, m, n);
            let qm = QMatMul::from_qtensor(q).unwrap();
            for r in 0..m {
                let one = x.narrow(0, r, 1).unwrap();
                let got = &batch[r * n..(r + 1) * n];
                // A row's numbers never depend on the batch it is in.
                assert_eq!(got, rows(ours.as_ref(), &one, 1, n), "{dtype:?} row {r}");
                let want: Vec<f32> = qm
                    .forward(&one)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                if dtype != GgmlDType::Q4_0 {
                    // Our kernel sums candle's terms in another order; rounding is bounded by
                    // the terms' absolute sum (Σ|x||w| ≈ 190 here): 1e-6 of it, ~2e-4.
                    for (c, (a, b)) in got.iter().zip(&want).enumerate() {
                        let tol = 1e-6 * l1[r * n + c];
                        assert!((a - b).abs() <= tol, "{dtype:?} [{r},{c}]: {a} vs {b}");
                    }
                } else {
                    // Types without a kernel of ours run candle's own `vec_dot`: bit for bit.
                    assert_eq!(got, want.as_slice(), "{dtype:?} row {r}");
                }
            }
        }
    }
}
