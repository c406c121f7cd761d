//! `cai pipeline` end to end through the binary: the mock backend answers revise and label, a
//! tiny random model is fine-tuned (SFT), sampled from and trained as the reward model. A
//! re-run skips every stage; a changed label setting reruns label and what follows; a run
//! interrupted inside the label stage resumes to the same final outputs as an uninterrupted
//! one; bad configs and missing inputs are refused clearly.

#[path = "util/tiny.rs"]
mod tiny;
mod util;

use std::path::{Path, PathBuf};

use serde_json::Value;
use util::{cai, fails, root};

/// The repository's constitution, sample prompts and sample pairs.
fn sample_files() -> (PathBuf, PathBuf, PathBuf) {
    let r = root();
    (
        r.join("constitutions/harmless.yaml"),
        r.join("data/sample-prompts.jsonl"),
        r.join("data/sample-pairs.jsonl"),
    )
}

/// The pipeline config of these tests; `label_extra` is added to the label section.
fn config(base: &Path, label_extra: &str) -> String {
    let (constitution, prompts, pairs) = sample_files();
    format!(
        "run_dir: run\nseed: 7\nconstitution: {c}\nbackend: mock\nmodel: {m}\n\
         human_pairs: {{path: {p}, limit: 6, bootstrap: 100}}\n\
         mix:\n  ai_labels: 1.0\n  human: [{{path: {p}, weight: 0.5}}]\n\
         revise: {{prompts: {q}, limit: 6, rounds: 2, few_shot: 0}}\n\
         sft:\n  eval_split: 0.25\n  train: {{max_steps: 4, lr: 0.01, warmup_steps: 0, \
         batch_size: 2, grad_accum: 1, eval_every: 2, save_every: 2, max_len: 128}}\n\
         sample:\n  backend: local\n  prompts: {q}\n  limit: 4\n  k: 3\n  \
         sampling: {{temperature: 1.0, top_p: 0.95, max_tokens: 6}}\n\
         label:\n  few_shot: 0\n{label_extra}\
         rm:\n  eval: {p}\n  train: {{max_steps: 4, lr: 0.003, warmup_steps: 0, batch_size: 4, \
         grad_accum: 1, eval_every: 2, save_every: 2, max_len: 128}}\n\
         ppo:\n  prompts: {q}\n  sample_every: 1\n  save_every: 1\n  \
         ppo: {{steps: 2, rollouts: 2, minibatch: 2, max_new_tokens: 4, lr: 0.001}}\n\
         eval:\n  prompts: {q}\n  limit: 3\n  \
         sampling: {{temperature: 0.7, top_p: 0.95, max_tokens: 4}}\n  \
         labeler: {{backend: local, few_shot: 0}}\n",
        c = constitution.display(),
        m = base.display(),
        p = pairs.display(),
        q = prompts.display(),
    )
}

/// Runs `cai pipeline` in `dir` with extra flags; returns stderr.
fn pipeline(dir: &Path, args: &[&str]) -> String {
    let out = cai(dir)
        .args(["pipeline", "--config", "pipeline.yaml", "--quiet"])
        .args(args)
        .output()
        .expect("cai runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "cai pipeline failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("report: "), "{stdout}");
    stderr
}

/// The status word printed for `stage` ("up to date", "running", "resuming", "starting over").
fn status<'a>(stderr: &'a str, stage: &str) -> &'a str {
    let tag = format!("] {stage}: ");
    let line = stderr
        .lines()
        .find(|l| l.contains(&tag))
        .unwrap_or_else(|| panic!("no line for {stage} in:\n{stderr}"));
    let rest = &line[line.find(&tag).unwrap() + tag.len()..];
    [
        "up to date",
        "running",
        "resuming",
        "config or inputs changed",
    ]
    .into_iter()
    .find(|w| rest.starts_with(w))
    .unwrap_or_else(|| panic!("unexpected status line {line}"))
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn done(run: &Path, stage: &str) -> Value {
    serde_json::from_slice(&read(&run.join(format!("stages/{stage}.done.json")))).unwrap()
}

