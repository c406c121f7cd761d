//! Agreement and calibration metrics of AI preference labels against human labels.
//!
//! Pure functions over slices (bootstrap intervals and tests live in
//! [`crate::compare::bootstrap`]). Probabilities are P(response A is better); a probability of
//! exactly 0.5 is a tie. Functions return `None` where a metric is undefined (no rows, or a kappa whose
//! chance agreement is 1).

use serde::Serialize;

/// A hard preference read off a probability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    A,
    B,
    Tie,
}

/// `A` if `p > 0.5`, `B` if `p < 0.5`, `Tie` otherwise.
pub fn choice(p: f64) -> Choice {
    if p > 0.5 {
        Choice::A
    } else if p < 0.5 {
        Choice::B
    } else {
        Choice::Tie
    }
}

/// Agreement of one AI label with one human label: 1 if both pick the same response, 0.5 if the AI
/// ties, 0 otherwise; `None` if the human has no hard choice (`human_p == 0.5`).
pub fn agreement_score(ai_p: f64, human_p: f64) -> Option<f64> {
    let human = choice(human_p);
    if human == Choice::Tie {
        return None;
    }
    let ai = choice(ai_p);
    Some(match ai {
        Choice::Tie => 0.5,
        _ if ai == human => 1.0,
        _ => 0.0,
    })
}

/// The 95 % Wilson score interval of a proportion: `successes` of `n` (successes may be
/// fractional, e.g. ties counted as half). `(0, 1)` when `n` is 0.
pub fn wilson_interval(successes: f64, n: f64) -> (f64, f64) {
    if n <= 0.0 {
        return (0.0, 1.0);
    }
    const Z: f64 = 1.959_963_984_540_054;
    let p = successes / n;
    let denom = 1.0 + Z * Z / n;
    let centre = (p + Z * Z / (2.0 * n)) / denom;
    let half = Z * (p * (1.0 - p) / n + Z * Z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Mean of `xs`, `None` when empty.
pub fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Cohen's kappa between AI and human hard choices.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Kappa {
    pub value: Option<f64>,
    /// Rows used: both sides made a hard choice.
    pub n: usize,
    /// Rows left out because the AI or the human tied.
    pub ties_excluded: usize,
}

/// Cohen's kappa of the hard choices of `ai_p` and `human_p`; rows where either side ties are
/// excluded.
pub fn cohen_kappa(ai_p: &[f64], human_p: &[f64]) -> Kappa {
    let (mut n, mut agree, mut ai_a, mut human_a) = (0usize, 0usize, 0usize, 0usize);
    for (&a, &h) in ai_p.iter().zip(human_p) {
        let (a, h) = (choice(a), choice(h));
        if a == Choice::Tie || h == Choice::Tie {
            continue;
        }
        n += 1;
        agree += usize::from(a == h);
        ai_a += usize::from(a == Choice::A);
        human_a += usize::from(h == Choice::A);
    }
    let ties_excluded = ai_p.len().min(human_p.len()) - n;
    let value = (n > 0).then_some(()).and_then(|()| {
        let nf = n as f64;
        let observed = agree as f64 / nf;
        let (pa, ph) = (ai_a as f64 / nf, human_a as f64 / nf);
        let chance = pa * ph + (1.0 - pa) * (1.0 - ph);
        (chance < 1.0).then(|| (observed - chance) / (1.0 - chance))
    });
    Kappa {
        value,
        n,
        ties_excluded,
    }
}

/// Mean binary cross-entropy of `p` against (possibly soft) targets `y`, `p` clipped to
/// `[1e-6, 1 - 1e-6]`.
pub fn log_loss(p: &[f64], y: &[f64]) -> Option<f64> {
    let losses: Vec<f64> = p
        .iter()
        .zip(y)
        .map(|(&p, &y)| {
            let p = p.clamp(1e-6, 1.0 - 1e-6);
            -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
        })
        .collect();
    mean(&losses)
}

/// Mean squared error of `p` against (possibly soft) targets `y`.
pub fn brier(p: &[f64], y: &[f64]) -> Option<f64> {
    let errors: Vec<f64> = p.iter().zip(y).map(|(&p, &y)| (p - y).powi(2)).collect();
    mean(&errors)
}

/// One equal-width bin of a reliability diagram.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibrationBin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    /// Mean predicted P(A) of the rows in the bin; `None` for an empty bin.
    pub mean_pred: Option<f64>,
    /// Mean human P(A) (the frequency of "human chose A" for hard labels); `None` if empty.
    pub freq: Option<f64>,
}

