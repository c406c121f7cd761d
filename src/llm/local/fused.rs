//! The element-wise steps of a forward pass, fused and vectorised for the CPU: RMS norm,
//! residual adds (in place, optionally of a normed branch: Gemma's post-norms), the gated
//! feed-forward's activation times its up projection (SiLU or GELU-tanh), and attention's
//! scale, causal mask and softmax (in place, on the scores' own buffer).
//!
//! As separate candle ops these cost more than the quantized products on prompts: each op is a
//! fresh buffer and a pass over memory, most run on one thread, and their loops are vectorised
//! only at the compile-time target (the binary targets any x86-64: SSE2), with `expf` and
//! `tanhf` called once per value. Here each step is one pass per row, rows in parallel, the
//! loops compiled a second time for AVX2/FMA and chosen at run time, and `exp` a polynomial the
//! compiler vectorises (Cephes' `expf`, within 2 ulp; GELU-tanh uses the identity
//! `0.5 · (1 + tanh u) = 1 / (1 + exp(−2u))`, so it needs no `tanh`).
//!
//! Each row's result depends on that row alone (batch invariance), and the AVX2 and baseline
//! builds of a loop compute the same values (no fused multiply-adds, fixed summation order).
//! Off the CPU every function falls back to the plain candle formula it replaces.

use anyhow::{bail, Result};
use candle_core::{
    CpuStorage, CustomOp2, InplaceOp1, InplaceOp2, InplaceOp3, Layout, Shape, Tensor,
};
use rayon::prelude::*;

use crate::model_files::arch::Activation;

/// `x / √(mean(x²) + eps) · w` over the last dimension (candle's `rms_norm`).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return Ok(candle_nn::ops::rms_norm(x, w, eps)?);
    }
    Ok(row_major(x)?.apply_op2_no_bwd(&w.contiguous()?, &Norm { eps })?)
}

/// `x + a`, or `x + rms_norm(a, w, eps)` with `norm = Some((w, eps))`: the residual add,
/// written into `x`'s buffer on the CPU (`x` must not share it with a tensor still in use).
pub fn residual_add(x: Tensor, a: &Tensor, norm: Option<(&Tensor, f32)>) -> Result<Tensor> {
    if !x.device().is_cpu() {
        let a = match norm {
            Some((w, eps)) => candle_nn::ops::rms_norm(a, w, eps)?,
            None => a.clone(),
        };
        return Ok((x + a)?);
    }
    let x = x.contiguous()?;
    let a = a.contiguous()?;
    match norm {
        Some((w, eps)) => x.inplace_op3(&a, &w.contiguous()?, &AddNormed { eps })?,
        None => x.inplace_op2(&a, &Add)?,
    }
    Ok(x)
}

/// `act(gate) · up` (the gated feed-forward's hidden values), both `[.., ffn]`.
pub fn gated(gate: &Tensor, up: &Tensor, act: Activation) -> Result<Tensor> {
    if !gate.device().is_cpu() {
        let g = match act {
            Activation::Silu => candle_nn::ops::silu(gate)?,
            Activation::GeluTanh => gate.gelu()?,
        };
        return Ok((g * up)?);
    }
    Ok(row_major(gate)?.apply_op2_no_bwd(&row_major(up)?, &Gated(act))?)
}

/// Which keys each query row of attention scores sees.
#[derive(Debug, Clone, Copy)]
pub struct Causal {
    /// Positions already in the cache before the new ones.
    pub pos: usize,
    /// New positions (query rows cycle through them: row `r` is position `pos + r % t`).
    pub t: usize,
    /// Keys a query sees at most, counting its own (a local layer's sliding window).
    pub window: Option<usize>,
}

impl Causal {
    /// The keys `first..last` seen by query row `r`.
    fn keys(&self, r: usize) -> (usize, usize) {
        let last = self.pos + r % self.t + 1;
        (self.window.map_or(0, |w| last.saturating_sub(w)), last)
    }
}

