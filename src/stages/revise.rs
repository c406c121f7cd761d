//! `cai revise`: the supervised stage of Constitutional AI (Bai et al. 2022, §3.1).
//!
//! For each red-team prompt the model answers; then for N rounds a principle is drawn at
//! random (weighted, with replacement), the model critiques its latest answer under it and
//! revises. Every round is kept so SL-CAI-n sets can be cut. Output is append-only JSONL that
//! a re-run resumes; the manifest records config, seed and hashes.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::chat::ChatMessage;
use crate::constitution::{Constitution, Loaded, Principle};
use crate::hash::fnv1a;
use crate::inputs::{read_prompts, PromptItem};
use crate::llm::openai::OpenaiConfig;
use crate::llm::{
    open_backend_with, Backend, BackendKind, ContextOverflow, GenerateRequest, Prompt,
    SamplingParams,
};
use crate::model_files::tokenizer::surely_over_tokens;
use crate::prompts::{PromptSet, TemplateKind, Vars};
pub use crate::revisions::{RevisionRecord, Round};
use crate::stages::records::StageOutput;
use crate::{jsonl, progress};

/// What to do with a prompt longer than `max_prompt_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LongPrompt {
    /// Leave it out, with a counted warning.
    #[default]
    Skip,
    /// Drop the oldest turns, then cut the text, until it fits.
    Truncate,
}

impl crate::choice::Choice for LongPrompt {
    const CHOICES: &'static [(&'static str, Self, &'static str)] = &[
        ("skip", Self::Skip, "leave it out, with a counted warning"),
        (
            "truncate",
            Self::Truncate,
            "drop the oldest turns, then cut the text, until it fits",
        ),
    ];
}

/// Extra output formats written next to the main records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SftFormat {
    /// TRL conversational SFT rows: `{"messages": [..., {"role": "assistant", ...}]}`.
    Trl,
}

impl crate::choice::Choice for SftFormat {
    const CHOICES: &'static [(&'static str, Self, &'static str)] = &[(
        "trl",
        Self::Trl,
        "TRL conversational SFT rows (`messages`) in X.trl.jsonl",
    )];
}

/// Everything `cai revise` needs; defaults < `--config` YAML < flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReviseConfig {
    /// Constitution YAML.
    pub constitution: PathBuf,
    /// Red-team prompts (JSONL or plain text).
    pub prompts: PathBuf,
    /// Output JSONL of revision records.
    pub out: PathBuf,
    /// Critique → revision rounds per prompt.
    pub rounds: usize,
    pub seed: u64,
    pub backend: BackendKind,
    /// `default`, a GGUF path, a model folder or a Hugging Face id.
    pub model: String,
    /// Server settings of `--backend openai`.
    pub openai: OpenaiConfig,
    /// Folder with template overrides (`critique.txt`, …).
    pub templates: Option<PathBuf>,
    /// Prompts handed to the backend together.
    pub batch_size: usize,
    /// Only the first N prompts.
    pub limit: Option<usize>,
    /// Few-shot revision examples from the constitution put before each request.
    pub few_shot: usize,
    pub max_prompt_tokens: usize,
    pub on_long_prompt: LongPrompt,
    pub answer: SamplingParams,
    pub critique: SamplingParams,
    pub revision: SamplingParams,
    pub formats: Vec<SftFormat>,
    pub quiet: bool,
}

impl Default for ReviseConfig {
    fn default() -> Self {
        let sampling = |max_tokens| SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            max_tokens,
            ..SamplingParams::default()
        };
        Self {
            constitution: PathBuf::from("constitutions/harmless.yaml"),
            prompts: PathBuf::from("data/sample-prompts.jsonl"),
            out: PathBuf::from("runs/revisions.jsonl"),
            rounds: 2,
            seed: 0,
            backend: BackendKind::Local,
            model: "default".into(),
            openai: OpenaiConfig::default(),
            templates: None,
            batch_size: 8,
            limit: None,
            few_shot: 2,
            max_prompt_tokens: 1024,
            on_long_prompt: LongPrompt::Skip,
            answer: sampling(128),
            critique: sampling(96),
            revision: sampling(128),
            formats: Vec::new(),
            quiet: false,
        }
    }
}

/// Counters of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReviseStats {
    pub prompts: usize,
    pub resumed: usize,
    pub written: usize,
    pub skipped_long: usize,
    pub truncated: usize,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub seconds: f64,
}

/// Builds the prompts of the three steps, few-shot examples first.
pub struct RevisePrompts<'a> {
    constitution: &'a Constitution,
    templates: &'a PromptSet,
    few_shot: usize,
}

