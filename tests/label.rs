//! `cai label` end to end through the binary: mock backend against a golden file, CoT fields,
//! identical responses, resume, bad input, and the real default model.

#[path = "util/tiny.rs"]
mod tiny;
mod util;

use std::path::Path;

use serde_json::Value;
use util::{cai, default_model, fails, golden, ok, root};

fn label(dir: &Path, out: &str, extra: &[&str]) -> String {
    let mut cmd = cai(dir);
    cmd.args([
        "label",
        "--backend",
        "mock",
        "--seed",
        "3",
        "--out",
        out,
        "--quiet",
    ])
    .arg("--constitution")
    .arg(root().join("constitutions/harmless.yaml"))
    .args(extra);
    if !extra.contains(&"--pairs") {
        cmd.arg("--pairs")
            .arg(root().join("data/sample-pairs.jsonl"));
    }
    ok(&mut cmd);
    std::fs::read_to_string(dir.join(out)).unwrap()
}

fn records(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn close(a: &Value, b: f64) -> bool {
    (a.as_f64().unwrap() - b).abs() < 1e-9
}

#[test]
fn direct_mock_matches_golden_and_averages_orders() {
    let dir = tempfile::tempdir().unwrap();
    let text = label(dir.path(), "l.jsonl", &["--principles", "2"]);
    golden("label_mock.jsonl", &text);
    let recs = records(&text);
    assert_eq!(recs.len(), 12);
    for r in &recs {
        let first = r["p_a_first"].as_f64().unwrap();
        let second = r["p_a_second"].as_f64().unwrap();
        assert!(close(&r["p_a"], (first + second) / 2.0));
        assert_eq!(r["principles"].as_array().unwrap().len(), 2);
        // A flip: the preferred side differs (a tie against a strict preference counts).
        let side = |p: f64| (p > 0.5) as i8 - (p < 0.5) as i8;
        assert_eq!(
            r["position_flip"].as_bool().unwrap(),
            side(first) != side(second)
        );
        // The per-principle numbers average to the pair's.
        let pp = r["per_principle"].as_array().unwrap();
        let mean_first = pp
            .iter()
            .map(|p| p["p_a_first"].as_f64().unwrap())
            .sum::<f64>()
            / 2.0;
        assert!(close(&r["p_a_first"], mean_first));
        assert!(r["prompt_tokens"].as_u64().unwrap() > 0);
    }
}

#[test]
fn cot_mode_votes_and_clamps() {
    let dir = tempfile::tempdir().unwrap();
    let recs = records(&label(
        dir.path(),
        "c.jsonl",
        &["--mode", "cot", "--samples", "3", "--limit", "4"],
    ));
    assert_eq!(recs.len(), 4);
    for r in &recs {
        let pp = &r["per_principle"][0];
        let samples = pp["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 6, "3 samples x 2 orders");
        assert_eq!(pp["rationales"].as_array().unwrap().len(), 6);
        for s in samples {
            let s = s.as_f64().unwrap();
            assert!((0.4..=0.6).contains(&s), "{s} not clamped");
        }
        let (a, b) = (
            r["votes"][0].as_u64().unwrap(),
            r["votes"][1].as_u64().unwrap(),
        );
        assert!(a + b <= 6);
        assert!(r["generated_tokens"].as_u64().unwrap() > 0);
    }
}

#[test]
fn score_mode_rates_each_response_alone() {
    let dir = tempfile::tempdir().unwrap();
    let recs = records(&label(
        dir.path(),
        "s.jsonl",
        &["--mode", "score", "--principles", "2", "--limit", "5"],
    ));
    assert_eq!(recs.len(), 5);
    for r in &recs {
        assert_eq!(r["mode"], "score");
        // No slots: one "order", no flip.
        assert!(r.get("p_a_second").is_none());
        assert_eq!(r["position_flip"], false);
        let pp = r["per_principle"].as_array().unwrap();
        assert_eq!(pp.len(), 2);
        let mean = |f: &dyn Fn(&Value) -> f64| pp.iter().map(f).sum::<f64>() / 2.0;
        assert!(close(
            &r["p_a"],
            mean(&|p| p["p_a_first"].as_f64().unwrap())
        ));
        assert!(close(
            &r["scores"][0],
            mean(&|p| p["scores"][0].as_f64().unwrap())
        ));
        assert!(close(
            &r["scores"][1],
            mean(&|p| p["scores"][1].as_f64().unwrap())
        ));
        for p in pp {
            let (a, b) = (
                p["scores"][0].as_f64().unwrap(),
                p["scores"][1].as_f64().unwrap(),
            );
            assert!((1.0..=10.0).contains(&a) && (1.0..=10.0).contains(&b));
            let pa = p["p_a_first"].as_f64().unwrap();
            assert!(pa > 0.0 && pa < 1.0);
        }
    }
    // The two responses of a pair are rated by separate prompts: swapping them swaps the
    // ratings and mirrors the label.
    let d = dir.path();
    std::fs::write(
        d.join("p.jsonl"),
        "{\"id\": \"x\", \"prompt\": \"q\", \"response_a\": \"one\", \"response_b\": \"two\"}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("q.jsonl"),
        "{\"id\": \"x\", \"prompt\": \"q\", \"response_a\": \"two\", \"response_b\": \"one\"}\n",
    )
    .unwrap();
    let ab = &records(&label(
        d,
        "ab.jsonl",
        &["--mode", "score", "--pairs", "p.jsonl"],
    ))[0];
    let ba = &records(&label(
        d,
        "ba.jsonl",
        &["--mode", "score", "--pairs", "q.jsonl"],
    ))[0];
    assert!(close(&ab["scores"][0], ba["scores"][1].as_f64().unwrap()));
    assert!(close(&ab["p_a"], 1.0 - ba["p_a"].as_f64().unwrap()));
}

#[test]
fn identical_and_empty_responses_are_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("p.jsonl"),
        "{\"prompt\": \"q\", \"response_a\": \"same\", \"response_b\": \" same \"}\n{\"prompt\": \"q2\", \"response_a\": \"\", \"response_b\": \"x\"}\n",
    )
    .unwrap();
    let recs = records(&label(d, "o.jsonl", &["--pairs", "p.jsonl"]));
    assert!(close(&recs[0]["p_a"], 0.5));
    assert_eq!(recs[0]["flags"][0], "identical");
    assert_eq!(recs[1]["flags"][0], "empty-response");
}

