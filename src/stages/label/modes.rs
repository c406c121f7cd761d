//! The four ways of asking the feedback model (direct, chain-of-thought, likelihood, score),
//! each for one batch of pairs: build every request with its identity ([`Ask`]), run them as
//! one backend batch, then read each pair's answers back by identity.

use anyhow::Result;

use super::answers::{self, Answers, Ask, Part};
use super::config::{Job, LabelConfig, LabelMode, LabelRecord, LabelStats, PrincipleLabel};
use crate::chat::{ChatMessage, Role};
use crate::constitution::ComparisonPrinciple;
use crate::hash::fnv1a;
use crate::llm::{Backend, Choice, ChoiceRequest, GenerateRequest, Prompt};
use crate::stages::feedback::prompt::{score_options, FeedbackPrompts, OPTIONS};
use crate::stages::feedback::soft;

/// Labels one batch in the configured mode; `None` for a pair whose prompts overflow the
/// context. One entry per job, in job order.
pub(super) fn label_batch(
    cfg: &LabelConfig,
    backend: &dyn Backend,
    prompts: &FeedbackPrompts,
    jobs: &[Job],
    stats: &mut LabelStats,
) -> Result<Vec<Option<LabelRecord>>> {
    match cfg.mode {
        LabelMode::Direct => label_direct(cfg, backend, prompts, jobs, stats),
        LabelMode::Cot => label_cot(cfg, backend, prompts, jobs, stats),
        LabelMode::Likelihood => label_likelihood(cfg, backend, jobs, stats),
        LabelMode::Score => label_score(cfg, backend, prompts, jobs, stats),
    }
}

/// The question of one (pair, principle, order): `swapped` puts response_b in slot (A).
fn question(
    prompts: &FeedbackPrompts,
    job: &Job,
    p: &ComparisonPrinciple,
    swapped: bool,
    cot: bool,
) -> Result<Prompt> {
    let (a, b) = match swapped {
        false => (&job.pair.response_a, &job.pair.response_b),
        true => (&job.pair.response_b, &job.pair.response_a),
    };
    match cot {
        false => prompts.direct(&job.pair.conversation, a, b, p),
        true => prompts.cot(&job.pair.conversation, a, b, p),
    }
}

fn orders(cfg: &LabelConfig) -> &'static [bool] {
    if cfg.asks_both_orders() {
        &[false, true]
    } else {
        &[false]
    }
}

fn is_identical(job: &Job) -> bool {
    job.pair.response_a.trim() == job.pair.response_b.trim()
}

/// The jobs that are asked about, with their index in the batch (identical responses are not).
fn asked(jobs: &[Job]) -> impl Iterator<Item = (usize, &Job)> {
    jobs.iter().enumerate().filter(|(_, j)| !is_identical(j))
}

/// `label(index, job)` for every job but those with identical responses, which get 0.5 (and a
/// flag) without a question; then checks that every answer of a labelled pair was read.
fn each_job<T>(
    cfg: &LabelConfig,
    backend: &dyn Backend,
    jobs: &[Job],
    stats: &mut LabelStats,
    answers: &mut Answers<T>,
    mut label: impl FnMut(usize, &Job, &mut Answers<T>) -> Result<Option<LabelRecord>>,
) -> Result<Vec<Option<LabelRecord>>> {
    let mut out = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        if is_identical(job) {
            stats.identical += 1;
            out.push(Some(identical_record(cfg, backend, job)));
        } else {
            out.push(label(i, job, answers)?);
        }
    }
    Ok(out)
}

/// A request for the log-probabilities of "A" and "B".
fn ab(prompt: Prompt) -> ChoiceRequest {
    ChoiceRequest {
        prompt,
        options: OPTIONS.iter().map(|s| s.to_string()).collect(),
    }
}

/// Runs choose requests, counting the prompt tokens of every answer.
fn choose(
    backend: &dyn Backend,
    asks: Vec<(Ask, ChoiceRequest)>,
    stats: &mut LabelStats,
    what: &str,
) -> Result<Answers<Choice>> {
    let answers = answers::choose(backend, asks, what)?;
    stats.prompt_tokens += answers.total(|c| c.prompt_tokens);
    Ok(answers)
}

/// P(slot A) from an "A"/"B" answer.
fn slot_a(c: &Choice) -> f64 {
    soft::normalize_pair(c.logprobs[0], c.logprobs[1])
}