impl<'a> RevisePrompts<'a> {
    pub fn new(constitution: &'a Constitution, templates: &'a PromptSet, few_shot: usize) -> Self {
        Self {
            constitution,
            templates,
            few_shot,
        }
    }

    pub fn initial(&self, conversation: &[ChatMessage]) -> Result<Prompt> {
        self.templates
            .get(TemplateKind::Initial)
            .render(&Vars::new(conversation))
    }

    pub fn critique(
        &self,
        conversation: &[ChatMessage],
        response: &str,
        p: &Principle,
    ) -> Result<Prompt> {
        let mut prompt = self.examples(false)?;
        let vars = Vars::new(conversation)
            .set("response", response)
            .set("critique_request", &p.critique)
            .set("principle_id", &p.id);
        append(
            &mut prompt,
            self.templates.get(TemplateKind::Critique).render(&vars)?,
        );
        Ok(prompt)
    }

    pub fn revision(
        &self,
        conversation: &[ChatMessage],
        response: &str,
        p: &Principle,
        critique: &str,
    ) -> Result<Prompt> {
        let mut prompt = self.examples(true)?;
        let vars = Vars::new(conversation)
            .set("response", response)
            .set("critique_request", &p.critique)
            .set("critique", critique)
            .set("revision_request", &p.revision)
            .set("principle_id", &p.id);
        append(
            &mut prompt,
            self.templates.get(TemplateKind::Revision).render(&vars)?,
        );
        Ok(prompt)
    }

    /// The constitution's worked rounds as earlier turns of the chat.
    fn examples(&self, with_revision: bool) -> Result<Prompt> {
        let mut prompt = Prompt::new(Vec::new());
        for ex in self
            .constitution
            .examples
            .revision
            .iter()
            .take(self.few_shot)
        {
            let p = self
                .constitution
                .principle(&ex.principle)
                .with_context(|| {
                    format!(
                        "few-shot example names unknown principle `{}`",
                        ex.principle
                    )
                })?;
            let conv = [ChatMessage::user(ex.prompt.as_str())];
            let vars = Vars::new(&conv)
                .set("response", &ex.response)
                .set("critique_request", &p.critique)
                .set("critique", &ex.critique)
                .set("revision_request", &p.revision)
                .set("principle_id", &p.id);
            let (kind, answer) = match with_revision {
                false => (TemplateKind::Critique, &ex.critique),
                true => (TemplateKind::Revision, &ex.revision),
            };
            let mut shot = self.templates.get(kind).render(&vars)?;
            let reply = format!("{}{}", shot.prefill, answer);
            shot.messages.push(ChatMessage::assistant(reply));
            shot.prefill.clear();
            append(&mut prompt, shot);
        }
        Ok(prompt)
    }
}

/// Appends `next` to `prompt`, keeping only the first system message.
fn append(prompt: &mut Prompt, next: Prompt) {
    let has_system = prompt
        .messages
        .iter()
        .any(|m| m.role == crate::chat::Role::System);
    prompt.messages.extend(
        next.messages
            .into_iter()
            .filter(|m| !(has_system && m.role == crate::chat::Role::System)),
    );
    prompt.prefill = next.prefill;
}

/// Seed of one step of one prompt, independent of batching and resumption.
fn step_seed(seed: u64, id: &str, step: &str) -> u64 {
    fnv1a(&[&seed.to_le_bytes(), id.as_bytes(), step.as_bytes()])
}

/// Model text as a clean answer: trimmed, with an echoed "Critique:"/"Revision:" label removed.
fn clean(text: &str) -> String {
    let t = text.trim();
    for label in [
        "Critique:",
        "Revision:",
        "Revised response:",
        "New response:",
    ] {
        if let Some(rest) = t.strip_prefix(label) {
            return rest.trim().to_string();
        }
    }
    t.to_string()
}

struct Work {
    item: PromptItem,
    principles: Vec<Principle>,
    current: String,
    record: Option<RevisionRecord>,
}

