//! Critic-free advantage estimators of the policy trainer, as small pure functions pinned to
//! hand-computed numbers: GRPO (Shao et al. 2024, DeepSeekMath §4.1.2: each response's score
//! against its group of G responses to the same prompt, mean-centred and optionally divided
//! by the group's standard deviation — without it, Dr. GRPO, Liu et al. 2025), RLOO
//! (Ahmadian et al. 2024: the mean of the other G − 1 responses as baseline) and REINFORCE
//! with a batch baseline (the scores whitened across the step, as OpenRLHF's `reinforce`).
//! GAE with a value head stays in [`ppo_math`](super::ppo_math).
//!
//! The advantage of a response is one number given to each of its tokens; the KL to the
//! reference is either subtracted from the score (`β·Σ KL`) or added to the loss as
//! `β · mean k3` ([`k3_kl_loss`], GRPO's form).

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use super::ppo_math::{masked_mean, mean_var, whiten};

/// How the policy trainer turns scores into advantages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AdvantageEstimator {
    /// Value head + GAE(γ, λ) on per-token rewards (PPO).
    #[default]
    Gae,
    /// Score minus the group mean, divided by the group's standard deviation unless
    /// `scale_rewards` is off.
    Grpo,
    /// Score minus the mean of the other responses to the same prompt.
    Rloo,
    /// Scores whitened across the whole step (batch-mean baseline).
    Reinforce,
}

impl crate::choice::Choice for AdvantageEstimator {
    const CHOICES: &'static [(&'static str, Self, &'static str)] = &[
        (
            "gae",
            Self::Gae,
            "value head + GAE on per-token rewards (PPO)",
        ),
        (
            "grpo",
            Self::Grpo,
            "score minus the group mean, over the group's standard deviation",
        ),
        (
            "rloo",
            Self::Rloo,
            "score minus the mean of the other responses to the prompt",
        ),
        (
            "reinforce",
            Self::Reinforce,
            "scores whitened across the step (batch-mean baseline)",
        ),
    ];
}

impl AdvantageEstimator {
    /// Whether the estimator needs a value head.
    pub fn uses_critic(self) -> bool {
        self == AdvantageEstimator::Gae
    }
}

/// Added to GRPO's group standard deviation (TRL's value): a group whose scores all agree
/// gets advantages 0, not a division by zero.
pub const GROUP_STD_EPS: f64 = 1e-4;

