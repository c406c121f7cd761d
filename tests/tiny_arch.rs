//! Tiny random-weight GGUF models of every supported architecture, written here with the
//! default model's tokenizer (and llama once more with Gemma 3's SentencePiece tokenizer), and their perplexity under cai against llama.cpp's
//! `llama-perplexity` on the same files (golden numbers in `tests/data/tiny-arch-ppl.json`,
//! made by `scripts/golden-tiny-arch.sh`, so CI need not build llama.cpp).
//!
//! The weights are large enough (unit-variance block outputs, logits spread over several
//! nats) that a wrong rotary layout, norm, bias, window or activation moves the perplexity by
//! far more than the 0.05 % allowed (see `TOLERANCE`).

mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const FF: usize = 128;
const LAYERS: usize = 3;
/// Text scoring: chunks of this many tokens (the second half scored), this many chunks.
const CTX: usize = 64;
const CHUNKS: usize = 3;
/// Relative PPL difference allowed against llama.cpp. Both engines run these f32 models to
/// within 0.002 %; a wrong local-layer rope base alone moves gemma3 by 0.37 %.
const TOLERANCE: f64 = 5e-4;

/// Where a tiny model's tokenizer comes from.
#[derive(Clone, Copy)]
enum Vocab {
    /// The default model's byte-level BPE (49 152 tokens).
    SmolLm2,
    /// Gemma 3's SentencePiece (262 144 tokens).
    Gemma3,
}

/// One tiny model: its name (file `tiny-{name}.gguf`, key of the golden numbers), GGUF
/// architecture, head size and tokenizer.
struct Tiny {
    name: &'static str,
    arch: &'static str,
    head_dim: usize,
    vocab: Vocab,
}

const fn tiny(name: &'static str, arch: &'static str, head_dim: usize, vocab: Vocab) -> Tiny {
    Tiny {
        name,
        arch,
        head_dim,
        vocab,
    }
}

/// The models written: every architecture, and llama with a SentencePiece tokenizer.
const ARCHS: [Tiny; 6] = [
    tiny("llama", "llama", 16, Vocab::SmolLm2),
    tiny("llama-spm", "llama", 16, Vocab::Gemma3),
    tiny("qwen2", "qwen2", 16, Vocab::SmolLm2),
    tiny("qwen3", "qwen3", 16, Vocab::SmolLm2),
    tiny("phi3", "phi3", 16, Vocab::SmolLm2),
    tiny("gemma3", "gemma3", 32, Vocab::SmolLm2),
];

/// The model files the tokenizers come from, or `None` (test skipped) when one is missing.
struct Vocabs {
    smollm2: PathBuf,
    gemma3: PathBuf,
}

impl Vocabs {
    fn find() -> Option<Self> {
        Some(Self {
            smollm2: util::default_model()?,
            gemma3: util::model_file(&["gemma-3-270m-Q4_K_M.gguf"])?,
        })
    }

    /// Writes `t` into `dir` and returns its path.
    fn write(&self, t: &Tiny, dir: &Path) -> PathBuf {
        let path = dir.join(format!("tiny-{}.gguf", t.name));
        let from = match t.vocab {
            Vocab::SmolLm2 => &self.smollm2,
            Vocab::Gemma3 => &self.gemma3,
        };
        write_tiny(t.arch, t.head_dim, from, &path);
        path
    }
}

/// Values in [-a, a) with standard deviation `std`.
fn uniform(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    let a = std * 3f32.sqrt();
    (0..n).map(|_| rng.random_range(-a..a)).collect()
}

fn f32_tensor(values: Vec<f32>, dims: &[usize]) -> QTensor {
    let t = Tensor::from_vec(values, dims, &Device::Cpu).unwrap();
    QTensor::quantize(&t, GgmlDType::F32).unwrap()
}

