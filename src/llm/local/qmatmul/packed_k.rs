//! The K-quants Q4_K, Q5_K and Q6_K repacked, with their AVX-512 VNNI tiles, on the layout
//! and tile driver of `packed` (16 weight rows interleaved 4 bytes at a time, one `vpdpbusd`
//! per 4 values of the 16 rows, each row's sum in its own lane; `packed_avx2` has the AVX2
//! tiles).
//!
//! Activations are quantized to Q8_K (`k_quants`) by `act_quant`. Per super-block, in exact
//! integers: each sub-block's dot product `I_g` (its values unsigned, Q6_K's offset of 32
//! taken back through the activation's 16-value sums) times the sub-block's integer scale,
//! summed into `S`; and for Q4_K and Q5_K the minimums' term `M = Σ_i min_i · Σ y_i`
//! over the 32-value sub-blocks (Q6_K's offset term likewise, `32 · Σ_g scale_g · Σ y_g`, both
//! by `vpdpwssd` on pairs of 16-bit factors). Then in floats, block after block:
//! `acc = fma(S, d · d_y, acc)` and `acc = acc - M · (dmin · d_y)` (fused). As for the 32-value
//! types, the float chain is the same whatever the tile, so every row's result is the same in
//! any batch.

use std::arch::x86_64::*;

use anyhow::Result;

use super::act_quant;
use super::block32::check_size;
use super::k_quants::{BlockK, KInts, Q8KBlock, QK_K};
use super::packed::{broadcast4, chains, matmul_packed, Isa, Packed};
use super::packed_avx2;
use super::packed_layout::{GroupK, KFifth, HALF, K_BYTES, K_NIBBLES, LANES};
use super::rows::RowsMatMul;

/// Two i16 values in one i32 lane, `lo` in the low half (as `vpdpwssd` pairs them).
fn pair(lo: i16, hi: i16) -> u32 {
    (lo as u16 as u32) | ((hi as u16 as u32) << 16)
}

/// A K-quant type's weights repacked for [`Packed::tile`] (and [`Packed::tile_avx2`]).
pub(super) struct PackedK<B> {
    /// The weights a byte per value; empty where `nibbles` holds them.
    groups: Vec<GroupK<K_BYTES>>,
    /// Q4_K and Q5_K for the AVX2 tiles, two values per byte (as `groups`); else empty.
    nibbles: Vec<GroupK<K_NIBBLES>>,
    /// For Q5_K in `nibbles`, the fifth bits (as `groups`); else empty.
    fifth: Vec<KFifth>,
    isa: Isa,
    n: usize,
    k: usize,
    _type: std::marker::PhantomData<B>,
}

impl<B: BlockK> PackedK<B> {
    /// The kernel for `n` rows of `k` values stored as `data` (the tensor's GGUF bytes),
    /// multiplying with `isa` (which the CPU must have).
    pub(super) fn new(data: &[u8], n: usize, k: usize, isa: Isa) -> Result<Self> {
        check_size(B::NAME, data.len(), (QK_K, B::BYTES), n, k)?;
        let kb = k / QK_K;
        let blocks = n.div_ceil(LANES) * kb;
        let as_nibbles = isa == Isa::Avx2 && B::SUB == 32 && B::BITS <= 5;
        let mut me = Self {
            groups: Vec::new(),
            nibbles: Vec::new(),
            fifth: Vec::new(),
            isa,
            n,
            k,
            _type: std::marker::PhantomData,
        };
        match as_nibbles {
            true => {
                me.nibbles = vec![empty_group(); blocks];
                if B::BITS == 5 {
                    me.fifth = vec![[0; 8 * 4 * LANES]; blocks];
                }
            }
            false => me.groups = vec![empty_group(); blocks],
        }
        for (i, bytes) in data.chunks_exact(B::BYTES).enumerate() {
            let (c, b) = (i / kb, i % kb);
            let (g, j) = (c / LANES, c % LANES);
            let ints = B::ints(bytes);
            let at = g * kb + b;
            if !as_nibbles {
                let dst = &mut me.groups[at];
                for (v, &q) in ints.q.iter().enumerate() {
                    dst.qs[4 * LANES * (v / 4) + 4 * j + v % 4] = q;
                }
                set_lane::<B, K_BYTES>(dst, j, &ints);
                continue;
            }
            let dst = &mut me.nibbles[at];
            set_lane::<B, K_NIBBLES>(dst, j, &ints);
            let (h, j) = (j / HALF, j % HALF);
            for (v, &q) in ints.q.iter().enumerate() {
                let (s, t, l) = (v / 32, v % 32 / 4, v % 4);
                let byte = 256 * s + 128 * h + 32 * (t % 4) + 4 * j + l;
                dst.qs[byte] |= (q & 0xF) << (4 * (t / 4));
                if B::BITS == 5 {
                    me.fifth[at][64 * s + 32 * h + 4 * j + l] |= (q >> 4) << t;
                }
            }
        }
        Ok(me)
    }
}

