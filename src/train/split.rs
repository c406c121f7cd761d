//! The held-out pairs of `cai train rm` and `cai train dpo`, and what they are made of.
//!
//! With `--eval FILE` the held-out pairs are that file's, and a training pair whose
//! conversation is also in it is dropped (counted), so no prompt is scored on both sides.
//! Without it, whole conversations are drawn at random by the seed until about
//! `eval_fraction` of the pairs are held out (the tail of the data would mostly be the last
//! `--data` file's, usually AI labels). Either way the held-out pairs are counted by source
//! (`ai`, `human`, `revisions`): a held-out accuracy on AI labels is agreement with the
//! labeller, not with people.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::pairs::content_key;
use crate::train::reward_data::{PairSource, TextPair};

/// Pairs by the kind of file they came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SourceCounts {
    pub ai: usize,
    pub human: usize,
    pub revisions: usize,
}

impl SourceCounts {
    /// The counts of `pairs`.
    pub fn of(pairs: &[TextPair]) -> Self {
        let mut c = Self::default();
        for p in pairs {
            match p.source {
                PairSource::Ai => c.ai += 1,
                PairSource::Human => c.human += 1,
                PairSource::Revisions => c.revisions += 1,
            }
        }
        c
    }
}

impl std::fmt::Display for SourceCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            (self.ai, "ai"),
            (self.human, "human"),
            (self.revisions, "revisions"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, name)| format!("{n} {name}"))
        .collect();
        match parts.is_empty() {
            true => f.write_str("none"),
            false => f.write_str(&parts.join(", ")),
        }
    }
}

/// How the held-out pairs were chosen and what they hold; in `metrics.json` as `held_out`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeldOut {
    /// The `--eval` file, or `null` for a random split of the training conversations.
    pub file: Option<String>,
    /// The seed of the random split (unused with a file).
    pub seed: u64,
    /// Held-out pairs and conversations.
    pub pairs: usize,
    pub conversations: usize,
    /// Held-out pairs by source.
    pub sources: SourceCounts,
    /// Training pairs by source (after the split).
    pub train_sources: SourceCounts,
    /// Training pairs dropped because their conversation is in the `--eval` file.
    pub dropped_overlap: usize,
}

impl HeldOut {
    /// One line for stderr.
    pub fn describe(&self) -> String {
        let how = match &self.file {
            Some(f) => format!("from {f}"),
            None => format!(
                "at random, whole conversations ({} of them, seed {})",
                self.conversations, self.seed
            ),
        };
        let mut line = format!(
            "held out {} pairs {how}: {}; training on {}",
            self.pairs, self.sources, self.train_sources
        );
        if self.dropped_overlap > 0 {
            line.push_str(&format!(
                "; dropped {} training pair(s) whose conversation is in the held-out file",
                self.dropped_overlap
            ));
        }
        line
    }
}

/// Training and held-out pairs.
pub struct Split {
    pub train: Vec<TextPair>,
    pub eval: Vec<TextPair>,
    pub held_out: HeldOut,
}

fn key(p: &TextPair) -> String {
    content_key(&p.conversation, "", "")
}

fn conversations(pairs: &[TextPair]) -> usize {
    pairs.iter().map(key).collect::<HashSet<_>>().len()
}

/// Holds out `eval` (read from `file`) or, without it, about `fraction` of the pairs of
/// `pairs` drawn as whole conversations at random by `seed`; at least one conversation
/// always stays for training.
pub fn split_held_out(
    pairs: Vec<TextPair>,
    eval: Option<(&Path, Vec<TextPair>)>,
    fraction: f64,
    seed: u64,
) -> Split {
    let (train, eval, file, dropped) = match eval {
        Some((path, eval)) => {
            let held: HashSet<String> = eval.iter().map(key).collect();
            let before = pairs.len();
            let train: Vec<TextPair> = pairs
                .into_iter()
                .filter(|p| !held.contains(&key(p)))
                .collect();
            let dropped = before - train.len();
            (train, eval, Some(path.display().to_string()), dropped)
        }
        None => {
            let (train, eval) = split_by_conversation(pairs, fraction, seed);
            (train, eval, None, 0)
        }
    };
    let held_out = HeldOut {
        file,
        seed,
        pairs: eval.len(),
        conversations: conversations(&eval),
        sources: SourceCounts::of(&eval),
        train_sources: SourceCounts::of(&train),
        dropped_overlap: dropped,
    };
    Split {
        train,
        eval,
        held_out,
    }
}

