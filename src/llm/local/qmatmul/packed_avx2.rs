//! AVX2 tiles of the packed layouts ([`Group32`], [`Nibbles32`], [`GroupK`]), for CPUs
//! without AVX-512 VNNI: each 16-row group taken as two halves of 8 rows, one weight row per
//! i32 lane of a 256-bit vector. The 4- and 5-bit types (Q4_0, Q4_1, Q5_0, Q5_1, Q4_K,
//! Q5_K) keep two values per byte here ([`Nibbles32`], [`GroupK`] of [`K_NIBBLES`], the fifth
//! bits apart): a single sequence's decoding streams every weight
//! from memory, and reads half the bytes (2 to 3 instructions per 8 rows' 8 values unpack
//! them, shared by the tile's rows).
//!
//! `vpdpbusd` (unsigned weight bytes times signed activation bytes, four products summed into
//! each i32 lane) becomes `vpmaddubsw`, which sums pairs of products into i16 lanes, and
//! `vpmaddwd`, which sums pairs of those into i32 lanes (times 1, or times a sub-block's
//! scale). The i16 sums of several steps are added before widening, as many as cannot
//! overflow ([`i16_steps`]): for 4-bit values a whole 32-value block costs one `vpmaddubsw`
//! and one `vpaddw` per 4 values of 8 rows, and one `vpmaddwd` per block. Q8_0's values
//! (stored with an offset of 128) would overflow a `vpmaddubsw` pair, so its tiles multiply
//! their magnitudes by the activations carrying their signs, one step at a time.
//!
//! The integer sums are the VNNI tiles' exact integers, and the float steps the same
//! operations lane by lane, so both instruction sets give the same outputs, in any batch.

use std::arch::x86_64::*;

use super::k_quants::{BlockK, Q8KBlock, QK_K};
use super::packed_layout::{
    Act32, Fifth32, Group32, GroupK, KFifth, Nibbles32, HALF, K_NIBBLES, LANES,
};

/// Steps of 4 values (out of `steps`, a power of two) whose `vpmaddubsw` sums can be added in
/// i16 lanes: each step adds at most `2 · (2^bits - 1) · 128` (two products of a weight and an
/// activation byte), and the total must stay within `i16::MAX`.
pub(super) const fn i16_steps(bits: u32, steps: usize) -> usize {
    let per_step = 2 * ((1 << bits) - 1) * 128;
    let mut s = steps;
    while s > 1 && s * per_step > i16::MAX as usize {
        s /= 2;
    }
    s
}

/// 4 activation bytes at `p` in every i32 lane.
///
/// # Safety
/// `p` must point to 4 readable bytes; AVX must be available.
#[inline(always)]
unsafe fn broadcast4(p: *const i8) -> __m256i {
    _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32))
}

/// The 8 weight rows' 4 values of step `t` (unsigned bytes) in half `h` of a group whose
/// steps are [`LANES`] rows × 4 bytes apart.
///
/// # Safety
/// AVX must be available; `qs` holds step `t`.
#[inline(always)]
unsafe fn weights(qs: *const u8, t: usize, h: usize) -> __m256i {
    _mm256_loadu_si256(qs.add(4 * LANES * t + 4 * HALF * h) as *const __m256i)
}

/// `Packed::tile_avx2` of a Q4_0, Q4_1, Q5_0 or Q5_1 group (`w`: its blocks as nibbles,
/// `fifth`: their fifth bits when `FIVE`, `mins`: their minimums or empty) for half `h`: each
/// load of nibbles gives the values of two steps, and the i16 sums of as many steps as
/// [`i16_steps`] allows are added before widening.
///
/// # Safety
/// AVX2 and FMA must be available; `y` holds `w.len()` blocks from each `at[r]`; `h < 2`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile32<const R: usize, const FIVE: bool>(
    w: &[Nibbles32],
    fifth: &[Fifth32],
    mins: &[[f32; LANES]],
    y: &[Act32],
    at: [usize; R],
    h: usize,
) -> [__m256; R] {
    // Loads of nibbles (two steps each) per i16 sum.
    const fn loads(five: bool) -> usize {
        i16_steps(if five { 5 } else { 4 }, 8) / 2
    }
    let ones = _mm256_set1_epi16(1);
    let nibble = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, wb) in w.iter().enumerate() {
        let mut sums = [_mm256_setzero_si256(); R];
        for (r, sum) in sums.iter_mut().enumerate() {
            // The offset's term, so that the sum ends exact.
            *sum = _mm256_set1_epi32(y.get_unchecked(at[r] + b).start);
        }
        let high = match FIVE {
            true => _mm256_loadu_si256(fifth.get_unchecked(b).as_ptr().add(32 * h) as *const _),
            false => _mm256_setzero_si256(),
        };
        for first in (0..4).step_by(loads(FIVE)) {
            let mut p16 = [_mm256_setzero_si256(); R];
            for p in first..first + loads(FIVE) {
                let v = _mm256_loadu_si256(wb.lo.as_ptr().add(128 * h + 32 * p) as *const _);
                let mut q = [
                    _mm256_and_si256(v, nibble),
                    _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble),
                ];
                if FIVE {
                    q[0] = with_fifth_bit(q[0], high, p);
                    q[1] = with_fifth_bit(q[1], high, p + 4);
                }
                for (half, &q) in q.iter().enumerate() {
                    let t = p + 4 * half;
                    for r in 0..R {
                        let yv = broadcast4(y.get_unchecked(at[r] + b).qs.as_ptr().add(4 * t));
                        p16[r] = _mm256_add_epi16(p16[r], _mm256_maddubs_epi16(q, yv));
                    }
                }
            }
            for r in 0..R {
                sums[r] = _mm256_add_epi32(sums[r], _mm256_madd_epi16(p16[r], ones));
            }
        }
        scale_block(&wb.d, mins, b, y, at, h, sums, &mut acc);
    }
    acc
}

