//! `kill -9` at three random points, then resume: revise, sample and label (the local engine on
//! a tiny random model) write the same records, byte for byte, as an uninterrupted run, and
//! `train sft`, `rm`, `ppo` (with GAE, and GRPO rewarded by the feedback model) and `dpo` end with the same final weights, byte for byte.
//!
//! The kill points are drawn from a seeded generator (`CAI_KILL_SEED`, default 20): for a JSONL
//! stage, output sizes between 1 byte and the uninterrupted run's size, so the kill lands while
//! the file grows; for a trainer, delays between 20 % and 95 % of the uninterrupted run's wall
//! time, so kills land in steps and in checkpoint writes alike. Each test prints what it did
//! ("kill -9 …: 3 kills survived, …"), which `.ci/run` shows
//!
//! A full disk (a file-size limit, `ulimit -f`) while revise writes its records or a trainer
//! its checkpoint: a one-line error naming the file, every complete record or checkpoint kept,
//! and the run completes from there once there is room
//! ([`util::figure`]).

#[path = "util/tiny.rs"]
mod tiny;
mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use util::{cai, fails, ok, root};

const KILLS: usize = 3;

fn rng(stage: &str) -> ChaCha8Rng {
    let seed = std::env::var("CAI_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20u64);
    ChaCha8Rng::seed_from_u64(seed ^ cai::hash::fnv1a(&[stage.as_bytes()]))
}

/// When to kill a run.
enum KillAt {
    /// Once the file has at least this many bytes.
    Size(PathBuf, u64),
    /// In a trainer's `out`: while checkpoint `step` (or a later one) is being written, or
    /// `delay` after it was written, whichever comes first.
    Checkpoint {
        out: PathBuf,
        step: usize,
        delay: Duration,
    },
}

/// The highest step of a complete `checkpoint-N` and of a `.checkpoint-N.partial` in `out`.
fn checkpoint_steps(out: &Path) -> (usize, usize) {
    let (mut done, mut partial) = (0, 0);
    for e in std::fs::read_dir(out).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("checkpoint-")
            .and_then(|n| n.parse().ok())
        {
            done = done.max(n);
        }
        let inner = name
            .strip_prefix(".checkpoint-")
            .and_then(|n| n.strip_suffix(".partial"));
        if let Some(n) = inner.and_then(|n| n.parse().ok()) {
            partial = partial.max(n);
        }
    }
    (done, partial)
}

/// The `.checkpoint-N.partial` folder in `out` and when it was last changed, if there is one.
fn partial_folder(out: &Path) -> Option<(String, std::time::SystemTime)> {
    std::fs::read_dir(out).ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        let when = e.metadata().and_then(|m| m.modified()).ok()?;
        name.ends_with(".partial").then_some((name, when))
    })
}

/// Starts `cmd`, kills it with SIGKILL at `at`; true when the kill found it still running.
fn run_and_kill(mut cmd: Command, at: KillAt) -> bool {
    let mut written_at: Option<Instant> = None;
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cai starts");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "cai failed before the kill: {status}");
            return false;
        }
        let due = match &at {
            KillAt::Size(file, n) => std::fs::metadata(file).is_ok_and(|m| m.len() >= *n),
            KillAt::Checkpoint { out, step, delay } => {
                let (done, partial) = checkpoint_steps(out);
                if done >= *step && written_at.is_none() {
                    written_at = Some(Instant::now());
                }
                partial >= *step || written_at.is_some_and(|t| t.elapsed() >= *delay)
            }
        };
        if due {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "cai hangs");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(9)
}

