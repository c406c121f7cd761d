//! `cai revise` end to end through the binary: mock backend against a golden file, resume,
//! bad input, and the real default model.

mod util;

use std::path::Path;

use serde_json::Value;
use util::{cai, default_model, fails, golden, ok, root};

fn revise_mock(dir: &Path, out: &str, extra: &[&str]) -> String {
    let mut cmd = cai(dir);
    cmd.args([
        "revise",
        "--backend",
        "mock",
        "--rounds",
        "2",
        "--seed",
        "7",
        "--out",
        out,
        "--quiet",
    ])
    .arg("--constitution")
    .arg(root().join("constitutions/harmless.yaml"))
    .arg("--prompts")
    .arg(root().join("data/sample-prompts.jsonl"))
    .args(extra);
    ok(&mut cmd);
    std::fs::read_to_string(dir.join(out)).unwrap()
}

fn records(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn mock_output_matches_golden() {
    let dir = tempfile::tempdir().unwrap();
    let text = revise_mock(dir.path(), "r.jsonl", &["--limit", "3", "--format", "trl"]);
    golden("revise_mock.jsonl", &text);
    let recs = records(&text);
    assert_eq!(recs.len(), 3);
    for r in &recs {
        assert_eq!(r["rounds"].as_array().unwrap().len(), 2);
        assert_eq!(r["final"], r["rounds"][1]["revision"]);
    }
    let trl = std::fs::read_to_string(dir.path().join("r.trl.jsonl")).unwrap();
    let first: Value = serde_json::from_str(trl.lines().next().unwrap()).unwrap();
    assert_eq!(first["messages"][1]["role"], "assistant");
    assert_eq!(first["messages"][1]["content"], recs[0]["final"]);
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("r.jsonl.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["stats"]["written"], 3);
    assert_eq!(manifest["config"]["seed"], 7);
    assert_eq!(
        manifest["constitution"]["sha256"].as_str().unwrap().len(),
        64
    );
}

#[test]
fn resume_after_interruption_completes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let full = revise_mock(dir.path(), "full.jsonl", &[]);
    // An interrupted run: 5 complete records and half of the 6th (as after kill -9).
    let lines: Vec<&str> = full.lines().collect();
    let partial = format!(
        "{}\n{}",
        lines[..5].join("\n"),
        &lines[5][..lines[5].len() / 2]
    );
    std::fs::write(dir.path().join("part.jsonl"), partial).unwrap();
    // The run that was cut short left its manifest (without one the file is not cai's).
    std::fs::copy(
        dir.path().join("full.jsonl.manifest.json"),
        dir.path().join("part.jsonl.manifest.json"),
    )
    .unwrap();
    let resumed = revise_mock(dir.path(), "part.jsonl", &[]);
    assert_eq!(resumed, full);
    // A finished file is left as it is.
    assert_eq!(revise_mock(dir.path(), "part.jsonl", &[]), full);
}

#[test]
fn resume_with_other_settings_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    revise_mock(dir.path(), "r.jsonl", &["--limit", "1"]);
    let mut cmd = cai(dir.path());
    cmd.args([
        "revise",
        "--backend",
        "mock",
        "--rounds",
        "3",
        "--out",
        "r.jsonl",
        "--quiet",
    ])
    .arg("--prompts")
    .arg(root().join("data/sample-prompts.jsonl"))
    .arg("--constitution")
    .arg(root().join("constitutions/harmless.yaml"));
    let err = fails(&mut cmd);
    // The refusal names the setting that differs (the default is 2 rounds).
    assert!(
        err.contains("config field `rounds` differs: 2 → 3"),
        "{err}"
    );
    assert_eq!(
        records(&std::fs::read_to_string(dir.path().join("r.jsonl")).unwrap()).len(),
        1
    );
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("bad.jsonl"), "{\"prompt\": \"ok\"}\n{\"prompt\": \n").unwrap();
    std::fs::write(d.join("empty.jsonl"), "").unwrap();
    std::fs::write(
        d.join("bad.yaml"),
        "name: x\nversion: 1\nprinciples:\n  - id: a\n    critique: c\n",
    )
    .unwrap();
    let cons = root().join("constitutions/harmless.yaml");
    let run = |args: &[&str]| {
        let mut cmd = cai(d);
        cmd.args(["revise", "--backend", "mock", "--quiet"])
            .args(args);
        fails(&mut cmd)
    };
    let c = cons.to_str().unwrap();
    let e = run(&[
        "--constitution",
        c,
        "--prompts",
        "bad.jsonl",
        "--out",
        "o.jsonl",
    ]);
    assert!(e.contains("bad.jsonl:2: malformed JSON"), "{e}");
    let e = run(&[
        "--constitution",
        c,
        "--prompts",
        "empty.jsonl",
        "--out",
        "o.jsonl",
    ]);
    assert!(e.contains("empty.jsonl: no prompts"), "{e}");
    let e = run(&[
        "--constitution",
        c,
        "--prompts",
        "missing.jsonl",
        "--out",
        "o.jsonl",
    ]);
    assert!(e.contains("cannot read prompt file missing.jsonl"), "{e}");
    let e = run(&[
        "--constitution",
        "bad.yaml",
        "--prompts",
        "bad.jsonl",
        "--out",
        "o.jsonl",
    ]);
    assert!(
        e.contains("bad.yaml:4:5") && e.contains("missing field `revision`"),
        "{e}"
    );
    let mut cmd = cai(d);
    cmd.args([
        "revise",
        "--model",
        "nowhere/none.gguf",
        "--quiet",
        "--constitution",
        c,
        "--prompts",
    ])
    .arg(root().join("data/sample-prompts.jsonl"));
    let e = fails(&mut cmd);
    assert!(e.contains("model `nowhere/none.gguf` not found"), "{e}");
    std::fs::write(d.join("junk.gguf"), b"not a gguf at all").unwrap();
    let mut cmd = cai(d);
    cmd.args([
        "revise",
        "--model",
        "junk.gguf",
        "--quiet",
        "--constitution",
        c,
        "--prompts",
    ])
    .arg(root().join("data/sample-prompts.jsonl"));
    let e = fails(&mut cmd);
    assert!(e.contains("junk.gguf: not a readable GGUF file"), "{e}");
}

