//! The arithmetic of PPO for language models (Schulman et al. 2017; Ziegler et al. 2019;
//! Ouyang et al. 2022), as small functions that the tests pin to hand-computed numbers.
//!
//! Per-token quantities of one response are plain `&[f64]` slices (index 0 = first response
//! token). The two losses work on `[rows, tokens]` tensors with a 0/1 mask so that they
//! can back-propagate.

use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

/// How the per-token KL divergence to the reference policy is estimated from the sampled
/// token's log-probabilities (Schulman, "Approximating KL divergence", 2020).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// `log π − log π_ref`: unbiased, can be negative.
    K1,
    /// `(r − 1) − log r` with `r = π_ref / π`: unbiased, never negative, lower variance.
    K3,
}

/// Per-token KL estimates of one response.
pub fn kl_per_token(logp: &[f64], logp_ref: &[f64], estimator: KlEstimator) -> Vec<f64> {
    logp.iter()
        .zip(logp_ref)
        .map(|(&lp, &lr)| {
            let log_ratio = lp - lr;
            match estimator {
                KlEstimator::K1 => log_ratio,
                KlEstimator::K3 => (-log_ratio).exp_m1() + log_ratio,
            }
        })
        .collect()
}

/// Per-token rewards: `−β·kl_t` on every token, plus the reward model's `score` on the last.
pub fn token_rewards(score: f64, kl: &[f64], beta: f64) -> Vec<f64> {
    let mut r: Vec<f64> = kl.iter().map(|k| -beta * k).collect();
    if let Some(last) = r.last_mut() {
        *last += score;
    }
    r
}

/// Generalized advantage estimation (Schulman et al. 2016) over one response, with the value
/// after the last token taken as 0 (the episode ends there). Returns (advantages, returns).
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lambda: f64) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(rewards.len(), values.len(), "one value per reward");
    let n = rewards.len();
    let mut adv = vec![0.0; n];
    let mut running = 0.0;
    for t in (0..n).rev() {
        let next = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next - values[t];
        running = delta + gamma * lambda * running;
        adv[t] = running;
    }
    let returns = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, returns)
}

/// Mean and (population) variance.
pub fn mean_var(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var)
}

/// Whitening: `(x − mean) / sqrt(var + 1e-8)`; with `keep_mean` the mean is added back
/// (reward whitening must not shift the rewards' level).
pub fn whiten(xs: &[f64], keep_mean: bool) -> Vec<f64> {
    let (mean, var) = mean_var(xs);
    let scale = 1.0 / (var + 1e-8).sqrt();
    xs.iter()
        .map(|x| {
            let w = (x - mean) * scale;
            if keep_mean {
                w + mean
            } else {
                w
            }
        })
        .collect()
}

/// Whitens values spread over several responses jointly, keeping each response's length.
pub fn whiten_ragged(rows: &[Vec<f64>], keep_mean: bool) -> Vec<Vec<f64>> {
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    let mut w = whiten(&flat, keep_mean).into_iter();
    rows.iter()
        .map(|r| w.by_ref().take(r.len()).collect())
        .collect()
}

/// `1 − Var(returns − values) / Var(returns)`: 1 is a perfect value function, 0 is no
/// better than a constant, negative is worse. `None` when the returns do not vary.
pub fn explained_variance(values: &[f64], returns: &[f64]) -> Option<f64> {
    let (_, var_r) = mean_var(returns);
    if var_r <= 1e-12 {
        return None;
    }
    let diff: Vec<f64> = returns.iter().zip(values).map(|(r, v)| r - v).collect();
    Some(1.0 - mean_var(&diff).1 / var_r)
}

/// The adaptive KL coefficient of Ziegler et al. (2019): β moves so that the measured KL
/// approaches `target`, by at most ±20 % of the error per `horizon` rollouts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveKl {
    pub target: f64,
    pub horizon: f64,
}

impl AdaptiveKl {
    /// The next β after a step of `n_rollouts` responses whose mean KL was `kl`.
    pub fn update(&self, beta: f64, kl: f64, n_rollouts: usize) -> f64 {
        let error = (kl / self.target - 1.0).clamp(-0.2, 0.2);
        beta * (1.0 + error * n_rollouts as f64 / self.horizon)
    }
}

/// Masked mean over all entries of `xs` where `mask` is 1.
pub fn masked_mean(xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let n = mask.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    (xs * mask)?.sum_all()? / n.max(1.0)
}

