//! Presenting a [`CompareReport`]: an aligned terminal table, and a report folder with
//! `report.md`, `metrics.json` and SVG plots.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::join::JoinStats;
use super::significance::{ChanceVerdict, PairedTest, MIN_PAIRS};
use crate::artifacts::{METRICS, PRINCIPLES_PLOT, P_A_HIST_PLOT, RELIABILITY_PLOT, REPORT};
use crate::label_metrics::LENGTH_BUCKETS;
use crate::label_metrics::{Calibration, GroupAgreement, Kappa, PositionStats};
use crate::plot::{self, BarSeries, HistogramSeries, LineChart, LineSeries};

/// Bins of the P(A) histogram in the report.
pub const HISTOGRAM_BINS: usize = 20;

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
    /// Wilson 95% interval of `agreement` (ties as half a success).
    pub agreement_ci: Option<(f64, f64)>,
    /// `agreement` against 50 %: from the interval, or too few scored pairs to tell.
    pub chance: Option<ChanceVerdict>,
    /// Matched rows where the AI tied (p_a = 0.5 exactly).
    pub ties: usize,
    /// Share of scored rows where the AI tied.
    pub tie_rate: Option<f64>,
    /// Matched rows whose human label is a tie (0.5): not scored for agreement or kappa.
    pub human_ties: usize,
    /// Every labelled row is an AI tie: log-loss and Brier sit at their chance values and the
    /// ECE compares one bin of 0.5s with the base rate, which says nothing about calibration.
    pub all_ties: bool,
    pub kappa: Kappa,
    /// Matched rows with any human label, soft ones included (log-loss, Brier, calibration).
    pub n_labelled: usize,
    pub log_loss: Option<f64>,
    pub brier: Option<f64>,
    pub calibration: Calibration,
    /// On the per-order probabilities as the label file keeps them (calibrated or clamped
    /// where the labeler did so), over all matched rows (no human label needed).
    pub position: PositionStats,
    /// On the raw per-order probabilities (before calibration or clamping); empty (n = 0) for
    /// files without them.
    pub position_raw: PositionStats,
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

/// Paired test of a further AI file against the first one.
#[derive(Debug, Clone, Serialize)]
pub struct PairedComparison {
    /// Label of the baseline ("L1").
    pub baseline: String,
    /// Label of the compared file ("L2", ...).
    pub candidate: String,
    /// `None` when no pair was scored in both files.
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
    /// Below this many scored pairs no verdict is given ([`MIN_PAIRS`]).
    pub min_pairs: usize,
    /// Data problems worth a look (duplicates, unmatched rows); not errors.
    pub warnings: Vec<String>,
}

/// The report's plots: (alt text, file name).
const PLOTS: [(&str, &str); 3] = [
    ("Reliability diagram", RELIABILITY_PLOT),
    ("Agreement per principle", PRINCIPLES_PLOT),
    ("Distribution of p_a", P_A_HIST_PLOT),
];

/// Significance level of the paired tests' verdict.
const ALPHA: f64 = 0.05;

/// One table row: a metric name and one cell per AI file.
struct Row {
    name: String,
    cells: Vec<String>,
}

