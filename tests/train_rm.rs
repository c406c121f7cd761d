//! `cai train rm` and `cai score` end to end through the binary on a tiny random model
//! folder (config.json, model.safetensors, a word-level tokenizer.json built here and a
//! ChatML chat template).

mod util;

use std::path::Path;

use candle_core::{DType, Device};
use serde_json::{json, Value};
use util::{cai, fails, ok};

const WORDS: [&str; 16] = [
    "user",
    "assistant",
    "system",
    "good",
    "red",
    "blue",
    "green",
    "cat",
    "dog",
    "sun",
    "tree",
    "stone",
    "rain",
    "hello",
    "tell",
    "me",
];

/// A word-level tokenizer: ChatML markers, `[UNK]`, the words above and `\n`-free
/// whitespace splitting.
fn tokenizer_json() -> Value {
    let special = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"];
    let added: Vec<Value> = special
        .iter()
        .enumerate()
        .map(|(id, s)| {
            json!({"id": id, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let mut vocab = serde_json::Map::new();
    for (id, s) in special
        .iter()
        .chain(&["[UNK]"])
        .chain(WORDS.iter())
        .enumerate()
    {
        vocab.insert(s.to_string(), json!(id));
    }
    json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
           "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
           "post_processor": null, "decoder": null,
           "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}})
}

fn tiny_model(dir: &Path) {
    let mut cfg = cai::train::LlamaConfig::new(32, 32, 64, 2, 4, 2);
    cfg.max_position_embeddings = 128;
    let weights = cai::model_files::weights::init_random(&cfg, 0.1, 11, DType::F32, &Device::Cpu)
        .expect("random weights");
    let template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}\
        <|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    let extra = [
        ("tokenizer.json", tokenizer_json().to_string().into_bytes()),
        (
            "tokenizer_config.json",
            json!({"chat_template": template, "eos_token": "<|im_end|>"})
                .to_string()
                .into_bytes(),
        ),
    ];
    cai::train::save_model_dir(dir, &cfg, &weights, &extra).expect("model folder");
}

/// `n` pairs; the response containing "good" is the human's choice, in slot A or B. The
/// prompts are "tell me …" for seed 0 and "hello me …" otherwise, so that a held-out file
/// written with another seed shares no conversation with the training file.
fn write_pairs(path: &Path, n: usize, seed: usize) {
    let verb = if seed == 0 { "tell" } else { "hello" };
    let words = &WORDS[4..13];
    let mut text = String::new();
    for i in 0..n {
        let w = |k: usize| words[(i * 7 + k * 3 + seed) % words.len()];
        let good = format!("{} good {}", w(1), w(2));
        let bad = format!("{} {} {}", w(3), w(4), w(5));
        let a_wins = (i + seed).is_multiple_of(2);
        let (a, b) = if a_wins { (&good, &bad) } else { (&bad, &good) };
        let row = json!({"prompt": format!("{verb} me {}", w(0)), "response_a": a,
                         "response_b": b, "human": if a_wins { "a" } else { "b" }});
        text.push_str(&format!("{row}\n"));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn train_rm_then_score_on_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_model(&d.join("tiny"));
    write_pairs(&d.join("train.jsonl"), 48, 0);
    write_pairs(&d.join("eval.jsonl"), 16, 1);
    let stdout = ok(cai(d).args([
        "train",
        "rm",
        "--model",
        "tiny",
        "--data",
        "train.jsonl:2",
        "--eval",
        "eval.jsonl",
        "--out",
        "rm",
        "--max-steps",
        "30",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "0",
        "--batch-size",
        "8",
        "--save-every",
        "10",
        "--eval-every",
        "10",
        "--quiet",
    ]));
    assert!(stdout.contains("held-out: 16 pairs"), "{stdout}");
    for f in [
        "final/reward_head.safetensors",
        "final/reward_model.json",
        "final/tokenizer.json",
        "checkpoint-20/optimizer.safetensors",
        "train_log.csv",
        "eval_log.csv",
        "metrics.json",
        "loss.svg",
        "accuracy.svg",
        "rewards.svg",
        "rm_config.yaml",
    ] {
        assert!(d.join("rm").join(f).exists(), "missing {f}");
    }
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("rm/metrics.json")).unwrap()).unwrap();
    let accuracy = metrics["eval"]["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.9, "held-out accuracy {accuracy}");

    let stdout = ok(cai(d).args([
        "score",
        "--rm",
        "rm/final",
        "--pairs",
        "eval.jsonl",
        "--out",
        "scores.jsonl",
    ]));
    assert!(stdout.contains("accuracy against human labels"), "{stdout}");
    let text = std::fs::read_to_string(d.join("scores.jsonl")).unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 16);
    for r in &rows {
        let (ra, rb, p) = (
            r["r_a"].as_f64().unwrap(),
            r["r_b"].as_f64().unwrap(),
            r["p_a"].as_f64().unwrap(),
        );
        assert!((p - 1.0 / (1.0 + (rb - ra).exp())).abs() < 1e-9);
    }

    std::fs::write(
        d.join("single.jsonl"),
        "{\"prompt\": \"tell me sun\", \"response\": \"red good tree\"}\n\
         {\"conversation\": [{\"role\": \"user\", \"content\": \"hello\"}], \"response\": \"cat dog\"}\n",
    )
    .unwrap();
    ok(cai(d).args([
        "score",
        "--rm",
        "rm/checkpoint-20",
        "--pairs",
        "single.jsonl",
        "--out",
        "single.out",
    ]));
    let text = std::fs::read_to_string(d.join("single.out")).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(text.contains("\"reward\""));

    // A model folder that is no reward model is refused with a clear message.
    let err = fails(cai(d).args([
        "score",
        "--rm",
        "tiny",
        "--pairs",
        "eval.jsonl",
        "--out",
        "x",
    ]));
    assert!(err.contains("not a reward model folder"), "{err}");
}

/// AI label rows (soft `p_a`) on the prompts "tell me …" of `write_pairs`, other words.
fn write_ai_labels(path: &Path, n: usize) {
    let words = &WORDS[4..13];
    let mut text = String::new();
    for i in 0..n {
        let w = |k: usize| words[(i * 5 + k * 2) % words.len()];
        let good = format!("good {} {}", w(1), w(2));
        let bad = format!("{} {}", w(3), w(4));
        let a_wins = i % 3 != 0;
        let (a, b) = if a_wins { (&good, &bad) } else { (&bad, &good) };
        let row = json!({"conversation": [{"role": "user", "content": format!("sun {}", w(0))}],
                         "response_a": a, "response_b": b,
                         "p_a": if a_wins { 0.8 } else { 0.2 }});
        text.push_str(&format!("{row}\n"));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn rm_held_out_split_names_its_sources_and_warm_up_and_eval_lines_are_said() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_model(&d.join("tiny"));
    write_pairs(&d.join("human.jsonl"), 24, 0);
    write_ai_labels(&d.join("labels.jsonl"), 24);
    // No --eval: whole conversations are held out at random (seed 0), and the rm defaults'
    // 10 warm-up steps are longer than the 2 steps run.
    let out = cai(d)
        .args([
            "train",
            "rm",
            "--model",
            "tiny",
            "--data",
            "human.jsonl",
            "--data",
            "labels.jsonl",
            "--out",
            "rm",
            "--max-steps",
            "2",
            "--eval-every",
            "1",
            "--eval-split",
            "0.3",
            "--quiet",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("rm/metrics.json")).unwrap()).unwrap();
    let held = &m["held_out"];
    let (ai, human) = (
        held["sources"]["ai"].as_u64().unwrap(),
        held["sources"]["human"].as_u64().unwrap(),
    );
    assert_eq!(ai + human, m["eval_pairs"].as_u64().unwrap());
    assert_eq!(held["file"], Value::Null);
    assert!(
        stderr.contains(&format!("held out {} pairs at random", ai + human)),
        "{stderr}"
    );
    // The warm-up is said once, as a warning; held-out losses are progress, not warnings.
    assert!(
        stderr.contains("cai: warning: train rm: the warm-up (10 steps) is longer than the run (2 steps): the learning rate rises to 2e-6"),
        "{stderr}"
    );
    assert!(
        stderr.contains("cai: train rm: step 1: held-out pair loss"),
        "{stderr}"
    );
    assert!(!stderr.contains("warning: step"), "{stderr}");
}
