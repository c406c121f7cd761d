//! AdamW, gradient accumulation and clipping, and learning-rate schedules.
//!
//! candle-nn's `AdamW` keeps its moments private, which rules out resuming a run, so
//! [`AdamW`] here stores its step count and per-parameter moments by parameter name and
//! saves them to safetensors. It follows PyTorch's `torch.optim.AdamW` (decoupled weight
//! decay, bias-corrected moments), except that 1-D parameters (norm weights) are not
//! decayed, as in the Hugging Face trainer.

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Accumulated gradients by parameter name.
#[derive(Debug, Default, Clone)]
pub struct Gradients {
    grads: BTreeMap<String, Tensor>,
}

impl Gradients {
    /// No gradients yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the gradients of `vars` from one backward pass. The store is consumed entry by
    /// entry, so that a gradient and its copy here are never both held for every variable.
    pub fn accumulate(&mut self, vars: &[(String, Var)], mut store: GradStore) -> Result<()> {
        for (name, var) in vars {
            let Some(grad) = store.remove(var.as_tensor()) else {
                continue;
            };
            let grad = grad.detach();
            // Weight gradients of `x @ Wᵀ` arrive transposed; one contiguous copy here
            // keeps clipping and the update on the fast elementwise paths.
            let sum = match self.grads.remove(name) {
                Some(prev) => (prev + grad)?,
                None => grad.contiguous()?,
            };
            self.grads.insert(name.clone(), sum);
        }
        Ok(())
    }

    /// The gradient of `name`, if it received one.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.grads.get(name)
    }

    /// Global L2 norm over all gradients.
    pub fn global_norm(&self) -> Result<f64> {
        let mut sum_sq = 0f64;
        for grad in self.grads.values() {
            sum_sq += grad
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
        Ok(sum_sq.sqrt())
    }

    /// Scales the gradients so that their global norm is at most `max_norm` (no-op when
    /// `max_norm <= 0`) and returns the norm before clipping.
    pub fn clip_global_norm(&mut self, max_norm: f64) -> Result<f64> {
        let norm = self.global_norm()?;
        if max_norm > 0.0 && norm.is_finite() && norm > max_norm {
            let coef = max_norm / (norm + 1e-6);
            for grad in self.grads.values_mut() {
                *grad = (&*grad * coef)?;
            }
        }
        Ok(norm)
    }
}

/// AdamW hyper-parameters (the learning rate comes from the schedule at each step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWParams {
    /// Decay rate of the first moment.
    pub beta1: f64,
    /// Decay rate of the second moment.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay (multiplied by the learning rate).
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW with named, saveable state.
#[derive(Debug, Clone)]
pub struct AdamW {
    params: AdamWParams,
    step: u64,
    moments: BTreeMap<String, (Tensor, Tensor)>,
}

const STEP_KEY: &str = "__step__";

