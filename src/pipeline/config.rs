//! The pipeline config file: shared settings, then one optional section per stage holding that
//! stage's own config (the fields of `cai revise --config`, `cai train sft --config`, …).
//!
//! A section that is present (even empty) enables its stage. Paths are relative to the working
//! directory, like every other cai config. The fields that connect stages (outputs, inputs made
//! by an earlier stage) are set by the pipeline; setting one in a section is an error that names
//! its place in the file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer, Serialize};

use super::stage::Stage;
use crate::llm::BackendKind;
use crate::stages::dpo::TrainDpoConfig;
use crate::stages::eval::EvalConfig;
use crate::stages::label::LabelConfig;
use crate::stages::ppo::PpoRunConfig;
use crate::stages::revise::ReviseConfig;
use crate::stages::rm::TrainRmConfig;
use crate::stages::sample::SampleConfig;
use crate::stages::sft::SftRunConfig;
use crate::train::advantage::AdvantageEstimator;
use crate::train::reward_data::DataSource;
use crate::yaml_locate::{locate, Seg};

/// `cai pipeline --config FILE`: every field has a default; unknown keys are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Run folder: each stage's outputs, `stages/*.done.json`, `report.md`
    /// (default `runs/pipeline`).
    pub run_dir: PathBuf,
    /// Seed of every stage whose section does not set its own (default 0).
    pub seed: u64,
    /// Constitution of revise and label (default `constitutions/harmless.yaml`).
    pub constitution: PathBuf,
    /// Backend of revise, sample and label unless their section sets `backend` (default local).
    pub backend: BackendKind,
    /// Model of every stage whose section does not set `model`: revise and label run it, SFT
    /// and the reward model start from it. Sample runs the SFT model (default `default`).
    pub model: String,
    /// Human-labelled pairs: the label stage labels them too and compares (`cai compare`).
    pub human_pairs: Option<HumanPairs>,
    /// Reward-model data: the AI labels' weight and human pairs mixed in.
    pub mix: Mix,
    #[serde(deserialize_with = "section")]
    pub revise: Option<ReviseConfig>,
    #[serde(deserialize_with = "section")]
    pub sft: Option<SftRunConfig>,
    #[serde(deserialize_with = "section")]
    pub sample: Option<SampleConfig>,
    #[serde(deserialize_with = "section")]
    pub label: Option<LabelConfig>,
    #[serde(deserialize_with = "section")]
    pub rm: Option<TrainRmConfig>,
    #[serde(deserialize_with = "section")]
    pub dpo: Option<TrainDpoConfig>,
    #[serde(deserialize_with = "section")]
    pub ppo: Option<PpoRunConfig>,
    /// The policy trainer with a critic-free advantage (`ppo.advantage`: grpo by default,
    /// rloo or reinforce), in its own folder.
    #[serde(deserialize_with = "section")]
    pub grpo: Option<PpoRunConfig>,
    #[serde(deserialize_with = "section")]
    pub eval: Option<EvalConfig>,
    /// Keys written in the file, as dotted paths (`label.seed`, `sft.train.seed`).
    #[serde(skip)]
    pub written: BTreeSet<String>,
    /// The file's text, to locate keys in error messages.
    #[serde(skip)]
    pub source: Option<(PathBuf, String)>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            run_dir: PathBuf::from("runs/pipeline"),
            seed: 0,
            constitution: PathBuf::from("constitutions/harmless.yaml"),
            backend: BackendKind::Local,
            model: "default".into(),
            human_pairs: None,
            mix: Mix::default(),
            revise: None,
            sft: None,
            sample: None,
            label: None,
            rm: None,
            dpo: None,
            ppo: None,
            grpo: None,
            eval: None,
            written: BTreeSet::new(),
            source: None,
        }
    }
}

/// Human-labelled pairs for measuring AI label quality.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HumanPairs {
    /// Pairs with a human choice (HH-RLHF, TRL or our rows with `human`).
    pub path: PathBuf,
    /// Only the first N pairs are labelled (default all).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Bootstrap resamples of the agreement interval (default 1000).
    #[serde(default = "default_bootstrap")]
    pub bootstrap: usize,
}

fn default_bootstrap() -> usize {
    1000
}

/// What the reward model and DPO train on, as in Bai et al. 2022 §4.1: AI harmlessness labels
/// from the label stage mixed with human (helpfulness) comparisons; DPO may add the SL-CAI pairs
/// of the revise stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mix {
    /// Weight of every AI-labelled pair in the loss (default 1).
    pub ai_labels: f64,
    /// Human pair files with their weights: `[{path: helpful.jsonl, weight: 1.0}]`.
    pub human: Vec<DataSource>,
    /// DPO only: weight of the revise stage's SL-CAI pairs (the final revision preferred to the
    /// initial answer, as in Hugging Face's Constitutional AI recipe); 0 leaves them out
    /// (default 0).
    pub revisions: f64,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            ai_labels: 1.0,
            human: Vec::new(),
            revisions: 0.0,
        }
    }
}

