//! The pipeline's stages and where each one's outputs lie in the run folder: what every part
//! of `cai pipeline` names, apart from `pipeline/mod.rs` so that the parts do not import it.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::artifacts::{FINAL_DIR, REPORT, SAMPLES};

/// One stage of the pipeline, in run order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Critique → revision data (`cai revise`).
    Revise,
    /// Supervised fine-tuning on the revisions (`cai train sft`).
    Sft,
    /// K responses per prompt from the SFT model, and their pairs (`cai sample`).
    Sample,
    /// AI preference labels of the pairs (`cai label`), and agreement with human labels.
    Label,
    /// Reward model on AI labels mixed with human pairs (`cai train rm`).
    Rm,
    /// Direct preference optimisation of the SFT policy on the labels (`cai train dpo`).
    Dpo,
    /// RL against the reward model (`cai train ppo`).
    Ppo,
    /// Critic-free RL: G responses per prompt, group-relative advantages (`cai train ppo
    /// --advantage grpo`), rewarded by the reward model or the feedback model directly.
    Grpo,
    /// Win rates of one policy of the run against another (`cai eval`).
    Eval,
}

impl crate::choice::Choice for Stage {
    const CHOICES: &'static [(&'static str, Self, &'static str)] = &[
        (
            "revise",
            Self::Revise,
            "critique -> revision data (cai revise)",
        ),
        ("sft", Self::Sft, "supervised fine-tuning on the revisions"),
        (
            "sample",
            Self::Sample,
            "K responses per prompt from the SFT model, and their pairs",
        ),
        ("label", Self::Label, "AI preference labels of the pairs"),
        ("rm", Self::Rm, "reward model on AI labels and human pairs"),
        ("dpo", Self::Dpo, "DPO of the SFT policy on the labels"),
        ("ppo", Self::Ppo, "PPO against the reward model"),
        (
            "grpo",
            Self::Grpo,
            "critic-free RL (GRPO) with the reward model or the feedback model",
        ),
        (
            "eval",
            Self::Eval,
            "win rates of one policy of the run against another",
        ),
    ];
}

impl Stage {
    /// Every stage, in run order.
    pub const ALL: [Stage; 9] = [
        Stage::Revise,
        Stage::Sft,
        Stage::Sample,
        Stage::Label,
        Stage::Rm,
        Stage::Dpo,
        Stage::Ppo,
        Stage::Grpo,
        Stage::Eval,
    ];

    /// The stages that train a policy, whose `final/` folders eval can compare.
    pub const POLICIES: [Stage; 4] = [Stage::Sft, Stage::Dpo, Stage::Ppo, Stage::Grpo];

    /// The section name in the config file and the folder name in the run folder.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Revise => "revise",
            Stage::Sft => "sft",
            Stage::Sample => "sample",
            Stage::Label => "label",
            Stage::Rm => "rm",
            Stage::Dpo => "dpo",
            Stage::Ppo => "ppo",
            Stage::Grpo => "grpo",
            Stage::Eval => "eval",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where things live in a run folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `<run>/<stage>/`: everything the stage writes.
    pub fn stage_dir(&self, stage: Stage) -> PathBuf {
        self.root.join(stage.name())
    }

    /// `<run>/stages/`: done and attempt files.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("stages")
    }

    pub fn done_file(&self, stage: Stage) -> PathBuf {
        self.state_dir().join(format!("{stage}.done.json"))
    }

    pub fn attempt_file(&self, stage: Stage) -> PathBuf {
        self.state_dir().join(format!("{stage}.attempt.json"))
    }

    pub fn revisions(&self) -> PathBuf {
        self.stage_dir(Stage::Revise).join("revisions.jsonl")
    }

    pub fn sft_final(&self) -> PathBuf {
        self.final_dir(Stage::Sft)
    }

    pub fn samples(&self) -> PathBuf {
        self.stage_dir(Stage::Sample).join(SAMPLES)
    }

    /// Written by `cai sample` next to [`Self::samples`].
    pub fn sample_pairs(&self) -> PathBuf {
        self.stage_dir(Stage::Sample).join("samples.pairs.jsonl")
    }

    pub fn labels(&self) -> PathBuf {
        self.stage_dir(Stage::Label).join("labels.jsonl")
    }

    /// AI labels of the human-labelled pairs.
    pub fn human_check(&self) -> PathBuf {
        self.stage_dir(Stage::Label).join("human-check.jsonl")
    }

    /// `cai compare` report folder of [`Self::human_check`].
    pub fn compare_dir(&self) -> PathBuf {
        self.stage_dir(Stage::Label).join("compare")
    }

    pub fn rm_dir(&self) -> PathBuf {
        self.stage_dir(Stage::Rm)
    }

    pub fn rm_final(&self) -> PathBuf {
        self.final_dir(Stage::Rm)
    }

    /// `final/` of a training stage: a model folder every stage loads.
    pub fn final_dir(&self, stage: Stage) -> PathBuf {
        self.stage_dir(stage).join(FINAL_DIR)
    }

    pub fn report(&self) -> PathBuf {
        self.root.join(REPORT)
    }

    /// The fully resolved config of the last invocation.
    pub fn resolved_config(&self) -> PathBuf {
        self.root.join("pipeline.yaml")
    }

    /// A copy of the constitution the run used.
    pub fn constitution(&self) -> PathBuf {
        self.root.join("constitution.yaml")
    }
}