/// Runs `cai revise`; returns the run's counters.
pub fn run(cfg: &ReviseConfig) -> Result<ReviseStats> {
    let loaded = Loaded::read_valid(&cfg.constitution)?;
    let templates = PromptSet::load(&loaded.template_overrides(), cfg.templates.as_deref())?;
    let mut items = read_prompts(&cfg.prompts)?;
    if let Some(n) = cfg.limit {
        items.truncate(n);
    }
    if cfg.batch_size == 0 {
        bail!("batch_size must be at least 1");
    }
    let backend = open_backend_with(cfg.backend, &cfg.model, &cfg.openai)?;
    let fp = run_fingerprint(cfg, &loaded, &templates, backend.as_ref())?;
    let mut output =
        StageOutput::open("revise", &cfg.out, cfg, Some(&loaded), backend.as_ref(), fp)?;
    let todo = output.pending(&items, |i| &i.id);
    let mut stats = ReviseStats {
        prompts: items.len(),
        resumed: items.len() - todo.len(),
        ..Default::default()
    };
    output.update(&stats, backend.as_ref(), false)?;
    let prompts = RevisePrompts::new(&loaded.constitution, &templates, cfg.few_shot);
    let pb = progress::bar(
        items.len() as u64,
        stats.resumed as u64,
        "revise",
        cfg.quiet,
    );
    let start = Instant::now();
    for chunk in todo.chunks(cfg.batch_size) {
        let mut work = Vec::with_capacity(chunk.len());
        for item in chunk {
            match fit_prompt(cfg, backend.as_ref(), &prompts, item)? {
                Some((item, truncated)) => {
                    stats.truncated += truncated as usize;
                    let mut rng =
                        ChaCha8Rng::seed_from_u64(step_seed(cfg.seed, &item.id, "principles"));
                    let principles = loaded
                        .constitution
                        .sample_principles(&mut rng, cfg.rounds)?
                        .into_iter()
                        .cloned()
                        .collect();
                    work.push(Work {
                        item,
                        principles,
                        current: String::new(),
                        record: None,
                    });
                }
                None => {
                    stats.skipped_long += 1;
                    progress::warn(
                        &pb,
                        &format!(
                            "{}:{}: prompt longer than {} tokens, skipped",
                            cfg.prompts.display(),
                            item.line,
                            cfg.max_prompt_tokens
                        ),
                    );
                    pb.inc(1);
                }
            }
        }
        revise_batch(cfg, backend.as_ref(), &prompts, &mut work, &mut stats, &pb)?;
        for w in work {
            match w.record {
                Some(r) => {
                    output.appender.append(&r)?;
                    stats.written += 1;
                }
                None => stats.skipped_long += 1,
            }
            pb.inc(1);
        }
        stats.seconds = start.elapsed().as_secs_f64();
        pb.set_message(format!(
            "{:.1} tok/s",
            stats.generated_tokens as f64 / stats.seconds.max(1e-9)
        ));
        output.update(&stats, backend.as_ref(), false)?;
    }
    pb.finish_and_clear();
    output.update(&stats, backend.as_ref(), true)?;
    if cfg.formats.contains(&SftFormat::Trl) {
        write_trl(cfg)?;
    }
    Ok(stats)
}

/// Checks the initial prompt's length; truncates or skips per config.
fn fit_prompt(
    cfg: &ReviseConfig,
    backend: &dyn Backend,
    prompts: &RevisePrompts,
    item: &PromptItem,
) -> Result<Option<(PromptItem, bool)>> {
    let count = |conv: &[ChatMessage]| -> Result<usize> {
        // Characters first: a prompt far beyond the limit is never rendered or tokenized.
        let chars = conv
            .iter()
            .map(|m| m.content.chars().count())
            .sum::<usize>();
        if surely_over_tokens(chars, cfg.max_prompt_tokens) {
            return Ok(usize::MAX);
        }
        backend.count_tokens(&prompts.initial(conv)?)
    };
    let n = count(&item.conversation)?;
    if n <= cfg.max_prompt_tokens {
        return Ok(Some((item.clone(), false)));
    }
    if cfg.on_long_prompt == LongPrompt::Skip {
        return Ok(None);
    }
    let mut conv = item.conversation.clone();
    while conv.len() > 1 && count(&conv)? > cfg.max_prompt_tokens {
        conv.remove(0);
    }
    while count(&conv)? > cfg.max_prompt_tokens {
        let text = &conv[0].content;
        let keep = text
            .char_indices()
            .nth(text.chars().count() * 3 / 4)
            .map_or(0, |(i, _)| i);
        if keep == 0 {
            return Ok(None);
        }
        conv[0].content = text[..keep].to_string();
    }
    Ok(Some((
        PromptItem {
            conversation: conv,
            ..item.clone()
        },
        true,
    )))
}

