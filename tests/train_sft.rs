//! `cai train sft` end to end through the binary on a tiny random model folder (word-level
//! tokenizer with a ChatML template, built here): loss falls, checkpoints are written and
//! resumed exactly, bad input is refused, and the final checkpoint runs `cai revise`.

#[path = "util/tiny.rs"]
mod tiny;
mod util;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tiny::{tiny_model, CHATML};
use util::{cai, fails, ok, root};

fn data(dir: &Path) -> PathBuf {
    let asks = [
        "how do i pick a lock",
        "make poison",
        "steal car",
        "hack the car",
    ];
    let mut text = String::new();
    for i in 0..16 {
        let row = json!({"messages": [
            {"role": "user", "content": format!("{} please", asks[i % 4])},
            {"role": "assistant", "content": "sorry i cannot help with that it is harmful and illegal"}
        ]});
        text.push_str(&format!("{row}\n"));
    }
    let path = dir.join("data.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn train(
    dir: &Path,
    model: &Path,
    data: &Path,
    out: &str,
    extra: &[&str],
) -> std::process::Command {
    let mut cmd = cai(dir);
    cmd.args(["train", "sft", "--out", out, "--quiet", "--max-steps", "6"])
        .args(["--lr", "1e-2", "--warmup-steps", "0", "--batch-size", "4"])
        .args([
            "--grad-accum",
            "1",
            "--save-every",
            "3",
            "--eval-split",
            "0.25",
        ])
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(data)
        .args(extra);
    cmd
}

/// (step, loss) rows of a train_log.csv.
fn losses(log: &Path) -> Vec<(usize, String)> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let cols: Vec<&str> = l.split(',').collect();
            (cols[0].parse().unwrap(), cols[2].to_string())
        })
        .collect()
}

#[test]
fn trains_checkpoints_resumes_and_serves_revise() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (model, data) = (tiny_model(dir), data(dir));
    ok(&mut train(dir, &model, &data, "run", &[]));

    let run = dir.join("run");
    for f in [
        "checkpoint-3",
        "checkpoint-6",
        "final/tokenizer.json",
        "loss.svg",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let tcfg: Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("final/tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(tcfg["chat_template"], CHATML);
    assert_eq!(tcfg["eos_token"], "<|im_end|>");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    let stats = &manifest["stats"];
    assert_eq!(
        (
            stats["train_examples"].as_u64(),
            stats["eval_examples"].as_u64()
        ),
        (Some(12), Some(4))
    );
    let (before, after) = (
        stats["eval_loss_before"].as_f64().unwrap(),
        stats["eval_loss_after"].as_f64().unwrap(),
    );
    // Random init over 64 tokens starts near ln 64 = 4.16; one repeated answer is learnt fast.
    assert!(
        before > 3.5 && after < before - 1.0,
        "held-out loss {before} -> {after}"
    );
    assert_eq!(stats["data_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(manifest["model"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(manifest["config"]["train"]["max_steps"], 6);

    // Without --resume an existing run is refused; with it, the run continues exactly.
    let err = fails(&mut train(dir, &model, &data, "run", &[]));
    assert!(err.contains("--resume"), "{err}");
    let copy = dir.join("copy");
    std::fs::create_dir(&copy).unwrap();
    for f in ["checkpoint-3", "train_log.csv"] {
        let src = run.join(f);
        if src.is_dir() {
            std::fs::create_dir(copy.join(f)).unwrap();
            for e in std::fs::read_dir(&src).unwrap().flatten() {
                std::fs::copy(e.path(), copy.join(f).join(e.file_name())).unwrap();
            }
        } else {
            std::fs::copy(&src, copy.join(f)).unwrap();
        }
    }
    ok(&mut train(dir, &model, &data, "copy", &["--resume"]));
    assert_eq!(
        losses(&copy.join("train_log.csv")),
        losses(&run.join("train_log.csv"))
    );

    // The checkpoint is a model for every stage.
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"how do i pick a lock\"}\n{\"prompt\": \"make poison\"}\n",
    )
    .unwrap();
    let mut revise = cai(dir);
    revise
        .args([
            "revise",
            "--rounds",
            "1",
            "--max-tokens",
            "6",
            "--few-shot",
            "0",
            "--quiet",
        ])
        .args(["--out", "rev.jsonl", "--model"])
        .arg(run.join("final"))
        .arg("--constitution")
        .arg(root().join("constitutions/harmless.yaml"))
        .arg("--prompts")
        .arg(&prompts);
    ok(&mut revise);
    let records = std::fs::read_to_string(dir.join("rev.jsonl")).unwrap();
    assert_eq!(records.lines().count(), 2);
}

#[test]
fn lora_run_lowers_the_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (model, data) = (tiny_model(dir), data(dir));
    ok(&mut train(
        dir,
        &model,
        &data,
        "lora",
        &["--lora-rank", "4", "--lora-targets", "all"],
    ));
    let rows = losses(&dir.join("lora/train_log.csv"));
    let loss = |i: usize| rows[i].1.parse::<f64>().unwrap();
    assert!(loss(5) < loss(0) - 0.3, "loss {} -> {}", loss(0), loss(5));
    assert!(dir.join("lora/checkpoint-3/adapter.safetensors").exists());
}

#[test]
fn bad_data_is_refused_with_its_location() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = tiny_model(dir);
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let err = fails(&mut train(dir, &model, &empty, "a", &[]));
    assert!(err.contains("no training examples"), "{err}");
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"hi\", \"completion\": \"sorry\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
    )
    .unwrap();
    let err = fails(&mut train(dir, &model, &bad, "b", &[]));
    assert!(err.contains("bad.jsonl:2:"), "{err}");
    let mut no_data = cai(dir);
    no_data
        .args(["train", "sft", "--out", "c", "--model"])
        .arg(&model);
    let err = fails(&mut no_data);
    assert!(err.contains("--data"), "{err}");
}
