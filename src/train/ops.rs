//! Differentiable building blocks of the transformer.
//!
//! candle-nn's fused `rms_norm`, `rope` and `softmax_last_dim` kernels are forward-only
//! (they cut the autograd graph), so training needs the compositions below, which are
//! built from ops that candle can differentiate. They work in any float dtype, so the
//! finite-difference tests can run the model in f64.
//!
//! [`linear`] also avoids a cost of candle's autograd: for `x @ Wᵀ` it always computes
//! the weight gradient, even for frozen weights. When the weight is frozen (not a `Var`
//! and not derived from one) the product goes through [`GradOnFirst`], which returns
//! only the input gradient; LoRA and partially frozen training save a third of the
//! matmul work of the frozen layers' backward pass this way.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor, D,
};

/// Added to attention scores of masked keys. Finite, so that a fully masked row gives a
/// uniform distribution instead of NaN.
pub const MASK_VALUE: f64 = -1e9;

/// The dtype sums, normalisations and exponentials of values in `dtype` run in: f32 for the
/// half-precision types (see [`super::precision`]), `dtype` itself otherwise.
pub fn wide_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        other => other,
    }
}

/// RMS normalisation over the last dimension, scaled by `weight`; computed in
/// [`wide_dtype`] and returned in the dtype of `xs`.
pub fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = xs.dtype();
    let wide = wide_dtype(dtype);
    let xs = xs.to_dtype(wide)?;
    let mean_sq = xs.sqr()?.mean_keepdim(D::Minus1)?;
    let inv_rms = (mean_sq + eps)?.sqrt()?.recip()?;
    xs.broadcast_mul(&inv_rms)?
        .broadcast_mul(&weight.to_dtype(wide)?)?
        .to_dtype(dtype)
}

/// Softmax over the last dimension. The row maximum is subtracted for stability and
/// detached: softmax does not depend on it, so the gradient is unchanged.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let exp = xs.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

/// Log-softmax over the last dimension (stable, differentiable).
pub fn log_softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let shifted = xs.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&log_sum)
}

