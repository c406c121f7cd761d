//! `cai perplexity` on the real models against llama.cpp's `llama-perplexity` on the same
//! file, text (`../shared/data/ppl-dev.txt`), ctx 512 and 2 chunks. The llama.cpp figures were
//! measured with the peer build (`scripts/ppl-parity.sh --chunks 2`) and are kept here so CI
//! need not build it.

mod util;

/// (model file, llama-perplexity's PPL at ctx 512, 2 chunks).
const GOLDEN: [(&str, f64); 2] = [
    ("SmolLM2-135M-Instruct.Q4_1.gguf", 8.5800),
    ("gemma-3-270m-Q4_K_M.gguf", 9.7071),
];

#[test]
fn perplexity_is_within_one_percent_of_llamacpp() {
    let text = util::root().join("../shared/data/ppl-dev.txt");
    if !text.is_file() {
        eprintln!("skipped: {} not found", text.display());
        return;
    }
    for (name, want) in GOLDEN {
        let Some(path) = util::model_file(&[name]) else {
            continue;
        };
        let cfg = cai::perplexity::PerplexityConfig {
            model: path.display().to_string(),
            file: text.clone(),
            ctx: 512,
            chunks: Some(2),
            quiet: true,
        };
        let r = cai::perplexity::run(&cfg).unwrap();
        assert_eq!(r.sums.count, 2 * 255, "{name}: scored tokens");
        let got = r.sums.ppl();
        let diff = (got - want) / want;
        eprintln!(
            "{name}: cai {got:.4}, llama.cpp {want:.4} ({:+.2} %)",
            diff * 100.0
        );
        assert!(
            diff.abs() < 0.01,
            "{name}: cai {got:.4} vs llama.cpp {want:.4}"
        );
    }
}