/// Writes a tiny model of `arch` (head size `head_dim`) with the tokenizer of `vocab_from`.
fn write_tiny(arch: &str, head_dim: usize, vocab_from: &Path, out: &Path) {
    let mut f = std::fs::File::open(vocab_from).unwrap();
    let source = gguf_file::Content::read(&mut f).unwrap();
    let vocab = match &source.metadata["tokenizer.ggml.tokens"] {
        Value::Array(t) => t.len(),
        _ => panic!("no vocabulary in {}", vocab_from.display()),
    };
    let mut md: Vec<(String, Value)> = source
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer.") && *k != "tokenizer.chat_template")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let key = |k: &str| format!("{arch}.{k}");
    md.push(("general.architecture".into(), Value::String(arch.into())));
    md.push((
        "general.name".into(),
        Value::String("tiny random model".into()),
    ));
    for (k, v) in [
        ("context_length", 256),
        ("embedding_length", HIDDEN as u32),
        ("block_count", LAYERS as u32),
        ("feed_forward_length", FF as u32),
        ("attention.head_count", HEADS as u32),
        ("attention.head_count_kv", KV_HEADS as u32),
        ("rope.dimension_count", head_dim as u32),
        ("attention.key_length", head_dim as u32),
        ("attention.value_length", head_dim as u32),
    ] {
        md.push((key(k), Value::U32(v)));
    }
    md.push((key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)));
    md.push((key("rope.freq_base"), Value::F32(100_000.0)));
    if arch == "gemma3" {
        // Layers 0 and 2 local (a window of 20 keys, rope base 10 000), layer 1 global.
        md.push((key("attention.sliding_window"), Value::U32(20)));
        md.push((key("attention.sliding_window_pattern"), Value::U32(2)));
    }

    let mut rng = ChaCha8Rng::seed_from_u64(arch.bytes().map(u64::from).sum());
    let (q_rows, kv_rows) = (HEADS * head_dim, KV_HEADS * head_dim);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut put = |name: String, values: Vec<f32>, dims: &[usize]| {
        tensors.push((name, f32_tensor(values, dims)));
    };
    let norm = |rng: &mut ChaCha8Rng, n: usize| -> Vec<f32> {
        uniform(rng, n, 0.2).into_iter().map(|x| 1.0 + x).collect()
    };
    put(
        "token_embd.weight".into(),
        uniform(&mut rng, vocab * HIDDEN, 1.0),
        &[vocab, HIDDEN],
    );
    put(
        "output.weight".into(),
        uniform(&mut rng, vocab * HIDDEN, 0.25),
        &[vocab, HIDDEN],
    );
    put(
        "output_norm.weight".into(),
        norm(&mut rng, HIDDEN),
        &[HIDDEN],
    );
    let w = |rng: &mut ChaCha8Rng, rows: usize, cols: usize| {
        uniform(rng, rows * cols, 1.0 / (cols as f32).sqrt())
    };
    for i in 0..LAYERS {
        let n = |s: &str| format!("blk.{i}.{s}");
        put(n("attn_norm.weight"), norm(&mut rng, HIDDEN), &[HIDDEN]);
        put(n("ffn_norm.weight"), norm(&mut rng, HIDDEN), &[HIDDEN]);
        if arch == "phi3" {
            let rows = q_rows + 2 * kv_rows;
            put(
                n("attn_qkv.weight"),
                w(&mut rng, rows, HIDDEN),
                &[rows, HIDDEN],
            );
            put(
                n("ffn_up.weight"),
                w(&mut rng, 2 * FF, HIDDEN),
                &[2 * FF, HIDDEN],
            );
        } else {
            put(
                n("attn_q.weight"),
                w(&mut rng, q_rows, HIDDEN),
                &[q_rows, HIDDEN],
            );
            put(
                n("attn_k.weight"),
                w(&mut rng, kv_rows, HIDDEN),
                &[kv_rows, HIDDEN],
            );
            put(
                n("attn_v.weight"),
                w(&mut rng, kv_rows, HIDDEN),
                &[kv_rows, HIDDEN],
            );
            put(n("ffn_gate.weight"), w(&mut rng, FF, HIDDEN), &[FF, HIDDEN]);
            put(n("ffn_up.weight"), w(&mut rng, FF, HIDDEN), &[FF, HIDDEN]);
        }
        put(
            n("attn_output.weight"),
            w(&mut rng, HIDDEN, q_rows),
            &[HIDDEN, q_rows],
        );
        put(n("ffn_down.weight"), w(&mut rng, HIDDEN, FF), &[HIDDEN, FF]);
        if arch == "qwen2" {
            put(n("attn_q.bias"), uniform(&mut rng, q_rows, 0.5), &[q_rows]);
            put(
                n("attn_k.bias"),
                uniform(&mut rng, kv_rows, 0.5),
                &[kv_rows],
            );
            put(
                n("attn_v.bias"),
                uniform(&mut rng, kv_rows, 0.5),
                &[kv_rows],
            );
        }
        if arch == "qwen3" || arch == "gemma3" {
            put(
                n("attn_q_norm.weight"),
                norm(&mut rng, head_dim),
                &[head_dim],
            );
            put(
                n("attn_k_norm.weight"),
                norm(&mut rng, head_dim),
                &[head_dim],
            );
        }
        if arch == "gemma3" {
            put(
                n("post_attention_norm.weight"),
                norm(&mut rng, HIDDEN),
                &[HIDDEN],
            );
            put(n("post_ffw_norm.weight"), norm(&mut rng, HIDDEN), &[HIDDEN]);
        }
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(out).unwrap();
    gguf_file::write(&mut file, &md_refs, &t_refs).unwrap();
}

fn text() -> Option<PathBuf> {
    let p = util::root().join("../shared/data/ppl-dev.txt");
    if p.is_file() {
        return Some(p);
    }
    eprintln!("skipped: {} not found", p.display());
    None
}