/// A group of zeros (the rows past the last one stay so).
fn empty_group<const Q: usize>() -> GroupK<Q> {
    GroupK {
        qs: [0; Q],
        scales: [0; 16 * LANES],
        pairs: [0; 8 * LANES],
        d: [0.0; LANES],
        dmin: [0.0; LANES],
    }
}

/// Row `j`'s scales, pairs of factors and super-block scales in `dst`.
fn set_lane<B: BlockK, const Q: usize>(dst: &mut GroupK<Q>, j: usize, ints: &KInts) {
    for (s, &scale) in ints.scales.iter().enumerate() {
        dst.scales[LANES * s + j] = scale;
    }
    for p in 0..8 {
        dst.pairs[LANES * p + j] = match (B::HAS_MIN, B::OFFSET != 0) {
            (true, _) if p < 4 => pair(ints.mins[2 * p] as i16, ints.mins[2 * p + 1] as i16),
            (false, true) => pair(ints.scales[2 * p] as i16, ints.scales[2 * p + 1] as i16),
            _ => 0,
        };
    }
    dst.d[j] = ints.d;
    dst.dmin[j] = ints.dmin;
}

// SAFETY: `Q8KBlock` holds integers and a float.
unsafe impl<B: BlockK> Packed for PackedK<B> {
    type Act = Q8KBlock;

    fn isa(&self) -> Isa {
        self.isa
    }

    fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    fn act_blocks(&self) -> usize {
        self.k / QK_K
    }

    fn quantize(&self, x: &[f32], out: &mut [Q8KBlock]) {
        for (x, o) in x.chunks_exact(QK_K).zip(out) {
            // SAFETY: every `Isa` includes AVX2 and FMA, and the kernel is built for one the
            // CPU has.
            o.d = unsafe { act_quant::q8_k(x, &mut o.qs, &mut o.bsums) };
            // At most 32 · 128 in magnitude: no overflow.
            o.sums32 = std::array::from_fn(|i| o.bsums[2 * i] + o.bsums[2 * i + 1]);
        }
    }

    #[inline(always)]
    unsafe fn tile<const R: usize>(&self, g: usize, y: &[Q8KBlock], at: [usize; R]) -> [__m512; R] {
        let kb = self.k / QK_K;
        let w = &self.groups[g * kb..(g + 1) * kb];
        match chains(R) {
            4 => tile_k::<B, R, 4>(w, y, at),
            2 => tile_k::<B, R, 2>(w, y, at),
            _ => tile_k::<B, R, 1>(w, y, at),
        }
    }

    #[inline(always)]
    unsafe fn tile_avx2<const R: usize>(
        &self,
        g: usize,
        h: usize,
        y: &[Q8KBlock],
        at: [usize; R],
    ) -> [__m256; R] {
        let kb = self.k / QK_K;
        let blocks = g * kb..(g + 1) * kb;
        if self.nibbles.is_empty() {
            return packed_avx2::tile_k::<B, R, K_BYTES>(&self.groups[blocks], &[], y, at, h);
        }
        let fifth = match self.fifth.is_empty() {
            true => &[][..],
            false => &self.fifth[blocks.clone()],
        };
        packed_avx2::tile_k::<B, R, K_NIBBLES>(&self.nibbles[blocks], fifth, y, at, h)
    }
}