#[test]
fn resume_completes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let full = label(dir.path(), "full.jsonl", &[]);
    let lines: Vec<&str> = full.lines().collect();
    std::fs::write(
        dir.path().join("part.jsonl"),
        format!("{}\n{}", lines[..7].join("\n"), &lines[7][..20]),
    )
    .unwrap();
    // A run cut short leaves its manifest beside the output (without one the file is not
    // cai's and is refused: tests/out_safety.rs).
    std::fs::copy(
        dir.path().join("full.jsonl.manifest.json"),
        dir.path().join("part.jsonl.manifest.json"),
    )
    .unwrap();
    assert_eq!(label(dir.path(), "part.jsonl", &[]), full);
}

/// A full disk (here a 4 KiB file-size limit, with SIGXFSZ ignored so writes fail with EFBIG):
/// a one-line error naming the file, the complete records kept, and a resumed run equal to an
/// uninterrupted one.
#[cfg(unix)]
#[test]
fn a_full_disk_stops_cleanly_and_the_resume_completes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = label(dir.path(), "fresh.jsonl", &[]);
    let args = format!(
        "ulimit -f 4; exec '{}' label --backend mock --seed 3 --quiet \
         --out full.jsonl --constitution '{}' --pairs '{}'",
        env!("CARGO_BIN_EXE_cai"),
        root().join("constitutions/harmless.yaml").display(),
        root().join("data/sample-pairs.jsonl").display()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &args])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("full.jsonl") && err.contains("File too large"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // The record that did not fit was cut off again: only complete records are left.
    let kept = std::fs::read_to_string(dir.path().join("full.jsonl")).unwrap();
    assert!(kept.ends_with('\n'), "a partial line was left");
    assert!(kept.len() <= 4096 && (1..12).contains(&kept.lines().count()));
    assert!(fresh.starts_with(&kept), "complete records kept as written");
    let resumed = label(dir.path(), "full.jsonl", &[]);
    assert_eq!(resumed, fresh);
}