/// The metric rows shared by the terminal table and report.md. Each name says what chance is
/// for its metric.
fn metric_rows(report: &CompareReport) -> Vec<Row> {
    let files = &report.files;
    let row = |name: &str, cell: &dyn Fn(&FileReport) -> String| Row {
        name: name.to_string(),
        cells: files.iter().map(cell).collect(),
    };
    let mut rows = vec![
        row("pairs matched", &|f| {
            format!("{} of {}", f.join.matched, f.join.ai_rows)
        }),
        row("  stored swapped (a/b)", &|f| f.join.swapped.to_string()),
        row("  AI rows unmatched", &|f| f.join.unmatched_ai.to_string()),
        row("  human pairs unmatched", &|f| {
            f.join.unmatched_human.to_string()
        }),
        row("  AI duplicates", &|f| f.join.duplicate_ai.to_string()),
        row("  truncated (--truncate-long)", &|f| {
            f.join.truncated.to_string()
        }),
        row("scored (human chose)", &|f| f.n_scored.to_string()),
        row("  human ties (not scored)", &|f| f.human_ties.to_string()),
        row("AI ties (p_a = 0.5, ½ in agreement)", &|f| {
            format!("{} ({} of scored)", f.ties, pct(f.tie_rate))
        }),
        row(
            "agreement [Wilson 95%] (chance 50%)",
            &|f| match f.agreement_ci {
                Some((lo, hi)) => format!(
                    "{} [{:.1}, {:.1}]",
                    pct(f.agreement),
                    100.0 * lo,
                    100.0 * hi
                ),
                None => pct(f.agreement),
            },
        ),
        row("  vs chance", &|f| verdict(f.chance, report.min_pairs)),
        row("Cohen's kappa (no ties; chance 0)", &|f| {
            format!("{} (n={})", num(f.kappa.value), f.kappa.n)
        }),
        row("log-loss (chance 0.693)", &|f| num(f.log_loss)),
        row("Brier score (chance 0.250)", &|f| num(f.brier)),
        row(&format!("ECE ({} bins)", report.bins), &|f| {
            if f.all_ties {
                format!("{} (all ties: measures nothing)", num(f.calibration.ece))
            } else {
                num(f.calibration.ece)
            }
        }),
        row("order consistency, calibrated (chance 50%)", &|f| {
            share(f.position.consistency, f.position.n_pairs)
        }),
        row("order consistency, raw", &|f| {
            share(f.position_raw.consistency, f.position_raw.n_pairs)
        }),
        row("chose slot (A), calibrated (no bias 50%)", &|f| {
            share(f.position.slot_a_rate, f.position.n_answers)
        }),
        row("chose slot (A), raw", &|f| {
            share(f.position_raw.slot_a_rate, f.position_raw.n_answers)
        }),
    ];
    for (k, bucket) in LENGTH_BUCKETS.iter().enumerate() {
        let name = format!("turns {bucket}");
        rows.push(row(&name, &|f| {
            group_cell(f.by_length.get(k).map(|g| (g.agreement, g.n)))
        }));
    }
    for principle in principle_names(files) {
        rows.push(row(&format!("principle: {principle}"), &|f| {
            group_cell(
                f.principles
                    .iter()
                    .find(|g| g.name == principle)
                    .map(|g| (g.agreement, g.n)),
            )
        }));
    }
    let flags: std::collections::BTreeSet<&String> =
        files.iter().flat_map(|f| f.flags.keys()).collect();
    for flag in flags {
        rows.push(row(&format!("flag: {flag}"), &|f| {
            f.flags.get(flag).copied().unwrap_or(0).to_string()
        }));
    }
    rows
}

/// Principle names in the first file's order (best first), then any only later files use.
fn principle_names(files: &[FileReport]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for g in files.iter().flat_map(|f| &f.principles) {
        if !names.contains(&g.name) {
            names.push(g.name.clone());
        }
    }
    names
}

fn group_cell(group: Option<(Option<f64>, usize)>) -> String {
    match group {
        // A share of one or two pairs reads as 0 % or 100 %: say that it tells nothing.
        Some((agreement, n)) if n > 0 && n < MIN_PAIRS => {
            format!("{} (n={n}, too few)", pct(agreement))
        }
        Some((agreement, n)) if n > 0 => format!("{} (n={n})", pct(agreement)),
        _ => "–".to_string(),
    }
}

/// A share over `n` items, "n/a" when there are none (a file without per-order answers, or
/// without raw ones: never the other kind in their place).
fn share(x: Option<f64>, n: usize) -> String {
    if n == 0 {
        "n/a".to_string()
    } else {
        format!("{} (n={n})", pct(x))
    }
}

/// The chance verdict in words.
fn verdict(v: Option<ChanceVerdict>, min_pairs: usize) -> String {
    match v {
        None => "–".to_string(),
        Some(ChanceVerdict::TooFewPairs) => format!("too few pairs to tell (n < {min_pairs})"),
        Some(ChanceVerdict::BelowChance) => "below chance (inverted?)".to_string(),
        Some(ChanceVerdict::Chance) => "indistinguishable".to_string(),
        Some(ChanceVerdict::AboveChance) => "above chance".to_string(),
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "–".to_string(), |x| format!("{:.1}%", 100.0 * x))
}

fn num(x: Option<f64>) -> String {
    x.map_or_else(|| "–".to_string(), |x| format!("{x:.3}"))
}

