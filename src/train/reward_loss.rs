//! Pairwise reward-model losses (Bai et al. 2022 §4.1 "preference model"; Lee et al. 2023
//! §2.2 "distilled RLAIF"), as small pure functions over rewards.
//!
//! With `d = r_a − r_b` and a label `p = P(a is better)`:
//!
//! * soft-label cross-entropy (AI soft labels): `−[p·log σ(d) + (1−p)·log σ(−d)]`;
//! * hard Bradley–Terry with margin `m` (Touvron et al. 2023 §3.2.2): for `p ∈ {0, 1}` the
//!   loss is `−log σ(r_chosen − r_rejected − m)`; [`pair_loss`] covers both as
//!   `−[p·log σ(d − m) + (1−p)·log σ(−d − m)]`;
//! * reward centering (Eisenstein et al. 2023; TRL `center_rewards_coefficient`):
//!   `c · (r_a + r_b)²` per pair, which pins the mean reward near 0 without changing
//!   the preference.
//!
//! The scalar `f64` versions are the reference; [`batch_loss`] is the same arithmetic on
//! tensors, and a test checks that the two agree.

use anyhow::Result;
use candle_core::Tensor;

/// Numerically stable `log σ(x) = −(max(−x, 0) + ln(1 + e^{−|x|}))`.
pub fn log_sigmoid(x: f64) -> f64 {
    -((-x).max(0.0) + (-x.abs()).exp().ln_1p())
}

/// `σ(x)`.
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Loss of one pair with rewards `r_a`, `r_b`, label `p_a = P(a better)` and margin
/// `margin` (0 for the plain soft-label cross-entropy).
pub fn pair_loss(r_a: f64, r_b: f64, p_a: f64, margin: f64) -> f64 {
    let d = r_a - r_b;
    -(p_a * log_sigmoid(d - margin) + (1.0 - p_a) * log_sigmoid(-d - margin))
}

/// The reward-centering penalty of one pair: `coef · (r_a + r_b)²`.
pub fn centering(r_a: f64, r_b: f64, coef: f64) -> f64 {
    coef * (r_a + r_b).powi(2)
}

/// Settings of the pairwise loss.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossSettings {
    /// Bradley–Terry margin `m` (0 = none).
    pub margin: f64,
    /// Reward-centering coefficient `c` (0 = none).
    pub center_coef: f64,
}

/// `log σ(x)` elementwise on a tensor, stable for large `|x|`.
fn log_sigmoid_t(x: &Tensor) -> Result<Tensor> {
    let relu_neg = x.neg()?.relu()?;
    let soft = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((relu_neg + soft)?.neg()?)
}

/// Weighted sum over a batch of `Σ wᵢ·(ℓᵢ + c·(r_aᵢ + r_bᵢ)²)` with `ℓᵢ` the [`pair_loss`];
/// all inputs are `[n]` tensors of one float dtype. Divide by the step's total weight to
/// get the weighted mean.
pub fn batch_loss(
    r_a: &Tensor,
    r_b: &Tensor,
    p_a: &Tensor,
    weight: &Tensor,
    settings: LossSettings,
) -> Result<Tensor> {
    let d = (r_a - r_b)?;
    let win = log_sigmoid_t(&(&d - settings.margin)?)?;
    let lose = log_sigmoid_t(&(d.neg()? - settings.margin)?)?;
    let one_minus_p = p_a.affine(-1.0, 1.0)?;
    let mut per_pair = ((p_a * win)? + (one_minus_p * lose)?)?.neg()?;
    if settings.center_coef != 0.0 {
        let center = ((r_a + r_b)?.sqr()? * settings.center_coef)?;
        per_pair = (per_pair + center)?;
    }
    Ok((per_pair * weight)?.sum_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    const LN2: f64 = std::f64::consts::LN_2;

    #[test]
    fn soft_label_cross_entropy_matches_hand_values() {
        // d = 0: both log σ terms are ln ½, so the loss is ln 2 whatever p is.
        assert!((pair_loss(0.3, 0.3, 0.8, 0.0) - LN2).abs() < 1e-12);
        // d = 1, p = 0.75: σ(1) = 0.7310586, σ(−1) = 0.2689414;
        // −[0.75·ln 0.7310586 + 0.25·ln 0.2689414] = 0.75·0.3132617 + 0.25·1.3132617
        // = 0.2349463 + 0.3283154 = 0.5632617.
        assert!((pair_loss(1.5, 0.5, 0.75, 0.0) - 0.563_261_7).abs() < 1e-6);
        // Swapping the responses and the label gives the same loss.
        assert!((pair_loss(0.5, 1.5, 0.25, 0.0) - 0.563_261_7).abs() < 1e-6);
    }

    #[test]
    fn hard_bradley_terry_with_margin_matches_hand_values() {
        // p = 1, d = 2: −ln σ(2) = ln(1 + e^{−2}) = ln 1.1353353 = 0.1269280.
        assert!((pair_loss(2.0, 0.0, 1.0, 0.0) - 0.126_928_0).abs() < 1e-6);
        // p = 0 (b chosen), d = 2: −ln σ(−2) = ln(1 + e²) = ln 8.3890561 = 2.1269280.
        assert!((pair_loss(2.0, 0.0, 0.0, 0.0) - 2.126_928_0).abs() < 1e-6);
        // Margin 1, p = 1, d = 2: −ln σ(1) = ln(1 + e^{−1}) = 0.3132617.
        assert!((pair_loss(2.0, 0.0, 1.0, 1.0) - 0.313_261_7).abs() < 1e-6);
        // Large rewards stay finite: −ln σ(−100) ≈ 100.
        assert!((pair_loss(-50.0, 50.0, 1.0, 0.0) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn centering_and_tensor_batch_match_the_scalar_reference() -> Result<()> {
        // c·(r_a + r_b)² = 0.1·(1.5 + 0.5)² = 0.4.
        assert!((centering(1.5, 0.5, 0.1) - 0.4).abs() < 1e-12);
        let (ra, rb, p, w) = (
            [1.5f64, 0.0, -0.2],
            [0.5f64, 2.0, -0.2],
            [0.75f64, 0.0, 1.0],
            [1.0f64, 2.0, 0.5],
        );
        let settings = LossSettings {
            margin: 0.25,
            center_coef: 0.1,
        };
        let expected: f64 = (0..3)
            .map(|i| w[i] * (pair_loss(ra[i], rb[i], p[i], 0.25) + centering(ra[i], rb[i], 0.1)))
            .sum();
        let t = |xs: &[f64]| Tensor::new(xs, &Device::Cpu);
        let got = batch_loss(&t(&ra)?, &t(&rb)?, &t(&p)?, &t(&w)?, settings)?.to_scalar::<f64>()?;
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
        Ok(())
    }
}
