//! Causal attention that never holds the `[b, heads, t, t_k]` score and probability tensors
//! of a whole batch: `softmax(q kᵀ · scale + mask) v`, computed for slices of queries, with a
//! backward pass that recomputes each slice's probabilities (the memory plan of
//! FlashAttention, Dao et al. 2022 §3.1, with candle's matmuls for the tiles).
//!
//! The forward pass runs outside the autograd graph and enters it through a custom op on
//! `(q, k, v)` whose backward, slice by slice, rebuilds `P = softmax(S)` and applies
//! `dV += Pᵀ dO`, `dS = P ∘ (dO Vᵀ − rowsum(dO ∘ O))`, `dQ = dS K · scale`,
//! `dK += dSᵀ Q · scale`. A slice of queries ending at position `p` reads only the keys up to
//! `p` (the later ones are masked for every query of a causal model), which also halves the
//! work of a long sequence. Grouped-query heads share their key head without copies, as in
//! the plain formula.

use super::ops;
use candle_core::{CpuStorage, CudaStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};

/// Scores per query slice: 8 Mi values (32 MiB in f32) for the whole batch.
const SLICE_SCORES: usize = 1 << 23;

/// `softmax(q kᵀ · scale + mask) v` for `q: [b, h, t, d]`, `k, v: [b, kvh, t_k, d]` (`h` a
/// multiple of `kvh`; query `i` sits at position `t_k − t + i`) and the additive `mask:
/// [b | 1, 1, t, t_k]`, which must hide every key after its query. Returns `[b, h, t, d]` in the
/// dtype of `q`; the softmax runs in the mask's dtype, which may be wider (f32 for bf16 q, k, v).
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let (b, h, t, _) = q.dims4()?;
    let t_k = k.dim(2)?;
    let slice = (SLICE_SCORES / (b * h * t_k).max(1)).clamp(1, t.max(1));
    causal_attention_sliced(q, k, v, mask, scale, slice)
}

/// [`causal_attention`] with `slice` queries per slice.
pub fn causal_attention_sliced(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    slice: usize,
) -> Result<Tensor> {
    let plan = Plan {
        mask: mask.clone(),
        scale,
        slice: slice.max(1),
    };
    let (qd, kd, vd) = (q.detach(), k.detach(), v.detach());
    let out = plan.forward(&qd, &kd, &vd)?;
    if !(q.track_op() || k.track_op() || v.track_op()) {
        return Ok(out);
    }
    q.apply_op3(k, v, Attention { plan, out })
}

/// The mask, scale and slicing shared by the forward and backward passes.
#[derive(Clone)]
struct Plan {
    mask: Tensor,
    scale: f64,
    slice: usize,
}

/// One slice of queries, `[start, start + len)`, and the keys it reads, `[0, keys)`.
struct Slice {
    start: usize,
    len: usize,
    keys: usize,
}

impl Plan {
    fn slices(&self, t: usize, t_k: usize) -> impl Iterator<Item = Slice> + '_ {
        (0..t).step_by(self.slice).map(move |start| {
            let len = self.slice.min(t - start);
            Slice {
                start,
                len,
                keys: t_k - t + start + len,
            }
        })
    }

    /// Queries of a slice grouped by key head: `[b, kvh, rep · len, d]`.
    fn grouped(x: &Tensor, s: &Slice, kvh: usize) -> Result<Tensor> {
        let (b, h, _, d) = x.dims4()?;
        x.narrow(2, s.start, s.len)?
            .contiguous()?
            .reshape((b, kvh, h / kvh * s.len, d))
    }

    /// The slice's probabilities `[b, kvh, rep · len, keys]`, in the mask's dtype (f32 in a
    /// bf16 pass: the softmax runs wide).
    fn probs(&self, q_s: &Tensor, k_s: &Tensor, s: &Slice, h: usize) -> Result<Tensor> {
        let (b, kvh, _, _) = k_s.dims4()?;
        let mask = self.mask.narrow(2, s.start, s.len)?.narrow(3, 0, s.keys)?;
        let scores = (q_s.matmul(&k_s.t()?)? * self.scale)?
            .to_dtype(mask.dtype())?
            .reshape((b, h, s.len, s.keys))?
            .broadcast_add(&mask)?;
        ops::softmax_last_dim(&scores)?.reshape((b, kvh, h / kvh * s.len, s.keys))
    }

    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (b, h, t, d) = q.dims4()?;
        let (kvh, t_k) = (k.dim(1)?, k.dim(2)?);
        let mut parts = Vec::new();
        for s in self.slices(t, t_k) {
            let k_s = k.narrow(2, 0, s.keys)?.contiguous()?;
            let v_s = v.narrow(2, 0, s.keys)?.contiguous()?;
            let p = self.probs(&Self::grouped(q, &s, kvh)?, &k_s, &s, h)?;
            let p = p.to_dtype(v.dtype())?;
            parts.push(p.matmul(&v_s)?.reshape((b, h, s.len, d))?);
        }
        Tensor::cat(&parts, 2)
    }

    fn backward(
        &self,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, h, t, d) = q.dims4()?;
        let (kvh, t_k) = (k.dim(1)?, k.dim(2)?);
        let mut dq = Vec::new();
        let mut dk = k.zeros_like()?;
        let mut dv = v.zeros_like()?;
        for s in self.slices(t, t_k) {
            let k_s = k.narrow(2, 0, s.keys)?.contiguous()?;
            let v_s = v.narrow(2, 0, s.keys)?.contiguous()?;
            let q_s = Self::grouped(q, &s, kvh)?;
            // The softmax's backward runs in the probabilities' (wide) dtype; the products
            // in the dtype of q, k and v.
            let p = self.probs(&q_s, &k_s, &s, h)?;
            let (wide, dtype) = (p.dtype(), q.dtype());
            let do_s = Self::grouped(grad, &s, kvh)?;
            let o_s = Self::grouped(out, &s, kvh)?;
            let rest = t_k - s.keys;
            let p_narrow = p.to_dtype(dtype)?;
            dv = (dv + p_narrow.t()?.matmul(&do_s)?.pad_with_zeros(2, 0, rest)?)?;
            let dp = do_s.matmul(&v_s.t()?)?.to_dtype(wide)?;
            let row = (do_s.to_dtype(wide)? * o_s.to_dtype(wide)?)?.sum_keepdim(3)?;
            let ds = (p * dp.broadcast_sub(&row)?)?.to_dtype(dtype)?;
            dq.push((ds.matmul(&k_s)? * self.scale)?.reshape((b, h, s.len, d))?);
            let dk_s = (ds.t()?.matmul(&q_s)? * self.scale)?;
            dk = (dk + dk_s.pad_with_zeros(2, 0, rest)?)?;
        }
        Ok((Tensor::cat(&dq, 2)?, dk, dv))
    }
}

