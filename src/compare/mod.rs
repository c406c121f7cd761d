//! `cai compare`: how well AI preference labels agree with human labels.
//!
//! [`run`] reads a human-labelled pair file (any format [`crate::pairs::read_pairs`] accepts) and
//! one or more AI label files written by `cai label`, joins them by content, computes agreement
//! (with a Wilson interval and a verdict against chance), kappa, calibration and position-bias
//! metrics (raw and calibrated) per AI file, tests each further file against the first with an
//! exact paired sign test, and optionally writes a report folder.

pub mod bootstrap;
pub mod join;
pub mod report;
pub mod significance;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::label_metrics;
use crate::pairs::read_pairs;
use join::{HumanIndex, JoinStats, JoinedRow};
use significance::{ChanceVerdict, PairedTest, MIN_PAIRS};

pub use report::{CompareReport, FileReport, HumanSummary, PairedComparison, HISTOGRAM_BINS};

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
    /// Bootstrap resamples for the interval of a paired agreement difference (default 2000; 0
    /// skips it). Agreement intervals (Wilson) and paired tests (exact sign test) need none.
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
        warnings.extend(tie_warning(&file));
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
        min_pairs: MIN_PAIRS,
        warnings,
    };
    if let Some(dir) = &cfg.report {
        report::write_report(dir, &report)?;
    }
    Ok(report)
}

/// A warning, in words, unless a labeler's agreement is clearly above chance: too few pairs to
/// tell, an interval that contains 50 % (coin flips), or one below 50 % (inverted labels).
fn chance_warning(f: &FileReport) -> Option<String> {
    let (agreement, (low, high)) = (f.agreement?, f.agreement_ci?);
    let head = format!(
        "{} ({}): agreement {:.1} % [{:.1}, {:.1}] on {} pairs",
        f.label,
        f.path.display(),
        100.0 * agreement,
        100.0 * low,
        100.0 * high,
        f.n_scored
    );
    match f.chance? {
        ChanceVerdict::AboveChance => None,
        ChanceVerdict::TooFewPairs => Some(format!(
            "{head}: too few pairs to tell (fewer than {MIN_PAIRS} scored) whether these labels \
             beat chance"
        )),
        ChanceVerdict::Chance => Some(format!(
            "{head} is indistinguishable from chance: a reward model trained on these labels \
             learns noise"
        )),
        ChanceVerdict::BelowChance => Some(format!(
            "{head} is below chance: the labels are inverted more often than not (check which \
             response is a and which is b); a reward model trained on them learns the opposite \
             preference"
        )),
    }
}