const STAGES: [&str; 7] = ["revise", "sft", "sample", "label", "rm", "ppo", "eval"];

/// Files whose bytes must not depend on how the run went (no timings or paths inside).
const FINAL_OUTPUTS: [&str; 7] = [
    "revise/revisions.jsonl",
    "sft/final/model.safetensors",
    "sample/samples.jsonl",
    "sample/samples.pairs.jsonl",
    "label/labels.jsonl",
    "label/human-check.jsonl",
    "rm/final/model.safetensors",
];

#[test]
fn runs_skips_reruns_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let base = tiny::tiny_model(dir);
    std::fs::write(dir.join("pipeline.yaml"), config(&base, "")).unwrap();
    let run = dir.join("run");

    let first = pipeline(dir, &[]);
    for stage in STAGES {
        assert_eq!(status(&first, stage), "running", "{first}");
        assert!(run.join(format!("stages/{stage}.done.json")).is_file());
    }
    for f in FINAL_OUTPUTS {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    // Sample ran the SFT model; the reward model mixed AI labels and human pairs.
    let sample_manifest: Value =
        serde_json::from_slice(&read(&run.join("sample/samples.jsonl.manifest.json"))).unwrap();
    let model = sample_manifest["model"]["name"].as_str().unwrap();
    assert!(model.ends_with("sft/final"), "{model}");
    let rm_cfg = String::from_utf8(read(&run.join("rm/rm_config.yaml"))).unwrap();
    assert!(
        rm_cfg.contains("labels.jsonl") && rm_cfg.contains("weight: 0.5"),
        "{rm_cfg}"
    );
    check_report(&run);

    // Nothing changed: every stage is skipped and its done file is left alone.
    let before: Vec<Value> = STAGES.iter().map(|s| done(&run, s)).collect();
    let second = pipeline(dir, &[]);
    for stage in STAGES {
        assert_eq!(status(&second, stage), "up to date", "{second}");
    }
    let after: Vec<Value> = STAGES.iter().map(|s| done(&run, s)).collect();
    assert_eq!(before, after);

    // A label setting changed: label starts over, the reward model follows, the rest stays.
    std::fs::write(
        dir.join("pipeline.yaml"),
        config(&base, "  principles: 2\n"),
    )
    .unwrap();
    let third = pipeline(dir, &[]);
    for stage in ["revise", "sft", "sample"] {
        assert_eq!(status(&third, stage), "up to date", "{third}");
    }
    assert_eq!(
        status(&third, "label"),
        "config or inputs changed",
        "{third}"
    );
    assert_eq!(status(&third, "rm"), "config or inputs changed", "{third}");
    let labels = String::from_utf8(read(&run.join("label/labels.jsonl"))).unwrap();
    let first_label: Value = serde_json::from_str(labels.lines().next().unwrap()).unwrap();
    assert_eq!(first_label["principles"].as_array().unwrap().len(), 2);

    // --from/--until select stages; --force reruns a done one.
    let only = pipeline(dir, &["--from", "sample", "--until", "sample", "--force"]);
    assert_eq!(
        status(&only, "sample"),
        "config or inputs changed",
        "{only}"
    );
    assert!(!only.contains("] label: "), "{only}");
}

