//! One rule for continuing a run, the same for every trainer (sft, rm, dpo, ppo and its
//! critic-free variants):
//!
//! - an output folder that already holds a checkpoint is continued only with `--resume`
//!   (a fresh run would overwrite it);
//! - `--resume` without a checkpoint to continue is an error;
//! - a resumed run keeps its settings: every setting that differs from the checkpoint's is
//!   named and refused, except how long the run lasts (`max_steps`, `epochs`, PPO's `steps`)
//!   and what changes no number of it (`save_every`, `eval_every`, `sample_every`,
//!   `max_batch_tokens`). A changed length shortens or extends the run, and the learning-rate
//!   schedule then spans the new length;
//! - a fresh run writes only into a folder that is absent, empty, or already holds what a
//!   trainer writes (its log, manifest, checkpoints, final model): a folder of the user's
//!   files is refused, never written into.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::artifacts::{
    EVAL_LOG, FINAL_DIR, MANIFEST, METRICS, REFERENCE_LOGPS, SAMPLES, TRAINER_STATE_FILE, TRAIN_LOG,
};
use crate::model_files::checkpoint::latest_checkpoint;

/// Settings a resumed run may change.
pub const FREE_ON_RESUME: &[&str] = &[
    "max_steps",
    "epochs",
    "steps",
    "save_every",
    "eval_every",
    "sample_every",
    "max_batch_tokens",
];

/// The checkpoint a run continues from: the latest one in `out_dir` with `resume`, nothing
/// for a fresh run; the two refusals of the rule otherwise.
pub fn resume_point(out_dir: &Path, resume: bool) -> Result<Option<PathBuf>> {
    if out_dir.exists() && !out_dir.is_dir() {
        bail!(
            "--out {} exists and is not a folder: a trainer writes a folder; choose another --out",
            out_dir.display()
        );
    }
    match (resume, latest_checkpoint(out_dir)?) {
        (true, Some(dir)) => Ok(Some(dir)),
        (true, None) => bail!(
            "--resume: no checkpoint-N folder in {} to continue from",
            out_dir.display()
        ),
        (false, Some(found)) => bail!(
            "{} already holds {}: pass --resume to continue that run, or choose another --out",
            out_dir.display(),
            found.display()
        ),
        (false, None) => {
            check_fresh_out(out_dir)?;
            Ok(None)
        }
    }
}

/// Refuses a fresh run's `--out` folder that holds files but nothing a trainer writes (the
/// user's own files, which a run would mix with or overwrite).
fn check_fresh_out(out_dir: &Path) -> Result<()> {
    if !out_dir.exists() {
        return Ok(());
    }
    let names: Vec<String> = std::fs::read_dir(out_dir)
        .with_context(|| format!("cannot list {}", out_dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let ours = |n: &str| {
        [MANIFEST, TRAIN_LOG, EVAL_LOG, METRICS, FINAL_DIR, SAMPLES].contains(&n)
            || n.starts_with("checkpoint-")
            || n.ends_with("_config.yaml")
            || n.trim_start_matches('.').starts_with(REFERENCE_LOGPS)
    };
    if !names.is_empty() && !names.iter().any(|n| ours(n)) {
        let mut shown: Vec<&str> = names.iter().map(String::as_str).take(3).collect();
        shown.sort_unstable();
        bail!(
            "--out {} already holds files that no cai trainer wrote ({}{}); a run would write \
             among them: choose another --out",
            out_dir.display(),
            shown.join(", "),
            if names.len() > 3 { ", …" } else { "" }
        );
    }
    Ok(())
}

/// The trainer state saved in checkpoint folder `dir` (`trainer_state.json`).
pub fn read_state<S: DeserializeOwned>(dir: &Path) -> Result<S> {
    let path = dir.join(TRAINER_STATE_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Writes `state` as the trainer state of folder `dir` (`trainer_state.json`).
pub fn write_state<S: Serialize>(dir: &Path, state: &S) -> Result<()> {
    let path = dir.join(TRAINER_STATE_FILE);
    let text = serde_json::to_string_pretty(state)?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// Refuses to resume the run saved in `checkpoint` with settings `now` that differ from its
/// `saved` ones, naming each (`lr: 0.0001 -> 0.001`).
pub fn check_settings<T: Serialize>(checkpoint: &Path, saved: &T, now: &T) -> Result<()> {
    let changed = changed_settings(&serde_json::to_value(saved)?, &serde_json::to_value(now)?);
    if !changed.is_empty() {
        bail!(
            "--resume: the settings differ from those of the run in {}: {}; resume with the \
             run's settings (only {} may change) or start a new run in another --out",
            checkpoint.display(),
            changed.join(", "),
            FREE_ON_RESUME.join(", ")
        );
    }
    Ok(())
}

/// The paths where `now` differs from `saved`, as `path: old -> new`, leaving out the
/// [`FREE_ON_RESUME`] keys.
pub fn changed_settings(saved: &Value, now: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff("", saved, now, &mut out);
    out
}

fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                if FREE_ON_RESUME.contains(&k.as_str()) {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff(
                    &p,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push(format!("{path}: {a} -> {b}")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn changed_settings_are_named_and_the_length_is_free() {
        let saved = json!({"lr": 1e-4, "max_steps": 10, "trainable": {"lora": {"rank": 8}},
                           "save_every": 5});
        let now = json!({"lr": 1e-3, "max_steps": 20, "trainable": {"lora": {"rank": 16}},
                         "save_every": 2});
        assert_eq!(
            changed_settings(&saved, &now),
            ["lr: 0.0001 -> 0.001", "trainable.lora.rank: 8 -> 16"]
        );
        assert!(changed_settings(
            &saved,
            &json!({"lr": 1e-4, "max_steps": 3,
            "trainable": {"lora": {"rank": 8}}})
        )
        .is_empty());
    }

    #[test]
    fn a_fresh_run_never_writes_among_the_users_files() {
        let dir = tempfile::tempdir().unwrap();
        // Absent and empty folders are fresh.
        assert_eq!(resume_point(&dir.path().join("new"), false).unwrap(), None);
        assert_eq!(resume_point(dir.path(), false).unwrap(), None);
        // A folder of the user's files is refused, naming one of them.
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let e = resume_point(dir.path(), false).unwrap_err().to_string();
        assert!(
            e.contains("no cai trainer wrote") && e.contains("notes.txt"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
            "mine"
        );
        // A folder a trainer wrote before (its log) is run into again.
        std::fs::write(dir.path().join(TRAIN_LOG), "step,loss\n").unwrap();
        assert_eq!(resume_point(dir.path(), false).unwrap(), None);
        // A file is not a folder.
        let file = dir.path().join("notes.txt");
        let e = resume_point(&file, false).unwrap_err().to_string();
        assert!(e.contains("is not a folder"), "{e}");
    }

    #[test]
    fn a_folder_with_checkpoints_needs_resume_and_resume_needs_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resume_point(dir.path(), false).unwrap(), None);
        let e = resume_point(dir.path(), true).unwrap_err().to_string();
        assert!(e.contains("no checkpoint-N folder"), "{e}");
        let ck = dir.path().join("checkpoint-3");
        std::fs::create_dir(&ck).unwrap();
        std::fs::write(ck.join(crate::artifacts::TRAINER_STATE_FILE), "{}").unwrap();
        assert_eq!(resume_point(dir.path(), true).unwrap(), Some(ck));
        let e = resume_point(dir.path(), false).unwrap_err().to_string();
        assert!(e.contains("pass --resume"), "{e}");
    }
}
