//! File names inside the output folders, shared by the stage that writes a file and the
//! pipeline and report that read it. Every trainer uses the same names for the same kinds:
//! `train_log.csv` one row per optimizer step, `eval_log.csv` one row per held-out
//! evaluation, `metrics.json` the final figures, and plots named for what they show.

/// One row per optimizer step (sft, rm, dpo, ppo and its variants).
pub const TRAIN_LOG: &str = "train_log.csv";
/// One row per held-out evaluation (rm, dpo).
pub const EVAL_LOG: &str = "eval_log.csv";
/// Final figures of a stage (rm, dpo, compare).
pub const METRICS: &str = "metrics.json";
/// A Markdown report (eval, compare, the pipeline's run folder).
pub const REPORT: &str = "report.md";
/// The win rates of `cai eval`.
pub const EVAL_RESULT: &str = "eval.json";
/// Responses sampled during RL (ppo), or by `cai sample` in a run folder.
pub const SAMPLES: &str = "samples.jsonl";
/// The trained model of a trainer's output folder.
pub const FINAL_DIR: &str = "final";

/// Training (and held-out) loss per step.
pub const LOSS_PLOT: &str = "loss.svg";
/// Held-out preference accuracy per evaluation (rm, dpo).
pub const ACCURACY_PLOT: &str = "accuracy.svg";
/// Rewards: held-out reward distributions (rm, dpo), or the mean score and reward per step
/// (ppo).
pub const REWARDS_PLOT: &str = "rewards.svg";
/// KL to the reference per step (ppo).
pub const KL_PLOT: &str = "kl.svg";
/// Calibration of AI labels against human ones (compare).
pub const RELIABILITY_PLOT: &str = "reliability.svg";
/// Agreement with human labels per comparison principle (compare).
pub const PRINCIPLES_PLOT: &str = "principles.svg";
/// Distribution of the AI labels' P(A) (compare).
pub const P_A_HIST_PLOT: &str = "p_a_hist.svg";
