//! PPO on a tiny random model with a synthetic reward: learning, bounded KL, exact resume.

use super::params::Trainable;
use super::ppo::{PpoData, PpoTrainer, Scorer};
use super::ppo_config::PpoConfig;
use super::ppo_rollout::Rollout;
use super::tests::{tiny_config, tiny_weights, VOCAB};
use crate::model_files::checkpoint::max_weight_difference;
use crate::model_files::lora::LoraConfig;
use anyhow::Result;
use candle_core::DType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The token the synthetic reward asks for.
const WANTED: u32 = 5;
const STOP: u32 = 2;

/// Reward = fraction of response tokens equal to [`WANTED`].
struct FractionOfWanted;

impl Scorer for FractionOfWanted {
    fn score(&mut self, rollouts: &[Rollout]) -> Result<Vec<Option<f64>>> {
        Ok(rollouts.iter().map(|r| Some(fraction_wanted(r))).collect())
    }
}

fn fraction_wanted(r: &Rollout) -> f64 {
    let hits = r.response_ids.iter().filter(|&&t| t == WANTED).count();
    hits as f64 / r.response_ids.len() as f64
}

/// Reward = mean token id of the response over the vocabulary size: a score that differs
/// between the responses of a group from the first step on.
fn mean_token(r: &Rollout) -> f64 {
    let sum: u32 = r.response_ids.iter().sum();
    sum as f64 / (r.response_ids.len() * VOCAB) as f64
}

/// [`mean_token`], but the responses to the prompts listed have no score (as when the
/// feedback prompt overflows the feedback model's context).
struct UnscoredPrompts(Vec<usize>);

impl Scorer for UnscoredPrompts {
    fn score(&mut self, rollouts: &[Rollout]) -> Result<Vec<Option<f64>>> {
        Ok(rollouts
            .iter()
            .map(|r| (!self.0.contains(&r.prompt)).then(|| mean_token(r)))
            .collect())
    }
}

fn data() -> PpoData {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let prompts = (0..12)
        .map(|_| (0..4).map(|_| rng.random_range(6..VOCAB as u32)).collect())
        .collect();
    PpoData {
        prompts,
        stop_ids: vec![STOP],
        ptx: Vec::new(),
        reward_sources: serde_json::json!({"reward_model": {"sha256": "aa"}, "weights": [1.0]}),
    }
}

fn config(steps: usize, trainable: Trainable, lr: f64) -> PpoConfig {
    PpoConfig {
        steps,
        rollouts: 8,
        minibatch: 4,
        ppo_epochs: 2,
        lr,
        kl_coef: 0.02,
        no_eos_penalty: None,
        max_new_tokens: 8,
        trainable,
        seed: 11,
        ..PpoConfig::default()
    }
}

