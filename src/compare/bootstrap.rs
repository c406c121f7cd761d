//! Bootstrap resampling: percentile intervals of a mean and a paired test of two judges.
//!
//! Resampling uses `ChaCha8Rng` seeded by the caller, so results are reproducible.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Percentile 95% interval of the mean of `scores` over `resamples` bootstrap resamples.
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

/// Paired bootstrap comparison of two judges' agreement on the same pairs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairedTest {
    pub n: usize,
    /// mean(second) - mean(first).
    pub diff: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Two-sided: `(1 + #{b : |d_b - diff| >= |diff|}) / (1 + resamples)`.
    pub p_value: f64,
}

/// Resamples pairs (the same indices for both judges) to test `mean(second) - mean(first)`.
///
/// `first[i]` and `second[i]` are the two judges' agreement scores on pair `i`. The p-value
/// compares the centered resampled differences with the observed one, so identical inputs give 1.
pub fn paired_bootstrap(
    first: &[f64],
    second: &[f64],
    resamples: usize,
    seed: u64,
) -> Option<PairedTest> {
    let n = first.len().min(second.len());
    if n == 0 || resamples == 0 {
        return None;
    }
    let diffs: Vec<f64> = (0..n).map(|i| second[i] - first[i]).collect();
    let diff = diffs.iter().sum::<f64>() / n as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut boot: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| diffs[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    // A tolerance so that float noise in a zero difference still counts as "as extreme".
    let extreme = boot
        .iter()
        .filter(|&&d| (d - diff).abs() >= diff.abs() - 1e-12)
        .count();
    boot.sort_by(f64::total_cmp);
    Some(PairedTest {
        n,
        diff,
        ci_low: quantile(&boot, 0.025),
        ci_high: quantile(&boot, 0.975),
        p_value: (1 + extreme) as f64 / (1 + resamples) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::label_metrics::mean;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

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
    }

    #[test]
    fn paired_bootstrap_identical_and_different() {
        let s = [1.0, 0.0, 1.0, 0.5, 1.0, 0.0];
        let t = paired_bootstrap(&s, &s, 500, 3).unwrap();
        assert_eq!((t.diff, t.ci_low, t.ci_high), (0.0, 0.0, 0.0));
        assert_eq!(t.p_value, 1.0);
        // Second judge right on all 30 pairs, first on 10 of 30: diff = 1 - 1/3 = 2/3.
        let first: Vec<f64> = (0..30)
            .map(|i| if i % 3 == 0 { 1.0 } else { 0.0 })
            .collect();
        let t = paired_bootstrap(&first, &[1.0; 30], 2000, 3).unwrap();
        assert!(close(t.diff, 2.0 / 3.0));
        assert!(t.ci_low > 0.3 && t.ci_high <= 1.0, "{t:?}");
        // No centered resample comes near 2/3, so p is the floor 1 / 2001.
        assert!(close(t.p_value, 1.0 / 2001.0), "{t:?}");
        assert_eq!(paired_bootstrap(&[], &[], 10, 0), None);
    }
}
