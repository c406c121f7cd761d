//! `cai sample`: K responses per prompt from a policy model, and the pairs among them for
//! AI feedback (the comparison data of RL-CAI, Bai et al. 2022 §4.1).
//!
//! Records (one per prompt, all its responses) are appended and resumable like `cai revise`;
//! the pairs file `X.pairs.jsonl` is derived from the complete records at the end of each run,
//! so it never holds half a prompt.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::chat::ChatMessage;
use crate::hash::fnv1a;
use crate::inputs::read_prompts;
use crate::llm::openai::OpenaiConfig;
use crate::llm::{
    open_backend_with, BackendKind, ContextOverflow, GenerateRequest, Prompt, SamplingParams,
};
use crate::stages::records::StageOutput;
use crate::train::reward_text::TextRewardModel;
use crate::{jsonl, progress};

/// Everything `cai sample` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SampleConfig {
    pub prompts: PathBuf,
    pub out: PathBuf,
    pub backend: BackendKind,
    pub model: String,
    /// Server settings of `--backend openai`.
    pub openai: OpenaiConfig,
    /// Responses per prompt (1 samples responses without pairs, as `cai eval` does).
    pub k: usize,
    /// Pairs kept per prompt (drawn at random); `None` keeps all K·(K−1)/2.
    pub pairs_per_prompt: Option<usize>,
    pub sampling: SamplingParams,
    /// Best-of-N: score the K responses with this reward model folder, record their
    /// rewards and the best one's index, write `X.best.jsonl` and make no pairs.
    pub best_of_rm: Option<PathBuf>,
    pub seed: u64,
    pub batch_size: usize,
    pub limit: Option<usize>,
    pub quiet: bool,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            prompts: PathBuf::from("data/sample-prompts.jsonl"),
            out: PathBuf::from("runs/samples.jsonl"),
            backend: BackendKind::Local,
            model: "default".into(),
            openai: OpenaiConfig::default(),
            k: 2,
            pairs_per_prompt: None,
            sampling: SamplingParams {
                temperature: 1.0,
                top_p: 0.95,
                max_tokens: 128,
                ..SamplingParams::default()
            },
            best_of_rm: None,
            seed: 0,
            batch_size: 8,
            limit: None,
            quiet: false,
        }
    }
}

/// One prompt and its sampled responses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    pub id: String,
    pub conversation: Vec<ChatMessage>,
    pub responses: Vec<String>,
    /// Index pairs (i, j) offered for labelling.
    pub pairs: Vec<(usize, usize)>,
    /// Best-of-N: the reward of each response, and the index of the highest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewards: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleStats {
    pub prompts: usize,
    pub resumed: usize,
    pub written: usize,
    pub skipped_long: usize,
    pub generated_tokens: usize,
    pub seconds: f64,
}

/// The pairs of one prompt: all of them, or `keep` drawn with a seeded shuffle.
pub fn choose_pairs(k: usize, keep: Option<usize>, seed: u64) -> Vec<(usize, usize)> {
    let mut all: Vec<(usize, usize)> = (0..k)
        .flat_map(|i| (i + 1..k).map(move |j| (i, j)))
        .collect();
    if let Some(n) = keep.filter(|&n| n < all.len()) {
        all.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        all.truncate(n);
        all.sort();
    }
    all
}

