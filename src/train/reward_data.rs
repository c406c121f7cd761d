//! Preference data for the reward model (Bai et al. 2022 §4.1; Lee et al. 2023 §2.2):
//! AI label files (`cai label` rows, soft label `p_a`) and human pair files (HH-RLHF, TRL,
//! ours; label `human_p_a`), mixed with per-source weights, tokenized, and packed into
//! micro-batches that keep all pairs of one conversation together (the K-responses
//! grouping of Ouyang et al. 2022 §3.5, which avoids overfitting to a prompt seen in
//! several batches).

use crate::chat::ChatMessage;
use crate::model_files::ChatTokenizer;
use crate::pairs::read_ai_labels;
use crate::pairs::{content_key, read_pairs};
use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One training source: a file and the weight of its pairs in the loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// AI label file (`cai label`) or human pair file (HH-RLHF, TRL, ours).
    pub path: PathBuf,
    /// Weight of every pair of this file (default 1).
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

impl std::str::FromStr for DataSource {
    type Err = anyhow::Error;

    /// `FILE` or `FILE:WEIGHT` (a suffix that does not parse as a number is part of the path).
    fn from_str(s: &str) -> Result<Self> {
        if let Some((path, w)) = s.rsplit_once(':') {
            if let Ok(weight) = w.parse::<f64>() {
                ensure!(
                    weight.is_finite() && weight > 0.0,
                    "{s}: weight must be positive"
                );
                return Ok(Self {
                    path: path.into(),
                    weight,
                });
            }
        }
        Ok(Self {
            path: s.into(),
            weight: 1.0,
        })
    }
}

/// Which kind of data a pair came from, for the report of what was held out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PairSource {
    /// A `cai label` row (the AI labeller's soft label).
    Ai,
    /// A human pair file (HH-RLHF, TRL, ours).
    Human,
    /// A `cai revise` record (final revision preferred to the initial answer).
    Revisions,
}

/// A labelled pair in text form.
#[derive(Debug, Clone, PartialEq)]
pub struct TextPair {
    /// Context before the responses.
    pub conversation: Vec<ChatMessage>,
    pub response_a: String,
    pub response_b: String,
    /// P(response_a better).
    pub p_a: f64,
    /// Loss weight.
    pub weight: f64,
    /// `file:line` of the row, for messages.
    pub origin: String,
    /// The kind of file it came from.
    pub source: PairSource,
}

/// Whether the first row of `path` looks like a `cai label` row (has `p_a`).
fn is_ai_label_file(path: &Path) -> Result<bool> {
    let text = crate::inputs::read_text(path, crate::inputs::DATA_CAP, "data file")?;
    let Some(first) = text.lines().find(|l| !l.trim().is_empty()) else {
        bail!("{}: no rows", path.display());
    };
    let v: serde_json::Value =
        serde_json::from_str(first).with_context(|| format!("{}:1: not JSON", path.display()))?;
    Ok(v.get("p_a").is_some() && v.get("response_a").is_some())
}

/// Reads one source. AI labels keep `p_a`; human pairs keep `human_p_a` (rows without a
/// human label are skipped). With `hard`, labels become 0/1 and exact ties are dropped.
/// Returns the pairs and the number of rows skipped.
pub fn read_source(src: &DataSource, hard: bool) -> Result<(Vec<TextPair>, usize)> {
    let path = &src.path;
    let rows: Vec<(TextPair, Option<f64>)> = if is_ai_label_file(path)? {
        read_ai_labels(path)?
            .into_iter()
            .map(|line| {
                let r = line.value;
                let pair = TextPair {
                    conversation: r.conversation,
                    response_a: r.response_a,
                    response_b: r.response_b,
                    p_a: r.p_a,
                    weight: src.weight,
                    origin: format!("{}:{}", path.display(), line.number),
                    source: PairSource::Ai,
                };
                (pair, Some(r.p_a))
            })
            .collect()
    } else {
        read_pairs(path)?
            .into_iter()
            .map(|p| {
                let pair = TextPair {
                    conversation: p.conversation,
                    response_a: p.response_a,
                    response_b: p.response_b,
                    p_a: p.human_p_a.unwrap_or(0.5),
                    weight: src.weight,
                    origin: format!("{}:{}", path.display(), p.source_line),
                    source: PairSource::Human,
                };
                (pair, p.human_p_a)
            })
            .collect()
    };
    let mut skipped = 0;
    let mut out = Vec::with_capacity(rows.len());
    for (mut pair, label) in rows {
        let Some(p) = label else {
            skipped += 1;
            continue;
        };
        if hard {
            if p == 0.5 {
                skipped += 1;
                continue;
            }
            pair.p_a = if p > 0.5 { 1.0 } else { 0.0 };
        }
        out.push(pair);
    }
    Ok((out, skipped))
}

/// A tokenized pair: both full sequences (conversation + response) and the label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenPair {
    /// Tokens of conversation + response A.
    pub a: Vec<u32>,
    /// Tokens of conversation + response B.
    pub b: Vec<u32>,
    /// P(A better).
    pub p_a: f64,
    /// Loss weight.
    pub weight: f64,
    /// Key of the conversation: pairs with the same key go into the same batch.
    pub group: String,
}

