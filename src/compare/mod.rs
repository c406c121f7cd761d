//! `cai compare`: how well AI preference labels agree with human labels.
//!
//! [`run`] reads a human-labelled pair file (any format [`crate::pairs::read_pairs`] accepts) and
//! one or more AI label files written by `cai label`, joins them by content, computes agreement,
//! kappa, calibration and position-bias metrics per AI file, runs a paired bootstrap test of each
//! further file against the first, and optionally writes a report folder.

pub mod bootstrap;
pub mod join;
pub mod report;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::label_metrics::{self, Calibration, GroupAgreement, Kappa, PositionStats};
use crate::pairs::read_pairs;
use bootstrap::PairedTest;
use join::{HumanIndex, JoinStats, JoinedRow};

/// Bins of the P(A) histogram in the report.
pub const HISTOGRAM_BINS: usize = 20;

/// Settings of a comparison (also readable from a config file).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompareConfig {
    /// Human-labelled pairs (ours, HH-RLHF or TRL rows). Required.
    pub human: PathBuf,
    /// AI label files; the first is the baseline of the paired tests. At least one.
    pub ai: Vec<PathBuf>,
    /// Folder for report.md, metrics.json and the plots; `None` writes nothing.
    pub report: Option<PathBuf>,
    /// Bootstrap resamples for intervals and paired tests (default 2000; 0 skips them).
    pub bootstrap: usize,
    /// Seed of the bootstrap resampling (default 0).
    pub seed: u64,
    /// Equal-width bins of the calibration error and reliability diagram (default 10).
    pub bins: usize,
}

impl Default for CompareConfig {
    fn default() -> Self {
        Self {
            human: PathBuf::new(),
            ai: Vec::new(),
            report: None,
            bootstrap: 2000,
            seed: 0,
            bins: 10,
        }
    }
}

/// The human label file as read.
#[derive(Debug, Clone, Serialize)]
pub struct HumanSummary {
    pub path: PathBuf,
    pub rows: usize,
    /// Distinct pairs by content key.
    pub unique: usize,
    /// Distinct pairs carrying a human label.
    pub labelled: usize,
    /// Rows with the same content as an earlier row (the first is kept).
    pub duplicates: usize,
}

/// Every metric of one AI label file against the human labels.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    /// Short name used in tables: "L1", "L2", ...
    pub label: String,
    pub path: PathBuf,
    pub join: JoinStats,
    /// Matched rows where the human made a hard choice (agreement, kappa, groups).
    pub n_scored: usize,
    /// Mean agreement score; an AI tie counts half.
    pub agreement: Option<f64>,
    /// Bootstrap 95% interval of `agreement`.
    pub agreement_ci: Option<(f64, f64)>,
    /// Share of scored rows where the AI tied (p_a = 0.5).
    pub tie_rate: Option<f64>,
    pub kappa: Kappa,
    /// Matched rows with any human label, soft ones included (log-loss, Brier, calibration).
    pub n_labelled: usize,
    pub log_loss: Option<f64>,
    pub brier: Option<f64>,
    pub calibration: Calibration,
    /// Over all matched rows (no human label needed).
    pub position: PositionStats,
    /// Agreement per principle, highest first; a row counts for each of its principles.
    pub principles: Vec<GroupAgreement>,
    /// Agreement per conversation length (non-system turns): 1, 2-3, 4-5, 6+.
    pub by_length: Vec<GroupAgreement>,
    /// Counts of each flag over matched rows.
    pub flags: BTreeMap<String, usize>,
    /// Counts of p_a (human orientation) in [`HISTOGRAM_BINS`] bins over [0, 1].
    pub p_a_histogram: Vec<usize>,
    /// p_a of every labelled matched row, in the human pair's orientation.
    #[serde(skip)]
    pub p_a: Vec<f64>,
}

/// Paired bootstrap test of a further AI file against the first one.
#[derive(Debug, Clone, Serialize)]
pub struct PairedComparison {
    /// Label of the baseline ("L1").
    pub baseline: String,
    /// Label of the compared file ("L2", ...).
    pub candidate: String,
    /// `None` when no pair was scored in both files (or bootstrap = 0).
    pub test: Option<PairedTest>,
}

