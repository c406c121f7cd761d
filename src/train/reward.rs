//! The reward model of RLHF / RLAIF (Bai et al. 2022 §4.1; Lee et al. 2023 §2.2;
//! Ouyang et al. 2022 §3.5): a llama backbone whose final normed hidden state at the last
//! token of the response feeds a trainable linear head `hidden → 1`; and its held-out
//! evaluation on human labels (accuracy, calibration of σ(r_a − r_b), reward spread).
//!
//! On disk a reward model is a model folder (`config.json`, `model.safetensors`, LoRA
//! adapters in checkpoints) plus [`HEAD_FILE`] and [`MARKER_FILE`].

use super::model::{CausalLm, Llama};
use super::reward_data::{PairBatch, TokenPair};
use super::reward_loss::sigmoid;
use super::{model_from_weights, LlamaConfig, Weights};
use crate::label_metrics::calibration;
use crate::model_files::checkpoint::load_model_dir;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The head's weights: `score.weight [1, hidden]` and `score.bias [1]`.
pub const HEAD_FILE: &str = "reward_head.safetensors";
/// Small JSON file that marks a folder as a reward model.
pub const MARKER_FILE: &str = "reward_model.json";
const HEAD_WEIGHT: &str = "score.weight";
const HEAD_BIAS: &str = "score.bias";

/// Contents of [`MARKER_FILE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardModelInfo {
    /// Always `"reward_model"`.
    pub kind: String,
    /// File with the head weights.
    pub head: String,
    /// Hidden size the head reads.
    pub hidden_size: usize,
    /// Where the reward is read: `"last_token"`.
    pub pooling: String,
    /// The `--model` the backbone started from; its tokenizer is used when the folder has
    /// no `tokenizer.json`.
    pub base_model: String,
}

impl RewardModelInfo {
    /// The marker for a backbone of `hidden_size` started from `base_model`.
    pub fn new(hidden_size: usize, base_model: &str) -> Self {
        Self {
            kind: "reward_model".into(),
            head: HEAD_FILE.into(),
            hidden_size,
            pooling: "last_token".into(),
            base_model: base_model.into(),
        }
    }

    /// Reads and checks the marker of the folder `dir`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MARKER_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "{}: not a reward model folder (no {MARKER_FILE})",
                dir.display()
            )
        })?;
        let info: Self =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        ensure!(
            info.kind == "reward_model",
            "{}: kind is {:?}, not \"reward_model\"",
            path.display(),
            info.kind
        );
        Ok(info)
    }

    /// The marker as pretty JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// The scalar head; its tensors are `Var`s so they train.
#[derive(Debug, Clone)]
pub struct RewardHead {
    weight: Var,
    bias: Var,
}

impl RewardHead {
    /// A fresh head: weight ~ normal(0, 1/√hidden) from `seed`, bias 0.
    pub fn init(hidden: usize, seed: u64, device: &Device) -> Result<Self> {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_4ead);
        let std = 1.0 / (hidden as f64).sqrt();
        let values: Vec<f32> = (0..hidden)
            .map(|_| {
                let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
                (std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
            })
            .collect();
        Self::from_tensors(
            Tensor::from_vec(values, (1, hidden), device)?,
            Tensor::zeros(1, DType::F32, device)?,
        )
    }

    fn from_tensors(weight: Tensor, bias: Tensor) -> Result<Self> {
        Ok(Self {
            weight: Var::from_tensor(&weight)?,
            bias: Var::from_tensor(&bias)?,
        })
    }

    /// Reads [`HEAD_FILE`] from `dir` and checks its shape against `hidden`.
    pub fn load(dir: &Path, hidden: usize, device: &Device) -> Result<Self> {
        Self::load_file(&dir.join(HEAD_FILE), hidden, device)
    }

    /// Reads a head saved by [`RewardHead::save_file`] and checks its shape.
    pub fn load_file(path: &Path, hidden: usize, device: &Device) -> Result<Self> {
        let mut t = candle_core::safetensors::load(path, device)
            .with_context(|| format!("reading {}", path.display()))?;
        let (Some(w), Some(b)) = (t.remove(HEAD_WEIGHT), t.remove(HEAD_BIAS)) else {
            bail!("{}: needs {HEAD_WEIGHT} and {HEAD_BIAS}", path.display());
        };
        ensure!(
            w.dims() == [1, hidden] && b.dims() == [1],
            "{}: head shapes {:?}/{:?} do not fit hidden size {hidden}",
            path.display(),
            w.dims(),
            b.dims()
        );
        Self::from_tensors(w.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?)
    }