/// Reliability bins and the expected calibration error.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    pub bins: Vec<CalibrationBin>,
    /// `sum over bins of (count / N) * |mean_pred - freq|`.
    pub ece: Option<f64>,
}

/// Bins `p` into `bins` equal-width bins over [0, 1] (the last bin includes 1) and compares each
/// bin's mean prediction with the mean target.
pub fn calibration(p: &[f64], y: &[f64], bins: usize) -> Calibration {
    let bins = bins.max(1);
    let mut sums = vec![(0usize, 0.0f64, 0.0f64); bins];
    for (&p, &y) in p.iter().zip(y) {
        let k = ((p * bins as f64) as usize).min(bins - 1);
        sums[k].0 += 1;
        sums[k].1 += p;
        sums[k].2 += y;
    }
    let total: usize = sums.iter().map(|s| s.0).sum();
    let mut ece = 0.0;
    let bins: Vec<CalibrationBin> = sums
        .iter()
        .enumerate()
        .map(|(k, &(count, sum_p, sum_y))| {
            let (mean_pred, freq) = if count == 0 {
                (None, None)
            } else {
                let (mp, fr) = (sum_p / count as f64, sum_y / count as f64);
                ece += count as f64 / total as f64 * (mp - fr).abs();
                (Some(mp), Some(fr))
            };
            CalibrationBin {
                lo: k as f64 / bins as f64,
                hi: (k + 1) as f64 / bins as f64,
                count,
                mean_pred,
                freq,
            }
        })
        .collect();
    Calibration {
        bins,
        ece: (total > 0).then_some(ece),
    }
}

/// A judge's answers for one pair in both presentation orders, when it was asked both ways.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OrderedAnswers {
    /// P(response_a better) with response_a shown in slot (A), as the label file keeps it (after
    /// calibration or CoT clamping, where those are on).
    pub p_a_first: Option<f64>,
    /// P(response_a better) with response_a shown in slot (B), mapped back to response_a.
    pub p_a_second: Option<f64>,
    /// The label file's own record of whether the preferred response changed with the order.
    pub position_flip: Option<bool>,
    /// `p_a_first` before calibration / clamping; `None` where the file does not keep it.
    pub p_a_first_raw: Option<f64>,
    /// `p_a_second` before calibration / clamping, mapped back to response_a.
    pub p_a_second_raw: Option<f64>,
}

/// How much the judge's answer depends on where a response is shown.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PositionStats {
    /// Rows whose flip status is known (both orders present, or `position_flip` recorded).
    pub n_pairs: usize,
    /// Share of those rows whose preferred response was the same in both orders.
    pub consistency: Option<f64>,
    /// Per-order answers (two per row asked both ways).
    pub n_answers: usize,
    /// Share of per-order answers that chose slot (A); a tie counts half.
    pub slot_a_rate: Option<f64>,
}

/// Position consistency and slot bias over `rows`, on the per-order probabilities the label
/// file keeps (calibrated or clamped where the labeler did so): the bias left after correction.
///
/// A row with both orders is consistent iff `choice(p_a_first) == choice(p_a_second)` (so a tie in
/// exactly one order is a flip); a row with only one order falls back to `position_flip`.
pub fn position_stats(rows: &[OrderedAnswers]) -> PositionStats {
    slot_stats(
        rows.iter()
            .map(|r| (r.p_a_first, r.p_a_second, r.position_flip)),
    )
}

/// Position consistency and slot bias on the raw per-order probabilities (before calibration or
/// clamping): the judge's own bias. Rows without raw values are left out; the file's
/// `position_flip` describes the corrected values, so it is never used here.
pub fn raw_position_stats(rows: &[OrderedAnswers]) -> PositionStats {
    slot_stats(
        rows.iter()
            .map(|r| (r.p_a_first_raw, r.p_a_second_raw, None)),
    )
}

/// Consistency and slot-(A) rate of `(first, second, recorded flip)` per row.
fn slot_stats(
    rows: impl Iterator<Item = (Option<f64>, Option<f64>, Option<bool>)>,
) -> PositionStats {
    let mut consistent = Vec::new();
    let mut slot_a = Vec::new();
    for (first, second, recorded_flip) in rows {
        let flip = match (first, second) {
            (Some(first), Some(second)) => Some(choice(first) != choice(second)),
            _ => recorded_flip,
        };
        if let Some(flip) = flip {
            consistent.push(if flip { 0.0 } else { 1.0 });
        }
        // First order: slot (A) holds response_a. Second order: slot (A) holds response_b.
        if let Some(p) = first {
            slot_a.push(slot_a_score(choice(p), Choice::A));
        }
        if let Some(p) = second {
            slot_a.push(slot_a_score(choice(p), Choice::B));
        }
    }
    PositionStats {
        n_pairs: consistent.len(),
        consistency: mean(&consistent),
        n_answers: slot_a.len(),
        slot_a_rate: mean(&slot_a),
    }
}

