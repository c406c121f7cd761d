//! Token sampling from next-token logits: greedy, temperature and nucleus (top-p).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::SamplingParams;

/// A seeded sampler; the same seed and logits give the same tokens on every machine.
pub struct Sampler {
    rng: ChaCha8Rng,
    temperature: f64,
    top_p: f64,
}

impl Sampler {
    pub fn new(params: &SamplingParams, seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            temperature: params.temperature,
            top_p: params.top_p,
        }
    }

    /// Picks the next token from raw logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        sample_token(logits, self.temperature, self.top_p, self.rng.random())
    }
}

/// Picks a token given a uniform draw `u` in [0, 1).
///
/// Temperature 0 (or below) is greedy. Otherwise probabilities are softmax(logits / T),
/// restricted to the smallest set of most likely tokens whose mass reaches `top_p`,
/// and `u` is mapped through their cumulative distribution.
pub fn sample_token(logits: &[f32], temperature: f64, top_p: f64, u: f64) -> u32 {
    if temperature <= 0.0 {
        return argmax(logits);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l as f64 - max) / temperature).exp()))
        .filter(|(_, p)| *p > 0.0)
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut keep = probs.len();
    if top_p < 1.0 {
        let mut acc = 0.0;
        for (k, p) in probs.iter().enumerate() {
            acc += p.1 / total;
            if acc >= top_p {
                keep = k + 1;
                break;
            }
        }
    }
    let probs = &probs[..keep];
    let kept: f64 = probs.iter().map(|p| p.1).sum();
    let target = u * kept;
    let mut acc = 0.0;
    for &(id, p) in probs {
        acc += p;
        if acc > target {
            return id;
        }
    }
    probs.last().map_or(0, |p| p.0)
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_argmax() {
        assert_eq!(sample_token(&[0.1, 2.0, 1.0], 0.0, 1.0, 0.99), 1);
    }

    #[test]
    fn cumulative_mapping() {
        // logits ln(1), ln(2), ln(1) at T=1 -> probs .25 .5 .25, sorted: id1 (.5), id0 (.25), id2 (.25).
        let l = [0.0f32, 2f32.ln(), 0.0];
        assert_eq!(sample_token(&l, 1.0, 1.0, 0.10), 1);
        assert_eq!(sample_token(&l, 1.0, 1.0, 0.60), 0);
        assert_eq!(sample_token(&l, 1.0, 1.0, 0.90), 2);
    }

    #[test]
    fn top_p_drops_tail() {
        // With top_p = 0.5 only id1 (mass .5) survives, whatever u is.
        let l = [0.0f32, 2f32.ln(), 0.0];
        for u in [0.0, 0.3, 0.99] {
            assert_eq!(sample_token(&l, 1.0, 0.5, u), 1);
        }
    }

    #[test]
    fn frequencies_follow_softmax() {
        // probs .25/.5/.25: 20k draws stay within 1.5 points of each.
        let l = [0.0f32, 2f32.ln(), 0.0];
        let mut s = Sampler::new(
            &SamplingParams {
                temperature: 1.0,
                top_p: 1.0,
                ..Default::default()
            },
            7,
        );
        let mut counts = [0usize; 3];
        for _ in 0..20_000 {
            counts[s.sample(&l) as usize] += 1;
        }
        let f: Vec<f64> = counts.iter().map(|&c| c as f64 / 20_000.0).collect();
        assert!(
            (f[0] - 0.25).abs() < 0.015 && (f[1] - 0.5).abs() < 0.015,
            "{f:?}"
        );
    }
}