/// Per-step rewards and KLs to the reference of a 50-step full fine-tuning run with the KL
/// coefficient `kl_coef`.
fn reward_and_kl_curves(kl_coef: f64) -> Result<(Vec<f64>, Vec<f64>)> {
    let cfg = tiny_config(false);
    let weights = tiny_weights(&cfg, DType::F32);
    let mut run_cfg = config(50, Trainable::All, 1e-2);
    run_cfg.kl_coef = kl_coef;
    let mut trainer = PpoTrainer::new(&cfg, weights.clone(), &weights, data(), run_cfg)?;
    let mut scorer = FractionOfWanted;
    let (mut scores, mut kls) = (Vec::new(), Vec::new());
    while !trainer.is_done() {
        let s = trainer.step(&mut scorer)?.stats;
        assert!(s.kl.is_finite() && s.entropy > 0.0);
        scores.push(s.score);
        kls.push(s.kl);
    }
    Ok((scores, kls))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The reward rises, and the KL penalty holds the policy nearer the reference: a strong
/// coefficient ends with far less KL than the weak one. The KL's absolute size depends on the
/// float path (SIMD width, FMA) of a run this chaotic, so the bound is relative: the same
/// build, the same seed, only the coefficient differs. Without the penalty in the rewards both
/// runs would be the same run.
#[test]
fn ppo_raises_a_synthetic_reward_with_bounded_kl() -> Result<()> {
    let (scores, kls) = reward_and_kl_curves(0.02)?;
    let (first, last) = (mean(&scores[..5]), mean(&scores[scores.len() - 5..]));
    assert!(
        last > first + 0.3 && last > 0.4,
        "mean reward {first:.3} -> {last:.3} (scores {scores:?})"
    );
    let (_, strong_kls) = reward_and_kl_curves(1.0)?;
    let weak = mean(&kls[kls.len() - 10..]);
    let strong = mean(&strong_kls[strong_kls.len() - 10..]);
    assert!(
        strong < 0.5 * weak,
        "KL of the last 10 steps: {strong:.3} with coefficient 1.0, {weak:.3} with 0.02"
    );
    Ok(())
}

#[test]
fn a_resumed_run_equals_the_uninterrupted_one() -> Result<()> {
    let cfg = tiny_config(false);
    let weights = tiny_weights(&cfg, DType::F32);
    let lora = Trainable::Lora(LoraConfig {
        rank: 2,
        alpha: 4.0,
        ..LoraConfig::default()
    });
    let mut run_cfg = config(4, lora, 1e-2);
    run_cfg.kl_target = Some(1.0);
    run_cfg.kl_horizon = 50.0;
    let mut scorer = FractionOfWanted;
    let mut full = PpoTrainer::new(&cfg, weights.clone(), &weights, data(), run_cfg.clone())?;
    while !full.is_done() {
        full.step(&mut scorer)?;
    }

    let dir = tempfile::tempdir()?;
    let ckpt = dir.path().join("checkpoint-2");
    let mut first = PpoTrainer::new(&cfg, weights.clone(), &weights, data(), run_cfg.clone())?;
    first.step(&mut scorer)?;
    first.step(&mut scorer)?;
    first.save_checkpoint(&ckpt, &[])?;
    drop(first);
    let mut second = PpoTrainer::resume(&ckpt, &weights, data(), run_cfg.clone())?;
    assert_eq!(second.state().step, 2);
    while !second.is_done() {
        second.step(&mut scorer)?;
    }
    // Identical curves (the wall-clock seconds aside).
    let curve = |t: &PpoTrainer| {
        let mut h = t.state().history.clone();
        h.iter_mut().for_each(|s| s.seconds = 0.0);
        h
    };
    assert_eq!(curve(&full), curve(&second));
    assert_ne!(full.state().history[0].beta, full.state().history[3].beta);
    let (a, b) = (full.policy_weights(), second.policy_weights());
    assert_eq!(max_weight_difference(&a, &b)?, 0.0);
    // The final folder loads as a plain model.
    full.save_final(&dir.path().join("final"), &[])?;
    let (_, merged) = super::load_model_dir(&dir.path().join("final"), DType::F32, &cfg_device())?;
    assert!(merged.contains_key("model.embed_tokens.weight"));
    Ok(())
}

fn cfg_device() -> candle_core::Device {
    candle_core::Device::Cpu
}

#[test]
fn critic_free_estimators_raise_the_synthetic_reward_without_a_value_head() -> Result<()> {
    use super::advantage::AdvantageEstimator;
    let cfg = tiny_config(false);
    let weights = tiny_weights(&cfg, DType::F32);
    for (estimator, kl_in_loss) in [
        (AdvantageEstimator::Grpo, false),
        (AdvantageEstimator::Rloo, true),
        (AdvantageEstimator::Reinforce, false),
    ] {
        let mut run_cfg = config(40, Trainable::All, 1e-2);
        run_cfg.advantage = estimator;
        run_cfg.group_size = 4;
        run_cfg.kl_in_loss = kl_in_loss;
        let mut trainer =
            PpoTrainer::new(&cfg, weights.clone(), &weights, data(), run_cfg.clone())?;
        let mut scorer = FractionOfWanted;
        let mut scores = Vec::new();
        while !trainer.is_done() {
            let s = trainer.step(&mut scorer)?.stats;
            // No critic: no value loss, no explained variance.
            assert_eq!((s.value_loss, s.explained_variance), (0.0, None));
            scores.push(s.score);
        }
        let first: f64 = scores[..5].iter().sum::<f64>() / 5.0;
        let last: f64 = scores[scores.len() - 5..].iter().sum::<f64>() / 5.0;
        assert!(
            last > first + 0.3,
            "{estimator:?}: mean reward {first:.3} -> {last:.3} (scores {scores:?})"
        );
        // The checkpoint has no value head and resumes without one.
        let dir = tempfile::tempdir()?;
        trainer.save_checkpoint(&dir.path().join("c"), &[])?;
        assert!(!dir
            .path()
            .join("c")
            .join(super::ppo::VALUE_HEAD_FILE)
            .exists());
    }
    // group_size must divide rollouts.
    let mut bad = config(1, Trainable::All, 1e-2);
    bad.advantage = AdvantageEstimator::Grpo;
    bad.group_size = 3;
    assert!(bad.validate().is_err());
    Ok(())
}

#[test]
fn a_resumed_grpo_run_equals_the_uninterrupted_one() -> Result<()> {
    use super::advantage::AdvantageEstimator;
    let cfg = tiny_config(false);
    let weights = tiny_weights(&cfg, DType::F32);
    let mut run_cfg = config(4, Trainable::TopLayers(1), 1e-2);
    run_cfg.advantage = AdvantageEstimator::Grpo;
    run_cfg.group_size = 4;
    run_cfg.kl_in_loss = true;
    run_cfg.kl_target = Some(1.0);
    run_cfg.kl_horizon = 50.0;
    let mut scorer = FractionOfWanted;
    let mut full = PpoTrainer::new(&cfg, weights.clone(), &weights, data(), run_cfg.clone())?;
    while !full.is_done() {
        full.step(&mut scorer)?;
    }
    let dir = tempfile::tempdir()?;
    let ckpt = dir.path().join("checkpoint-2");
    let mut first = PpoTrainer::new(&cfg, weights.clone(), &weights, data(), run_cfg.clone())?;
    first.step(&mut scorer)?;
    first.step(&mut scorer)?;
    first.save_checkpoint(&ckpt, &[])?;
    drop(first);
    let mut second = PpoTrainer::resume(&ckpt, &weights, data(), run_cfg.clone())?;
    while !second.is_done() {
        second.step(&mut scorer)?;
    }
    let curve = |t: &PpoTrainer| {
        let mut h = t.state().history.clone();
        h.iter_mut().for_each(|s| s.seconds = 0.0);
        h
    };
    assert_eq!(curve(&full), curve(&second));
    let (a, b) = (full.policy_weights(), second.policy_weights());
    assert_eq!(max_weight_difference(&a, &b)?, 0.0);
    Ok(())
}

/// PPO steps (GAE with value head, PPO-ptx on) whose minibatches of 4 rollouts of 5–12
/// tokens run in parts of at most 24 padded tokens give the statistics and weights of whole
/// minibatches.
#[test]
fn token_budget_parts_give_the_whole_minibatch_update() -> Result<()> {
    let cfg = tiny_config(false);
    let weights = tiny_weights(&cfg, DType::F32);
    let with_ptx = || {
        let mut d = data();
        d.ptx = (0..6)
            .map(|i| super::data::TokenizedExample {
                tokens: (0..6 + i).map(|t| 6 + t as u32).collect(),
                loss_mask: (0..6 + i).map(|t| t >= 2).collect(),
            })
            .collect();
        d
    };
    let run = |budget| -> Result<PpoTrainer> {
        let mut run_cfg = config(2, Trainable::All, 1e-2);
        run_cfg.max_batch_tokens = budget;
        run_cfg.ptx_coef = 0.5;
        let mut t = PpoTrainer::new(&cfg, weights.clone(), &weights, with_ptx(), run_cfg)?;
        while !t.is_done() {
            t.step(&mut FractionOfWanted)?;
        }
        Ok(t)
    };
    let (whole, parts) = (run(None)?, run(Some(24))?);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * a.abs().max(1.0);
    for (a, b) in whole.state().history.iter().zip(&parts.state().history) {
        assert_eq!((a.score, a.response_len), (b.score, b.response_len));
        for (x, y) in [
            (a.policy_loss, b.policy_loss),
            (a.value_loss, b.value_loss),
            (a.approx_kl, b.approx_kl),
            (a.clip_frac, b.clip_frac),
            (a.ptx_loss.unwrap(), b.ptx_loss.unwrap()),
        ] {
            assert!(close(x, y), "step {}: {x} vs {y}", a.step);
        }
    }
    let (a, b) = (whole.policy_weights(), parts.policy_weights());
    assert!(max_weight_difference(&a, &b)? < 1e-4);
    assert!(max_weight_difference(&a, &weights)? > 1e-3);
    Ok(())
}

/// A resumed run whose reward sources differ from the checkpoint's is refused, naming what
/// differs; the same sources resume, and a checkpoint written before the sources were
/// recorded (null) is not checked.
#[test]
fn ppo_resume_refuses_a_changed_reward() -> Result<()> {
    let cfg = tiny_config(false);
    let weights = tiny_weights(&cfg, DType::F32);
    let run_cfg = config(2, Trainable::TopLayers(1), 1e-2);
    let dir = tempfile::tempdir()?;
    let ckpt = dir.path().join("checkpoint-1");
    let mut first = PpoTrainer::new(&cfg, weights.clone(), &weights, data(), run_cfg.clone())?;
    first.step(&mut FractionOfWanted)?;
    first.save_checkpoint(&ckpt, &[])?;
    let changed = || {
        let mut d = data();
        d.reward_sources = serde_json::json!({"reward_model": {"sha256": "bb"}, "weights": [1.0]});
        d
    };
    let err = PpoTrainer::resume(&ckpt, &weights, changed(), run_cfg.clone())
        .err()
        .expect("a changed reward model must be refused")
        .to_string();
    assert!(
        err.contains("the reward differs") && err.contains("reward_model.sha256: \"aa\" -> \"bb\""),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let same = PpoTrainer::resume(&ckpt, &weights, data(), run_cfg.clone())?;
    assert_eq!(same.state().step, 1);
    // A checkpoint without the record resumes with any sources and records them.
    let state_file = ckpt.join(crate::artifacts::TRAINER_STATE_FILE);
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file)?)?;
    state.as_object_mut().unwrap().remove("reward_sources");
    std::fs::write(&state_file, state.to_string())?;
    let old = PpoTrainer::resume(&ckpt, &weights, changed(), run_cfg)?;
    assert_eq!(old.state().reward_sources["reward_model"]["sha256"], "bb");
    Ok(())
}