/// Points with a sign, using a true minus: "+3.1", "−1.2".
fn signed_points(x: f64) -> String {
    let points = 100.0 * x;
    if points < -0.05 {
        format!("−{:.1}", -points)
    } else {
        format!("+{:.1}", points.abs())
    }
}

/// "L2 vs L1: +3.1 points [−1.2, +7.4] on 200 pairs (better on 30, worse on 20; exact sign
/// test p = 0.203) — not significant at 0.05", or "— too few pairs to tell" below the minimum.
fn paired_line(
    candidate: &str,
    baseline: &str,
    test: Option<&PairedTest>,
    min_pairs: usize,
) -> String {
    let Some(t) = test else {
        return format!("{candidate} vs {baseline}: no pairs scored in both files");
    };
    let p = if t.p_value < 0.001 {
        "p < 0.001".to_string()
    } else {
        format!("p = {:.3}", t.p_value)
    };
    let ci = t.ci.map_or_else(String::new, |(lo, hi)| {
        format!(" [{}, {}]", signed_points(lo), signed_points(hi))
    });
    let verdict = if t.too_few_pairs {
        format!("too few pairs to tell (fewer than {min_pairs})")
    } else if t.p_value < ALPHA {
        format!("significant at {ALPHA}")
    } else {
        format!("not significant at {ALPHA}")
    };
    format!(
        "{candidate} vs {baseline}: {} points{ci} on {} pairs (better on {}, worse on {}; \
         exact sign test {p}) — {verdict}",
        signed_points(t.diff),
        t.n,
        t.better,
        t.worse
    )
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// An aligned terminal table: one column per AI file, a row per metric, then the paired tests
/// and any warnings.
pub fn render_table(report: &CompareReport) -> String {
    let mut header = Row {
        name: format!("human: {}", file_name(&report.human.path)),
        cells: report
            .files
            .iter()
            .map(|f| format!("{} {}", f.label, file_name(&f.path)))
            .collect(),
    };
    let rows = metric_rows(report);
    let width = |s: &str| s.chars().count();
    let name_w = rows
        .iter()
        .chain([&header])
        .map(|r| width(&r.name))
        .max()
        .unwrap_or(0);
    let cell_w: Vec<usize> = (0..report.files.len())
        .map(|i| {
            rows.iter()
                .chain([&header])
                .map(|r| width(&r.cells[i]))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |r: &Row| {
        let mut s = format!("{}{}", r.name, " ".repeat(name_w - width(&r.name)));
        for (cell, w) in r.cells.iter().zip(&cell_w) {
            let _ = write!(s, "  {cell}{}", " ".repeat(w - width(cell)));
        }
        let _ = writeln!(out, "{}", s.trim_end());
    };
    line(&header);
    header.name = "-".repeat(name_w);
    header.cells = cell_w.iter().map(|&w| "-".repeat(w)).collect();
    line(&header);
    rows.iter().for_each(&mut line);
    for p in &report.paired {
        let _ = writeln!(
            out,
            "\n{}",
            paired_line(&p.candidate, &p.baseline, p.test.as_ref(), report.min_pairs)
        );
    }
    let _ = writeln!(
        out,
        "\nagreement and kappa: pairs the human chose; log-loss, Brier, ECE: every pair with a \
         human label; position: pairs asked in both orders, calibrated = as the label file \
         keeps them, raw = before calibration or clamping."
    );
    for w in &report.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// Writes `report.md`, `metrics.json`, `reliability.svg`, `principles.svg` and `p_a_hist.svg`
/// into `dir` (created if missing).
pub fn write_report(dir: &Path, report: &CompareReport) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create report folder {}", dir.display()))?;
    let json = serde_json::to_string_pretty(report).context("cannot serialize the metrics")?;
    write(&dir.join(METRICS), &(json + "\n"))?;
    plot::write_svg(&dir.join(RELIABILITY_PLOT), &reliability_svg(report))?;
    plot::write_svg(&dir.join(PRINCIPLES_PLOT), &principles_svg(report))?;
    plot::write_svg(&dir.join(P_A_HIST_PLOT), &histogram_svg(report))?;
    write(&dir.join(REPORT), &markdown(report))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn markdown(report: &CompareReport) -> String {
    let h = &report.human;
    let mut md = String::from("# AI preference labels vs human labels\n\n");
    let _ = writeln!(
        md,
        "Human labels: `{}` ({} rows, {} distinct pairs, {} labelled).\n",
        h.path.display(),
        h.rows,
        h.unique,
        h.labelled,
    );
    for f in &report.files {
        let _ = writeln!(md, "- **{}**: `{}`", f.label, f.path.display());
    }
    let cell = |s: &str| s.replace('|', "\\|");
    let _ = write!(md, "\n| metric |");
    for f in &report.files {
        let _ = write!(md, " {} |", f.label);
    }
    let _ = writeln!(md, "\n|---|{}", "---|".repeat(report.files.len()));
    for r in metric_rows(report) {
        let cells: Vec<String> = r.cells.iter().map(|c| cell(c)).collect();
        let _ = writeln!(md, "| {} | {} |", cell(r.name.trim()), cells.join(" | "));
    }
    md.push_str(&reading_notes(report));
    if !report.paired.is_empty() {
        md.push_str("\n## Paired tests\n\n");
        for p in &report.paired {
            let _ = writeln!(
                md,
                "- {}",
                paired_line(&p.candidate, &p.baseline, p.test.as_ref(), report.min_pairs)
            );
        }
    }
    md.push_str("\n## Plots\n\n");
    for (alt, file) in PLOTS {
        let _ = writeln!(md, "![{alt}]({file})\n");
    }
    if !report.warnings.is_empty() {
        md.push_str("\n## Warnings\n\n");
        for w in &report.warnings {
            let _ = writeln!(md, "- {}", cell(w));
        }
    }
    md
}

/// What each number of the table is computed on, and what chance is for it.
fn reading_notes(report: &CompareReport) -> String {
    let n = report.min_pairs;
    format!(
        "\n## What the numbers are\n\n\
         - **Agreement**: over the matched pairs where the human chose a response (a human \
         label of 0.5 is not scored), the share where the AI's final label `p_a` picks the same \
         one. An AI tie (`p_a` = 0.5 exactly) counts half. Chance is 50 %. The interval is the \
         Wilson score 95 % interval (valid at small n; a tie is half a success). Below {n} \
         scored pairs there is no verdict: too few pairs to tell; otherwise the interval is \
         above, holds, or is below 50 % (below: the labels look inverted).\n\
         - **Cohen's kappa**: the same pairs' hard choices with AI ties left out; chance is 0.\n\
         - **Log-loss, Brier, ECE**: every matched pair with a human label, soft human labels \
         as given, the AI's `p_a` as is (ties as 0.5). A judge that always says 0.5 scores \
         log-loss ln 2 = 0.693 and Brier 0.250. ECE has no fixed chance level: a constant \
         0.5 scores |share of A − 0.5|, near 0 on balanced pairs, so read it with log-loss; on \
         a file of ties it measures nothing.\n\
         - **Position**: every matched pair asked in both orders (no human label needed). \
         *Calibrated* uses the per-order probabilities as the label file keeps them (after the \
         content-free calibration or the CoT clamp, where on): the bias left over. *Raw* uses \
         the probabilities before them: the judge's own bias; n/a for files that do not keep \
         them. Order consistency is the share of pairs whose preferred response is the same in \
         both orders (50 % for a judge that answers at random, 0 % for one that always picks \
         one slot); chose slot (A) is the share of per-order answers picking the response shown \
         first (50 % without bias; a tie counts half).\n\
         - **Paired tests**: the pairs scored in both files; an exact two-sided sign test over \
         the pairs where the two agreement scores differ; the interval of the difference is a \
         paired percentile bootstrap ({} resamples, seed {}), given from {n} pairs on.\n",
        report.bootstrap, report.seed
    )
}

fn reliability_svg(report: &CompareReport) -> String {
    let series: Vec<LineSeries> = report
        .files
        .iter()
        .map(|f| {
            let bins: Vec<_> = f
                .calibration
                .bins
                .iter()
                .filter_map(|b| Some((b.mean_pred?, b.freq?, b.count as f64)))
                .collect();
            LineSeries::new(f.label.clone(), bins.iter().map(|b| (b.0, b.1)).collect())
                .with_marker_weights(bins.iter().map(|b| b.2).collect())
        })
        .collect();
    let mut chart = LineChart::new(
        "Reliability diagram",
        "mean predicted P(A)",
        "human chose A (share)",
        &series,
    );
    chart.x_range = Some((0.0, 1.0));
    chart.y_range = Some((0.0, 1.0));
    chart.diagonal = true;
    chart.render()
}

fn principles_svg(report: &CompareReport) -> String {
    let names = principle_names(&report.files);
    let series: Vec<BarSeries> = report
        .files
        .iter()
        .map(|f| BarSeries {
            name: f.label.clone(),
            values: names
                .iter()
                .map(|n| {
                    f.principles
                        .iter()
                        .find(|g| &g.name == n)
                        .and_then(|g| g.agreement)
                        .map_or(f64::NAN, |a| 100.0 * a)
                })
                .collect(),
        })
        .collect();
    plot::bar_chart(
        "Agreement with humans per principle",
        "agreement (%)",
        &names,
        &series,
        Some((0.0, 100.0)),
        Some(50.0),
    )
}

fn histogram_svg(report: &CompareReport) -> String {
    let series: Vec<HistogramSeries> = report
        .files
        .iter()
        .map(|f| HistogramSeries {
            name: f.label.clone(),
            values: f.p_a.clone(),
        })
        .collect();
    plot::histogram(
        "Distribution of AI P(A)",
        "p_a",
        &series,
        HISTOGRAM_BINS,
        Some((0.0, 1.0)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_group_agreement_below_the_small_n_rule_says_too_few() {
        assert_eq!(group_cell(Some((Some(1.0), 2))), "100.0% (n=2, too few)");
        assert_eq!(
            group_cell(Some((Some(0.5), MIN_PAIRS - 1))),
            format!("50.0% (n={}, too few)", MIN_PAIRS - 1)
        );
        assert_eq!(
            group_cell(Some((Some(0.75), MIN_PAIRS))),
            format!("75.0% (n={MIN_PAIRS})")
        );
        assert_eq!(group_cell(Some((None, 0))), "–");
    }

    #[test]
    fn paired_line_wording() {
        // 30:20 discordant pairs: exact two-sided sign test p = 0.202639.
        let t = PairedTest {
            n: 200,
            diff: 0.031,
            better: 30,
            worse: 20,
            p_value: 0.202_639,
            ci: Some((-0.012, 0.074)),
            too_few_pairs: false,
        };
        assert_eq!(
            paired_line("L2", "L1", Some(&t), 10),
            "L2 vs L1: +3.1 points [−1.2, +7.4] on 200 pairs (better on 30, worse on 20; exact \
             sign test p = 0.203) — not significant at 0.05"
        );
        let t = PairedTest {
            n: 40,
            diff: -0.2,
            better: 0,
            worse: 12,
            p_value: 0.000_488,
            ci: None,
            too_few_pairs: false,
        };
        assert!(paired_line("L3", "L1", Some(&t), 10).contains(
            "−20.0 points on 40 pairs (better on 0, worse on 12; exact sign test p < 0.001) — \
             significant"
        ));
        assert!(paired_line("L2", "L1", None, 10).contains("no pairs scored in both"));
    }

    #[test]
    fn compare_on_four_pairs_says_too_few_pairs_to_tell() {
        // The case: baseline wrong on all 4, candidate right on 2: +50 points, 2:0
        // discordant, exact sign test p = 2 · (1/2)² = 0.5, and no verdict below 10 pairs.
        let t = PairedTest {
            n: 4,
            diff: 0.5,
            better: 2,
            worse: 0,
            p_value: 0.5,
            ci: None,
            too_few_pairs: true,
        };
        assert_eq!(
            paired_line("L2", "L1", Some(&t), 10),
            "L2 vs L1: +50.0 points on 4 pairs (better on 2, worse on 0; exact sign test \
             p = 0.500) — too few pairs to tell (fewer than 10)"
        );
        assert_eq!(
            verdict(Some(ChanceVerdict::TooFewPairs), 10),
            "too few pairs to tell (n < 10)"
        );
        assert_eq!(share(None, 0), "n/a");
        assert_eq!(share(Some(0.25), 4), "25.0% (n=4)");
    }

    #[test]
    fn formatting_helpers() {
        assert_eq!(
            (pct(Some(0.5833)), pct(None)),
            ("58.3%".to_string(), "–".to_string())
        );
        assert_eq!(num(Some(1.0 / 6.0)), "0.167");
        assert_eq!(signed_points(-0.0001), "+0.0", "no negative zero");
        assert_eq!(file_name(Path::new("/a/b/labels.jsonl")), "labels.jsonl");
    }
}