/// Softmax over the last dimension of `scores · scale`, keys outside `causal` left out (their
/// weights 0), written into `scores`' buffer (rows of `[.., n · t, keys]`).
pub fn causal_softmax(scores: &Tensor, scale: f32, causal: Causal) -> Result<()> {
    if !scores.is_contiguous() {
        bail!("internal error: attention scores must be contiguous");
    }
    Ok(scores.inplace_op1(&CausalSoftmax { scale, causal })?)
}

/// `t` itself if its rows (last dimension) lie evenly spaced in its buffer (a view of some
/// columns, as the model's split of a fused product), else a contiguous copy.
fn row_major(t: &Tensor) -> Result<Tensor> {
    match Rows::of(t.layout()) {
        Some(_) => Ok(t.clone()),
        None => Ok(t.contiguous()?),
    }
}

/// Rows of `len` values `stride` apart from `start` in a buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rows {
    start: usize,
    count: usize,
    len: usize,
    stride: usize,
}

impl Rows {
    fn of(l: &Layout) -> Option<Self> {
        let (dims, strides) = (l.dims(), l.stride());
        let (&len, outer) = dims.split_last()?;
        if len > 1 && strides[outer.len()] != 1 {
            return None;
        }
        let count = outer.iter().product();
        // The outer dimensions must collapse into one of stride `stride`.
        let mut stride = None;
        let mut expected = None;
        for (&d, &s) in outer.iter().zip(strides).rev().filter(|(&d, _)| d > 1) {
            match expected {
                None => stride = Some(s),
                Some(e) if e != s => return None,
                Some(_) => {}
            }
            expected = Some(s * d);
        }
        Some(Self {
            start: l.start_offset(),
            count,
            len,
            stride: stride.unwrap_or(len),
        })
    }

    /// The rows' values in `v`, one slice per row.
    fn slices<'a>(&self, v: &'a [f32]) -> candle_core::Result<Vec<&'a [f32]>> {
        if self.count > 0 && v.len() < self.start + (self.count - 1) * self.stride + self.len {
            candle_core::bail!("a layout reaches past its buffer");
        }
        Ok((0..self.count)
            .map(|r| &v[self.start + r * self.stride..][..self.len])
            .collect())
    }
}

/// The rows of an f32 CPU tensor whose rows are evenly spaced (see [`row_major`]).
fn rows_of<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<Vec<&'a [f32]>> {
    match (s, Rows::of(l)) {
        (CpuStorage::F32(v), Some(rows)) => rows.slices(v),
        _ => candle_core::bail!("fused ops take f32 tensors with evenly spaced rows"),
    }
}

/// Rows per parallel task: enough values (16 Ki) that a task outweighs its scheduling.
fn min_rows(len: usize) -> usize {
    (16 * 1024 / len.max(1)).max(1)
}

/// The f32 slice a contiguous layout spans in `s`.
fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("fused ops take contiguous f32 tensors"),
    }
}

fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("fused ops take contiguous f32 tensors"),
    }
}

struct Norm {
    eps: f32,
}