/// Every plot the report links exists, numbers cite their files, the constitution's hash is
/// there.
fn check_report(run: &Path) {
    let report = String::from_utf8(read(&run.join("report.md"))).unwrap();
    let constitution = read(&root().join("constitutions/harmless.yaml"));
    let sha = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(&constitution))
    };
    assert!(
        report.contains(&sha),
        "constitution hash missing:\n{report}"
    );
    for needle in [
        "![SFT loss](sft/loss.svg)",
        "![Reward-model loss](rm/loss.svg)",
        "![Reliability diagram](label/compare/reliability.svg)",
        "Round 2 — principle `",
        "[stages/label.done.json](stages/label.done.json)",
        "label/compare/metrics.json",
        "rm/metrics.json",
        "sft/manifest.json",
        "| `label/labels.jsonl` | 1 |",
        "![PPO reward](ppo/rewards.svg)",
        "[ppo/train_log.csv](ppo/train_log.csv)",
        "2 steps on ",
        "| A wins, AI labeler, both orders (95 % interval; ties ½) | ",
        "| ties, AI labeler (\\|P(A) − 0.5\\| ≤ 0.05) | ",
        "[eval/report.md](eval/report.md)",
        "on 3 held-out prompts",
    ] {
        assert!(report.contains(needle), "`{needle}` missing:\n{report}");
    }
    for link in report.split("](").skip(1) {
        let target = &link[..link.find(')').unwrap()];
        assert!(run.join(target).exists(), "broken link {target}");
    }
}

/// Copies the first `n` lines of `path` and half of the next, as a kill -9 would leave them.
fn cut(path: &Path, n: usize) {
    let text = String::from_utf8(read(path)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() > n + 1,
        "{} has {} lines",
        path.display(),
        lines.len()
    );
    let mut kept: String = lines[..n].iter().map(|l| format!("{l}\n")).collect();
    kept.push_str(&lines[n][..lines[n].len() / 2]);
    std::fs::write(path, kept).unwrap();
}

#[test]
fn a_run_interrupted_in_label_resumes_to_the_same_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let base = tiny::tiny_model(dir);
    std::fs::write(dir.join("pipeline.yaml"), config(&base, "")).unwrap();
    pipeline(dir, &["--out", "reference"]);

    // The label stage "crashed" after three pairs: its done file was never written, later
    // stages never ran, the output ends in a cut line.
    pipeline(dir, &["--out", "crashed", "--until", "label"]);
    let crashed = dir.join("crashed");
    std::fs::remove_file(crashed.join("stages/label.done.json")).unwrap();
    cut(&crashed.join("label/labels.jsonl"), 3);
    std::fs::remove_file(crashed.join("label/human-check.jsonl")).unwrap();
    std::fs::remove_dir_all(crashed.join("label/compare")).unwrap();
    let err = fails(
        cai(dir)
            .args(["pipeline", "--config", "pipeline.yaml", "--quiet"])
            .args(["--out", "crashed", "--from", "rm"]),
    );
    assert!(err.contains("needs stage `label` first"), "{err}");

    let resumed = pipeline(dir, &["--out", "crashed"]);
    for stage in ["revise", "sft", "sample"] {
        assert_eq!(status(&resumed, stage), "up to date", "{resumed}");
    }
    assert_eq!(status(&resumed, "label"), "resuming", "{resumed}");
    assert_eq!(status(&resumed, "rm"), "running", "{resumed}");
    let label = done(&crashed, "label");
    assert_eq!(label["resumed"], true);
    assert_eq!(label["summary"]["labels"]["resumed"], 3);
    for f in FINAL_OUTPUTS {
        assert!(
            read(&crashed.join(f)) == read(&dir.join("reference").join(f)),
            "{f} differs from the uninterrupted run"
        );
    }
}