/// [`tile32`] for Q8_0, whose values `q` are stored as `q + 128`: `|q|` times the activation
/// bytes with `q`'s signs (at most 128 · 127 per product, two per i16 lane), widened every
/// step. The sum is `Σ q · y` itself, without the offset's term.
///
/// # Safety
/// As for [`tile32`].
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile32_q8_0<const R: usize>(
    w: &[Group32],
    y: &[Act32],
    at: [usize; R],
    h: usize,
) -> [__m256; R] {
    let ones = _mm256_set1_epi16(1);
    let flip = _mm256_set1_epi8(i8::MIN);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, wb) in w.iter().enumerate() {
        let mut sums = [_mm256_setzero_si256(); R];
        for t in 0..8 {
            let q = _mm256_xor_si256(weights(wb.qs.as_ptr(), t, h), flip);
            // |-128| is 128 as an unsigned byte.
            let magnitude = _mm256_abs_epi8(q);
            for r in 0..R {
                let yv = broadcast4(y.get_unchecked(at[r] + b).qs.as_ptr().add(4 * t));
                let p16 = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(yv, q));
                sums[r] = _mm256_add_epi32(sums[r], _mm256_madd_epi16(p16, ones));
            }
        }
        scale_block(&wb.d, &[], b, y, at, h, sums, &mut acc);
    }
    acc
}

/// `acc[r] += float(sums[r]) · (d_w · d_y)` (`d`: the weight rows' scales), then the
/// minimums' term where there are minimums: block `b`'s float steps, as in the VNNI tile.
///
/// # Safety
/// AVX and FMA must be available; `y` holds block `at[r] + b`; `mins` is empty or holds `b`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn scale_block<const R: usize>(
    d: &[f32; LANES],
    mins: &[[f32; LANES]],
    b: usize,
    y: &[Act32],
    at: [usize; R],
    h: usize,
    sums: [__m256i; R],
    acc: &mut [__m256; R],
) {
    let d = _mm256_loadu_ps(d.as_ptr().add(HALF * h));
    for r in 0..R {
        let yb = y.get_unchecked(at[r] + b);
        let scale = _mm256_mul_ps(d, _mm256_set1_ps(yb.d));
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[r]), scale, acc[r]);
        if !mins.is_empty() {
            let m = _mm256_loadu_ps(mins.get_unchecked(b).as_ptr().add(HALF * h));
            acc[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(yb.s), acc[r]);
        }
    }
}