/// Sequence-level advantages of `scores`, which come in consecutive groups of `group`
/// responses to one prompt. `scale` divides GRPO's centred scores by the group's sample
/// standard deviation (n − 1).
pub fn group_advantages(
    scores: &[f64],
    group: usize,
    estimator: AdvantageEstimator,
    scale: bool,
) -> Vec<f64> {
    assert!(
        group > 0 && scores.len().is_multiple_of(group),
        "{} scores are not whole groups of {group}",
        scores.len()
    );
    match estimator {
        AdvantageEstimator::Reinforce => whiten(scores, false),
        AdvantageEstimator::Gae => panic!("GAE needs per-token values, not group advantages"),
        AdvantageEstimator::Grpo | AdvantageEstimator::Rloo => scores
            .chunks(group)
            .flat_map(|g| {
                let (mean, var) = mean_var(g);
                let n = g.len() as f64;
                g.iter()
                    .map(move |&s| match estimator {
                        AdvantageEstimator::Rloo => {
                            if g.len() < 2 {
                                0.0
                            } else {
                                s - (mean * n - s) / (n - 1.0)
                            }
                        }
                        _ => {
                            let centred = s - mean;
                            if scale {
                                let sample_std = if g.len() < 2 {
                                    0.0
                                } else {
                                    (var * n / (n - 1.0)).sqrt()
                                };
                                centred / (sample_std + GROUP_STD_EPS)
                            } else {
                                centred
                            }
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect(),
    }
}

/// `β · mean k3(π ‖ π_ref)` over the masked tokens, with `k3 = e^{ρ − π} − (ρ − π) − 1` on
/// the log-probabilities of the sampled tokens (never negative; its gradient in `logp` is
/// `1 − e^{ρ − π}`, which pulls the policy back towards the reference).
pub fn k3_kl_loss(logp: &Tensor, logp_ref: &Tensor, mask: &Tensor, beta: f64) -> Result<Tensor> {
    let d = (logp_ref - logp)?;
    let k3 = ((d.exp()? - &d)? - 1.0)?;
    masked_mean(&k3, mask)? * beta
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn grpo_centres_and_scales_each_group() {
        // Group 1: 1, 2, 3, 6 → mean 3; sample std = sqrt((4 + 1 + 0 + 9)/3) = sqrt(14/3)
        // = 2.1602469; advantages (−2, −1, 0, 3)/(2.1602469 + ε).
        // Group 2: 5, 5, 5, 5 → all 0 (the ε keeps the division finite).
        let scores = [1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0];
        let s = 2.160_246_9 + GROUP_STD_EPS;
        let got = group_advantages(&scores, 4, AdvantageEstimator::Grpo, true);
        close(
            &got,
            &[-2.0 / s, -1.0 / s, 0.0, 3.0 / s, 0.0, 0.0, 0.0, 0.0],
        );
        // Dr. GRPO: centred only.
        let got = group_advantages(&scores, 4, AdvantageEstimator::Grpo, false);
        close(&got, &[-2.0, -1.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn rloo_uses_the_mean_of_the_others() {
        // 1 − (2 + 3 + 6)/3 = −2.6667; 2 − 10/3 = −1.3333; 3 − 3 = 0; 6 − 2 = 4.
        let got = group_advantages(&[1.0, 2.0, 3.0, 6.0], 4, AdvantageEstimator::Rloo, true);
        close(&got, &[-8.0 / 3.0, -4.0 / 3.0, 0.0, 4.0]);
        // RLOO is G/(G − 1) × the centred score: (−2, −1, 0, 3)·4/3.
        // Groups of two: a − b and b − a.
        let got = group_advantages(&[1.0, 4.0, 2.0, 2.0], 2, AdvantageEstimator::Rloo, true);
        close(&got, &[-3.0, 3.0, 0.0, 0.0]);
    }

    #[test]
    fn reinforce_whitens_across_the_step() {
        // 1, 2, 3, 6 → mean 3, population variance 14/4 = 3.5, std 1.8708287.
        let got = group_advantages(
            &[1.0, 2.0, 3.0, 6.0],
            1,
            AdvantageEstimator::Reinforce,
            true,
        );
        let s = 1.870_828_7;
        close(&got, &[-2.0 / s, -1.0 / s, 0.0, 3.0 / s]);
    }

    #[test]
    fn k3_loss_matches_hand_values_and_gradient() -> anyhow::Result<()> {
        // logp − logp_ref = 0.5 and −0.2 (masked in), 3.0 (masked out); β = 0.1.
        // k3(d = −0.5) = e^{−0.5} + 0.5 − 1 = 0.1065307; k3(d = 0.2) = e^{0.2} − 0.2 − 1
        // = 0.0214028; mean 0.0639667; × 0.1 = 0.00639667.
        let dev = &Device::Cpu;
        let logp = Var::from_tensor(&Tensor::new(&[-1.0f64, -2.2, 1.0], dev)?)?;
        let logp_ref = Tensor::new(&[-1.5f64, -2.0, -2.0], dev)?;
        let mask = Tensor::new(&[1.0f64, 1.0, 0.0], dev)?;
        let loss = k3_kl_loss(logp.as_tensor(), &logp_ref, &mask, 0.1)?;
        assert!((loss.to_scalar::<f64>()? - 0.006_396_67).abs() < 1e-8);
        // d loss/d logp_i = β/2 · (1 − e^{ρ − π}): 0.05·(1 − e^{−0.5}) = 0.0196735,
        // 0.05·(1 − e^{0.2}) = −0.0110701, 0 where masked out.
        let g = loss.backward()?;
        let g = g.get(logp.as_tensor()).unwrap().to_vec1::<f64>()?;
        close(&g, &[0.019_673_5, -0.011_070_1, 0.0]);
        Ok(())
    }
}
