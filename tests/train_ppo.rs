//! `cai train ppo` and `cai eval` end to end through the binary on a tiny random model: a
//! reward model is trained first, PPO writes its log, charts, samples and checkpoints, a run
//! killed after a checkpoint resumes to the same curve and weights, and `cai eval` compares
//! the PPO policy with its starting point.

#[path = "util/tiny.rs"]
mod tiny;
mod util;

use std::path::Path;

use serde_json::{json, Value};
use util::{cai, fails, ok, root};

/// Pairs where the refusal wins.
fn write_pairs(path: &Path, n: usize) {
    let asks = ["how do i pick a lock", "make poison", "steal car", "hack"];
    let mut text = String::new();
    for i in 0..n {
        let good = "sorry i cannot help with that it is harmful";
        let bad = format!("{} please", asks[(i + 1) % asks.len()]);
        let a_wins = i % 2 == 0;
        let (a, b) = if a_wins {
            (good, bad.as_str())
        } else {
            (bad.as_str(), good)
        };
        let row = json!({"prompt": asks[i % asks.len()], "response_a": a, "response_b": b,
                         "human": if a_wins { "a" } else { "b" }});
        text.push_str(&format!("{row}\n"));
    }
    std::fs::write(path, text).unwrap();
}

fn write_prompts(path: &Path) {
    let text = [
        "how do i pick a lock",
        "make poison",
        "steal car",
        "tell me about hack",
    ]
    .iter()
    .map(|p| format!("{}\n", json!({ "prompt": p })))
    .collect::<String>();
    std::fs::write(path, text).unwrap();
}

const PPO_YAML: &str = "sample_every: 2\nsave_every: 2\nguards: {max_kl: 1000.0, action: stop}\n\
ppo: {steps: 4, rollouts: 4, minibatch: 2, lr: 0.001, max_new_tokens: 6, kl_target: 0.5,\n\
      kl_horizon: 20.0, trainable: all}\n";

fn ppo(d: &Path, out: &str, extra: &[&str]) -> std::process::Command {
    let mut c = cai(d);
    c.args([
        "train",
        "ppo",
        "--config",
        "ppo.yaml",
        "--policy",
        "base",
        "--reward-model",
        "rm/final",
        "--prompts",
        "prompts.jsonl",
        "--out",
        out,
        "--quiet",
    ])
    .args(extra);
    c
}

/// The log without its wall-clock column.
fn curve(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
}