/// Direct mode for a batch of pairs.
fn label_direct(
    cfg: &LabelConfig,
    backend: &dyn Backend,
    prompts: &FeedbackPrompts,
    jobs: &[Job],
    stats: &mut LabelStats,
) -> Result<Vec<Option<LabelRecord>>> {
    let mut asks = Vec::new();
    for (j, job) in asked(jobs) {
        for (pi, p) in job.principles.iter().enumerate() {
            for (order, &swapped) in orders(cfg).iter().enumerate() {
                let q = question(prompts, job, p, swapped, false)?;
                asks.push((Ask::new(j, pi, order, Part::Question), ab(q)));
            }
            if cfg.calibrate {
                let q = prompts.direct(&job.pair.conversation, "N/A", "N/A", p)?;
                asks.push((Ask::new(j, pi, 0, Part::ContentFree), ab(q)));
            }
        }
    }
    let mut answers = choose(backend, asks, stats, "feedback model failed")?;
    let out = each_job(
        cfg,
        backend,
        jobs,
        stats,
        &mut answers,
        |j, job, answers| {
            let mut labels = Vec::new();
            let mut used = 0;
            for (pi, p) in job.principles.iter().enumerate() {
                let mut per_order = Vec::new();
                for order in 0..orders(cfg).len() {
                    let Some(c) = answers.take(Ask::new(j, pi, order, Part::Question))? else {
                        return Ok(None);
                    };
                    used += c.prompt_tokens;
                    per_order.push(slot_a(&c));
                }
                let prior = match cfg.calibrate {
                    false => None,
                    true => match answers.take(Ask::new(j, pi, 0, Part::ContentFree))? {
                        Some(c) => {
                            used += c.prompt_tokens;
                            Some(slot_a(&c))
                        }
                        None => return Ok(None),
                    },
                };
                let cal = |p_slot_a: f64| prior.map_or(p_slot_a, |c| soft::calibrate(p_slot_a, c));
                let first = soft::clamp(cal(per_order[0]), cfg.clamp_range());
                let second = per_order
                    .get(1)
                    .map(|&p| soft::clamp(soft::from_swapped(cal(p)), cfg.clamp_range()));
                labels.push(PrincipleLabel {
                    p_a_second: second,
                    p_a_first_raw: Some(per_order[0]),
                    p_a_second_raw: per_order.get(1).map(|&p| soft::from_swapped(p)),
                    prior_a: prior,
                    ..PrincipleLabel::new(p, first)
                });
            }
            Ok(Some(record(cfg, backend, job, labels, None, (used, 0))))
        },
    )?;
    answers.finish(|j| out[j].is_some())?;
    Ok(out)
}

/// Chain-of-thought mode with self-consistency for a batch of pairs.
fn label_cot(
    cfg: &LabelConfig,
    backend: &dyn Backend,
    prompts: &FeedbackPrompts,
    jobs: &[Job],
    stats: &mut LabelStats,
) -> Result<Vec<Option<LabelRecord>>> {
    let mut reasoning = Vec::new();
    for (j, job) in asked(jobs) {
        for (pi, p) in job.principles.iter().enumerate() {
            for (order, &swapped) in orders(cfg).iter().enumerate() {
                let prompt = question(prompts, job, p, swapped, true)?;
                let seed = fnv1a(&[
                    &cfg.seed.to_le_bytes(),
                    job.pair.id.as_bytes(),
                    p.id.as_bytes(),
                    &[swapped as u8],
                ]);
                let req = GenerateRequest {
                    prompt,
                    params: cfg.reasoning.clone(),
                    n: cfg.samples,
                    seed,
                };
                reasoning.push((Ask::new(j, pi, order, Part::Reasoning), req));
            }
        }
    }
    let mut gens = answers::generate(backend, &reasoning, "feedback model failed to reason")?;
    let mut asks = Vec::new();
    for (ask, req) in &reasoning {
        let Some(g) = gens.get(ask)? else { continue };
        stats.prompt_tokens += g.prompt_tokens;
        for (s, c) in g.completions.iter().enumerate() {
            stats.generated_tokens += c.tokens;
            let prompt = FeedbackPrompts::cot_answer(&req.prompt, c.text.trim());
            let answer = Ask {
                part: Part::Answer,
                ..ask.sample(s)
            };
            asks.push((answer, ab(prompt)));
        }
    }
    let mut answers = choose(backend, asks, stats, "feedback model failed")?;
    let out = each_job(
        cfg,
        backend,
        jobs,
        stats,
        &mut answers,
        |j, job, answers| {
            let mut labels = Vec::new();
            let (mut generated, mut used) = (0, 0);
            let mut all_samples = Vec::new();
            for (pi, p) in job.principles.iter().enumerate() {
                let mut per_order = Vec::new();
                let mut per_order_raw = Vec::new();
                let mut rationales = Vec::new();
                let mut samples = Vec::new();
                for (order, &swapped) in orders(cfg).iter().enumerate() {
                    let Some(g) = gens.take(Ask::new(j, pi, order, Part::Reasoning))? else {
                        return Ok(None);
                    };
                    let mut ps = Vec::with_capacity(g.completions.len());
                    let mut raw = Vec::with_capacity(g.completions.len());
                    for (s, c) in g.completions.iter().enumerate() {
                        let ask = Ask::new(j, pi, order, Part::Answer).sample(s);
                        let Some(answer) = answers.take(ask)? else {
                            return Ok(None);
                        };
                        used += answer.prompt_tokens;
                        generated += c.tokens;
                        let p = slot_a(&answer);
                        let p = if swapped { soft::from_swapped(p) } else { p };
                        raw.push(p);
                        ps.push(soft::clamp(p, cfg.clamp_range()));
                        rationales.push(c.text.trim().to_string());
                    }
                    per_order.push(soft::mean(&ps));
                    per_order_raw.push(soft::mean(&raw));
                    samples.extend(ps);
                }
                all_samples.extend(samples.iter().copied());
                labels.push(PrincipleLabel {
                    p_a_second: per_order.get(1).copied(),
                    p_a_first_raw: Some(per_order_raw[0]),
                    p_a_second_raw: per_order_raw.get(1).copied(),
                    samples,
                    rationales,
                    ..PrincipleLabel::new(p, per_order[0])
                });
            }
            let votes = soft::votes(&all_samples);
            Ok(Some(record(
                cfg,
                backend,
                job,
                labels,
                Some(votes),
                (used, generated),
            )))
        },
    )?;
    answers.finish(|j| out[j].is_some())?;
    gens.finish(|j| out[j].is_some())?;
    Ok(out)
}

