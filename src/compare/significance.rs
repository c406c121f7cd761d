//! Statements that hold at small n: the Wilson interval of an agreement rate, the verdict
//! against chance read from it, and the exact paired sign test of two judges.
//!
//! A percentile bootstrap cannot speak for a handful of pairs (on 4 pairs every resample of an
//! all-wrong judge is all wrong: "0.0 % [0.0, 0.0]"); the Wilson score interval and an exact
//! binomial test are valid at any n. Below [`MIN_PAIRS`] scored pairs no verdict is given at all.

use serde::Serialize;

use crate::label_metrics::wilson_interval;

/// Fewer scored pairs than this: "too few pairs to tell", whatever the interval says. At 10
/// pairs the exact sign test can first reach p < 0.05 with one dissenting pair (9:1 gives
/// p = 0.021) and Wilson's coverage is near its nominal 95 %.
pub const MIN_PAIRS: usize = 10;

/// Agreement with humans against chance (50 %), read from the Wilson interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChanceVerdict {
    /// Fewer than [`MIN_PAIRS`] scored pairs.
    TooFewPairs,
    /// The interval lies below 50 %: the labels are inverted more often than not.
    BelowChance,
    /// The interval contains 50 %.
    Chance,
    /// The interval lies above 50 %.
    AboveChance,
}

/// The 95 % Wilson interval of an agreement of `successes` (ties counted half) out of `n`
/// scored pairs, `None` without pairs. Counting a tie as half a success treats it as a coin
/// flip, which overstates its variance: the interval errs wide.
pub fn agreement_interval(successes: f64, n: usize) -> Option<(f64, f64)> {
    (n > 0).then(|| wilson_interval(successes, n as f64))
}

/// The verdict for `n` scored pairs whose agreement interval is `ci`.
pub fn chance_verdict(n: usize, ci: (f64, f64)) -> ChanceVerdict {
    if n < MIN_PAIRS {
        ChanceVerdict::TooFewPairs
    } else if ci.1 < 0.5 {
        ChanceVerdict::BelowChance
    } else if ci.0 > 0.5 {
        ChanceVerdict::AboveChance
    } else {
        ChanceVerdict::Chance
    }
}

/// Two-sided exact sign test: the probability, with `better + worse` discordant pairs each
/// going either way with probability ½, of a split at least as uneven as the one seen
/// (`2 · P(X ≤ min)`, capped at 1; 1 without discordant pairs). Up to 120 discordant pairs the
/// binomial coefficients are summed exactly in integers; beyond, in log space, so any n works.
pub fn sign_test_p(better: usize, worse: usize) -> f64 {
    let m = better + worse;
    let k = better.min(worse);
    if m == 0 {
        return 1.0;
    }
    if m <= 120 {
        // C(m, i) and their sum stay below 2^120.
        let (mut c, mut sum) = (1u128, 1u128);
        for i in 1..=k {
            c = c * (m - i + 1) as u128 / i as u128;
            sum += c;
        }
        return (2.0 * sum as f64 / 2f64.powi(m as i32)).min(1.0);
    }
    // ln C(m, i) - m ln 2, built up term by term.
    let ln_half_m = -(m as f64) * std::f64::consts::LN_2;
    let mut ln_c = 0.0f64;
    let mut terms = Vec::with_capacity(k + 1);
    for i in 0..=k {
        if i > 0 {
            ln_c += ((m - i + 1) as f64).ln() - (i as f64).ln();
        }
        terms.push(ln_c + ln_half_m);
    }
    let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tail = top.exp() * terms.iter().map(|t| (t - top).exp()).sum::<f64>();
    (2.0 * tail).min(1.0)
}

/// A further judge against the baseline on the pairs both scored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairedTest {
    /// Pairs scored (human chose) in both files.
    pub n: usize,
    /// mean(candidate) - mean(baseline) of the agreement scores (ties ½).
    pub diff: f64,
    /// Pairs on which the candidate's score is higher.
    pub better: usize,
    /// Pairs on which the candidate's score is lower.
    pub worse: usize,
    /// Exact two-sided sign test of `better` against `worse`.
    pub p_value: f64,
    /// Paired percentile-bootstrap 95 % interval of `diff`; `None` with `bootstrap = 0` or
    /// fewer than [`MIN_PAIRS`] pairs.
    pub ci: Option<(f64, f64)>,
    /// Fewer than [`MIN_PAIRS`] pairs: no verdict.
    pub too_few_pairs: bool,
}