/// The result of [`run`]: everything the table, report and metrics.json show.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub human: HumanSummary,
    pub files: Vec<FileReport>,
    pub paired: Vec<PairedComparison>,
    pub bootstrap: usize,
    pub seed: u64,
    pub bins: usize,
    /// Data problems worth a look (duplicates, unmatched rows); not errors.
    pub warnings: Vec<String>,
}

/// Joins every AI file to the human labels, computes the metrics and writes the report folder
/// if `cfg.report` is set.
pub fn run(cfg: &CompareConfig) -> Result<CompareReport> {
    if cfg.human.as_os_str().is_empty() {
        bail!("no human label file given");
    }
    if cfg.ai.is_empty() {
        bail!("no AI label file given");
    }
    if cfg.bins == 0 {
        bail!("bins must be at least 1");
    }
    let pairs = read_pairs(&cfg.human)?;
    let rows = pairs.len();
    let index = HumanIndex::new(pairs);
    let human = HumanSummary {
        path: cfg.human.clone(),
        rows,
        unique: index.unique(),
        labelled: index.labelled(),
        duplicates: index.duplicates,
    };
    let mut warnings = Vec::new();
    if human.duplicates > 0 {
        warnings.push(format!(
            "{}: {} duplicate pairs (same content as an earlier row); kept the first",
            cfg.human.display(),
            human.duplicates
        ));
    }
    let mut files = Vec::new();
    let mut scores: Vec<HashMap<String, f64>> = Vec::new();
    for (i, path) in cfg.ai.iter().enumerate() {
        let ai = crate::pairs::read_ai_labels(path)?;
        let (joined, stats) = join::join(&index, &ai);
        if stats.matched == 0 {
            bail!(
                "{} ({} rows) and {} ({} rows) share no pairs; \
                 were these labels made from this human file?",
                path.display(),
                ai.len(),
                cfg.human.display(),
                rows
            );
        }
        warnings.extend(join_warnings(path, &stats));
        scores.push(
            joined
                .iter()
                .filter_map(|r| Some((r.key.clone(), score(r)?)))
                .collect(),
        );
        let file = file_report(format!("L{}", i + 1), path, &joined, stats, cfg);
        warnings.extend(chance_warning(&file));
        files.push(file);
    }
    let paired = (1..files.len())
        .map(|i| PairedComparison {
            baseline: files[0].label.clone(),
            candidate: files[i].label.clone(),
            test: paired_test(&scores[0], &scores[i], cfg),
        })
        .collect();
    let report = CompareReport {
        human,
        files,
        paired,
        bootstrap: cfg.bootstrap,
        seed: cfg.seed,
        bins: cfg.bins,
        warnings,
    };
    if let Some(dir) = &cfg.report {
        report::write_report(dir, &report)?;
    }
    Ok(report)
}

/// A warning, in words, when a labeler's agreement interval contains 50 %: its labels cannot be
/// told from coin flips on these pairs.
fn chance_warning(f: &FileReport) -> Option<String> {
    let (agreement, (low, high)) = (f.agreement?, f.agreement_ci?);
    (low <= 0.5 && 0.5 <= high).then(|| {
        format!(
            "{} ({}): agreement {:.1} % [{:.1}, {:.1}] is indistinguishable from chance: a reward \
             model trained on these labels learns noise",
            f.label,
            f.path.display(),
            100.0 * agreement,
            100.0 * low,
            100.0 * high
        )
    })
}

/// The agreement score of a joined row, `None` without a hard human choice.
fn score(row: &JoinedRow) -> Option<f64> {
    label_metrics::agreement_score(row.p_a, row.human_p_a?)
}

fn join_warnings(path: &Path, s: &JoinStats) -> Vec<String> {
    let name = path.display();
    let mut out = Vec::new();
    if s.duplicate_ai > 0 {
        out.push(format!(
            "{name}: {} duplicate rows (same content as an earlier row); kept the first",
            s.duplicate_ai
        ));
    }
    if s.unmatched_ai > 0 {
        out.push(format!(
            "{name}: {} of {} rows match no human pair",
            s.unmatched_ai, s.ai_rows
        ));
    }
    if s.human_unlabeled > 0 {
        out.push(format!(
            "{name}: {} matched pairs have no human label",
            s.human_unlabeled
        ));
    }
    out
}

