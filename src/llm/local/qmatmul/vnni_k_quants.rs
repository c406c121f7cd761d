//! AVX-512 VNNI kernels for the K-quants Q4_K, Q5_K and Q6_K, on the repacked layout and tile
//! driver of `vnni` (8 weight rows interleaved 4 bytes at a time, one `vpdpbusd` per 4 values
//! of the 8 rows, each row's sum in its own lane).
//!
//! Activations are quantized to Q8_K as for the AVX2 kernels (`k_quants`), by `act_quant`. Per super-block,
//! in exact integers: each sub-block's dot product `I_g` (its values unsigned, Q6_K's offset
//! of 32 taken back through the activation's 16-value sums) times the sub-block's integer
//! scale, summed into `S`; and for Q4_K and Q5_K the minimums' term `M = Σ_i min_i · Σ y_i`
//! over the 32-value sub-blocks. Then in floats, block after block:
//! `acc = fma(S, d · d_y, acc)` and `acc = acc - M · (dmin · d_y)` (fused). As for the 32-value
//! types, the float chain is the same whatever the tile, so every row's result is the same in
//! any batch.

use std::arch::x86_64::*;

use anyhow::Result;

use super::act_quant;
use super::avx2::check_size;
use super::k_quants::{BlockK, Q8KBlock, QK_K};
use super::vnni::{broadcast4, chains, matmul_packed, Packed, LANES};
use super::RowsMatMul;

/// 8 weight rows' super-block: `qs[32t + 4j + l]` is value `4t + l` of row `j` (unsigned),
/// `scales[8g + j]` the scale of row `j`'s sub-block `g`, `mins[8i + j]` the minimum of its
/// 32-value sub-block `i`, `d[j]` and `dmin[j]` its super-block scales.
#[derive(Clone, Copy)]
struct GroupK {
    qs: [u8; LANES * QK_K],
    scales: [i8; 16 * LANES],
    mins: [i32; 8 * LANES],
    d: [f32; LANES],
    dmin: [f32; LANES],
}

/// A K-quant type's weights repacked for [`Packed::tile`].
pub(super) struct PackedK<B> {
    groups: Vec<GroupK>,
    n: usize,
    k: usize,
    _type: std::marker::PhantomData<B>,
}

impl<B: BlockK> PackedK<B> {
    /// The kernel for `n` rows of `k` values stored as `data` (the tensor's GGUF bytes).
    pub(super) fn new(data: &[u8], n: usize, k: usize) -> Result<Self> {
        check_size(B::NAME, data.len(), (QK_K, B::BYTES), n, k)?;
        let kb = k / QK_K;
        let empty = GroupK {
            qs: [0; LANES * QK_K],
            scales: [0; 16 * LANES],
            mins: [0; 8 * LANES],
            d: [0.0; LANES],
            dmin: [0.0; LANES],
        };
        let mut groups = vec![empty; n.div_ceil(LANES) * kb];
        for (i, bytes) in data.chunks_exact(B::BYTES).enumerate() {
            let (c, b) = (i / kb, i % kb);
            let (g, j) = (c / LANES, c % LANES);
            // SAFETY: `rows_matmul` builds this kernel only when `vnni::available()` holds.
            let ints = unsafe { B::read(bytes).ints() };
            let dst = &mut groups[g * kb + b];
            for (v, &q) in ints.q.iter().enumerate() {
                dst.qs[32 * (v / 4) + 4 * j + v % 4] = q;
            }
            for (s, &scale) in ints.scales.iter().enumerate() {
                dst.scales[LANES * s + j] = scale;
            }
            for (s, &min) in ints.mins.iter().enumerate() {
                dst.mins[LANES * s + j] = min as i32;
            }
            dst.d[j] = ints.d;
            dst.dmin[j] = ints.dmin;
        }
        Ok(Self {
            groups,
            n,
            k,
            _type: std::marker::PhantomData,
        })
    }
}

// SAFETY: `Q8KBlock` holds integers and a float.
unsafe impl<B: BlockK> Packed for PackedK<B> {
    type Act = Q8KBlock;

    fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    fn act_blocks(&self) -> usize {
        self.k / QK_K
    }