impl AdamW {
    /// A fresh optimizer (step 0, zero moments).
    pub fn new(params: AdamWParams) -> Self {
        Self {
            params,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// Number of updates applied so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Applies one update with learning rate `lr` to every var that has a gradient.
    pub fn step(&mut self, vars: &[(String, Var)], grads: &Gradients, lr: f64) -> Result<()> {
        self.step += 1;
        let AdamWParams {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.params;
        let t = self.step as i32;
        let step_size = lr / (1.0 - beta1.powi(t));
        let bias2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        for (name, var) in vars {
            let Some(grad) = grads.get(name) else {
                continue;
            };
            let (m, v) = match self.moments.remove(name) {
                Some(mv) => mv,
                None => (grad.zeros_like()?, grad.zeros_like()?),
            };
            let m = ((m * beta1)? + (grad * (1.0 - beta1))?)?;
            let v = ((v * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
            let denom = v.sqrt()?.affine(1.0 / bias2_sqrt, eps)?;
            let decay = if var.rank() > 1 { weight_decay } else { 0.0 };
            let update = (m.div(&denom)? * step_size)?;
            let new_value = if decay > 0.0 {
                ((var.as_tensor() * (1.0 - lr * decay))? - update)?
            } else {
                (var.as_tensor() - update)?
            };
            var.set(&new_value)
                .with_context(|| format!("updating {name}"))?;
            self.moments.insert(name.clone(), (m, v));
        }
        Ok(())
    }

    /// Saves the step count and moments (`<name>.exp_avg`, `<name>.exp_avg_sq`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        let device = self
            .moments
            .values()
            .next()
            .map(|(m, _)| m.device().clone())
            .unwrap_or(Device::Cpu);
        tensors.insert(
            STEP_KEY.to_string(),
            Tensor::new(&[self.step as i64], &device)?,
        );
        for (name, (m, v)) in &self.moments {
            tensors.insert(format!("{name}.exp_avg"), m.clone());
            tensors.insert(format!("{name}.exp_avg_sq"), v.clone());
        }
        candle_core::safetensors::save(&tensors, path)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Restores an optimizer saved by [`AdamW::save`].
    pub fn load(params: AdamWParams, path: &Path, device: &Device) -> Result<Self> {
        let mut tensors = candle_core::safetensors::load(path, device)
            .with_context(|| format!("reading {}", path.display()))?;
        let step = tensors
            .remove(STEP_KEY)
            .with_context(|| format!("{} has no {STEP_KEY}", path.display()))?
            .to_vec1::<i64>()?[0] as u64;
        let mut moments = BTreeMap::new();
        let names: Vec<String> = tensors
            .keys()
            .filter_map(|k| k.strip_suffix(".exp_avg").map(str::to_string))
            .collect();
        for name in names {
            let m = tensors.remove(&format!("{name}.exp_avg")).unwrap();
            let Some(v) = tensors.remove(&format!("{name}.exp_avg_sq")) else {
                bail!(
                    "{} has exp_avg but no exp_avg_sq for {name}",
                    path.display()
                );
            };
            moments.insert(name, (m, v));
        }
        Ok(Self {
            params,
            step,
            moments,
        })
    }
}

/// Shape of the learning-rate curve after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Half-cosine from the peak down to `min_lr_ratio · peak`.
    #[default]
    Cosine,
    /// Straight line from the peak down to `min_lr_ratio · peak`.
    Linear,
    /// The peak learning rate throughout (after warmup).
    Constant,
}

impl crate::choice::Choice for ScheduleKind {
    const CHOICES: &'static [(&'static str, Self, &'static str)] = &[
        (
            "cosine",
            Self::Cosine,
            "half-cosine from the peak down to min_lr_ratio x peak",
        ),
        (
            "linear",
            Self::Linear,
            "straight line from the peak down to min_lr_ratio x peak",
        ),
        (
            "constant",
            Self::Constant,
            "the peak learning rate throughout (after warmup)",
        ),
    ];
}

/// Linear warmup to `peak_lr`, then decay over the remaining steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Learning rate at the end of warmup.
    pub peak_lr: f64,
    /// Number of warmup steps.
    pub warmup_steps: usize,
    /// Total number of optimizer steps of the run.
    pub total_steps: usize,
    /// Decay shape.
    pub kind: ScheduleKind,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f64,
}

impl LrSchedule {
    /// Learning rate of optimizer step `step` (1-based: the first update is step 1).
    pub fn lr(&self, step: usize) -> f64 {
        if step <= self.warmup_steps {
            return self.peak_lr * step as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let shape = match self.kind {
            ScheduleKind::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            ScheduleKind::Linear => 1.0 - progress,
            ScheduleKind::Constant => 1.0,
        };
        self.peak_lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12 * (1.0 + b.abs())
    }

    #[test]
    fn schedule_golden_values() {
        let mut s = LrSchedule {
            peak_lr: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            kind: ScheduleKind::Cosine,
            min_lr_ratio: 0.1,
        };
        assert!(close(s.lr(5), 0.5));
        assert!(close(s.lr(10), 1.0));
        assert!(close(s.lr(35), 0.868_198_051_533_946_4));
        assert!(close(s.lr(60), 0.55));
        assert!(close(s.lr(110), 0.1));
        assert!(close(s.lr(500), 0.1));
        s.kind = ScheduleKind::Linear;
        assert!(close(s.lr(35), 0.775));
        assert!(close(s.lr(110), 0.1));
        s.kind = ScheduleKind::Constant;
        assert!(close(s.lr(3), 0.3));
        assert!(close(s.lr(80), 1.0));
        s.warmup_steps = 0;
        assert!(close(s.lr(1), 1.0));
    }

    fn one_param_grads(var: &Var, g: &[f64]) -> Result<(Vec<(String, Var)>, Gradients)> {
        let vars = vec![("p".to_string(), var.clone())];
        let mut grads = Gradients::new();
        grads.grads.insert(
            "p".to_string(),
            Tensor::new(g, &Device::Cpu)?.reshape((1, 2))?,
        );
        Ok((vars, grads))
    }

    #[test]
    fn adamw_matches_hand_computed_steps_and_resumes() -> Result<()> {
        let params = AdamWParams {
            weight_decay: 0.01,
            ..AdamWParams::default()
        };
        let var = Var::from_tensor(&Tensor::new(&[[1.0f64, -2.0]], &Device::Cpu)?)?;
        let mut opt = AdamW::new(params);
        let (vars, grads) = one_param_grads(&var, &[0.5, 0.1])?;
        opt.step(&vars, &grads, 0.1)?;
        let p = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        assert!(close(p[0], 0.899_000_002) && close(p[1], -2.097_999_990_000_001));

        // Save, reload, and take the second step from the reloaded state.
        let dir = tempfile::tempdir()?;
        opt.save(&dir.path().join("opt.safetensors"))?;
        let mut opt = AdamW::load(params, &dir.path().join("opt.safetensors"), &Device::Cpu)?;
        assert_eq!(opt.step_count(), 1);
        let (vars, grads) = one_param_grads(&var, &[0.25, -0.3])?;
        opt.step(&vars, &grads, 0.1)?;
        let p = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        assert!(close(p[0], 0.804_883_040_475_462_3), "{p:?}");
        assert!(close(p[1], -2.046_483_008_889_934_4), "{p:?}");
        Ok(())
    }

    #[test]
    fn clipping_scales_to_max_norm_and_reports_the_original() -> Result<()> {
        let var = Var::zeros((1, 2), DType::F64, &Device::Cpu)?;
        let (_, mut grads) = one_param_grads(&var, &[3.0, 4.0])?;
        assert!(close(grads.clip_global_norm(1.0)?, 5.0));
        assert!((grads.global_norm()? - 1.0).abs() < 1e-6);
        assert!(close(grads.clip_global_norm(10.0)?, grads.global_norm()?));
        Ok(())
    }
}