/// `(q, k, v) -> out` with `out` computed beforehand (see the module docs).
struct Attention {
    plan: Plan,
    out: Tensor,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "sliced-causal-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (storage, layout) = self.out.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => ops::clone_contiguous(s, layout),
            _ => candle_core::bail!("attention output is not on the CPU"),
        }
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (storage, layout) = self.out.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => ops::clone_contiguous(s, layout),
            _ => candle_core::bail!("attention output is not on the GPU"),
        }
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let qkv = (&q.detach(), &k.detach(), &v.detach());
        let (dq, dk, dv) = self.plan.backward(qkv, &self.out, &grad.detach())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// The plain formula of the model before slicing.
    fn plain(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
        let (b, h, t, d) = q.dims4()?;
        let (kvh, t_k) = (k.dim(1)?, k.dim(2)?);
        let q = q.reshape((b, kvh, h / kvh * t, d))?;
        let scores = (q.matmul(&k.t()?)? * scale)?
            .reshape((b, h, t, t_k))?
            .broadcast_add(mask)?;
        let probs = ops::softmax_last_dim(&scores)?.reshape((b, kvh, h / kvh * t, t_k))?;
        probs.matmul(v)?.reshape((b, h, t, d))
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .and_then(|x| x.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>())
            .unwrap()
    }

    /// Output and the gradients of q, k and v equal the plain formula's in f64, with grouped
    /// heads, right padding, a sliding window, a cache offset, and slices of 1 to all queries.
    #[test]
    fn sliced_attention_equals_the_plain_formula() -> Result<()> {
        let dev = Device::Cpu;
        let pad = Tensor::new(&[[1u32, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]], &dev)?;
        for (t, offset, window) in [(7, 0, None), (7, 0, Some(3)), (3, 4, None)] {
            let t_k = offset + t;
            let mask = ops::attention_mask(t, offset, Some(&pad), window, DType::F64, &dev)?;
            let q = Var::randn(0f64, 1.0, (2, 4, t, 8), &dev)?;
            let k = Var::randn(0f64, 1.0, (2, 2, t_k, 8), &dev)?;
            let v = Var::randn(0f64, 1.0, (2, 2, t_k, 8), &dev)?;
            let w = Tensor::randn(0f64, 1.0, (2, 4, t, 8), &dev)?;
            let want = plain(&q, &k, &v, &mask, 0.3)?;
            let g_want = (&want * &w)?.sum_all()?.backward()?;
            for slice in [1, 2, 3, t] {
                let got = causal_attention_sliced(&q, &k, &v, &mask, 0.3, slice)?;
                assert!(max_diff(&got, &want) < 1e-12, "t {t} slice {slice}: output");
                let g = (&got * &w)?.sum_all()?.backward()?;
                for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                    let d = max_diff(g.get(x).unwrap(), g_want.get(x).unwrap());
                    assert!(
                        d < 1e-12,
                        "t {t} offset {offset} slice {slice}: d{name} {d}"
                    );
                }
            }
        }
        Ok(())
    }
}