impl CustomOp2 for Norm {
    fn name(&self) -> &'static str {
        "cai-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (rows_of(s1, l1)?, slice(s2, l2)?);
        let len = w.len();
        if x.first().is_some_and(|r| r.len() != len) {
            candle_core::bail!("rms norm of rows of {} with {len} weights", x[0].len());
        }
        let mut out = vec![0f32; x.len() * len];
        out.par_chunks_mut(len.max(1))
            .zip(x.par_iter())
            .with_min_len(min_rows(len))
            .for_each(|(o, x)| norm_row(x, w, self.eps, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct Gated(Activation);

impl CustomOp2 for Gated {
    fn name(&self) -> &'static str {
        "cai-gated"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (rows_of(s1, l1)?, rows_of(s2, l2)?);
        if l1.dims() != l2.dims() {
            candle_core::bail!("gate {:?} and up {:?} differ", l1.dims(), l2.dims());
        }
        let len = *l1.dims().last().unwrap_or(&1);
        let row = match self.0 {
            Activation::Silu => silu_mul,
            Activation::GeluTanh => gelu_mul,
        };
        let mut out = vec![0f32; g.len() * len];
        out.par_chunks_mut(len.max(1))
            .zip(g.par_iter().zip(u.par_iter()))
            .with_min_len(min_rows(len))
            .for_each(|(o, (g, u))| row(g, u, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct Add;

impl InplaceOp2 for Add {
    fn name(&self) -> &'static str {
        "cai-residual-add"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (x, a) = (slice_mut(s1, l1)?, slice(s2, l2)?);
        if x.len() != a.len() {
            candle_core::bail!("residual add of {} and {} values", x.len(), a.len());
        }
        x.par_chunks_mut(16 * 1024)
            .zip(a.par_chunks(16 * 1024))
            .for_each(|(x, a)| add(x, a));
        Ok(())
    }
}

struct AddNormed {
    eps: f32,
}

impl InplaceOp3 for AddNormed {
    fn name(&self) -> &'static str {
        "cai-residual-add-normed"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let (x, a, w) = (slice_mut(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let len = w.len();
        if x.len() != a.len() || len == 0 || !x.len().is_multiple_of(len) {
            candle_core::bail!("residual add of {} and {} values", x.len(), a.len());
        }
        x.par_chunks_mut(len)
            .zip(a.par_chunks(len))
            .with_min_len(min_rows(len))
            .for_each(|(x, a)| add_normed_row(x, a, w, self.eps));
        Ok(())
    }
}

struct CausalSoftmax {
    scale: f32,
    causal: Causal,
}

impl InplaceOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "cai-causal-softmax"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let keys = *l.dims().last().unwrap_or(&0);
        let scores = slice_mut(s, l)?;
        let c = self.causal;
        if keys == 0 || c.t == 0 || c.pos + c.t > keys {
            candle_core::bail!(
                "attention scores with {keys} keys for {} positions",
                c.pos + c.t
            );
        }
        scores
            .par_chunks_mut(keys)
            .enumerate()
            .with_min_len(min_rows(keys))
            .for_each(|(r, row)| {
                let (first, last) = c.keys(r);
                row[..first].fill(0.0);
                row[last..].fill(0.0);
                softmax_row(&mut row[first..last], self.scale);
            });
        Ok(())
    }
}

/// Defines `pub(crate) fn $name` from a body compiled twice: for AVX2/FMA, chosen at run time
/// where the CPU has them, and for the baseline target.
macro_rules! simd {
    ($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),*) $body:block) => {
        $(#[$m])*
        pub(crate) fn $name($($a: $t),*) {
            #[inline(always)]
            fn body($($a: $t),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($a: $t),*) {
                    body($($a),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($a),*) };
                }
            }
            body($($a),*)
        }
    };
}

simd! {
    /// `o = x / √(mean(x²) + eps) · w` for one row.
    fn norm_row(x: &[f32], w: &[f32], eps: f32, o: &mut [f32]) {
        let m = (sum_squares(x) / x.len() as f32 + eps).sqrt();
        for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
            *o = x / m * w;
        }
    }
}

simd! {
    /// `x += a / √(mean(a²) + eps) · w` for one row.
    fn add_normed_row(x: &mut [f32], a: &[f32], w: &[f32], eps: f32) {
        let m = (sum_squares(a) / a.len() as f32 + eps).sqrt();
        for ((x, &a), &w) in x.iter_mut().zip(a).zip(w) {
            *x += a / m * w;
        }
    }
}

simd! {
    /// `x += a`.
    fn add(x: &mut [f32], a: &[f32]) {
        for (x, &a) in x.iter_mut().zip(a) {
            *x += a;
        }
    }
}