/// A warning when a file holds exact ties, saying how each metric treats them.
fn tie_warning(f: &FileReport) -> Option<String> {
    (f.ties > 0).then(|| {
        format!(
            "{} ({}): {} of {} matched labels are exact ties (p_a = 0.5): agreement counts each \
             as half, kappa leaves them out, and `cai export` skips them unless --keep-ties",
            f.label,
            f.path.display(),
            f.ties,
            f.join.matched
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
        let truncated = match s.unmatched_truncated {
            0 => String::new(),
            k => format!(
                " ({k} of them shortened by --truncate-long and written with the shortened \
                 conversation; label rows now keep the original, so relabel to compare them)"
            ),
        };
        out.push(format!(
            "{name}: {} of {} rows match no human pair{truncated}",
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
    let agreement_ci = significance::agreement_interval(scores.iter().sum(), scores.len());
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
        agreement_ci,
        chance: agreement_ci.map(|ci| significance::chance_verdict(scores.len(), ci)),
        ties: rows.iter().filter(|r| r.p_a == 0.5).count(),
        tie_rate: label_metrics::mean(&ties),
        human_ties: rows.iter().filter(|r| r.human_p_a == Some(0.5)).count(),
        all_ties: !p_a.is_empty() && p_a.iter().all(|&p| p == 0.5),
        kappa: label_metrics::cohen_kappa(&ai_hard, &human_hard),
        n_labelled: p_a.len(),
        log_loss: label_metrics::log_loss(&p_a, &human_p_a),
        brier: label_metrics::brier(&p_a, &human_p_a),
        calibration: label_metrics::calibration(&p_a, &human_p_a, cfg.bins),
        position: label_metrics::position_stats(&orders),
        position_raw: label_metrics::raw_position_stats(&orders),
        principles: label_metrics::agreement_by_group(&by_principle),
        by_length: label_metrics::agreement_by_length(&turns, &scores),
        flags,
        p_a_histogram: crate::plot::bin_counts(&p_a, HISTOGRAM_BINS, 0.0, 1.0),
        p_a,
    }
}

/// Exact sign test (and, from [`MIN_PAIRS`] pairs, a bootstrap interval of the difference) on
/// the pairs scored in both files, in key order.
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
    significance::paired_test(&first, &second, cfg.bootstrap, cfg.seed)
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
        // 58.3 % on 6 pairs: Wilson 95 % of 3.5 / 6 (a tie is half a success) is
        // [0.241078, 0.860533] (centre (p + z²/12) / (1 + z²/6), z = 1.959964); with fewer than
        // 10 scored pairs the report says there are too few to tell, in words.
        let (low, high) = f.agreement_ci.unwrap();
        assert!((low - 0.241_078).abs() < 1e-6 && (high - 0.860_533).abs() < 1e-6);
        assert_eq!(f.chance, Some(ChanceVerdict::TooFewPairs));
        let chance: Vec<&String> = r
            .warnings
            .iter()
            .filter(|w| w.contains("too few pairs to tell"))
            .collect();
        assert_eq!(chance.len(), 2, "{:?}", r.warnings);
        assert!(chance[0].starts_with("L1 (") && chance[0].contains("58.3 % [24.1, 86.1] on 6"));
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
        // The same file twice: no difference, no discordant pair, p = 1, and no verdict.
        let t = r.paired[0].test.as_ref().unwrap();
        assert_eq!((t.n, t.diff, t.p_value), (6, 0.0, 1.0));
        assert_eq!(
            (t.better, t.worse, t.ci, t.too_few_pairs),
            (0, 0, None, true)
        );

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
                && md.contains("| agreement [Wilson 95%] (chance 50%) | 58.3%"),
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

    /// `n` pairs q{i} / a{i} / b{i} in our JSONL; the human chose a on even i, b on odd i
    /// unless `all_a`.
    fn human_file(dir: &Path, n: usize, all_a: bool) -> PathBuf {
        let path = dir.join("human.jsonl");
        let text: String = (0..n)
            .map(|i| {
                let h = if all_a || i % 2 == 0 { "a" } else { "b" };
                let row = json!({"prompt": format!("q{i}"), "response_a": format!("a{i}"),
                    "response_b": format!("b{i}"), "human": h});
                format!("{row}\n")
            })
            .collect();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// An AI row for pair `i` of [`human_file`] with `p_a` and any further fields.
    fn ai(i: usize, p_a: f64, extra: serde_json::Value) -> serde_json::Value {
        let mut row = json!({"conversation": [{"role": "user", "content": format!("q{i}")}],
            "response_a": format!("a{i}"), "response_b": format!("b{i}"), "p_a": p_a});
        for (k, v) in extra.as_object().unwrap() {
            row[k] = v.clone();
        }
        row
    }

    fn ai_file(dir: &Path, name: &str, rows: &[serde_json::Value]) -> PathBuf {
        let path = dir.join(name);
        crate::jsonl::write_all(&path, rows).unwrap();
        path
    }

    #[test]
    fn compare_warns_below_chance_without_bootstrap() {
        let dir = tempfile::tempdir().unwrap();
        let human = human_file(dir.path(), 12, true);
        // L1 picks b on 11 of 12 pairs the human gave to a: agreement 1/12 = 8.3 %, Wilson 95 %
        // [0.014865, 0.353880] (upper (p + z²/24 + z·sqrt(p(1-p)/12 + z²/576)) / (1 + z²/12)),
        // below one half. L2 is right on 6 of 12: [0.253782, 0.746218] holds one half.
        let inverted: Vec<_> = (0..12)
            .map(|i| ai(i, if i == 0 { 0.8 } else { 0.2 }, json!({})))
            .collect();
        let coin: Vec<_> = (0..12)
            .map(|i| ai(i, if i < 6 { 0.7 } else { 0.3 }, json!({})))
            .collect();
        let cfg = CompareConfig {
            human,
            ai: vec![
                ai_file(dir.path(), "inv.jsonl", &inverted),
                ai_file(dir.path(), "coin.jsonl", &coin),
            ],
            bootstrap: 0,
            ..Default::default()
        };
        let r = run(&cfg).unwrap();
        let (lo, hi) = r.files[0].agreement_ci.unwrap();
        assert!((lo - 0.014_865).abs() < 1e-6 && (hi - 0.353_880).abs() < 1e-6);
        assert_eq!(r.files[0].chance, Some(ChanceVerdict::BelowChance));
        assert_eq!(r.files[1].chance, Some(ChanceVerdict::Chance));
        let w = r.warnings.join("\n");
        assert!(
            w.contains("L1 (")
                && w.contains("agreement 8.3 % [1.5, 35.4] on 12 pairs is below chance"),
            "{w}"
        );
        assert!(
            w.contains("agreement 50.0 % [25.4, 74.6] on 12 pairs is indistinguishable"),
            "{w}"
        );
        // L2 right on 6 where L1 was wrong on 5 of them (pairs 1-5) and right on pair 0; wrong
        // on 6-11 like L1: better on 5, worse on 0; exact sign test 2 / 2^5 = 0.0625. No
        // bootstrap: no interval.
        let t = r.paired[0].test.as_ref().unwrap();
        assert_eq!(
            (t.better, t.worse, t.ci, t.too_few_pairs),
            (5, 0, None, false)
        );
        assert!((t.p_value - 0.0625).abs() < 1e-12);
        let table = report::render_table(&r);
        assert!(table.contains("below chance (inverted?)"), "{table}");
    }

    #[test]
    fn compare_on_four_pairs_is_not_sure_of_itself() {
        let dir = tempfile::tempdir().unwrap();
        let human = human_file(dir.path(), 4, true);
        let wrong: Vec<_> = (0..4).map(|i| ai(i, 0.1, json!({}))).collect();
        let half: Vec<_> = (0..4)
            .map(|i| ai(i, if i < 2 { 0.9 } else { 0.1 }, json!({})))
            .collect();
        let report_dir = dir.path().join("report");
        let cfg = CompareConfig {
            human,
            ai: vec![
                ai_file(dir.path(), "wrong.jsonl", &wrong),
                ai_file(dir.path(), "half.jsonl", &half),
            ],
            report: Some(report_dir.clone()),
            ..Default::default()
        };
        let r = run(&cfg).unwrap();
        // 0 of 4: Wilson [0, 2·(z²/8) / (1 + z²/4)] = [0, 0.489891], not a bootstrap's [0, 0].
        let (lo, hi) = r.files[0].agreement_ci.unwrap();
        assert!(lo == 0.0 && (hi - 0.489_891).abs() < 1e-6, "{lo} {hi}");
        assert_eq!(r.files[0].chance, Some(ChanceVerdict::TooFewPairs));
        // +50 points, 2:0 discordant, exact p = 0.5, no bootstrap interval, no verdict.
        let t = r.paired[0].test.as_ref().unwrap();
        assert_eq!(
            (t.better, t.worse, t.ci, t.too_few_pairs),
            (2, 0, None, true)
        );
        assert!((t.diff - 0.5).abs() < 1e-12 && (t.p_value - 0.5).abs() < 1e-12);
        let table = report::render_table(&r);
        assert!(
            table.contains("L2 vs L1: +50.0 points on 4 pairs (better on 2, worse on 0; exact sign test p = 0.500) — too few pairs to tell (fewer than 10)"),
            "{table}"
        );
        assert!(!table.contains("— significant") && !table.contains("p < 0.001"));
        assert!(
            table.contains("0.0% [0.0, 49.0]") && table.contains("too few pairs to tell (n < 10)")
        );
        assert!(r.warnings.iter().any(|w| w.starts_with("L1 (")
            && w.contains("agreement 0.0 % [0.0, 49.0] on 4 pairs: too few pairs to tell")));
        let md = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
        for needle in [
            "| log-loss (chance 0.693) |",
            "| Brier score (chance 0.250) |",
            "| Cohen's kappa (no ties; chance 0) |",
            "Below 10 scored pairs there is no verdict",
        ] {
            assert!(md.contains(needle), "{needle} missing:\n{md}");
        }
    }

    #[test]
    fn compare_counts_ties_and_all_ties_ece_is_not_perfect() {
        let dir = tempfile::tempdir().unwrap();
        // Human a, b, a, b: base rate 0.5; the AI says 0.5 on all four (CoT votes [2, 2]).
        let human = human_file(dir.path(), 4, false);
        let ties: Vec<_> = (0..4).map(|i| ai(i, 0.5, json!({}))).collect();
        let cfg = CompareConfig {
            human,
            ai: vec![ai_file(dir.path(), "ties.jsonl", &ties)],
            ..Default::default()
        };
        let r = run(&cfg).unwrap();
        let f = &r.files[0];
        // Every tie counts half: agreement 2 / 4; kappa has no row left.
        assert_eq!((f.ties, f.tie_rate, f.agreement), (4, Some(1.0), Some(0.5)));
        assert_eq!((f.kappa.n, f.kappa.ties_excluded), (0, 4));
        // One bin: mean prediction 0.5, human share of A 0.5 -> ECE 0, which must not read as
        // perfect calibration. Log-loss ln 2 and Brier 0.25: exactly chance.
        assert!(f.all_ties && f.calibration.ece == Some(0.0));
        assert!((f.log_loss.unwrap() - std::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!(f.brier, Some(0.25));
        let table = report::render_table(&r);
        assert!(
            table.contains("0.000 (all ties: measures nothing)"),
            "{table}"
        );
        assert!(table.contains("4 (100.0% of scored)"), "{table}");
        assert!(
            r.warnings.iter().any(|w| w.contains(
                "4 of 4 matched labels are exact ties (p_a = 0.5): agreement counts each as half"
            )),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn compare_reports_raw_and_calibrated_position_bias_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        let human = human_file(dir.path(), 2, true);
        // Calibrated: response_a in both orders on both pairs (consistent; slots A, B, A, B).
        // Raw: slot (A) in all four answers (0.9 first; 0.3 second = response_b in slot A).
        let raw = json!({"p_a_first": 0.7, "p_a_second": 0.6, "p_a_first_raw": 0.9,
            "p_a_second_raw": 0.3});
        let with_raw = [ai(0, 0.65, raw.clone()), ai(1, 0.65, raw)];
        // The same without raw values, one row shortened by --truncate-long.
        let old = [
            ai(
                0,
                0.65,
                json!({"p_a_first": 0.7, "p_a_second": 0.6, "truncated": true}),
            ),
            ai(1, 0.65, json!({"p_a_first": 0.7, "p_a_second": 0.6})),
        ];
        let cfg = CompareConfig {
            human,
            ai: vec![
                ai_file(dir.path(), "raw.jsonl", &with_raw),
                ai_file(dir.path(), "old.jsonl", &old),
            ],
            ..Default::default()
        };
        let r = run(&cfg).unwrap();
        let (l1, l2) = (&r.files[0], &r.files[1]);
        assert_eq!(
            (l1.position.consistency, l1.position.slot_a_rate),
            (Some(1.0), Some(0.5))
        );
        assert_eq!(
            (l1.position_raw.consistency, l1.position_raw.slot_a_rate),
            (Some(0.0), Some(1.0))
        );
        assert_eq!((l2.position_raw.n_pairs, l2.position_raw.n_answers), (0, 0));
        assert_eq!((l1.join.truncated, l2.join.truncated), (0, 1));
        let table = report::render_table(&r);
        let line = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} missing:\n{table}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert!(line("order consistency, calibrated").ends_with("100.0% (n=2) 100.0% (n=2)"));
        assert!(line("order consistency, raw").ends_with("raw 0.0% (n=2) n/a"));
        assert!(line("chose slot (A), calibrated").ends_with("50.0% (n=4) 50.0% (n=4)"));
        assert!(line("chose slot (A), raw").ends_with("raw 100.0% (n=4) n/a"));
        assert!(line("  truncated (--truncate-long)").ends_with("0 1"));
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