#[test]
fn bad_configs_and_missing_inputs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let base = tiny::tiny_model(dir);
    let good = config(&base, "");
    let write = |text: &str| std::fs::write(dir.join("pipeline.yaml"), text).unwrap();
    let run = |extra: &[&str]| {
        fails(
            cai(dir)
                .args(["pipeline", "--config", "pipeline.yaml", "--quiet"])
                .args(extra),
        )
    };

    write(&good.replace("  few_shot: 0\n", "  few_shots: 0\n"));
    let err = run(&[]);
    assert!(
        err.contains("pipeline.yaml:") && err.contains("unknown field `few_shots`"),
        "{err}"
    );
    assert!(
        err.contains("expected one of") && err.contains("`few_shot`"),
        "{err}"
    );

    write(&good.replace("run_dir: run", "rundir: run"));
    let err = run(&[]);
    assert!(
        err.contains("`rundir`") && err.contains("`run_dir`"),
        "{err}"
    );

    write(&good.replace("label:\n", "label:\n  out: mine.jsonl\n"));
    let err = run(&[]);
    assert!(err.contains("`label.out` is set by the pipeline"), "{err}");

    write(&good.replace("ppo:\n", "ppo:\n  out: mine\n"));
    let err = run(&[]);
    assert!(err.contains("`ppo.out` is set by the pipeline"), "{err}");

    // A stage whose input is missing: the pairs to label are not there.
    write(&format!(
        "run_dir: alone\nbackend: mock\nconstitution: {}\nlabel: {{pairs: nowhere.jsonl}}\n",
        root().join("constitutions/harmless.yaml").display()
    ));
    let err = run(&[]);
    assert!(
        err.contains("stage `label`: input nowhere.jsonl is missing"),
        "{err}"
    );

    // One pipeline per run folder: a live lock is respected.
    write(&good);
    let lock = dir.join("run/stages/lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(&lock, std::process::id().to_string()).unwrap();
    let err = run(&[]);
    assert!(err.contains("another cai pipeline"), "{err}");
    std::fs::remove_file(&lock).unwrap();

    // A stage failing half way leaves a consistent run folder that a fixed config resumes.
    let bad_eval = dir.join("bad.jsonl");
    std::fs::write(&bad_eval, "{\"prompt\": \"x\"}\nnot json\n").unwrap();
    let pairs = root().join("data/sample-pairs.jsonl");
    let broken = good.replace(
        &format!("rm:\n  eval: {}", pairs.display()),
        &format!("rm:\n  eval: {}", bad_eval.display()),
    );
    assert_ne!(broken, good);
    write(&broken);
    let err = run(&[]);
    assert!(
        err.contains("stage `rm` failed") && err.contains("resume"),
        "{err}"
    );
    let run_dir: PathBuf = dir.join("run");
    assert!(run_dir.join("stages/label.done.json").is_file());
    assert!(!run_dir.join("stages/rm.done.json").exists());
    let report = String::from_utf8(read(&run_dir.join("report.md"))).unwrap();
    assert!(
        report.contains("| rm | not done | **failed** |"),
        "{report}"
    );
    write(&good);
    // A lock left by a process that is gone is taken over.
    std::fs::write(&lock, "4000000000").unwrap();
    let fixed = pipeline(dir, &[]);
    assert!(!lock.exists());
    assert_eq!(status(&fixed, "label"), "up to date", "{fixed}");
    assert_ne!(status(&fixed, "rm"), "up to date", "{fixed}");
}

/// The RL-free and critic-free alternatives to rm + ppo: DPO on the labels and the SL-CAI
/// pairs, GRPO rewarded by the feedback model (the mock), and eval comparing the two by stage
/// name.
fn dpo_grpo_config(base: &Path) -> String {
    let (constitution, prompts, pairs) = sample_files();
    format!(
        "run_dir: run\nseed: 7\nconstitution: {c}\nbackend: mock\nmodel: {m}\n\
         mix: {{ai_labels: 1.0, revisions: 0.5}}\n\
         revise: {{prompts: {q}, limit: 6, rounds: 1, few_shot: 0}}\n\
         sft:\n  eval_split: 0.25\n  train: {{max_steps: 2, lr: 0.01, warmup_steps: 0, \
         batch_size: 2, grad_accum: 1, eval_every: 2, save_every: 2, max_len: 128}}\n\
         sample:\n  backend: local\n  prompts: {q}\n  limit: 4\n  k: 3\n  \
         sampling: {{temperature: 1.0, top_p: 0.95, max_tokens: 6}}\n\
         label: {{few_shot: 0}}\n\
         dpo:\n  eval: {p}\n  loss: cdpo\n  train: {{max_steps: 3, lr: 0.003, warmup_steps: 0, \
         batch_size: 4, grad_accum: 1, eval_every: 3, save_every: 2, max_len: 128}}\n\
         grpo:\n  prompts: {q}\n  sample_every: 1\n  save_every: 1\n  \
         reward: {{reward_model: 0, labeler: 1}}\n  \
         ppo: {{steps: 2, rollouts: 4, group_size: 2, minibatch: 4, max_new_tokens: 4, \
         lr: 0.001}}\n\
         eval:\n  prompts: {q}\n  limit: 2\n  policy_a: dpo\n  policy_b: grpo\n  \
         sampling: {{temperature: 0.7, top_p: 0.95, max_tokens: 4}}\n  \
         labeler: {{few_shot: 0}}\n",
        c = constitution.display(),
        m = base.display(),
        p = pairs.display(),
        q = prompts.display(),
    )
}

