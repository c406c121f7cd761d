//! `cai label`: AI preference labels (RL-CAI, Bai et al. 2022 §4; RLAIF, Lee et al. 2023).
//!
//! A feedback model answers "which response is better under this principle, (A) or (B)?".
//! Direct mode reads the soft label from the exact log-probabilities of the options; both
//! presentation orders are asked and averaged to cancel position bias; optional content-free
//! calibration divides out the model's prior for each slot; chain-of-thought mode samples
//! reasoning first and averages (clamped) answer probabilities over the samples.

mod answers;
mod config;
#[cfg(test)]
mod identity_tests;
mod modes;
#[cfg(test)]
mod row_tests;

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::chat::{ChatMessage, Role};
use crate::constitution::{ComparisonPrinciple, Loaded};
use crate::hash::fnv1a;
use crate::llm::{open_backend_with, Backend, BackendKind};
use crate::model_files::tokenizer::surely_over_tokens;
use crate::pairs::{read_pairs, PreferencePair};
use crate::progress;
use crate::prompts::{PromptSet, TemplateKind};
pub use crate::stages::feedback::prompt::{
    escape, score_options, transcript, FeedbackPrompts, ANSWER_CUE, OPTIONS,
};
use crate::stages::records::StageOutput;
use config::{Job, Orders};
pub use config::{LabelConfig, LabelMode, LabelRecord, LabelStats, PrincipleLabel};

/// Runs `cai label`; returns the counters.
pub fn run(cfg: &LabelConfig) -> Result<LabelStats> {
    run_with(cfg, || {
        open_backend_with(cfg.backend, &cfg.model, &cfg.openai)
    })
}

/// Runs `cai label` on the backend `open` gives (called once the inputs are checked).
pub fn run_with(
    cfg: &LabelConfig,
    open: impl FnOnce() -> Result<Box<dyn Backend>>,
) -> Result<LabelStats> {
    let loaded = Loaded::read_valid(&cfg.constitution)?;
    if loaded.constitution.comparison_principles.is_empty() {
        bail!(
            "{}: no comparison_principles: AI feedback needs at least one",
            cfg.constitution.display()
        );
    }
    if cfg.principles == 0
        || cfg.batch_size == 0
        || (cfg.mode == LabelMode::Cot && cfg.samples == 0)
    {
        bail!("principles, batch_size and samples must be at least 1");
    }
    let available = loaded.constitution.comparison_principles.len();
    if cfg.principles > available {
        bail!(
            "--principles {}: {} has {available} comparison principles, so at most {available} \
             are drawn per pair",
            cfg.principles,
            cfg.constitution.display()
        );
    }
    let templates = PromptSet::load(&loaded.template_overrides(), cfg.templates.as_deref())?;
    let mut pairs = read_pairs(&cfg.pairs)?;
    if let Some(n) = cfg.limit {
        pairs.truncate(n);
    }
    unique_ids(&mut pairs);
    let backend = open()?;
    let fp = label_fingerprint(cfg, &loaded, &templates, backend.as_ref())?;
    let mut output =
        StageOutput::open("label", &cfg.out, cfg, Some(&loaded), backend.as_ref(), fp)?;
    let todo = output.pending(&pairs, |p| &p.id);
    let mut stats = LabelStats {
        pairs: pairs.len(),
        resumed: pairs.len() - todo.len(),
        ..Default::default()
    };
    output.update(&stats, backend.as_ref(), false)?;
    let prompts = FeedbackPrompts::new(&loaded.constitution, &templates, cfg.few_shot);
    let pb = progress::bar(pairs.len() as u64, stats.resumed as u64, "label", cfg.quiet);
    let start = Instant::now();
    let mut orders = Orders::default();
    for chunk in todo.chunks(cfg.batch_size) {
        let mut jobs = Vec::new();
        for pair in chunk {
            let mut rng =
                ChaCha8Rng::seed_from_u64(fnv1a(&[&cfg.seed.to_le_bytes(), pair.id.as_bytes()]));
            let principles: Vec<ComparisonPrinciple> = loaded
                .constitution
                .sample_comparisons(&mut rng, cfg.principles)?
                .into_iter()
                .cloned()
                .collect();
            match fit(cfg, backend.as_ref(), &prompts, pair, &principles[0])? {
                Fit::Fits(asked, truncated) => {
                    stats.truncated += truncated as usize;
                    let mut flags = Vec::new();
                    if pair.response_a.trim().is_empty() || pair.response_b.trim().is_empty() {
                        flags.push("empty-response".into());
                    }
                    jobs.push(Job {
                        pair: asked,
                        conversation: pair.conversation.clone(),
                        truncated,
                        principles,
                        flags,
                    });
                }
                Fit::TooLong => {
                    stats.skipped_long += 1;
                    progress::warn(
                        &pb,
                        &format!(
                            "{}:{}: conversation longer than {} tokens, skipped",
                            cfg.pairs.display(),
                            pair.source_line,
                            cfg.max_prompt_tokens
                        ),
                    );
                    pb.inc(1);
                }
            }
        }
        let records = modes::label_batch(cfg, backend.as_ref(), &prompts, &jobs, &mut stats)?;
        for (job, rec) in jobs.iter().zip(records) {
            match rec {
                Some(r) => {
                    check_finite(cfg, backend.as_ref(), job, &r)?;
                    output.appender.append(&r)?;
                    stats.count(&r, &mut orders);
                }
                None => {
                    stats.skipped_long += 1;
                    progress::warn(
                        &pb,
                        &format!(
                            "{}:{}: prompt overflows the model's context, skipped",
                            cfg.pairs.display(),
                            job.pair.source_line
                        ),
                    );
                }
            }
            pb.inc(1);
        }
        stats.seconds = start.elapsed().as_secs_f64();
        pb.set_message(format!(
            "{:.2} pairs/s",
            stats.written as f64 / stats.seconds.max(1e-9)
        ));
        output.update(&stats, backend.as_ref(), false)?;
    }
    pb.finish_and_clear();
    output.update(&stats, backend.as_ref(), true)?;
    Ok(stats)
}

