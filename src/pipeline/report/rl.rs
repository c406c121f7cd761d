//! Report sections of the policy-training stages after the labels: DPO's held-out metrics,
//! the PPO and GRPO curves, and the evaluation's win rates.

use std::fmt::Write as _;

use serde_json::Value;

use super::cells::{cell, json_file, num};
use super::sections::{absent, images, rel};
use crate::artifacts::{
    ACCURACY_PLOT, EVAL_RESULT, KL_PLOT, LOSS_PLOT, MANIFEST, METRICS, REPORT, REWARDS_PLOT,
    SAMPLES, TRAIN_LOG,
};
use crate::pipeline::stage::{RunDir, Stage};

/// DPO: the held-out metrics before the first step and after the last.
pub(super) fn dpo(md: &mut String, run: &RunDir) {
    md.push_str("## DPO\n\n");
    let dir = run.stage_dir(Stage::Dpo);
    let metrics = dir.join(METRICS);
    if absent(md, &metrics, run) {
        return;
    }
    let m = json_file(&metrics).unwrap_or(Value::Null);
    let cfg = json_file(&dir.join(MANIFEST)).unwrap_or(Value::Null);
    let text = |pointer: &str| {
        cfg.pointer(pointer)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .unwrap_or_else(|| "–".into())
    };
    let _ = writeln!(
        md,
        "Loss `{}`, β {}: {} steps on {} training pairs, {} held out, {} tokens/s (`{}`; \
         reference log-probs {}). Policy: `dpo/final/`.\n\n\
         | held out | implicit-reward accuracy | reward margin | chosen drift (nats) | \
         rejected drift (nats) | log-prob accuracy | loss |\n|---|---:|---:|---:|---:|---:|---:|",
        text("/config/loss"),
        text("/config/beta"),
        num(&m, "/steps", 0),
        num(&m, "/train_pairs", 0),
        num(&m, "/eval_pairs", 0),
        num(&m, "/tokens_per_s", 1),
        rel(run, &metrics),
        match m.pointer("/reference_reused") {
            Some(Value::Bool(true)) => "read from `dpo/reference_logps.json`",
            _ => "computed once into `dpo/reference_logps.json`",
        },
    );
    for (name, key) in [("before", "eval_before"), ("after", "eval_after")] {
        let p = |field: &str, digits| num(&m, &format!("/{key}/{field}"), digits);
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            p("accuracy", 3),
            p("margin", 4),
            p("chosen_drift", 3),
            p("rejected_drift", 3),
            p("logp_accuracy", 3),
            p("loss", 4)
        );
    }
    md.push('\n');
    images(
        md,
        run,
        &[
            ("DPO loss", dir.join(LOSS_PLOT)),
            ("DPO accuracy", dir.join(ACCURACY_PLOT)),
            ("DPO rewards", dir.join(REWARDS_PLOT)),
        ],
    );
}

/// PPO or GRPO: the first and last step of the policy trainer's log.
pub(super) fn rl(md: &mut String, run: &RunDir, stage: Stage) {
    let (title, alt) = match stage {
        Stage::Grpo => ("## GRPO (critic-free)\n\n", "GRPO"),
        _ => ("## PPO\n\n", "PPO"),
    };
    md.push_str(title);
    let dir = run.stage_dir(stage);
    let manifest = dir.join(MANIFEST);
    if absent(md, &manifest, run) {
        return;
    }
    let m = json_file(&manifest).unwrap_or(Value::Null);
    let setting = |pointer: &str| {
        m.pointer(pointer)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .unwrap_or_else(|| "–".into())
    };
    let _ = writeln!(
        md,
        "Advantage `{}` (group size {}); reward = {} × reward model + {} × feedback-model \
         rating. {} steps on {} prompts, {} s per step (`{}`: `stats`). Policy: \
         `{stage}/final/`; one row per step in [{log}]({log}), sampled responses in `{}`.\n\n\
         | | score | total reward | KL (nats) | β | entropy | response tokens | \
         ended |\n|---|---:|---:|---:|---:|---:|---:|---:|",
        setting("/config/ppo/advantage"),
        setting("/config/ppo/group_size"),
        setting("/config/reward/reward_model"),
        setting("/config/reward/labeler"),
        num(&m, "/stats/steps", 0),
        num(&m, "/stats/prompts", 0),
        num(&m, "/stats/seconds_per_step", 1),
        rel(run, &manifest),
        rel(run, &dir.join(SAMPLES)),
        log = rel(run, &dir.join(TRAIN_LOG)),
    );
    for (name, key) in [("first step", "first"), ("last step", "last")] {
        let p = |field: &str, digits| num(&m, &format!("/stats/{key}/{field}"), digits);
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            p("score", 3),
            p("reward", 3),
            p("kl", 3),
            p("beta", 4),
            p("entropy", 3),
            p("response_len", 1),
            p("ended", 2)
        );
    }
    if let Some(Value::Array(phrases)) = m.pointer("/stats/repeated_phrases") {
        let list: Vec<String> = phrases
            .iter()
            .filter_map(|p| Some(format!("“{}” ×{}", cell(p.get(0)?.as_str()?), p.get(1)?)))
            .collect();
        if !list.is_empty() {
            let _ = writeln!(
                md,
                "\nMost repeated phrases of the last step (a reward-hacking sign when they \
                 grow): {}.",
                list.join(", ")
            );
        }
    }
    md.push('\n');
    images(
        md,
        run,
        &[
            (&format!("{alt} reward"), dir.join(REWARDS_PLOT)),
            (&format!("{alt} KL"), dir.join(KL_PLOT)),
        ],
    );
}

pub(super) fn eval(md: &mut String, run: &RunDir) {
    md.push_str("## Evaluation\n\n");
    let dir = run.stage_dir(Stage::Eval);
    let path = dir.join(EVAL_RESULT);
    if absent(md, &path, run) {
        return;
    }
    let e = json_file(&path).unwrap_or(Value::Null);
    let rate = |key: &str| match e.pointer(&format!("/{key}/rate")) {
        Some(_) => format!(
            "{} [{}, {}] (n = {})",
            num(&e, &format!("/{key}/rate"), 3),
            num(&e, &format!("/{key}/low"), 3),
            num(&e, &format!("/{key}/high"), 3),
            num(&e, &format!("/{key}/n"), 0)
        ),
        None => "–".into(),
    };
    let _ = writeln!(
        md,
        "`{}` (A) against `{}` (B) on {} held-out prompts (`{}`; answers side by side in \
         [{r}]({r})).\n\n| measure | value |\n|---|---|\n\
         | A wins, AI labeler, both orders (95 % interval; ties ½) | {} |\n\
         | ties, AI labeler (\\|P(A) − 0.5\\| ≤ {}) | {} |\n\
         | mean P(A better) | {} |\n| position flips | {} |\n\
         | A wins, reward model (95 % interval) | {} |\n| mean reward A / B | {} / {} |\n",
        cell(
            e.pointer("/policy_a")
                .and_then(Value::as_str)
                .unwrap_or("–")
        ),
        cell(
            e.pointer("/policy_b")
                .and_then(Value::as_str)
                .unwrap_or("–")
        ),
        num(&e, "/pairs", 0),
        rel(run, &path),
        rate("labeler_win_rate"),
        num(&e, "/tie_margin", 2),
        num(&e, "/labeler_ties", 0),
        num(&e, "/labeler_mean_p_a", 3),
        num(&e, "/position_flips", 0),
        rate("reward_win_rate"),
        num(&e, "/mean_reward_a", 3),
        num(&e, "/mean_reward_b", 3),
        r = rel(run, &dir.join(REPORT)),
    );
}