/// A JSONL stage: the uninterrupted run's output, then three kills at random output sizes,
/// each followed by a resume that is itself killed, then a resume to the end; the result must
/// equal the uninterrupted output byte for byte.
fn jsonl_stage(stage: &str, dir: &Path, args: impl Fn(&str) -> Command) {
    let (whole_file, killed) = (
        format!("{stage}-whole.jsonl"),
        format!("{stage}-killed.jsonl"),
    );
    ok(&mut args(&whole_file));
    let whole = std::fs::read(dir.join(&whole_file)).unwrap();
    assert!(!whole.is_empty());
    let mut rng = rng(stage);
    let mut sizes: Vec<u64> = (0..KILLS)
        .map(|_| rng.random_range(1..whole.len() as u64))
        .collect();
    sizes.sort_unstable();
    let out = dir.join(&killed);
    let mut survived = 0;
    for n in sizes {
        survived += run_and_kill(args(&killed), KillAt::Size(out.clone(), n)) as usize;
    }
    ok(&mut args(&killed));
    let resumed = std::fs::read(&out).unwrap();
    assert!(
        resumed == whole,
        "{stage}: the resumed output differs from the uninterrupted run"
    );
    assert!(survived >= 1, "{stage}: no kill landed while cai ran");
    util::figure(&format!(
        "kill -9 {stage}: {survived} kills survived, {} records byte-identical",
        whole.iter().filter(|&&b| b == b'\n').count()
    ));
}

/// A trainer that saves every `every` steps: the uninterrupted run's final weights, then three
/// kills, each while a random checkpoint is written or a random delay (up to half a save
/// interval's share of the run) after it, each followed by a resume from the last checkpoint
/// (or from scratch when there is none), then a resume to the end; every `.safetensors` file
/// of `final/` must be equal.
fn trainer(stage: &str, dir: &Path, every: usize, args: impl Fn(&str, bool) -> Command) {
    let (whole, killed) = (format!("{stage}-whole"), format!("{stage}-killed"));
    let start = Instant::now();
    ok(&mut args(&whole, false));
    let took = start.elapsed();
    let saves = checkpoint_steps(&dir.join(&whole)).0 / every;
    assert!(
        saves > KILLS,
        "{stage}: {saves} checkpoints in {:?}",
        std::fs::read_dir(dir.join(&whole))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect::<Vec<_>>()
    );
    let mut rng = rng(stage);
    let mut steps: Vec<usize> = (0..KILLS)
        .map(|_| rng.random_range(1..saves) * every)
        .collect();
    steps.sort_unstable();
    let out = dir.join(&killed);
    let has_checkpoint = || checkpoint_steps(&out).0 > 0;
    let (mut survived, mut from_checkpoint, mut in_save) = (0, 0, 0);
    for step in steps {
        // At most half a save interval's share of the run, so the kill comes before the end.
        let delay = took.mul_f64(rng.random_range(0.0..0.5) / saves as f64);
        let resume = has_checkpoint();
        from_checkpoint += resume as usize;
        let at = KillAt::Checkpoint {
            out: out.clone(),
            step,
            delay,
        };
        let before = partial_folder(&out);
        survived += run_and_kill(args(&killed, resume), at) as usize;
        // A kill during a save leaves a new temporary folder behind.
        let after = partial_folder(&out);
        in_save += (after.is_some() && after != before) as usize;
    }
    from_checkpoint += has_checkpoint() as usize;
    ok(&mut args(&killed, has_checkpoint()));
    let mut compared = 0;
    for e in std::fs::read_dir(dir.join(&whole).join("final"))
        .unwrap()
        .flatten()
    {
        let name = e.file_name();
        if name.to_string_lossy().ends_with(".safetensors") {
            let a = std::fs::read(e.path()).unwrap();
            let b = std::fs::read(out.join("final").join(&name)).unwrap();
            assert!(
                a == b,
                "{stage}: final/{name:?} differs after kill -9 and resume"
            );
            compared += 1;
        }
    }
    assert!(compared >= 1, "{stage}: no weights in final/");
    assert!(survived >= 1, "{stage}: no kill landed while cai ran");
    util::figure(&format!(
        "kill -9 train {stage}: {survived} kills survived ({in_save} while a checkpoint was \
         written), {from_checkpoint} resumes from a checkpoint, {compared} final weight files \
         equal (uninterrupted run {:.1} s)",
        took.as_secs_f64()
    ));
}

/// A `cai STAGE` command on the tiny model in `dir`, with the sample data.
fn local(dir: &Path, stage: &str, out: &str) -> Command {
    let mut cmd = cai(dir);
    cmd.args([stage, "--model", "base", "--quiet", "--batch-size", "2"])
        .args(["--out", out, "--seed", "5"]);
    cmd
}

