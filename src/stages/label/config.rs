//! The label stage's config (`LabelConfig`, `LabelMode`), what it writes (`LabelRecord`,
//! `PrincipleLabel`, `LabelStats`) and a pair in flight (`Job`): what the stage and its
//! labelling modes share, apart from `label/mod.rs` so that the modes do not import it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::chat::ChatMessage;
use crate::constitution::ComparisonPrinciple;
use crate::label_metrics::{position_stats, OrderedAnswers};
use crate::llm::openai::OpenaiConfig;
use crate::llm::{BackendKind, SamplingParams};
use crate::pairs::PreferencePair;

/// How the feedback model is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LabelMode {
    /// Log-probabilities of "A"/"B" right after the question.
    #[default]
    Direct,
    /// Sampled step-by-step reasoning, then the answer's probabilities (self-consistency).
    Cot,
    /// No question asked: how much more likely each response becomes when the principle is
    /// stated as a system message; P(a) = σ(Δa − Δb). Free of position bias by construction.
    Likelihood,
    /// Each response rated 1–10 on its own (expected score from the options' probabilities);
    /// P(a) = P(a's rating > b's) + ½ P(equal). No slots, so no position bias.
    Score,
}

impl crate::choice::Choice for LabelMode {
    const CHOICES: &'static [(&'static str, Self, &'static str)] = &[
        (
            "direct",
            Self::Direct,
            "log-probabilities of \"A\" and \"B\" right after the question",
        ),
        (
            "cot",
            Self::Cot,
            "sampled step-by-step reasoning, then the answer (self-consistency)",
        ),
        (
            "likelihood",
            Self::Likelihood,
            "how much likelier each response gets with the principle as system message",
        ),
        (
            "score",
            Self::Score,
            "each response rated 1-10 on its own; no slots, no position bias",
        ),
    ];
}

/// Everything `cai label` needs; defaults < `--config` YAML < flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LabelConfig {
    pub constitution: PathBuf,
    /// Pairs: our JSONL, HH-RLHF rows or TRL preference rows.
    pub pairs: PathBuf,
    pub out: PathBuf,
    pub seed: u64,
    pub backend: BackendKind,
    pub model: String,
    /// Server settings of `--backend openai`.
    pub openai: OpenaiConfig,
    pub templates: Option<PathBuf>,
    pub mode: LabelMode,
    /// Comparison principles sampled per pair; their soft labels are averaged.
    pub principles: usize,
    /// Ask with the responses in both orders and average.
    pub both_orders: bool,
    /// Direct mode: divide out the model's slot prior measured on a content-free pair
    /// (responses "N/A"). On by default: on the dev pairs it keeps the agreement and turns a
    /// labeller that always picks slot (B) into one that picks (A) 42 % of the time.
    pub calibrate: bool,
    /// Few-shot comparison examples from the constitution.
    pub few_shot: usize,
    /// CoT reasoning samples per question.
    pub samples: usize,
    /// Sampling of the CoT reasoning.
    pub reasoning: SamplingParams,
    /// Clamp per-sample probabilities to [lo, hi]; default (0.4, 0.6) in CoT mode, none in
    /// direct mode.
    pub clamp: Option<(f64, f64)>,
    /// Longest accepted question prompt in tokens (longer: oldest turns dropped or skipped).
    pub max_prompt_tokens: usize,
    pub truncate_long: bool,
    pub batch_size: usize,
    pub limit: Option<usize>,
    pub quiet: bool,
}

impl Default for LabelConfig {
    fn default() -> Self {
        Self {
            constitution: PathBuf::from("constitutions/harmless.yaml"),
            pairs: PathBuf::from("data/sample-pairs.jsonl"),
            out: PathBuf::from("runs/labels.jsonl"),
            seed: 0,
            backend: BackendKind::Local,
            model: "default".into(),
            openai: OpenaiConfig::default(),
            templates: None,
            mode: LabelMode::Direct,
            principles: 1,
            both_orders: true,
            calibrate: true,
            few_shot: 4,
            samples: 4,
            reasoning: SamplingParams {
                temperature: 0.7,
                top_p: 0.95,
                max_tokens: 96,
                stop: vec!["So the better response".into(), "\n\n\n".into()],
                ..SamplingParams::default()
            },
            clamp: None,
            max_prompt_tokens: 2048,
            truncate_long: false,
            batch_size: 8,
            limit: None,
            quiet: false,
        }
    }
}