simd! {
    /// `o = silu(g) · u`, `silu(g) = g / (1 + exp(−g))`.
    fn silu_mul(g: &[f32], u: &[f32], o: &mut [f32]) {
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + exp(-g)) * u;
        }
    }
}

simd! {
    /// `o = gelu_tanh(g) · u`, with `0.5 · g · (1 + tanh v) = g / (1 + exp(−2v))`,
    /// `v = √(2/π) · g · (1 + 0.044715 g²)`.
    fn gelu_mul(g: &[f32], u: &[f32], o: &mut [f32]) {
        const TWO_SQRT_2_OVER_PI: f32 = 2.0 * 0.797_884_6;
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            let v = TWO_SQRT_2_OVER_PI * g * (1.0 + 0.044715 * g * g);
            *o = g / (1.0 + exp(-v)) * u;
        }
    }
}

/// `s = softmax(s · scale)`, in place: with AVX2 where the CPU has it (the compiler left the
/// loops below 4 lanes wide, and the maximum one scalar chain: most of a prompt's softmax
/// time), else in plain code; the same values either way.
pub(crate) fn softmax_row(s: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { softmax_avx2::softmax_row(s, scale) };
    }
    softmax_row_plain(s, scale)
}

/// [`softmax_row`] in plain code: the maximum, then `exp(s − max)` summed in eight lanes
/// (folded by [`fold_lanes`]), then each value divided by the sum.
fn softmax_row_plain(s: &mut [f32], scale: f32) {
    let mut max = f32::NEG_INFINITY;
    for s in s.iter_mut() {
        *s *= scale;
        max = max.max(*s);
    }
    let mut lanes = [0f32; 8];
    let mut chunks = s.chunks_exact_mut(8);
    for c in &mut chunks {
        for (l, s) in lanes.iter_mut().zip(c.iter_mut()) {
            *s = exp(*s - max);
            *l += *s;
        }
    }
    let mut sum = fold_lanes(lanes);
    for s in chunks.into_remainder() {
        *s = exp(*s - max);
        sum += *s;
    }
    for s in s.iter_mut() {
        *s /= sum;
    }
}

/// [`softmax_row`] on 256-bit vectors: [`exp`]'s and [`softmax_row_plain`]'s operations in
/// the same order, lane by lane, so the same values bit for bit (the maximum is exact in any
/// order; no fused multiply-adds).
#[cfg(target_arch = "x86_64")]
mod softmax_avx2 {
    use std::arch::x86_64::*;

    use super::{exp, fold_lanes};

    /// [`exp`] in each lane.
    ///
    /// # Safety
    /// AVX2 must be available.
    #[inline(always)]
    unsafe fn exp8(x: __m256) -> __m256 {
        let c = _mm256_set1_ps;
        const ROUND: f32 = 12_582_912.0;
        let x = _mm256_min_ps(_mm256_max_ps(x, c(-87.0)), c(88.0));
        let t = _mm256_add_ps(_mm256_mul_ps(x, c(std::f32::consts::LOG2_E)), c(ROUND));
        let n = _mm256_sub_ps(t, c(ROUND));
        let r = _mm256_sub_ps(
            _mm256_sub_ps(x, _mm256_mul_ps(n, c(0.693_359_4))),
            _mm256_mul_ps(n, c(-2.121_944_4e-4)),
        );
        let mut p = c(1.987_569_1e-4);
        for k in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm256_add_ps(_mm256_mul_ps(p, r), c(k));
        }
        let e = _mm256_add_ps(
            _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), r),
            c(1.0),
        );
        let n = _mm256_sub_epi32(
            _mm256_castps_si256(t),
            _mm256_set1_epi32(ROUND.to_bits() as i32),
        );
        let two_n = _mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23);
        _mm256_mul_ps(e, _mm256_castsi256_ps(two_n))
    }

    /// # Safety
    /// AVX2 must be available.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn softmax_row(s: &mut [f32], scale: f32) {
        let whole = s.len() / 8 * 8;
        let p = s.as_mut_ptr();
        let mut lanes = [0f32; 8];
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        for i in (0..whole).step_by(8) {
            let v = _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), _mm256_set1_ps(scale));
            _mm256_storeu_ps(p.add(i), v);
            m = _mm256_max_ps(m, v);
        }
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        let mut max = lanes.into_iter().fold(f32::NEG_INFINITY, f32::max);
        for s in &mut s[whole..] {
            *s *= scale;
            max = max.max(*s);
        }
        let mut sum = _mm256_setzero_ps();
        for i in (0..whole).step_by(8) {
            let e = exp8(_mm256_sub_ps(
                _mm256_loadu_ps(p.add(i)),
                _mm256_set1_ps(max),
            ));
            _mm256_storeu_ps(p.add(i), e);
            sum = _mm256_add_ps(sum, e);
        }
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        let mut sum = fold_lanes(lanes);
        for s in &mut s[whole..] {
            *s = exp(*s - max);
            sum += *s;
        }
        for i in (0..whole).step_by(8) {
            let v = _mm256_div_ps(_mm256_loadu_ps(p.add(i)), _mm256_set1_ps(sum));
            _mm256_storeu_ps(p.add(i), v);
        }
        for s in &mut s[whole..] {
            *s /= sum;
        }
    }
}