/// GRPO with some prompts' responses unscored: they are counted, left out of the score, and
/// the step still trains on the others; a step with no score at all is a clear error.
#[test]
fn overflowed_rollouts_are_dropped_and_counted() -> Result<()> {
    use super::advantage::AdvantageEstimator;
    let cfg = tiny_config(false);
    let weights = tiny_weights(&cfg, DType::F32);
    let mut run_cfg = config(1, Trainable::All, 1e-2);
    run_cfg.advantage = AdvantageEstimator::Grpo;
    run_cfg.group_size = 4;
    let mut trainer = PpoTrainer::new(&cfg, weights.clone(), &weights, data(), run_cfg.clone())?;
    // The step's two prompts, from a run that scores everything: the first one's four
    // responses go unscored.
    let mut probe = PpoTrainer::new(&cfg, weights.clone(), &weights, data(), run_cfg.clone())?;
    let all = probe.step(&mut UnscoredPrompts(Vec::new()))?;
    let first_prompt = all.rollouts[0].prompt;
    let step = trainer.step(&mut UnscoredPrompts(vec![first_prompt]))?;
    assert_eq!(step.stats.unscored, 4);
    assert_eq!(step.scores.iter().filter(|s| s.is_none()).count(), 4);
    // The score is the mean over the four scored responses (those of the second prompt).
    let kept: Vec<f64> = all.rollouts[4..].iter().map(mean_token).collect();
    assert!((step.stats.score - mean(&kept)).abs() < 1e-12);
    assert_eq!(all.stats.unscored, 0);
    assert!(max_weight_difference(&trainer.policy_weights(), &weights)? > 0.0);
    // Nothing scored: no update, a one-line error naming the cause.
    let mut none = PpoTrainer::new(&cfg, weights.clone(), &weights, data(), run_cfg)?;
    let err = none
        .step(&mut UnscoredPrompts((0..12).collect()))
        .err()
        .expect("a step without scores must fail")
        .to_string();
    assert!(
        err.contains("none of the 8 responses could be scored"),
        "{err}"
    );
    Ok(())
}

