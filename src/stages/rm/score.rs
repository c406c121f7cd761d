//! `cai score`: rewards from a trained reward model (Bai et al. 2022 §4.1) for preference
//! pairs (`r_a`, `r_b`, `p_a = σ(r_a − r_b)`) or single responses (`reward`), as JSONL.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chat::ChatMessage;
use crate::inputs::messages_of;
use crate::jsonl;
use crate::pairs::read_pairs;
use crate::train::reward_loss::sigmoid;
use crate::train::reward_text::TextRewardModel;

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

/// Settings of `cai score`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreConfig {
    /// Reward model folder (`final/` of `cai train rm`, or a checkpoint).
    pub reward_model: PathBuf,
    /// Pairs (ours, HH-RLHF, TRL) or single responses (`prompt|conversation`, `response`).
    pub pairs: PathBuf,
    /// Output JSONL, one row per input row.
    pub out: PathBuf,
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// Sequences are cut to their last `max_len` tokens.
    pub max_len: usize,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            reward_model: PathBuf::new(),
            pairs: PathBuf::new(),
            out: PathBuf::new(),
            batch_size: 8,
            max_len: 1024,
        }
    }
}

/// Runs `cai score`.
pub fn run(a: &ScoreConfig) -> Result<ScoreSummary> {
    let rm = TextRewardModel::open(&a.reward_model, a.max_len)?;
    let rows = jsonl::read::<Value>(&a.pairs)?;
    let singles = rows
        .first()
        .is_some_and(|r| r.value.get("response").is_some());
    if singles {
        let parsed: Vec<(Vec<ChatMessage>, String)> = rows
            .iter()
            .map(|row| {
                single_row(&row.value)
                    .with_context(|| format!("{}:{}", a.pairs.display(), row.number))
            })
            .collect::<Result<_>>()?;
        let items: Vec<(&[ChatMessage], &str)> = parsed
            .iter()
            .map(|(c, r)| (c.as_slice(), r.as_str()))
            .collect();
        let rewards = rm.score(&items, a.batch_size)?;
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
    let items: Vec<(&[ChatMessage], &str)> = pairs
        .iter()
        .flat_map(|p| {
            [
                (p.conversation.as_slice(), p.response_a.as_str()),
                (p.conversation.as_slice(), p.response_b.as_str()),
            ]
        })
        .collect();
    let rewards = rm.score(&items, a.batch_size)?;
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