/// `Σ x²` in order, as candle's `rms_norm` sums: the normed values feed 8-bit activation
/// quantization (the packed kernels), where a last-bit difference can move a value across a
/// rounding step; summed in eight lanes, SmolLM2 Q8_0's perplexity moved by 0.8 %.
#[inline(always)]
fn sum_squares(x: &[f32]) -> f32 {
    x.iter().map(|v| v * v).sum()
}

#[inline(always)]
fn fold_lanes(l: [f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

/// `eˣ` within 2 ulp (Cephes' `expf`: `x = n ln 2 + r`, a degree-6 polynomial in `r`, times
/// 2ⁿ built in the exponent bits). Inputs are clamped to [−87, 88], where 2ⁿ stays a normal
/// number: below, the result is ~1e-38 instead of smaller, which no caller can tell from 0.
/// Branch-free so that loops over it vectorise.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 · 2²³ rounds to the nearest integer, which lands in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let n = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    e * f32::from_bits(((n + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    fn close(a: &[f32], b: &[f32], rel: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            let tol = rel * x.abs().max(y.abs()).max(1e-3);
            assert!((x - y).abs() <= tol, "value {i}: {x} vs {y}");
        }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Deterministic values in about [−scale, scale].
    fn wave(n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| scale * ((i as f32 * 0.37).sin() + 0.3 * (i as f32 * 1.7).cos()))
            .collect()
    }

    #[test]
    fn exp_is_within_2_ulp_of_libm() {
        for i in -8700..=8799 {
            let x = i as f32 * 0.01 + 0.003;
            let (a, b) = (exp(x), x.exp());
            assert!(
                (a - b).abs() <= 2.5 * f32::EPSILON * b,
                "exp({x}) = {a}, libm {b}"
            );
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn rms_norm_and_residual_adds_match_candle() -> Result<()> {
        let dev = Device::Cpu;
        // 3 rows of 37 (not a multiple of 8: the tail path too).
        let x = Tensor::from_vec(wave(111, 3.0), (1, 3, 37), &dev)?;
        let a = Tensor::from_vec(wave(111, 0.5), (1, 3, 37), &dev)?.sin()?;
        let w = Tensor::from_vec(wave(37, 1.0), 37, &dev)?;
        let plain = candle_nn::ops::rms_norm(&x, &w, 1e-6)?;
        close(&values(&rms_norm(&x, &w, 1e-6)?), &values(&plain), 1e-5);

        let plain = (&x + &a)?;
        let fused = residual_add(x.copy()?, &a, None)?;
        assert_eq!(values(&fused), values(&plain)); // one addition each: exact
        let plain = (&x + candle_nn::ops::rms_norm(&a, &w, 1e-6)?)?;
        let fused = residual_add(x.copy()?, &a, Some((&w, 1e-6)))?;
        close(&values(&fused), &values(&plain), 1e-5);
        Ok(())
    }

    #[test]
    fn gated_activations_match_candle() -> Result<()> {
        let dev = Device::Cpu;
        // A fused gate/up product, split by views as the model does.
        let gu = Tensor::from_vec(wave(2 * 3 * 45, 6.0), (1, 3, 90), &dev)?;
        let (g, u) = (gu.narrow(D::Minus1, 0, 45)?, gu.narrow(D::Minus1, 45, 45)?);
        let silu = (candle_nn::ops::silu(&g)? * &u)?;
        close(
            &values(&gated(&g, &u, Activation::Silu)?),
            &values(&silu),
            1e-5,
        );
        // candle's `0.5 · g · (1 + tanh v)` loses digits where tanh v nears −1 (g < −3): the
        // reference is the same formula in f64.
        let gelu: Vec<f32> = values(&g)
            .iter()
            .zip(values(&u))
            .map(|(&g, u)| {
                let g = g as f64;
                let v = (2.0 / std::f64::consts::PI).sqrt() * g * (1.0 + 0.044715 * g * g);
                (0.5 * g * (1.0 + v.tanh()) * u as f64) as f32
            })
            .collect();
        close(&values(&gated(&g, &u, Activation::GeluTanh)?), &gelu, 1e-5);
        Ok(())
    }

    #[test]
    fn causal_softmax_matches_mask_then_softmax() -> Result<()> {
        let dev = Device::Cpu;
        // 2 query heads sharing keys, 3 new positions after 2 cached ones: rows (head, t).
        let (t, pos, keys) = (3, 2, 5);
        let raw = Tensor::from_vec(wave(2 * t * keys, 4.0), (1, 1, 2 * t, keys), &dev)?;
        for window in [None, Some(2)] {
            let mask: Vec<f32> = (0..2 * t)
                .flat_map(|r| {
                    (0..keys).map(move |j| {
                        let q = pos + r % t;
                        let seen = j <= q && window.is_none_or(|w| q - j < w);
                        if seen {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (1, 1, 2 * t, keys), &dev)?;
            let plain = candle_nn::ops::softmax_last_dim(&((&raw * 0.5)? + mask)?)?;
            let fused = raw.copy()?;
            causal_softmax(&fused, 0.5, Causal { pos, t, window })?;
            close(&values(&fused), &values(&plain), 1e-5);
        }
        Ok(())
    }

    #[test]
    fn softmax_is_the_same_with_and_without_avx2() {
        // Every length up to 70 (tails of 0..8), scores over exp's clamp and a lone row.
        for len in 1..=70 {
            for scale in [0.125, 40.0] {
                let raw = wave(len, 3.0);
                let (mut a, mut b) = (raw.clone(), raw);
                softmax_row(&mut a, scale);
                softmax_row_plain(&mut b, scale);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "length {len}, scale {scale}");
            }
        }
    }

    #[test]
    fn rows_do_not_depend_on_their_neighbours() -> Result<()> {
        let dev = Device::Cpu;
        let len = 64;
        let many = Tensor::from_vec(wave(300 * len, 5.0), (300, len), &dev)?;
        let w = Tensor::from_vec(wave(len, 1.0), len, &dev)?;
        let one = many.narrow(0, 123, 1)?;
        let row = |t: Tensor| values(&t.narrow(0, 123, 1).unwrap());
        assert_eq!(
            values(&rms_norm(&one, &w, 1e-5)?),
            row(rms_norm(&many, &w, 1e-5)?)
        );
        let g = gated(&many, &many, Activation::GeluTanh)?;
        assert_eq!(values(&gated(&one, &one, Activation::GeluTanh)?), row(g));
        Ok(())
    }
}
