//! What a label row says, pinned on a scripted feedback model whose option probabilities are
//! chosen by hand: the raw per-order probabilities next to the calibrated / clamped ones, the
//! slot rates and ties of the run's counters, the original conversation of a truncated pair,
//! a NaN label as an error, a reasoning overflow as a skipped pair, and the bound of
//! `--principles`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::Value;

use super::{run_with, LabelConfig, LabelMode, LabelStats};
use crate::llm::mock::MockBackend;
use crate::llm::{
    Backend, BackendKind, Choice, ChoiceRequest, ContextOverflow, GenerateRequest, Generation,
    ModelInfo, Prompt,
};

/// The responses of the scripted pairs.
const ONE: &str = "RESPONSE-ONE";
const TWO: &str = "RESPONSE-TWO";
/// A response that makes the scripted model pick slot (A) whatever it holds.
const SLOTTY: &str = "RESPONSE-SLOTTY";

/// The mock model for generation; for "A"/"B" choices, P(slot A) is fixed by the question:
/// 0.95 on a content-free question (no response in it), 0.9 with a first response in slot
/// (A), 0.2 with it in slot (B) (that order's P(slot A)); 0.9 always for a pair with
/// [`SLOTTY`]; NaN everywhere with `nan`. Overflows every generation with `overflow_generate`.
struct Scripted {
    inner: MockBackend,
    nan: bool,
    overflow_generate: bool,
}

fn scripted() -> Scripted {
    Scripted {
        inner: MockBackend::new(),
        nan: false,
        overflow_generate: false,
    }
}

fn p_slot_a(prompt: &Prompt) -> f64 {
    let q = &prompt.messages.last().expect("a question").content;
    let (one, two) = (q.find(ONE), q.find(TWO).or(q.find(SLOTTY)));
    match (one, two) {
        _ if q.contains(SLOTTY) => 0.9,
        (Some(a), Some(b)) if a < b => 0.9,
        (Some(_), Some(_)) => 0.2,
        _ => 0.95,
    }
}

