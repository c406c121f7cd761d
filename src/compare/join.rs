//! Joining the rows of AI label files ([`crate::pairs::read_ai_labels`]) to human-labelled
//! pairs by content.
//!
//! Rows are matched by [`content_key`] of (conversation, response_a, response_b), never by line
//! number or by the `id` a file carries. When the AI row holds the two responses in the other
//! order, its probabilities are mapped into the human pair's orientation.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::chat::Role;
use crate::jsonl::Line;
use crate::label_metrics::OrderedAnswers;
use crate::pairs::{content_key, AiLabel, PreferencePair};

/// Human-labelled pairs indexed by content key (the first of duplicate keys wins).
pub struct HumanIndex {
    pub pairs: Vec<PreferencePair>,
    by_key: HashMap<String, usize>,
    /// Rows dropped because an earlier row had the same content key.
    pub duplicates: usize,
}

impl HumanIndex {
    /// Indexes `pairs` by [`content_key`], keeping the first of each key.
    pub fn new(pairs: Vec<PreferencePair>) -> Self {
        let mut by_key = HashMap::with_capacity(pairs.len());
        let mut duplicates = 0;
        for (i, p) in pairs.iter().enumerate() {
            let key = content_key(&p.conversation, &p.response_a, &p.response_b);
            match by_key.entry(key) {
                Entry::Occupied(_) => duplicates += 1,
                Entry::Vacant(slot) => {
                    slot.insert(i);
                }
            }
        }
        Self {
            pairs,
            by_key,
            duplicates,
        }
    }

    /// Number of distinct pairs.
    pub fn unique(&self) -> usize {
        self.by_key.len()
    }

    /// Number of distinct pairs that carry a human label.
    pub fn labelled(&self) -> usize {
        self.by_key
            .values()
            .filter(|&&i| self.pairs[i].human_p_a.is_some())
            .count()
    }
}

/// An AI label matched to its human pair, in the human pair's orientation.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinedRow {
    pub key: String,
    /// Line of the row in the AI file.
    pub ai_line: usize,
    /// AI P(the human pair's response_a is better).
    pub p_a: f64,
    /// Human P(response_a is better), `None` if the human pair is unlabeled.
    pub human_p_a: Option<f64>,
    /// Whether the AI row held the responses in the other order.
    pub swapped: bool,
    /// Per-order answers in the AI row's own orientation (slot semantics need it).
    pub orders: OrderedAnswers,
    pub principles: Vec<String>,
    pub flags: Vec<String>,
    /// Non-system messages in the conversation.
    pub turns: usize,
    /// The pair was shortened by `--truncate-long` before it was judged.
    pub truncated: bool,
}

/// How the rows of one AI file matched the human file.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JoinStats {
    pub ai_rows: usize,
    pub matched: usize,
    /// Matched rows whose responses were in the other order.
    pub swapped: usize,
    /// Matched rows whose human pair has no label.
    pub human_unlabeled: usize,
    pub unmatched_ai: usize,
    /// Distinct human pairs no AI row matched.
    pub unmatched_human: usize,
    /// AI rows dropped because an earlier row had the same content key.
    pub duplicate_ai: usize,
    /// Matched rows the labeler shortened with `--truncate-long` (judged on fewer turns than
    /// the human saw).
    pub truncated: usize,
    /// Unmatched rows marked truncated: files from before label rows kept the original
    /// conversation carry the shortened one, which matches no human pair.
    pub unmatched_truncated: usize,
}

