//! Soft-label arithmetic of AI feedback (Bai et al. 2022 §4.1; Lee et al. 2023 §2.1): option
//! log-probabilities → normalized P(A), content-free calibration (Zhao et al. 2021), averaging
//! of the two presentation orders, clamping of chain-of-thought probabilities, vote means.

/// P(first option) from the log-probabilities of two options, normalized over the pair.
pub fn normalize_pair(logp_a: f64, logp_b: f64) -> f64 {
    // σ(a - b) is softmax over {a, b}, stable for large magnitudes.
    let d = logp_a - logp_b;
    if d >= 0.0 {
        1.0 / (1.0 + (-d).exp())
    } else {
        let e = d.exp();
        e / (1.0 + e)
    }
}

/// Divides out the model's prior for slot (A), `prior_a` = P(A) on a content-free input,
/// and renormalizes: p' ∝ (p / prior_a, (1-p) / (1-prior_a)).
pub fn calibrate(p: f64, prior_a: f64) -> f64 {
    let prior = prior_a.clamp(1e-6, 1.0 - 1e-6);
    let a = p / prior;
    let b = (1.0 - p) / (1.0 - prior);
    a / (a + b)
}

/// P(response_a better) from the second order, where response_a sat in slot (B):
/// `p_slot_a` is that order's P(slot A), i.e. P(response_b better).
pub fn from_swapped(p_slot_a: f64) -> f64 {
    1.0 - p_slot_a
}

/// Clamps into `[lo, hi]` (Bai et al. clamp CoT probabilities to 40–60 %: CoT answers are
/// overconfident).
pub fn clamp(p: f64, range: Option<(f64, f64)>) -> f64 {
    match range {
        Some((lo, hi)) => p.clamp(lo, hi),
        None => p,
    }
}

/// Mean of a non-empty slice.
pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// (votes for A, votes for B) over per-sample probabilities; 0.5 exactly votes for neither.
pub fn votes(ps: &[f64]) -> (usize, usize) {
    (
        ps.iter().filter(|&&p| p > 0.5).count(),
        ps.iter().filter(|&&p| p < 0.5).count(),
    )
}

/// Whether the preferred response differs between the two orders, i.e. the same slot won
/// both times (a tie counts as a flip only against a strict preference): the record's
/// `position_flip`.
pub fn position_flip(p_a_first: f64, p_a_second: f64) -> bool {
    let side = |p: f64| (p > 0.5) as i8 - (p < 0.5) as i8;
    side(p_a_first) != side(p_a_second)
}

/// The distribution over scores 1..=n from the log-probabilities of their n options
/// (softmax over the options).
pub fn score_distribution(logprobs: &[f64]) -> Vec<f64> {
    let max = logprobs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logprobs.iter().map(|l| (l - max).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

/// Expected score `Σ s · P(s)` of a distribution over scores 1..=n.
pub fn expected_score(dist: &[f64]) -> f64 {
    dist.iter()
        .enumerate()
        .map(|(i, p)| (i + 1) as f64 * p)
        .sum()
}

/// P(a's score > b's) + ½ P(equal) for independent draws from the two distributions: the
/// soft label of two single-response ratings.
pub fn p_higher(a: &[f64], b: &[f64]) -> f64 {
    let mut p = 0.0;
    for (i, pa) in a.iter().enumerate() {
        for (j, pb) in b.iter().enumerate() {
            p += pa
                * pb
                * match i.cmp(&j) {
                    std::cmp::Ordering::Greater => 1.0,
                    std::cmp::Ordering::Equal => 0.5,
                    std::cmp::Ordering::Less => 0.0,
                };
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn normalization() {
        // log .3 and log .1 -> .3 / (.3 + .1) = .75.
        close(normalize_pair(0.3f64.ln(), 0.1f64.ln()), 0.75);
        close(normalize_pair(-1000.0, -1000.0), 0.5);
        // Extreme gaps do not overflow.
        close(normalize_pair(0.0, -800.0), 1.0);
        close(normalize_pair(-800.0, 0.0), 0.0);
    }

    #[test]
    fn calibration_divides_out_the_prior() {
        // A model that says .8 for A on everything (prior .8) is neutral after calibration.
        close(calibrate(0.8, 0.8), 0.5);
        // p = .9 with prior .6: (.9/.6) / (.9/.6 + .1/.4) = 1.5 / 1.75 = .857142...
        close(calibrate(0.9, 0.6), 1.5 / 1.75);
        // A neutral prior changes nothing.
        close(calibrate(0.7, 0.5), 0.7);
    }

    #[test]
    fn order_averaging_and_flips() {
        // Order 1: P(slot A) = .8 (a); order 2: P(slot A) = .7 (that is b), so p_a_second = .3.
        let first = 0.8;
        let second = from_swapped(0.7);
        close(second, 0.3);
        close(mean(&[first, second]), 0.55);
        assert!(position_flip(first, second));
        assert!(!position_flip(0.8, 0.6));
        assert!(position_flip(0.5, 0.6));
        assert!(!position_flip(0.5, 0.5));
    }

    #[test]
    fn clamping_and_votes() {
        let samples = [0.95, 0.2, 0.55, 0.5];
        let clamped: Vec<f64> = samples
            .iter()
            .map(|&p| clamp(p, Some((0.4, 0.6))))
            .collect();
        assert_eq!(clamped, vec![0.6, 0.4, 0.55, 0.5]);
        // Mean of clamped: (.6 + .4 + .55 + .5) / 4 = .5125.
        close(mean(&clamped), 0.5125);
        assert_eq!(votes(&samples), (2, 1));
        close(clamp(0.99, None), 0.99);
    }

    #[test]
    fn score_mode_arithmetic() {
        // Options with log-probabilities ln 1, ln 3 (and nothing else): P = 0.25, 0.75.
        let d = score_distribution(&[0.0, 3f64.ln()]);
        close(d[0], 0.25);
        close(d[1], 0.75);
        // Expected score 1·0.25 + 2·0.75.
        close(expected_score(&d), 1.75);
        // a ~ (0.25, 0.75) and b ~ (0.5, 0.5) over scores 1, 2: a > b when a = 2, b = 1
        // (0.75·0.5 = 0.375); ties 0.25·0.5 + 0.75·0.5 = 0.5, half of it 0.25.
        close(p_higher(&d, &[0.5, 0.5]), 0.625);
        // Symmetric: P(b > a) + ½ P(tie) is the complement.
        close(p_higher(&[0.5, 0.5], &d), 0.375);
        // The same distribution against itself is a tie on average.
        close(p_higher(&d, &d), 0.5);
        // Very negative log-probabilities stay finite.
        let d = score_distribution(&[-1000.0, -1001.0]);
        close(d[0] + d[1], 1.0);
        assert!(d[0] > 0.7);
    }
}
