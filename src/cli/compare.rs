//! `cai compare`: AI preference labels measured against human labels.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use clap::{ArgMatches, Args};
use serde::Serialize;

use super::help_defaults::Source;
use super::overlay::{self, Flags, To};
use crate::artifacts::REPORT;
use crate::compare::{self, CompareConfig};

/// What each printed number is computed on (shown after `cai compare --help`).
const NUMBERS: &str = "\
What the numbers are:
  agreement   pairs the human chose (a human 0.5 is not scored); the AI's final p_a (calibrated
              where the labeler calibrates); an AI tie (p_a = 0.5 exactly) counts half. Chance
              50 %. Wilson 95 % interval. Below 10 scored pairs: \"too few pairs to tell\";
              otherwise above, indistinguishable from, or below chance (inverted labels).
  kappa       the same pairs, AI ties left out; chance 0.
  log-loss, Brier, ECE
              every pair with a human label (soft ones as given); chance 0.693 and 0.250; ECE
              has no fixed chance level and says nothing on a file of ties.
  position    pairs asked in both orders; calibrated = the per-order probabilities as the label
              rows keep them, raw = before calibration or the CoT clamp (n/a without them).
  L2 vs L1    pairs scored in both; exact sign test; bootstrap interval from 10 pairs on.";

/// The flags of `cai compare`.
#[derive(Debug, Args, Serialize)]
#[command(after_long_help = NUMBERS)]
pub struct CompareArgs {
    /// YAML file with any CompareConfig fields; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Human-labelled pairs: HH-RLHF rows, TRL preference rows or our JSONL with `human`.
    #[arg(long)]
    pub human: Option<PathBuf>,
    /// AI label file from `cai label`; repeat to compare several (paired test vs the first).
    #[arg(long)]
    pub ai: Vec<PathBuf>,
    /// Folder for report.md, metrics.json and SVG plots (`--report` is the old spelling).
    #[arg(long, alias = "report")]
    pub out: Option<PathBuf>,
    /// Bootstrap resamples for the interval of a paired agreement difference (0 skips it);
    /// agreement intervals are Wilson and paired tests exact sign tests, which need none.
    #[arg(long)]
    pub bootstrap: Option<usize>,
    /// Seed of the bootstrap.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Calibration bins.
    #[arg(long)]
    pub bins: Option<usize>,
}

impl Flags for CompareArgs {
    type Config = CompareConfig;

    fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// `--out` is the config's `report`.
    fn to(id: &str) -> Option<To> {
        (id == "out").then(|| To::key("report"))
    }

    fn finish(&self, c: &mut CompareConfig) -> Result<()> {
        ensure!(
            !c.human.as_os_str().is_empty(),
            "no human labels: give --human FILE (or `human:` in the config)"
        );
        ensure!(
            !c.ai.is_empty(),
            "no AI labels: give --ai FILE, once per label file (or `ai:` in the config)"
        );
        Ok(())
    }
}

/// Defaults for `--help`: the config's.
pub fn help_defaults() -> (CompareConfig, Vec<(&'static str, Source)>) {
    (CompareConfig::default(), Vec::new())
}

/// Runs `cai compare`: the table on stdout, the report where `--out` says.
pub fn run(m: &ArgMatches) -> Result<()> {
    let cfg = overlay::resolve::<CompareArgs>(m)?;
    let report = compare::run(&cfg)?;
    print!("{}", compare::report::render_table(&report));
    if let Some(dir) = &cfg.report {
        eprintln!(
            "cai: compare: report written to {}",
            dir.join(REPORT).display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_states_the_small_n_rule_in_force() {
        let n = crate::compare::significance::MIN_PAIRS;
        assert!(NUMBERS.contains(&format!("Below {n} scored pairs")));
        assert!(NUMBERS.contains(&format!("bootstrap interval from {n} pairs on")));
    }
}
