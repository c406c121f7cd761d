//! Direct preference optimisation losses (Rafailov et al. 2023, "DPO", eq. 7) and their
//! variants, as small pure functions of the policy/reference log-ratio difference.
//!
//! For a pair (a, b) with policy log-probabilities `π_a, π_b` and reference ones `ρ_a, ρ_b`
//! (summed over the response tokens), the implicit reward of a response is `β·(π − ρ)` and
//! `h = (π_a − ρ_a) − (π_b − ρ_b)`; `z = β·h`. The label `p = P(a better)` is soft for
//! `cai label` rows and 0/1 for human and SL-CAI pairs. With `sp(x) = ln(1 + eˣ)`:
//!
//! * `sigmoid` (DPO): the label is rounded; `−log σ(z_c)` with `z_c = z` when a is chosen,
//!   `−z` when b is; exact ties (p = ½) are dropped.
//! * `cdpo` (conservative DPO, Mitchell 2023; TRL `label_smoothing`): the soft label is the
//!   target, `q·sp(−z) + (1−q)·sp(z)` with `q = ε + (1 − 2ε)·p`; at p = 1, ε = 0 it is
//!   `sigmoid`, at p = ½ it is symmetric in `z` (ties pull the margin to 0).
//! * `robust` (rDPO, Chowdhury et al. 2024 eq. 8; TRL `loss_type="robust"`): the label is
//!   rounded and one global flip rate `ε` (`label_smoothing`) de-biases the loss:
//!   `[(1−ε)·sp(−z_c) − ε·sp(z_c)] / (1 − 2ε)`; ties are dropped. Every decided pair gets the
//!   same gradient scale whatever its `p`: a per-pair rate `min(p, 1 − p)` would give the
//!   least certain labels the largest gradient (`½/(1 − 2e)` at `z = 0`), and soft labels
//!   already have their losses (`cdpo`, `ipo`). With `ε = 0` it is `sigmoid`.
//! * `ipo` (Azar et al. 2023 eq. 17, on per-token mean log-probabilities as TRL does): the
//!   soft label is the target, `(h − (2p − 1)·k)²` with `k = 1/(2β)`; at p = 1 it is TRL's
//!   `(h − 1/(2β))²`, and ties pull `h` to 0. (It equals `p·(h − k)² + (1−p)·(h + k)²` less
//!   that form's constant `4p(1−p)·k²`, which would put 25 under every tie at β = 0.1.)
//! * `hinge` (SLiC, Zhao et al. 2023): the label is rounded, `max(0, 1 − z_c)`; ties are
//!   dropped.
//!
//! The scalar `f64` [`pair_loss`] is the reference; [`pair_losses`] is the same arithmetic on
//! a tensor of `h` (per-pair coefficients from the labels are computed on the host), and a
//! test checks that the two agree, values and gradients.

use anyhow::{ensure, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Which preference loss a DPO run minimises (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DpoLoss {
    /// `−log σ(β·h)` on the rounded label (DPO).
    #[default]
    Sigmoid,
    /// Soft-label cross-entropy on `σ(β·h)` (conservative DPO).
    Cdpo,
    /// Noise-corrected sigmoid loss with one global flip rate ε (rDPO).
    Robust,
    /// Squared distance of the per-token log-ratio difference to the soft target (IPO).
    Ipo,
    /// `max(0, 1 − β·h)` on the rounded label (SLiC hinge).
    Hinge,
}

impl DpoLoss {
    /// Every loss, for `--help` and error messages.
    pub const ALL: [DpoLoss; 5] = [
        DpoLoss::Sigmoid,
        DpoLoss::Cdpo,
        DpoLoss::Robust,
        DpoLoss::Ipo,
        DpoLoss::Hinge,
    ];

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DpoLoss::Sigmoid => "sigmoid",
            DpoLoss::Cdpo => "cdpo",
            DpoLoss::Robust => "robust",
            DpoLoss::Ipo => "ipo",
            DpoLoss::Hinge => "hinge",
        }
    }

    /// Whether the loss rounds the label to 0/1 (and so drops exact ties).
    pub fn rounds_label(self) -> bool {
        matches!(self, DpoLoss::Sigmoid | DpoLoss::Robust | DpoLoss::Hinge)
    }

    /// Whether the log-ratios are per-token means rather than sums (IPO).
    pub fn length_normalized(self) -> bool {
        self == DpoLoss::Ipo
    }

    /// Whether a pair labelled `p_a` contributes to this loss (rounding losses drop ties).
    pub fn keeps(self, p_a: f64) -> bool {
        !(self.rounds_label() && p_a == 0.5)
    }

    /// Whether the loss reads `label_smoothing` (cDPO's target, rDPO's flip rate); the others
    /// would ignore it, so a non-zero value is refused for them.
    pub fn uses_label_smoothing(self) -> bool {
        matches!(self, DpoLoss::Cdpo | DpoLoss::Robust)
    }
}