/// Keeps the last `max_len` tokens: the reward is read at the last token, so the end of
/// the response must survive truncation.
fn keep_tail(mut ids: Vec<u32>, max_len: usize) -> (Vec<u32>, bool) {
    if ids.len() > max_len {
        ids.drain(..ids.len() - max_len);
        (ids, true)
    } else {
        (ids, false)
    }
}

/// Tokenizes pairs with the model's chat template; returns the pairs and how many
/// sequences were cut to `max_len`.
pub fn tokenize_pairs(
    tok: &ChatTokenizer,
    pairs: &[TextPair],
    max_len: usize,
) -> Result<(Vec<TokenPair>, usize)> {
    let mut truncated = 0;
    let mut out = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let mut enc = |r: &str| -> Result<Vec<u32>> {
            let (ids, _) = tok
                .encode_response(&pair.conversation, r)
                .with_context(|| format!("{}: tokenizing", pair.origin))?;
            let (ids, cut) = keep_tail(ids, max_len);
            truncated += usize::from(cut);
            Ok(ids)
        };
        let a = enc(&pair.response_a)?;
        let b = enc(&pair.response_b)?;
        out.push(TokenPair {
            a,
            b,
            p_a: pair.p_a,
            weight: pair.weight,
            group: content_key(&pair.conversation, "", ""),
        });
    }
    Ok((out, truncated))
}

/// The micro-batches of every epoch over items grouped by conversation
/// ([`group_batches_by`]), the current epoch's kept: a trainer's position in its data is just
/// (epoch, cursor), as its resumable state records it.
pub struct EpochBatches {
    keys: Vec<String>,
    batch_size: usize,
    seed: u64,
    epoch: usize,
    batches: Vec<Vec<usize>>,
}

impl EpochBatches {
    /// Batches of at most `batch_size` items (`keys[i]`: item `i`'s conversation), shuffled by
    /// `seed`, starting at `epoch`.
    pub fn new(keys: Vec<String>, batch_size: usize, seed: u64, epoch: usize) -> Self {
        let mut me = Self {
            keys,
            batch_size,
            seed,
            epoch,
            batches: Vec::new(),
        };
        me.batches = me.of_epoch(epoch);
        me
    }

    /// Micro-batches of the first `epochs` epochs together: the packing of whole
    /// conversations depends on their order, so the count varies from epoch to epoch.
    pub fn in_epochs(&self, epochs: usize) -> usize {
        (0..epochs)
            .map(|e| match e == self.epoch {
                true => self.batches.len(),
                false => self.of_epoch(e).len(),
            })
            .sum()
    }

    /// The micro-batch at `cursor` of `epoch`, moving both on (to the next epoch after its
    /// last batch).
    pub fn next(&mut self, epoch: &mut usize, cursor: &mut usize) -> Vec<usize> {
        if self.epoch != *epoch {
            self.batches = self.of_epoch(*epoch);
            self.epoch = *epoch;
        }
        let picked = self.batches[*cursor].clone();
        *cursor += 1;
        if *cursor == self.batches.len() {
            *epoch += 1;
            *cursor = 0;
        }
        picked
    }

    fn of_epoch(&self, epoch: usize) -> Vec<Vec<usize>> {
        let keys: Vec<&str> = self.keys.iter().map(String::as_str).collect();
        group_batches_by(&keys, self.batch_size, self.seed, epoch)
    }
}

/// Micro-batches of pair indices for `epoch`: the conversations are shuffled (seeded by
/// `seed` on the ChaCha stream `epoch`, so any epoch can be recomputed on resume), and
/// their pairs are packed in that order into batches of at most `batch_size` pairs; a
/// conversation never spans two batches (one with more pairs than `batch_size` gets a
/// batch of its own).
pub fn group_batches(
    pairs: &[TokenPair],
    batch_size: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let keys: Vec<&str> = pairs.iter().map(|p| p.group.as_str()).collect();
    group_batches_by(&keys, batch_size, seed, epoch)
}

