//! `cai bench`: speed of the local backend on one model file, measured in one run — prompt
//! processing, generation (batch 1 and batched), multiple-choice labelling with and without
//! prefix reuse, training forward+backward, peak memory — with ratios against llama.cpp's
//! `llama-bench` / `llama-batched-bench` on the same GGUF when that peer is installed.
//! A benchmark, never a timed test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::llm::local::{GgufModel, LocalBackend};
use crate::llm::BackendKind;
use crate::model_files::locate::{ModelSpec, DEFAULT_MODEL_FILE};
use crate::stages::label::LabelConfig;

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
    /// Preference pairs (JSONL) labelled in the labelling test.
    pub pairs: PathBuf,
    /// How many pairs of `pairs` to label (0 skips the test).
    pub label_pairs: usize,
    /// Training steps measured (batch 2 × 128 tokens; 0 skips the test).
    pub train_steps: usize,
    /// Also measure with quantized kernels only (no f32 weight copies).
    pub compare_quantized: bool,
    /// Folder with llama.cpp's `llama-bench`; `None` looks in the default place.
    pub peer_bin: Option<PathBuf>,
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
            // Shipped in the repository, so `cai bench` runs in a fresh clone.
            pairs: PathBuf::from("data/sample-pairs.jsonl"),
            label_pairs: 8,
            train_steps: 2,
            compare_quantized: false,
            peer_bin: None,
            json: None,
        }
    }
}

/// One measured figure, with llama.cpp's counterpart when there is one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// llama.cpp's figure for the same test, when measured.
    pub peer: Option<f64>,
    /// What `peer` is, when it is not the same test (e.g. "llama.cpp tg64 batch 1").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_note: Option<String>,
}

impl Figure {
    fn new(name: impl Into<String>, value: f64, unit: &str) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.into(),
            peer: None,
            peer_note: None,
        }
    }

    /// cai / peer.
    pub fn ratio(&self) -> Option<f64> {
        self.peer.filter(|p| *p > 0.0).map(|p| self.value / p)
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub model: PathBuf,
    pub figures: Vec<Figure>,
    /// The peer's bin folder, or why there is no peer figure.
    pub peer: String,
    /// 1-minute load average at the start and at the end of the run.
    pub load: (f64, f64),
}

fn gguf_path(model: &str) -> Result<PathBuf> {
    match ModelSpec::resolve(model)? {
        ModelSpec::GgufFile(p) => Ok(p),
        ModelSpec::Folder(d) => Ok(d.join(DEFAULT_MODEL_FILE)),
    }
}

fn load_model(path: &Path, dense: bool) -> Result<GgufModel> {
    let (_, content) = crate::model_files::gguf_check::open(path)?;
    GgufModel::load(&content, path, &candle_core::Device::Cpu, dense)
}

/// Prompt processing, batch-1 and batched generation of `model`.
fn measure(model: &GgufModel, cfg: &BenchConfig, label: &str) -> Result<Vec<Figure>> {
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
        Figure::new(format!("pp{} {label}", cfg.prompt_tokens), pp, "tok/s"),
        Figure::new(format!("tg{} {label}", cfg.gen_tokens), tg, "tok/s"),
    ];
    for &b in &cfg.batches {
        figures.push(Figure::new(
            format!("tg{} x{b} {label}", cfg.gen_tokens),
            batched(model, b, cfg)?,
            "tok/s",
        ));
    }
    Ok(figures)
}