impl LabelConfig {
    /// The clamp range in force: the configured one, or 40–60 % for CoT.
    pub fn clamp_range(&self) -> Option<(f64, f64)> {
        match (self.clamp, self.mode) {
            (Some(r), _) => Some(r),
            (None, LabelMode::Cot) => Some((0.4, 0.6)),
            (None, LabelMode::Direct | LabelMode::Likelihood | LabelMode::Score) => None,
        }
    }

    /// What turns the raw per-order probabilities into the written ones: "calibrated",
    /// "clamped", both, or "unadjusted".
    pub fn adjustment(&self) -> &'static str {
        let calibrated = self.calibrate && self.mode == LabelMode::Direct;
        match (calibrated, self.clamp_range().is_some()) {
            (true, true) => "calibrated + clamped",
            (true, false) => "calibrated",
            (false, true) => "clamped",
            (false, false) => "unadjusted",
        }
    }

    /// Whether each question is asked in both slot orders (modes with slots only).
    pub(super) fn asks_both_orders(&self) -> bool {
        self.both_orders && matches!(self.mode, LabelMode::Direct | LabelMode::Cot)
    }
}

/// The labels of one principle (every field is documented in docs/label.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrincipleLabel {
    pub principle: String,
    /// P(response_a better) with response_a in slot (A); calibrated (direct mode) and clamped
    /// (CoT, or `--clamp`) when those are on.
    pub p_a_first: f64,
    /// P(response_a better) with response_a in slot (B), mapped back; calibrated and clamped
    /// like `p_a_first`; absent with one order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_a_second: Option<f64>,
    /// `p_a_first` before calibration and clamping (CoT: the mean of the unclamped samples);
    /// absent in the modes without slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_a_first_raw: Option<f64>,
    /// `p_a_second` before calibration and clamping, mapped back to response_a.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_a_second_raw: Option<f64>,
    /// Content-free P(slot A) used for calibration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_a: Option<f64>,
    /// CoT: per-sample P(response_a better), first order then second.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rationales: Vec<String>,
    /// Score mode: expected ratings (1–10) of response_a and response_b.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<(f64, f64)>,
}

impl PrincipleLabel {
    /// A label with one order's probability and nothing else.
    pub(super) fn new(principle: &ComparisonPrinciple, p_a_first: f64) -> Self {
        Self {
            principle: principle.id.clone(),
            p_a_first,
            p_a_second: None,
            p_a_first_raw: None,
            p_a_second_raw: None,
            prior_a: None,
            samples: Vec::new(),
            rationales: Vec::new(),
            scores: None,
        }
    }
}

/// The output record of one pair (every field is documented in docs/label.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelRecord {
    pub id: String,
    /// The pair's conversation as read, also where `--truncate-long` asked with a shorter one.
    pub conversation: Vec<ChatMessage>,
    pub response_a: String,
    pub response_b: String,
    pub principles: Vec<String>,
    /// Mean over principles of the first-order probability (calibrated / clamped).
    pub p_a_first: f64,
    /// Mean over principles of the second-order probability, mapped back to response_a.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_a_second: Option<f64>,
    /// Mean over principles of `PrincipleLabel::p_a_first_raw`: slot (A) was chosen in the
    /// first order iff it is above 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_a_first_raw: Option<f64>,
    /// Mean over principles of `PrincipleLabel::p_a_second_raw`: slot (A) was chosen in the
    /// second order iff it is below 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_a_second_raw: Option<f64>,
    /// The soft label: P(response_a is better); a tie is exactly 0.5.
    pub p_a: f64,
    /// The two orders prefer different responses (`p_a_first` and `p_a_second` on different
    /// sides of 0.5, a tie against a strict preference included): the same slot won both
    /// times, so the slot decided, not the content.
    pub position_flip: bool,
    /// The question was asked with the oldest turns dropped (`--truncate-long`);
    /// `conversation` is still the original one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// CoT: (votes for a, votes for b) over all samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub votes: Option<(usize, usize)>,
    /// Score mode: expected ratings of response_a and response_b, mean over principles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<(f64, f64)>,
    pub per_principle: Vec<PrincipleLabel>,
    pub mode: LabelMode,
    pub model: String,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

