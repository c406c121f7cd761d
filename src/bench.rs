//! `cai bench`: inference speed of the local backend on one model file, measured in one run
//! (prompt processing, generation), with ratios against llama.cpp's `llama-bench` on the same
//! GGUF when that peer is installed. A benchmark, never a timed test.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::llm::local::GgufLlama;
use crate::llm::spec::{ModelSpec, DEFAULT_MODEL_FILE};

/// What `cai bench` measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BenchConfig {
    pub model: String,
    /// Prompt length of the prompt-processing test.
    pub prompt_tokens: usize,
    /// Tokens generated in the generation test.
    pub gen_tokens: usize,
    /// Repetitions; the best is reported.
    pub repeats: usize,
    /// Sequence counts of the batched generation test.
    pub batches: Vec<usize>,
    /// Also measure with quantized kernels only (no f32 weight copies).
    pub compare_quantized: bool,
    /// JSON output file.
    pub json: Option<PathBuf>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            model: "default".into(),
            prompt_tokens: 256,
            gen_tokens: 64,
            repeats: 2,
            batches: vec![8, 32],
            compare_quantized: true,
            json: None,
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    pub tokens_per_s: f64,
}

fn gguf_path(model: &str) -> Result<PathBuf> {
    match ModelSpec::resolve(model)? {
        ModelSpec::GgufFile(p) => Ok(p),
        ModelSpec::Folder(d) => Ok(d.join(DEFAULT_MODEL_FILE)),
    }
}

/// Prompt processing and batch-1 generation of `model` loaded with or without f32 copies.
fn measure(
    path: &std::path::Path,
    dense: bool,
    cfg: &BenchConfig,
    label: &str,
) -> Result<Vec<Figure>> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)?;
    let model = GgufLlama::load(&content, path, &candle_core::Device::Cpu, dense)?;
    let prompt: Vec<u32> = (0..cfg.prompt_tokens)
        .map(|i| 100 + (i as u32 * 7919) % 20_000)
        .collect();
    let (mut pp, mut tg) = (0f64, 0f64);
    for _ in 0..cfg.repeats.max(1) {
        let mut cache = model.new_cache();
        let t = Instant::now();
        for chunk in prompt.chunks(128) {
            model.forward(chunk, &mut cache, false)?;
        }
        pp = pp.max(prompt.len() as f64 / t.elapsed().as_secs_f64());
        let mut cache = model.new_cache();
        model.forward(&prompt[..1], &mut cache, false)?;
        let t = Instant::now();
        for i in 0..cfg.gen_tokens {
            model.forward(&[prompt[i % prompt.len()]], &mut cache, false)?;
        }
        tg = tg.max(cfg.gen_tokens as f64 / t.elapsed().as_secs_f64());
    }
    let mut figures = vec![
        Figure {
            name: format!("pp{} {label}", cfg.prompt_tokens),
            tokens_per_s: pp,
        },
        Figure {
            name: format!("tg{} {label}", cfg.gen_tokens),
            tokens_per_s: tg,
        },
    ];
    for &b in &cfg.batches {
        figures.push(Figure {
            name: format!("tg{} x{b} {label}", cfg.gen_tokens),
            tokens_per_s: batched(&model, b, cfg)?,
        });
    }
    Ok(figures)
}

/// Aggregate generation rate of `b` sequences decoded together (32-token prompts each).
fn batched(model: &GgufLlama, b: usize, cfg: &BenchConfig) -> Result<f64> {
    let mut caches: Vec<_> = (0..b).map(|_| model.new_cache()).collect();
    for (i, c) in caches.iter_mut().enumerate() {
        let prompt: Vec<u32> = (0..32)
            .map(|j| 100 + ((i * 31 + j) as u32 * 7919) % 20_000)
            .collect();
        model.forward(&prompt, c, false)?;
    }
    let tokens: Vec<u32> = (0..b as u32).map(|i| 200 + i).collect();
    let t = Instant::now();
    for _ in 0..cfg.gen_tokens {
        let mut refs: Vec<_> = caches.iter_mut().collect();
        model.decode_batch(&tokens, &mut refs)?;
    }
    Ok((b * cfg.gen_tokens) as f64 / t.elapsed().as_secs_f64())
}

/// Runs the benchmark and returns its figures.
pub fn run(cfg: &BenchConfig) -> Result<Vec<Figure>> {
    let path = gguf_path(&cfg.model)?;
    let mut figures = measure(&path, true, cfg, "cai")?;
    if cfg.compare_quantized {
        figures.extend(measure(&path, false, cfg, "cai-quantized-only")?);
    }
    if let Some(json) = &cfg.json {
        std::fs::write(json, serde_json::to_string_pretty(&figures)?)
            .with_context(|| format!("cannot write {}", json.display()))?;
    }
    Ok(figures)
}
