//! `cai pipeline`: the whole Constitutional AI run in one command (Bai et al. 2022: SL-CAI then
//! RL-CAI), each stage's outputs in one run folder, with a run report.
//!
//! Stages run in the order of [`Stage::ALL`]: revise → sft → sample → label → rm → dpo → ppo →
//! grpo → eval. DPO (on the labels, no reward model) and GRPO (critic-free RL, rewarded by the
//! reward model or the feedback model directly) are alternatives to, or companions of, rm + ppo;
//! eval compares any two policies of the run.
//! A completed stage writes `stages/<stage>.done.json` with its fingerprint (resolved config,
//! sha256 of its inputs, fingerprints of the stages before it) and the sha256 of its outputs; a
//! re-run skips a stage whose done file matches and whose outputs are intact. Otherwise the
//! stage runs, resuming from its own outputs when an interrupted attempt with the same
//! fingerprint left them (records already written, the latest training checkpoint), or from
//! an emptied stage folder when the fingerprint changed.
//!
//! Modules: [`stage`] (the stages and the run folder's layout), [`config`] (the YAML file and its checks), [`plan`] (the stage configs with their
//! wiring: inputs, outputs in the run folder), [`state`] (hashes, fingerprints, done and
//! attempt files), [`runner`] (skip, resume or run each stage) and [`report`] (`report.md`).

pub mod config;
pub mod plan;
pub mod report;
pub mod runner;
pub mod stage;
pub mod state;

pub use config::PipelineConfig;
pub use runner::{run, Outcome, PipelineOptions};
pub use stage::{RunDir, Stage};
pub use state::StageStatus;
