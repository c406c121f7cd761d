//! Held-out metrics of a DPO policy (Rafailov et al. 2023 §5; TRL's `rewards/*` logs) from
//! the policy's and the frozen reference's summed response log-probabilities.
//!
//! The implicit reward of a response is `β·(log π − log ρ)`. On pairs with a decided label
//! (p ≠ ½): the implicit-reward accuracy (chosen reward above the rejected one, a tie counts
//! ½), the mean reward margin, and the drift `log π − log ρ` of the chosen and rejected
//! responses (DPO is known to lower both; a falling chosen drift is worth watching). The
//! log-prob accuracy compares per-token mean log-probabilities of the policy alone, so it is
//! informative before training too, when every implicit reward is 0.

use super::dpo_loss::{pair_loss, LossSpec};
use serde::{Deserialize, Serialize};

/// Log-probabilities of one pair's responses under the policy and the reference, with the
/// responses' token counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairLogps {
    /// Policy `[a, b]`, summed over response tokens.
    pub policy: [f64; 2],
    /// Reference `[a, b]`.
    pub reference: [f64; 2],
    /// Response tokens `[a, b]`.
    pub tokens: [usize; 2],
}

impl PairLogps {
    /// `h = (π_a − ρ_a) − (π_b − ρ_b)`, on per-token means when `normalized`.
    pub fn log_ratio_difference(&self, normalized: bool) -> f64 {
        let ratio = |i: usize| {
            let r = self.policy[i] - self.reference[i];
            if normalized {
                r / self.tokens[i].max(1) as f64
            } else {
                r
            }
        };
        ratio(0) - ratio(1)
    }
}

/// Metrics of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoEval {
    /// Steps done when measured.
    pub step: usize,
    /// Pairs scored.
    pub pairs: usize,
    /// Pairs with p ≠ ½ (those in the accuracy, margin and drifts).
    pub decided: usize,
    /// Fraction of decided pairs whose chosen implicit reward is higher (ties ½).
    pub accuracy: f64,
    /// Mean `β·(h_chosen − h_rejected)`.
    pub margin: f64,
    /// Mean `log π − log ρ` of the chosen responses (nats per response).
    pub chosen_drift: f64,
    /// Mean `log π − log ρ` of the rejected responses.
    pub rejected_drift: f64,
    /// Fraction of decided pairs whose chosen response has the higher per-token mean
    /// log-probability under the policy (ties ½).
    pub logp_accuracy: f64,
    /// Loss of the pairs the loss keeps (ties too for cdpo and ipo), weighted by their
    /// sources' weights as in training: `Σ w·ℓ / Σ w`.
    pub loss: f64,
}

fn score(better: f64, worse: f64) -> f64 {
    if better > worse {
        1.0
    } else if better == worse {
        0.5
    } else {
        0.0
    }
}

/// The metrics of pairs with labels `p_a` and loss weights `weight` after `step` steps.
pub fn dpo_metrics(
    spec: &LossSpec,
    step: usize,
    pairs: &[PairLogps],
    p_a: &[f64],
    weight: &[f64],
) -> DpoEval {
    let (mut decided, mut acc, mut margin, mut chosen, mut rejected, mut logp_acc) =
        (0usize, 0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut loss, mut kept_weight) = (0.0, 0.0);
    for ((x, &p), &w) in pairs.iter().zip(p_a).zip(weight) {
        if spec.loss.keeps(p) {
            let h = x.log_ratio_difference(spec.loss.length_normalized());
            loss += w * pair_loss(spec, h, p);
            kept_weight += w;
        }
        if p == 0.5 {
            continue;
        }
        let (c, r) = if p > 0.5 { (0, 1) } else { (1, 0) };
        let drift = |i: usize| x.policy[i] - x.reference[i];
        let mean = |i: usize| x.policy[i] / x.tokens[i].max(1) as f64;
        decided += 1;
        acc += score(drift(c), drift(r));
        margin += spec.beta * (drift(c) - drift(r));
        chosen += drift(c);
        rejected += drift(r);
        logp_acc += score(mean(c), mean(r));
    }
    let d = decided.max(1) as f64;
    DpoEval {
        step,
        pairs: pairs.len(),
        decided,
        accuracy: acc / d,
        margin: margin / d,
        chosen_drift: chosen / d,
        rejected_drift: rejected / d,
        logp_accuracy: logp_acc / d,
        loss: if kept_weight > 0.0 {
            loss / kept_weight
        } else {
            f64::NAN
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::dpo_loss::DpoLoss;

    const SIGMOID: LossSpec = LossSpec {
        loss: DpoLoss::Sigmoid,
        beta: 0.5,
        label_smoothing: 0.0,
    };

    fn hand_pairs() -> [PairLogps; 3] {
        [
            // a chosen: drifts +1 (a) and −1 (b) → correct, margin 0.5·2 = 1.
            // Per-token means −4/2 = −2 (a) vs −9/3 = −3 (b) → log-prob accuracy 1.
            PairLogps {
                policy: [-4.0, -9.0],
                reference: [-5.0, -8.0],
                tokens: [2, 3],
            },
            // b chosen: drifts a 0, b −2 → wrong, margin 0.5·(−2 − 0) = −1.
            // Means −3/3 = −1 (a) vs −6/2 = −3 (b): chosen b lower → 0.
            PairLogps {
                policy: [-3.0, -6.0],
                reference: [-3.0, -4.0],
                tokens: [3, 2],
            },
            // A tie label: in the loss of cdpo only, not in accuracy.
            PairLogps {
                policy: [-1.0, -1.0],
                reference: [-1.0, -1.0],
                tokens: [1, 1],
            },
        ]
    }

    #[test]
    fn dpo_held_out_loss_is_weighted_like_training() {
        // The pairs of `metrics_match_hand_values` from sources of weight 1 and 3 (and 1 for
        // the tie, which sigmoid drops): (1·0.3132617 + 3·1.3132617)/4 = 4.2530468/4
        // = 1.0632617, where the unweighted mean is 0.8132617.
        let m = dpo_metrics(
            &SIGMOID,
            7,
            &hand_pairs(),
            &[1.0, 0.0, 0.5],
            &[1.0, 3.0, 1.0],
        );
        assert!((m.loss - 1.063_261_7).abs() < 1e-6, "{}", m.loss);
        assert_eq!(m.accuracy, 0.5, "accuracy counts pairs, unweighted");
    }

    #[test]
    fn metrics_match_hand_values() {
        let (spec, pairs) = (SIGMOID, hand_pairs());
        let m = dpo_metrics(&spec, 7, &pairs, &[1.0, 0.0, 0.5], &[1.0, 1.0, 1.0]);
        assert_eq!((m.step, m.pairs, m.decided), (7, 3, 2));
        assert_eq!((m.accuracy, m.margin, m.logp_accuracy), (0.5, 0.0, 0.5));
        // Chosen drifts +1 and −2 → −0.5; rejected −1 and 0 → −0.5.
        assert_eq!((m.chosen_drift, m.rejected_drift), (-0.5, -0.5));
        // Loss: h = 2 (p 1): −ln σ(1) = 0.3132617; h = 2 (p 0): −ln σ(−1) = 1.3132617;
        // mean of the two kept pairs = 0.8132617.
        assert!((m.loss - 0.813_261_7).abs() < 1e-6, "{}", m.loss);
        // IPO uses per-token means: pair 1 h = 1/2 − (−1/3) = 0.8333.
        assert!((pairs[0].log_ratio_difference(true) - 5.0 / 6.0).abs() < 1e-12);
    }
}
