//! Bootstrap resampling: the percentile interval of a mean, used for the difference of two
//! judges' agreement on the pairs both scored (see [`super::significance::paired_test`], which
//! asks for it only from [`super::significance::MIN_PAIRS`] pairs on).
//!
//! Resampling uses `ChaCha8Rng` seeded by the caller, so results are reproducible.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Percentile 95% interval of the mean of `scores` over `resamples` bootstrap resamples; `None`
/// when `scores` is empty or `resamples` is 0.
pub fn bootstrap_mean_ci(scores: &[f64], resamples: usize, seed: u64) -> Option<(f64, f64)> {
    if scores.is_empty() || resamples == 0 {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = scores.len();
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| scores[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    Some((quantile(&means, 0.025), quantile(&means, 0.975)))
}

/// Nearest-rank quantile of sorted, non-empty `xs`.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::label_metrics::mean;

    #[test]
    fn bootstrap_interval_brackets_the_mean() {
        // Constant scores: every resample mean is exactly 1.
        assert_eq!(bootstrap_mean_ci(&[1.0; 5], 200, 7), Some((1.0, 1.0)));
        let scores = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.5, 1.0];
        let (lo, hi) = bootstrap_mean_ci(&scores, 2000, 7).unwrap();
        let m = mean(&scores).unwrap();
        assert!(lo < m && m < hi && lo >= 0.0 && hi <= 1.0, "{lo} {m} {hi}");
        assert_eq!(
            bootstrap_mean_ci(&scores, 2000, 7),
            Some((lo, hi)),
            "seeded"
        );
        assert_eq!(bootstrap_mean_ci(&[], 10, 7), None);
        assert_eq!(bootstrap_mean_ci(&scores, 0, 7), None);
    }
}
