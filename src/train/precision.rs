//! The number format of a training run's forward and backward passes.
//!
//! Mixed precision keeps the parameters the optimizer updates ("master weights") and their
//! gradients in f32, and runs the transformer blocks in bf16: each trainable weight is cast
//! where it is used (the cast is part of the graph, so its gradient arrives in f32), frozen
//! projection weights are held in bf16 once, and the hidden states between blocks are bf16.
//! RMS norms, attention's softmax and the losses' log-softmax run in f32 (see
//! [`super::ops::wide_dtype`]). This is the recipe of Micikevicius et al. 2018 with bf16's
//! f32-sized exponent, which needs no loss scaling.

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

/// `dtype` of a training run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// bf16 blocks with f32 master weights on a GPU; f32 on the CPU.
    #[default]
    Auto,
    /// Everything in f32.
    F32,
    /// bf16 blocks with f32 master weights (GPU only).
    Bf16,
}

impl crate::choice::Choice for Precision {
    const CHOICES: &'static [(&'static str, Self, &'static str)] = &[
        (
            "auto",
            Self::Auto,
            "bf16 with f32 master weights on a GPU, f32 on the CPU",
        ),
        ("f32", Self::F32, "f32 weights and activations"),
        (
            "bf16",
            Self::Bf16,
            "bf16 weights and activations with f32 master weights (GPU only)",
        ),
    ];
}

impl Precision {
    /// The dtype the transformer blocks compute in on `device`.
    ///
    /// bf16 on the CPU is an error: candle's CPU matrix product has no bf16 kernel, so it
    /// could not run (and would be slower than f32 where it could).
    pub fn compute_dtype(self, device: &Device) -> Result<DType> {
        match (self, device.is_cpu()) {
            (Self::F32, _) | (Self::Auto, true) => Ok(DType::F32),
            (Self::Bf16, false) | (Self::Auto, false) => Ok(DType::BF16),
            (Self::Bf16, true) => bail!(
                "dtype bf16 needs a GPU (a cai built with `--features cuda`): candle's CPU \
                 matrix product has no bf16 kernel; use `--dtype f32` (or `auto`) on the CPU"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_f32_on_the_cpu_and_bf16_there_is_refused() {
        let cpu = Device::Cpu;
        assert_eq!(Precision::Auto.compute_dtype(&cpu).unwrap(), DType::F32);
        assert_eq!(Precision::F32.compute_dtype(&cpu).unwrap(), DType::F32);
        let err = format!("{:#}", Precision::Bf16.compute_dtype(&cpu).unwrap_err());
        assert!(
            err.contains("needs a GPU") && err.contains("--dtype f32"),
            "{err}"
        );
    }
}