/// Tests `second` (candidate) against `first` (baseline): `first[i]` and `second[i]` are the
/// two judges' agreement scores on pair `i`. `None` when no pair was scored by both.
pub fn paired_test(
    first: &[f64],
    second: &[f64],
    resamples: usize,
    seed: u64,
) -> Option<PairedTest> {
    let n = first.len().min(second.len());
    if n == 0 {
        return None;
    }
    let diffs: Vec<f64> = (0..n).map(|i| second[i] - first[i]).collect();
    let better = diffs.iter().filter(|&&d| d > 0.0).count();
    let worse = diffs.iter().filter(|&&d| d < 0.0).count();
    let too_few_pairs = n < MIN_PAIRS;
    let ci = if too_few_pairs {
        None
    } else {
        super::bootstrap::bootstrap_mean_ci(&diffs, resamples, seed)
    };
    Some(PairedTest {
        n,
        diff: diffs.iter().sum::<f64>() / n as f64,
        better,
        worse,
        p_value: sign_test_p(better, worse),
        ci,
        too_few_pairs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn compare_on_four_pairs_uses_small_n_valid_statistics() {
        // Wilson 95 % for 3 of 4, z = 1.959964: centre (0.75 + z²/8) / (1 + z²/4) = 0.627518,
        // half-width z·sqrt(0.75·0.25/4 + z²/64) / (1 + z²/4) = 0.326876 -> [0.300642, 0.954413].
        let (lo, hi) = agreement_interval(3.0, 4).unwrap();
        assert!(close(lo, 0.300_642) && close(hi, 0.954_413), "{lo} {hi}");
        // 0 of 4: [0, 2·(z²/8)/(1 + z²/4)] = [0, 0.489891]; below 0.5, but n = 4 < 10.
        let ci = agreement_interval(0.0, 4).unwrap();
        assert!(ci.0 == 0.0 && close(ci.1, 0.489_891), "{ci:?}");
        assert_eq!(chance_verdict(4, ci), ChanceVerdict::TooFewPairs);
        assert_eq!(agreement_interval(0.0, 0), None);
        // Exact two-sided sign test, 2·sum_{i≤k} C(m, i) / 2^m:
        // 2:0 -> 2·1/4 = 0.5; 9:1 -> 2·(1 + 10)/1024 = 0.021484375;
        // 8:2 -> 2·(1 + 10 + 45)/1024 = 0.109375; 10:0 -> 2/1024; 1:0 and 0:0 -> 1.
        assert!(close(sign_test_p(2, 0), 0.5));
        assert!(close(sign_test_p(1, 9), 0.021_484_375));
        assert!(close(sign_test_p(8, 2), 0.109_375));
        assert!(close(sign_test_p(10, 0), 2.0 / 1024.0));
        assert_eq!((sign_test_p(1, 0), sign_test_p(0, 0)), (1.0, 1.0));
        // 30:20 -> 0.202639 (sum of C(50, i), i ≤ 20, times 2 / 2^50, summed exactly).
        assert!(close(sign_test_p(30, 20), 0.202_638_751));
        // An even split of an odd count is exactly 1 (P(X ≤ 13) = 1/2 for m = 27).
        assert_eq!(sign_test_p(14, 13), 1.0);
        // Past the exact branch (m = 121 > 120) the log-space sum matches Python's exact
        // 2·sum(comb(121, i) for i ≤ 51) / 2^121 = 0.1013676535; large n stays finite: 600:400
        // is far in the tail but not zero.
        assert!((sign_test_p(70, 51) - 0.101_367_653_5).abs() < 1e-9);
        let p = sign_test_p(600, 400);
        assert!(p > 0.0 && p < 1e-9, "{p}");
    }

    #[test]
    fn chance_verdicts_from_the_interval() {
        // 1 of 12: Wilson [0.014865, 0.353880] lies below one half: inverted labels.
        let ci = agreement_interval(1.0, 12).unwrap();
        assert!(close(ci.0, 0.014_865) && close(ci.1, 0.353_880), "{ci:?}");
        assert_eq!(chance_verdict(12, ci), ChanceVerdict::BelowChance);
        // 6 of 12: [0.253782, 0.746218] holds one half.
        let ci = agreement_interval(6.0, 12).unwrap();
        assert_eq!(chance_verdict(12, ci), ChanceVerdict::Chance);
        // 12 of 12: [1 / (1 + z²/12), 1] = [0.757506, 1].
        let ci = agreement_interval(12.0, 12).unwrap();
        assert!(close(
            ci.0,
            1.0 / (1.0 + 1.959_963_984_540_054f64.powi(2) / 12.0)
        ));
        assert_eq!(chance_verdict(12, ci), ChanceVerdict::AboveChance);
    }

    #[test]
    fn paired_test_on_four_pairs_gives_no_verdict_or_interval() {
        // Baseline wrong on all four; candidate right on two: +50 points, 2 better, 0 worse,
        // exact p = 0.5, too few pairs, no bootstrap interval.
        let t = paired_test(&[0.0; 4], &[1.0, 1.0, 0.0, 0.0], 2000, 0).unwrap();
        assert_eq!(
            (t.n, t.better, t.worse, t.ci, t.too_few_pairs),
            (4, 2, 0, None, true)
        );
        assert!(close(t.diff, 0.5) && close(t.p_value, 0.5));
        // Ten pairs, candidate better on 9 and worse on 1 (a tie vs a right answer is worse).
        let first = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let second = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5];
        let t = paired_test(&first, &second, 500, 1).unwrap();
        assert_eq!((t.better, t.worse, t.too_few_pairs), (9, 1, false));
        // diff = (8 + 0.5 - 0.5) / 10 = 0.8.
        assert!(close(t.diff, 0.8) && close(t.p_value, 0.021_484_375));
        let (lo, hi) = t.ci.unwrap();
        assert!(lo <= 0.8 && 0.8 <= hi, "{lo} {hi}");
        assert_eq!(paired_test(&first, &second, 0, 1).unwrap().ci, None);
        assert_eq!(paired_test(&[], &[], 10, 0), None);
    }
}