/// 1 if the judge chose the response shown in slot (A), 0.5 for a tie, 0 otherwise.
fn slot_a_score(chosen: Choice, response_in_slot_a: Choice) -> f64 {
    match chosen {
        Choice::Tie => 0.5,
        c if c == response_in_slot_a => 1.0,
        _ => 0.0,
    }
}

/// Agreement within one group of rows (a principle, a length bucket).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupAgreement {
    pub name: String,
    pub n: usize,
    pub agreement: Option<f64>,
}

/// Agreement per group from `(group, score)` items (a row in several groups appears once per
/// group), sorted by agreement, highest first, then by name.
pub fn agreement_by_group(items: &[(&str, f64)]) -> Vec<GroupAgreement> {
    let mut groups: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for &(name, score) in items {
        groups.entry(name).or_default().push(score);
    }
    let mut out: Vec<GroupAgreement> = groups
        .into_iter()
        .map(|(name, scores)| GroupAgreement {
            name: name.to_string(),
            n: scores.len(),
            agreement: mean(&scores),
        })
        .collect();
    out.sort_by(|x, y| {
        let (ax, ay) = (
            x.agreement.unwrap_or(f64::NEG_INFINITY),
            y.agreement.unwrap_or(f64::NEG_INFINITY),
        );
        ay.total_cmp(&ax).then_with(|| x.name.cmp(&y.name))
    });
    out
}

/// Conversation-length buckets, in display order.
pub const LENGTH_BUCKETS: [&str; 4] = ["1", "2-3", "4-5", "6+"];

/// The bucket of a conversation with `turns` turns (0 turns falls in "1").
pub fn length_bucket(turns: usize) -> &'static str {
    match turns {
        0 | 1 => LENGTH_BUCKETS[0],
        2 | 3 => LENGTH_BUCKETS[1],
        4 | 5 => LENGTH_BUCKETS[2],
        _ => LENGTH_BUCKETS[3],
    }
}