/// The conversation with the principle stated as guidance in a system message.
fn guided(conversation: &[ChatMessage], p: &ComparisonPrinciple) -> Prompt {
    let mut messages = vec![ChatMessage::system(format!(
        "You are an AI assistant. Answer in the way this question prefers: {}",
        p.question
    ))];
    messages.extend(
        conversation
            .iter()
            .filter(|m| m.role != Role::System)
            .cloned(),
    );
    Prompt::new(messages)
}

/// Likelihood mode for a batch of pairs.
fn label_likelihood(
    cfg: &LabelConfig,
    backend: &dyn Backend,
    jobs: &[Job],
    stats: &mut LabelStats,
) -> Result<Vec<Option<LabelRecord>>> {
    let mut asks = Vec::new();
    for (j, job) in asked(jobs) {
        let options = vec![job.pair.response_a.clone(), job.pair.response_b.clone()];
        let plain = ChoiceRequest {
            prompt: Prompt::new(job.pair.conversation.clone()),
            options: options.clone(),
        };
        asks.push((Ask::new(j, 0, 0, Part::Unguided), plain));
        for (pi, p) in job.principles.iter().enumerate() {
            let guided = ChoiceRequest {
                prompt: guided(&job.pair.conversation, p),
                options: options.clone(),
            };
            asks.push((Ask::new(j, pi, 0, Part::Guided), guided));
        }
    }
    let what = "feedback model failed to score the responses";
    let mut answers = choose(backend, asks, stats, what)?;
    let out = each_job(
        cfg,
        backend,
        jobs,
        stats,
        &mut answers,
        |j, job, answers| {
            let Some(u) = answers.take(Ask::new(j, 0, 0, Part::Unguided))? else {
                return Ok(None);
            };
            let mut used = u.prompt_tokens;
            let mut labels = Vec::new();
            for (pi, p) in job.principles.iter().enumerate() {
                let Some(g) = answers.take(Ask::new(j, pi, 0, Part::Guided))? else {
                    return Ok(None);
                };
                used += g.prompt_tokens;
                let (u, g) = (&u.logprobs, &g.logprobs);
                let delta = (g[0] - u[0]) - (g[1] - u[1]);
                let p_a = soft::clamp(soft::normalize_pair(delta, 0.0), cfg.clamp_range());
                labels.push(PrincipleLabel::new(p, p_a));
            }
            Ok(Some(record(cfg, backend, job, labels, None, (used, 0))))
        },
    )?;
    answers.finish(|j| out[j].is_some())?;
    Ok(out)
}