/// `Packed::tile_avx2` of a K-quant group (`w`: its super-blocks, a byte per value or, with
/// `Q` [`K_NIBBLES`], two; `fifth`: Q5_K's fifth bits then, else empty) for half `h`.
///
/// # Safety
/// As for [`tile32`].
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile_k<B: BlockK, const R: usize, const Q: usize>(
    w: &[GroupK<Q>],
    fifth: &[KFifth],
    y: &[Q8KBlock],
    at: [usize; R],
    h: usize,
) -> [__m256; R] {
    let steps = B::SUB / 4;
    let s16 = i16_steps(B::BITS, steps);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, wb) in w.iter().enumerate() {
        let mut scaled = [_mm256_setzero_si256(); R];
        for s in 0..QK_K / B::SUB {
            // Q5_K's fifth bits of this sub-block's values, in nibbles.
            let high = match fifth.is_empty() {
                true => None,
                false => {
                    let at = fifth.get_unchecked(b).as_ptr().add(64 * s + 32 * h);
                    Some(_mm256_loadu_si256(at as *const __m256i))
                }
            };
            // The 8 rows' scales of sub-block `s`, each in both i16 halves of its lane.
            let sc = _mm_loadl_epi64(wb.scales.as_ptr().add(LANES * s + HALF * h) as *const _);
            let sc = _mm256_cvtepi8_epi32(sc);
            let sc = _mm256_or_si256(
                _mm256_and_si256(sc, _mm256_set1_epi32(0xFFFF)),
                _mm256_slli_epi32(sc, 16),
            );
            for first in (0..steps).step_by(s16) {
                let mut p16 = [_mm256_setzero_si256(); R];
                for t in first..first + s16 {
                    let step = s * steps + t;
                    let wv = match Q == K_NIBBLES {
                        true => k_nibbles(wb.qs.as_ptr(), high, s, t, h),
                        false => weights(wb.qs.as_ptr(), step, h),
                    };
                    for r in 0..R {
                        let yb = y.get_unchecked(at[r] + b);
                        let yv = broadcast4(yb.qs.as_ptr().add(4 * step));
                        p16[r] = _mm256_add_epi16(p16[r], _mm256_maddubs_epi16(wv, yv));
                    }
                }
                for r in 0..R {
                    scaled[r] = _mm256_add_epi32(scaled[r], _mm256_madd_epi16(p16[r], sc));
                }
            }
        }
        let d = _mm256_loadu_ps(wb.d.as_ptr().add(HALF * h));
        let dmin = _mm256_loadu_ps(wb.dmin.as_ptr().add(HALF * h));
        for r in 0..R {
            let yb = y.get_unchecked(at[r] + b);
            if B::OFFSET != 0 {
                // Q6_K: the offset's term, as in the VNNI tile.
                let off = pair_sums(wb, h, yb.bsums.as_ptr() as *const i32, 8);
                let off = _mm256_mullo_epi32(off, _mm256_set1_epi32(B::OFFSET));
                scaled[r] = _mm256_sub_epi32(scaled[r], off);
            }
            let dy = _mm256_set1_ps(yb.d);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(scaled[r]), _mm256_mul_ps(d, dy), acc[r]);
            if B::HAS_MIN {
                let mins = pair_sums(wb, h, yb.sums32.as_ptr() as *const i32, 4);
                acc[r] =
                    _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mins), _mm256_mul_ps(dmin, dy), acc[r]);
            }
        }
    }
    acc
}

/// The 8 rows' 4 values of step `t` of sub-block `s` in half `h` of a [`GroupK`] of nibbles
/// (`qs`), with their fifth bits from `high` (the sub-block's, for Q5_K).
///
/// # Safety
/// AVX2 must be available; `qs` holds sub-block `s`.
#[inline(always)]
unsafe fn k_nibbles(qs: *const u8, high: Option<__m256i>, s: usize, t: usize, h: usize) -> __m256i {
    let v = _mm256_loadu_si256(qs.add(256 * s + 128 * h + 32 * (t % 4)) as *const __m256i);
    let nibble = _mm256_set1_epi8(0x0F);
    let q = match t < 4 {
        true => _mm256_and_si256(v, nibble),
        false => _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble),
    };
    match high {
        Some(high) => with_fifth_bit(q, high, t),
        None => q,
    }
}

/// `q` with bit `t` of each byte of `high` as its bit 4 (the fifth bits of step `t`).
///
/// # Safety
/// AVX2 must be available.
#[inline(always)]
unsafe fn with_fifth_bit(q: __m256i, high: __m256i, t: usize) -> __m256i {
    // Shifts within 16-bit lanes move other bits across bytes; the mask keeps only this one.
    let moved = match t <= 4 {
        true => _mm256_sll_epi16(high, _mm_cvtsi32_si128(4 - t as i32)),
        false => _mm256_srl_epi16(high, _mm_cvtsi32_si128(t as i32 - 4)),
    };
    _mm256_or_si256(q, _mm256_and_si256(moved, _mm256_set1_epi8(0x10)))
}

/// `Σ_p` of `GroupK::pairs` row `p` (two i16 factors per lane) times the activation's pair `p`
/// of i16 sums (`sums`, read as i32), for `p < pairs`: half `h`'s 8 lanes.
///
/// # Safety
/// AVX2 must be available; `sums` holds `pairs` pairs.
#[inline(always)]
unsafe fn pair_sums<const Q: usize>(
    wb: &GroupK<Q>,
    h: usize,
    sums: *const i32,
    pairs: usize,
) -> __m256i {
    let mut total = _mm256_setzero_si256();
    for p in 0..pairs {
        let f = _mm256_loadu_si256(wb.pairs.as_ptr().add(LANES * p + HALF * h) as *const __m256i);
        let sy = _mm256_set1_epi32(std::ptr::read_unaligned(sums.add(p)));
        total = _mm256_add_epi32(total, _mm256_madd_epi16(f, sy));
    }
    total
}