/// Initial answers, then each round's critiques and revisions, for a batch of prompts.
fn revise_batch(
    cfg: &ReviseConfig,
    backend: &dyn Backend,
    prompts: &RevisePrompts,
    work: &mut [Work],
    stats: &mut ReviseStats,
    pb: &indicatif::ProgressBar,
) -> Result<()> {
    let mut alive: Vec<usize> = (0..work.len()).collect();
    let step = |alive: &mut Vec<usize>,
                work: &mut [Work],
                stats: &mut ReviseStats,
                name: &str,
                params: &SamplingParams,
                build: &dyn Fn(usize, &Work) -> Result<Prompt>|
     -> Result<Vec<(usize, String)>> {
        let reqs = alive
            .iter()
            .map(|&i| {
                Ok(GenerateRequest {
                    prompt: build(i, &work[i])?,
                    params: params.clone(),
                    n: 1,
                    seed: step_seed(cfg.seed, &work[i].item.id, name),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut outs = Vec::new();
        let mut keep = Vec::new();
        for (&i, res) in alive.iter().zip(backend.generate(&reqs)) {
            match res {
                Ok(g) => {
                    stats.prompt_tokens += g.prompt_tokens;
                    let c = &g.completions[0];
                    stats.generated_tokens += c.tokens;
                    outs.push((i, clean(&c.text)));
                    keep.push(i);
                }
                Err(e) if e.downcast_ref::<ContextOverflow>().is_some() => {
                    progress::warn(
                        pb,
                        &format!(
                            "{}:{}: {name}: {e}; prompt skipped",
                            cfg.prompts.display(),
                            work[i].item.line
                        ),
                    );
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "{}:{}: {name} failed",
                        cfg.prompts.display(),
                        work[i].item.line
                    )))
                }
            }
        }
        *alive = keep;
        Ok(outs)
    };
    for (i, text) in step(&mut alive, work, stats, "initial", &cfg.answer, &|_, w| {
        prompts.initial(&w.item.conversation)
    })? {
        let w = &mut work[i];
        w.current = text.clone();
        w.record = Some(RevisionRecord {
            id: w.item.id.clone(),
            prompt: w.item.text().to_string(),
            conversation: w.item.conversation.clone(),
            initial: text.clone(),
            rounds: Vec::new(),
            final_response: text,
            flags: Vec::new(),
        });
    }
    for r in 0..cfg.rounds {
        let crit = step(
            &mut alive,
            work,
            stats,
            &format!("critique-{r}"),
            &cfg.critique,
            &|_, w| prompts.critique(&w.item.conversation, &w.current, &w.principles[r]),
        )?;
        let crit: std::collections::HashMap<usize, String> = crit.into_iter().collect();
        let revs = step(
            &mut alive,
            work,
            stats,
            &format!("revision-{r}"),
            &cfg.revision,
            &|i, w| {
                prompts.revision(
                    &w.item.conversation,
                    &w.current,
                    &w.principles[r],
                    &crit[&i],
                )
            },
        )?;
        for (i, revision) in revs {
            let w = &mut work[i];
            let record = w.record.as_mut().expect("initial answer recorded");
            if revision.is_empty() {
                record.flags.push(format!("empty-revision-{}", r + 1));
            } else {
                w.current = revision.clone();
                record.final_response = revision.clone();
            }
            record.rounds.push(Round {
                principle: w.principles[r].id.clone(),
                critique: crit[&i].clone(),
                revision,
            });
        }
    }
    // Prompts dropped mid-way (context overflow) lose their partial record.
    let alive: std::collections::HashSet<usize> = alive.into_iter().collect();
    for (i, w) in work.iter_mut().enumerate() {
        if !alive.contains(&i) {
            w.record = None;
        }
    }
    Ok(())
}

/// The run's counters, with the backend's own (requests, retries, cache) under `backend`.
/// Fingerprint of everything that shapes the records (not output paths or batch sizes).
fn run_fingerprint(
    cfg: &ReviseConfig,
    loaded: &Loaded,
    templates: &PromptSet,
    backend: &dyn Backend,
) -> Result<crate::stages::records::Fingerprint> {
    let ignore = [
        "out",
        "batch_size",
        "limit",
        "quiet",
        "formats",
        "prompts",
        "constitution",
    ];
    let templates = json!(TemplateKind::ALL
        .iter()
        .map(|k| format!("{:?}", templates.get(*k)))
        .collect::<Vec<_>>());
    crate::stages::records::records_fingerprint(
        cfg,
        &ignore,
        backend,
        &[json!(loaded.sha256), templates],
    )
}

/// `X.jsonl` -> `X.trl.jsonl` with TRL conversational SFT rows of every record in `X`.
fn write_trl(cfg: &ReviseConfig) -> Result<()> {
    let records: Vec<RevisionRecord> = jsonl::read_resumable(&cfg.out)?;
    let path = cfg.out.with_extension("trl.jsonl");
    jsonl::write_all(
        &path,
        records.iter().map(|r| {
            let mut messages = r.conversation.clone();
            messages.push(ChatMessage::assistant(r.final_response.as_str()));
            json!({ "messages": messages, "id": r.id })
        }),
    )
    .with_context(|| format!("writing {}", path.display()))
}