#[test]
fn long_prompts_are_skipped_or_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let long = "word ".repeat(300);
    std::fs::write(
        d.join("p.jsonl"),
        format!("{{\"prompt\": \"short one\"}}\n{{\"prompt\": \"{long}\"}}\n"),
    )
    .unwrap();
    let base = |out: &str, mode: &str| {
        let mut cmd = cai(d);
        cmd.args([
            "revise",
            "--backend",
            "mock",
            "--quiet",
            "--max-prompt-tokens",
            "100",
            "--prompts",
            "p.jsonl",
        ])
        .args(["--out", out, "--on-long-prompt", mode])
        .arg("--constitution")
        .arg(root().join("constitutions/harmless.yaml"));
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = base("skip.jsonl", "skip");
    assert!(
        err.contains("p.jsonl:2: prompt longer than 100 tokens, skipped")
            || err.contains("1 skipped"),
        "{err}"
    );
    assert_eq!(
        records(&std::fs::read_to_string(d.join("skip.jsonl")).unwrap()).len(),
        1
    );
    base("trunc.jsonl", "truncate");
    let recs = records(&std::fs::read_to_string(d.join("trunc.jsonl")).unwrap());
    assert_eq!(recs.len(), 2);
    let words = recs[1]["prompt"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .count();
    assert!(words <= 100 && words > 50, "{words}");
}

#[test]
fn real_model_revises_two_prompts() {
    let Some(_model) = default_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = cai(dir.path());
    cmd.args([
        "revise",
        "--rounds",
        "1",
        "--limit",
        "2",
        "--seed",
        "1",
        "--out",
        "r.jsonl",
        "--quiet",
        "--max-tokens",
        "48",
    ])
    .arg("--constitution")
    .arg(root().join("constitutions/harmless.yaml"))
    .arg("--prompts")
    .arg(root().join("data/sample-prompts.jsonl"));
    ok(&mut cmd);
    let recs = records(&std::fs::read_to_string(dir.path().join("r.jsonl")).unwrap());
    assert_eq!(recs.len(), 2);
    for r in &recs {
        let prompt = r["prompt"].as_str().unwrap();
        for text in [
            &r["initial"],
            &r["rounds"][0]["critique"],
            &r["rounds"][0]["revision"],
        ] {
            let t = text.as_str().unwrap();
            assert!(t.split_whitespace().count() >= 3, "too short: {t:?}");
            assert_ne!(t.trim(), prompt.trim());
        }
    }
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("r.jsonl.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        m["model"]["sha256"],
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    );
}