/// Computes every per-file metric from the joined rows.
fn file_report(
    label: String,
    path: &Path,
    rows: &[JoinedRow],
    join: JoinStats,
    cfg: &CompareConfig,
) -> FileReport {
    let scored: Vec<(&JoinedRow, f64)> = rows.iter().filter_map(|r| Some((r, score(r)?))).collect();
    let scores: Vec<f64> = scored.iter().map(|s| s.1).collect();
    let ai_hard: Vec<f64> = scored.iter().map(|s| s.0.p_a).collect();
    let human_hard: Vec<f64> = scored
        .iter()
        .map(|s| s.0.human_p_a.unwrap_or(0.5))
        .collect();
    let ties: Vec<f64> = ai_hard
        .iter()
        .map(|&p| f64::from(u8::from(p == 0.5)))
        .collect();
    let (p_a, human_p_a): (Vec<f64>, Vec<f64>) = rows
        .iter()
        .filter_map(|r| Some((r.p_a, r.human_p_a?)))
        .unzip();
    let orders: Vec<label_metrics::OrderedAnswers> = rows.iter().map(|r| r.orders).collect();
    let by_principle: Vec<(&str, f64)> = scored
        .iter()
        .flat_map(|(r, s)| r.principles.iter().map(move |p| (p.as_str(), *s)))
        .collect();
    let turns: Vec<usize> = scored.iter().map(|s| s.0.turns).collect();
    let mut flags = BTreeMap::new();
    for flag in rows.iter().flat_map(|r| &r.flags) {
        *flags.entry(flag.clone()).or_insert(0) += 1;
    }
    FileReport {
        label,
        path: path.to_path_buf(),
        join,
        n_scored: scores.len(),
        agreement: label_metrics::mean(&scores),
        agreement_ci: bootstrap::bootstrap_mean_ci(&scores, cfg.bootstrap, cfg.seed),
        tie_rate: label_metrics::mean(&ties),
        kappa: label_metrics::cohen_kappa(&ai_hard, &human_hard),
        n_labelled: p_a.len(),
        log_loss: label_metrics::log_loss(&p_a, &human_p_a),
        brier: label_metrics::brier(&p_a, &human_p_a),
        calibration: label_metrics::calibration(&p_a, &human_p_a, cfg.bins),
        position: label_metrics::position_stats(&orders),
        principles: label_metrics::agreement_by_group(&by_principle),
        by_length: label_metrics::agreement_by_length(&turns, &scores),
        flags,
        p_a_histogram: crate::plot::bin_counts(&p_a, HISTOGRAM_BINS, 0.0, 1.0),
        p_a,
    }
}

