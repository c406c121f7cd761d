//! Quantized matrix products for several rows at once (batched decoding, short chunks).
//!
//! candle's quantized matmul walks every weight row once per activation row, so B sequences
//! cost B full passes over the weights. Here each weight row's blocks are dotted with all B
//! activation rows while they sit in L1 cache. The per-element arithmetic is candle's own
//! `GgmlType::vec_dot` on the same quantized activations, so a sequence's numbers do not depend
//! on which other sequences share its batch.
//!
//! Q4_1 (the default model's type) has no SIMD `vec_dot` in candle, so it gets its own AVX2
//! kernel: each weight block is unpacked once and dotted with up to 8 activation rows. The
//! integer dot products are exact and the per-block float steps are candle's, in candle's
//! order, so the result is still candle's bit for bit (see the tests).

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
        // Column-major scratch so each task writes one contiguous slice.
        let mut out_t = vec![0f32; n * m];
        out_t
            .par_chunks_mut(COLS_PER_TASK * m)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * COLS_PER_TASK;
                for (c, col_out) in out.chunks_mut(m).enumerate() {
                    let w = &self.blocks[(first + c) * kb..(first + c + 1) * kb];
                    for (r, o) in col_out.iter_mut().enumerate() {
                        *o = T::vec_dot(k, w, &xq[r * kb..(r + 1) * kb]);
                    }
                }
            });
        for (c, col) in out_t.chunks(m).enumerate() {
            for (r, v) in col.iter().enumerate() {
                dst[r * n + c] = *v;
            }
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

/// Activation rows dotted with each unpacked weight block.
const ROW_TILE: usize = 8;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
/// `out[r] = Σ_b (sumi(w_b, y_rb) · wd_b · yd_rb + wm_b · ys_rb)` in candle's order.
///
/// # Safety
/// The CPU must support AVX2; `qs`, `d`, `m` hold one weight row of `kb` blocks and `y` holds
/// `out.len()` rows of `kb` blocks each.
unsafe fn dot_q4_1_avx2(qs: &[[u8; 16]], d: &[f32], m: &[f32], y: &Q8_1Rows, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let kb = qs.len();
    let mask = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    for (tile, out) in out.chunks_mut(ROW_TILE).enumerate() {
        let first = tile * ROW_TILE;
        let mut acc = [0f32; ROW_TILE];
        for b in 0..kb {
            let v = _mm_loadu_si128(qs[b].as_ptr() as *const __m128i);
            let lo = _mm_and_si128(v, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
            let w = _mm256_set_m128i(hi, lo);
            for (r, a) in acc.iter_mut().take(out.len()).enumerate() {
                let i = (first + r) * kb + b;
                let yv = _mm256_loadu_si256(y.qs[i].as_ptr() as *const __m256i);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, yv), ones);
                let s = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
                let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
                let sumi = _mm_cvtsi128_si32(s);
                *a += sumi as f32 * d[b] * y.d[i] + m[b] * y.s[i];
            }
        }
        out.copy_from_slice(&acc[..out.len()]);
    }
}

impl RowsMatMul for Q4_1Avx2 {
    fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        let kb = k / 32;
        let y = quantize_q8_1(x, m, k);
        let mut out_t = vec![0f32; n * m];
        out_t
            .par_chunks_mut(COLS_PER_TASK * m)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * COLS_PER_TASK;
                for (c, col_out) in out.chunks_mut(m).enumerate() {
                    let blocks = (first + c) * kb..(first + c + 1) * kb;
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `rows_matmul` builds this kernel only when AVX2 is detected;
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
                }
            });
        for (c, col) in out_t.chunks(m).enumerate() {
            for (r, v) in col.iter().enumerate() {
                dst[r * n + c] = *v;
            }
        }
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
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
        GgmlDType::Q4_1 if has_avx2() => Box::new(Q4_1Avx2::new(&data, n, k)?),
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

    #[test]
    fn equals_candle_rows_exactly() {
        // Any batch of rows gives, per row, candle's own single-row result bit for bit.
        let dev = Device::Cpu;
        // 11 rows: a full tile of 8 plus a partial one; k = 128: several blocks per row.
        let (m, k) = (11, 128);
        let w = Tensor::randn(0f32, 1.0, (96, k), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4_0] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let ours = rows_matmul(&q).unwrap().unwrap();
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let mut dst = vec![0f32; m * 96];
            ours.matmul(&xs, m, &mut dst);
            let qm = QMatMul::from_qtensor(q).unwrap();
            for r in 0..m {
                let row = qm.forward(&x.narrow(0, r, 1).unwrap()).unwrap();
                let want: Vec<f32> = row.flatten_all().unwrap().to_vec1().unwrap();
                assert_eq!(
                    &dst[r * 96..(r + 1) * 96],
                    want.as_slice(),
                    "{dtype:?} row {r}"
                );
            }
        }
    }
}