#[test]
fn dpo_and_grpo_stages_run_and_eval_compares_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let base = tiny::tiny_model(dir);
    std::fs::write(dir.join("pipeline.yaml"), dpo_grpo_config(&base)).unwrap();
    let run = dir.join("run");

    let first = pipeline(dir, &[]);
    let stages = ["revise", "sft", "sample", "label", "dpo", "grpo", "eval"];
    for stage in stages {
        assert_eq!(status(&first, stage), "running", "{first}");
    }
    assert!(!run.join("stages/rm.done.json").exists());
    for f in [
        "dpo/final/model.safetensors",
        "grpo/final/model.safetensors",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    // DPO trained on the AI labels and the revise stage's SL-CAI pairs, weighted.
    let dpo: Value = serde_json::from_slice(&read(&run.join("dpo/manifest.json"))).unwrap();
    let data = &dpo["config"]["data"];
    assert_eq!(data[0]["weight"], 1.0, "{dpo}");
    assert!(data[1]["path"]
        .as_str()
        .unwrap()
        .ends_with("revisions.jsonl"));
    assert_eq!(data[1]["weight"], 0.5);
    assert_eq!(done(&run, "dpo")["summary"]["steps"], 3);
    // GRPO: no critic, rewarded by the feedback model alone.
    let grpo: Value = serde_json::from_slice(&read(&run.join("grpo/manifest.json"))).unwrap();
    assert_eq!(grpo["config"]["ppo"]["advantage"], "grpo", "{grpo}");
    assert_eq!(grpo["config"]["reward"]["labeler"], 1.0);
    assert!(grpo["config"]["reward_model"].is_null());
    // Eval compared the two policies named by stage.
    let eval: Value = serde_json::from_slice(&read(&run.join("eval/eval.json"))).unwrap();
    assert!(
        eval["policy_a"].as_str().unwrap().ends_with("dpo/final"),
        "{eval}"
    );
    assert!(
        eval["policy_b"].as_str().unwrap().ends_with("grpo/final"),
        "{eval}"
    );

    let report = String::from_utf8(read(&run.join("report.md"))).unwrap();
    for needle in [
        "## DPO",
        "Loss `cdpo`, β 0.1: 3 steps on ",
        "![DPO loss](dpo/loss.svg)",
        "## GRPO (critic-free)",
        "Advantage `grpo` (group size 2); reward = 0",
        "[grpo/train_log.csv](grpo/train_log.csv)",
        "## Evaluation",
    ] {
        assert!(report.contains(needle), "`{needle}` missing:\n{report}");
    }
    assert!(!report.contains("## PPO") && !report.contains("Reward model\n"));
    for link in report.split("](").skip(1) {
        let target = &link[..link.find(')').unwrap()];
        assert!(run.join(target).exists(), "broken link {target}");
    }

    let again = pipeline(dir, &[]);
    for stage in stages {
        assert_eq!(status(&again, stage), "up to date", "{again}");
    }
}