/// How the per-token policy loss of an update is reduced to one number (TRL's GRPO
/// `loss_type`). Each is a weighted sum `Σ w_t·ℓ_t` over the update's response tokens, with
/// the weights of [`token_weights`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LossAggregation {
    /// Mean over every response token of the update (DAPO, Yu et al. 2025; TRL `bnpo`/`dapo`
    /// with one update per batch): a long response weighs more.
    #[default]
    TokenMean,
    /// Mean over the responses of each response's token mean (GRPO, Shao et al. 2024
    /// eq. 3; TRL `grpo`): every response weighs the same, its tokens less when it is long.
    SeqMean,
    /// Sum over the tokens divided by responses × `max_new_tokens`, a constant (Dr. GRPO,
    /// Liu et al. 2025; TRL `dr_grpo`): no length bias in either direction.
    SeqSumNorm,
}

impl crate::choice::Choice for LossAggregation {
    const CHOICES: &'static [(&'static str, Self, &'static str)] = &[
        (
            "token-mean",
            Self::TokenMean,
            "mean over all response tokens of the update (DAPO)",
        ),
        (
            "seq-mean",
            Self::SeqMean,
            "mean over responses of each response's token mean (GRPO)",
        ),
        (
            "seq-sum-norm",
            Self::SeqSumNorm,
            "token sum over responses × max_new_tokens (Dr. GRPO)",
        ),
    ];
}

/// The weight of each response token of an update whose responses have `lens` tokens (flat,
/// in order), so that `Σ w_t·ℓ_t` is the `aggregation` of the per-token losses `ℓ_t`:
/// `1/Σn` (token-mean), `1/(B·n_i)` (seq-mean), `1/(B·max_new_tokens)` (seq-sum-norm), with
/// B responses of n_i tokens. A sum of weights over any part of the update is that part's
/// share, so parts run apart add up to the whole update.
pub fn token_weights(
    lens: &[usize],
    aggregation: LossAggregation,
    max_new_tokens: usize,
) -> Vec<f64> {
    let b = lens.len().max(1) as f64;
    let total = lens.iter().sum::<usize>().max(1) as f64;
    lens.iter()
        .flat_map(|&n| {
            let w = match aggregation {
                LossAggregation::TokenMean => 1.0 / total,
                LossAggregation::SeqMean => 1.0 / (b * n.max(1) as f64),
                LossAggregation::SeqSumNorm => 1.0 / (b * max_new_tokens.max(1) as f64),
            };
            std::iter::repeat_n(w, n)
        })
        .collect()
}

/// The clipped surrogate objective per token, as a loss (to minimize):
/// `max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))` with `ρ = exp(logp − logp_old)`, and 1 where the
/// clipped term was chosen (0 elsewhere), in `logp`'s dtype.
pub fn clipped_surrogate(
    logp: &Tensor,
    logp_old: &Tensor,
    advantages: &Tensor,
    clip: f64,
) -> Result<(Tensor, Tensor)> {
    let ratio = (logp - logp_old)?.exp()?;
    let unclipped = (advantages.neg()? * &ratio)?;
    let clipped = (advantages.neg()? * ratio.clamp(1.0 - clip, 1.0 + clip)?)?;
    let chosen = unclipped.maximum(&clipped)?;
    let was_clipped = clipped.gt(&unclipped)?.to_dtype(logp.dtype())?;
    Ok((chosen, was_clipped))
}

/// The clipped surrogate objective as a loss, its token mean over masked tokens
/// ([`clipped_surrogate`]). Returns the loss and the fraction of tokens where the clipped
/// term was chosen.
pub fn policy_loss(
    logp: &Tensor,
    logp_old: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    clip: f64,
) -> Result<(Tensor, f64)> {
    let (chosen, was_clipped) = clipped_surrogate(logp, logp_old, advantages, clip)?;
    let loss = masked_mean(&chosen, mask)?;
    let clip_frac = masked_mean(&was_clipped.to_dtype(mask.dtype())?, mask)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    Ok((loss, clip_frac))
}

/// The clipped value loss: `0.5·mean(max((v − R)², (v_old + clip(v − v_old, ±ε) − R)²))`.
/// Returns the loss and the fraction of tokens where the clipped term was chosen.
pub fn value_loss(
    values: &Tensor,
    values_old: &Tensor,
    returns: &Tensor,
    mask: &Tensor,
    clip: f64,
) -> Result<(Tensor, f64)> {
    let clipped_v = (values_old + (values - values_old)?.clamp(-clip, clip)?)?;
    let plain = (values - returns)?.sqr()?;
    let clipped = (clipped_v - returns)?.sqr()?;
    let chosen = plain.maximum(&clipped)?;
    let loss = (masked_mean(&chosen, mask)? * 0.5)?;
    let frac = masked_mean(&clipped.gt(&plain)?.to_dtype(mask.dtype())?, mask)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    Ok((loss, frac))
}