#[test]
fn tiny_architectures_match_llamacpp_perplexity() {
    let (Some(vocabs), Some(text)) = (Vocabs::find(), text()) else {
        return;
    };
    let keep = std::env::var_os("CAI_TINY_GGUF_DIR").map(PathBuf::from);
    let tmp = tempfile::tempdir().unwrap();
    let dir = keep.unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    let golden: BTreeMap<String, f64> = serde_json::from_str(
        &std::fs::read_to_string(util::root().join("tests/data/tiny-arch-ppl.json")).unwrap(),
    )
    .unwrap();
    let mut failures = Vec::new();
    for t in &ARCHS {
        let arch = t.name;
        let path = vocabs.write(t, &dir);
        let cfg = cai::perplexity::PerplexityConfig {
            model: path.display().to_string(),
            file: text.clone(),
            ctx: CTX,
            chunks: Some(CHUNKS),
            quiet: true,
        };
        let ours = cai::perplexity::run(&cfg).unwrap().sums.ppl();
        let Some(&want) = golden.get(arch) else {
            failures.push(format!(
                "{arch}: no golden number (run scripts/golden-tiny-arch.sh)"
            ));
            continue;
        };
        let diff = (ours - want).abs() / want;
        eprintln!(
            "{arch}: cai {ours:.4}, llama.cpp {want:.4} ({:+.3} %)",
            diff * 100.0
        );
        if diff > TOLERANCE {
            failures.push(format!("{arch}: cai {ours:.4} vs llama.cpp {want:.4}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// Max |a − b| over max |b|.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn tiny_architectures_decode_as_they_prefill() {
    let Some(vocabs) = Vocabs::find() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // 30 tokens: past gemma3's window of 20 on its local layers.
    let tokens: Vec<u32> = (0..30).map(|i| 100 + 37 * i).collect();
    for t in &ARCHS {
        let arch = t.name;
        let path = vocabs.write(t, tmp.path());
        let mut f = std::fs::File::open(&path).unwrap();
        let content = gguf_file::Content::read(&mut f).unwrap();
        let m = cai::llm::local::GgufModel::load(&content, &path, &Device::Cpu, true).unwrap();
        let mut cache = m.new_cache();
        let all = m.forward(&tokens, &mut cache, true).unwrap();
        // One token at a time (the decoding kernels and attention), and two sequences of
        // different lengths batched together: every row equals the prompt pass's.
        let mut one = m.new_cache();
        let mut other = m.new_cache();
        m.forward(&tokens[..7], &mut other, false).unwrap();
        for (i, &t) in tokens.iter().enumerate() {
            let want: Vec<f32> = all.get(i).unwrap().to_vec1().unwrap();
            let got = m
                .decode_batch(&[t, t], &mut [&mut one, &mut other])
                .unwrap();
            let got: Vec<f32> = got.get(0).unwrap().to_vec1().unwrap();
            let d = rel_diff(&got, &want);
            assert!(d < 1e-4, "{arch}: position {i}: decode differs by {d}");
        }
    }
}

/// Each tiny GGUF loaded for training (`cai::train::load_gguf`: names, q/k order and Gemma's
/// norm weights turned back into Hugging Face form) gives the engine's logits on the file at
/// every position, past gemma3's window.
#[test]
fn tiny_architectures_train_as_they_run() {
    let Some(vocabs) = Vocabs::find() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let tokens: Vec<u32> = (0..30).map(|i| 100 + 37 * i).collect();
    for t in &ARCHS {
        let arch = t.name;
        let path = vocabs.write(t, tmp.path());
        let mut f = std::fs::File::open(&path).unwrap();
        let content = gguf_file::Content::read(&mut f).unwrap();
        let engine = cai::llm::local::GgufModel::load(&content, &path, &Device::Cpu, true).unwrap();
        let want = engine
            .forward(&tokens, &mut engine.new_cache(), true)
            .unwrap();
        let (cfg, weights) =
            cai::train::load_gguf(&path, candle_core::DType::F32, &Device::Cpu).unwrap();
        let trainable = cai::train::model_from_weights(&cfg, &weights).unwrap();
        let ids = Tensor::new(tokens.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        use cai::train::CausalLm;
        let got = trainable.forward(&ids, None).unwrap().squeeze(0).unwrap();
        let (want, got): (Vec<f32>, Vec<f32>) = (
            want.flatten_all().unwrap().to_vec1().unwrap(),
            got.flatten_all().unwrap().to_vec1().unwrap(),
        );
        let d = rel_diff(&got, &want);
        eprintln!("{arch}: trainable vs engine {d:.2e}");
        assert!(d < 1e-4, "{arch}: the trainable model differs by {d}");
    }
}
