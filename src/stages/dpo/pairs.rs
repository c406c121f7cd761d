//! The pairs of `cai train dpo`: `cai label` rows (soft `p_a`), human pairs (HH-RLHF, TRL,
//! ours) and SL-CAI pairs from `cai revise` records (the final revision preferred to the
//! initial answer, as in Hugging Face's "Constitutional AI with open LLMs" recipe), tokenized
//! with the policy's chat template; identical pairs and the ties a loss cannot use are dropped
//! and counted.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::jsonl;
use crate::model_files::ChatTokenizer;
use crate::pairs::content_key;
use crate::revisions::RevisionRecord;
use crate::train::dpo_data::{fit_pair, DpoPair};
use crate::train::dpo_loss::DpoLoss;
use crate::train::reward_data::{read_source, DataSource, PairSource, TextPair};
use crate::train::TokenizedExample;

/// What reading and tokenizing the pairs dropped, for the warnings and `metrics.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DataCounts {
    /// Rows without a label (human files) or never revised (`cai revise` records).
    pub unlabelled: usize,
    /// Pairs whose responses are the same text, or the same tokens after `max_len`.
    pub identical: usize,
    /// Ties (p = ½) the loss cannot use.
    pub ties: usize,
    /// Sequences cut to `max_len`.
    pub truncated: usize,
}

/// Whether the first row of `path` is a `cai revise` record.
fn is_revise_file(path: &Path) -> Result<bool> {
    let text = crate::inputs::read_text(path, crate::inputs::DATA_CAP, "data file")?;
    let Some(first) = text.lines().find(|l| !l.trim().is_empty()) else {
        anyhow::bail!("{}: no rows", path.display());
    };
    let v: Value =
        serde_json::from_str(first).with_context(|| format!("{}:1: not JSON", path.display()))?;
    Ok(v.get("rounds").is_some() && v.get("final").is_some())
}

/// SL-CAI pairs of a `cai revise` file: the final revision (A) preferred to the initial
/// answer (B). Returns the pairs and the number of records never revised.
fn read_revise_pairs(src: &DataSource) -> Result<(Vec<TextPair>, usize)> {
    let mut pairs = Vec::new();
    let mut unrevised = 0;
    for line in jsonl::read::<RevisionRecord>(&src.path)? {
        let r = line.value;
        if r.final_response.trim().is_empty() || r.final_response.trim() == r.initial.trim() {
            unrevised += 1;
            continue;
        }
        pairs.push(TextPair {
            conversation: r.conversation,
            response_a: r.final_response,
            response_b: r.initial,
            p_a: 1.0,
            weight: src.weight,
            origin: format!("{}:{}", src.path.display(), line.number),
            source: PairSource::Revisions,
        });
    }
    Ok((pairs, unrevised))
}

/// Reads one source of any kind; returns the pairs and the rows without a usable label.
pub fn read_dpo_source(src: &DataSource) -> Result<(Vec<TextPair>, usize)> {
    if is_revise_file(&src.path)? {
        read_revise_pairs(src)
    } else {
        read_source(src, false)
    }
}

/// Tokenizes pairs for DPO, dropping identical pairs and (when `loss` rounds labels) ties.
pub fn tokenize_dpo_pairs(
    tok: &ChatTokenizer,
    pairs: &[TextPair],
    max_len: usize,
    loss: Option<DpoLoss>,
    counts: &mut DataCounts,
) -> Result<Vec<DpoPair>> {
    let mut out = Vec::with_capacity(pairs.len());
    for pair in pairs {
        if pair.response_a.trim() == pair.response_b.trim() {
            counts.identical += 1;
            continue;
        }
        if loss.is_some_and(|l| !l.keeps(pair.p_a)) {
            counts.ties += 1;
            continue;
        }
        let enc = |r: &str| -> Result<TokenizedExample> {
            let (tokens, loss_mask) = tok
                .encode_response(&pair.conversation, r)
                .with_context(|| format!("{}: tokenizing", pair.origin))?;
            Ok(TokenizedExample { tokens, loss_mask })
        };
        let (mut a, mut b) = (enc(&pair.response_a)?, enc(&pair.response_b)?);
        // One cut of the conversation for both responses: A and B see the same prompt.
        counts.truncated += fit_pair(&mut a, &mut b, max_len);
        ensure!(
            a.num_targets() > 0 && b.num_targets() > 0,
            "{}: a response has no tokens left to score (max_len {max_len})",
            pair.origin
        );
        if a.tokens == b.tokens {
            counts.identical += 1;
            continue;
        }
        out.push(DpoPair {
            a,
            b,
            p_a: pair.p_a,
            weight: pair.weight,
            group: content_key(&pair.conversation, "", ""),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn revise_records_give_final_over_initial() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("rev.jsonl");
        let rec = |id: &str, initial: &str, fin: &str| {
            json!({"id": id, "prompt": "Q", "conversation": [{"role": "user", "content": "Q"}],
                   "initial": initial, "rounds": [], "final": fin})
            .to_string()
        };
        std::fs::write(
            &p,
            format!(
                "{}\n{}\n",
                rec("1", "bad", "good"),
                rec("2", "same", "same")
            ),
        )?;
        let src = DataSource {
            path: p,
            weight: 0.5,
        };
        let (pairs, unrevised) = read_dpo_source(&src)?;
        assert_eq!((pairs.len(), unrevised), (1, 1));
        let pair = &pairs[0];
        assert_eq!(
            (
                pair.response_a.as_str(),
                pair.response_b.as_str(),
                pair.p_a,
                pair.weight
            ),
            ("good", "bad", 1.0, 0.5)
        );
        assert!(pair.origin.ends_with("rev.jsonl:1"));
        Ok(())
    }
}
