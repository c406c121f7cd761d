//! The local backend: our own candle model on quantized GGUF weights, on the CPU (or CUDA with
//! the `cuda` feature).
//!
//! Prompts are processed in position-aligned chunks and their states kept in a small prefix
//! cache, so requests that share a beginning (few-shot examples, the two orders of a
//! comparison, several samples) compute it once. Alignment makes results independent of what
//! the cache held: chunk k always covers the same positions with the same inputs.

mod decode_attention;
#[cfg(test)]
mod decode_tests;
mod fused;
mod gguf_model;
mod hf_folder;
mod kv_cache;
mod qmatmul;

use std::path::Path;

use crate::model_files::{gguf_check, ChatTokenizer, TextTokenizer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Result};
use candle_core::Device;

pub use gguf_model::GgufModel;
pub use kv_cache::KvCache;

use crate::chat::Prompt;
use crate::llm::backend::{
    Backend, Choice, ChoiceRequest, Completion, ContextOverflow, FinishReason, GenerateRequest,
    Generation,
};
use crate::manifest::ModelInfo;
use crate::sampling::Sampler;
use gguf_model::{last_row, log_softmax, log_softmax_row};

/// Prompt positions are computed in chunks aligned to multiples of this.
const CHUNK: usize = 128;
/// How many prompt states the prefix cache keeps.
const PREFIX_SLOTS: usize = 8;

/// Most sequences advanced by one batched decoding step.
const MAX_DECODE_BATCH: usize = 32;

/// One sample being generated.
struct Sequence {
    request: usize,
    sampler: Sampler,
    cache: KvCache,
    logits: Vec<f32>,
    out: Vec<u32>,
    text: String,
    finish: Option<FinishReason>,
}

struct PrefixEntry {
    ids: Vec<u32>,
    cache: KvCache,
    last_logits: Vec<f32>,
}

/// `CAI_PREFIX_REUSE=0` turns the prefix cache off (to measure what it saves; results are the
/// same either way).
fn prefix_reuse_from_env() -> bool {
    std::env::var("CAI_PREFIX_REUSE").map_or(true, |v| v.trim() != "0")
}

/// Fails unless every id the tokenizer can produce has a row in the embedding table (a
/// larger table, padded as many models are, is fine): otherwise a text would fail later with
/// an error blaming the text, or an option, instead of the model file.
fn check_vocab(chat: &ChatTokenizer, model: &GgufModel, path: &Path) -> Result<()> {
    let (tokens, rows) = (chat.tokenizer.vocab_size(), model.shape.vocab);
    if tokens == 0 || tokens > rows {
        bail!(
            "{}: the tokenizer has {tokens} tokens but the embedding table {rows} rows",
            path.display()
        );
    }
    Ok(())
}

/// A GGUF model run in-process.
pub struct LocalBackend {
    info: ModelInfo,
    model: GgufModel,
    chat: ChatTokenizer,
    prefixes: Mutex<Vec<PrefixEntry>>,
    /// Whether prompt states are kept and reused across requests (on by default).
    prefix_reuse: AtomicBool,
}

impl LocalBackend {
    /// Opens a GGUF file; `name` is how the user named the model, `sha256` its weights' hash.
    pub fn open_gguf(path: &Path, name: &str, sha256: Option<String>) -> Result<Self> {
        let device = device()?;
        let (_, content) = gguf_check::open(path)?;
        let chat = ChatTokenizer::from_gguf(&content, path)?;
        let model = GgufModel::load(&content, path, &device, true)?;
        check_vocab(&chat, &model, path)?;
        Ok(Self::new(model, chat, name, sha256))
    }

    /// Opens a Hugging Face style folder (a `cai train` checkpoint, LoRA merged, or a hub
    /// model): `config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`.
    pub fn open_folder(dir: &Path, name: &str, sha256: Option<String>) -> Result<Self> {
        let device = device()?;
        let chat = ChatTokenizer::from_folder(dir)?;
        let model = GgufModel::load_hf_folder(dir, &device, true)?;
        check_vocab(&chat, &model, dir)?;
        Ok(Self::new(model, chat, name, sha256))
    }