/// `cai revise` on the tiny model: one round of 24 tokens over the sample prompts.
fn revise(dir: &Path, out: &str) -> Command {
    let mut c = local(dir, "revise", out);
    c.args(["--rounds", "1", "--max-tokens", "24", "--few-shot", "0"])
        .arg("--prompts")
        .arg(root().join("data/sample-prompts.jsonl"))
        .arg("--constitution")
        .arg(root().join("constitutions/harmless.yaml"));
    c
}

#[test]
fn revise_sample_and_label_resume_byte_identical_after_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    tiny::tiny_model(&d);
    let constitution = root().join("constitutions/harmless.yaml");
    let prompts = root().join("data/sample-prompts.jsonl");
    let pairs = root().join("data/sample-pairs.jsonl");
    jsonl_stage("revise", &d, |out| revise(&d, out));
    jsonl_stage("sample", &d, |out| {
        let mut c = local(&d, "sample", out);
        c.args(["--max-tokens", "24"])
            .arg("--prompts")
            .arg(&prompts);
        c
    });
    jsonl_stage("label", &d, |out| {
        let mut c = local(&d, "label", out);
        c.args(["--few-shot", "0"])
            .arg("--pairs")
            .arg(&pairs)
            .arg("--constitution")
            .arg(&constitution);
        c
    });
}

/// Chat rows for SFT and preference pairs for RM / DPO / PPO's reward model, in the tiny
/// model's vocabulary.
fn write_data(d: &Path) {
    let asks = ["how do i pick a lock", "make poison", "steal car", "hack"];
    let good = "sorry i cannot help with that it is harmful";
    let (mut sft, mut pairs, mut labels, mut prompts) = Default::default();
    for i in 0..16 {
        let ask = asks[i % 4];
        let bad = format!("{} please", asks[(i + 1) % 4]);
        let a_wins = i % 2 == 0;
        let (a, b) = if a_wins {
            (good, bad.as_str())
        } else {
            (bad.as_str(), good)
        };
        let row = json!({"messages": [{"role": "user", "content": ask},
                                      {"role": "assistant", "content": good}]});
        push(&mut sft, row);
        push(
            &mut pairs,
            json!({"prompt": ask, "response_a": a, "response_b": b,
                   "human": if a_wins { "a" } else { "b" }}),
        );
        push(
            &mut labels,
            json!({"conversation": [{"role": "user", "content": ask}], "response_a": a,
                   "response_b": b, "p_a": if a_wins { 0.85 } else { 0.15 }}),
        );
        if i < 4 {
            push(&mut prompts, json!({ "prompt": ask }));
        }
    }
    for (name, text) in [
        ("sft.jsonl", sft),
        ("pairs.jsonl", pairs),
        ("labels.jsonl", labels),
        ("prompts.jsonl", prompts),
    ] {
        std::fs::write(d.join(name), text).unwrap();
    }
}

fn push(text: &mut String, row: serde_json::Value) {
    text.push_str(&format!("{row}\n"));
}

/// `cai train KIND --out OUT [--resume]` with `args`.
fn train(d: &Path, kind: &str, out: &str, resume: bool, args: &[&str]) -> Command {
    let mut c = cai(d);
    c.args(["train", kind, "--out", out, "--quiet"]).args(args);
    if resume {
        c.arg("--resume");
    }
    c
}

