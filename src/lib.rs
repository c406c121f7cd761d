//! cai: the Constitutional AI / RLAIF pipeline (Bai et al. 2022; Lee et al. 2023) on real
//! language models: constitution → critique/revision SFT data → AI preference labels →
//! reward model → PPO, or DPO on the labels directly.

pub mod artifacts;
pub mod bench;
pub mod chat;
pub mod choice;
pub mod cli;
pub mod compare;
pub mod config_file;
pub mod constitution;
pub mod device;
pub mod export;
pub mod hash;
pub mod inputs;
pub mod jsonl;
pub mod label_metrics;
pub mod llm;
pub mod manifest;
pub mod model_files;
pub mod pairs;
pub mod perplexity;
pub mod pipeline;
pub mod plot;
pub mod progress;
pub mod prompts;
pub mod redact;
pub mod revisions;
pub mod sampling;
pub mod stages;
#[doc(hidden)]
pub mod test_support;
pub mod train;
mod yaml_locate;