/// Aggregate generation rate of `b` sequences decoded together (32-token prompts each).
fn batched(model: &GgufModel, b: usize, cfg: &BenchConfig) -> Result<f64> {
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

/// Labels/s (a label = one pair, both orders, the default settings of `cai label`: direct
/// mode, calibrated, the default constitution) with and without prefix reuse, through the code
/// `cai label` runs; both runs must write the same labels.
fn labelling(path: &Path, cfg: &BenchConfig) -> Result<Vec<Figure>> {
    let dir = std::env::temp_dir().join(format!("cai-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = labelling_in(&dir, path, cfg);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn labelling_in(dir: &Path, path: &Path, cfg: &BenchConfig) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let mut outputs = Vec::new();
    for (reuse, name) in [
        (true, "labels prefix-reuse"),
        (false, "labels full-prompts"),
    ] {
        let label = LabelConfig {
            pairs: cfg.pairs.clone(),
            out: dir.join(format!("{}.jsonl", name.replace(' ', "-"))),
            backend: BackendKind::Local,
            model: cfg.model.clone(),
            limit: Some(cfg.label_pairs),
            quiet: true,
            ..LabelConfig::default()
        };
        let stats = crate::stages::label::run_with(&label, || {
            let backend = LocalBackend::open_gguf(path, &cfg.model, None)?;
            backend.set_prefix_reuse(reuse);
            Ok(Box::new(backend))
        })
        .context("the labelling test (runs `cai label` with its defaults)")?;
        figures.push(Figure::new(
            name,
            stats.written as f64 / stats.seconds.max(1e-9),
            "labels/s",
        ));
        outputs.push(std::fs::read(&label.out)?);
    }
    if outputs[0] != outputs[1] {
        bail!("labelling with and without prefix reuse gave different labels");
    }
    Ok(figures)
}

/// Training tokens/s (forward + backward + AdamW step in f32) and the peak resident memory
/// while training, for full fine-tuning, the top 2 layers and LoRA (rank 8, all projections).
fn training(path: &Path, steps: usize) -> Result<Vec<Figure>> {
    use crate::train::{LoraConfig, Trainable};
    let lora = LoraConfig {
        targets: vec!["all".into()],
        ..LoraConfig::default()
    };
    let mut figures = Vec::new();
    for (label, trainable) in [
        ("", Trainable::All),
        (" top-layers 2", Trainable::TopLayers(2)),
        (" lora", Trainable::Lora(lora)),
    ] {
        reset_peak_rss();
        let tokens_per_s = training_run(path, steps, trainable)?;
        figures.push(Figure::new(
            format!("train fwd+bwd{label}"),
            tokens_per_s,
            "tok/s",
        ));
        figures.push(Figure::new(
            format!(
                "train peak memory{}",
                if label.is_empty() { " full" } else { label }
            ),
            peak_rss_mib(),
            "MiB",
        ));
    }
    Ok(figures)
}

/// Tokens/s of `steps` SFT steps (2 × 128 tokens) after a warm-up step.
fn training_run(path: &Path, steps: usize, trainable: crate::train::Trainable) -> Result<f64> {
    use crate::train::{load_gguf, ScheduleKind, SftConfig, SftTrainer, TokenizedExample};
    let (cfg, weights) = load_gguf(path, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let (batch, len) = (2, 128);
    let data: Vec<TokenizedExample> = (0..batch * (steps + 1))
        .map(|e| TokenizedExample {
            tokens: (0..len)
                .map(|i| 2 + ((e * 997 + i * 7919) % (cfg.vocab_size - 2)) as u32)
                .collect(),
            loss_mask: (0..len).map(|i| i >= 32).collect(),
        })
        .collect();
    let sft = SftConfig {
        lr: 1e-5,
        warmup_steps: 0,
        schedule: ScheduleKind::Constant,
        max_steps: Some(steps + 1),
        batch_size: batch,
        grad_accum: 1,
        trainable,
        ..SftConfig::default()
    };
    let mut trainer = SftTrainer::new(&cfg, weights, &data, &[], sft)?;
    trainer.train_step()?; // warm-up
    let (mut tokens, t) = (0usize, Instant::now());
    for _ in 0..steps {
        tokens += trainer.train_step()?.tokens;
    }
    Ok(tokens as f64 / t.elapsed().as_secs_f64())
}

/// Restarts the count of [`peak_rss_mib`] from the current resident size (Linux's
/// `clear_refs` 5); elsewhere the peak stays that of the whole process.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory of this process so far (VmHWM), MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Where the peer's binaries are, if installed.
fn peer_dir(cfg: &BenchConfig) -> Option<PathBuf> {
    let dir = cfg.peer_bin.clone().or_else(|| {
        std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache/cai-peer/llama.cpp/build/bin"))
    })?;
    dir.join("llama-bench").is_file().then_some(dir)
}

const PEER_MISSING: &str = "llama.cpp peer not installed: build llama.cpp (`cmake -B build && \
    cmake --build build`, see docs/performance.md) and pass `--peer-bin DIR` (its build/bin) \
    unless it is ~/.cache/cai-peer/llama.cpp/build/bin";

fn run_peer(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// llama.cpp's prompt and batch-1 generation rates, and (batch, rate) of batched generation.
type PeerFigures = (f64, f64, Vec<(usize, f64)>);

/// llama.cpp's pp/tg (batch 1) and batched generation rates.
fn peer_figures(bin: &Path, model: &Path, cfg: &BenchConfig) -> Result<PeerFigures> {
    let json = run_peer(Command::new(bin.join("llama-bench")).args([
        "-m".as_ref(),
        model.as_os_str(),
        "-p".as_ref(),
        cfg.prompt_tokens.to_string().as_ref(),
        "-n".as_ref(),
        cfg.gen_tokens.to_string().as_ref(),
        "-t".as_ref(),
        "2".as_ref(),
        "-o".as_ref(),
        "json".as_ref(),
    ]))?;
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&json).context("cannot parse llama-bench's JSON")?;
    let rate = |prompt: bool| {
        rows.iter()
            .find(|r| (r["n_prompt"].as_u64().unwrap_or(0) > 0) == prompt)
            .and_then(|r| r["avg_ts"].as_f64())
            .context("llama-bench printed no such test")
    };
    let (pp, tg) = (rate(true)?, rate(false)?);
    let mut batched = Vec::new();
    if !cfg.batches.is_empty() {
        let npl: Vec<String> = cfg.batches.iter().map(|b| b.to_string()).collect();
        let ctx = cfg.batches.iter().max().unwrap_or(&1) * (32 + cfg.gen_tokens) + 64;
        let out = run_peer(Command::new(bin.join("llama-batched-bench")).args([
            "-m".as_ref(),
            model.as_os_str(),
            "-c".as_ref(),
            ctx.to_string().as_ref(),
            "-npp".as_ref(),
            "32".as_ref(),
            "-ntg".as_ref(),
            cfg.gen_tokens.to_string().as_ref(),
            "-npl".as_ref(),
            npl.join(",").as_ref(),
            "-t".as_ref(),
            "2".as_ref(),
            "-tb".as_ref(),
            "2".as_ref(),
            "--output-format".as_ref(),
            "jsonl".as_ref(),
        ]))?;
        for line in out.lines().filter(|l| l.starts_with('{')) {
            let v: serde_json::Value = serde_json::from_str(line)?;
            if let (Some(pl), Some(s)) = (v["pl"].as_u64(), v["speed_tg"].as_f64()) {
                batched.push((pl as usize, s));
            }
        }
    }
    Ok((pp, tg, batched))
}

/// Runs the benchmark and returns its figures.
pub fn run(cfg: &BenchConfig) -> Result<BenchReport> {
    let path = gguf_path(&cfg.model)?;
    let load_start = load_average();
    let mut figures = {
        let model = load_model(&path, true)?;
        measure(&model, cfg, "cai")?
    };
    if cfg.label_pairs > 0 {
        figures.extend(labelling(&path, cfg)?);
    }
    if cfg.compare_quantized {
        let model = load_model(&path, false)?;
        figures.extend(measure(&model, cfg, "cai-quantized-only")?);
    }
    if cfg.train_steps > 0 {
        figures.extend(training(&path, cfg.train_steps)?);
    }
    figures.push(Figure::new("peak memory (VmHWM)", peak_rss_mib(), "MiB"));
    let peer = match peer_dir(cfg) {
        None => PEER_MISSING.to_string(),
        Some(bin) => match peer_figures(&bin, &path, cfg) {
            Err(e) => format!("llama.cpp peer in {} failed: {e:#}", bin.display()),
            Ok((pp, tg, batched)) => {
                attach_peer(&mut figures, cfg, pp, tg, &batched);
                bin.display().to_string()
            }
        },
    };
    let report = BenchReport {
        model: path,
        figures,
        peer,
        load: (load_start, load_average()),
    };
    if let Some(json) = &cfg.json {
        std::fs::write(json, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", json.display()))?;
    }
    Ok(report)
}

/// Puts llama.cpp's figures next to ours: batched generation is compared with the peer's
/// batch-1 rate (the target: a labeller's throughput), the peer's own batched rate shown too.
fn attach_peer(
    figures: &mut [Figure],
    cfg: &BenchConfig,
    pp: f64,
    tg: f64,
    batched: &[(usize, f64)],
) {
    for f in figures.iter_mut().filter(|f| f.name.ends_with(" cai")) {
        if f.name.starts_with(&format!("pp{} ", cfg.prompt_tokens)) {
            f.peer = Some(pp);
        } else if f.name == format!("tg{} cai", cfg.gen_tokens) {
            f.peer = Some(tg);
        } else if let Some(b) = f
            .name
            .split_whitespace()
            .find_map(|w| w.strip_prefix('x')?.parse::<usize>().ok())
        {
            f.peer = Some(tg);
            let own = batched.iter().find(|(n, _)| *n == b).map(|(_, s)| *s);
            f.peer_note = Some(match own {
                Some(s) => format!("vs peer batch 1; peer x{b}: {s:.1} tok/s"),
                None => "vs peer batch 1".into(),
            });
        }
    }
}

/// The report as an aligned text table.
pub fn render(report: &BenchReport) -> String {
    let mut out = format!(
        "{:<28} {:>10} {:<9} {:>10} {:>9}  note\n",
        "test", "cai", "unit", "llama.cpp", "cai/peer"
    );
    for f in &report.figures {
        let peer = f.peer.map_or("-".into(), |p| format!("{p:.1}"));
        let ratio = f.ratio().map_or("-".into(), |r| format!("{r:.2}x"));
        // Small rates (labels/s) keep three significant digits.
        let digits = if f.value.abs() < 10.0 { 3 } else { 1 };
        out.push_str(&format!(
            "{:<28} {:>10.digits$} {:<9} {:>10} {:>9}  {}\n",
            f.name,
            f.value,
            f.unit,
            peer,
            ratio,
            f.peer_note.as_deref().unwrap_or("")
        ));
    }
    let find = |n: &str| report.figures.iter().find(|f| f.name == n).map(|f| f.value);
    if let (Some(a), Some(b)) = (find("labels prefix-reuse"), find("labels full-prompts")) {
        out.push_str(&format!(
            "prefix reuse speed-up on labelling: {:.2}x\n",
            a / b
        ));
    }
    out.push_str(&format!(
        "load average {:.2} -> {:.2}; peer: {}\n",
        report.load.0, report.load.1, report.peer
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_defaults_need_only_a_clone() {
        // The default pairs must ship in the clone (data/), never come from a folder beside
        // it, and hold at least `label_pairs` pairs (data/sample-pairs.jsonl: 12 lines, 8
        // labelled).
        let cfg = BenchConfig::default();
        assert!(!cfg.pairs.starts_with(".."), "{}", cfg.pairs.display());
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(&cfg.pairs);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().count() >= cfg.label_pairs);
        assert!(!PEER_MISSING.contains("shared"));
    }

    #[test]
    fn peer_figures_attach_to_matching_tests() {
        let cfg = BenchConfig::default();
        let mut figs = vec![
            Figure::new("pp256 cai", 200.0, "tok/s"),
            Figure::new("tg64 cai", 40.0, "tok/s"),
            Figure::new("tg64 x8 cai", 160.0, "tok/s"),
            Figure::new("labels prefix-reuse", 1.0, "labels/s"),
        ];
        attach_peer(&mut figs, &cfg, 100.0, 80.0, &[(8, 120.0)]);
        assert_eq!(figs[0].ratio(), Some(2.0));
        assert_eq!(figs[1].ratio(), Some(0.5));
        assert_eq!(figs[2].ratio(), Some(2.0));
        assert!(figs[2].peer_note.as_deref().unwrap().contains("120.0"));
        assert_eq!(figs[3].peer, None);
        let table = render(&BenchReport {
            model: "m.gguf".into(),
            figures: figs,
            peer: "bin".into(),
            load: (1.0, 1.0),
        });
        assert!(table.contains("2.00x"), "{table}");
    }
}