impl std::str::FromStr for DpoLoss {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| format!("unknown DPO loss `{s}` (sigmoid, cdpo, robust, ipo, hinge)"))
    }
}

impl std::fmt::Display for DpoLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The loss and its two constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossSpec {
    pub loss: DpoLoss,
    /// Temperature β of the implicit reward.
    pub beta: f64,
    /// Label smoothing ε (`cdpo` target, `robust` flip rate).
    pub label_smoothing: f64,
}

impl LossSpec {
    /// Checks β > 0, ε in [0, ½), and ε = 0 for the losses that do not use it.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.beta.is_finite() && self.beta > 0.0,
            "beta must be positive, got {}",
            self.beta
        );
        ensure!(
            (0.0..0.5).contains(&self.label_smoothing),
            "label_smoothing must be within [0, 0.5), got {}",
            self.label_smoothing
        );
        ensure!(
            self.label_smoothing == 0.0 || self.loss.uses_label_smoothing(),
            "--label-smoothing {} has no effect on the {} loss (only cdpo and robust use it; \
             TRL's label-smoothed sigmoid is --loss cdpo)",
            self.label_smoothing,
            self.loss
        );
        Ok(())
    }
}

/// `sp(x) = ln(1 + eˣ)`, stable for large `|x|`.
pub fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// How a pair's label enters the loss: `c_win·sp(−z) + c_lose·sp(z)` for the sigmoid family,
/// `sign` (±1, which response is chosen) for the hinge, the target `(2p − 1)·k` of `h` for IPO.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Coefficients {
    c_win: f64,
    c_lose: f64,
    sign: f64,
    target: f64,
}

fn coefficients(spec: &LossSpec, p_a: f64) -> Coefficients {
    let hard = if p_a > 0.5 { 1.0 } else { 0.0 };
    let sign = 2.0 * hard - 1.0;
    let (c_win, c_lose) = match spec.loss {
        DpoLoss::Sigmoid | DpoLoss::Hinge | DpoLoss::Ipo => (hard, 1.0 - hard),
        DpoLoss::Cdpo => {
            let q = spec.label_smoothing + (1.0 - 2.0 * spec.label_smoothing) * p_a;
            (q, 1.0 - q)
        }
        DpoLoss::Robust => {
            let e = spec.label_smoothing;
            let (right, wrong) = ((1.0 - e) / (1.0 - 2.0 * e), -e / (1.0 - 2.0 * e));
            if hard == 1.0 {
                (right, wrong)
            } else {
                (wrong, right)
            }
        }
    };
    Coefficients {
        c_win,
        c_lose,
        sign,
        target: (2.0 * p_a - 1.0) / (2.0 * spec.beta),
    }
}

/// Loss of one pair with log-ratio difference `h` (summed log-probs, or per-token means for
/// IPO) and label `p_a`. Callers drop the pairs [`DpoLoss::keeps`] rejects.
pub fn pair_loss(spec: &LossSpec, h: f64, p_a: f64) -> f64 {
    let c = coefficients(spec, p_a);
    let z = spec.beta * h;
    match spec.loss {
        DpoLoss::Sigmoid | DpoLoss::Cdpo | DpoLoss::Robust => {
            c.c_win * softplus(-z) + c.c_lose * softplus(z)
        }
        DpoLoss::Hinge => (1.0 - c.sign * z).max(0.0),
        DpoLoss::Ipo => (h - c.target).powi(2),
    }
}

/// `sp(x)` elementwise on a tensor.
fn softplus_t(x: &Tensor) -> Result<Tensor> {
    let soft = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((x.relu()? + soft)?)
}

