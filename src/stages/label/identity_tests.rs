//! Labels belong to their pairs: a backend that overflows the context on one chosen request of
//! one pair (in the middle of a batch, mid-way through that pair's requests) drops that pair
//! and leaves every other pair's label byte-identical to a run without that pair, in every
//! mode. Before answers were matched by identity, CoT mode read the rest of the overflowed
//! order's answers into the next pair.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Result;

use super::{run_with, LabelConfig, LabelMode};
use crate::llm::mock::MockBackend;
use crate::llm::{
    Backend, Choice, ChoiceRequest, ContextOverflow, GenerateRequest, Generation, ModelInfo, Prompt,
};

/// The mock model, except that the `nth` (1-based) choose request mentioning `marker`
/// overflows the context.
struct OverflowOn {
    inner: MockBackend,
    marker: String,
    nth: usize,
    seen: Mutex<usize>,
}

fn mentions(prompt: &Prompt, options: &[String], marker: &str) -> bool {
    prompt.messages.iter().any(|m| m.content.contains(marker))
        || prompt.prefill.contains(marker)
        || options.iter().any(|o| o.contains(marker))
}

impl Backend for OverflowOn {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }

    fn count_tokens(&self, prompt: &Prompt) -> Result<usize> {
        self.inner.count_tokens(prompt)
    }

    fn generate(&self, requests: &[GenerateRequest]) -> Vec<Result<Generation>> {
        self.inner.generate(requests)
    }

    fn choose(&self, requests: &[ChoiceRequest]) -> Vec<Result<Choice>> {
        let mut out = self.inner.choose(requests);
        let mut seen = self.seen.lock().unwrap();
        for (r, slot) in requests.iter().zip(out.iter_mut()) {
            if mentions(&r.prompt, &r.options, &self.marker) {
                *seen += 1;
                if *seen == self.nth {
                    *slot = Err(ContextOverflow {
                        prompt_tokens: 5000,
                        needed: 5001,
                        context: 4096,
                    }
                    .into());
                }
            }
        }
        out
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn config(mode: LabelMode, pairs: &Path, out: &Path) -> LabelConfig {
    LabelConfig {
        constitution: root().join("constitutions/harmless.yaml"),
        pairs: pairs.to_path_buf(),
        out: out.to_path_buf(),
        seed: 5,
        mode,
        principles: 2,
        few_shot: 1,
        samples: 3,
        batch_size: 4,
        quiet: true,
        ..LabelConfig::default()
    }
}

#[test]
fn an_overflowing_pair_leaves_every_other_label_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let all = root().join("data/sample-pairs.jsonl");
    let text = std::fs::read_to_string(&all).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    // Pair 2 of 12: in the first batch of 4, with pairs after it in the same batch.
    let skipped = 1;
    let row: serde_json::Value = serde_json::from_str(rows[skipped]).unwrap();
    let marker = row["response_a"].as_str().unwrap().to_string();
    let without = dir.path().join("without.jsonl");
    let kept: Vec<&str> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != skipped)
        .map(|(_, r)| *r)
        .collect();
    std::fs::write(&without, kept.join("\n") + "\n").unwrap();
    // The 2nd request that mentions the pair: mid-way through its requests in every mode
    // (CoT: the second sample's answer of the first order).
    for mode in [
        LabelMode::Direct,
        LabelMode::Cot,
        LabelMode::Likelihood,
        LabelMode::Score,
    ] {
        let base = dir.path().join(format!("{mode:?}-base.jsonl"));
        let stats = run_with(&config(mode, &without, &base), || {
            Ok(Box::new(MockBackend::new()))
        })
        .unwrap();
        assert_eq!(stats.written, rows.len() - 1);
        let faulty = dir.path().join(format!("{mode:?}-overflow.jsonl"));
        let backend = OverflowOn {
            inner: MockBackend::new(),
            marker: marker.clone(),
            nth: 2,
            seen: Mutex::new(0),
        };
        let stats = run_with(&config(mode, &all, &faulty), || Ok(Box::new(backend))).unwrap();
        assert_eq!(stats.skipped_long, 1, "{mode:?}");
        let (got, want) = (
            std::fs::read_to_string(&faulty).unwrap(),
            std::fs::read_to_string(&base).unwrap(),
        );
        let first_diff = got.lines().zip(want.lines()).position(|(g, w)| g != w);
        assert!(
            got == want,
            "{mode:?}: labels of the other pairs changed (first at record {first_diff:?} of \
             {} vs {})",
            got.lines().count(),
            want.lines().count()
        );
    }
}
