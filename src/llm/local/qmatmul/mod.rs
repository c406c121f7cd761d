//! Quantized matrix products for one row, several rows (batched decoding) and whole prompt
//! chunks.
//!
//! candle's quantized matmul walks every weight row once per activation row, so B sequences
//! cost B full passes over the weights. Here each weight block is dotted with a tile of
//! activation rows while it sits in L1 cache, and a sequence's numbers do not depend on which
//! other sequences share its batch.
//!
//! On x86-64 with AVX2 and FMA (detected at run time: the binary needs no `target-cpu`), the
//! types of the files people download, the 32-value block types Q4_0, Q4_1, Q5_0, Q5_1 and
//! Q8_0 (`block32`) and the K-quants Q4_K, Q5_K and Q6_K (`k_quants`), are repacked at load 16
//! weight rows at a time (`packed`, `packed_k`), with activations quantized as llama.cpp
//! quantizes them (`act_quant`). CPUs with AVX-512 VNNI (and F, BW, VL) multiply 4 values of
//! 16 weight rows per `vpdpbusd`; others with AVX2 (`packed_avx2`) the same values of 8 rows
//! per `vpmaddubsw`, to the same outputs. Both are exact integer block products scaled in
//! f32: equal to candle's within rounding, bit for bit the same whatever the batch (see the
//! tests), and fast enough for prompt chunks (they say so through
//! [`RowsMatMul::fast_for_many_rows`], and the model then keeps no f32 copy).
//! Other types, and other CPUs, run candle's `vec_dot` on its own quantized activations
//! ([`Typed`]).

use std::borrow::Cow;

use anyhow::{bail, Result};
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0,
};
use candle_core::quantized::{GgmlDType, GgmlType, QTensor};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod act_quant;
#[cfg(target_arch = "x86_64")]
mod block32;
#[cfg(target_arch = "x86_64")]
mod k_quants;
#[cfg(target_arch = "x86_64")]
mod packed;
#[cfg(target_arch = "x86_64")]
mod packed_avx2;
#[cfg(target_arch = "x86_64")]
mod packed_k;
#[cfg(target_arch = "x86_64")]
mod packed_layout;

mod rows;
pub use rows::RowsMatMul;

struct Typed<T: GgmlType> {
    blocks: Vec<T>,
    n: usize,
    k: usize,
}

/// Weight rows handled by one task of [`Typed`].
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
        by_columns(n, m, dst, |first, out| {
            for (c, col_out) in (first..).zip(out.chunks_mut(m)) {
                let w = &self.blocks[c * kb..(c + 1) * kb];
                for (r, o) in col_out.iter_mut().enumerate() {
                    *o = T::vec_dot(k, w, &xq[r * kb..(r + 1) * kb]);
                }
            }
        });
    }
}

/// `dst[r, c]` for the `n` weight rows `c`, computed in parallel by tasks of
/// [`COLS_PER_TASK`] weight rows: `cols(first, out)` fills `out`, column-major (the `m` values
/// of weight row `first`, then of `first + 1`, …). With several rows each task writes its own
/// columns of `dst` from a small buffer: no `n × m` transposed copy (33 MB per step of a
/// 32-sequence batch on Gemma 3's 262 144-entry output projection, freshly mapped and
/// page-faulted each time) and no serial pass over it.
fn by_columns(n: usize, m: usize, dst: &mut [f32], cols: impl Fn(usize, &mut [f32]) + Sync) {
    let task = |(t, out): (usize, &mut [f32])| cols(t * COLS_PER_TASK, out);
    if m == 1 {
        // One row: column-major is `dst`'s own layout.
        dst.par_chunks_mut(COLS_PER_TASK).enumerate().for_each(task);
        return;
    }
    assert_eq!(dst.len(), n * m, "dst holds m rows of n values");
    let dst = SharedOut(dst.as_mut_ptr());
    (0..n.div_ceil(COLS_PER_TASK))
        .into_par_iter()
        .for_each(|t| {
            let first = t * COLS_PER_TASK;
            let width = COLS_PER_TASK.min(n - first);
            let mut out = vec![0f32; width * m];
            cols(first, &mut out);
            for r in 0..m {
                // SAFETY: `dst` has `m * n` values (asserted above) and outlives the tasks, which
                // write the disjoint column ranges `first..first + width` of each row.
                let row = unsafe { std::slice::from_raw_parts_mut(dst.at(r * n + first), width) };
                for (j, v) in row.iter_mut().enumerate() {
                    *v = out[j * m + r];
                }
            }
        });
}

