//! `cai perplexity`: a model's perplexity on a text, computed exactly as llama.cpp's
//! `llama-perplexity` does, so any model file and quant type can be checked against it.
//!
//! The whole text is tokenized once (with the model's BOS rule) and cut into chunks of `ctx`
//! tokens; each chunk runs alone from an empty cache, its first token replaced by BOS when the
//! model adds one, and only the second half of its positions is scored: position `j` predicts
//! token `j + 1` for `j` in `ctx/2 .. ctx - 1`. PPL is the exponential of the mean negative
//! log-likelihood; its ± is llama.cpp's: the standard error of the mean NLL times PPL.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::llm::local::LocalBackend;
use crate::model_files::ModelSpec;
use crate::progress;

/// Settings of one perplexity run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerplexityConfig {
    /// `default`, a GGUF file or a model folder.
    pub model: String,
    pub file: PathBuf,
    /// Tokens per chunk.
    pub ctx: usize,
    /// At most this many chunks (all that fit when `None`).
    pub chunks: Option<usize>,
    pub quiet: bool,
}

impl Default for PerplexityConfig {
    fn default() -> Self {
        Self {
            model: "default".into(),
            file: PathBuf::new(),
            ctx: 512,
            chunks: None,
            quiet: false,
        }
    }
}

/// Running sums of the scored tokens' negative log-likelihoods.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NllSums {
    pub count: usize,
    pub nll: f64,
    pub nll2: f64,
}

impl NllSums {
    pub fn add(&mut self, nll: f64) {
        self.count += 1;
        self.nll += nll;
        self.nll2 += nll * nll;
    }

    /// exp(mean NLL).
    pub fn ppl(&self) -> f64 {
        (self.nll / self.count as f64).exp()
    }

    /// llama.cpp's error bar: √(var(NLL) / (n − 1)) · PPL.
    pub fn error(&self) -> f64 {
        let n = self.count as f64;
        let mean = self.nll / n;
        let var = self.nll2 / n - mean * mean;
        match var > 0.0 && self.count > 1 {
            true => (var / (n - 1.0)).sqrt() * self.ppl(),
            false => f64::NAN,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct PerplexityReport {
    pub tokens: usize,
    pub chunks: usize,
    pub ctx: usize,
    pub sums: NllSums,
    /// PPL after each chunk, as llama-perplexity prints them.
    pub per_chunk: Vec<f64>,
}

impl PerplexityReport {
    /// The closing line, in llama-perplexity's format.
    pub fn final_line(&self) -> String {
        format!("PPL = {:.4} +/- {:.5}", self.sums.ppl(), self.sums.error())
    }
}

/// Runs the measurement.
pub fn run(cfg: &PerplexityConfig) -> Result<PerplexityReport> {
    if cfg.ctx < 4 {
        bail!("--ctx must be at least 4 tokens (got {})", cfg.ctx);
    }
    let text = crate::inputs::read_text(&cfg.file, crate::inputs::DATA_CAP, "text file")?;
    let (backend, model_path) = match ModelSpec::resolve(&cfg.model)? {
        ModelSpec::GgufFile(p) => (LocalBackend::open_gguf(&p, &cfg.model, None)?, p),
        ModelSpec::Folder(d) => (LocalBackend::open_folder(&d, &cfg.model, None)?, d),
    };
    // As llama-perplexity: special-token literals in the text are text.
    let tokens = backend.tokenizer().encode_plain(&text)?;
    let available = tokens.len() / cfg.ctx;
    if available == 0 || tokens.len() < 2 * cfg.ctx {
        bail!(
            "{}: {} tokens; at least {} are needed for a context of {}",
            cfg.file.display(),
            tokens.len(),
            2 * cfg.ctx,
            cfg.ctx
        );
    }
    let chunks = cfg.chunks.map_or(available, |c| c.min(available));
    let bos = backend.tokenizer().bos_id;
    let pb = progress::bar(chunks as u64, 0, "perplexity chunks", cfg.quiet);
    let mut sums = NllSums::default();
    let mut per_chunk = Vec::with_capacity(chunks);
    for i in 0..chunks {
        let mut chunk = tokens[i * cfg.ctx..(i + 1) * cfg.ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        backend.score_second_half(&chunk, &mut |nll| sums.add(nll))?;
        check_finite(&sums, i, &model_path)?;
        per_chunk.push(sums.ppl());
        pb.set_message(format!("PPL {:.4}", sums.ppl()));
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(PerplexityReport {
        tokens: tokens.len(),
        chunks,
        ctx: cfg.ctx,
        sums,
        per_chunk,
    })
}

/// Fails when the running PPL is not a finite number: NaN or infinite log-likelihoods come
/// from broken weights (a crafted or corrupt model file), never from the text.
fn check_finite(sums: &NllSums, chunk: usize, model: &Path) -> Result<()> {
    if !sums.ppl().is_finite() {
        bail!(
            "{}: the perplexity is {} after chunk {} (NaN or infinite log-likelihoods): the \
             model's weights are broken",
            model.display(),
            sums.ppl(),
            chunk + 1
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perplexity_not_finite_is_an_error() {
        let mut s = NllSums::default();
        s.add(1.0);
        check_finite(&s, 0, Path::new("m.gguf")).unwrap();
        s.add(f64::NAN);
        let e = check_finite(&s, 1, Path::new("m.gguf"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "m.gguf: the perplexity is NaN after chunk 2 (NaN or infinite log-likelihoods): \
             the model's weights are broken"
        );
        let mut s = NllSums::default();
        s.add(f64::INFINITY);
        assert!(check_finite(&s, 0, Path::new("m.gguf")).is_err());
    }

    #[test]
    fn sums_give_llamacpp_ppl_and_error() {
        let mut s = NllSums::default();
        for v in [1.0, 2.0, 3.0, 2.0] {
            s.add(v);
        }
        // mean 2, var = (1 + 4 + 9 + 4)/4 − 4 = 0.5; error = √(0.5 / 3) · e².
        assert!((s.ppl() - 2f64.exp()).abs() < 1e-12);
        let want = (0.5f64 / 3.0).sqrt() * 2f64.exp();
        assert!((s.error() - want).abs() < 1e-12, "{}", s.error());
    }
}