/// Splits off whole conversations, in an order shuffled by `seed`, until they hold at
/// least `ceil(fraction · pairs)` pairs; at least one conversation stays for training.
pub(crate) fn split_by_conversation(
    pairs: Vec<TextPair>,
    fraction: f64,
    seed: u64,
) -> (Vec<TextPair>, Vec<TextPair>) {
    let want = (pairs.len() as f64 * fraction).ceil() as usize;
    let mut order: Vec<String> = Vec::new();
    let mut sizes: HashMap<String, usize> = HashMap::new();
    for p in &pairs {
        let n = sizes.entry(key(p)).or_insert_with_key(|k| {
            order.push(k.clone());
            0
        });
        *n += 1;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    order.shuffle(&mut rng);
    let mut held: HashSet<&str> = HashSet::new();
    let mut count = 0;
    for conv in order.iter().take(order.len().saturating_sub(1)) {
        if count >= want {
            break;
        }
        held.insert(conv);
        count += sizes[conv];
    }
    pairs
        .into_iter()
        .partition(|p| !held.contains(key(p).as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ChatMessage;

    fn pair(conv: &str, source: PairSource) -> TextPair {
        TextPair {
            conversation: vec![ChatMessage::user(conv)],
            response_a: "a".into(),
            response_b: "b".into(),
            p_a: 1.0,
            weight: 1.0,
            origin: conv.into(),
            source,
        }
    }

    /// 20 human pairs (conversations h0..h19), then 60 AI pairs (a0..a59): the order of
    /// `--data human.jsonl --data labels.jsonl`.
    fn mixed() -> Vec<TextPair> {
        let human = (0..20).map(|i| pair(&format!("h{i}"), PairSource::Human));
        let ai = (0..60).map(|i| pair(&format!("a{i}"), PairSource::Ai));
        human.chain(ai).collect()
    }

    #[test]
    fn held_out_split_is_random_by_seed_and_names_its_sources() {
        // 25 % of 80 pairs = 20 one-pair conversations. The old rule (the last conversations)
        // held out a40..a59 only: 20 AI labels, whatever the seed.
        let split = |seed| split_held_out(mixed(), None, 0.25, seed);
        let (s0, s1) = (split(0), split(1));
        assert_eq!((s0.eval.len(), s0.train.len()), (20, 60));
        assert_eq!(s0.held_out.pairs, 20);
        assert_eq!(s0.held_out.conversations, 20);
        // A random draw from 20 human + 60 AI conversations holds both kinds (the chance of
        // no human one among 20 is C(60,20)/C(80,20) ≈ 2e-3 per seed; these seeds have some).
        for s in [&s0, &s1] {
            let h = s.held_out.sources;
            assert_eq!(h.ai + h.human, 20);
            assert!(h.human > 0 && h.ai > 0, "{h:?}");
            let t = s.held_out.train_sources;
            assert_eq!((t.ai + h.ai, t.human + h.human), (60, 20));
        }
        let tail: Vec<String> = (40..60).map(|i| format!("a{i}")).collect();
        let held: Vec<String> = s0.eval.iter().map(|p| p.origin.clone()).collect();
        assert_ne!(held, tail, "not the tail of the data");
        // The seed decides the draw, and the same seed gives the same draw.
        let origins =
            |s: &Split| -> Vec<String> { s.eval.iter().map(|p| p.origin.clone()).collect() };
        assert_ne!(origins(&s0), origins(&s1));
        assert_eq!(origins(&s0), origins(&split(0)));
        assert!(s0.held_out.describe().contains("ai") && s0.held_out.describe().contains("human"));
    }

    #[test]
    fn the_split_keeps_conversations_whole_and_one_for_training() {
        // 8 pairs over conversations x (3), y (3), z (2); 25 % = 2 pairs: one whole
        // conversation is held out, whichever the seed draws.
        let names = ["x", "y", "z", "x", "y", "z", "x", "y"];
        let pairs: Vec<TextPair> = names.iter().map(|n| pair(n, PairSource::Ai)).collect();
        for seed in 0..8 {
            let (train, held) = split_by_conversation(pairs.clone(), 0.25, seed);
            let conv = &held[0].origin;
            assert!(held.iter().all(|p| &p.origin == conv));
            assert!(train.iter().all(|p| &p.origin != conv));
            assert_eq!(held.len() + train.len(), 8);
            // Even a fraction of 1 leaves one conversation to train on.
            let (train, held) = split_by_conversation(pairs.clone(), 1.0, seed);
            assert!(!train.is_empty() && !held.is_empty());
            let first = &train[0].origin;
            assert!(train.iter().all(|p| &p.origin == first));
        }
    }

    #[test]
    fn eval_file_conversations_leave_the_training_set() {
        // Training: h0..h19 and a0..a59; the eval file holds h0..h9 (human) and a new one.
        let mut eval: Vec<TextPair> = (0..10)
            .map(|i| pair(&format!("h{i}"), PairSource::Human))
            .collect();
        eval.push(pair("fresh", PairSource::Human));
        let s = split_held_out(mixed(), Some((Path::new("dev.jsonl"), eval)), 0.1, 0);
        assert_eq!((s.train.len(), s.eval.len()), (70, 11));
        assert_eq!(s.held_out.dropped_overlap, 10);
        assert_eq!(s.held_out.file.as_deref(), Some("dev.jsonl"));
        assert_eq!(
            (s.held_out.sources.human, s.held_out.train_sources.human),
            (11, 10)
        );
        assert!(s.train.iter().all(|p| p.origin != "h3"));
        let line = s.held_out.describe();
        assert!(line.contains("dropped 10 training pair(s)"), "{line}");
    }
}
