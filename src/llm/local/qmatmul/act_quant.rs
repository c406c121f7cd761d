//! Activation rows quantized to 8 bits for the packed kernels (`packed`, `packed_k`), with
//! AVX2: the same numbers as candle's (and llama.cpp's) `quantize_row_q8_0` and
//! `quantize_row_q8_K`, written straight into the kernels' block types. candle's scalar
//! versions took a fifth of a prompt's quantized products.
//!
//! Both round half away from zero, as `f32::round` does.

use std::arch::x86_64::*;

/// `round(v)`, halves away from zero, in each lane.
///
/// # Safety
/// AVX must be available.
#[inline(always)]
unsafe fn round_away(v: __m256) -> __m256 {
    let t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    // `v - t` is exact; a fraction of at least one half moves one unit away from zero.
    let frac = _mm256_sub_ps(v, t);
    let sign = _mm256_and_ps(v, _mm256_set1_ps(-0.0));
    let abs_frac = _mm256_andnot_ps(_mm256_set1_ps(-0.0), frac);
    let up = _mm256_cmp_ps(abs_frac, _mm256_set1_ps(0.5), _CMP_GE_OQ);
    let one = _mm256_or_ps(_mm256_set1_ps(1.0), sign);
    _mm256_add_ps(t, _mm256_and_ps(up, one))
}

/// The largest absolute value of `x` (a multiple of 8 long).
///
/// # Safety
/// AVX must be available.
#[inline(always)]
unsafe fn abs_max(x: &[f32]) -> f32 {
    let mut m = _mm256_setzero_ps();
    for c in x.chunks_exact(8) {
        let v = _mm256_loadu_ps(c.as_ptr());
        m = _mm256_max_ps(m, _mm256_andnot_ps(_mm256_set1_ps(-0.0), v));
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), m);
    lanes.into_iter().fold(0.0, f32::max)
}

/// `round(x · scale)` of 32 values as saturated bytes into `out`, and their sum.
///
/// # Safety
/// AVX2 must be available; `x` and `out` hold 32 values.
#[inline(always)]
unsafe fn quantize_32(x: &[f32], scale: f32, out: &mut [i8]) -> i32 {
    let s = _mm256_set1_ps(scale);
    let mut q = [_mm256_setzero_si256(); 4];
    for (i, q) in q.iter_mut().enumerate() {
        let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(8 * i)), s);
        *q = _mm256_cvtps_epi32(round_away(v));
    }
    let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    // Packing works within 128-bit halves: bytes come out in the order 0 2 1 3 (by 4 i32s
    // of the inputs' halves), put back in place by one permutation of 32-bit groups.
    let w01 = _mm256_packs_epi32(q[0], q[1]);
    let w23 = _mm256_packs_epi32(q[2], q[3]);
    let b = _mm256_packs_epi16(w01, w23);
    let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, b);
    let s = _mm_add_epi32(
        _mm256_castsi256_si128(sum),
        _mm256_extracti128_si256(sum, 1),
    );
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// One block of 32 values as Q8_0 (llama.cpp's `quantize_row_q8_0`): `d = max|x| / 127`
/// (kept as f16, as in the block), `q = round(x / d)`. Returns `(d, Σ q)`.
///
/// # Safety
/// AVX2 must be available; `x` and `qs` hold 32 values.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn q8_0(x: &[f32], qs: &mut [i8; 32]) -> (f32, i32) {
    let d = abs_max(&x[..32]) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let sum = quantize_32(x, id, qs);
    (half::f16::from_f32(d).to_f32(), sum)
}

/// 256 values as Q8_K (llama.cpp's `quantize_row_q8_K`): scale `-128 / max` with `max` the
/// first value of largest magnitude, bytes saturated at 127, and the sums of each 16 bytes.
/// Returns `d`.
///
/// # Safety
/// AVX2 must be available; `x` and `qs` hold 256 values.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn q8_k(x: &[f32], qs: &mut [i8; 256], bsums: &mut [i16; 16]) -> f32 {
    let amax = abs_max(&x[..256]);
    if amax == 0.0 {
        qs.fill(0);
        bsums.fill(0);
        return 0.0;
    }
    let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
    let iscale = -128.0 / max;
    for (c, (x, q)) in x.chunks_exact(32).zip(qs.chunks_exact_mut(32)).enumerate() {
        quantize_32(x, iscale, q);
        for h in 0..2 {
            let bytes = &q[16 * h..16 * h + 16];
            bsums[2 * c + h] = bytes.iter().map(|&b| b as i16).sum();
        }
    }
    1.0 / iscale
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::{BlockQ8K, BlockQ8_0};
    use candle_core::quantized::GgmlType;

    /// `blocks` as bytes.
    ///
    /// # Safety
    /// `T` must be a `repr(C)` block of exactly `size` plain bytes.
    unsafe fn block_bytes<T>(blocks: &[T], size: usize) -> &[u8] {
        assert_eq!(std::mem::size_of::<T>(), size);
        std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(blocks))
    }

    /// Values in [-1, 1) and, in the first block, exact halves (`max = 127`: `x / d` is `x`
    /// itself, so 2.5 and -0.5 are ties), against candle's scalar quantizers, byte for byte.
    #[test]
    fn equal_candles_quantizers() {
        if !std::is_x86_feature_detected!("avx2") || !std::is_x86_feature_detected!("fma") {
            return;
        }
        let mut state = 7u64;
        let mut x: Vec<f32> = (0..512)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        x[..8].copy_from_slice(&[127.0, 2.5, -0.5, 1.5, -3.5, 0.49999997, -126.5, 64.5]);
        x[300] = -3.0; // Q8_K's second block: a negative maximum.
        let mut want = vec![BlockQ8_0::zeros(); 16];
        BlockQ8_0::from_float(&x, &mut want);
        for (b, want) in want.iter().enumerate() {
            let mut qs = [0i8; 32];
            let (d, sum) = unsafe { q8_0(&x[32 * b..32 * b + 32], &mut qs) };
            // SAFETY: BlockQ8_0 is `repr(C)`: f16 d, then 32 bytes.
            let bytes = unsafe { block_bytes(std::slice::from_ref(want), 34) };
            let want_qs: Vec<i8> = bytes[2..].iter().map(|&b| b as i8).collect();
            assert_eq!(qs.as_slice(), want_qs.as_slice(), "Q8_0 block {b}");
            assert_eq!(d, super::super::block32::f16_at(bytes, 0), "Q8_0 block {b}");
            assert_eq!(sum, want_qs.iter().map(|&q| q as i32).sum::<i32>());
        }
        let mut want = vec![BlockQ8K::zeros(); 2];
        BlockQ8K::from_float(&x, &mut want);
        for (b, want) in want.iter().enumerate() {
            let (mut qs, mut bsums) = ([0i8; 256], [0i16; 16]);
            let d = unsafe { q8_k(&x[256 * b..256 * b + 256], &mut qs, &mut bsums) };
            // SAFETY: BlockQ8K is `repr(C)`: f32 d, 256 bytes, 16 i16 sums.
            let bytes = unsafe { block_bytes(std::slice::from_ref(want), 292) };
            let want_qs: Vec<i8> = bytes[4..260].iter().map(|&b| b as i8).collect();
            assert_eq!(qs.as_slice(), want_qs.as_slice(), "Q8_K block {b}");
            assert_eq!(d.to_le_bytes(), bytes[..4], "Q8_K block {b}");
            let want_sums: Vec<i16> = bytes[260..]
                .chunks(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            assert_eq!(bsums.as_slice(), want_sums.as_slice(), "Q8_K block {b}");
        }
    }
}