impl Backend for Scripted {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }

    fn count_tokens(&self, prompt: &Prompt) -> Result<usize> {
        self.inner.count_tokens(prompt)
    }

    fn generate(&self, requests: &[GenerateRequest]) -> Vec<Result<Generation>> {
        if self.overflow_generate {
            return requests
                .iter()
                .map(|_| {
                    Err(ContextOverflow {
                        prompt_tokens: 100,
                        needed: 196,
                        context: 128,
                    }
                    .into())
                })
                .collect();
        }
        self.inner.generate(requests)
    }

    fn choose(&self, requests: &[ChoiceRequest]) -> Vec<Result<Choice>> {
        if requests.iter().any(|r| r.options.len() != 2) {
            return self.inner.choose(requests);
        }
        requests
            .iter()
            .map(|r| {
                let p = if self.nan {
                    f64::NAN
                } else {
                    p_slot_a(&r.prompt)
                };
                Ok(Choice {
                    logprobs: vec![p.ln(), (1.0 - p).ln()],
                    prompt_tokens: 10,
                })
            })
            .collect()
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pairs(dir: &Path, rows: &[(&str, &str, &str)]) -> PathBuf {
    let path = dir.join("pairs.jsonl");
    let text: String = rows
        .iter()
        .map(|(id, a, b)| {
            format!("{{\"id\": \"{id}\", \"prompt\": \"Which?\", \"response_a\": \"{a}\", \"response_b\": \"{b}\"}}\n")
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn config(mode: LabelMode, pairs: &Path, out: &Path) -> LabelConfig {
    LabelConfig {
        constitution: root().join("constitutions/harmless.yaml"),
        pairs: pairs.to_path_buf(),
        out: out.to_path_buf(),
        backend: BackendKind::Mock,
        mode,
        few_shot: 0,
        samples: 2,
        quiet: true,
        ..LabelConfig::default()
    }
}

fn run(cfg: &LabelConfig, backend: Scripted) -> (LabelStats, Vec<Value>) {
    let stats = run_with(cfg, || Ok(Box::new(backend))).unwrap();
    let rows = std::fs::read_to_string(&cfg.out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (stats, rows)
}

fn close(v: &Value, want: f64) {
    let got = v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
}

fn closef(got: Option<f64>, want: f64) {
    let got = got.expect("a rate");
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
}

/// Issue 29 item 8: the raw per-order probabilities are kept next to the calibrated ones, and
/// the run's counters give the raw and calibrated slot (A) rates side by side.
#[test]
fn label_rows_keep_raw_per_order_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = pairs(dir.path(), &[("x", ONE, TWO)]);
    let cfg = config(LabelMode::Direct, &pairs, &dir.path().join("d.jsonl"));
    let (stats, rows) = run(&cfg, scripted());
    let r = &rows[0];
    let pp = &r["per_principle"][0];
    // Raw: order 1 P(slot A) = .9; order 2 P(slot A) = .2, so P(response_a) = .8.
    close(&r["p_a_first_raw"], 0.9);
    close(&r["p_a_second_raw"], 0.8);
    close(&pp["p_a_first_raw"], 0.9);
    close(&pp["p_a_second_raw"], 0.8);
    close(&pp["prior_a"], 0.95);
    // Calibrated with prior .95: (.9/.95) / (.9/.95 + .1/.05) = (18/19) / (56/19) = 9/28;
    // order 2: (.2/.95) / (.2/.95 + .8/.05) = (4/19) / (308/19) = 1/77, so 76/77 for a.
    close(&r["p_a_first"], 9.0 / 28.0);
    close(&r["p_a_second"], 76.0 / 77.0);
    // (99/308 + 304/308) / 2.
    close(&r["p_a"], 403.0 / 616.0);
    // Calibrated, the orders disagree (b, then a): slot (B) won both times.
    assert_eq!(r["position_flip"], true);
    // Raw: slot (A) in order 1 (.9 > .5), slot (B) in order 2 (.8 for a, in slot B): one of
    // two answers, both preferring response_a. Calibrated: slot (B) both times, a flip.
    assert_eq!(stats.slot_answers, 2);
    closef(stats.slot_a_rate_raw, 0.5);
    closef(stats.slot_a_rate, 0.0);
    closef(stats.order_consistency_raw, 1.0);
    closef(stats.order_consistency, 0.0);
    // The manifest holds the same counters.
    let manifest = dir.path().join("d.jsonl.manifest.json");
    let m: Value = serde_json::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    close(&m["stats"]["slot_a_rate_raw"], 0.5);
    close(&m["stats"]["slot_a_rate"], 0.0);
    assert_eq!(m["stats"]["ties"], 0);

    // CoT: raw is the mean of the unclamped samples (.9 and .8 for a), the written ones are
    // clamped to .6 each.
    let cfg = config(LabelMode::Cot, &pairs, &dir.path().join("c.jsonl"));
    let (stats, rows) = run(&cfg, scripted());
    let r = &rows[0];
    close(&r["p_a_first_raw"], 0.9);
    close(&r["p_a_second_raw"], 0.8);
    close(&r["p_a_first"], 0.6);
    close(&r["p_a_second"], 0.6);
    closef(stats.slot_a_rate_raw, 0.5);
    closef(stats.slot_a_rate, 0.5);

    // One order: no second raw probability, and no order consistency.
    let cfg = LabelConfig {
        both_orders: false,
        ..config(LabelMode::Direct, &pairs, &dir.path().join("o.jsonl"))
    };
    let (stats, rows) = run(&cfg, scripted());
    close(&rows[0]["p_a_first_raw"], 0.9);
    assert!(rows[0].get("p_a_second_raw").is_none());
    closef(stats.slot_a_rate_raw, 1.0);
    assert_eq!(stats.order_consistency_raw, None);

    // Modes without slots have no raw per-order probabilities.
    let cfg = config(LabelMode::Score, &pairs, &dir.path().join("s.jsonl"));
    let (stats, rows) = run(&cfg, scripted());
    assert!(rows[0].get("p_a_first_raw").is_none());
    assert_eq!((stats.slot_answers, stats.slot_a_rate_raw), (0, None));
}

/// Issue 29 item 16: CoT with a model that picks slot (A) whatever it holds clamps to .6 in
/// order 1 and .4 in order 2: p_a exactly 0.5, votes [2, 2]. The run counts it as a tie.
#[test]
fn ties_are_counted_in_the_label_summary() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = pairs(dir.path(), &[("tie", SLOTTY, TWO), ("x", ONE, TWO)]);
    let cfg = config(LabelMode::Cot, &pairs, &dir.path().join("c.jsonl"));
    let (stats, rows) = run(&cfg, scripted());
    assert_eq!(rows[0]["p_a"], 0.5);
    assert_eq!(rows[0]["votes"], serde_json::json!([2, 2]));
    assert_eq!(stats.ties, 1);
    let manifest = dir.path().join("c.jsonl.manifest.json");
    let m: Value = serde_json::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    assert_eq!(m["stats"]["ties"], 1);
}

/// Issue 34 item 4: a model whose option log-probabilities are NaN gives an error naming the
/// pair and the model, and no row with `p_a: null`.
#[test]
fn a_nan_label_is_an_error_naming_the_model_and_the_pair() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = pairs(dir.path(), &[("broken-pair", ONE, TWO)]);
    let cfg = config(LabelMode::Direct, &pairs, &dir.path().join("n.jsonl"));
    let backend = Scripted {
        nan: true,
        ..scripted()
    };
    let e = run_with(&cfg, || Ok(Box::new(backend))).unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("pairs.jsonl:1") && e.contains("broken-pair") && e.contains("mock"),
        "{e}"
    );
    assert!(e.contains("p_a = NaN"), "{e}");
    // A run that wrote no record leaves no output behind (nothing blocks the retry).
    assert!(!cfg.out.exists(), "{}", cfg.out.display());
}

/// Issue 29 item 14: a CoT reasoning request that overflows the context skips its pair with
/// a counted warning; no probability is made up for it.
#[test]
fn a_cot_reasoning_overflow_skips_the_pair() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = pairs(dir.path(), &[("x", ONE, TWO), ("y", TWO, ONE)]);
    let cfg = config(LabelMode::Cot, &pairs, &dir.path().join("c.jsonl"));
    let backend = Scripted {
        overflow_generate: true,
        ..scripted()
    };
    let (stats, rows) = run(&cfg, backend);
    assert!(rows.is_empty(), "{rows:?}");
    assert_eq!((stats.written, stats.skipped_long, stats.ties), (0, 2, 0));
}