/// `dst` of [`by_columns`], shared by tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: the tasks of `by_columns` write disjoint elements only.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer to element `i` (a method, so closures capture the whole `Sync` wrapper).
    fn at(self, i: usize) -> *mut f32 {
        // SAFETY of the caller: `i` is within the slice this was made from.
        self.0.wrapping_add(i)
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
    let want = n
        .checked_mul(k / T::BLCK_SIZE)
        .and_then(|blocks| blocks.checked_mul(size));
    if !k.is_multiple_of(T::BLCK_SIZE) || want != Some(data.len()) {
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

// Off x86-64 only the tests ask (to know which tolerance applies).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
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
    kernel_for(q, Kernels::detect())
}

/// Set to `avx2` to run the packed kernels' AVX2 tiles on a CPU with AVX-512 VNNI: what a CPU
/// without it runs, for checking that path's speed.
#[cfg(target_arch = "x86_64")]
pub const KERNELS_ENV: &str = "CAI_KERNELS";

/// The kernels [`kernel_for`] builds for the types that have them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernels {
    /// Weights repacked in groups of 16 rows (`packed`, `packed_k`), multiplied with `Isa`.
    #[cfg(target_arch = "x86_64")]
    Packed(packed::Isa),
    /// candle's `vec_dot` ([`Typed`]).
    Candle,
}

impl Kernels {
    /// The fastest the CPU runs, unless [`KERNELS_ENV`] asks for others.
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let asked = std::env::var(KERNELS_ENV).unwrap_or_default();
            match asked.trim() {
                _ if !has_avx2_fma() => Self::Candle,
                "avx2" => Self::Packed(packed::Isa::Avx2),
                _ if packed::vnni_available() => Self::Packed(packed::Isa::Vnni),
                _ => Self::Packed(packed::Isa::Avx2),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Self::Candle
    }

    /// Every choice this CPU can run, for the tests.
    #[cfg(test)]
    fn all() -> Vec<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            let mut all = vec![Self::Candle];
            if has_avx2_fma() {
                all.push(Self::Packed(packed::Isa::Avx2));
            }
            if packed::vnni_available() {
                all.push(Self::Packed(packed::Isa::Vnni));
            }
            all
        }
        #[cfg(not(target_arch = "x86_64"))]
        vec![Self::Candle]
    }
}

/// [`rows_matmul`] with the `kernels` chosen (the tests check every choice the CPU has).
fn kernel_for(q: &QTensor, kernels: Kernels) -> Result<Option<Box<dyn RowsMatMul>>> {
    let (n, k) = q.shape().dims2()?;
    let data = q.data()?;
    match kernels {
        #[cfg(target_arch = "x86_64")]
        Kernels::Packed(isa) => packed_kernel(q.dtype(), data, n, k, isa),
        Kernels::Candle => candle_kernel(q.dtype(), data, n, k),
    }
}

/// The packed kernel for `dtype` multiplying with `isa`, or candle's for types without one.
#[cfg(target_arch = "x86_64")]
fn packed_kernel(
    dtype: GgmlDType,
    data: Cow<'_, [u8]>,
    n: usize,
    k: usize,
    isa: packed::Isa,
) -> Result<Option<Box<dyn RowsMatMul>>> {
    use block32::{Q4_0Block, Q4_1Block, Q5_0Block, Q5_1Block, Q8_0Block};
    use k_quants::{Q4KBlock, Q5KBlock, Q6KBlock};
    use packed::Packed32;
    use packed_k::PackedK;
    Ok(Some(match dtype {
        GgmlDType::Q4_0 => Box::new(Packed32::new::<Q4_0Block>(&data, n, k, isa)?),
        GgmlDType::Q4_1 => Box::new(Packed32::new::<Q4_1Block>(&data, n, k, isa)?),
        GgmlDType::Q5_0 => Box::new(Packed32::new::<Q5_0Block>(&data, n, k, isa)?),
        GgmlDType::Q5_1 => Box::new(Packed32::new::<Q5_1Block>(&data, n, k, isa)?),
        GgmlDType::Q8_0 => Box::new(Packed32::new::<Q8_0Block>(&data, n, k, isa)?),
        GgmlDType::Q4K => Box::new(PackedK::<Q4KBlock>::new(&data, n, k, isa)?),
        GgmlDType::Q5K => Box::new(PackedK::<Q5KBlock>::new(&data, n, k, isa)?),
        GgmlDType::Q6K => Box::new(PackedK::<Q6KBlock>::new(&data, n, k, isa)?),
        _ => return candle_kernel(dtype, data, n, k),
    }))
}

