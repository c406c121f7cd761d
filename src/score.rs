//! `cai score`: rewards from a trained reward model (Bai et al. 2022 §4.1) for preference
//! pairs (`r_a`, `r_b`, `p_a = σ(r_a − r_b)`) or single responses (`reward`), as JSONL.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::Serialize;
use serde_json::Value;

use crate::chat::ChatMessage;
use crate::cli_rm::ScoreArgs;
use crate::inputs::messages_of;
use crate::jsonl;
use crate::llm::local::ChatTokenizer;
use crate::pairs::read_pairs;
use crate::train::reward::RewardModel;
use crate::train::reward_loss::sigmoid;

/// Output row of a scored pair.
#[derive(Debug, Serialize)]
struct PairScore {
    id: String,
    line: usize,
    r_a: f64,
    r_b: f64,
    p_a: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    human_p_a: Option<f64>,
}

/// Output row of a scored response.
#[derive(Debug, Serialize)]
struct ResponseScore {
    line: usize,
    reward: f64,
}

/// What `cai score` did.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreSummary {
    /// Rows written.
    pub rows: usize,
    /// Accuracy on rows with a non-tie human label, if any.
    pub accuracy: Option<f64>,
}

/// The tokenizer of a reward-model folder: its own `tokenizer.json`, else its base model's.
fn tokenizer_of(rm: &RewardModel, dir: &Path) -> Result<ChatTokenizer> {
    if dir.join("tokenizer.json").is_file() {
        ChatTokenizer::from_folder(dir)
    } else {
        ChatTokenizer::open(&rm.info.base_model)
            .with_context(|| format!("opening the base model {}", rm.info.base_model))
    }
}

/// Keeps the last `max_len` tokens, where the reward is read.
fn tail(mut ids: Vec<u32>, max_len: usize) -> Vec<u32> {
    if ids.len() > max_len {
        ids.drain(..ids.len() - max_len);
    }
    ids
}

/// A single-response row: its conversation and response.
fn single_row(v: &Value) -> Result<(Vec<ChatMessage>, String)> {
    let conversation = match (v.get("conversation"), v.get("prompt")) {
        (Some(c), _) => messages_of(c)?,
        (None, Some(Value::String(s))) => vec![ChatMessage::user(s.clone())],
        (None, Some(p)) => messages_of(p)?,
        (None, None) => bail!("needs `prompt` or `conversation`"),
    };
    let Some(Value::String(response)) = v.get("response") else {
        bail!("`response` must be a string");
    };
    Ok((conversation, response.clone()))
}

/// Runs `cai score`.
pub fn run(a: &ScoreArgs) -> Result<ScoreSummary> {
    let device = Device::cuda_if_available(0)?;
    let rm = RewardModel::load(&a.rm, &device)?;
    let tok = tokenizer_of(&rm, &a.rm)?;
    let rows = jsonl::read::<Value>(&a.pairs)?;
    let singles = rows
        .first()
        .is_some_and(|r| r.value.get("response").is_some());
    if singles {
        let mut seqs = Vec::with_capacity(rows.len());
        for row in &rows {
            let at = || format!("{}:{}", a.pairs.display(), row.number);
            let (conv, response) = single_row(&row.value).with_context(at)?;
            let (ids, _) = tok.encode_response(&conv, &response).with_context(at)?;
            seqs.push(tail(ids, a.max_len));
        }
        let rewards = rm.score(&seqs, a.batch_size)?;
        let out = rows.iter().zip(rewards).map(|(row, reward)| ResponseScore {
            line: row.number,
            reward,
        });
        jsonl::write_all(&a.out, out)?;
        return Ok(ScoreSummary {
            rows: rows.len(),
            accuracy: None,
        });
    }
    let pairs = read_pairs(&a.pairs)?;
    let mut seqs = Vec::with_capacity(2 * pairs.len());
    for p in &pairs {
        for r in [&p.response_a, &p.response_b] {
            let (ids, _) = tok
                .encode_response(&p.conversation, r)
                .with_context(|| format!("{}:{}", a.pairs.display(), p.source_line))?;
            seqs.push(tail(ids, a.max_len));
        }
    }
    let rewards = rm.score(&seqs, a.batch_size)?;
    let (mut correct, mut decided) = (0.0, 0usize);
    let out: Vec<PairScore> = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (r_a, r_b) = (rewards[2 * i], rewards[2 * i + 1]);
            if let Some(h) = p.human_p_a.filter(|h| *h != 0.5) {
                decided += 1;
                correct += f64::from(u8::from((r_a > r_b) == (h > 0.5)));
            }
            PairScore {
                id: p.id.clone(),
                line: p.source_line,
                r_a,
                r_b,
                p_a: sigmoid(r_a - r_b),
                human_p_a: p.human_p_a,
            }
        })
        .collect();
    jsonl::write_all(&a.out, &out)?;
    Ok(ScoreSummary {
        rows: out.len(),
        accuracy: (decided > 0).then(|| correct / decided as f64),
    })
}
