//! The pipeline's stages, in the order a run takes them: `revise` (critique → revision SFT
//! data), `sft`, `sample` (response pairs), `label` (AI feedback), `rm` (reward model, and
//! `score` with it), `dpo`, `ppo` (PPO, GRPO, RLOO and REINFORCE, with the reward model or the
//! feedback model as reward), `eval`. Each stage takes its resolved config and returns a
//! summary; flags and YAML files become configs in `crate::cli`, and `crate::pipeline` chains
//! the stages in a run folder.

pub mod dpo;
pub mod eval;
pub mod feedback;
pub mod label;
pub mod ppo;
pub mod records;
pub mod revise;
pub mod rm;
pub mod sample;
pub mod sft;