/// candle's `vec_dot` for `dtype`, or `None` for types without a kernel.
fn candle_kernel(
    dtype: GgmlDType,
    data: Cow<'_, [u8]>,
    n: usize,
    k: usize,
) -> Result<Option<Box<dyn RowsMatMul>>> {
    Ok(Some(match dtype {
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
    fn qmatmul_overflowing_dims_are_an_error() {
        // A token_embd of 2^32 x 2^32 Q4_0 values: 2^64 / 32 * 18 bytes overflows usize (it
        // wrapped to 0 and "held" an empty buffer, then the repacked buffers overflowed).
        let n = 1usize << 32;
        assert!(block32::check_size("Q4_0", 0, (32, 18), n, n).is_err());
        assert!(
            typed::<candle_core::quantized::k_quants::BlockQ4_0>(Cow::Borrowed(&[]), n, n).is_err()
        );
        // The real size still passes: 2 rows of 64 values are 4 blocks of 18 bytes.
        assert!(block32::check_size("Q4_0", 72, (32, 18), 2, 64).is_ok());
    }

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

    /// Checks every kernel type on `m` rows of `k` values against `n = 100` weight rows (not a
    /// multiple of 16: a partial group), with uniform random values.
    fn check_types(dtypes: &[GgmlDType], k: usize, m: usize) {
        let n = 100;
        let w = Tensor::from_vec(uniform(n * k, 1), (n, k), &Device::Cpu).unwrap();
        let x = Tensor::from_vec(uniform(m * k, 2), (m, k), &Device::Cpu).unwrap();
        check(dtypes, &w, &x);
    }

    /// Checks every kernel choice the CPU has on weights `w` (`[n, k]`) and activations `x`
    /// (`[m, k]`) quantized to each of `dtypes`: a row's output is bit for bit the same alone
    /// and in the batch, and equal to candle's quantized product (the same quantized
    /// activations) within rounding; the packed kernels' VNNI and AVX2 tiles give the same
    /// outputs.
    fn check(dtypes: &[GgmlDType], w: &Tensor, x: &Tensor) {
        let (n, _) = w.dims2().unwrap();
        let (m, _) = x.dims2().unwrap();
        let l1: Vec<f32> = x
            .abs()
            .unwrap()
            .matmul(&w.abs().unwrap().t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        #[cfg(target_arch = "x86_64")]
        let mut packed_outputs = std::collections::HashMap::<String, Vec<f32>>::new();
        for (&dtype, kernels) in dtypes
            .iter()
            .flat_map(|d| Kernels::all().into_iter().map(move |v| (d, v)))
        {
            let q = QTensor::quantize(w, dtype).unwrap();
            let ours = kernel_for(&q, kernels).unwrap().unwrap();
            let batch = rows(ours.as_ref(), x, m, n);
            let qm = QMatMul::from_qtensor(q).unwrap();
            for r in 0..m {
                let one = x.narrow(0, r, 1).unwrap();
                let got = &batch[r * n..(r + 1) * n];
                // A row's numbers never depend on the batch it is in.
                assert_eq!(
                    got,
                    rows(ours.as_ref(), &one, 1, n),
                    "{dtype:?} {kernels:?} row {r}"
                );
                let want: Vec<f32> = qm
                    .forward(&one)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                if kernels == Kernels::Candle {
                    // candle's own `vec_dot`: bit for bit.
                    assert_eq!(got, want.as_slice(), "{dtype:?} row {r}");
                    continue;
                }
                // Our kernels sum candle's terms in another order; rounding is bounded by the
                // terms' absolute sum (Σ|x||w| ≈ k / 3): 1e-6 of it, ~2e-4 for k = 576.
                for (c, (a, b)) in got.iter().zip(&want).enumerate() {
                    let tol = 1e-6 * l1[r * n + c];
                    assert!(
                        (a - b).abs() <= tol,
                        "{dtype:?} {kernels:?} [{r},{c}]: {a} vs {b}"
                    );
                }
            }
            #[cfg(target_arch = "x86_64")]
            if let Kernels::Packed(isa) = kernels {
                // The same exact integers and float steps on either instruction set.
                let same = packed_outputs
                    .entry(format!("{dtype:?}"))
                    .or_insert(batch.clone());
                assert_eq!(
                    same, &batch,
                    "{dtype:?}: {isa:?} and the other packed tiles"
                );
            }
        }
    }

    const BLOCK32: [GgmlDType; 5] = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
    ];

    #[test]
    fn rows_are_batch_invariant_and_equal_candles() {
        // k = 576 (SmolLM2's hidden size): 18 blocks, even and odd accumulators both used.
        // 15 rows: tiles of 8 and 7 (VNNI), 8, 4 and 3 (AVX2).
        check_types(&BLOCK32, 576, 15);
    }

    #[test]
    fn prompt_chunks_are_batch_invariant_and_equal_candles() {
        // 70 rows: the VNNI driver splits them over tasks of 32 rows (32, 32, 6).
        check_types(&BLOCK32, 128, 70);
    }

    /// Weights and activations at the ends of their ranges, where a sum kept in too narrow
    /// integers would overflow: each weight block one -1 then +1s (the largest code for all
    /// but one value, in every type), activation rows of +1s (127 or 127 per byte) and of -1s
    /// (-127, or -128 in Q8_K).
    #[test]
    fn extreme_values_do_not_overflow() {
        let (n, k) = (24, 512);
        let w: Vec<f32> = (0..n * k)
            .map(|i| if i % 32 == 0 { -1.0 } else { 1.0 })
            .collect();
        let x: Vec<f32> = (0..3 * k)
            .map(|i| match i / k {
                0 => 1.0,
                1 => -1.0,
                _ => {
                    if i % 2 == 0 {
                        1.0
                    } else {
                        -1.0
                    }
                }
            })
            .collect();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let x = Tensor::from_vec(x, (3, k), &Device::Cpu).unwrap();
        let all = [
            BLOCK32.as_slice(),
            &[GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K],
        ]
        .concat();
        check(&all, &w, &x);
    }

    #[test]
    fn k_quant_rows_are_batch_invariant_and_equal_candles() {
        let k_quants = [GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K];
        // Three super-blocks (an odd count) and six (SmolLM2's ffn_down rows of 1536).
        check_types(&k_quants, 768, 15);
        check_types(&k_quants, 1536, 15);
        check_types(&k_quants, 256, 70);
    }

    /// Throughput of the kernels on SmolLM2's feed-forward shape (`cargo test --release --lib
    /// kernel_throughput -- --ignored --nocapture`): for tuning, not a check.
    #[test]
    #[ignore]
    fn kernel_throughput() {
        let (n, k) = (1536, 768);
        let w = Tensor::from_vec(uniform(n * k, 1), (n, k), &Device::Cpu).unwrap();
        let x = uniform(256 * k, 2);
        for dtype in [
            GgmlDType::Q5_0,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q4_1,
        ] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let ours = rows_matmul(&q).unwrap().unwrap();
            for m in [1, 8, 32, 256] {
                let mut dst = vec![0f32; m * n];
                let reps = 2048 / m;
                let mut best = f64::MAX;
                for _ in 0..3 {
                    let t = std::time::Instant::now();
                    for _ in 0..reps {
                        ours.matmul(&x[..m * k], m, &mut dst);
                    }
                    best = best.min(t.elapsed().as_secs_f64());
                }
                let gmacs = (reps * m * n * k) as f64 / best / 1e9;
                println!("{dtype:?} m={m}: {gmacs:.1} GMAC/s");
            }
        }
    }
}