    /// Writes the head to `dir/HEAD_FILE`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_file(&dir.join(HEAD_FILE))
    }

    /// Writes the head to the safetensors file `path`.
    pub fn save_file(&self, path: &Path) -> Result<()> {
        let tensors: std::collections::HashMap<String, Tensor> = self
            .vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().detach()))
            .collect();
        candle_core::safetensors::save(&tensors, path)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The head's variables by name (for the optimizer).
    pub fn vars(&self) -> Vec<(String, Var)> {
        vec![
            (HEAD_BIAS.to_string(), self.bias.clone()),
            (HEAD_WEIGHT.to_string(), self.weight.clone()),
        ]
    }

    /// Rewards `[rows]` from the hidden states `[rows, hidden]`.
    /// Half-precision hidden states are widened to f32 first.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let hidden = &super::lm_head::upcast(hidden)?;
        let w = self.weight.as_tensor().to_dtype(hidden.dtype())?;
        let b = self.bias.as_tensor().to_dtype(hidden.dtype())?;
        Ok(hidden.matmul(&w.t()?)?.broadcast_add(&b)?.squeeze(1)?)
    }
}

/// Rewards of every row of `batch`: the backbone's final hidden state at the row's last
/// real token, through the head. Returns `[rows]` in f32.
pub fn batch_rewards(model: &Llama, head: &RewardHead, batch: &PairBatch) -> Result<Tensor> {
    let hidden = model.forward_hidden(&batch.input_ids, Some(&batch.attention_mask))?;
    let (b, t, d) = hidden.dims3()?;
    let last = hidden
        .reshape((b * t, d))?
        .index_select(&batch.last_positions, 0)?;
    Ok(head.forward(&last)?.to_dtype(DType::F32)?)
}

/// A trained reward model for scoring.
pub struct RewardModel {
    /// The backbone (LoRA merged).
    pub model: Llama,
    /// The head.
    pub head: RewardHead,
    /// The folder's marker.
    pub info: RewardModelInfo,
}

impl RewardModel {
    /// Loads a reward model folder (a final model or a training checkpoint).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let info = RewardModelInfo::read(dir)?;
        let (cfg, weights): (LlamaConfig, Weights) = load_model_dir(dir, DType::F32, device)?;
        ensure!(
            cfg.hidden_size == info.hidden_size,
            "{}: hidden size {} but the marker says {}",
            dir.display(),
            cfg.hidden_size,
            info.hidden_size
        );
        let head = RewardHead::load(dir, cfg.hidden_size, device)?;
        Ok(Self {
            model: model_from_weights(&cfg, &weights)?,
            head,
            info,
        })
    }

    /// Rewards of token sequences, `batch_size` at a time.
    pub fn score(&self, seqs: &[Vec<u32>], batch_size: usize) -> Result<Vec<f64>> {
        score_sequences(&self.model, &self.head, seqs, batch_size)
    }
}

/// Rewards of token sequences, `batch_size` at a time, without gradients.
pub fn score_sequences(
    model: &Llama,
    head: &RewardHead,
    seqs: &[Vec<u32>],
    batch_size: usize,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(batch_size.max(1)) {
        let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
        let batch = PairBatch::from_sequences(&refs, model.device())?;
        let r = batch_rewards(model, head, &batch)?.detach();
        out.extend(r.to_vec1::<f32>()?.into_iter().map(f64::from));
    }
    Ok(out)
}

/// Mean and standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub std: f64,
}

fn spread(xs: &[f64]) -> Spread {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    Spread {
        mean,
        std: var.sqrt(),
    }
}

/// Held-out metrics of a reward model on labelled pairs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RewardEval {
    /// Pairs scored.
    pub pairs: usize,
    /// Pairs with a non-tie label (those counted in `accuracy`).
    pub decided: usize,
    /// Fraction of decided pairs with r_chosen > r_rejected (a tie counts ½).
    pub accuracy: f64,
    /// Expected calibration error of σ(r_a − r_b) against the label P(a better).
    pub ece: Option<f64>,
    /// Mean pairwise loss (soft cross-entropy, no margin, unweighted).
    pub loss: f64,
    /// Rewards of the chosen responses.
    pub chosen: Spread,
    /// Rewards of the rejected responses.
    pub rejected: Spread,
    /// Rewards `(chosen, rejected)` of the decided pairs, for histograms.
    #[serde(skip)]
    pub rewards: Vec<(f64, f64)>,
}

