//! One report section per stage, each read from that stage's files in the run folder.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::cells::{cell, json_file, num, quote, short};
use crate::artifacts::{
    ACCURACY_PLOT, LOSS_PLOT, MANIFEST, METRICS, PRINCIPLES_PLOT, P_A_HIST_PLOT, RELIABILITY_PLOT,
    REPORT, REWARDS_PLOT,
};
use crate::jsonl;
use crate::pipeline::stage::{RunDir, Stage};
use crate::stages::revise::RevisionRecord;

/// Revise examples shown in the report.
const EXAMPLES: usize = 3;

/// `path` relative to the run folder, for links and citations.
pub(super) fn rel(run: &RunDir, path: &Path) -> String {
    path.strip_prefix(&run.root)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn manifest_of(out: &Path) -> std::path::PathBuf {
    crate::manifest::manifest_path(out)
}

/// "Not run yet" when the stage folder has nothing.
pub(super) fn absent(md: &mut String, what: &Path, run: &RunDir) -> bool {
    if what.exists() {
        return false;
    }
    let _ = writeln!(md, "No output yet (`{}` is missing).\n", rel(run, what));
    true
}

pub(super) fn images(md: &mut String, run: &RunDir, files: &[(&str, std::path::PathBuf)]) {
    for (alt, path) in files {
        if path.exists() {
            let r = rel(run, path);
            let _ = writeln!(md, "![{alt}]({r})\n");
        }
    }
}

pub(super) fn revise(md: &mut String, run: &RunDir) {
    md.push_str("## 1. Revise: critique → revision data (SL-CAI)\n\n");
    let out = run.revisions();
    if absent(md, &out, run) {
        return;
    }
    let m = json_file(&manifest_of(&out)).unwrap_or(Value::Null);
    let _ = writeln!(
        md,
        "{} of {} prompts written, {} skipped as too long; {} tokens generated in {} s \
         (`{}`: `stats`).\n",
        num(&m, "/stats/written", 0),
        num(&m, "/stats/prompts", 0),
        num(&m, "/stats/skipped_long", 0),
        num(&m, "/stats/generated_tokens", 0),
        num(&m, "/stats/seconds", 1),
        rel(run, &manifest_of(&out))
    );
    let records = jsonl::read::<RevisionRecord>(&out).unwrap_or_default();
    for line in records.iter().take(EXAMPLES) {
        let r = &line.value;
        let _ = writeln!(
            md,
            "### Example `{}` (`{}` line {})\n\n**Prompt**\n\n{}\n**Initial answer**\n\n{}",
            r.id,
            rel(run, &out),
            line.number,
            quote(&short(&r.prompt, 600)),
            quote(&short(&r.initial, 600))
        );
        for (i, round) in r.rounds.iter().enumerate() {
            let _ = writeln!(
                md,
                "**Round {} — principle `{}`**\n\nCritique:\n\n{}\nRevision:\n\n{}",
                i + 1,
                round.principle,
                quote(&short(&round.critique, 600)),
                quote(&short(&round.revision, 600))
            );
        }
    }
}

pub(super) fn sft(md: &mut String, run: &RunDir) {
    md.push_str("## 2. SFT on the revisions\n\n");
    let path = run.stage_dir(Stage::Sft).join(MANIFEST);
    if absent(md, &path, run) {
        return;
    }
    let m = json_file(&path).unwrap_or(Value::Null);
    let _ = writeln!(
        md,
        "| steps | train examples | held-out examples | held-out loss before | after | \
         last train loss | tokens/s |\n|---:|---:|---:|---:|---:|---:|---:|\n\
         | {} | {} | {} | {} | {} | {} | {} |\n\nSource: `{}` (`stats`); curve from \
         `sft/train_log.csv`. The SFT model is `sft/final/`.\n",
        num(&m, "/stats/steps", 0),
        num(&m, "/stats/train_examples", 0),
        num(&m, "/stats/eval_examples", 0),
        num(&m, "/stats/eval_loss_before", 4),
        num(&m, "/stats/eval_loss_after", 4),
        num(&m, "/stats/final_loss", 4),
        num(&m, "/stats/train_tokens_per_s", 0),
        rel(run, &path)
    );
    images(
        md,
        run,
        &[("SFT loss", run.stage_dir(Stage::Sft).join(LOSS_PLOT))],
    );
}

pub(super) fn sample(md: &mut String, run: &RunDir) {
    md.push_str("## 3. Sample: responses of the SFT model\n\n");
    let out = run.samples();
    if absent(md, &out, run) {
        return;
    }
    let m = json_file(&manifest_of(&out)).unwrap_or(Value::Null);
    let pairs = std::fs::read_to_string(run.sample_pairs())
        .map(|t| {
            t.lines()
                .filter(|l| !l.trim().is_empty())
                .count()
                .to_string()
        })
        .unwrap_or_else(|_| "–".into());
    let _ = writeln!(
        md,
        "{} of {} prompts sampled with `{}` ({} tokens, {} s; `{}`), giving {} pairs \
         (lines of `{}`).\n",
        num(&m, "/stats/written", 0),
        num(&m, "/stats/prompts", 0),
        m.pointer("/model/name")
            .and_then(Value::as_str)
            .unwrap_or("–"),
        num(&m, "/stats/generated_tokens", 0),
        num(&m, "/stats/seconds", 1),
        rel(run, &manifest_of(&out)),
        pairs,
        rel(run, &run.sample_pairs())
    );
}

/// The fields of a label row the report counts (any label file's rows have them).
#[derive(serde::Deserialize)]
struct LabelCounts {
    p_a: f64,
    #[serde(default)]
    position_flip: bool,
}

pub(super) fn label(md: &mut String, run: &RunDir) {
    md.push_str("## 4. Label: AI preference labels\n\n");
    let out = run.labels();
    if absent(md, &out, run) {
        return;
    }
    let m = json_file(&manifest_of(&out)).unwrap_or(Value::Null);
    let rows: Vec<LabelCounts> = jsonl::read(&out)
        .map(|r| r.into_iter().map(|l| l.value).collect())
        .unwrap_or_default();
    let n = rows.len().max(1) as f64;
    let mean_p = rows.iter().map(|r| r.p_a).sum::<f64>() / n;
    let confident = rows.iter().filter(|r| (r.p_a - 0.5).abs() >= 0.2).count();
    let flips = rows.iter().filter(|r| r.position_flip).count();
    let ties = rows.iter().filter(|r| r.p_a == 0.5).count();
    let _ = writeln!(
        md,
        "{} pairs labelled in {} s (`{}`). From `{}`: mean P(response_a better) {mean_p:.3}; \
         {confident} of {} labels at least 0.2 from a tie; {ties} exact ties (p_a = 0.5, \
         no preference); {flips} position flips (the choice changed with the order).\n",
        num(&m, "/stats/written", 0),
        num(&m, "/stats/seconds", 1),
        rel(run, &manifest_of(&out)),
        rel(run, &out),
        rows.len()
    );
    let metrics = run.compare_dir().join(METRICS);
    let Some(c) = json_file(&metrics) else {
        md.push_str("No human labels given (`human_pairs`), so no agreement check.\n\n");
        return;
    };
    let _ = writeln!(
        md,
        "### Against human labels\n\nThe same feedback settings labelled the human-labelled \
         pairs `{}` (AI labels: `{}`). From `{}` (full table and how each number is computed: \
         [{}]({})):\n\n\
         | pairs scored | AI ties (½ in agreement) | agreement (chance 0.5) | Wilson 95% interval \
         | Cohen's kappa (chance 0) | log-loss (chance 0.693) | Brier (chance 0.250) | ECE | \
         truncated |\n|---:|---:|---:|---|---:|---:|---:|---:|---:|\n\
         | {} | {} | {} | {} – {} | {} | {} | {} | {}{} | {} |\n",
        cell(
            c.pointer("/human/path")
                .and_then(Value::as_str)
                .unwrap_or("–")
        ),
        rel(run, &run.human_check()),
        rel(run, &metrics),
        rel(run, &run.compare_dir().join(REPORT)),
        rel(run, &run.compare_dir().join(REPORT)),
        num(&c, "/files/0/n_scored", 0),
        num(&c, "/files/0/ties", 0),
        num(&c, "/files/0/agreement", 3),
        num(&c, "/files/0/agreement_ci/0", 3),
        num(&c, "/files/0/agreement_ci/1", 3),
        num(&c, "/files/0/kappa/value", 3),
        num(&c, "/files/0/log_loss", 3),
        num(&c, "/files/0/brier", 3),
        num(&c, "/files/0/calibration/ece", 3),
        if c.pointer("/files/0/all_ties") == Some(&Value::Bool(true)) {
            " (all ties: measures nothing)"
        } else {
            ""
        },
        num(&c, "/files/0/join/truncated", 0),
    );
    // Position bias side by side: as the label file keeps the per-order answers (after
    // calibration or the CoT clamp) and raw, before them.
    let share = |kind: &str, rate: &str, n: &str| {
        let n_ptr = format!("/files/0/{kind}/{n}");
        match c.pointer(&n_ptr).and_then(Value::as_u64) {
            Some(0) | None => "n/a".to_string(),
            Some(count) => format!(
                "{} (n={count})",
                num(&c, &format!("/files/0/{kind}/{rate}"), 3)
            ),
        }
    };
    let _ = writeln!(
        md,
        "| per-order answers | order consistency (chance 0.5) | chose slot (A) (no bias 0.5) |\n\
         |---|---:|---:|\n\
         | calibrated (as kept in the labels) | {} | {} |\n\
         | raw (before calibration / clamping) | {} | {} |\n",
        share("position", "consistency", "n_pairs"),
        share("position", "slot_a_rate", "n_answers"),
        share("position_raw", "consistency", "n_pairs"),
        share("position_raw", "slot_a_rate", "n_answers"),
    );
    let min_pairs = num(&c, "/min_pairs", 0);
    let verdict = match c.pointer("/files/0/chance").and_then(Value::as_str) {
        Some("too_few_pairs") => format!(
            "**Too few pairs to tell (fewer than {min_pairs} scored) whether these labels beat \
             chance.**\n\n"
        ),
        Some("chance") => "**The agreement interval contains 50 %: these labels are \
             indistinguishable from chance, and a reward model trained on them learns noise.**\n\n"
            .to_string(),
        Some("below_chance") => "**The agreement interval lies below 50 %: the labels are \
             inverted more often than not, and a reward model trained on them learns the \
             opposite preference.**\n\n"
            .to_string(),
        _ => String::new(),
    };
    md.push_str(&verdict);
    let dir = run.compare_dir();
    images(
        md,
        run,
        &[
            ("Reliability diagram", dir.join(RELIABILITY_PLOT)),
            ("Agreement per principle", dir.join(PRINCIPLES_PLOT)),
            ("Distribution of p_a", dir.join(P_A_HIST_PLOT)),
        ],
    );
}

pub(super) fn rm(md: &mut String, run: &RunDir) {
    md.push_str("## 5. Reward model\n\n");
    let dir = run.rm_dir();
    let metrics = dir.join(METRICS);
    if absent(md, &metrics, run) {
        return;
    }
    let resolved = dir.join("rm_config.yaml");
    let data: Vec<(String, String)> = std::fs::read_to_string(&resolved)
        .ok()
        .and_then(|t| serde_yaml::from_str::<serde_yaml::Value>(&t).ok())
        .and_then(|v| v.get("data").cloned())
        .and_then(|d| d.as_sequence().cloned())
        .unwrap_or_default()
        .iter()
        .map(|d| {
            let path = d.get("path").and_then(|p| p.as_str()).unwrap_or("–");
            let weight = d.get("weight").and_then(|w| w.as_f64()).unwrap_or(1.0);
            (rel(run, Path::new(path)), weight.to_string())
        })
        .collect();
    let _ = writeln!(
        md,
        "Training data (`{}`: `data`):\n\n| source | weight |\n|---|---:|",
        rel(run, &resolved)
    );
    for (path, weight) in data {
        let _ = writeln!(md, "| `{}` | {weight} |", cell(&path));
    }
    let m = json_file(&metrics).unwrap_or(Value::Null);
    let _ = writeln!(
        md,
        "\n| steps | train pairs | held-out pairs | held-out accuracy | ECE | loss | reward \
         chosen | reward rejected | pairs/s |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
         | {} | {} | {} | {} | {} | {} | {} ± {} | {} ± {} | {} |\n\nSource: `{}`. The \
         reward model is `rm/final/`.\n",
        num(&m, "/steps", 0),
        num(&m, "/train_pairs", 0),
        num(&m, "/eval_pairs", 0),
        num(&m, "/eval/accuracy", 3),
        num(&m, "/eval/ece", 3),
        num(&m, "/eval/loss", 3),
        num(&m, "/eval/chosen/mean", 3),
        num(&m, "/eval/chosen/std", 3),
        num(&m, "/eval/rejected/mean", 3),
        num(&m, "/eval/rejected/std", 3),
        num(&m, "/pairs_per_s", 2),
        rel(run, &metrics)
    );
    images(
        md,
        run,
        &[
            ("Reward-model loss", dir.join(LOSS_PLOT)),
            ("Reward-model accuracy", dir.join(ACCURACY_PLOT)),
            ("Held-out rewards", dir.join(REWARDS_PLOT)),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A run folder whose label stage wrote `p_a`s for pairs q0.. (human: a on all) and whose
    /// compare step ran on them.
    fn run_with_labels(p_a: &[f64], extra: serde_json::Value) -> (tempfile::TempDir, RunDir) {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path());
        let human = tmp.path().join("human.jsonl");
        let text: String = (0..p_a.len())
            .map(|i| {
                let row = json!({"prompt": format!("q{i}"), "response_a": format!("a{i}"),
                    "response_b": format!("b{i}"), "human": "a"});
                format!("{row}\n")
            })
            .collect();
        std::fs::write(&human, text).unwrap();
        let rows: Vec<Value> = p_a
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let mut row = json!({"conversation": [{"role": "user", "content": format!("q{i}")}],
                    "response_a": format!("a{i}"), "response_b": format!("b{i}"), "p_a": p});
                for (k, v) in extra.as_object().unwrap() {
                    row[k] = v.clone();
                }
                row
            })
            .collect();
        std::fs::create_dir_all(run.labels().parent().unwrap()).unwrap();
        jsonl::write_all(&run.labels(), &rows).unwrap();
        jsonl::write_all(&run.human_check(), &rows).unwrap();
        crate::compare::run(&crate::compare::CompareConfig {
            human,
            ai: vec![run.human_check()],
            report: Some(run.compare_dir()),
            ..Default::default()
        })
        .unwrap();
        (tmp, run)
    }

    #[test]
    fn pipeline_report_counts_ties_and_shows_raw_and_calibrated_position_bias() {
        // Four pairs: two exact ties. Calibrated per-order answers: response_a both times
        // (consistent; slots A, B). Raw: slot (A) both times (0.9; 0.3 = response_b in slot A).
        let extra = json!({"p_a_first": 0.7, "p_a_second": 0.6, "p_a_first_raw": 0.9,
            "p_a_second_raw": 0.3});
        let (_tmp, run) = run_with_labels(&[0.5, 0.8, 0.5, 0.9], extra);
        let mut md = String::new();
        label(&mut md, &run);
        for needle in [
            "2 exact ties (p_a = 0.5, no preference)",
            // 4 scored, 2 ties, agreement (1 + 1 + ½ + ½) / 4 = 0.75, Wilson [0.301, 0.954].
            "| 4 | 2 | 0.750 | 0.301 – 0.954 |",
            "| calibrated (as kept in the labels) | 1.000 (n=4) | 0.500 (n=8) |",
            "| raw (before calibration / clamping) | 0.000 (n=4) | 1.000 (n=8) |",
            "**Too few pairs to tell (fewer than 10 scored)",
        ] {
            assert!(md.contains(needle), "`{needle}` missing:\n{md}");
        }
        assert!(!md.contains("indistinguishable from chance"), "{md}");
    }

    #[test]
    fn pipeline_report_says_n_a_for_raw_and_flags_inverted_labels() {
        // Twelve pairs, all labelled against the human: 0 of 12, Wilson upper bound
        // z²/12 / (1 + z²/12) = 0.242494 < 0.5. No raw per-order values in the file.
        let extra = json!({"p_a_first": 0.2, "p_a_second": 0.1});
        let (_tmp, run) = run_with_labels(&[0.1; 12], extra);
        let mut md = String::new();
        label(&mut md, &run);
        assert!(md.contains("| 0.000 – 0.242 |"), "{md}");
        assert!(
            md.contains("| raw (before calibration / clamping) | n/a | n/a |"),
            "{md}"
        );
        assert!(
            md.contains("The agreement interval lies below 50 %"),
            "{md}"
        );
    }
}
