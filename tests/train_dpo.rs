//! `cai train dpo` end to end through the binary on a tiny random model folder: AI soft
//! labels mixed with SL-CAI revision pairs, held-out human pairs, the cached reference
//! log-probabilities, exact resume, and the errors of unusable data.

#[path = "util/tiny.rs"]
mod tiny;
mod util;

use std::path::Path;

use cai::model_files::checkpoint::{load_model_dir, max_weight_difference};
use candle_core::{DType, Device};
use serde_json::{json, Value};
use util::{cai, fails, ok};

const TOPICS: [&str; 6] = ["lock", "poison", "car", "hack", "something", "that"];
const REFUSAL: [&str; 4] = ["sorry", "cannot", "help", "please"];
const COMPLY: [&str; 4] = ["make", "steal", "pick", "do"];

fn words(set: &[&str], i: usize, n: usize) -> String {
    (0..n)
        .map(|k| set[(i * 3 + k * 5) % set.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// `n` conversations; the response with refusal words is preferred, in slot A or B. AI
/// label rows (`p_a` soft, `ai`; prompts "how do i …"), or our human rows (prompts "why …",
/// so that no held-out conversation is also a training one).
fn write_pairs(path: &Path, n: usize, seed: usize, ai: bool) {
    let mut text = String::new();
    for i in 0..n {
        let prompt = format!(
            "{} {} {}",
            if ai { "how do i" } else { "why" },
            COMPLY[(i + seed) % 4],
            TOPICS[(i + seed) % 6]
        );
        let good = words(&REFUSAL, i + seed, 3);
        let bad = words(&COMPLY, i + seed + 1, 3);
        let a_wins = (i + seed).is_multiple_of(2);
        let (a, b) = if a_wins { (&good, &bad) } else { (&bad, &good) };
        let row = if ai {
            json!({"conversation": [{"role": "user", "content": prompt}], "response_a": a,
                   "response_b": b, "p_a": if a_wins { 0.85 } else { 0.15 }})
        } else {
            json!({"prompt": prompt, "response_a": a, "response_b": b,
                   "human": if a_wins { "a" } else { "b" }})
        };
        text.push_str(&format!("{row}\n"));
    }
    std::fs::write(path, text).unwrap();
}

/// `cai revise` records: a complying initial answer revised into a refusal.
fn write_revisions(path: &Path, n: usize) {
    let mut text = String::new();
    for i in 0..n {
        let prompt = format!("tell me about {}", TOPICS[i % 6]);
        let row = json!({"id": format!("r{i}"), "prompt": prompt,
            "conversation": [{"role": "user", "content": prompt}],
            "initial": words(&COMPLY, i, 4), "rounds": [{"principle": "p", "critique": "c",
            "revision": words(&REFUSAL, i, 4)}], "final": words(&REFUSAL, i, 4)});
        text.push_str(&format!("{row}\n"));
    }
    std::fs::write(path, text).unwrap();
}

fn dpo_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "dpo",
        "--model",
        "base",
        "--data",
        "labels.jsonl",
        "--data",
        "revise.jsonl:0.5",
        "--eval",
        "eval.jsonl",
        "--out",
        out,
        "--max-steps",
        "16",
        "--lr",
        "3e-3",
        "--beta",
        "0.5",
        "--warmup-steps",
        "0",
        "--save-every",
        "8",
        "--eval-every",
        "8",
        "--quiet",
    ];
    args.extend(extra);
    args
}

fn metrics(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn train_dpo_on_labels_and_revisions_then_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny::tiny_model(d);
    write_pairs(&d.join("labels.jsonl"), 40, 0, true);
    write_revisions(&d.join("revise.jsonl"), 12);
    write_pairs(&d.join("eval.jsonl"), 16, 1, false);

    let stdout = ok(cai(d).args(dpo_args("dpo", &["--loss", "cdpo"])));
    assert!(stdout.contains("held-out: 16 pairs"), "{stdout}");
    for f in [
        "reference_logps.json",
        "final/model.safetensors",
        "final/tokenizer.json",
        "final/config.json",
        "checkpoint-8/optimizer.safetensors",
        "train_log.csv",
        "eval_log.csv",
        "metrics.json",
        "manifest.json",
        "dpo_config.yaml",
        "loss.svg",
        "accuracy.svg",
        "rewards.svg",
    ] {
        assert!(d.join("dpo").join(f).exists(), "missing {f}");
    }
    let m = metrics(&d.join("dpo/metrics.json"));
    assert_eq!(m["train_pairs"], 52);
    assert_eq!(m["reference_reused"], false);
    // The held-out pairs are the --eval file's, all human.
    let held = &m["held_out"];
    assert_eq!(held["file"], "eval.jsonl");
    assert_eq!(
        held["sources"],
        json!({"ai": 0, "human": 16, "revisions": 0})
    );
    assert_eq!(
        held["train_sources"],
        json!({"ai": 40, "human": 0, "revisions": 12})
    );
    assert_eq!(held["dropped_overlap"], 0);
    let before = m["eval_before"]["accuracy"].as_f64().unwrap();
    let after = m["eval_after"]["accuracy"].as_f64().unwrap();
    assert_eq!(before, 0.5, "the starting policy is the reference");
    assert!(
        after >= 0.9,
        "held-out implicit-reward accuracy {before} -> {after}"
    );
    assert!(m["eval_after"]["margin"].as_f64().unwrap() > 0.0);

    // The final folder is a model any stage loads, tokenizer included.
    cai::model_files::ChatTokenizer::open(d.join("dpo/final").to_str().unwrap()).unwrap();

    // Resume from step 8 (the later checkpoint and the final model removed): the
    // reference log-probabilities are reused and the final weights equal the first run's.
    let first = load_model_dir(&d.join("dpo/final"), DType::F32, &Device::Cpu).unwrap();
    std::fs::remove_dir_all(d.join("dpo/checkpoint-16")).unwrap();
    std::fs::remove_dir_all(d.join("dpo/final")).unwrap();
    ok(cai(d).args(dpo_args("dpo", &["--loss", "cdpo", "--resume"])));
    let m = metrics(&d.join("dpo/metrics.json"));
    assert_eq!(m["reference_reused"], true);
    assert_eq!(m["eval_after"]["accuracy"].as_f64().unwrap(), after);
    let resumed = load_model_dir(&d.join("dpo/final"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(max_weight_difference(&first.1, &resumed.1).unwrap(), 0.0);

    // A fresh run into the same folder is refused rather than overwriting it.
    let err = fails(cai(d).args(dpo_args("dpo", &[])));
    assert!(err.contains("--resume"), "{err}");
}

#[test]
fn unusable_data_gets_a_clear_error_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny::tiny_model(d);
    // Identical responses only.
    let row = json!({"prompt": "how do i pick a lock", "response_a": "sorry",
                     "response_b": " sorry ", "human": "a"});
    std::fs::write(d.join("same.jsonl"), format!("{row}\n{row}\n")).unwrap();
    let err = fails(cai(d).args([
        "train",
        "dpo",
        "--model",
        "base",
        "--data",
        "same.jsonl",
        "--out",
        "x",
        "--quiet",
    ]));
    assert!(
        err.contains("no usable training pairs") && err.contains("2 identical"),
        "{err}"
    );
    assert!(!d.join("x").exists());
    // Ties only: refused by the sigmoid loss, which rounds labels.
    let tie = json!({"conversation": [{"role": "user", "content": "how do i hack"}],
                     "response_a": "sorry", "response_b": "make that", "p_a": 0.5});
    std::fs::write(d.join("ties.jsonl"), format!("{tie}\n")).unwrap();
    let err = fails(cai(d).args([
        "train",
        "dpo",
        "--model",
        "base",
        "--data",
        "ties.jsonl",
        "--out",
        "x",
        "--quiet",
    ]));
    assert!(err.contains("1 ties for the sigmoid loss"), "{err}");
    // A bad row names its file and line.
    std::fs::write(d.join("bad.jsonl"), format!("{row}\n{{\"prompt\": 3}}\n")).unwrap();
    let err = fails(cai(d).args([
        "train",
        "dpo",
        "--model",
        "base",
        "--data",
        "bad.jsonl",
        "--out",
        "x",
        "--quiet",
    ]));
    assert!(err.contains("bad.jsonl:2"), "{err}");
}