/// Whether the reward model ranks a pair as its label does: 1 when the chosen response has
/// the higher reward, ½ on a reward tie, 0 otherwise; `None` for a tie label (p = ½), which
/// no accuracy counts.
pub fn pair_correct(r_a: f64, r_b: f64, p_a: f64) -> Option<f64> {
    if p_a == 0.5 {
        return None;
    }
    let (chosen, rejected) = if p_a > 0.5 { (r_a, r_b) } else { (r_b, r_a) };
    Some(if chosen > rejected {
        1.0
    } else if chosen == rejected {
        0.5
    } else {
        0.0
    })
}

/// Metrics from rewards `(r_a, r_b)` and labels `p_a`, with `bins` calibration bins.
pub fn eval_metrics(rewards: &[(f64, f64)], labels: &[f64], bins: usize) -> RewardEval {
    let mut decided = Vec::new();
    let mut correct = 0.0;
    let mut loss = 0.0;
    let mut probs = Vec::with_capacity(rewards.len());
    for (&(ra, rb), &p) in rewards.iter().zip(labels) {
        loss += super::reward_loss::pair_loss(ra, rb, p, 0.0);
        probs.push(sigmoid(ra - rb));
        if let Some(score) = pair_correct(ra, rb, p) {
            correct += score;
            decided.push(if p > 0.5 { (ra, rb) } else { (rb, ra) });
        }
    }
    let chosen: Vec<f64> = decided.iter().map(|x| x.0).collect();
    let rejected: Vec<f64> = decided.iter().map(|x| x.1).collect();
    RewardEval {
        pairs: rewards.len(),
        decided: decided.len(),
        accuracy: correct / decided.len().max(1) as f64,
        ece: calibration(&probs, labels, bins).ece,
        loss: loss / rewards.len().max(1) as f64,
        chosen: spread(&chosen),
        rejected: spread(&rejected),
        rewards: decided,
    }
}

/// Scores every pair of `pairs` and computes [`eval_metrics`].
pub fn evaluate_pairs(
    model: &Llama,
    head: &RewardHead,
    pairs: &[TokenPair],
    batch_size: usize,
    bins: usize,
) -> Result<RewardEval> {
    let mut rewards = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch_size.max(1)) {
        let refs: Vec<&TokenPair> = chunk.iter().collect();
        let batch = PairBatch::new(&refs, model.device())?;
        let r = batch_rewards(model, head, &batch)?
            .detach()
            .to_vec1::<f32>()?;
        let n = chunk.len();
        rewards.extend((0..n).map(|i| (f64::from(r[i]), f64::from(r[n + i]))));
    }
    let labels: Vec<f64> = pairs.iter().map(|p| p.p_a).collect();
    Ok(eval_metrics(&rewards, &labels, bins))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_metrics_match_hand_values() {
        // Pair 1: a chosen, r 2 vs 0 → correct. Pair 2: b chosen (p 0), r 1 vs 0 → wrong.
        // Pair 3: a tie label, not counted in accuracy. Accuracy = 1/2.
        let m = eval_metrics(&[(2.0, 0.0), (1.0, 0.0), (0.0, 0.0)], &[1.0, 0.0, 0.5], 2);
        assert_eq!((m.pairs, m.decided), (3, 2));
        assert!((m.accuracy - 0.5).abs() < 1e-12);
        // Chosen rewards 2 and 0 → mean 1, std 1; rejected 0 and 1 → mean ½, std ½.
        assert_eq!(
            m.chosen,
            Spread {
                mean: 1.0,
                std: 1.0
            }
        );
        assert_eq!(
            m.rejected,
            Spread {
                mean: 0.5,
                std: 0.5
            }
        );
        // σ(2) = 0.8808, σ(1) = 0.7311 fall in bin [0.5, 1] with labels 1 and 0; σ(0) = 0.5
        // too (the bins are [0, .5) and [.5, 1]) with label 0.5. Mean pred =
        // (0.880797 + 0.731059 + 0.5)/3 = 0.703952, mean label 0.5 → ECE = 0.203952.
        assert!((m.ece.unwrap() - 0.203_952).abs() < 1e-5);
        // Loss: −ln σ(2) = 0.126928; −ln σ(−1) = 1.313262; ln 2 = 0.693147 → mean 0.711112.
        assert!((m.loss - 0.711_112).abs() < 1e-5);
    }
}
