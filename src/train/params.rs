//! Model parameters split into trainable variables and frozen constants.
//!
//! candle computes gradients only for `Var`s, and skips the backward pass of layers
//! that depend on no `Var` at all. [`ParamStore`] therefore turns only the selected
//! tensors into `Var`s and keeps the rest as plain tensors, which makes frozen layers
//! cheap. The optimizer updates the `Var`s in place, so the model built from the store
//! and the store's tensors always show the current values.

use super::model::Llama;
use super::precision::Precision;
use crate::model_files::checkpoint::{self, ExtraFiles};
use crate::model_files::config::LlamaConfig;
use crate::model_files::lora::{self, LoraConfig};
use crate::model_files::weights::{self, Weights};
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Which parameters a run trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Trainable {
    /// Every weight (full fine-tuning).
    #[default]
    All,
    /// The last `n` decoder blocks, the final norm, and `lm_head` when it is not tied to
    /// the embeddings (tied embeddings stay frozen).
    TopLayers(usize),
    /// Only LoRA adapters; the base model is frozen.
    Lora(LoraConfig),
}

impl Trainable {
    /// The LoRA settings, if this is a LoRA run.
    pub fn lora(&self) -> Option<&LoraConfig> {
        match self {
            Trainable::Lora(lora) => Some(lora),
            _ => None,
        }
    }

    /// Whether the tensor `name` is trained under this mode.
    pub fn is_trainable(&self, cfg: &LlamaConfig, name: &str) -> bool {
        match self {
            Trainable::All => true,
            Trainable::Lora(_) => is_adapter(name),
            Trainable::TopLayers(n) => {
                let first = cfg.num_hidden_layers.saturating_sub(*n);
                if name == "model.norm.weight" || name == "lm_head.weight" {
                    return true;
                }
                name.strip_prefix("model.layers.")
                    .and_then(|rest| rest.split('.').next())
                    .and_then(|layer| layer.parse::<usize>().ok())
                    .is_some_and(|layer| layer >= first)
            }
        }
    }
}

/// All tensors of a model, with the trainable ones backed by `Var`s.
#[derive(Debug, Clone)]
pub struct ParamStore {
    config: LlamaConfig,
    trainable: Trainable,
    tensors: BTreeMap<String, Tensor>,
    vars: Vec<(String, Var)>,
}

