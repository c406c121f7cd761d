//! Attention of one new position over a sequence's cache, on plain f32 slices (CPU decoding).
//!
//! With one query row per head the work is a few thousand multiply-adds per head; as tensor
//! operations it would be some twenty small ops per sequence and layer, whose fixed cost is
//! larger than the arithmetic. The formulas are candle's: `rope_i`'s rotation and
//! `softmax_last_dim`'s max-subtracted exponentials.

/// Rotates each head's pairs `(x[2i], x[2i + 1])` by the position's angles (`cos`, `sin`: one
/// value per pair), in place; `x` holds whole heads of `head_dim` values.
pub fn rope_interleaved(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    for head in x.chunks_exact_mut(head_dim) {
        for (i, pair) in head.chunks_exact_mut(2).enumerate() {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * cos[i] - b * sin[i];
            pair[1] = a * sin[i] + b * cos[i];
        }
    }
}

/// Rotates each head's pairs `(x[i], x[i + d/2])` by the position's angles, in place (the
/// NEOX layout of Qwen, Phi-3 and Gemma; candle's `rope`).
pub fn rope_halves(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        let (lo, hi) = head.split_at_mut(half);
        for i in 0..half {
            let (a, b) = (lo[i], hi[i]);
            lo[i] = a * cos[i] - b * sin[i];
            hi[i] = a * sin[i] + b * cos[i];
        }
    }
}

/// Head counts and size of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Scores are `q · k · scale` (usually 1/√head_dim).
    pub scale: f32,
}

/// `out[h] = softmax(q[h] · K[g]ᵀ · scale) · V[g]` for every query head `h` (key/value head
/// `g = h / (heads / kv_heads)`), over positions `first..len` of buffers laid out
/// `[kv_heads, capacity, head_dim]` (`first` > 0 for a sliding window). `q` and `out` hold
/// `heads · head_dim` values.
pub fn attend_one(
    q: &[f32],
    (k, v): (&[f32], &[f32]),
    shape: Heads,
    (capacity, first, len): (usize, usize, usize),
    out: &mut [f32],
) {
    let d = shape.head_dim;
    let group = shape.heads / shape.kv_heads;
    let scale = shape.scale;
    let mut scores = vec![0f32; len - first];
    for (h, (qh, oh)) in q.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
        let base = (h / group) * capacity * d;
        let keys = &k[base + first * d..base + len * d];
        let values = &v[base + first * d..base + len * d];
        for (s, key) in scores.iter_mut().zip(keys.chunks_exact(d)) {
            *s = dot(qh, key) * scale;
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        oh.fill(0.0);
        for (s, value) in scores.iter().zip(values.chunks_exact(d)) {
            let p = s / sum;
            for (o, x) in oh.iter_mut().zip(value) {
                *o += p * x;
            }
        }
    }
}

/// `Σ a_i · b_i` with eight partial sums (lanes the compiler maps onto one vector register;
/// a single running sum would be left scalar, float addition not being reassociable).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    let pairs = [
        lanes[0] + lanes[4],
        lanes[1] + lanes[5],
        lanes[2] + lanes[6],
        lanes[3] + lanes[7],
    ];
    (pairs[0] + pairs[2]) + (pairs[1] + pairs[3]) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_returns_its_value_and_equal_keys_average() {
        let shape = Heads {
            heads: 2,
            kv_heads: 1,
            head_dim: 2,
            scale: 1.0 / 2f32.sqrt(),
        };
        // Capacity 3, two valid positions; the third slot holds garbage that must be ignored.
        let k = [1.0, 0.0, 1.0, 0.0, 9.0, 9.0];
        let v = [2.0, 4.0, 6.0, 8.0, 100.0, 100.0];
        let mut out = [0f32; 4];
        attend_one(&[0.5, 0.5, -3.0, 1.0], (&k, &v), shape, (3, 0, 2), &mut out);
        // Equal keys: equal weights whatever the query, so both heads get the mean value.
        assert_eq!(out, [4.0, 6.0, 4.0, 6.0]);
        attend_one(&[0.5, 0.5, 0.0, 0.0], (&k, &v), shape, (3, 0, 1), &mut out);
        assert_eq!(out, [2.0, 4.0, 2.0, 4.0]);
    }

    #[test]
    fn scores_follow_the_softmax() {
        let shape = Heads {
            heads: 1,
            kv_heads: 1,
            head_dim: 1,
            scale: 1.0,
        };
        // Scores q·k/√1 = 0 and ln 3: weights 1/4 and 3/4.
        let (k, v) = ([0.0f32, 3f32.ln()], [4.0f32, 8.0]);
        let mut out = [0f32];
        attend_one(&[1.0], (&k, &v), shape, (2, 0, 2), &mut out);
        assert!((out[0] - 7.0).abs() < 1e-5, "{}", out[0]);
        // A window of one key: only the last position counts.
        attend_one(&[1.0], (&k, &v), shape, (2, 1, 2), &mut out);
        assert_eq!(out[0], 8.0);
    }

    #[test]
    fn dot_matches_the_plain_sum() {
        let a: Vec<f32> = (0..21).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..21).map(|i| 3.0 - i as f32).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_eq!(dot(&a, &b), plain); // small integers and halves: exact either way
        assert_eq!(dot(&[], &[]), 0.0);
    }

    #[test]
    fn rope_rotates_pairs() {
        let mut x = [1.0, 0.0, 0.0, 2.0];
        let (c, s) = (0.0f32, 1.0f32); // a quarter turn
        rope_interleaved(&mut x, 4, &[c, 1.0], &[s, 0.0]);
        assert_eq!(x, [0.0, 1.0, 0.0, 2.0]);
        // Halves: pairs (0, 2) and (1, 3).
        let mut x = [1.0, 0.0, 0.0, 2.0];
        rope_halves(&mut x, 4, &[c, 1.0], &[s, 0.0]);
        assert_eq!(x, [0.0, 0.0, 1.0, 2.0]);
    }
}