/// The most frequent word n-grams that occur more than once across `texts` (a sign of
/// reward hacking when a policy learns to repeat a phrase), most frequent first.
pub fn repeated_phrases(texts: &[String], n: usize, top: usize) -> Vec<(String, usize)> {
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    for text in texts {
        let words: Vec<String> = text
            .split_whitespace()
            .map(|w| {
                w.trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase()
            })
            .filter(|w| !w.is_empty())
            .collect();
        for gram in words.windows(n) {
            *counts.entry(gram.join(" ")).or_default() += 1;
        }
    }
    let mut v: Vec<(String, usize)> = counts.into_iter().filter(|(_, c)| *c > 1).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(top);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    #[test]
    fn kl_estimators_match_hand_values() {
        // log π = -1, log π_ref = -1.5: log ratio 0.5.
        let k1 = kl_per_token(&[-1.0, -2.0], &[-1.5, -2.0], KlEstimator::K1);
        close(k1[0], 0.5);
        close(k1[1], 0.0);
        // k3 = e^{-0.5} - 1 + 0.5 = 0.1065306597...
        let k3 = kl_per_token(&[-1.0, -0.5], &[-1.5, -0.2], KlEstimator::K3);
        close(k3[0], 0.106_530_659_712_633_4);
        // log ratio -0.3: e^{0.3} - 1 - 0.3 = 0.0498588075760032.
        close(k3[1], 0.049_858_807_576_003_2);
        assert!(k3.iter().all(|k| *k >= 0.0));
    }

    #[test]
    fn token_rewards_put_the_score_on_the_last_token() {
        let r = token_rewards(2.0, &[0.1, -0.2, 0.3], 0.5);
        close(r[0], -0.05);
        close(r[1], 0.1);
        close(r[2], 2.0 - 0.15);
        assert!(token_rewards(1.0, &[], 0.1).is_empty());
    }

    #[test]
    fn gae_matches_a_hand_computation() {
        // gamma 0.9, lambda 0.8; rewards [0, 0, 1], values [0.5, 0.4, 0.3].
        // delta2 = 1 - 0.3 = 0.7; A2 = 0.7
        // delta1 = 0 + 0.9*0.3 - 0.4 = -0.13; A1 = -0.13 + 0.72*0.7 = 0.374
        // delta0 = 0 + 0.9*0.4 - 0.5 = -0.14; A0 = -0.14 + 0.72*0.374 = 0.12928
        let (adv, ret) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.4, 0.3], 0.9, 0.8);
        close(adv[2], 0.7);
        close(adv[1], 0.374);
        close(adv[0], 0.12928);
        close(ret[0], 0.62928);
        close(ret[1], 0.774);
        close(ret[2], 1.0);
        // lambda 1, gamma 1: advantage = sum of future rewards - value.
        let (adv, _) = gae(&[1.0, 2.0], &[0.5, 0.25], 1.0, 1.0);
        close(adv[0], 2.5);
        close(adv[1], 1.75);
    }

    #[test]
    fn whitening_centres_and_scales() {
        let w = whiten(&[1.0, 2.0, 3.0, 4.0], false);
        // mean 2.5, var 1.25.
        close(w[0], -1.5 / (1.25f64 + 1e-8).sqrt());
        let (m, v) = mean_var(&w);
        close(m, 0.0);
        assert!((v - 1.0).abs() < 1e-6);
        let kept = whiten(&[1.0, 2.0, 3.0, 4.0], true);
        close(mean_var(&kept).0, 2.5);
        let ragged = whiten_ragged(&[vec![1.0], vec![2.0, 3.0, 4.0]], false);
        assert_eq!(ragged[1].len(), 3);
        close(ragged[0][0], w[0]);
        close(ragged[1][2], w[3]);
    }

    #[test]
    fn explained_variance_and_adaptive_kl() {
        close(
            explained_variance(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]).unwrap(),
            1.0,
        );
        // values constant at the mean: 0.
        close(
            explained_variance(&[2.0, 2.0, 2.0], &[1.0, 2.0, 3.0]).unwrap(),
            0.0,
        );
        assert!(explained_variance(&[0.0, 1.0], &[1.0, 1.0]).is_none());
        let c = AdaptiveKl {
            target: 6.0,
            horizon: 10_000.0,
        };
        // KL 12 → error clipped to 0.2; β·(1 + 0.2·256/10000).
        close(c.update(0.1, 12.0, 256), 0.1 * (1.0 + 0.2 * 0.0256));
        // KL 4.5 → error -0.25 → clipped -0.2.
        close(c.update(0.1, 4.5, 100), 0.1 * (1.0 - 0.2 * 0.01));
        // KL 6.6 → error 0.1.
        close(c.update(0.2, 6.6, 1000), 0.2 * 1.01);
    }

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v, (1, v.len()), &Device::Cpu).unwrap()
    }

    #[test]
    fn clipped_policy_loss_matches_hand_values() -> Result<()> {
        // ratios e^{0.5}=1.6487, e^{-0.5}=0.6065, 1, (masked) anything; clip 0.2.
        let logp = t(&[0.5, -0.5, 0.0, 3.0]);
        let old = t(&[0.0, 0.0, 0.0, 0.0]);
        let adv = t(&[1.0, 1.0, -2.0, 5.0]);
        let mask = t(&[1.0, 1.0, 1.0, 0.0]);
        let (loss, frac) = policy_loss(&logp, &old, &adv, &mask, 0.2)?;
        // token 0: max(-1.6487, -1.2) = -1.2 (clipped); token 1: max(-0.6065, -0.8) =
        // -0.6065 (unclipped); token 2: max(2, 2) = 2 (equal: not counted as clipped).
        let want = (-1.2 - (-0.5f64).exp() + 2.0) / 3.0;
        assert!((loss.to_scalar::<f32>()? as f64 - want).abs() < 1e-5);
        assert!((frac - 1.0 / 3.0).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn grpo_loss_aggregation_matches_trl_normalizers() {
        // Two responses of 1 and 3 tokens with per-token losses [4 | 1, 0, 2], max_new_tokens 4.
        // token-mean (DAPO): (4 + 1 + 0 + 2)/4 = 1.75.
        // seq-mean (GRPO): (4/1 + (1 + 0 + 2)/3)/2 = (4 + 1)/2 = 2.5.
        // seq-sum-norm (Dr. GRPO): (4 + 1 + 0 + 2)/(2·4) = 0.875.
        let losses = [4.0, 1.0, 0.0, 2.0];
        let lens = [1, 3];
        let agg = |a| -> f64 {
            let w = token_weights(&lens, a, 4);
            assert_eq!(w.len(), 4);
            w.iter().zip(&losses).map(|(w, l)| w * l).sum()
        };
        close(agg(LossAggregation::TokenMean), 1.75);
        close(agg(LossAggregation::SeqMean), 2.5);
        close(agg(LossAggregation::SeqSumNorm), 0.875);
        // The weights themselves: 1/4 each; 1/2 then 1/6 × 3; 1/8 each.
        let w = token_weights(&lens, LossAggregation::SeqMean, 4);
        close(w[0], 0.5);
        close(w[3], 1.0 / 6.0);
        // Token-mean and seq-mean weights sum to 1; seq-sum-norm's to Σn/(B·max) = 4/8.
        let sum = |a| token_weights(&lens, a, 4).iter().sum::<f64>();
        close(sum(LossAggregation::TokenMean), 1.0);
        close(sum(LossAggregation::SeqMean), 1.0);
        close(sum(LossAggregation::SeqSumNorm), 0.5);
        // The flag's names are the YAML's.
        use crate::choice::Choice;
        for (name, value, _) in LossAggregation::CHOICES {
            assert_eq!(serde_yaml::to_string(value).unwrap().trim(), *name);
        }
    }

    #[test]
    fn clipped_value_loss_matches_hand_values() -> Result<()> {
        let v = t(&[1.0, 0.0, 2.0]);
        let v_old = t(&[0.0, 0.0, 1.9]);
        let ret = t(&[2.0, 1.0, 0.0]);
        let mask = t(&[1.0, 1.0, 1.0]);
        let (loss, frac) = value_loss(&v, &v_old, &ret, &mask, 0.2)?;
        // token 0: plain (1-2)^2 = 1, clipped v = 0.2 → (0.2-2)^2 = 3.24 → 3.24 (clipped)
        // token 1: plain 1, clipped 1 → 1
        // token 2: plain 4, clipped v = 2.0 (0.1 within clip) → 4 → 4
        let want = 0.5 * (3.24 + 1.0 + 4.0) / 3.0;
        assert!((loss.to_scalar::<f32>()? as f64 - want).abs() < 1e-5);
        assert!((frac - 1.0 / 3.0).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn repeated_phrases_are_counted_across_texts() {
        let texts = vec![
            "I cannot help with that. I cannot help.".to_string(),
            "Sorry, I cannot help with that!".to_string(),
        ];
        let top = repeated_phrases(&texts, 3, 2);
        assert_eq!(top[0], ("i cannot help".to_string(), 3));
        assert_eq!(top[1], ("cannot help with".to_string(), 2));
    }
}