/// Paired bootstrap on the pairs scored in both files, in baseline key order.
fn paired_test(
    baseline: &HashMap<String, f64>,
    candidate: &HashMap<String, f64>,
    cfg: &CompareConfig,
) -> Option<PairedTest> {
    let mut keys: Vec<&String> = baseline
        .keys()
        .filter(|k| candidate.contains_key(*k))
        .collect();
    keys.sort();
    let first: Vec<f64> = keys.iter().map(|k| baseline[*k]).collect();
    let second: Vec<f64> = keys.iter().map(|k| candidate[*k]).collect();
    bootstrap::paired_bootstrap(&first, &second, cfg.bootstrap, cfg.seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairs::PreferencePair;
    use serde_json::json;

    /// Six HH rows whose conversations have 1, 1, 3, 3, 5 and 7 turns before the response.
    fn hh_rows() -> Vec<(String, String)> {
        let exchanges = [0, 0, 1, 1, 2, 3];
        let rows = exchanges.iter().enumerate().map(|(i, &n)| {
            let mut p = format!("\n\nHuman: q{i}");
            for k in 0..n {
                p += &format!("\n\nAssistant: a{k}\n\nHuman: u{k}");
            }
            let end = |r: &str| format!("{p}\n\nAssistant: {r} {i}");
            (end("good"), end("bad"))
        });
        rows.collect()
    }

    /// An AI row for `pair`, holding (chosen, rejected) in slots (a, b) unless `swap`, with
    /// `p_chosen` = AI P(chosen better) and optional per-order answers for the chosen response.
    fn ai_row(
        pair: &PreferencePair,
        i: usize,
        swap: bool,
        p_chosen: f64,
        orders: Option<(f64, f64)>,
    ) -> serde_json::Value {
        let (good, bad) = (format!("good {i}"), format!("bad {i}"));
        let (a, b, p_a) = if swap {
            (bad, good, 1.0 - p_chosen)
        } else {
            (good, bad, p_chosen)
        };
        let orient = |p: f64| if swap { 1.0 - p } else { p };
        let principles = [&["harmless"][..], &["harmless", "honest"]][i % 2];
        let flags = (i == 3).then(|| vec!["tie"]);
        json!({
            "id": "ignored", "conversation": pair.conversation, "response_a": a, "response_b": b,
            "principles": principles, "p_a": p_a, "flags": flags,
            "p_a_first": orders.map(|o| orient(o.0)), "p_a_second": orders.map(|o| orient(o.1)),
        })
    }

    #[test]
    fn end_to_end_on_hh_labels() {
        let dir = tempfile::tempdir().unwrap();
        let human_path = dir.path().join("human.jsonl");
        let text: String = hh_rows()
            .iter()
            .map(|(c, r)| format!("{}\n", json!({"chosen": c, "rejected": r})))
            .collect();
        std::fs::write(&human_path, text).unwrap();
        let pairs = read_pairs(&human_path).unwrap();
        // Which HH rows put the chosen response in slot A is fixed by the content hash.
        let chosen_in_a: Vec<bool> = pairs.iter().map(|p| p.human_p_a == Some(1.0)).collect();
        assert_eq!(chosen_in_a, [false, false, false, false, true, true]);

        // AI P(chosen better): rows 0, 1, 4 right; row 2 wrong; row 3 tie; row 5 wrong.
        // Rows 1, 2, 4 are stored swapped. Rows 0-3 were asked in both orders; row 2 flips.
        let spec = [
            (false, 0.9, Some((0.9, 0.9))),
            (true, 0.8, Some((0.8, 0.7))),
            (true, 0.3, Some((0.6, 0.2))),
            (false, 0.5, Some((0.6, 0.6))),
            (true, 0.7, None),
            (false, 0.2, None),
        ];
        let ai_path = dir.path().join("labels.jsonl");
        let ai: Vec<serde_json::Value> = pairs
            .iter()
            .zip(spec)
            .enumerate()
            .map(|(i, (p, (swap, pc, o)))| ai_row(p, i, swap, pc, o))
            .collect();
        crate::jsonl::write_all(&ai_path, &ai).unwrap();

        let report_dir = dir.path().join("report");
        let cfg = CompareConfig {
            human: human_path,
            ai: vec![ai_path.clone(), ai_path],
            report: Some(report_dir.clone()),
            ..Default::default()
        };
        let r = run(&cfg).unwrap();
        let f = &r.files[0];
        assert_eq!((f.join.matched, f.join.swapped, f.n_scored), (6, 3, 6));
        // 58.3 % on 6 pairs: the interval holds 50 %, and the report says so in words.
        let (low, high) = f.agreement_ci.unwrap();
        assert!(low < 0.5 && high > 0.5);
        let chance: Vec<&String> = r
            .warnings
            .iter()
            .filter(|w| w.contains("indistinguishable from chance"))
            .collect();
        assert_eq!(chance.len(), 2, "{:?}", r.warnings);
        assert!(chance[0].starts_with("L1 (") && chance[0].contains("58.3 %"));
        // Agreement: scores 1, 1, 0, 0.5, 1, 0 -> 3.5 / 6.
        assert!((f.agreement.unwrap() - 3.5 / 6.0).abs() < 1e-12);
        assert!((f.tie_rate.unwrap() - 1.0 / 6.0).abs() < 1e-12);
        // Kappa over the 5 non-tie rows, in the human file's orientation (slot A = chosen only
        // for rows 4, 5). Rows 0, 1, 2, 4, 5: human B B B A A; the AI picks chosen on 0, 1, 4
        // and rejected on 2, 5, i.e. B B A A B. Observed 3/5; P(AI=A) = P(human=A) = 2/5;
        // chance = .4*.4 + .6*.6 = .52; kappa = (.6 - .52) / (1 - .52) = .08 / .48 = 1/6.
        assert_eq!((f.kappa.n, f.kappa.ties_excluded), (5, 1));
        assert!(
            (f.kappa.value.unwrap() - 1.0 / 6.0).abs() < 1e-12,
            "{:?}",
            f.kappa
        );
        // Four rows asked both ways, one flipped: consistency 3/4.
        assert_eq!(f.position.n_pairs, 4);
        assert!((f.position.consistency.unwrap() - 0.75).abs() < 1e-12);
        // harmless: all six rows (3.5/6); honest: rows 1, 3, 5 -> (1 + 0.5 + 0) / 3 = 0.5.
        let honest = f.principles.iter().find(|g| g.name == "honest").unwrap();
        assert_eq!((honest.n, honest.agreement), (3, Some(0.5)));
        // Lengths 1, 1, 3, 3, 5, 7 turns; buckets 1: (1 + 1) / 2, 2-3: (0 + .5) / 2, 4-5: 1,
        // 6+: 0.
        let lengths: Vec<Option<f64>> = f.by_length.iter().map(|g| g.agreement).collect();
        assert_eq!(lengths, [Some(1.0), Some(0.25), Some(1.0), Some(0.0)]);
        assert_eq!(f.flags.get("tie"), Some(&1));
        // The same file twice: no difference, p = 1.
        let t = r.paired[0].test.as_ref().unwrap();
        assert_eq!((t.n, t.diff, t.p_value), (6, 0.0, 1.0));

        for name in ["reliability.svg", "principles.svg", "p_a_hist.svg"] {
            let svg = std::fs::read_to_string(report_dir.join(name)).unwrap();
            crate::plot::assert_well_formed(&svg);
        }
        assert!(std::fs::read_to_string(report_dir.join("principles.svg"))
            .unwrap()
            .contains(">honest<"));
        let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
        assert!(
            md.contains("![Reliability diagram](reliability.svg)")
                && md.contains("| agreement [95% CI] | 58.3%"),
            "{md}"
        );
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(report_dir.join("metrics.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(json["files"][0]["kappa"]["n"], 5);
        assert_eq!(
            json["files"][0]["p_a_histogram"].as_array().map(Vec::len),
            Some(HISTOGRAM_BINS)
        );
        let table = report::render_table(&r);
        assert!(
            table.contains("58.3%") && table.contains("L2 vs L1: +0.0 points"),
            "{table}"
        );
    }

    #[test]
    fn files_sharing_no_pairs_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let human = dir.path().join("h.jsonl");
        std::fs::write(
            &human,
            format!(
                "{}\n",
                json!({"prompt": "q", "response_a": "a", "response_b": "b", "human": "a"})
            ),
        )
        .unwrap();
        let ai = dir.path().join("ai.jsonl");
        let row = json!({
            "conversation": [{"role": "user", "content": "other"}],
            "response_a": "a", "response_b": "b", "p_a": 0.7
        });
        std::fs::write(&ai, format!("{row}\n{row}\n")).unwrap();
        let err = run(&CompareConfig {
            human,
            ai: vec![ai],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("ai.jsonl (2 rows) and")
                && err.contains("h.jsonl (1 rows) share no pairs"),
            "{err}"
        );
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let cfg: CompareConfig =
            serde_json::from_str(r#"{"human": "h.jsonl", "ai": ["a.jsonl"]}"#).unwrap();
        assert_eq!(
            (cfg.bootstrap, cfg.seed, cfg.bins, cfg.report),
            (2000, 0, 10, None)
        );
        assert!(serde_json::from_str::<CompareConfig>(r#"{"humans": "h"}"#).is_err());
    }
}