/// [`group_batches`] for items given by their conversation keys (`keys[i]` is item `i`'s).
pub fn group_batches_by(
    keys: &[&str],
    batch_size: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut order: Vec<&str> = Vec::new();
    let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, &key) in keys.iter().enumerate() {
        groups
            .entry(key)
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64);
    order.shuffle(&mut rng);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for key in order {
        let members = &groups[key];
        if !current.is_empty() && current.len() + members.len() > batch_size.max(1) {
            batches.push(std::mem::take(&mut current));
        }
        current.extend(members);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// A padded batch of `n` pairs: rows `0..n` are the A sequences, rows `n..2n` the B ones.
#[derive(Debug, Clone)]
pub struct PairBatch {
    /// `[2n, t]` token ids (u32), right-padded with 0.
    pub input_ids: Tensor,
    /// `[2n, t]` (u32), 1 on real tokens.
    pub attention_mask: Tensor,
    /// Flat index `row * t + last` of each row's last real token (u32, `[2n]`).
    pub last_positions: Tensor,
    /// `[n]` labels P(A better) (f32).
    pub p_a: Tensor,
    /// `[n]` loss weights (f32).
    pub weight: Tensor,
    /// Number of pairs.
    pub num_pairs: usize,
    /// Real tokens in the batch.
    pub num_tokens: usize,
    /// Sum of the pairs' weights.
    pub total_weight: f64,
}

impl PairBatch {
    /// Pads the pairs to the longest sequence.
    pub fn new(pairs: &[&TokenPair], device: &Device) -> Result<Self> {
        let seqs: Vec<&[u32]> = pairs
            .iter()
            .map(|p| p.a.as_slice())
            .chain(pairs.iter().map(|p| p.b.as_slice()))
            .collect();
        let p_a: Vec<f32> = pairs.iter().map(|p| p.p_a as f32).collect();
        let weight: Vec<f32> = pairs.iter().map(|p| p.weight as f32).collect();
        let mut batch = Self::from_sequences(&seqs, device)?;
        batch.num_pairs = pairs.len();
        batch.p_a = Tensor::from_vec(p_a, pairs.len(), device)?;
        batch.total_weight = pairs.iter().map(|p| p.weight).sum();
        batch.weight = Tensor::from_vec(weight, pairs.len(), device)?;
        Ok(batch)
    }

    /// A batch of single sequences (for scoring); labels and weights are empty.
    pub fn from_sequences(seqs: &[&[u32]], device: &Device) -> Result<Self> {
        ensure!(!seqs.is_empty(), "empty batch");
        ensure!(
            seqs.iter().all(|s| !s.is_empty()),
            "empty sequence in batch"
        );
        let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let rows = seqs.len();
        let mut ids = vec![0u32; rows * t];
        let mut mask = vec![0u32; rows * t];
        let mut last = Vec::with_capacity(rows);
        for (r, s) in seqs.iter().enumerate() {
            ids[r * t..r * t + s.len()].copy_from_slice(s);
            mask[r * t..r * t + s.len()].fill(1);
            last.push((r * t + s.len() - 1) as u32);
        }
        Ok(Self {
            input_ids: Tensor::from_vec(ids, (rows, t), device)?,
            attention_mask: Tensor::from_vec(mask, (rows, t), device)?,
            last_positions: Tensor::from_vec(last, rows, device)?,
            p_a: Tensor::zeros(0, candle_core::DType::F32, device)?,
            weight: Tensor::zeros(0, candle_core::DType::F32, device)?,
            num_pairs: 0,
            num_tokens: seqs.iter().map(|s| s.len()).sum(),
            total_weight: 0.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(group: &str) -> TokenPair {
        TokenPair {
            a: vec![1, 2],
            b: vec![1, 3, 4],
            p_a: 1.0,
            weight: 1.0,
            group: group.to_string(),
        }
    }

    #[test]
    fn all_pairs_of_a_conversation_share_a_batch() {
        // Conversation "x" has 3 responses → 3 pairs; "y" has 1; "z" has 2; "w" has 5.
        let groups = ["x", "y", "x", "z", "x", "z", "w", "w", "w", "w", "w"];
        let pairs: Vec<TokenPair> = groups.iter().map(|g| pair(g)).collect();
        for epoch in 0..4 {
            let batches = group_batches(&pairs, 4, 9, epoch);
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort();
            assert_eq!(seen, (0..pairs.len()).collect::<Vec<_>>());
            for key in ["x", "y", "z", "w"] {
                let holding: Vec<usize> = (0..batches.len())
                    .filter(|&b| batches[b].iter().any(|&i| pairs[i].group == key))
                    .collect();
                assert_eq!(holding.len(), 1, "{key} split over batches {holding:?}");
            }
            // Only the 5-pair conversation may exceed the batch size.
            for b in &batches {
                assert!(b.len() <= 4 || b.iter().all(|&i| pairs[i].group == "w"));
            }
        }
        assert_eq!(
            group_batches(&pairs, 4, 9, 1),
            group_batches(&pairs, 4, 9, 1)
        );
    }

    #[test]
    fn source_spec_and_padding() -> Result<()> {
        let s: DataSource = "runs/l.jsonl:0.5".parse()?;
        assert_eq!((s.path, s.weight), (PathBuf::from("runs/l.jsonl"), 0.5));
        let s: DataSource = "c:/x.jsonl".parse()?;
        assert_eq!((s.path, s.weight), (PathBuf::from("c:/x.jsonl"), 1.0));
        assert!("a.jsonl:-1".parse::<DataSource>().is_err());
        let (p, q) = (pair("x"), pair("x"));
        let batch = PairBatch::new(&[&p, &q], &Device::Cpu)?;
        // Rows: a, a (len 2), b, b (len 3); t = 3; last index = row·3 + len − 1.
        assert_eq!(batch.last_positions.to_vec1::<u32>()?, vec![1, 4, 8, 11]);
        assert_eq!(batch.num_tokens, 10);
        assert_eq!(keep_tail(vec![1, 2, 3, 4], 3), (vec![2, 3, 4], true));
        Ok(())
    }
}