/// Cosine and sine tables `[max_positions, head_dim / 2]` of the rotary embedding: frequency
/// `i` is `theta^(-2i/head_dim) · freq_scale / divisors[i]` (linear scaling; Llama 3's
/// per-frequency divisors).
pub fn rope_tables(
    head_dim: usize,
    max_positions: usize,
    (theta, freq_scale): (f64, f64),
    divisors: Option<&[f32]>,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    if let Some(d) = divisors.filter(|d| d.len() != half) {
        candle_core::bail!("{} rope divisors for {half} rotary frequencies", d.len());
    }
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| {
            let base = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
            base * freq_scale / divisors.map_or(1.0, |d| d[i] as f64)
        })
        .collect();
    let mut cos = Vec::with_capacity(max_positions * half);
    let mut sin = Vec::with_capacity(max_positions * half);
    for pos in 0..max_positions {
        for f in &inv_freq {
            let angle = pos as f64 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let cos = Tensor::from_vec(cos, (max_positions, half), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (max_positions, half), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

/// Non-interleaved rotary embedding (Hugging Face `rotate_half` convention) of
/// `xs: [b, heads, t, head_dim]` with `cos`/`sin: [t, head_dim / 2]` (cast to the dtype of
/// `xs`).
pub fn rope(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = xs.dim(D::Minus1)? / 2;
    let x1 = xs.narrow(D::Minus1, 0, half)?;
    let x2 = xs.narrow(D::Minus1, half, half)?;
    let cos = cos.to_dtype(xs.dtype())?.unsqueeze(0)?.unsqueeze(0)?;
    let sin = sin.to_dtype(xs.dtype())?.unsqueeze(0)?.unsqueeze(0)?;
    let out1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let out2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Tensor::cat(&[out1, out2], D::Minus1)
}

/// Additive attention mask `[b or 1, 1, t, offset + t]`: 0 where query `i` (at absolute
/// position `offset + i`) may see key `j`, [`MASK_VALUE`] where `j` is in its future, where
/// `padding` (`[b, offset + t]`, 1 = real token) marks the key as padding, and with a sliding
/// `window` where `j` is `window` or more positions back.
pub fn attention_mask(
    t: usize,
    offset: usize,
    padding: Option<&Tensor>,
    window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let total = offset + t;
    let seen = |i: usize, j: usize| j <= i && window.is_none_or(|w| i - j < w);
    let causal: Vec<f32> = (0..t)
        .flat_map(|i| (0..total).map(move |j| if seen(offset + i, j) { 0.0 } else { 1.0 }))
        .collect();
    let mut blocked = Tensor::from_vec(causal, (1, 1, t, total), device)?;
    if let Some(padding) = padding {
        let b = padding.dim(0)?;
        let is_pad = padding
            .to_dtype(DType::F32)?
            .affine(-1.0, 1.0)?
            .reshape((b, 1, 1, total))?;
        blocked = blocked.broadcast_add(&is_pad)?.clamp(0f32, 1f32)?;
    }
    (blocked * MASK_VALUE)?.to_dtype(dtype)
}

/// `xs @ weightᵀ` over the last dimension of `xs` (`weight: [out, in]`), in the dtype of
/// `xs`: a weight in another dtype (an f32 master weight of a bf16 pass) is cast first, and
/// its gradient flows back through the cast.
///
/// A frozen weight gets no gradient computed (see the module docs).
pub fn linear(xs: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let weight = &weight.to_dtype(xs.dtype())?;
    let (out_dim, in_dim) = weight.dims2()?;
    let mut out_shape = xs.dims().to_vec();
    let last = out_shape.len() - 1;
    out_shape[last] = out_dim;
    let xs2 = xs.reshape(((), in_dim))?;
    let ys = if xs2.track_op() && !weight.track_op() {
        let value = xs2.detach().matmul(&weight.t()?)?;
        xs2.apply_op2(&value, GradOnFirst::matmul(weight.clone()))?
    } else {
        xs2.matmul(&weight.t()?)?
    };
    ys.reshape(out_shape)
}

/// Custom op `(x, value) -> value` whose backward pass sends `grad · weight` to `x` and
/// nothing to `value`: the value was computed from `x` outside the graph, and this op
/// puts `x` back into it with the gradient of `x @ weightᵀ`.
#[derive(Debug, Clone)]
pub struct GradOnFirst {
    weight: Tensor,
}

impl GradOnFirst {
    /// The gradient rule of `x @ weightᵀ` with respect to `x`.
    pub fn matmul(weight: Tensor) -> Self {
        Self { weight }
    }
}

pub(super) fn clone_contiguous<S: BackendStorage>(
    storage: &S,
    layout: &Layout,
) -> Result<(S, Shape)> {
    if !layout.is_contiguous() || layout.start_offset() != 0 {
        candle_core::bail!("a precomputed value must be a fresh contiguous tensor")
    }
    Ok((storage.try_clone(layout)?, layout.shape().clone()))
}

impl CustomOp2 for GradOnFirst {
    fn name(&self) -> &'static str {
        "grad-on-first"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        value: &CpuStorage,
        layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        clone_contiguous(value, layout)
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        value: &CudaStorage,
        layout: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        clone_contiguous(value, layout)
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(&self.weight)?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn rope_matches_candle_fused_kernel() -> Result<()> {
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev)?;
        let (cos, sin) = rope_tables(8, 16, (10_000.0, 1.0), None, DType::F32, &dev)?;
        let (cos, sin) = (cos.narrow(0, 0, 5)?, sin.narrow(0, 0, 5)?);
        let fused = candle_nn::rotary_emb::rope(&xs, &cos, &sin)?;
        assert!(max_abs_diff(&rope(&xs, &cos, &sin)?, &fused) < 1e-5);
        Ok(())
    }

    #[test]
    fn norms_and_softmax_match_candle() -> Result<()> {
        let dev = Device::Cpu;
        let xs = Tensor::randn(0f32, 1.0, (3, 7), &dev)?;
        let w = Tensor::randn(0f32, 1.0, 7, &dev)?;
        let fused = candle_nn::ops::rms_norm(&xs, &w, 1e-5)?;
        assert!(max_abs_diff(&rms_norm(&xs, &w, 1e-5)?, &fused) < 1e-5);
        let sm = candle_nn::ops::softmax_last_dim(&xs)?;
        assert!(max_abs_diff(&softmax_last_dim(&xs)?, &sm) < 1e-6);
        let lsm = candle_nn::ops::log_softmax(&xs, 1)?;
        assert!(max_abs_diff(&log_softmax_last_dim(&xs)?, &lsm) < 1e-5);
        Ok(())
    }

    #[test]
    fn frozen_linear_gives_the_same_input_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f64, 1.0, (4, 3), &dev)?;
        let x = Var::randn(0f64, 1.0, (2, 5, 3), &dev)?;
        // Frozen weight: custom op path.
        let y = linear(x.as_tensor(), &w)?;
        let g_frozen = y.sqr()?.sum_all()?.backward()?;
        // Trainable weight: plain matmul path.
        let wv = Var::from_tensor(&w)?;
        let y2 = linear(x.as_tensor(), wv.as_tensor())?;
        assert!(max_abs_diff(&y, &y2) < 1e-12);
        let g_plain = y2.sqr()?.sum_all()?.backward()?;
        let (a, b) = (g_frozen.get(&x).unwrap(), g_plain.get(&x).unwrap());
        assert!(max_abs_diff(a, b) < 1e-12);
        assert!(g_frozen.get(&w).is_none());
        Ok(())
    }

    #[test]
    fn attention_mask_blocks_future_and_padding() -> Result<()> {
        let dev = Device::Cpu;
        let pad = Tensor::new(&[[1u32, 1, 0]], &dev)?;
        let m = attention_mask(3, 0, Some(&pad), None, DType::F32, &dev)?;
        let rows = m.squeeze(0)?.squeeze(0)?.to_vec2::<f32>()?;
        let blocked: Vec<Vec<bool>> = rows
            .iter()
            .map(|r| r.iter().map(|v| *v < -1.0).collect())
            .collect();
        assert_eq!(
            blocked,
            vec![
                vec![false, true, true],
                vec![false, false, true],
                vec![false, false, true]
            ]
        );
        // With a cache offset, the single new query sees everything.
        let m = attention_mask(1, 4, None, None, DType::F32, &dev)?;
        assert_eq!(m.dims(), &[1, 1, 1, 5]);
        assert_eq!(m.sum_all()?.to_scalar::<f32>()?, 0.0);
        // A window of 2: each query sees itself and the key before it.
        let m = attention_mask(2, 2, None, Some(2), DType::F32, &dev)?;
        let rows = m.squeeze(0)?.squeeze(0)?.to_vec2::<f32>()?;
        let seen: Vec<Vec<bool>> = rows
            .iter()
            .map(|r| r.iter().map(|v| *v == 0.0).collect())
            .collect();
        assert_eq!(
            seen,
            vec![
                vec![false, true, true, false],
                vec![false, false, true, true]
            ]
        );
        Ok(())
    }
}
