//! File names inside the output folders, shared by the stage that writes a file and the
//! pipeline and report that read it, and the names of a model folder's files (Hugging Face's
//! names, which cai writes and reads). Every trainer uses the same names for the same kinds:
//! `train_log.csv` one row per optimizer step, `eval_log.csv` one row per held-out
//! evaluation, `metrics.json` the final figures, and plots named for what they show.

/// The resolved config, data and model hashes and summary of a trainer's output folder (sft,
/// dpo, ppo); record files have theirs beside them (`X.jsonl.manifest.json`).
pub const MANIFEST: &str = "manifest.json";
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
/// DPO's cached reference log-probabilities in its output folder.
pub const REFERENCE_LOGPS: &str = "reference_logps.json";

/// Single-file weights in a model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The shard index of sharded weights in a model folder.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
/// The model config in a model folder.
pub const CONFIG_FILE: &str = "config.json";
/// LoRA adapter weights inside a checkpoint folder.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter.safetensors";
/// LoRA adapter settings inside a checkpoint folder.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// The trainer's position, settings and data fingerprint in a checkpoint folder.
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";
/// The optimizer's step count and moments in a checkpoint folder.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

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

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [&str; 22] = [
        MANIFEST,
        TRAIN_LOG,
        EVAL_LOG,
        METRICS,
        REPORT,
        EVAL_RESULT,
        SAMPLES,
        FINAL_DIR,
        WEIGHTS_FILE,
        WEIGHTS_INDEX_FILE,
        CONFIG_FILE,
        ADAPTER_WEIGHTS_FILE,
        ADAPTER_CONFIG_FILE,
        TRAINER_STATE_FILE,
        OPTIMIZER_FILE,
        LOSS_PLOT,
        ACCURACY_PLOT,
        REWARDS_PLOT,
        KL_PLOT,
        RELIABILITY_PLOT,
        PRINCIPLES_PLOT,
        P_A_HIST_PLOT,
    ];

    /// Each `.rs` file under `dir`, recursively.
    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// The names cai writes are spelled once, here: no code in src/ outside this file (unit
    /// tests aside) writes one of them as a string literal.
    #[test]
    fn artifact_names_are_constants_used_everywhere() {
        let mut names = ALL.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "two constants name the same file");
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut found = Vec::new();
        for f in files {
            let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
            if f.ends_with("src/artifacts.rs") || stem == "tests" || stem.ends_with("_tests") {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests {").next().unwrap();
            for (i, line) in code.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                // `final` is also a common word (a revision's field), so only file names count.
                for name in ALL.into_iter().filter(|n| n.contains('.')) {
                    if line.contains(&format!("\"{name}\"")) {
                        found.push(format!("{}:{}: {name}", f.display(), i + 1));
                    }
                }
            }
        }
        assert!(found.is_empty(), "literal artifact names: {found:#?}");
    }
}