/// A section that is present enables its stage, even when empty (`revise:` alone).
fn section<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<Option<T>, D::Error> {
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

/// Fields each section may not set, because the pipeline wires them.
fn wired(stage: Stage) -> &'static [&'static str] {
    match stage {
        Stage::Revise => &["out", "constitution"],
        Stage::Sft => &["out", "resume"],
        Stage::Sample => &["out"],
        Stage::Label => &["out", "constitution"],
        Stage::Rm => &["out", "data"],
        Stage::Dpo => &["out", "data"],
        Stage::Ppo | Stage::Grpo => &["out", "resume", "labeler.constitution"],
        Stage::Eval => &["out", "labeler.constitution"],
    }
}

impl PipelineConfig {
    /// Reads and checks a pipeline file; errors name `file:line:column`.
    pub fn read(path: &Path) -> Result<Self> {
        let mut cfg: Self = crate::config_file::read_yaml(path)?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let value: serde_yaml::Value =
            serde_yaml::from_str(&text).with_context(|| format!("{}: not YAML", path.display()))?;
        collect_keys(&value, "", &mut cfg.written);
        cfg.source = Some((path.to_path_buf(), text));
        cfg.validate()?;
        Ok(cfg)
    }

    /// Whether the file sets the dotted key (`label.seed`).
    pub fn is_set(&self, key: &str) -> bool {
        self.written.contains(key)
    }

    /// Stages with a section, in pipeline order.
    pub fn enabled(&self) -> Vec<Stage> {
        Stage::ALL.into_iter().filter(|s| self.has(*s)).collect()
    }

    /// Whether the stage's section is present.
    pub fn has(&self, stage: Stage) -> bool {
        match stage {
            Stage::Revise => self.revise.is_some(),
            Stage::Sft => self.sft.is_some(),
            Stage::Sample => self.sample.is_some(),
            Stage::Label => self.label.is_some(),
            Stage::Rm => self.rm.is_some(),
            Stage::Dpo => self.dpo.is_some(),
            Stage::Ppo => self.ppo.is_some(),
            Stage::Grpo => self.grpo.is_some(),
            Stage::Eval => self.eval.is_some(),
        }
    }

    /// `file:line:column` of a dotted key, for messages (just the file without a source).
    pub fn locate(&self, key: &str) -> String {
        match &self.source {
            Some((path, text)) => {
                let segs: Vec<Seg> = key.split('.').map(Seg::Key).collect();
                let (line, col) = locate(text, &segs);
                format!("{}:{line}:{col}", path.display())
            }
            None => "pipeline config".into(),
        }
    }

    /// Refuses wired fields, unavailable stages, missing inputs and bad weights.
    pub fn validate(&self) -> Result<()> {
        for stage in self.enabled() {
            for field in wired(stage) {
                let key = format!("{stage}.{field}");
                if self.is_set(&key) {
                    bail!(
                        "{}: `{key}` is set by the pipeline (outputs go to the run folder, inputs \
                         come from the stage before); remove it",
                        self.locate(&key)
                    );
                }
            }
        }
        self.check_inputs()?;
        let weights =
            std::iter::once(self.mix.ai_labels).chain(self.mix.human.iter().map(|d| d.weight));
        for w in weights {
            if !(w.is_finite() && w > 0.0) {
                bail!(
                    "{}: mix weights must be positive, got {w}",
                    self.locate("mix")
                );
            }
        }
        if !(self.mix.revisions.is_finite() && self.mix.revisions >= 0.0) {
            bail!(
                "{}: `mix.revisions` must be 0 (off) or positive, got {}",
                self.locate("mix.revisions"),
                self.mix.revisions
            );
        }
        if self.enabled().is_empty() {
            bail!(
                "no stage enabled: add at least one of the sections {}",
                Stage::ALL.map(|s| format!("`{s}:`")).join(", ")
            );
        }
        Ok(())
    }

    /// Each enabled stage's input comes from the stage before or from its own section.
    fn check_inputs(&self) -> Result<()> {
        let need = |stage: Stage, key: &str, producer: Stage| -> Result<()> {
            let key = format!("{stage}.{key}");
            match (self.has(stage), self.has(producer), self.is_set(&key)) {
                (true, true, true) => bail!(
                    "{}: `{key}` comes from the `{producer}` stage; remove it, or remove the \
                     `{producer}:` section to use your own file",
                    self.locate(&key)
                ),
                (true, false, false) => bail!(
                    "stage `{stage}` needs an input: add a `{producer}:` section, or set `{key}`"
                ),
                _ => Ok(()),
            }
        };
        need(Stage::Sft, "data", Stage::Revise)?;
        need(Stage::Label, "pairs", Stage::Sample)?;
        need(Stage::Ppo, "policy", Stage::Sft)?;
        need(Stage::Ppo, "reward_model", Stage::Rm)?;
        if self.has(Stage::Rm) && !self.has(Stage::Label) && self.mix.human.is_empty() {
            bail!(
                "stage `rm` needs training pairs: add a `label:` section or human pairs under \
                 `mix.human`"
            );
        }
        self.check_dpo()?;
        self.check_grpo()?;
        self.check_eval()
    }