/// A label that is not a number (a broken model's NaN log-probabilities) is an error naming
/// the pair and the model, never a `null` in the file.
fn check_finite(
    cfg: &LabelConfig,
    backend: &dyn Backend,
    job: &Job,
    r: &LabelRecord,
) -> Result<()> {
    let mut values = vec![
        ("p_a", Some(r.p_a)),
        ("p_a_first", Some(r.p_a_first)),
        ("p_a_second", r.p_a_second),
        ("p_a_first_raw", r.p_a_first_raw),
        ("p_a_second_raw", r.p_a_second_raw),
    ];
    for l in &r.per_principle {
        values.extend([
            ("per_principle.p_a_first", Some(l.p_a_first)),
            ("per_principle.p_a_second", l.p_a_second),
            ("per_principle.prior_a", l.prior_a),
            ("per_principle.scores", l.scores.map(|s| s.0 + s.1)),
        ]);
        values.extend(
            l.samples
                .iter()
                .map(|&s| ("per_principle.samples", Some(s))),
        );
    }
    let Some((field, v)) = values
        .into_iter()
        .find_map(|(f, v)| v.filter(|v| !v.is_finite()).map(|v| (f, v)))
    else {
        return Ok(());
    };
    let model = match cfg.backend {
        BackendKind::Local => match crate::model_files::ModelSpec::resolve(&cfg.model) {
            Ok(
                crate::model_files::ModelSpec::GgufFile(p)
                | crate::model_files::ModelSpec::Folder(p),
            ) => p.display().to_string(),
            Err(_) => backend.info().name.clone(),
        },
        _ => backend.info().name.clone(),
    };
    bail!(
        "{}:{}: the label of pair `{}` is not a number ({field} = {v}): the feedback model {model} \
         gave non-finite option log-probabilities",
        cfg.pairs.display(),
        job.pair.source_line,
        r.id
    )
}

/// Repeated pairs get `-1`, `-2`… so every record has its own id.
fn unique_ids(pairs: &mut [PreferencePair]) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for p in pairs {
        let n = seen.entry(p.id.clone()).or_insert(0);
        if *n > 0 {
            p.id = format!("{}-{n}", p.id);
        }
        *n += 1;
    }
}

enum Fit {
    Fits(PreferencePair, bool),
    TooLong,
}

/// Checks the question's length; drops oldest turns when allowed.
fn fit(
    cfg: &LabelConfig,
    backend: &dyn Backend,
    prompts: &FeedbackPrompts,
    pair: &PreferencePair,
    p: &ComparisonPrinciple,
) -> Result<Fit> {
    let count = |conv: &[ChatMessage]| -> Result<usize> {
        // Characters first: a record far beyond the limit is never rendered or tokenized.
        let chars = |s: &str| s.chars().count();
        let text = conv.iter().map(|m| chars(&m.content)).sum::<usize>()
            + chars(&pair.response_a)
            + chars(&pair.response_b);
        if surely_over_tokens(text, cfg.max_prompt_tokens) {
            return Ok(usize::MAX);
        }
        match cfg.mode {
            LabelMode::Score => Ok(backend
                .count_tokens(&prompts.score(conv, &pair.response_a, p)?)?
                .max(backend.count_tokens(&prompts.score(conv, &pair.response_b, p)?)?)),
            _ => backend.count_tokens(&prompts.direct(
                conv,
                &pair.response_a,
                &pair.response_b,
                p,
            )?),
        }
    };
    if count(&pair.conversation)? <= cfg.max_prompt_tokens {
        return Ok(Fit::Fits(pair.clone(), false));
    }
    if !cfg.truncate_long {
        return Ok(Fit::TooLong);
    }
    let mut conv = pair.conversation.clone();
    while conv.len() > 1 && count(&conv)? > cfg.max_prompt_tokens {
        conv.remove(0);
        while conv.len() > 1 && conv[0].role != Role::User {
            conv.remove(0);
        }
    }
    if count(&conv)? > cfg.max_prompt_tokens {
        return Ok(Fit::TooLong);
    }
    Ok(Fit::Fits(
        PreferencePair {
            conversation: conv,
            ..pair.clone()
        },
        true,
    ))
}

fn label_fingerprint(
    cfg: &LabelConfig,
    loaded: &Loaded,
    templates: &PromptSet,
    backend: &dyn Backend,
) -> Result<crate::stages::records::Fingerprint> {
    let ignore = [
        "out",
        "batch_size",
        "limit",
        "quiet",
        "pairs",
        "constitution",
    ];
    let t = json!([
        format!("{:?}", templates.get(TemplateKind::Feedback)),
        format!("{:?}", templates.get(TemplateKind::FeedbackCot)),
        format!("{:?}", templates.get(TemplateKind::FeedbackScore))
    ]);
    crate::stages::records::records_fingerprint(cfg, &ignore, backend, &[json!(loaded.sha256), t])
}