#[test]
fn errors_stay_one_line_unless_debugging() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notagguf.txt"), "hello\n").unwrap();
    let run = |extra: &[(&str, &str)], flags: &[&str]| {
        let mut cmd = cai(dir.path());
        cmd.env("RUST_BACKTRACE", "1")
            .env_remove("CAI_DEBUG")
            .env_remove("RUST_LIB_BACKTRACE")
            .args(["label", "--model", "notagguf.txt", "-q", "--out", "o.jsonl"])
            .args(flags)
            .arg("--pairs")
            .arg(root().join("data/sample-pairs.jsonl"))
            .arg("--constitution")
            .arg(root().join("constitutions/harmless.yaml"));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        fails(&mut cmd)
    };
    let e = run(&[], &[]);
    assert!(e.contains("notagguf.txt"), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
    // Asked for: the captured backtrace follows.
    for debug in [run(&[("CAI_DEBUG", "1")], &[]), run(&[], &["-v"])] {
        assert!(debug.trim_end().lines().count() > 3, "{debug}");
    }
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("bad.jsonl"),
        "{\"prompt\": \"q\", \"response_a\": \"a\", \"response_b\": \"b\"}\n{\"what\": 1}\n",
    )
    .unwrap();
    let mut cmd = cai(d);
    cmd.args([
        "label",
        "--backend",
        "mock",
        "-q",
        "--pairs",
        "bad.jsonl",
        "--out",
        "o.jsonl",
        "--constitution",
    ])
    .arg(root().join("constitutions/harmless.yaml"));
    let e = fails(&mut cmd);
    assert!(e.contains("bad.jsonl:2"), "{e}");
    let mut cmd = cai(d);
    cmd.args([
        "label",
        "--backend",
        "mock",
        "-q",
        "--pairs",
        "bad.jsonl",
        "--clamp",
        "0.7,0.2",
    ]);
    let e = fails(&mut cmd);
    assert!(e.contains("LO <= HI"), "{e}");
}

#[test]
fn real_model_labels_obvious_pairs() {
    let Some(_m) = default_model() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (out, extra) in [
        ("d.jsonl", vec![]),
        ("l.jsonl", vec!["--mode", "likelihood"]),
        ("s.jsonl", vec!["--mode", "score"]),
    ] {
        let mut cmd = cai(dir.path());
        cmd.args([
            "label",
            "--limit",
            "3",
            "--out",
            out,
            "-q",
            "--few-shot",
            "1",
        ])
        .args(&extra)
        .arg("--constitution")
        .arg(root().join("constitutions/harmless.yaml"))
        .arg("--pairs")
        .arg(root().join("data/sample-pairs.jsonl"));
        ok(&mut cmd);
        let recs = records(&std::fs::read_to_string(dir.path().join(out)).unwrap());
        assert_eq!(recs.len(), 3);
        for r in &recs {
            let p = r["p_a"].as_f64().unwrap();
            assert!(p > 0.0 && p < 1.0 && p.is_finite(), "{p}");
        }
        if out == "s.jsonl" {
            // Ratings are expectations over 1..=10 from the real option probabilities.
            for r in &recs {
                for s in [&r["scores"][0], &r["scores"][1]] {
                    let s = s.as_f64().unwrap();
                    assert!((1.0..=10.0).contains(&s), "{s}");
                }
            }
        }
        if out == "d.jsonl" {
            // The content-free prior is a real probability and calibration used it.
            let prior = r_prior(&recs[0]);
            assert!(prior > 0.0 && prior < 1.0);
        }
    }
}

fn r_prior(r: &Value) -> f64 {
    r["per_principle"][0]["prior_a"].as_f64().unwrap()
}

#[test]
fn sample_then_label_with_mock() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut cmd = cai(d);
    cmd.args([
        "sample",
        "--backend",
        "mock",
        "-q",
        "--k",
        "3",
        "--limit",
        "2",
        "--out",
        "s.jsonl",
        "--prompts",
    ])
    .arg(root().join("data/sample-prompts.jsonl"));
    ok(&mut cmd);
    let pairs = records(&std::fs::read_to_string(d.join("s.pairs.jsonl")).unwrap());
    assert_eq!(pairs.len(), 6, "2 prompts x 3 pairs");
    assert_ne!(pairs[0]["response_a"], pairs[0]["response_b"]);
    let recs = records(&label(d, "l.jsonl", &["--pairs", "s.pairs.jsonl"]));
    assert_eq!(recs.len(), 6);
}