    fn new(model: GgufModel, chat: ChatTokenizer, name: &str, sha256: Option<String>) -> Self {
        let info = ModelInfo {
            backend: "local".into(),
            name: name.to_string(),
            sha256,
            context: model.shape.context,
        };
        Self {
            info,
            model,
            chat,
            prefixes: Mutex::new(Vec::new()),
            prefix_reuse: AtomicBool::new(prefix_reuse_from_env()),
        }
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.chat.tokenizer
    }

    /// The exact text fed to the model for `prompt`.
    pub fn prompt_text(&self, prompt: &Prompt) -> Result<String> {
        self.chat.prompt_text(prompt)
    }

    /// Turns reuse of computed prompt prefixes across requests on or off, and empties the
    /// prefix cache. Off, every prompt (and every option of a choice) is computed in full: the
    /// baseline `cai bench` compares prefix reuse against. Results are the same either way.
    pub fn set_prefix_reuse(&self, on: bool) {
        self.prefix_reuse.store(on, Ordering::Relaxed);
        self.prefixes.lock().expect("prefix cache poisoned").clear();
    }

    /// Perplexity scoring of one chunk (llama-perplexity's rule): runs `chunk` from an empty
    /// cache and hands `on_nll` the negative log-likelihood of token `j + 1` at each position
    /// `j` of the second half (`len/2 .. len - 1`), in order.
    pub fn score_second_half(&self, chunk: &[u32], on_nll: &mut dyn FnMut(f64)) -> Result<()> {
        let first = chunk.len() / 2;
        if first == 0 {
            bail!("a perplexity chunk needs at least 2 tokens");
        }
        let mut cache = self.model.new_cache();
        self.model.forward(&chunk[..first], &mut cache, false)?;
        let logits = self.model.forward(&chunk[first..], &mut cache, true)?;
        for (j, &next) in chunk[first + 1..].iter().enumerate() {
            let row: Vec<f32> = logits
                .get(j)?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1()?;
            on_nll(-log_softmax(&row)[next as usize]);
        }
        Ok(())
    }

    /// Model state after `ids`: the KV cache and the logits of the next token.
    fn state_after(&self, ids: &[u32]) -> Result<(KvCache, Vec<f32>)> {
        if ids.is_empty() {
            bail!("empty prompt");
        }
        if !self.prefix_reuse.load(Ordering::Relaxed) {
            return self.compute_from(self.model.new_cache(), ids);
        }
        let (mut cache, mut logits) = {
            let slots = self.prefixes.lock().expect("prefix cache poisoned");
            let best = slots
                .iter()
                .map(|e| (common_prefix(&e.ids, ids), e))
                .max_by_key(|(n, _)| *n);
            match best {
                Some((n, e)) if n == ids.len() && n == e.ids.len() => {
                    return Ok((e.cache.clone(), e.last_logits.clone()));
                }
                Some((n, e)) if n >= CHUNK => {
                    let keep = n / CHUNK * CHUNK;
                    let keep = if keep == ids.len() {
                        keep - CHUNK
                    } else {
                        keep
                    };
                    let mut c = e.cache.clone();
                    c.truncate(keep)?;
                    (c, Vec::new())
                }
                _ => (self.model.new_cache(), Vec::new()),
            }
        };
        if cache.len() < ids.len() {
            (cache, logits) = self.compute_from(cache, ids)?;
        }
        let mut slots = self.prefixes.lock().expect("prefix cache poisoned");
        if slots.len() >= PREFIX_SLOTS {
            slots.remove(0);
        }
        slots.push(PrefixEntry {
            ids: ids.to_vec(),
            cache: cache.clone(),
            last_logits: logits.clone(),
        });
        Ok((cache, logits))
    }

    /// Runs the positions of `ids` after those already in `cache`, in aligned chunks.
    fn compute_from(&self, mut cache: KvCache, ids: &[u32]) -> Result<(KvCache, Vec<f32>)> {
        let mut logits = Vec::new();
        while cache.len() < ids.len() {
            let start = cache.len();
            let end = ((start / CHUNK + 1) * CHUNK).min(ids.len());
            let out = self.model.forward(&ids[start..end], &mut cache, false)?;
            logits = last_row(&out)?;
        }
        Ok((cache, logits))
    }