    fn quantize(&self, x: &[f32], out: &mut [Q8KBlock]) {
        for (x, o) in x.chunks_exact(QK_K).zip(out) {
            // SAFETY: `rows_matmul` builds this kernel only when `vnni::available()` holds.
            o.d = unsafe { act_quant::q8_k(x, &mut o.qs, &mut o.bsums) };
            // At most 32 · 128 in magnitude: no overflow.
            o.sums32 = std::array::from_fn(|i| o.bsums[2 * i] + o.bsums[2 * i + 1]);
        }
    }

    #[inline(always)]
    unsafe fn tile<const R: usize>(&self, g: usize, y: &[Q8KBlock], at: [usize; R]) -> [__m256; R] {
        let kb = self.k / QK_K;
        let w = &self.groups[g * kb..(g + 1) * kb];
        match chains(R) {
            4 => tile_k::<B, R, 4>(w, y, at),
            2 => tile_k::<B, R, 2>(w, y, at),
            _ => tile_k::<B, R, 1>(w, y, at),
        }
    }
}

/// [`Packed::tile`] for [`PackedK`], with `C` integer accumulators per activation row.
///
/// # Safety
/// As for [`Packed::tile`]; `w` is one group's super-blocks.
#[target_feature(enable = "avx2,fma,avx512vl,avx512vnni")]
unsafe fn tile_k<B: BlockK, const R: usize, const C: usize>(
    w: &[GroupK],
    y: &[Q8KBlock],
    at: [usize; R],
) -> [__m256; R] {
    let steps = B::SUB / 4;
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, wb) in w.iter().enumerate() {
        let mut scaled = [_mm256_setzero_si256(); R];
        for s in 0..QK_K / B::SUB {
            let scale = _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                wb.scales.as_ptr().add(LANES * s) as *const __m128i
            ));
            let mut sums = [[_mm256_setzero_si256(); C]; R];
            for t in 0..steps {
                let step = s * steps + t;
                let wv = _mm256_loadu_si256(wb.qs.as_ptr().add(32 * step) as *const __m256i);
                for r in 0..R {
                    let yb = y.get_unchecked(at[r] + b);
                    let acc = &mut sums[r][t % C];
                    *acc = _mm256_dpbusd_epi32(*acc, wv, broadcast4(yb.qs.as_ptr().add(4 * step)));
                }
            }
            for r in 0..R {
                let mut sum = sums[r][0];
                for part in &sums[r][1..] {
                    sum = _mm256_add_epi32(sum, *part);
                }
                if B::OFFSET != 0 {
                    // Q6_K: 16-value sub-blocks, one activation sum each.
                    let yb = y.get_unchecked(at[r] + b);
                    let off = B::OFFSET * *yb.bsums.get_unchecked(s) as i32;
                    sum = _mm256_sub_epi32(sum, _mm256_set1_epi32(off));
                }
                scaled[r] = _mm256_add_epi32(scaled[r], _mm256_mullo_epi32(sum, scale));
            }
        }
        let d = _mm256_loadu_ps(wb.d.as_ptr());
        let dmin = _mm256_loadu_ps(wb.dmin.as_ptr());
        for r in 0..R {
            let yb = y.get_unchecked(at[r] + b);
            let dy = _mm256_set1_ps(yb.d);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(scaled[r]), _mm256_mul_ps(d, dy), acc[r]);
            if B::HAS_MIN {
                let mut mins = _mm256_setzero_si256();
                for i in 0..8 {
                    let m = _mm256_loadu_si256(wb.mins.as_ptr().add(LANES * i) as *const __m256i);
                    let sy = _mm256_set1_epi32(*yb.sums32.get_unchecked(i) as i32);
                    mins = _mm256_add_epi32(mins, _mm256_mullo_epi32(m, sy));
                }
                acc[r] =
                    _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mins), _mm256_mul_ps(dmin, dy), acc[r]);
            }
        }
    }
    acc
}

impl<B: BlockK> RowsMatMul for PackedK<B> {
    fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]) {
        matmul_packed(self, x, m, dst)
    }

    /// As for the 32-value types (`vnni::Packed32`).
    fn fast_for_many_rows(&self) -> bool {
        true
    }
}