/// [`Packed::tile`] for [`PackedK`], with `C` integer accumulators per activation row.
///
/// # Safety
/// As for [`Packed::tile`]; `w` is one group's super-blocks.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_k<B: BlockK, const R: usize, const C: usize>(
    w: &[GroupK<K_BYTES>],
    y: &[Q8KBlock],
    at: [usize; R],
) -> [__m512; R] {
    let steps = B::SUB / 4;
    let mut acc = [_mm512_setzero_ps(); R];
    for (b, wb) in w.iter().enumerate() {
        let mut scaled = [_mm512_setzero_si512(); R];
        for s in 0..QK_K / B::SUB {
            let scale = _mm512_cvtepi8_epi32(_mm_loadu_si128(
                wb.scales.as_ptr().add(LANES * s) as *const __m128i
            ));
            let mut sums = [[_mm512_setzero_si512(); C]; R];
            for t in 0..steps {
                let step = s * steps + t;
                let wv = _mm512_loadu_si512(wb.qs.as_ptr().add(4 * LANES * step) as *const __m512i);
                for r in 0..R {
                    let yb = y.get_unchecked(at[r] + b);
                    let acc = &mut sums[r][t % C];
                    *acc = _mm512_dpbusd_epi32(*acc, wv, broadcast4(yb.qs.as_ptr().add(4 * step)));
                }
            }
            for r in 0..R {
                let mut sum = sums[r][0];
                for part in &sums[r][1..] {
                    sum = _mm512_add_epi32(sum, *part);
                }
                scaled[r] = _mm512_add_epi32(scaled[r], _mm512_mullo_epi32(sum, scale));
            }
        }
        let d = _mm512_loadu_ps(wb.d.as_ptr());
        let dmin = _mm512_loadu_ps(wb.dmin.as_ptr());
        for r in 0..R {
            let yb = y.get_unchecked(at[r] + b);
            if B::OFFSET != 0 {
                // Q6_K: Σ_g scale_g · 32 · Σ_g y over the 16-value sub-blocks, exact (at most
                // 16 · 128 · 16 · 128 before the factor 32), taken from the scaled sum.
                let sums = yb.bsums.as_ptr() as *const i32;
                let mut off = _mm512_setzero_si512();
                for p in 0..8 {
                    let f = _mm512_loadu_si512(wb.pairs.as_ptr().add(LANES * p) as *const __m512i);
                    let sy = _mm512_set1_epi32(std::ptr::read_unaligned(sums.add(p)));
                    off = _mm512_dpwssd_epi32(off, f, sy);
                }
                let off = _mm512_mullo_epi32(off, _mm512_set1_epi32(B::OFFSET));
                scaled[r] = _mm512_sub_epi32(scaled[r], off);
            }
            let dy = _mm512_set1_ps(yb.d);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(scaled[r]), _mm512_mul_ps(d, dy), acc[r]);
            if B::HAS_MIN {
                // Σ_i min_i · Σ_i y over the 32-value sub-blocks, two per `vpdpwssd`.
                let sums = yb.sums32.as_ptr() as *const i32;
                let mut mins = _mm512_setzero_si512();
                for p in 0..4 {
                    let m = _mm512_loadu_si512(wb.pairs.as_ptr().add(LANES * p) as *const __m512i);
                    let sy = _mm512_set1_epi32(std::ptr::read_unaligned(sums.add(p)));
                    mins = _mm512_dpwssd_epi32(mins, m, sy);
                }
                acc[r] =
                    _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mins), _mm512_mul_ps(dmin, dy), acc[r]);
            }
        }
    }
    acc
}

impl<B: BlockK> RowsMatMul for PackedK<B> {
    fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]) {
        matmul_packed(self, x, m, dst)
    }

    /// As for the 32-value types (`packed::Packed32`).
    fn fast_for_many_rows(&self) -> bool {
        true
    }
}
