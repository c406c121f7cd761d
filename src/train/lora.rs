//! The LoRA-adapted linear layer of the training model: `x Wᵀ + (alpha / rank) · (x Aᵀ) Bᵀ`.
//! Adapter settings, initialisation, files and merging are in [`crate::model_files::lora`].

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::ops;
use crate::model_files::lora::LoraConfig;

/// A linear layer without bias, optionally with a LoRA adapter.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    weight: Tensor,
    adapter: Option<(Tensor, Tensor, f64)>,
}

impl LoraLinear {
    /// A plain layer computing `x weightᵀ`.
    pub fn from_weight(weight: Tensor) -> Self {
        Self {
            weight,
            adapter: None,
        }
    }

    /// Loads `weight` (and, with `lora`, `lora_A.weight`/`lora_B.weight`) from `vb`.
    pub fn load(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        lora: Option<&LoraConfig>,
    ) -> candle_core::Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let adapter = match lora {
            Some(lora) => {
                let a = vb.get((lora.rank, in_dim), "lora_A.weight")?;
                let b = vb.get((out_dim, lora.rank), "lora_B.weight")?;
                Some((a, b, lora.scale()))
            }
            None => None,
        };
        Ok(Self { weight, adapter })
    }

    /// The base weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Holds a frozen base weight (one that tracks no gradient) in `dtype`; a trainable one
    /// stays the optimizer's tensor and is cast where it is used.
    pub fn hold_frozen_in(&mut self, dtype: DType) -> candle_core::Result<()> {
        if !self.weight.track_op() {
            self.weight = self.weight.to_dtype(dtype)?;
        }
        Ok(())
    }

    /// Applies the layer to the last dimension of `xs`, in the dtype of `xs`.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let base = ops::linear(xs, &self.weight)?;
        match &self.adapter {
            None => Ok(base),
            Some((a, b, scale)) => {
                let update = ops::linear(&ops::linear(xs, a)?, b)?;
                base + (update * *scale)?
            }
        }
    }
}