/// Matches AI rows to human pairs; unmatched and duplicate rows are counted, not errors.
pub fn join(human: &HumanIndex, ai: &[Line<AiLabel>]) -> (Vec<JoinedRow>, JoinStats) {
    let mut stats = JoinStats {
        ai_rows: ai.len(),
        ..Default::default()
    };
    let mut seen = HashSet::with_capacity(ai.len());
    let mut rows = Vec::new();
    for line in ai {
        let r = &line.value;
        let key = content_key(&r.conversation, &r.response_a, &r.response_b);
        if !seen.insert(key.clone()) {
            stats.duplicate_ai += 1;
            continue;
        }
        // Older files mark truncation only with the flag.
        let truncated = r.truncated
            || r.flags
                .as_ref()
                .is_some_and(|f| f.iter().any(|f| f == "truncated"));
        let Some(&i) = human.by_key.get(&key) else {
            stats.unmatched_ai += 1;
            stats.unmatched_truncated += usize::from(truncated);
            continue;
        };
        let pair = &human.pairs[i];
        // Same key means the same two responses; they are swapped iff slot a differs.
        let swapped = r.response_a.trim() != pair.response_a.trim();
        stats.matched += 1;
        stats.swapped += usize::from(swapped);
        stats.human_unlabeled += usize::from(pair.human_p_a.is_none());
        stats.truncated += usize::from(truncated);
        rows.push(JoinedRow {
            key,
            ai_line: line.number,
            p_a: if swapped { 1.0 - r.p_a } else { r.p_a },
            human_p_a: pair.human_p_a,
            swapped,
            orders: OrderedAnswers {
                p_a_first: r.p_a_first,
                p_a_second: r.p_a_second,
                position_flip: r.position_flip,
                p_a_first_raw: r.p_a_first_raw,
                p_a_second_raw: r.p_a_second_raw,
            },
            principles: r.principles.clone().unwrap_or_default(),
            flags: r.flags.clone().unwrap_or_default(),
            turns: pair
                .conversation
                .iter()
                .filter(|m| m.role != Role::System)
                .count(),
            truncated,
        });
    }
    stats.unmatched_human = human.unique() - stats.matched;
    (rows, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ChatMessage;
    use crate::pairs::read_ai_labels;
    use std::io::Write;

    fn pair(prompt: &str, a: &str, b: &str, human: Option<f64>) -> PreferencePair {
        let conversation = vec![ChatMessage::user(prompt)];
        PreferencePair {
            id: content_key(&conversation, a, b),
            conversation,
            response_a: a.into(),
            response_b: b.into(),
            human_p_a: human,
            source_line: 1,
        }
    }

    fn ai_row(prompt: &str, a: &str, b: &str, p_a: f64) -> serde_json::Value {
        serde_json::json!({
            "conversation": [{"role": "user", "content": prompt}],
            "response_a": a, "response_b": b, "p_a": p_a, "principles": ["p1"],
            "p_a_first": 0.9, "extra_field": "ignored"
        })
    }

    fn write_rows(rows: &[serde_json::Value]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for r in rows {
            writeln!(f, "{r}").unwrap();
        }
        f
    }

    #[test]
    fn joins_by_content_and_maps_swapped_rows() {
        let human = HumanIndex::new(vec![
            pair("q1", "x", "y", Some(1.0)),
            pair("q2", "u", "v", Some(0.0)),
            pair("q3", "s", "t", None),
            pair("q1", "y", "x", Some(0.0)), // same content as the first: duplicate
            pair("q4", "m", "n", Some(1.0)), // never labelled by the AI
        ]);
        assert_eq!(
            (human.duplicates, human.unique(), human.labelled()),
            (1, 4, 3)
        );
        let f = write_rows(&[
            ai_row("q1", "x", "y", 0.8),
            ai_row("q2", "v", "u", 0.3), // swapped: P(u better) = 1 - 0.3 = 0.7
            ai_row("q3", "s", "t", 0.5),
            ai_row("q1", "y", "x", 0.1), // duplicate key in the AI file
            ai_row("q9", "a", "b", 0.5), // no human pair
        ]);
        let ai = read_ai_labels(f.path()).unwrap();
        let (rows, stats) = join(&human, &ai);
        assert_eq!(
            stats,
            JoinStats {
                ai_rows: 5,
                matched: 3,
                swapped: 1,
                human_unlabeled: 1,
                unmatched_ai: 1,
                unmatched_human: 1,
                duplicate_ai: 1,
                truncated: 0,
                unmatched_truncated: 0,
            }
        );
        assert_eq!(rows[0].p_a, 0.8);
        assert!(rows[1].swapped && (rows[1].p_a - 0.7).abs() < 1e-12);
        assert_eq!(rows[1].human_p_a, Some(0.0));
        assert_eq!(
            rows[1].orders.p_a_first,
            Some(0.9),
            "per-order answers stay in AI orientation"
        );
        assert_eq!((rows[2].human_p_a, rows[2].ai_line), (None, 3));
        assert_eq!(
            (rows[0].principles.as_slice(), rows[0].turns),
            (["p1".to_string()].as_slice(), 1)
        );
    }

    #[test]
    fn compare_counts_truncated_pairs() {
        let human = HumanIndex::new(vec![
            pair("q1", "x", "y", Some(1.0)),
            pair("q2", "u", "v", Some(0.0)),
            pair("q3", "s", "t", Some(1.0)),
        ]);
        let mut shortened = ai_row("q1", "x", "y", 0.8);
        shortened["truncated"] = serde_json::json!(true);
        let mut flagged = ai_row("q2", "u", "v", 0.3);
        flagged["flags"] = serde_json::json!(["truncated"]);
        // An older file: the flag, and the shortened conversation, which matches nothing.
        let mut old = ai_row("q3 (last turn only)", "s", "t", 0.6);
        old["flags"] = serde_json::json!(["truncated"]);
        let f = write_rows(&[shortened, flagged, ai_row("q3", "s", "t", 0.6), old]);
        let ai = read_ai_labels(f.path()).unwrap();
        let (rows, stats) = join(&human, &ai);
        // Rows 1 and 2 joined and are truncated (field, flag); row 3 joined untruncated;
        // row 4 is unmatched and truncated.
        assert_eq!((stats.matched, stats.truncated), (3, 2));
        assert_eq!((stats.unmatched_ai, stats.unmatched_truncated), (1, 1));
        let marks: Vec<bool> = rows.iter().map(|r| r.truncated).collect();
        assert_eq!(marks, [true, true, false]);
    }

    #[test]
    fn bad_probability_names_file_and_line() {
        let f = write_rows(&[ai_row("q", "a", "b", 0.5), ai_row("q", "a", "c", 1.5)]);
        let err = format!("{:#}", read_ai_labels(f.path()).unwrap_err());
        assert!(err.contains(":2: p_a = 1.5 is not a probability"), "{err}");
        // The raw per-order values are checked the same way.
        let mut raw = ai_row("q", "a", "b", 0.5);
        raw["p_a_second_raw"] = serde_json::json!(1.25);
        let f = write_rows(&[raw]);
        let err = format!("{:#}", read_ai_labels(f.path()).unwrap_err());
        assert!(
            err.contains(":1: p_a_second_raw = 1.25 is not a probability"),
            "{err}"
        );
        // NaN is not valid JSON, so it fails at parse time, also with file:line.
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            r#"{{"conversation": [], "response_a": "a", "response_b": "b", "p_a": NaN}}"#
        )
        .unwrap();
        let err = format!("{:#}", read_ai_labels(f.path()).unwrap_err());
        assert!(err.contains(":1: malformed JSON"), "{err}");
    }
}