/// Counters of a run (the labels written by this run; resumed ones are not read back).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LabelStats {
    pub pairs: usize,
    pub resumed: usize,
    pub written: usize,
    pub skipped_long: usize,
    pub truncated: usize,
    pub identical: usize,
    /// Labels written with `p_a` exactly 0.5 (identical responses included).
    pub ties: usize,
    /// Per-order answers behind the slot rates (two per pair asked in both orders).
    pub slot_answers: usize,
    /// Share of per-order answers that chose slot (A), from the raw probabilities (before
    /// calibration and clamping; a tie counts half).
    pub slot_a_rate_raw: Option<f64>,
    /// The same from the written (calibrated / clamped) `p_a_first` and `p_a_second`.
    pub slot_a_rate: Option<f64>,
    /// Share of pairs asked in both orders whose raw answers preferred the same response.
    pub order_consistency_raw: Option<f64>,
    /// The same from the written probabilities (1 − the share of `position_flip`).
    pub order_consistency: Option<f64>,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub seconds: f64,
}

impl LabelStats {
    /// Counts a written label: ties, and its per-order answers into the slot rates (with
    /// `compare`'s definitions: `label_metrics::position_stats`, summed row by row).
    pub(super) fn count(&mut self, r: &LabelRecord, orders: &mut Orders) {
        self.written += 1;
        self.ties += (r.p_a == 0.5) as usize;
        if r.p_a_first_raw.is_none() {
            return;
        }
        let raw = position_stats(&[OrderedAnswers {
            p_a_first: r.p_a_first_raw,
            p_a_second: r.p_a_second_raw,
            ..Default::default()
        }]);
        let written = position_stats(&[OrderedAnswers {
            p_a_first: Some(r.p_a_first),
            p_a_second: r.p_a_second,
            ..Default::default()
        }]);
        let sum = |rate: Option<f64>, n: usize| rate.unwrap_or(0.0) * n as f64;
        orders.answers += raw.n_answers;
        orders.slot_a_raw += sum(raw.slot_a_rate, raw.n_answers);
        orders.slot_a += sum(written.slot_a_rate, written.n_answers);
        orders.pairs += raw.n_pairs;
        orders.consistent_raw += sum(raw.consistency, raw.n_pairs);
        orders.consistent += sum(written.consistency, written.n_pairs);
        let share = |x: f64, n: usize| (n > 0).then(|| x / n as f64);
        self.slot_answers = orders.answers;
        self.slot_a_rate_raw = share(orders.slot_a_raw, orders.answers);
        self.slot_a_rate = share(orders.slot_a, orders.answers);
        self.order_consistency_raw = share(orders.consistent_raw, orders.pairs);
        self.order_consistency = share(orders.consistent, orders.pairs);
    }
}

/// Running sums behind the slot rates of [`LabelStats`].
#[derive(Default)]
pub(super) struct Orders {
    pub(super) answers: usize,
    pub(super) slot_a_raw: f64,
    pub(super) slot_a: f64,
    pub(super) pairs: usize,
    pub(super) consistent_raw: f64,
    pub(super) consistent: f64,
}

/// One pair in flight.
pub(super) struct Job {
    /// The pair as asked (its conversation shortened where `truncated`).
    pub(super) pair: PreferencePair,
    /// The conversation as read, which the record keeps.
    pub(super) conversation: Vec<ChatMessage>,
    pub(super) truncated: bool,
    pub(super) principles: Vec<ComparisonPrinciple>,
    pub(super) flags: Vec<String>,
}