/// GRPO steps with seq-mean and seq-sum-norm aggregation (k3 KL in the loss) run in parts of
/// at most 24 padded tokens give the statistics and weights of whole minibatches, and the
/// aggregations give different policy losses on the same first step's rollouts.
#[test]
fn loss_aggregation_parts_give_the_whole_minibatch_update() -> Result<()> {
    use super::advantage::AdvantageEstimator;
    use super::ppo_math::LossAggregation;
    let cfg = tiny_config(false);
    let weights = tiny_weights(&cfg, DType::F32);
    let run = |aggregation, budget| -> Result<PpoTrainer> {
        let mut run_cfg = config(2, Trainable::All, 1e-2);
        run_cfg.advantage = AdvantageEstimator::Grpo;
        run_cfg.group_size = 4;
        run_cfg.kl_in_loss = true;
        run_cfg.loss_aggregation = aggregation;
        run_cfg.max_batch_tokens = budget;
        let mut t = PpoTrainer::new(&cfg, weights.clone(), &weights, data(), run_cfg)?;
        while !t.is_done() {
            t.step(&mut UnscoredPrompts(Vec::new()))?;
        }
        Ok(t)
    };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * a.abs().max(1.0);
    let mut first_losses = Vec::new();
    for aggregation in [
        LossAggregation::TokenMean,
        LossAggregation::SeqMean,
        LossAggregation::SeqSumNorm,
    ] {
        let (whole, parts) = (run(aggregation, None)?, run(aggregation, Some(24))?);
        for (a, b) in whole.state().history.iter().zip(&parts.state().history) {
            assert_eq!((a.score, a.response_len), (b.score, b.response_len));
            for (x, y) in [
                (a.policy_loss, b.policy_loss),
                (a.approx_kl, b.approx_kl),
                (a.clip_frac, b.clip_frac),
            ] {
                assert!(close(x, y), "{aggregation:?} step {}: {x} vs {y}", a.step);
            }
        }
        let (a, b) = (whole.policy_weights(), parts.policy_weights());
        assert!(max_weight_difference(&a, &b)? < 1e-4, "{aggregation:?}");
        first_losses.push(whole.state().history[0].policy_loss);
    }
    assert!(
        first_losses[0] != first_losses[1] && first_losses[1] != first_losses[2],
        "{first_losses:?}"
    );
    Ok(())
}