    /// A wired input of `stage` set in its section while `producer` makes it.
    fn refuse_wired(&self, stage: Stage, key: &str, producer: Stage) -> Result<()> {
        let key = format!("{stage}.{key}");
        if self.has(producer) && self.is_set(&key) {
            bail!(
                "{}: `{key}` comes from the `{producer}` stage; remove it, or remove the \
                 `{producer}:` section to use your own",
                self.locate(&key)
            );
        }
        Ok(())
    }

    /// DPO starts from the SFT policy (or `model`) and needs pairs from label, `mix.human` or
    /// the revise stage.
    fn check_dpo(&self) -> Result<()> {
        if !self.has(Stage::Dpo) {
            return Ok(());
        }
        self.refuse_wired(Stage::Dpo, "model", Stage::Sft)?;
        if self.mix.revisions > 0.0 && !self.has(Stage::Revise) {
            bail!(
                "{}: `mix.revisions` weighs the revise stage's pairs, but there is no \
                 `revise:` section",
                self.locate("mix.revisions")
            );
        }
        let has_pairs =
            self.has(Stage::Label) || !self.mix.human.is_empty() || self.mix.revisions > 0.0;
        if !has_pairs {
            bail!(
                "stage `dpo` needs training pairs: add a `label:` section, human pairs under \
                 `mix.human`, or the revise stage's SL-CAI pairs with `mix.revisions: 1.0`"
            );
        }
        Ok(())
    }

    /// GRPO starts from the SFT policy (or `model`), has a reward source, and no critic.
    fn check_grpo(&self) -> Result<()> {
        let Some(g) = &self.grpo else {
            return Ok(());
        };
        self.refuse_wired(Stage::Grpo, "policy", Stage::Sft)?;
        self.refuse_wired(Stage::Grpo, "reward_model", Stage::Rm)?;
        if self.is_set("grpo.ppo.advantage") && g.ppo.advantage == AdvantageEstimator::Gae {
            bail!(
                "{}: the grpo stage is critic-free: `advantage` is grpo (default), rloo or \
                 reinforce; GAE with a value head is the `ppo:` stage",
                self.locate("grpo.ppo.advantage")
            );
        }
        let wants_model = g.reward.reward_model > 0.0;
        if wants_model && !self.has(Stage::Rm) && g.reward_model.is_none() {
            bail!(
                "stage `grpo` needs a reward: add an `rm:` section, set `grpo.reward_model`, or \
                 rate with the feedback model alone: `reward: {{reward_model: 0, labeler: 1}}`"
            );
        }
        Ok(())
    }

    /// Eval's two policies: stage names (`sft`, `dpo`, `ppo`, `grpo`) must be enabled, and
    /// without `policy_a` some stage must train one.
    fn check_eval(&self) -> Result<()> {
        let Some(e) = &self.eval else {
            return Ok(());
        };
        for key in ["policy_a", "policy_b"] {
            let value = if key == "policy_a" {
                &e.policy_a
            } else {
                &e.policy_b
            };
            let dotted = format!("eval.{key}");
            if !self.is_set(&dotted) {
                continue;
            }
            if let Some(stage) = policy_stage(value) {
                if !self.has(stage) {
                    bail!(
                        "{}: `{dotted}: {value}` names the `{stage}` stage, which has no \
                         section here",
                        self.locate(&dotted)
                    );
                }
            }
        }
        if !self.is_set("eval.policy_a") && self.trained_policy().is_none() {
            bail!(
                "stage `eval` needs a policy to test: add a `dpo:`, `ppo:` or `grpo:` section, \
                 or set `eval.policy_a` (a model, or the name of a stage: sft, dpo, ppo, grpo)"
            );
        }
        Ok(())
    }

    /// The policy eval tests by default: the last enabled of grpo, ppo and dpo.
    pub fn trained_policy(&self) -> Option<Stage> {
        [Stage::Grpo, Stage::Ppo, Stage::Dpo]
            .into_iter()
            .find(|s| self.has(*s))
    }
}

/// The policy-training stage a value of `eval.policy_a`/`policy_b` names, if it is one.
pub fn policy_stage(value: &str) -> Option<Stage> {
    Stage::POLICIES.into_iter().find(|s| s.name() == value)
}