/// Agreement per conversation-length bucket, all four buckets in order (empty ones have n = 0).
pub fn agreement_by_length(turns: &[usize], scores: &[f64]) -> Vec<GroupAgreement> {
    LENGTH_BUCKETS
        .iter()
        .map(|&bucket| {
            let in_bucket: Vec<f64> = turns
                .iter()
                .zip(scores)
                .filter(|(&t, _)| length_bucket(t) == bucket)
                .map(|(_, &s)| s)
                .collect();
            GroupAgreement {
                name: bucket.to_string(),
                n: in_bucket.len(),
                agreement: mean(&in_bucket),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn agreement_scores_count_ties_half() {
        assert_eq!(agreement_score(0.9, 1.0), Some(1.0));
        assert_eq!(agreement_score(0.2, 1.0), Some(0.0));
        assert_eq!(agreement_score(0.5, 0.0), Some(0.5));
        assert_eq!(
            agreement_score(0.3, 0.2),
            Some(1.0),
            "soft human label 0.2 means B"
        );
        assert_eq!(agreement_score(0.9, 0.5), None);
        // Scores 1, 0, 0.5, 1 -> mean 2.5 / 4 = 0.625.
        assert_eq!(mean(&[1.0, 0.0, 0.5, 1.0]), Some(0.625));
        assert_eq!(mean(&[]), None);
    }

    #[test]
    fn kappa_matches_hand_computation() {
        // AI: A A B B (tie excluded); human: A B B B.
        // observed = 3/4; P(AI=A) = 1/2, P(human=A) = 1/4;
        // chance = 1/2*1/4 + 1/2*3/4 = 1/2; kappa = (3/4 - 1/2) / (1 - 1/2) = 0.5.
        let k = cohen_kappa(&[0.9, 0.8, 0.1, 0.3, 0.5], &[1.0, 0.0, 0.0, 0.0, 1.0]);
        assert!(close(k.value.unwrap(), 0.5), "{k:?}");
        assert_eq!((k.n, k.ties_excluded), (4, 1));
        // All A on both sides: chance agreement 1, kappa undefined.
        assert_eq!(cohen_kappa(&[0.9, 0.9], &[1.0, 1.0]).value, None);
        // Perfect disagreement with balanced marginals: observed 0, chance 1/2 -> kappa -1.
        assert!(close(
            cohen_kappa(&[0.9, 0.1], &[0.0, 1.0]).value.unwrap(),
            -1.0
        ));
    }

    #[test]
    fn log_loss_and_brier_match_hand_computation() {
        // p = (0.8, 0.4), y = (1, 0):
        // log-loss = -(ln 0.8 + ln 0.6) / 2 = (0.223144 + 0.510826) / 2 = 0.366985.
        let ll = log_loss(&[0.8, 0.4], &[1.0, 0.0]).unwrap();
        assert!(close(ll, (-(0.8f64.ln()) - 0.6f64.ln()) / 2.0));
        assert!((ll - 0.366985).abs() < 1e-6);
        // Brier = ((0.2)^2 + (0.4)^2) / 2 = (0.04 + 0.16) / 2 = 0.1.
        assert!(close(brier(&[0.8, 0.4], &[1.0, 0.0]).unwrap(), 0.1));
        // Clipping: p = 0 for a human A costs -ln(1e-6) = 13.8155, not infinity.
        assert!((log_loss(&[0.0], &[1.0]).unwrap() - 13.815511).abs() < 1e-5);
        assert_eq!(brier(&[], &[]), None);
    }

    #[test]
    fn calibration_bins_and_ece() {
        // 2 bins. Bin [0, .5): p = 0.2, 0.4 (mean 0.3), y = 0, 1 (freq 0.5): |0.3 - 0.5| = 0.2.
        // Bin [.5, 1]: p = 0.5, 0.9, 1.0 (mean 0.8), y = 1, 1, 1 (freq 1): |0.8 - 1| = 0.2.
        // ECE = 2/5 * 0.2 + 3/5 * 0.2 = 0.2.
        let c = calibration(&[0.2, 0.4, 0.5, 0.9, 1.0], &[0.0, 1.0, 1.0, 1.0, 1.0], 2);
        assert_eq!(c.bins.len(), 2);
        assert_eq!((c.bins[0].count, c.bins[1].count), (2, 3));
        assert!(close(c.bins[0].mean_pred.unwrap(), 0.3) && close(c.bins[0].freq.unwrap(), 0.5));
        assert!(close(c.bins[1].mean_pred.unwrap(), 0.8) && close(c.bins[1].freq.unwrap(), 1.0));
        assert!(close(c.ece.unwrap(), 0.2));
        // Ten bins, one row: the other nine are empty and the ECE is |0.73 - 1| = 0.27.
        let c = calibration(&[0.73], &[1.0], 10);
        assert_eq!(c.bins.iter().filter(|b| b.count == 0).count(), 9);
        assert_eq!(c.bins[7].count, 1);
        assert!(close(c.ece.unwrap(), 0.27));
        assert_eq!(calibration(&[], &[], 10).ece, None);
    }

    #[test]
    fn position_consistency_and_slot_bias() {
        let rows = [
            // Same preference (response_a) in both orders: consistent; slot A then slot B.
            OrderedAnswers {
                p_a_first: Some(0.8),
                p_a_second: Some(0.7),
                position_flip: Some(false),
                ..Default::default()
            },
            // Slot A both times (0.8 first; 0.3 second = response_b, in slot A): a flip.
            OrderedAnswers {
                p_a_first: Some(0.8),
                p_a_second: Some(0.3),
                position_flip: None,
                ..Default::default()
            },
            // One order only: flip status from the file, one answer: slot B.
            OrderedAnswers {
                p_a_first: Some(0.2),
                p_a_second: None,
                position_flip: Some(false),
                ..Default::default()
            },
            // Nothing known.
            OrderedAnswers::default(),
        ];
        // Consistency: rows 1 and 3 consistent, row 2 flipped -> 2/3.
        // Slot answers: A, B, A, A, B -> 3/5 = 0.6.
        let s = position_stats(&rows);
        assert_eq!((s.n_pairs, s.n_answers), (3, 5));
        assert!(close(s.consistency.unwrap(), 2.0 / 3.0));
        assert!(close(s.slot_a_rate.unwrap(), 0.6));
        // A tie counts half a slot-A answer: (0.5 + 1) / 2.
        let tie = [OrderedAnswers {
            p_a_first: Some(0.5),
            p_a_second: Some(0.1),
            position_flip: None,
            ..Default::default()
        }];
        assert!(close(position_stats(&tie).slot_a_rate.unwrap(), 0.75));
        assert_eq!(position_stats(&[]).consistency, None);
    }

    #[test]
    fn compare_reports_raw_and_calibrated_position_bias() {
        let rows = [
            // Calibrated: response_a both times (consistent; slot A then slot B). Raw: slot (A)
            // both times (0.9 first; 0.2 second = response_b, shown in slot A): a flip.
            OrderedAnswers {
                p_a_first: Some(0.7),
                p_a_second: Some(0.6),
                position_flip: Some(false),
                p_a_first_raw: Some(0.9),
                p_a_second_raw: Some(0.2),
            },
            // Calibrated: response_b both times (slot B, then slot A). Raw: slot (A) both times.
            OrderedAnswers {
                p_a_first: Some(0.3),
                p_a_second: Some(0.4),
                position_flip: Some(false),
                p_a_first_raw: Some(0.8),
                p_a_second_raw: Some(0.1),
            },
            // One order, no raw values: counts for the calibrated figures only, and its recorded
            // flip describes the calibrated values, so the raw figures must not use it.
            OrderedAnswers {
                p_a_first: Some(0.6),
                position_flip: Some(true),
                ..Default::default()
            },
        ];
        // Calibrated: consistent, consistent, flipped -> 2/3; slots A, B, B, A, A -> 3/5.
        let c = position_stats(&rows);
        assert_eq!((c.n_pairs, c.n_answers), (3, 5));
        assert!(close(c.consistency.unwrap(), 2.0 / 3.0));
        assert!(close(c.slot_a_rate.unwrap(), 0.6));
        // Raw: both rows flipped -> 0/2; all four answers slot A -> 1.0.
        let r = raw_position_stats(&rows);
        assert_eq!((r.n_pairs, r.n_answers), (2, 4));
        assert_eq!((r.consistency, r.slot_a_rate), (Some(0.0), Some(1.0)));
        // A file without raw values has no raw figures, never the calibrated ones.
        let r = raw_position_stats(&rows[2..]);
        assert_eq!((r.n_pairs, r.n_answers, r.slot_a_rate), (0, 0, None));
    }

    #[test]
    fn groups_sorted_by_agreement_then_name() {
        // honest: 1, 0 -> 0.5 (n 2); harmless: 1, 1, 0.5 -> 2.5/3; clear: 0.5 -> 0.5 (n 1).
        let items = [
            ("honest", 1.0),
            ("harmless", 1.0),
            ("honest", 0.0),
            ("harmless", 1.0),
            ("harmless", 0.5),
            ("clear", 0.5),
        ];
        let g = agreement_by_group(&items);
        let names: Vec<&str> = g.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["harmless", "clear", "honest"]);
        assert!(close(g[0].agreement.unwrap(), 2.5 / 3.0));
        assert_eq!((g[0].n, g[1].n, g[2].n), (3, 1, 2));
    }

    #[test]
    fn length_buckets() {
        let b: Vec<&str> = [0, 1, 2, 3, 4, 5, 6, 40]
            .iter()
            .map(|&t| length_bucket(t))
            .collect();
        assert_eq!(b, ["1", "1", "2-3", "2-3", "4-5", "4-5", "6+", "6+"]);
        // Turns 1, 3, 3, 7 with scores 1, 0, 1, 0.5:
        // buckets 1 -> 1.0, 2-3 -> 0.5, 4-5 empty, 6+ -> 0.5.
        let g = agreement_by_length(&[1, 3, 3, 7], &[1.0, 0.0, 1.0, 0.5]);
        let got: Vec<(usize, Option<f64>)> = g.iter().map(|g| (g.n, g.agreement)).collect();
        assert_eq!(
            got,
            [(1, Some(1.0)), (2, Some(0.5)), (0, None), (1, Some(0.5))]
        );
    }

    #[test]
    fn wilson_interval_matches_hand_values() {
        let (lo, hi) = wilson_interval(5.0, 10.0);
        assert!((lo - 0.236_593).abs() < 1e-5 && (hi - 0.763_407).abs() < 1e-5);
        let (lo, hi) = wilson_interval(0.0, 10.0);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.277_535).abs() < 1e-5);
        assert_eq!(wilson_interval(0.0, 0.0), (0.0, 1.0));
    }
}