/// Issue 34 item 9: `--principles` is bounded by the constitution's comparison principles.
#[test]
fn principles_beyond_the_constitution_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = pairs(dir.path(), &[("x", ONE, TWO)]);
    let cfg = LabelConfig {
        principles: 100_000,
        ..config(LabelMode::Direct, &pairs, &dir.path().join("p.jsonl"))
    };
    let n = crate::constitution::Loaded::read_valid(&cfg.constitution)
        .unwrap()
        .constitution
        .comparison_principles
        .len();
    let e = run_with(&cfg, || Ok(Box::new(scripted()))).unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("--principles 100000") && e.contains(&format!("at most {n}")),
        "{e}"
    );
    assert!(!cfg.out.exists(), "nothing written");
    // The bound itself is accepted.
    let cfg = LabelConfig {
        principles: n,
        ..cfg
    };
    let (_, rows) = run(&cfg, scripted());
    assert_eq!(rows[0]["principles"].as_array().unwrap().len(), n);
}

/// Issue 29 item 10: a pair asked with its oldest turns dropped (`--truncate-long`) keeps its
/// original conversation in the row, flagged `truncated`, so `compare` still finds its human
/// label by content.
#[test]
fn truncated_pairs_keep_their_original_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let long = vec!["word"; 600].join(" ");
    let conversation = serde_json::json!([
        {"role": "user", "content": long},
        {"role": "assistant", "content": "An earlier answer."},
        {"role": "user", "content": "Which?"},
    ]);
    let row = serde_json::json!({"id": "t", "conversation": conversation,
                                 "response_a": ONE, "response_b": TWO});
    let path = dir.path().join("pairs.jsonl");
    std::fs::write(&path, format!("{row}\n")).unwrap();
    let cfg = LabelConfig {
        max_prompt_tokens: 400,
        truncate_long: true,
        ..config(LabelMode::Direct, &path, &dir.path().join("t.jsonl"))
    };
    let (stats, rows) = run(&cfg, scripted());
    assert_eq!((stats.truncated, stats.written), (1, 1));
    assert_eq!(rows[0]["conversation"], conversation);
    assert_eq!(rows[0]["truncated"], true);
    // The question was asked: the scripted answers, raw.
    close(&rows[0]["p_a_first_raw"], 0.9);
    // Not truncated: no `truncated` key at all.
    let pairs = pairs(dir.path(), &[("x", ONE, TWO)]);
    let cfg = config(LabelMode::Direct, &pairs, &dir.path().join("n.jsonl"));
    let (stats, rows) = run(&cfg, scripted());
    assert_eq!(stats.truncated, 0);
    assert!(rows[0].get("truncated").is_none());
}

/// Issue 29 item 17: every field a label row can carry (top level and per principle) is
/// documented in the `cai label` docs (docs/label.md), `position_flip` as what it is: the orders
/// prefer different responses, the same slot won both times (not "the preferred position
/// flipped").
#[test]
fn every_label_row_field_is_documented_in_the_readme() {
    use super::{LabelRecord, PrincipleLabel};
    let per = PrincipleLabel {
        principle: "p".into(),
        p_a_first: 0.6,
        p_a_second: Some(0.4),
        p_a_first_raw: Some(0.7),
        p_a_second_raw: Some(0.3),
        prior_a: Some(0.5),
        samples: vec![0.6],
        rationales: vec!["r".into()],
        scores: Some((5.0, 6.0)),
    };
    let row = LabelRecord {
        id: "x".into(),
        conversation: Vec::new(),
        response_a: "a".into(),
        response_b: "b".into(),
        principles: vec!["p".into()],
        p_a_first: 0.6,
        p_a_second: Some(0.4),
        p_a_first_raw: Some(0.7),
        p_a_second_raw: Some(0.3),
        p_a: 0.5,
        position_flip: true,
        truncated: true,
        votes: Some((1, 1)),
        scores: Some((5.0, 6.0)),
        per_principle: vec![per],
        mode: LabelMode::Cot,
        model: "m".into(),
        prompt_tokens: 1,
        generated_tokens: 1,
        flags: vec!["identical".into()],
    };
    let v = serde_json::to_value(&row).unwrap();
    // The label section lives in docs/label.md (README.md links to it); the whole file is
    // the section.
    let section = std::fs::read_to_string(root().join("docs/label.md")).unwrap();
    let keys = v
        .as_object()
        .unwrap()
        .keys()
        .chain(v["per_principle"][0].as_object().unwrap().keys());
    for key in keys {
        assert!(
            section.contains(&format!("`{key}`")),
            "label row field `{key}` is not documented in docs/label.md"
        );
    }
    assert!(!section.contains("preferred position flipped"));
    assert!(section.contains("the same slot won both times"));
}