/// Every key path of a YAML mapping tree, dotted (`sft`, `sft.train`, `sft.train.seed`).
fn collect_keys(v: &serde_yaml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let serde_yaml::Value::Mapping(m) = v {
        for (k, child) in m {
            if let Some(k) = k.as_str() {
                let key = match prefix {
                    "" => k.to_string(),
                    p => format!("{p}.{k}"),
                };
                collect_keys(child, &key, out);
                out.insert(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PipelineConfig> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, text)?;
        PipelineConfig::read(&path)
    }

    #[test]
    fn sections_enable_stages_and_keys_are_recorded() -> Result<()> {
        let c = parse("seed: 3\nrevise:\nsft:\n  train:\n    seed: 9\n")?;
        assert_eq!(c.enabled(), vec![Stage::Revise, Stage::Sft]);
        assert!(c.is_set("sft.train.seed") && c.is_set("seed") && !c.is_set("revise.seed"));
        assert_eq!(c.revise, Some(ReviseConfig::default()));
        Ok(())
    }

    #[test]
    fn unknown_and_wired_keys_are_refused_with_their_place() {
        let err = format!("{:#}", parse("seed: 1\nlabel:\n  sed: 2\n").unwrap_err());
        assert!(err.contains("p.yaml:3:") && err.contains("sed"), "{err}");
        assert!(
            err.contains("expected one of") && err.contains("`seed`"),
            "{err}"
        );
        let err = format!("{:#}", parse("runs: x\n").unwrap_err());
        assert!(
            err.contains("run_dir") && err.contains("p.yaml:1:"),
            "{err}"
        );
        let err = format!("{:#}", parse("revise:\n  out: x.jsonl\n").unwrap_err());
        assert!(
            err.contains("p.yaml:2:3") && err.contains("`revise.out`"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            parse("revise:\nsft:\n  data: d.jsonl\n").unwrap_err()
        );
        assert!(
            err.contains("`sft.data` comes from the `revise` stage"),
            "{err}"
        );
        let err = format!("{:#}", parse("sft:\n").unwrap_err());
        assert!(err.contains("`sft.data`"), "{err}");
        let err = format!("{:#}", parse("rm:\n").unwrap_err());
        assert!(err.contains("mix.human"), "{err}");
        let err = format!(
            "{:#}",
            parse("revise:\nppo:\n  ppo: {steps: 3}\n").unwrap_err()
        );
        assert!(err.contains("`ppo.policy`"), "{err}");
        let err = format!(
            "{:#}",
            parse("ppo:\n  policy: p\n  reward_model: r\n  stepz: 3\n").unwrap_err()
        );
        assert!(
            err.contains("p.yaml:4:") && err.contains("`stepz`"),
            "{err}"
        );
        let err = format!("{:#}", parse("seed: 1\n").unwrap_err());
        assert!(err.contains("no stage enabled"), "{err}");
        let err = format!(
            "{:#}",
            parse("label:\n  pairs: p.jsonl\nmix:\n  ai_labels: 0\n").unwrap_err()
        );
        assert!(err.contains("positive"), "{err}");
    }

    #[test]
    fn dpo_grpo_and_eval_sections_are_checked() {
        let err = |text: &str| format!("{:#}", parse(text).unwrap_err());
        let e = err("sft: {data: d.jsonl}\ndpo: {}\n");
        assert!(e.contains("stage `dpo` needs training pairs"), "{e}");
        let e = err("mix: {revisions: 1}\nsft: {data: d.jsonl}\ndpo: {}\n");
        assert!(e.contains("no `revise:` section"), "{e}");
        let e = err("sft: {data: d.jsonl}\ngrpo: {ppo: {advantage: gae}}\n");
        assert!(e.contains("p.yaml:2:") && e.contains("critic-free"), "{e}");
        let e = err("sft: {data: d.jsonl}\ngrpo: {}\n");
        assert!(e.contains("stage `grpo` needs a reward"), "{e}");
        let e =
            err("sft: {data: d.jsonl}\ngrpo: {policy: p, reward: {reward_model: 0, labeler: 1}}\n");
        assert!(
            e.contains("`grpo.policy` comes from the `sft` stage"),
            "{e}"
        );
        let e = err("sft: {data: d.jsonl}\neval: {policy_a: ppo}\n");
        assert!(e.contains("names the `ppo` stage"), "{e}");
        let e = err("sft: {data: d.jsonl}\neval: {}\n");
        assert!(e.contains("stage `eval` needs a policy"), "{e}");
        let ok = parse(
            "sft: {data: d.jsonl}\ngrpo: {reward: {reward_model: 0, labeler: 1}, \
             ppo: {advantage: rloo}}\neval: {policy_b: sft}\n",
        );
        assert_eq!(ok.unwrap().trained_policy(), Some(Stage::Grpo));
    }
}
