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
/// standard deviation (n − 1). A response without a score (`None`: its feedback prompt
/// overflowed the feedback model's context) gets advantage 0 and is left out of its group's
/// statistics (REINFORCE: of the step's), as if it had not been sampled.
pub fn group_advantages(
    scores: &[Option<f64>],
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
        AdvantageEstimator::Reinforce => spread_back(scores, &whiten(&present(scores), false)),
        AdvantageEstimator::Gae => panic!("GAE needs per-token values, not group advantages"),
        AdvantageEstimator::Grpo | AdvantageEstimator::Rloo => scores
            .chunks(group)
            .flat_map(|g| {
                let scored = present(g);
                let (mean, var) = mean_var(&scored);
                let n = scored.len() as f64;
                let adv: Vec<f64> = scored
                    .iter()
                    .map(|&s| match estimator {
                        AdvantageEstimator::Rloo => {
                            if scored.len() < 2 {
                                0.0
                            } else {
                                s - (mean * n - s) / (n - 1.0)
                            }
                        }
                        _ => {
                            let centred = s - mean;
                            if scale {
                                let sample_std = if scored.len() < 2 {
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
                    .collect();
                spread_back(g, &adv)
            })
            .collect(),
    }
}

/// The scores that are there, in order.
fn present(scores: &[Option<f64>]) -> Vec<f64> {
    scores.iter().flatten().copied().collect()
}

/// `values` (one per present score, in order) at the places of the present scores, 0 at the
/// others.
fn spread_back(scores: &[Option<f64>], values: &[f64]) -> Vec<f64> {
    let mut it = values.iter();
    scores
        .iter()
        .map(|s| match s {
            Some(_) => *it.next().expect("one value per present score"),
            None => 0.0,
        })
        .collect()
}

/// The return of each response for the critic-free estimators: the sum of its per-token
/// rewards (its score minus β·Σ KL), `None` where `rewards` has none (an unscored response).
/// With `whiten` the returns are whitened across the step with their mean kept: the
/// per-token rewards are not, since a per-token shift `m·(1 − 1/s)` summed over a response
/// would add a term proportional to its length.
pub fn sequence_returns(rewards: &[Option<Vec<f64>>], whiten_returns: bool) -> Vec<Option<f64>> {
    let sums: Vec<Option<f64>> = rewards
        .iter()
        .map(|r| r.as_ref().map(|r| r.iter().sum()))
        .collect();
    if !whiten_returns {
        return sums;
    }
    let whitened = whiten(&present(&sums), true);
    let mut it = whitened.into_iter();
    sums.iter().map(|s| s.and_then(|_| it.next())).collect()
}

/// Per-token `k3(π ‖ π_ref) = e^{ρ − π} − (ρ − π) − 1` on the log-probabilities of the
/// sampled tokens (never negative; its gradient in `logp` is `1 − e^{ρ − π}`, which pulls
/// the policy back towards the reference).
pub fn k3_per_token(logp: &Tensor, logp_ref: &Tensor) -> Result<Tensor> {
    let d = (logp_ref - logp)?;
    (d.exp()? - &d)? - 1.0
}

/// `β · mean k3(π ‖ π_ref)` over the masked tokens ([`k3_per_token`]).
pub fn k3_kl_loss(logp: &Tensor, logp_ref: &Tensor, mask: &Tensor, beta: f64) -> Result<Tensor> {
    masked_mean(&k3_per_token(logp, logp_ref)?, mask)? * beta
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

    fn some(xs: &[f64]) -> Vec<Option<f64>> {
        xs.iter().copied().map(Some).collect()
    }

    #[test]
    fn whiten_rewards_adds_no_length_term_for_critic_free() {
        use crate::train::ppo_math::whiten_ragged;
        // Two responses scored 2 (3 tokens) and 6 (1 token), no KL: per-token rewards
        // [0, 0, 2] and [6]. Whitening the returns 2 and 6 (mean 4, std 2) with the mean kept:
        // (2 − 4)/2 + 4 = 3 and (6 − 4)/2 + 4 = 5 — the order of the scores is kept.
        let rows = [vec![0.0, 0.0, 2.0], vec![6.0]];
        let got = sequence_returns(&[Some(rows[0].clone()), Some(rows[1].clone())], true);
        assert!((got[0].unwrap() - 3.0).abs() < 1e-6 && (got[1].unwrap() - 5.0).abs() < 1e-6);
        // Whitening the tokens instead (flat [0, 0, 2, 6]: mean 2, std √6 = 2.4494897) with
        // the mean kept and summing, as the trainer did: the 3-token response gets
        // 2·((0 − 2)/√6 + 2) + (2 − 2)/√6 + 2 = 4.3670068, the 1-token one (6 − 2)/√6 + 2 =
        // 3.6329932: the lower score ends with the higher return, by the length term
        // n·m·(1 − 1/s).
        let per_token: Vec<f64> = whiten_ragged(&rows, true)
            .iter()
            .map(|r| r.iter().sum())
            .collect();
        close(&per_token, &[4.367_006_8, 3.632_993_2]);
        // An unscored response has no return and does not enter the whitening; without
        // whitening the returns are the sums.
        let got = sequence_returns(&[None, Some(rows[0].clone()), Some(rows[1].clone())], true);
        assert_eq!(got[0], None);
        close(&[got[1].unwrap(), got[2].unwrap()], &[3.0, 5.0]);
        assert_eq!(
            sequence_returns(&[Some(rows[0].clone())], false),
            [Some(2.0)]
        );
    }

    #[test]
    fn overflowed_rollouts_get_no_advantage() {
        // A group of 4 whose third response has no score: the group is 1, 3, 5 (mean 3,
        // sample std sqrt((4 + 0 + 4)/2) = 2), so (−2, 0, 2)/(2 + ε) and 0 for the unscored one
        // — a made-up 5.5 in its place would have made the group 1, 3, 5.5, 5.
        let scores = [Some(1.0), Some(3.0), None, Some(5.0)];
        let s = 2.0 + GROUP_STD_EPS;
        let got = group_advantages(&scores, 4, AdvantageEstimator::Grpo, true);
        close(&got, &[-2.0 / s, 0.0, 0.0, 2.0 / s]);
        // RLOO: 1 − 4 = −3, 3 − 3 = 0, 5 − 2 = 3; REINFORCE whitens the three (mean 3,
        // population std sqrt(8/3) = 1.6329932).
        let got = group_advantages(&scores, 4, AdvantageEstimator::Rloo, true);
        close(&got, &[-3.0, 0.0, 0.0, 3.0]);
        let got = group_advantages(&scores, 1, AdvantageEstimator::Reinforce, true);
        let s = 1.632_993_2;
        close(&got, &[-2.0 / s, 0.0, 0.0, 2.0 / s]);
        // A group left with one scored response has nothing to compare it with: 0.
        let got = group_advantages(&[None, Some(7.0)], 2, AdvantageEstimator::Grpo, true);
        close(&got, &[0.0, 0.0]);
    }

    #[test]
    fn grpo_centres_and_scales_each_group() {
        // Group 1: 1, 2, 3, 6 → mean 3; sample std = sqrt((4 + 1 + 0 + 9)/3) = sqrt(14/3)
        // = 2.1602469; advantages (−2, −1, 0, 3)/(2.1602469 + ε).
        // Group 2: 5, 5, 5, 5 → all 0 (the ε keeps the division finite).
        let scores = some(&[1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0]);
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
        let got = group_advantages(
            &some(&[1.0, 2.0, 3.0, 6.0]),
            4,
            AdvantageEstimator::Rloo,
            true,
        );
        close(&got, &[-8.0 / 3.0, -4.0 / 3.0, 0.0, 4.0]);
        // RLOO is G/(G − 1) × the centred score: (−2, −1, 0, 3)·4/3.
        // Groups of two: a − b and b − a.
        let got = group_advantages(
            &some(&[1.0, 4.0, 2.0, 2.0]),
            2,
            AdvantageEstimator::Rloo,
            true,
        );
        close(&got, &[-3.0, 3.0, 0.0, 0.0]);
    }

    #[test]
    fn reinforce_whitens_across_the_step() {
        // 1, 2, 3, 6 → mean 3, population variance 14/4 = 3.5, std 1.8708287.
        let got = group_advantages(
            &some(&[1.0, 2.0, 3.0, 6.0]),
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
