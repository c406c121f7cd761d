//! Training core: a trainable llama-architecture causal LM on candle and supervised
//! fine-tuning (full, top layers, or LoRA) with resumable checkpoints.
//!
//! Typical use: load base weights with [`load_gguf`] or [`load_hf_dir`] in f32, build
//! [`TokenizedExample`]s, and call [`train_sft`] with an [`SftConfig`]. The trained
//! model is written as a Hugging Face style folder that [`load_model_dir`] reads back;
//! build a [`Llama`] from it for generation with [`CausalLm::forward_cached`].
//!
//! Reward models ([`reward`], [`reward_trainer`]) reuse the same core with a scalar head
//! and the pairwise losses of [`reward_loss`]; DPO ([`dpo_trainer`]) with the preference
//! losses of [`dpo_loss`] on response log-probabilities against a frozen reference.

pub mod advantage;
pub mod attention;
pub mod data;
pub mod dpo_data;
pub mod dpo_loss;
pub mod dpo_metrics;
pub mod dpo_trainer;
pub mod lm_head;
pub mod log;
pub mod lora;
pub mod memory;
pub mod model;
pub mod ops;
pub mod optim;
pub mod params;
pub mod ppo;
pub mod ppo_config;
pub mod ppo_math;
pub mod ppo_rollout;
pub mod precision;
pub mod recompute;
pub mod resume;
pub mod reward;
pub mod reward_data;
pub mod reward_loss;
pub mod reward_text;
pub mod reward_trainer;
pub mod sft;
pub mod sft_data;
pub mod split;
pub mod trainer;

#[cfg(test)]
mod dpo_tests;
#[cfg(test)]
mod family_tests;
#[cfg(test)]
mod memory_tests;
#[cfg(test)]
mod ppo_tests;
#[cfg(test)]
mod real_model_tests;
#[cfg(test)]
mod reward_tests;
#[cfg(test)]
mod sft_tests;
#[cfg(test)]
mod tests;

pub use crate::model_files::checkpoint::{load_model_dir, merge_checkpoint, save_model_dir};
pub use crate::model_files::config::LlamaConfig;
pub use crate::model_files::lora::LoraConfig;
pub use crate::model_files::weights::{load_gguf, load_hf_dir, Weights};
pub use data::{Batch, TokenizedExample};
pub use log::{StepStats, TrainEvent, TrainObserver};
pub use model::{CausalLm, GenerationCache, Llama};
pub use optim::{AdamW, AdamWParams, LrSchedule, ScheduleKind};
pub use params::{ParamStore, Trainable};
pub use precision::Precision;
pub use sft::{NonFiniteError, SftConfig, SftSummary};
pub use trainer::{train_sft, SftStart, SftTrainer, TrainerState};

/// Builds a [`Llama`] for inference from plain weights (no `Var`s, no LoRA).
pub fn model_from_weights(cfg: &LlamaConfig, weights: &Weights) -> anyhow::Result<Llama> {
    let (dtype, device) = crate::model_files::weights::dtype_device(weights)?;
    let vb = candle_nn::VarBuilder::from_tensors(weights.clone(), dtype, &device);
    Ok(Llama::new(cfg, vb)?)
}
