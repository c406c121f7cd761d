//! Progress reporting of training runs: per-step statistics, an observer hook for
//! progress bars, and the `train_log.csv` file.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Statistics of one optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    /// The step just taken (1-based).
    pub step: usize,
    /// Steps the run will take.
    pub total_steps: usize,
    /// Epoch the step's first example came from (0-based).
    pub epoch: usize,
    /// Mean loss over the step's loss tokens.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Real (non-padding) tokens processed.
    pub tokens: usize,
    /// Throughput of the step (forward, backward and update).
    pub tokens_per_s: f64,
}

/// Something that happened during training.
#[derive(Debug, Clone)]
pub enum TrainEvent<'a> {
    /// An optimizer step finished.
    Step(&'a StepStats),
    /// The held-out loss was measured after `step`.
    Eval {
        /// Steps done.
        step: usize,
        /// Mean held-out loss.
        loss: f64,
    },
    /// A checkpoint or the final model was written.
    Checkpoint {
        /// Steps done.
        step: usize,
        /// The folder written.
        path: &'a Path,
    },
}

/// Receives [`TrainEvent`]s, e.g. to drive a progress bar. Closures taking
/// `&TrainEvent` implement it.
pub trait TrainObserver {
    /// Called for every event.
    fn on_event(&mut self, event: &TrainEvent);
}

impl<F: FnMut(&TrainEvent)> TrainObserver for F {
    fn on_event(&mut self, event: &TrainEvent) {
        self(event)
    }
}

/// `x` in short scientific notation: 2e-6, 1.5e-5.
fn short_e(x: f64) -> String {
    let s = format!("{x:.3e}");
    match s.split_once('e') {
        Some((m, e)) if m.contains('.') => {
            format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.'))
        }
        _ => s,
    }
}

/// The warning for a linear warm-up of `warmup_steps` to `lr` that is not shorter than the
/// run's `total_steps` (the learning rate at step `s ≤ warmup` is `lr·s/warmup`, so such a
/// run never trains at `lr` after its warm-up, or not at all); `None` when the run outlasts it.
pub fn warmup_warning(warmup_steps: usize, total_steps: usize, lr: f64) -> Option<String> {
    if warmup_steps == 0 || warmup_steps < total_steps {
        return None;
    }
    let last = lr * total_steps as f64 / warmup_steps as f64;
    Some(match warmup_steps > total_steps {
        true => format!(
            "the warm-up ({warmup_steps} steps) is longer than the run ({total_steps} steps): \
             the learning rate rises to {} at the last step and never reaches --lr {}; set \
             --warmup-steps below {total_steps}",
            short_e(last),
            short_e(lr)
        ),
        false => format!(
            "the warm-up ({warmup_steps} steps) takes the whole run: the learning rate reaches \
             --lr {} only at the last step and never decays; set --warmup-steps below \
             {total_steps}",
            short_e(lr)
        ),
    })
}

const HEADER: &str = "step,epoch,loss,eval_loss,lr,grad_norm,tokens_per_s";

/// Appends one row per step to a CSV file.
#[derive(Debug)]
pub struct CsvLog {
    path: PathBuf,
    file: std::fs::File,
}

impl CsvLog {
    /// Opens `path` for a run now at `step`: rows of later steps (left by a run that went
    /// further before being resumed from an earlier checkpoint) are dropped, and the
    /// header is written to a new file.
    pub fn open(path: &Path, step: usize) -> Result<Self> {
        let kept: Vec<String> = match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .skip(1)
                .filter(|line| {
                    line.split(',')
                        .next()
                        .and_then(|s| s.parse::<usize>().ok())
                        .is_some_and(|s| s <= step)
                })
                .map(str::to_string)
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut text = format!("{HEADER}\n");
        for line in kept {
            text.push_str(&line);
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends the row of `stats`, with the held-out loss if one was measured.
    pub fn append(&mut self, stats: &StepStats, eval_loss: Option<f64>) -> Result<()> {
        let eval = eval_loss.map(|l| format!("{l:.6}")).unwrap_or_default();
        writeln!(
            self.file,
            "{},{},{:.6},{},{:.6e},{:.6},{:.1}",
            stats.step,
            stats.epoch,
            stats.loss,
            eval,
            stats.lr,
            stats.grad_norm,
            stats.tokens_per_s
        )
        .with_context(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_longer_than_the_run_is_reported() {
        // The reward model's defaults (10 warm-up steps, lr 1e-5) with --max-steps 2: steps 1
        // and 2 train at 1e-5·1/10 = 1e-6 and 1e-5·2/10 = 2e-6.
        let w = warmup_warning(10, 2, 1e-5).expect("a warning");
        assert!(w.contains("(10 steps)") && w.contains("(2 steps)"), "{w}");
        assert!(
            w.contains("rises to 2e-6") && w.contains("--lr 1e-5"),
            "{w}"
        );
        assert!(!w.contains('\n'));
        let w = warmup_warning(4, 4, 3e-4).expect("a warning");
        assert!(
            w.contains("takes the whole run") && w.contains("3e-4"),
            "{w}"
        );
        assert_eq!(warmup_warning(10, 11, 1e-5), None);
        assert_eq!(warmup_warning(0, 1, 1e-5), None);
        assert_eq!(short_e(1.5e-5), "1.5e-5");
    }

    fn stats(step: usize) -> StepStats {
        StepStats {
            step,
            total_steps: 10,
            epoch: 0,
            loss: 1.5,
            lr: 1e-4,
            grad_norm: 0.5,
            tokens: 100,
            tokens_per_s: 1000.0,
        }
    }

    #[test]
    fn csv_log_writes_rows_and_truncates_on_resume() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("train_log.csv");
        let mut log = CsvLog::open(&path, 0)?;
        for step in 1..=3 {
            log.append(&stats(step), (step == 2).then_some(1.25))?;
        }
        drop(log);
        let text = std::fs::read_to_string(&path)?;
        assert_eq!(text.lines().count(), 4);
        assert_eq!(
            text.lines().nth(2).unwrap(),
            "2,0,1.500000,1.250000,1.000000e-4,0.500000,1000.0"
        );
        let mut log = CsvLog::open(&path, 1)?;
        log.append(&stats(2), None)?;
        let text = std::fs::read_to_string(&path)?;
        let steps: Vec<&str> = text.lines().skip(1).map(|l| &l[..1]).collect();
        assert_eq!(steps, vec!["1", "2"]);
        Ok(())
    }
}