    fn check_fits(&self, prompt_tokens: usize, extra: usize) -> Result<()> {
        let needed = prompt_tokens + extra;
        if needed > self.info.context {
            return Err(ContextOverflow {
                prompt_tokens,
                needed,
                context: self.info.context,
            }
            .into());
        }
        Ok(())
    }

    /// Generates every sample of every request together: prompts are processed one by one
    /// (sharing prefixes), then all live sequences advance one token per batched step.
    fn generate_batch(&self, requests: &[GenerateRequest]) -> Vec<Result<Generation>> {
        let mut results: Vec<Result<Generation>> = Vec::with_capacity(requests.len());
        let mut seqs: Vec<Sequence> = Vec::new();
        for (r, req) in requests.iter().enumerate() {
            match self.start_request(req) {
                Ok((prompt_tokens, cache, logits)) => {
                    results.push(Ok(Generation {
                        prompt_tokens,
                        completions: Vec::with_capacity(req.n),
                    }));
                    for s in 0..req.n {
                        seqs.push(Sequence {
                            request: r,
                            sampler: Sampler::new(&req.params, req.seed.wrapping_add(s as u64)),
                            cache: cache.clone(),
                            logits: logits.clone(),
                            out: Vec::new(),
                            text: String::new(),
                            finish: None,
                        });
                    }
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if let Err(e) = self.decode_all(requests, &mut seqs) {
            let msg = format!("{e:#}");
            return requests
                .iter()
                .map(|_| Err(anyhow::anyhow!("generation failed: {msg}")))
                .collect();
        }
        for seq in seqs {
            if let Some(Ok(g)) = results.get_mut(seq.request) {
                g.completions.push(Completion {
                    text: seq.text,
                    tokens: seq.out.len(),
                    finish: seq.finish.unwrap_or(FinishReason::Length),
                });
            }
        }
        results
    }

    fn start_request(&self, req: &GenerateRequest) -> Result<(usize, KvCache, Vec<f32>)> {
        req.params.validate()?;
        let ids = self
            .chat
            .tokenizer
            .encode(&self.prompt_text(&req.prompt)?)?;
        self.check_fits(ids.len(), req.params.max_tokens)?;
        let (cache, logits) = self.state_after(&ids)?;
        Ok((ids.len(), cache, logits))
    }

    /// Samples until every sequence has finished.
    fn decode_all(&self, requests: &[GenerateRequest], seqs: &mut [Sequence]) -> Result<()> {
        loop {
            let mut live: Vec<&mut Sequence> = Vec::new();
            for seq in seqs.iter_mut().filter(|s| s.finish.is_none()) {
                let params = &requests[seq.request].params;
                if seq.out.len() >= params.max_tokens {
                    seq.finish = Some(FinishReason::Length);
                    continue;
                }
                let tok = seq.sampler.sample(&seq.logits);
                if self.chat.tokenizer.stop_ids.contains(&tok) {
                    seq.finish = Some(FinishReason::Stop);
                    continue;
                }
                seq.out.push(tok);
                seq.text = self.chat.tokenizer.decode(&seq.out)?;
                if let Some(cut) = find_stop(&seq.text, &params.stop) {
                    seq.text.truncate(cut);
                    seq.finish = Some(FinishReason::Stop);
                    continue;
                }
                // A base model (no chat template) writes the transcript on by itself: its
                // answer ends where the next human turn begins.
                if !self.chat.template.is_native() {
                    if let Some(cut) = seq.text.find(TRANSCRIPT_STOP) {
                        seq.text.truncate(cut);
                        seq.text.truncate(seq.text.trim_end().len());
                        seq.finish = Some(FinishReason::Stop);
                        continue;
                    }
                }
                if seq.out.len() >= params.max_tokens {
                    seq.finish = Some(FinishReason::Length);
                    continue;
                }
                live.push(seq);
            }
            if live.is_empty() {
                return Ok(());
            }
            for group in live.chunks_mut(MAX_DECODE_BATCH) {
                let tokens: Vec<u32> = group
                    .iter()
                    .map(|s| *s.out.last().expect("token"))
                    .collect();
                let mut caches: Vec<&mut KvCache> =
                    group.iter_mut().map(|s| &mut s.cache).collect();
                let logits = self.model.decode_batch(&tokens, &mut caches)?;
                for (j, seq) in group.iter_mut().enumerate() {
                    seq.logits = logits.get(j)?.to_vec1()?;
                }
            }
        }
    }

    /// Log-probabilities of every option as the continuation of the prompt, all scored from
    /// the same position: the shortest prefix the prompt shares with any of the options'
    /// joint tokenizations. Where BPE merges one option into the prompt's last token ("(" +
    /// "A" = "(A") but not another ("(", "B"), each scored from its own prefix would leave out
    /// the "(" term for A that B includes; from the shared position both include it.
    fn choose_one(&self, req: &ChoiceRequest) -> Result<Choice> {
        let text = self.prompt_text(&req.prompt)?;
        let ids = self.chat.tokenizer.encode(&text)?;
        let mut joints = Vec::with_capacity(req.options.len());
        for option in &req.options {
            if option.is_empty() {
                bail!("empty option string");
            }
            // Tokenize prompt and option together: BPE may merge across the boundary.
            let joint = self.chat.tokenizer.encode(&format!("{text}{option}"))?;
            self.check_fits(joint.len(), 0)?;
            joints.push(joint);
        }
        let shared = shared_start(&ids, &joints);
        if shared == 0 {
            bail!(
                "options {:?} rewrite the whole prompt when tokenized",
                req.options
            );
        }
        let (cache, logits) = self.state_after(&ids[..shared])?;
        let mut logprobs = Vec::with_capacity(joints.len());
        for joint in &joints {
            let cont = &joint[shared..];
            let mut lp = log_softmax(&logits)[cont[0] as usize];
            if cont.len() > 1 {
                let mut cache = cache.clone();
                let rows = self
                    .model
                    .forward(&cont[..cont.len() - 1], &mut cache, true)?;
                for (i, &tok) in cont[1..].iter().enumerate() {
                    lp += log_softmax_row(&rows.get(i)?)?[tok as usize];
                }
            }
            logprobs.push(lp);
        }
        Ok(Choice {
            logprobs,
            prompt_tokens: ids.len(),
        })
    }
}

/// Where the options' tokens start: the shortest prefix the prompt's tokens share with any
/// option's joint tokenization (prompt and option encoded together), and at least one token
/// before the end of every joint sequence, so each option has a token to score.
fn shared_start(prompt: &[u32], joints: &[Vec<u32>]) -> usize {
    joints
        .iter()
        .map(|j| common_prefix(prompt, j).min(j.len().saturating_sub(1)))
        .min()
        .unwrap_or(0)
}

impl Backend for LocalBackend {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn count_tokens(&self, prompt: &Prompt) -> Result<usize> {
        Ok(self
            .chat
            .tokenizer
            .encode(&self.prompt_text(prompt)?)?
            .len())
    }

    fn generate(&self, requests: &[GenerateRequest]) -> Vec<Result<Generation>> {
        self.generate_batch(requests)
    }

    fn choose(&self, requests: &[ChoiceRequest]) -> Vec<Result<Choice>> {
        requests.iter().map(|r| self.choose_one(r)).collect()
    }
}

fn device() -> Result<Device> {
    crate::device::compute_device()
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Where a base model's answer ends in the plain transcript format (see `ChatTemplate`).
const TRANSCRIPT_STOP: &str = "\nHuman:";

/// Byte offset where the earliest stop string starts, if any occurs.
fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_cut_at_earliest() {
        let stops = vec!["\nHuman:".to_string(), "END".to_string()];
        assert_eq!(find_stop("abc END x\nHuman: y", &stops), Some(4));
        assert_eq!(find_stop("abc", &stops), None);
    }

    #[test]
    fn options_share_the_shortest_start() {
        // Prompt [1, 2, 3]; option A merges into the last token ([1, 2, 9]), B does not
        // ([1, 2, 3, 4]): both are scored from position 2.
        assert_eq!(
            shared_start(&[1, 2, 3], &[vec![1, 2, 9], vec![1, 2, 3, 4]]),
            2
        );
        // An option that adds nothing still leaves one token to score.
        assert_eq!(shared_start(&[1, 2, 3], &[vec![1, 2, 3]]), 2);
    }

    #[test]
    fn prefix_length() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
    }
}