impl ParamStore {
    /// Splits `weights` (base weights plus, for LoRA, adapter tensors) according to
    /// `trainable`. Trainable tensors are copied into fresh `Var`s, so the caller's
    /// tensors are never modified.
    pub fn new(config: &LlamaConfig, weights: Weights, trainable: Trainable) -> Result<Self> {
        if trainable.lora().is_some() {
            ensure!(
                weights.keys().any(|name| is_adapter(name)),
                "LoRA training needs adapter tensors (see lora::init_adapters)"
            );
        }
        let mut tensors = BTreeMap::new();
        let mut vars = Vec::new();
        for (name, tensor) in weights {
            if trainable.is_trainable(config, &name) {
                let var = Var::from_tensor(&tensor.detach())
                    .with_context(|| format!("making {name} trainable"))?;
                tensors.insert(name.clone(), var.as_tensor().clone());
                vars.push((name, var));
            } else {
                tensors.insert(name, tensor.detach());
            }
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        ensure!(
            !vars.is_empty(),
            "no trainable parameters for mode {trainable:?}"
        );
        Ok(Self {
            config: config.clone(),
            trainable,
            tensors,
            vars,
        })
    }

    /// A fresh run's parameters: `weights` (f32) plus, for LoRA, adapters initialised from
    /// `seed`.
    pub fn fresh(
        config: &LlamaConfig,
        mut weights: Weights,
        trainable: Trainable,
        seed: u64,
    ) -> Result<Self> {
        let (dtype, device) = weights::dtype_device(&weights)?;
        ensure!(
            dtype == DType::F32,
            "training needs f32 weights (got {dtype:?}); load them with DType::F32"
        );
        if let Some(lora_cfg) = trainable.lora() {
            weights.extend(lora::init_adapters(config, lora_cfg, seed, dtype, &device)?);
        }
        Self::new(config, weights, trainable)
    }

    /// The parameters saved in a checkpoint folder (base weights and LoRA adapters), in f32.
    pub fn restore(dir: &Path, trainable: Trainable, device: &Device) -> Result<Self> {
        let stored = checkpoint::load_model_dir_unmerged(dir, DType::F32, device)?;
        let mut weights = stored.base;
        if let Some((_, adapters)) = stored.adapters {
            weights.extend(adapters);
        }
        Self::new(&stored.config, weights, trainable)
    }

    /// The model configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The training mode the store was split by.
    pub fn trainable(&self) -> &Trainable {
        &self.trainable
    }

    /// Trainable parameters by name, sorted by name.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Number of trainable scalars.
    pub fn num_trainable(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Every tensor by name (current values).
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// The base model weights (no adapter tensors), detached copies of the current values.
    pub fn base_weights(&self) -> Weights {
        self.select(|name| !is_adapter(name))
    }

    /// The base weights with the LoRA adapters merged in (the base weights outside LoRA
    /// runs): what a final model folder holds.
    pub fn merged_weights(&self) -> Result<Weights> {
        let base = self.base_weights();
        match self.trainable.lora() {
            Some(l) => lora::merge_adapters(&base, &self.adapter_weights(), l),
            None => Ok(base),
        }
    }

    /// Writes the parameters a resumable checkpoint holds into `dir`: the base weights as a
    /// model folder (with `extra_files`) and, in LoRA runs, the adapters beside them (what
    /// [`Self::restore`] reads).
    pub fn write_checkpoint_files(&self, dir: &Path, extra_files: ExtraFiles) -> Result<()> {
        checkpoint::write_model_files(dir, &self.config, &self.base_weights(), extra_files)?;
        if let Some(lora_cfg) = self.trainable.lora() {
            lora::save_adapters(dir, &self.adapter_weights(), lora_cfg)?;
        }
        Ok(())
    }

    /// Writes the trained model into `dir` as a model folder (with `extra_files`) that every
    /// stage loads: [`Self::merged_weights`].
    pub fn write_final_files(&self, dir: &Path, extra_files: ExtraFiles) -> Result<()> {
        checkpoint::write_model_files(dir, &self.config, &self.merged_weights()?, extra_files)
    }

    /// The LoRA adapter tensors (empty unless this is a LoRA run).
    pub fn adapter_weights(&self) -> Weights {
        self.select(is_adapter)
    }

    fn select(&self, keep: impl Fn(&str) -> bool) -> Weights {
        self.tensors
            .iter()
            .filter(|(name, _)| keep(name))
            .map(|(name, t)| (name.clone(), t.detach()))
            .collect::<HashMap<_, _>>()
    }

    /// Builds the model on top of these tensors (LoRA layers in LoRA mode).
    pub fn build_model(&self) -> Result<Llama> {
        let (dtype, device) = self.dtype_device()?;
        let map: HashMap<String, Tensor> = self.tensors.clone().into_iter().collect();
        let vb = VarBuilder::from_tensors(map, dtype, &device);
        let model = match &self.trainable {
            Trainable::Lora(lora) => Llama::new_with_lora(&self.config, vb, lora),
            _ => Llama::new(&self.config, vb),
        };
        model.context("building the model from the parameter store")
    }

    /// The model a trainer runs: [`ParamStore::build_model`] computing in `precision` on the
    /// store's device, with activation checkpointing.
    pub fn training_model(&self, precision: Precision) -> Result<Llama> {
        let (_, device) = self.dtype_device()?;
        let dtype = precision.compute_dtype(&device)?;
        Ok(self
            .build_model()?
            .with_compute_dtype(dtype)?
            .with_checkpointing())
    }

    fn dtype_device(&self) -> Result<(DType, Device)> {
        let t = self
            .tensors
            .values()
            .next()
            .context("empty parameter store")?;
        Ok((t.dtype(), t.device().clone()))
    }
}

/// Whether `name` is a LoRA adapter tensor.
pub fn is_adapter(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}
