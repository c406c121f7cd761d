//! Report sections of the RL stages: PPO curves and the evaluation's win rates.

use std::fmt::Write as _;

use serde_json::Value;

use super::sections::{absent, images, rel};
use super::{cell, json_file, num};
use crate::pipeline::{RunDir, Stage};

pub(super) fn ppo(md: &mut String, run: &RunDir) {
    md.push_str("## PPO\n\n");
    let dir = run.stage_dir(Stage::Ppo);
    let manifest = dir.join("manifest.json");
    if absent(md, &manifest, run) {
        return;
    }
    let m = json_file(&manifest).unwrap_or(Value::Null);
    let _ = writeln!(
        md,
        "{} steps on {} prompts, {} s per step (`{}`: `stats`). Policy: `ppo/final/`; one row \
         per step in [{log}]({log}), sampled responses in `{}`.\n\n\
         | | reward-model score | total reward | KL (nats) | β | entropy | response tokens | \
         ended |\n|---|---:|---:|---:|---:|---:|---:|---:|",
        num(&m, "/stats/steps", 0),
        num(&m, "/stats/prompts", 0),
        num(&m, "/stats/seconds_per_step", 1),
        rel(run, &manifest),
        rel(run, &dir.join("samples.jsonl")),
        log = rel(run, &dir.join("ppo_log.csv")),
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
            ("PPO reward", dir.join("reward.svg")),
            ("PPO KL", dir.join("kl.svg")),
        ],
    );
}

pub(super) fn eval(md: &mut String, run: &RunDir) {
    md.push_str("## Evaluation\n\n");
    let dir = run.stage_dir(Stage::Eval);
    let path = dir.join("eval.json");
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
        r = rel(run, &dir.join("report.md")),
    );
}