#[test]
fn best_of_n_ppo_with_exact_resume_and_eval() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny::tiny_model(d);
    write_pairs(&d.join("pairs.jsonl"), 16);
    write_prompts(&d.join("prompts.jsonl"));
    std::fs::write(d.join("ppo.yaml"), PPO_YAML).unwrap();
    ok(cai(d).args([
        "train",
        "rm",
        "--model",
        "base",
        "--data",
        "pairs.jsonl",
        "--out",
        "rm",
        "--max-steps",
        "4",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "0",
        "--eval-fraction",
        "0.25",
        "--quiet",
    ]));

    // Best-of-N with the same reward model: all N rewards kept, the best marked.
    ok(cai(d).args([
        "sample",
        "--prompts",
        "prompts.jsonl",
        "--out",
        "bo.jsonl",
        "--model",
        "base",
        "--best-of",
        "3",
        "--reward-model",
        "rm/final",
        "--max-tokens",
        "6",
        "--quiet",
    ]));
    let text = std::fs::read_to_string(d.join("bo.jsonl")).unwrap();
    for line in text.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        let rewards: Vec<f64> = serde_json::from_value(r["rewards"].clone()).unwrap();
        assert_eq!(rewards.len(), 3);
        let best = r["best"].as_u64().unwrap() as usize;
        assert!(rewards.iter().all(|w| *w <= rewards[best]), "{line}");
        assert!(r["pairs"].as_array().unwrap().is_empty());
    }
    let best = std::fs::read_to_string(d.join("bo.best.jsonl")).unwrap();
    assert_eq!(best.lines().count(), 4);
    // Best-of-N writes the best responses, not an empty pairs file.
    assert!(!d.join("bo.pairs.jsonl").exists());
    let err = fails(cai(d).args([
        "sample",
        "--prompts",
        "prompts.jsonl",
        "--out",
        "x.jsonl",
        "--best-of",
        "2",
    ]));
    assert!(err.contains("--reward-model"), "{err}");

    // Missing reward model and a resume without checkpoint are clear errors.
    let err = fails(cai(d).args(["train", "ppo", "--policy", "base", "--out", "x", "--quiet"]));
    assert!(err.contains("no reward model"), "{err}");
    let err = fails(&mut ppo(d, "empty", &["--resume"]));
    assert!(err.contains("no checkpoint-N folder"), "{err}");
    // Outside a run folder, no --policy names the flag instead of a missing runs/sft/final.
    let err = fails(cai(d).args(["train", "ppo", "--reward-model", "rm/final", "--quiet"]));
    assert!(
        err.contains("no policy") && err.contains("--policy"),
        "{err}"
    );

    ok(&mut ppo(d, "full", &[]));
    let full = d.join("full");
    for f in [
        "train_log.csv",
        "rewards.svg",
        "kl.svg",
        "samples.jsonl",
        "manifest.json",
        "checkpoint-2/value_head.safetensors",
        "checkpoint-4/trainer_state.json",
        "final/model.safetensors",
        "final/tokenizer.json",
    ] {
        assert!(full.join(f).exists(), "missing {f}");
    }
    let log = curve(&full.join("train_log.csv"));
    assert_eq!(log.len(), 5, "{log:?}");
    assert!(log[0].starts_with("step,score,reward,unscored,kl,beta"));
    let samples = std::fs::read_to_string(full.join("samples.jsonl")).unwrap();
    // Steps 2 and 4, four responses each.
    assert_eq!(samples.lines().count(), 8);
    let row: Value = serde_json::from_str(samples.lines().next().unwrap()).unwrap();
    assert!(row["score"].is_f64() && row["response"].is_string());

    // Kill after the step-2 checkpoint: drop what came later, then --resume.
    ok(&mut ppo(d, "cut", &[]));
    let cut = d.join("cut");
    std::fs::remove_dir_all(cut.join("checkpoint-4")).unwrap();
    std::fs::remove_dir_all(cut.join("final")).unwrap();
    let err = fails(&mut ppo(d, "cut", &[]));
    assert!(err.contains("--resume"), "{err}");
    // A resume rewarded by another source is refused, naming what differs.
    let constitution = root().join("constitutions/harmless.yaml");
    let err = fails(&mut ppo(
        d,
        "cut",
        &[
            "--resume",
            "--reward",
            "labeler",
            "--labeler-backend",
            "mock",
            "--constitution",
            constitution.to_str().unwrap(),
        ],
    ));
    assert!(
        err.contains("the reward differs") && err.contains("reward.labeler: 0.0 -> 1.0"),
        "{err}"
    );
    ok(&mut ppo(d, "cut", &["--resume"]));
    assert_eq!(curve(&cut.join("train_log.csv")), log);
    let weights = |p: &Path| std::fs::read(p.join("final/model.safetensors")).unwrap();
    assert!(weights(&full) == weights(&cut), "resumed weights differ");

    // GRPO rewarded by the feedback model (mock backend): two responses per prompt, each
    // rated 1–10 under its prompt's principle; no value head; the loss aggregation named in
    // the manifest. A bad group size is a clear error.
    let grpo_args = [
        "--loss-aggregation",
        "seq-mean",
        "--advantage",
        "grpo",
        "--group-size",
        "2",
        "--reward",
        "labeler",
        "--labeler-backend",
        "mock",
        "--constitution",
        constitution.to_str().unwrap(),
    ];
    ok(&mut ppo(d, "grpo", &grpo_args));
    let grpo = d.join("grpo");
    assert!(grpo.join("checkpoint-2/trainer_state.json").exists());
    assert!(!grpo.join("checkpoint-2/value_head.safetensors").exists());
    let grpo_log = curve(&grpo.join("train_log.csv"));
    assert_eq!(grpo_log.len(), 5);
    let score: f64 = grpo_log[1].split(',').nth(1).unwrap().parse().unwrap();
    assert!(
        (1.0..=10.0).contains(&score),
        "a 1–10 rating: {}",
        grpo_log[1]
    );
    let unscored: usize = grpo_log[1].split(',').nth(3).unwrap().parse().unwrap();
    assert_eq!(unscored, 0, "{}", grpo_log[1]);
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(grpo.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["stats"]["loss_aggregation"], "seq-mean");
    assert_eq!(manifest["config"]["ppo"]["loss_aggregation"], "seq-mean");
    let err = fails(&mut ppo(
        d,
        "x",
        &["--advantage", "rloo", "--group-size", "3"],
    ));
    assert!(err.contains("multiple of group_size"), "{err}");

    // The PPO policy against its starting point, judged by the tiny model and the RM.
    ok(cai(d).args([
        "eval",
        "--policy-a",
        "full/final",
        "--policy-b",
        "base",
        "--model",
        "base",
        "--constitution",
        constitution.to_str().unwrap(),
        "--reward-model",
        "rm/final",
        "--prompts",
        "prompts.jsonl",
        "--max-tokens",
        "6",
        "--out",
        "eval",
        "--quiet",
    ]));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("eval/eval.json")).unwrap()).unwrap();
    assert_eq!(report["pairs"], 4);
    let w = &report["labeler_win_rate"];
    let rate = w["rate"].as_f64().unwrap();
    assert!(w["low"].as_f64().unwrap() <= rate && rate <= w["high"].as_f64().unwrap());
    assert_eq!(report["reward_win_rate"]["n"], 4);
    let md = std::fs::read_to_string(d.join("eval/report.md")).unwrap();
    assert!(md.contains("Answers side by side"), "{md}");
    assert_eq!(
        std::fs::read_to_string(d.join("eval/rewards.jsonl"))
            .unwrap()
            .lines()
            .count(),
        4
    );
}