/// Score mode for a batch of pairs: each response rated 1–10 on its own under each principle.
fn label_score(
    cfg: &LabelConfig,
    backend: &dyn Backend,
    prompts: &FeedbackPrompts,
    jobs: &[Job],
    stats: &mut LabelStats,
) -> Result<Vec<Option<LabelRecord>>> {
    let options = score_options();
    let mut asks = Vec::new();
    for (j, job) in asked(jobs) {
        for (pi, p) in job.principles.iter().enumerate() {
            for (side, response) in [&job.pair.response_a, &job.pair.response_b]
                .into_iter()
                .enumerate()
            {
                let req = ChoiceRequest {
                    prompt: prompts.score(&job.pair.conversation, response, p)?,
                    options: options.clone(),
                };
                asks.push((Ask::new(j, pi, side, Part::Rating), req));
            }
        }
    }
    let what = "feedback model failed to score the responses";
    let mut answers = choose(backend, asks, stats, what)?;
    let out = each_job(
        cfg,
        backend,
        jobs,
        stats,
        &mut answers,
        |j, job, answers| {
            let mut labels = Vec::new();
            let mut used = 0;
            for (pi, p) in job.principles.iter().enumerate() {
                let a = answers.take(Ask::new(j, pi, 0, Part::Rating))?;
                let b = answers.take(Ask::new(j, pi, 1, Part::Rating))?;
                let (Some(a), Some(b)) = (a, b) else {
                    return Ok(None);
                };
                used += a.prompt_tokens + b.prompt_tokens;
                let a = soft::score_distribution(&a.logprobs);
                let b = soft::score_distribution(&b.logprobs);
                labels.push(PrincipleLabel {
                    scores: Some((soft::expected_score(&a), soft::expected_score(&b))),
                    ..PrincipleLabel::new(p, soft::p_higher(&a, &b))
                });
            }
            Ok(Some(record(cfg, backend, job, labels, None, (used, 0))))
        },
    )?;
    answers.finish(|j| out[j].is_some())?;
    Ok(out)
}

fn record(
    cfg: &LabelConfig,
    backend: &dyn Backend,
    job: &Job,
    labels: Vec<PrincipleLabel>,
    votes: Option<(usize, usize)>,
    tokens: (usize, usize),
) -> LabelRecord {
    let firsts: Vec<f64> = labels.iter().map(|l| l.p_a_first).collect();
    let seconds: Vec<f64> = labels.iter().filter_map(|l| l.p_a_second).collect();
    let p_a_first = soft::mean(&firsts);
    let p_a_second = (!seconds.is_empty()).then(|| soft::mean(&seconds));
    // The raw means exist where every principle has them (the modes with slots).
    let mean_of = |f: fn(&PrincipleLabel) -> Option<f64>| {
        let xs: Option<Vec<f64>> = labels.iter().map(f).collect();
        xs.filter(|xs| !xs.is_empty()).map(|xs| soft::mean(&xs))
    };
    let p_a_first_raw = mean_of(|l| l.p_a_first_raw);
    let p_a_second_raw = mean_of(|l| l.p_a_second_raw);
    let p_a = match p_a_second {
        Some(s) => soft::mean(&[p_a_first, s]),
        None => p_a_first,
    };
    let scores: Option<Vec<(f64, f64)>> = labels.iter().map(|l| l.scores).collect();
    let scores = scores.filter(|s| !s.is_empty()).map(|s| {
        let (a, b): (Vec<f64>, Vec<f64>) = s.into_iter().unzip();
        (soft::mean(&a), soft::mean(&b))
    });
    LabelRecord {
        id: job.pair.id.clone(),
        conversation: job.conversation.clone(),
        response_a: job.pair.response_a.clone(),
        response_b: job.pair.response_b.clone(),
        principles: labels.iter().map(|l| l.principle.clone()).collect(),
        p_a_first,
        p_a_second,
        p_a_first_raw,
        p_a_second_raw,
        p_a,
        position_flip: p_a_second.is_some_and(|s| soft::position_flip(p_a_first, s)),
        truncated: job.truncated,
        votes,
        scores,
        per_principle: labels,
        mode: cfg.mode,
        model: backend.info().name.clone(),
        prompt_tokens: tokens.0,
        generated_tokens: tokens.1,
        flags: job.flags.clone(),
    }
}

/// Identical responses: no question to ask; the label is 0.5 and flagged.
fn identical_record(cfg: &LabelConfig, backend: &dyn Backend, job: &Job) -> LabelRecord {
    let labels = job
        .principles
        .iter()
        .map(|p| PrincipleLabel {
            p_a_second: cfg.asks_both_orders().then_some(0.5),
            scores: (cfg.mode == LabelMode::Score).then_some((5.5, 5.5)),
            ..PrincipleLabel::new(p, 0.5)
        })
        .collect();
    let mut r = record(cfg, backend, job, labels, None, (0, 0));
    r.flags.push("identical".into());
    r
}