/// Runs `cai sample`.
pub fn run(cfg: &SampleConfig) -> Result<SampleStats> {
    if cfg.k == 0 {
        bail!("k must be at least 1 (2 or more to make pairs)");
    }
    let mut items = read_prompts(&cfg.prompts)?;
    if let Some(n) = cfg.limit {
        items.truncate(n);
    }
    let backend = open_backend_with(cfg.backend, &cfg.model, &cfg.openai)?;
    let rm = match &cfg.best_of_rm {
        Some(dir) => Some(TextRewardModel::open(dir, 512)?),
        None => None,
    };
    let ignore = ["out", "batch_size", "limit", "quiet", "prompts"];
    let fp = crate::stages::records::records_fingerprint(cfg, &ignore, backend.as_ref(), &[])?;
    let mut output = StageOutput::open("sample", &cfg.out, cfg, None, backend.as_ref(), fp)?;
    let todo = output.pending(&items, |i| &i.id);
    let mut stats = SampleStats {
        prompts: items.len(),
        resumed: items.len() - todo.len(),
        ..Default::default()
    };
    let pb = progress::bar(
        items.len() as u64,
        stats.resumed as u64,
        "sample",
        cfg.quiet,
    );
    let start = Instant::now();
    for chunk in todo.chunks(cfg.batch_size.max(1)) {
        let reqs: Vec<GenerateRequest> = chunk
            .iter()
            .map(|item| GenerateRequest {
                prompt: Prompt::new(item.conversation.clone()),
                params: cfg.sampling.clone(),
                n: cfg.k,
                seed: fnv1a(&[&cfg.seed.to_le_bytes(), item.id.as_bytes()]),
            })
            .collect();
        for (item, res) in chunk.iter().zip(backend.generate(&reqs)) {
            match res {
                Ok(g) => {
                    stats.generated_tokens += g.completions.iter().map(|c| c.tokens).sum::<usize>();
                    let responses: Vec<String> = g
                        .completions
                        .iter()
                        .map(|c| c.text.trim().to_string())
                        .collect();
                    let mut record = SampleRecord {
                        id: item.id.clone(),
                        conversation: item.conversation.clone(),
                        pairs: choose_pairs(
                            cfg.k,
                            cfg.pairs_per_prompt,
                            fnv1a(&[&cfg.seed.to_le_bytes(), item.id.as_bytes(), b"pairs"]),
                        ),
                        responses,
                        rewards: None,
                        best: None,
                    };
                    if let Some(rm) = &rm {
                        best_of(rm, &mut record).with_context(|| {
                            format!("{}:{}: scoring", cfg.prompts.display(), item.line)
                        })?;
                    }
                    output.appender.append(&record)?;
                    stats.written += 1;
                }
                Err(e) if e.downcast_ref::<ContextOverflow>().is_some() => {
                    stats.skipped_long += 1;
                    progress::warn(
                        &pb,
                        &format!("{}:{}: {e}; skipped", cfg.prompts.display(), item.line),
                    );
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "{}:{}: sampling failed",
                        cfg.prompts.display(),
                        item.line
                    )))
                }
            }
            pb.inc(1);
        }
        stats.seconds = start.elapsed().as_secs_f64();
        output.update(&stats, backend.as_ref(), false)?;
    }
    pb.finish_and_clear();
    output.update(&stats, backend.as_ref(), true)?;
    // Best-of-N keeps the best response of each prompt instead of pairs.
    if rm.is_some() {
        write_best(cfg)?;
    } else if cfg.k >= 2 {
        write_pairs(cfg)?;
    }
    Ok(stats)
}

/// Scores every response of `record`, keeps the rewards and the best index, drops the pairs.
fn best_of(rm: &TextRewardModel, record: &mut SampleRecord) -> Result<()> {
    let items: Vec<(&[ChatMessage], &str)> = record
        .responses
        .iter()
        .map(|r| (record.conversation.as_slice(), r.as_str()))
        .collect();
    let rewards = rm.score(&items, 8)?;
    record.best = rewards
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i);
    record.rewards = Some(rewards);
    record.pairs.clear();
    Ok(())
}

/// `X.jsonl` -> `X.best.jsonl`: the best response of each prompt with its reward (rows that
/// `cai score` and `cai train sft` read).
fn write_best(cfg: &SampleConfig) -> Result<()> {
    let records: Vec<SampleRecord> = jsonl::read_resumable(&cfg.out)?;
    let rows = records.iter().filter_map(|r| {
        let best = r.best?;
        Some(json!({
            "id": r.id,
            "conversation": r.conversation,
            "messages": r.conversation.iter().cloned()
                .chain([ChatMessage::assistant(r.responses[best].as_str())])
                .collect::<Vec<_>>(),
            "response": r.responses[best],
            "reward": r.rewards.as_ref().map(|w| w[best]),
        }))
    });
    jsonl::write_all(&cfg.out.with_extension("best.jsonl"), rows)
}

/// `X.jsonl` -> `X.pairs.jsonl`: rows `cai label` reads (conversation, response_a, response_b).
fn write_pairs(cfg: &SampleConfig) -> Result<()> {
    let records: Vec<SampleRecord> = jsonl::read_resumable(&cfg.out)?;
    let path = cfg.out.with_extension("pairs.jsonl");
    let rows = records.iter().flat_map(|r| {
        r.pairs.iter().map(move |&(i, j)| {
            json!({
                "id": format!("{}-{i}-{j}", r.id),
                "conversation": r.conversation,
                "response_a": r.responses[i],
                "response_b": r.responses[j],
            })
        })
    });
    jsonl::write_all(&path, rows).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_pairs_or_a_seeded_subset() {
        assert_eq!(choose_pairs(3, None, 0), vec![(0, 1), (0, 2), (1, 2)]);
        assert_eq!(choose_pairs(4, None, 0).len(), 6);
        let some = choose_pairs(4, Some(2), 9);
        assert_eq!(some.len(), 2);
        assert_eq!(some, choose_pairs(4, Some(2), 9));
        assert_eq!(choose_pairs(3, Some(10), 0).len(), 3);
    }
}
