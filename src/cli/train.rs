//! `cai train <stage>`: one subcommand per trainer.

use anyhow::Result;
use clap::Subcommand;

use super::dpo::DpoArgs;
use super::ppo::PpoArgs;
use super::rm::RmArgs;
use super::sft::SftArgs;

/// `cai train <stage>`.
#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Supervised fine-tuning on critique → revision data (SL-CAI) or TRL SFT rows.
    Sft(SftArgs),
    /// Reward model on AI and/or human preference labels, evaluated on held-out pairs: the
    /// --eval file's (normally human labels), or whole training conversations drawn at random
    /// by --seed, whose sources (ai, human, revisions) are printed and kept in metrics.json.
    ///
    /// Held-out numbers: accuracy over the pairs with a decided label (p_a ≠ 0.5; a reward tie
    /// counts ½), ECE of σ(r_a − r_b) against p_a and the mean soft cross-entropy over all
    /// held-out pairs, ties (p_a = 0.5) included, unweighted, raw (uncalibrated) rewards.
    Rm(RmArgs),
    /// PPO of a policy (normally the SFT model) against the reward model or the feedback
    /// model's ratings, with a KL penalty to a reference; `--advantage grpo|rloo|reinforce` for
    /// the critic-free variants.
    Ppo(PpoArgs),
    /// DPO (and cDPO, rDPO, IPO, SLiC) of a policy on AI labels, human pairs and SL-CAI
    /// revision pairs, against a frozen reference: no reward model, no sampling.
    ///
    /// Data, any mix (`FILE:WEIGHT` weights a file's pairs in the loss): `cai label` rows keep
    /// their soft label p_a; human pairs (HH-RLHF, TRL preference rows, ours) their human label
    /// (rows without one are skipped); `cai revise` records give the SL-CAI pair "final
    /// revision preferred to the initial answer" (records never revised are skipped). Pairs
    /// whose two responses are the same text or, after --max-len, the same tokens carry no
    /// preference and are dropped. Labels of exactly 0.5 (ties) are dropped by the losses that
    /// round the label (sigmoid, robust, hinge) and kept by cdpo and ipo, which pull a tie's
    /// margin to 0. Every drop is counted on stderr; no pair left is an error.
    ///
    /// Held-out pairs: the --eval file's (training pairs of its conversations are dropped and
    /// counted), or whole training conversations drawn at random by --seed; their sources (ai,
    /// human, revisions) are printed and kept in metrics.json. Accuracy, margin and drifts are
    /// over the held-out pairs with a decided label (p_a ≠ 0.5); the held-out loss is over the
    /// pairs the loss keeps (ties too for cdpo and ipo), weighted by source as in training.
    Dpo(DpoArgs),
}

impl TrainCommand {
    /// Runs the trainer; `m` are its subcommand's matches.
    pub fn run(self, m: &clap::ArgMatches) -> Result<()> {
        match self {
            Self::Sft(_) => super::sft::run(m),
            Self::Rm(_) => super::rm::run(m),
            Self::Ppo(_) => super::ppo::run(m),
            Self::Dpo(_) => super::dpo::run(m),
        }
    }
}