#[test]
fn trainers_resume_to_equal_weights_after_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    tiny::tiny_model(&d);
    write_data(&d);
    let sft = [
        "--model",
        "base",
        "--data",
        "sft.jsonl",
        "--max-steps",
        "24",
        "--batch-size",
        "4",
        "--lr",
        "1e-2",
        "--warmup-steps",
        "0",
        "--save-every",
        "3",
    ];
    trainer("sft", &d, 3, |out, resume| {
        train(&d, "sft", out, resume, &sft)
    });
    let rm = [
        "--model",
        "base",
        "--data",
        "pairs.jsonl",
        "--max-steps",
        "24",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "0",
        "--save-every",
        "3",
    ];
    trainer("rm", &d, 3, |out, resume| train(&d, "rm", out, resume, &rm));
    let dpo = [
        "--model",
        "base",
        "--data",
        "labels.jsonl",
        "--max-steps",
        "24",
        "--lr",
        "3e-3",
        "--beta",
        "0.5",
        "--warmup-steps",
        "0",
        "--save-every",
        "3",
    ];
    trainer("dpo", &d, 3, |out, resume| {
        train(&d, "dpo", out, resume, &dpo)
    });
    // PPO on the reward model trained above.
    std::fs::write(
        d.join("ppo.yaml"),
        "sample_every: 2\nsave_every: 2\nguards: {max_kl: 1000.0, action: stop}\n\
         ppo: {steps: 16, rollouts: 4, minibatch: 2, lr: 0.001, max_new_tokens: 6, \
         kl_target: 0.5, kl_horizon: 20.0, trainable: all}\n",
    )
    .unwrap();
    let ppo = [
        "--config",
        "ppo.yaml",
        "--policy",
        "base",
        "--reward-model",
        "rm-whole/final",
        "--prompts",
        "prompts.jsonl",
    ];
    trainer("ppo", &d, 2, |out, resume| {
        train(&d, "ppo", out, resume, &ppo)
    });
    // GRPO without a critic, rewarded by the feedback model (the mock) and the reward model.
    let constitution = root().join("constitutions/harmless.yaml");
    std::fs::write(
        d.join("grpo.yaml"),
        "sample_every: 2\nsave_every: 2\nreward: {reward_model: 0.5, labeler: 0.5}\n\
         ppo: {steps: 16, rollouts: 4, minibatch: 2, lr: 0.001, max_new_tokens: 6, \
         advantage: grpo, group_size: 2, trainable: all}\n",
    )
    .unwrap();
    let grpo = [
        "--config",
        "grpo.yaml",
        "--policy",
        "base",
        "--reward-model",
        "rm-whole/final",
        "--labeler-backend",
        "mock",
        "--constitution",
        constitution.to_str().unwrap(),
        "--prompts",
        "prompts.jsonl",
    ];
    trainer("grpo", &d, 2, |out, resume| {
        train(&d, "ppo", out, resume, &grpo)
    });
}

/// `cmd` under `ulimit -f BLOCKS` (1 KiB blocks); its stderr, after asserting that it failed.
fn fails_under_file_limit(cmd: &Command, blocks: u64) -> String {
    let quoted: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    let out = Command::new("bash")
        .args([
            "-c",
            &format!("ulimit -f {blocks}; exec {}", quoted.join(" ")),
        ])
        .current_dir(cmd.get_current_dir().unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "cai succeeded under ulimit -f {blocks}"
    );
    // The error is the last line (a trainer reports its held-out loss before it).
    let err = stderr.trim_end().lines().last().unwrap_or("").to_string();
    assert!(
        err.starts_with("cai: ") && stderr.matches("File too large").count() == 1,
        "one error line: {stderr}"
    );
    err
}

#[test]
fn a_full_disk_keeps_complete_records_and_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    tiny::tiny_model(&d);
    write_data(&d);
    let revise = |out: &str| revise(&d, out);
    ok(&mut revise("whole.jsonl"));
    let whole = std::fs::read_to_string(d.join("whole.jsonl")).unwrap();
    assert!(whole.len() > 4096, "the limit must cut the file");
    let err = fails_under_file_limit(&revise("full.jsonl"), 4);
    assert!(
        err.contains("full.jsonl") && err.contains("File too large"),
        "{err}"
    );
    let kept = std::fs::read_to_string(d.join("full.jsonl")).unwrap();
    assert!(kept.ends_with('\n') && whole.starts_with(&kept), "{kept}");
    ok(&mut revise("full.jsonl"));
    assert_eq!(
        std::fs::read_to_string(d.join("full.jsonl")).unwrap(),
        whole
    );

    // A trainer whose checkpoint does not fit: the error names the file, the earlier
    // checkpoints are whole, and --resume ends with the weights of an uninterrupted run.
    let sft = |out: &str, resume: bool| {
        train(
            &d,
            "sft",
            out,
            resume,
            &[
                "--model",
                "base",
                "--data",
                "sft.jsonl",
                "--max-steps",
                "6",
                "--lr",
                "1e-2",
                "--warmup-steps",
                "0",
                "--save-every",
                "3",
                "--batch-size",
                "4",
            ],
        )
    };
    ok(&mut sft("sft-whole", false));
    let weights = std::fs::metadata(d.join("sft-whole/final/model.safetensors"))
        .unwrap()
        .len();
    // Room for the weights but not for the optimizer's two moments.
    let err = fails_under_file_limit(&sft("sft-full", false), weights / 1024 + 1);
    assert!(
        err.contains("checkpoint-3") && err.contains("File too large"),
        "{err}"
    );
    assert_eq!(
        checkpoint_steps(&d.join("sft-full")).0,
        0,
        "no half-written checkpoint"
    );
    ok(&mut sft("sft-full", false));
    let a = std::fs::read(d.join("sft-whole/final/model.safetensors")).unwrap();
    let b = std::fs::read(d.join("sft-full/final/model.safetensors")).unwrap();
    assert!(a == b, "weights differ after the full disk");
    util::figure(
        "disk full: revise kept every complete record and finished on resume; \
                  train sft left no half-written checkpoint and finished with equal weights",
    );
}