/// Per-pair losses `[n]` of [`pair_loss`] for `h: [n]` (any float dtype) and labels `p_a`.
pub fn pair_losses(spec: &LossSpec, h: &Tensor, p_a: &[f64]) -> Result<Tensor> {
    let n = h.dim(0)?;
    ensure!(n == p_a.len(), "{n} log-ratios but {} labels", p_a.len());
    let coefs: Vec<Coefficients> = p_a.iter().map(|&p| coefficients(spec, p)).collect();
    let column = |f: fn(&Coefficients) -> f64| -> Result<Tensor> {
        let v: Vec<f64> = coefs.iter().map(f).collect();
        Ok(Tensor::from_vec(v, n, h.device())?.to_dtype(h.dtype())?)
    };
    let z = (h * spec.beta)?;
    Ok(match spec.loss {
        DpoLoss::Sigmoid | DpoLoss::Cdpo | DpoLoss::Robust => {
            let win = (column(|c| c.c_win)? * softplus_t(&z.neg()?)?)?;
            let lose = (column(|c| c.c_lose)? * softplus_t(&z)?)?;
            (win + lose)?
        }
        DpoLoss::Hinge => (column(|c| c.sign)? * z)?.neg()?.affine(1.0, 1.0)?.relu()?,
        DpoLoss::Ipo => (h - column(|c| c.target)?)?.sqr()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn spec(loss: DpoLoss, beta: f64, label_smoothing: f64) -> LossSpec {
        LossSpec {
            loss,
            beta,
            label_smoothing,
        }
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }

    // Hand values: sp(−1) = ln(1 + e^{−1}) = 0.3132617, sp(1) = 1 + sp(−1) = 1.3132617.
    const SP_M1: f64 = 0.313_261_7;
    const SP_1: f64 = 1.313_261_7;

    #[test]
    fn each_loss_matches_hand_values() {
        // β = 0.5, h = 2 → z = 1.
        let s = |l, e| spec(l, 0.5, e);
        // DPO: a chosen −log σ(1) = sp(−1); b chosen −log σ(−1) = sp(1); 0.8 rounds to 1.
        close(pair_loss(&s(DpoLoss::Sigmoid, 0.0), 2.0, 1.0), SP_M1);
        close(pair_loss(&s(DpoLoss::Sigmoid, 0.0), 2.0, 0.0), SP_1);
        close(pair_loss(&s(DpoLoss::Sigmoid, 0.0), 2.0, 0.8), SP_M1);
        // cDPO, p = 0.8: 0.8·0.3132617 + 0.2·1.3132617 = 0.2506094 + 0.2626523 = 0.5132617.
        close(pair_loss(&s(DpoLoss::Cdpo, 0.0), 2.0, 0.8), 0.513_261_7);
        // cDPO, p = 1, ε = 0.1: q = 0.9 → 0.9·0.3132617 + 0.1·1.3132617 = 0.4132617.
        close(pair_loss(&s(DpoLoss::Cdpo, 0.1), 2.0, 1.0), 0.413_261_7);
        // rDPO, ε = 0.2, p = 0.8 rounds to a: (0.8·0.3132617 − 0.2·1.3132617)/0.6
        // = (0.2506094 − 0.2626523)/0.6 = −0.0200716; p = 1 is the same pair.
        close(pair_loss(&s(DpoLoss::Robust, 0.2), 2.0, 0.8), -0.020_071_6);
        close(pair_loss(&s(DpoLoss::Robust, 0.2), 2.0, 1.0), -0.020_071_6);
        // rDPO, ε = 0.1, p = 0.55 rounds to a: (0.9·0.3132617 − 0.1·1.3132617)/0.8
        // = (0.2819355 − 0.1313262)/0.8 = 0.1882617.
        close(pair_loss(&s(DpoLoss::Robust, 0.1), 2.0, 0.55), 0.188_261_7);
        // Hinge: max(0, 1 − 1) = 0; h = 1 → max(0, 1 − 0.5) = 0.5; b chosen: 1 + 1 = 2.
        close(pair_loss(&s(DpoLoss::Hinge, 0.0), 2.0, 1.0), 0.0);
        close(pair_loss(&s(DpoLoss::Hinge, 0.0), 1.0, 1.0), 0.5);
        close(pair_loss(&s(DpoLoss::Hinge, 0.0), 2.0, 0.0), 2.0);
        // IPO, k = 1/(2·0.5) = 1: p = 1 → (2 − 1)² = 1; p = 0.75 → target (2·0.75 − 1)·1 = 0.5,
        // (2 − 0.5)² = 2.25.
        close(pair_loss(&s(DpoLoss::Ipo, 0.0), 2.0, 1.0), 1.0);
        close(pair_loss(&s(DpoLoss::Ipo, 0.0), 2.0, 0.75), 2.25);
        // Large margins stay finite: −log σ(−100) ≈ 100.
        close(
            pair_loss(&spec(DpoLoss::Sigmoid, 1.0, 0.0), -100.0, 1.0),
            100.0,
        );
    }

    #[test]
    fn cdpo_is_dpo_at_p_one_and_symmetric_at_one_half() {
        let (dpo, cdpo) = (
            spec(DpoLoss::Sigmoid, 0.1, 0.0),
            spec(DpoLoss::Cdpo, 0.1, 0.0),
        );
        for h in [-30.0, -2.5, 0.0, 0.7, 12.0] {
            assert_eq!(pair_loss(&cdpo, h, 1.0), pair_loss(&dpo, h, 1.0));
            assert_eq!(pair_loss(&cdpo, h, 0.0), pair_loss(&dpo, h, 0.0));
            close(pair_loss(&cdpo, h, 0.5), pair_loss(&cdpo, -h, 0.5));
            // Robust with a hard label and no smoothing is DPO too.
            close(
                pair_loss(&spec(DpoLoss::Robust, 0.1, 0.0), h, 1.0),
                pair_loss(&dpo, h, 1.0),
            );
            // IPO at p = ½ is symmetric as well, minimal at h = 0.
            let ipo = spec(DpoLoss::Ipo, 0.1, 0.0);
            close(pair_loss(&ipo, h, 0.5), pair_loss(&ipo, -h, 0.5));
        }
        // At p = ½ the cDPO minimum is h = 0: ln 2 there, more either side.
        close(pair_loss(&cdpo, 0.0, 0.5), std::f64::consts::LN_2);
        assert!(pair_loss(&cdpo, 1.0, 0.5) > std::f64::consts::LN_2);
        assert!(!DpoLoss::Sigmoid.keeps(0.5) && DpoLoss::Cdpo.keeps(0.5));
        assert!(!DpoLoss::Hinge.keeps(0.5) && DpoLoss::Ipo.keeps(0.5));
    }

    #[test]
    fn tensor_losses_and_gradients_match_the_scalar_reference() -> Result<()> {
        // (Away from the hinge's kink at β·h = ±1.)
        let hs = [1.6f64, -1.5, 0.3, 8.0];
        let ps = [1.0f64, 0.0, 0.8, 0.3];
        for loss in DpoLoss::ALL {
            let s = spec(loss, 0.5, 0.05);
            let h = Var::from_tensor(&Tensor::new(&hs, &Device::Cpu)?)?;
            let got = pair_losses(&s, h.as_tensor(), &ps)?;
            let values = got.to_vec1::<f64>()?;
            let grads = got.sum_all()?.backward()?;
            let grad = grads.get(h.as_tensor()).unwrap().to_vec1::<f64>()?;
            for i in 0..hs.len() {
                close(values[i], pair_loss(&s, hs[i], ps[i]));
                // Central finite difference of the scalar reference.
                let d = 1e-5;
                let fd =
                    (pair_loss(&s, hs[i] + d, ps[i]) - pair_loss(&s, hs[i] - d, ps[i])) / (2.0 * d);
                assert!(
                    (grad[i] - fd).abs() < 1e-5,
                    "{loss} pair {i}: {} vs {fd}",
                    grad[i]
                );
            }
        }
        // A hand gradient: DPO, a chosen, d/dh −log σ(βh) = −β·σ(−βh); β = 0.5, h = 2:
        // −0.5·σ(−1) = −0.5·0.2689414 = −0.1344707.
        let s = spec(DpoLoss::Sigmoid, 0.5, 0.0);
        let h = Var::from_tensor(&Tensor::new(&[2.0f64], &Device::Cpu)?)?;
        let g = pair_losses(&s, h.as_tensor(), &[1.0])?
            .sum_all()?
            .backward()?;
        close(
            g.get(h.as_tensor()).unwrap().to_vec1::<f64>()?[0],
            -0.134_470_7,
        );
        Ok(())
    }

    /// d loss / dh of one pair at `h`, through the tensor form (autograd).
    fn gradient(s: &LossSpec, h: f64, p: f64) -> Result<f64> {
        let v = Var::from_tensor(&Tensor::new(&[h], &Device::Cpu)?)?;
        let g = pair_losses(s, v.as_tensor(), &[p])?.sum_all()?.backward()?;
        Ok(g.get(v.as_tensor()).unwrap().to_vec1::<f64>()?[0])
    }

    #[test]
    fn robust_dpo_gradient_shrinks_as_labels_get_less_certain() -> Result<()> {
        // Labels from most to least certain; the gradient's size at z = 0 (where training
        // starts) may not grow along them. With ε = 0.1, β = 0.5 every decided pair has
        // d/dh = β·(c_lose − c_win)/2 = 0.5·(−0.1/0.8 − 0.9/0.8)/2 = −0.3125 (a chosen),
        // +0.3125 (b chosen); a per-pair flip rate min(p, 1 − p) gave 0.5·(½/(1 − 2e)):
        // 0.3125 at p = 0.9 but 1.25 at p = 0.6.
        let s = spec(DpoLoss::Robust, 0.5, 0.1);
        let ps = [1.0, 0.9, 0.75, 0.6, 0.55];
        let mut last = f64::INFINITY;
        for p in ps {
            let g = gradient(&s, 0.0, p)?;
            close(g, -0.3125);
            assert!(g.abs() <= last + 1e-12, "p = {p}: |{g}| > {last}");
            last = g.abs();
            close(gradient(&s, 0.0, 1.0 - p)?, 0.3125);
        }
        // Away from 0 too (h = 3, z = 1.5): equal for every a-chosen label.
        let g1 = gradient(&s, 3.0, 1.0)?;
        for p in ps {
            close(gradient(&s, 3.0, p)?, g1);
        }
        Ok(())
    }

    #[test]
    fn ipo_loss_carries_no_label_constant() {
        // β = 0.1 (k = 5): a tie at h = 0 and a hard label at h = k are at the minimum, 0;
        // the old form p·(h − k)² + (1 − p)·(h + k)² had 4p(1 − p)·k² = 25 at the tie.
        let s = spec(DpoLoss::Ipo, 0.1, 0.0);
        close(pair_loss(&s, 0.0, 0.5), 0.0);
        close(pair_loss(&s, 5.0, 1.0), 0.0);
        // p = 0.7: target (2·0.7 − 1)·5 = 2; at h = 0 the loss is 2² = 4 (the old form 4 + 21).
        close(pair_loss(&s, 0.0, 0.7), 4.0);
    }

    #[test]
    fn label_smoothing_is_refused_where_the_loss_ignores_it() {
        for loss in [DpoLoss::Sigmoid, DpoLoss::Hinge, DpoLoss::Ipo] {
            let err = spec(loss, 0.1, 0.1).validate().unwrap_err().to_string();
            assert!(
                err.contains("--label-smoothing 0.1") && err.contains(loss.name()),
                "{err}"
            );
            assert!(!err.contains('\n'), "one line: {err}");
            assert!(spec(loss, 0.1, 0.0).validate().is_ok());
        }
        for loss in [DpoLoss::Cdpo, DpoLoss::Robust] {
            assert!(spec(loss, 0.1, 0.1).validate().is_ok(), "{loss}");
        }
    }

    #[test]
    fn names_parse_and_constants_are_checked() {
        for l in DpoLoss::ALL {
            assert_eq!(l.name().parse::<DpoLoss>(), Ok(l));
        }
        assert!("dpo".parse::<DpoLoss>().is_err());
        assert!(spec(DpoLoss::Cdpo, 0.0, 0.0).validate().is_err());
        assert!(spec(DpoLoss::Cdpo, 0.1, 0.5).validate().is_err());
        assert!(spec(DpoLoss::Cdpo, 0.1, 0.1).validate().is_ok());
    }
}