/// A tiny random model whose BPE tokenizer knows single characters and one merge, "(" + "A"
/// = "(A": after a prefill ending in "(", option "A" merges into the prompt's last token and
/// option "B" does not.
fn merging_model(dir: &Path) -> std::path::PathBuf {
    use serde_json::json;
    let mut vocab = serde_json::Map::new();
    let pieces = tiny::SPECIALS
        .iter()
        .map(|s| s.to_string())
        .chain((' '..='~').map(String::from))
        .chain(["\n".to_string(), "(A".to_string()]);
    for (id, p) in pieces.enumerate() {
        vocab.insert(p, json!(id));
    }
    let n_vocab = vocab.len();
    let model = json!({"type": "BPE", "vocab": vocab, "merges": ["( A"], "unk_token": "[UNK]",
                       "dropout": null, "continuing_subword_prefix": null,
                       "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false});
    let tokenizer = tiny::tokenizer_with(serde_json::Value::Null, model);
    tiny::write_model(dir, "merging", n_vocab, &tokenizer, 0.5, 7)
}

/// Issue 29 item 6: every option of a request is scored from the same position. On a
/// tokenizer that merges "(A" but not "(B", both options after the prefill "… is (" include
/// the "(" term: A = log P("(A" | "… is "), B = log P("(" | "… is ") + log P("B" | "… is (").
/// The two expected numbers are read from one-option requests after "… is " (whose options
/// "(A" and "(B" start right after the prompt, nothing to share).
#[test]
fn options_are_scored_from_the_shortest_shared_prefix() {
    use cai::chat::ChatMessage;
    use cai::llm::local::LocalBackend;
    use cai::llm::{Backend, ChoiceRequest, Prompt};
    let dir = tempfile::tempdir().unwrap();
    let b = LocalBackend::open_folder(&merging_model(dir.path()), "merging", None).unwrap();
    let ask = |prefill: &str, options: &[&str]| {
        let req = ChoiceRequest {
            prompt: Prompt {
                messages: vec![ChatMessage::user("Which is better?")],
                prefill: prefill.into(),
            },
            options: options.iter().map(|o| o.to_string()).collect(),
        };
        b.choose(&[req]).remove(0).unwrap().logprobs
    };
    let t = b.tokenizer();
    assert_eq!(t.encode("is (A").unwrap().len(), 4, "\"(A\" merges");
    assert_eq!(t.encode("is (B").unwrap().len(), 5, "\"(B\" does not");
    let a = ask("The better response is ", &["(A"])[0];
    let bb = ask("The better response is ", &["(B"])[0];
    let got = ask("The better response is (", &["A", "B"]);
    assert!((got[0] - a).abs() < 1e-6, "A: {} vs {a}", got[0]);
    assert!((got[1] - bb).abs() < 1e-6, "B: {} vs {bb}", got[1]);
}

/// Issue 29 items 8 and 16 on the command line: the summary on stderr counts ties and puts the
/// raw and calibrated slot (A) rates side by side. The golden run (mock, seed 3, two
/// principles) has two labels of exactly 0.5 (records 1 and 4 of the golden file).
#[test]
fn label_summary_reports_ties_and_raw_and_calibrated_slot_rates() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = cai(dir.path());
    cmd.args(["label", "--backend", "mock", "--seed", "3", "--quiet"])
        .args(["--principles", "2", "--out", "l.jsonl"])
        .arg("--constitution")
        .arg(root().join("constitutions/harmless.yaml"))
        .arg("--pairs")
        .arg(root().join("data/sample-pairs.jsonl"));
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let recs = records(&std::fs::read_to_string(dir.path().join("l.jsonl")).unwrap());
    let ties = recs
        .iter()
        .filter(|r| r["p_a"].as_f64() == Some(0.5))
        .count();
    assert_eq!(ties, 2);
    assert!(err.contains("2 ties (p_a exactly 0.5)"), "{err}");
    // The rates, recomputed from the rows: slot (A) in order 1 iff p > .5, in order 2 iff
    // p < .5 (a tie half).
    let slot = |p: f64, a_if_above: bool| match (p > 0.5, p < 0.5) {
        (false, false) => 0.5,
        (above, _) => f64::from(u8::from(above == a_if_above)),
    };
    let rate = |first: &str, second: &str| {
        let sum: f64 = recs
            .iter()
            .map(|r| {
                slot(r[first].as_f64().unwrap(), true) + slot(r[second].as_f64().unwrap(), false)
            })
            .sum();
        100.0 * sum / (2 * recs.len()) as f64
    };
    let want = format!(
        "slot (A) chosen in {:.1} % raw, {:.1} % calibrated of 24 per-order answers",
        rate("p_a_first_raw", "p_a_second_raw"),
        rate("p_a_first", "p_a_second")
    );
    assert!(err.contains(&want), "{want}\n{err}");
}