/// The resume rule every trainer follows (`train/resume.rs`), through the binary: a folder
/// that holds checkpoints needs --resume, --resume needs a checkpoint, a resumed run whose
/// settings changed is refused with the setting named, and a resumed run may be made longer.
#[test]
fn every_trainer_follows_one_resume_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    tiny::tiny_model(&d);
    write_data(&d);
    let constitution = root().join("constitutions/harmless.yaml");
    let constitution = constitution.to_str().unwrap();
    let optimizer = ["--warmup-steps", "0", "--save-every", "1"];
    let cases: Vec<(&str, &str, Vec<&str>, &str)> = vec![
        (
            "sft",
            "sft",
            vec!["--model", "base", "--data", "sft.jsonl"],
            "--max-steps",
        ),
        (
            "rm",
            "rm",
            vec!["--model", "base", "--data", "pairs.jsonl"],
            "--max-steps",
        ),
        (
            "dpo",
            "dpo",
            vec!["--model", "base", "--data", "labels.jsonl"],
            "--max-steps",
        ),
        (
            "ppo",
            "ppo",
            vec![
                "--policy",
                "base",
                "--reward-model",
                "rm/final",
                "--prompts",
                "prompts.jsonl",
                "--rollouts",
                "4",
                "--minibatch",
                "2",
                "--max-tokens",
                "4",
            ],
            "--steps",
        ),
        (
            "grpo",
            "ppo",
            vec![
                "--policy",
                "base",
                "--reward",
                "labeler",
                "--labeler-backend",
                "mock",
                "--constitution",
                constitution,
                "--prompts",
                "prompts.jsonl",
                "--advantage",
                "grpo",
                "--group-size",
                "2",
                "--rollouts",
                "4",
                "--minibatch",
                "2",
                "--max-tokens",
                "4",
            ],
            "--steps",
        ),
    ];
    for (name, kind, args, length) in cases {
        let run = |resume: bool, extra: &[&str]| {
            let mut c = train(&d, kind, name, resume, &args);
            c.args(if kind == "ppo" {
                &optimizer[2..]
            } else {
                &optimizer[..]
            })
            .args(extra);
            c
        };
        ok(&mut run(false, &[length, "2", "--lr", "1e-3"]));
        assert!(d.join(name).join("checkpoint-2").is_dir(), "{name}");
        // A fresh run into the folder would overwrite it.
        let err = fails(&mut run(false, &[length, "2", "--lr", "1e-3"]));
        assert!(err.contains("pass --resume"), "{name}: {err}");
        // --resume with nothing to continue.
        let mut empty = train(&d, kind, &format!("{name}-empty"), true, &args);
        let err = fails(empty.args([length, "2"]));
        assert!(err.contains("no checkpoint-N folder"), "{name}: {err}");
        // Changed settings are named and refused; the run's length may change.
        let err = fails(&mut run(true, &[length, "3", "--lr", "2e-3"]));
        assert!(err.contains("lr: 0.001 -> 0.002"), "{name}: {err}");
        ok(&mut run(true, &[length, "3", "--lr", "1e-3"]));
        assert!(
            d.join(name).join("checkpoint-3").is_dir(),
            "{name}: the run went on"
        );
    }
}
