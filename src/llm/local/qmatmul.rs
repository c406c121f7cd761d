//! Quantized matrix products for several rows at once (batched decoding, short chunks).
//!
//! candle's quantized matmul walks every weight row once per activation row, so B sequences
//! cost B full passes over the weights. Here each weight row's blocks are dotted with all B
//! activation rows while they sit in L1 cache. The per-element arithmetic is candle's own
//! `GgmlType::vec_dot` on the same quantized activations, so a sequence's numbers do not depend
//! on which other sequences share its batch.

use std::borrow::Cow;

use anyhow::{bail, Result};
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0,
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

/// The batched kernel for `q` (a 2-D `[n, k]` weight), or `None` for types without one.
pub fn rows_matmul(q: &QTensor) -> Result<Option<Box<dyn RowsMatMul>>> {
    let (n, k) = q.shape().dims2()?;
    let data = q.data()?;
    Ok(Some(match q.dtype() {
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
        let w = Tensor::randn(0f32, 1.0, (96, 64), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (5, 64), &dev).unwrap();
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4_0] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let ours = rows_matmul(&q).unwrap().unwrap();
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let mut dst = vec![0f32; 5 * 96];
            ours.matmul(&xs, 5, &mut dst);
            let qm = QMatMul::from_qtensor(q).unwrap();
            for r in 0..5 {
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
