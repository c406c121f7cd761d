//! The resolved config of every enabled stage: the section's own settings, the shared defaults
//! it does not override (seed, backend, model), and the wiring (outputs in the run folder,
//! inputs from the stage before), with the inputs and outputs the skip logic hashes.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use super::config::{policy_stage, PipelineConfig};
use super::stage::{RunDir, Stage};
use crate::artifacts::{EVAL_RESULT, FINAL_DIR, MANIFEST, METRICS, REPORT, TRAIN_LOG};
use crate::compare::CompareConfig;
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

/// What one stage runs (built once per invocation: the size of a variant does not matter).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Job {
    Revise(ReviseConfig),
    Sft(SftRunConfig),
    Sample(SampleConfig),
    Label(LabelJob),
    Rm(TrainRmConfig),
    Dpo(TrainDpoConfig),
    /// The ppo and grpo stages: one policy trainer, with or without a critic.
    Rl(PpoRunConfig),
    Eval(EvalConfig),
}

/// The label stage: the sampled pairs, and optionally the human-labelled pairs with the same
/// settings followed by `cai compare` against the human labels.
#[derive(Debug, Clone, Serialize)]
pub struct LabelJob {
    pub label: LabelConfig,
    pub human: Option<HumanCheck>,
}

/// Labels of the human-labelled pairs and their comparison with the human labels.
#[derive(Debug, Clone, Serialize)]
pub struct HumanCheck {
    pub label: LabelConfig,
    pub compare: CompareConfig,
}

/// Something a stage reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Input {
    /// A file or folder.
    Path(PathBuf),
    /// A model name (`default`, a path, a Hugging Face id), resolved when hashed.
    Model(String),
}

/// One stage, ready to fingerprint and run.
#[derive(Debug, Clone)]
pub struct StagePlan {
    pub stage: Stage,
    pub job: Job,
    /// Hashed into the fingerprint; a missing one stops the stage before it starts.
    pub inputs: Vec<Input>,
    /// What a complete stage leaves; hashed into its done file.
    pub outputs: Vec<PathBuf>,
}

impl StagePlan {
    /// The resolved config as JSON (for the fingerprint and `pipeline.yaml`).
    pub fn config_json(&self) -> Result<Value> {
        Ok(match &self.job {
            Job::Revise(c) => serde_json::to_value(c)?,
            Job::Sft(c) => serde_json::to_value(c)?,
            Job::Sample(c) => serde_json::to_value(c)?,
            Job::Label(c) => serde_json::to_value(c)?,
            Job::Rm(c) => serde_json::to_value(c)?,
            Job::Dpo(c) => serde_json::to_value(c)?,
            Job::Rl(c) => serde_json::to_value(c)?,
            Job::Eval(c) => serde_json::to_value(c)?,
        })
    }
}

/// The plan of every enabled stage, in order. `quiet` turns progress bars off.
pub fn plan(cfg: &PipelineConfig, run: &RunDir, quiet: bool) -> Result<Vec<StagePlan>> {
    let mut out = Vec::new();
    let seed = |key: &str, target: &mut u64| {
        if !cfg.is_set(key) {
            *target = cfg.seed;
        }
    };
    let model = |stage: Stage, target: &mut String| {
        if !cfg.is_set(&format!("{stage}.model")) {
            *target = cfg.model.clone();
        }
    };
    let backend = |stage: Stage, target: &mut BackendKind| {
        if !cfg.is_set(&format!("{stage}.backend")) {
            *target = cfg.backend;
        }
    };
    if let Some(section) = &cfg.revise {
        let mut c = section.clone();
        seed("revise.seed", &mut c.seed);
        backend(Stage::Revise, &mut c.backend);
        model(Stage::Revise, &mut c.model);
        c.constitution = cfg.constitution.clone();
        c.out = run.revisions();
        c.quiet |= quiet;
        let mut inputs = vec![
            Input::Path(c.constitution.clone()),
            Input::Path(c.prompts.clone()),
        ];
        inputs.extend(c.templates.clone().map(Input::Path));
        inputs.extend(generation_model(c.backend, &c.model));
        out.push(StagePlan {
            stage: Stage::Revise,
            outputs: vec![c.out.clone()],
            job: Job::Revise(c),
            inputs,
        });
    }
    if let Some(section) = &cfg.sft {
        let mut c = section.clone();
        seed("sft.train.seed", &mut c.train.seed);
        model(Stage::Sft, &mut c.model);
        if cfg.has(Stage::Revise) {
            c.data = Some(run.revisions());
        }
        c.out = run.stage_dir(Stage::Sft);
        c.quiet |= quiet;
        let mut inputs: Vec<Input> = c
            .data
            .iter()
            .chain(&c.eval)
            .cloned()
            .map(Input::Path)
            .collect();
        inputs.push(Input::Model(c.model.clone()));
        out.push(StagePlan {
            stage: Stage::Sft,
            outputs: vec![run.sft_final(), c.out.join(MANIFEST)],
            job: Job::Sft(c),
            inputs,
        });
    }
    if let Some(section) = &cfg.sample {
        let mut c = section.clone();
        seed("sample.seed", &mut c.seed);
        backend(Stage::Sample, &mut c.backend);
        if !cfg.is_set("sample.model") {
            c.model = match cfg.has(Stage::Sft) && c.backend != BackendKind::Openai {
                true => run.sft_final().to_string_lossy().into_owned(),
                false => cfg.model.clone(),
            };
        }
        c.out = run.samples();
        c.quiet |= quiet;
        let mut inputs = vec![Input::Path(c.prompts.clone())];
        inputs.extend(generation_model(c.backend, &c.model));
        out.push(StagePlan {
            stage: Stage::Sample,
            outputs: vec![c.out.clone(), run.sample_pairs()],
            job: Job::Sample(c),
            inputs,
        });
    }
    if let Some(section) = &cfg.label {
        out.push(label_plan(cfg, section, run, quiet));
    }
    if let Some(section) = &cfg.rm {
        let mut c = section.clone();
        seed("rm.train.seed", &mut c.train.seed);
        model(Stage::Rm, &mut c.model);
        c.data = preference_data(cfg, run);
        c.out = run.rm_dir();
        c.quiet |= quiet;
        let mut inputs: Vec<Input> = c.data.iter().map(|d| Input::Path(d.path.clone())).collect();
        inputs.extend(c.eval.clone().map(Input::Path));
        inputs.push(Input::Model(c.model.clone()));
        out.push(StagePlan {
            stage: Stage::Rm,
            outputs: vec![c.out.join(FINAL_DIR), c.out.join(METRICS)],
            job: Job::Rm(c),
            inputs,
        });
    }
    if let Some(section) = &cfg.dpo {
        out.push(dpo_plan(cfg, section, run, quiet));
    }
    if let Some(section) = &cfg.ppo {
        out.push(rl_plan(cfg, Stage::Ppo, section, run, quiet));
    }
    if let Some(section) = &cfg.grpo {
        out.push(rl_plan(cfg, Stage::Grpo, section, run, quiet));
    }
    if let Some(section) = &cfg.eval {
        out.push(eval_plan(cfg, section, run, quiet));
    }
    Ok(out)
}

/// The pairs the reward model and DPO train on: the AI labels of the label stage (weight
/// `mix.ai_labels`) and the human pairs of `mix.human`.
fn preference_data(cfg: &PipelineConfig, run: &RunDir) -> Vec<DataSource> {
    let labels = cfg.has(Stage::Label).then(|| DataSource {
        path: run.labels(),
        weight: cfg.mix.ai_labels,
    });
    labels
        .into_iter()
        .chain(cfg.mix.human.iter().cloned())
        .collect()
}

/// DPO of the SFT policy (or the run's model) on the AI labels, the human pairs of `mix.human`
/// and, with `mix.revisions`, the revise stage's SL-CAI pairs.
fn dpo_plan(
    cfg: &PipelineConfig,
    section: &TrainDpoConfig,
    run: &RunDir,
    quiet: bool,
) -> StagePlan {
    let mut c = section.clone();
    if !cfg.is_set("dpo.train.seed") {
        c.train.seed = cfg.seed;
    }
    if cfg.has(Stage::Sft) {
        c.model = run.sft_final().to_string_lossy().into_owned();
    } else if !cfg.is_set("dpo.model") {
        c.model = cfg.model.clone();
    }
    c.data = preference_data(cfg, run);
    if cfg.has(Stage::Revise) && cfg.mix.revisions > 0.0 {
        c.data.push(DataSource {
            path: run.revisions(),
            weight: cfg.mix.revisions,
        });
    }
    c.out = run.stage_dir(Stage::Dpo);
    c.quiet |= quiet;
    let mut inputs: Vec<Input> = c.data.iter().map(|d| Input::Path(d.path.clone())).collect();
    inputs.extend(c.eval.clone().map(Input::Path));
    inputs.push(Input::Model(c.model.clone()));
    inputs.extend(c.reference.clone().map(Input::Model));
    StagePlan {
        stage: Stage::Dpo,
        outputs: vec![
            run.final_dir(Stage::Dpo),
            c.out.join(METRICS),
            c.out.join(MANIFEST),
        ],
        job: Job::Dpo(c),
        inputs,
    }
}

/// The ppo or grpo stage: RL of the SFT policy against the run's reward model and/or the
/// feedback model (the run's constitution, and its model unless the section names one). The
/// grpo stage's advantage is `grpo` unless the section sets another critic-free one.
fn rl_plan(
    cfg: &PipelineConfig,
    stage: Stage,
    section: &PpoRunConfig,
    run: &RunDir,
    quiet: bool,
) -> StagePlan {
    let mut c = section.clone();
    if !cfg.is_set(&format!("{stage}.ppo.seed")) {
        c.ppo.seed = cfg.seed;
    }
    if stage == Stage::Grpo && !cfg.is_set("grpo.ppo.advantage") {
        c.ppo.advantage = AdvantageEstimator::Grpo;
    }
    if cfg.has(Stage::Sft) {
        c.policy = run.sft_final().to_string_lossy().into_owned();
    } else if stage == Stage::Grpo && !cfg.is_set("grpo.policy") {
        c.policy = cfg.model.clone();
    }
    if cfg.has(Stage::Rm) && c.reward.reward_model > 0.0 {
        c.reward_model = Some(run.rm_final());
    }
    let l = &mut c.labeler;
    l.constitution = cfg.constitution.clone();
    if !cfg.is_set(&format!("{stage}.labeler.model")) {
        l.model = cfg.model.clone();
    }
    if !cfg.is_set(&format!("{stage}.labeler.backend")) {
        l.backend = cfg.backend;
    }
    c.out = run.stage_dir(stage);
    c.quiet |= quiet;
    let mut inputs = vec![
        Input::Path(c.prompts.clone()),
        Input::Model(c.policy.clone()),
    ];
    inputs.extend(c.reference.clone().map(Input::Model));
    inputs.extend(c.reward_model.clone().map(Input::Path));
    inputs.extend(c.ptx_data.clone().map(Input::Path));
    if c.reward.labeler > 0.0 {
        inputs.push(Input::Path(c.labeler.constitution.clone()));
        inputs.extend(c.labeler.templates.clone().map(Input::Path));
        inputs.extend(generation_model(c.labeler.backend, &c.labeler.model));
    }
    StagePlan {
        stage,
        outputs: vec![
            run.final_dir(stage),
            c.out.join(TRAIN_LOG),
            c.out.join(MANIFEST),
        ],
        job: Job::Rl(c),
        inputs,
    }
}

/// A trained policy (A: the section's `policy_a`, or the last of grpo, ppo and dpo) against a
/// baseline (B: `policy_b`, or the SFT policy), judged by the labeler and the reward model.
/// Either may name a policy stage of the run (`sft`, `dpo`, `ppo`, `grpo`).
fn eval_plan(cfg: &PipelineConfig, section: &EvalConfig, run: &RunDir, quiet: bool) -> StagePlan {
    let mut c = section.clone();
    if !cfg.is_set("eval.seed") {
        c.seed = cfg.seed;
    }
    let l = &mut c.labeler;
    if !cfg.is_set("eval.labeler.seed") {
        l.seed = cfg.seed;
    }
    if !cfg.is_set("eval.labeler.backend") {
        l.backend = cfg.backend;
    }
    if !cfg.is_set("eval.labeler.model") {
        l.model = cfg.model.clone();
    }
    l.constitution = cfg.constitution.clone();
    let final_of = |stage: Stage| run.final_dir(stage).to_string_lossy().into_owned();
    c.policy_a = match (cfg.is_set("eval.policy_a"), cfg.trained_policy()) {
        (true, _) | (false, None) => policy_stage(&c.policy_a).map_or(c.policy_a, final_of),
        (false, Some(stage)) => final_of(stage),
    };
    c.policy_b = match (cfg.is_set("eval.policy_b"), cfg.has(Stage::Sft)) {
        (true, _) => policy_stage(&c.policy_b).map_or(c.policy_b, final_of),
        (false, true) => final_of(Stage::Sft),
        (false, false) => cfg.model.clone(),
    };
    if cfg.has(Stage::Rm) && !cfg.is_set("eval.reward_model") {
        c.reward_model = Some(run.rm_final());
    }
    c.out = run.stage_dir(Stage::Eval);
    c.quiet |= quiet;
    let mut inputs = vec![
        Input::Path(c.prompts.clone()),
        Input::Path(c.labeler.constitution.clone()),
    ];
    inputs.extend(c.labeler.templates.clone().map(Input::Path));
    inputs.extend(generation_model(c.labeler.backend, &c.policy_a));
    inputs.extend(generation_model(c.labeler.backend, &c.policy_b));
    inputs.extend(generation_model(c.labeler.backend, &c.labeler.model));
    inputs.extend(c.reward_model.clone().map(Input::Path));
    StagePlan {
        stage: Stage::Eval,
        outputs: vec![c.out.join(EVAL_RESULT), c.out.join(REPORT)],
        job: Job::Eval(c),
        inputs,
    }
}

fn label_plan(cfg: &PipelineConfig, section: &LabelConfig, run: &RunDir, quiet: bool) -> StagePlan {
    let mut c = section.clone();
    if !cfg.is_set("label.seed") {
        c.seed = cfg.seed;
    }
    if !cfg.is_set("label.backend") {
        c.backend = cfg.backend;
    }
    if !cfg.is_set("label.model") {
        c.model = cfg.model.clone();
    }
    c.constitution = cfg.constitution.clone();
    if cfg.has(Stage::Sample) {
        c.pairs = run.sample_pairs();
    }
    c.out = run.labels();
    c.quiet |= quiet;
    let mut inputs = vec![
        Input::Path(c.constitution.clone()),
        Input::Path(c.pairs.clone()),
    ];
    inputs.extend(c.templates.clone().map(Input::Path));
    inputs.extend(generation_model(c.backend, &c.model));
    let mut outputs = vec![c.out.clone()];
    let human = cfg.human_pairs.as_ref().map(|h| {
        let check = LabelConfig {
            pairs: h.path.clone(),
            out: run.human_check(),
            limit: h.limit,
            ..c.clone()
        };
        let compare = CompareConfig {
            human: h.path.clone(),
            ai: vec![check.out.clone()],
            report: Some(run.compare_dir()),
            bootstrap: h.bootstrap,
            seed: cfg.seed,
            ..CompareConfig::default()
        };
        inputs.push(Input::Path(h.path.clone()));
        outputs.push(check.out.clone());
        outputs.push(run.compare_dir().join(METRICS));
        HumanCheck {
            label: check,
            compare,
        }
    });
    StagePlan {
        stage: Stage::Label,
        job: Job::Label(LabelJob { label: c, human }),
        inputs,
        outputs,
    }
}

/// The model file or folder of a generating stage (servers and the mock have none to hash).
fn generation_model(backend: BackendKind, model: &str) -> Option<Input> {
    (backend == BackendKind::Local).then(|| Input::Model(model.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> PipelineConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, text).unwrap();
        PipelineConfig::read(&path).unwrap()
    }

    /// Paths and weights of training sources.
    fn sources(data: &[DataSource]) -> Vec<(&str, f64)> {
        data.iter()
            .map(|d| (d.path.to_str().unwrap(), d.weight))
            .collect()
    }

    #[test]
    fn stages_are_wired_through_the_run_folder() -> Result<()> {
        let cfg = parse(
            "seed: 5\nmodel: base\nbackend: mock\nhuman_pairs: {path: h.jsonl, limit: 3}\n\
             mix: {ai_labels: 2, human: [{path: help.jsonl, weight: 0.5}]}\n\
             revise: {seed: 1}\nsft: {train: {max_steps: 2}}\nsample: {backend: local}\n\
             label: {}\nrm: {model: other}\n",
        );
        let run = RunDir::new("r");
        let plans = plan(&cfg, &run, true)?;
        let stages: Vec<Stage> = plans.iter().map(|p| p.stage).collect();
        assert_eq!(stages, &Stage::ALL[..5]);
        let Job::Revise(rev) = &plans[0].job else {
            panic!()
        };
        assert_eq!(
            (rev.seed, rev.backend, rev.quiet),
            (1, BackendKind::Mock, true)
        );
        assert_eq!(rev.out, PathBuf::from("r/revise/revisions.jsonl"));
        let Job::Sft(sft) = &plans[1].job else {
            panic!()
        };
        assert_eq!(sft.data.as_deref(), Some(run.revisions().as_path()));
        assert_eq!((sft.train.seed, sft.model.as_str()), (5, "base"));
        let Job::Sample(s) = &plans[2].job else {
            panic!()
        };
        assert_eq!(PathBuf::from(&s.model), PathBuf::from("r/sft/final"));
        assert_eq!(plans[2].inputs[1], Input::Model(s.model.clone()));
        let Job::Label(l) = &plans[3].job else {
            panic!()
        };
        assert_eq!(l.label.pairs, run.sample_pairs());
        let h = l.human.as_ref().unwrap();
        let (check, cmp) = (&h.label, &h.compare);
        assert_eq!((check.limit, check.seed), (Some(3), 5));
        assert_eq!(cmp.ai, vec![run.human_check()]);
        let Job::Rm(rm) = &plans[4].job else { panic!() };
        assert_eq!(
            sources(&rm.data),
            [("r/label/labels.jsonl", 2.0), ("help.jsonl", 0.5)]
        );
        assert_eq!(rm.model, "other");
        Ok(())
    }

    #[test]
    fn dpo_and_grpo_stages_are_wired_and_eval_takes_stage_names() -> Result<()> {
        let cfg = parse(
            "seed: 5\nmodel: base\nbackend: mock\nconstitution: c.yaml\n\
             mix: {ai_labels: 1, human: [{path: help.jsonl, weight: 0.5}], revisions: 2}\n\
             revise: {}\nsft: {}\nsample: {backend: local}\nlabel: {}\n\
             dpo: {beta: 0.2}\n\
             grpo: {reward: {reward_model: 0, labeler: 1}, ppo: {group_size: 2}}\n\
             eval: {policy_a: dpo, policy_b: grpo}\n",
        );
        let run = RunDir::new("r");
        let plans = plan(&cfg, &run, true)?;
        let stages: Vec<Stage> = plans.iter().map(|p| p.stage).collect();
        use Stage::*;
        assert_eq!(stages, [Revise, Sft, Sample, Label, Dpo, Grpo, Eval]);

        let Job::Dpo(dpo) = &plans[4].job else {
            panic!()
        };
        assert_eq!(
            sources(&dpo.data),
            [
                ("r/label/labels.jsonl", 1.0),
                ("help.jsonl", 0.5),
                ("r/revise/revisions.jsonl", 2.0),
            ]
        );
        assert_eq!(PathBuf::from(&dpo.model), PathBuf::from("r/sft/final"));
        assert_eq!((dpo.beta, dpo.train.seed), (0.2, 5));
        assert_eq!(dpo.out, PathBuf::from("r/dpo"));
        assert_eq!(plans[4].outputs[0], PathBuf::from("r/dpo/final"));

        let Job::Rl(grpo) = &plans[5].job else {
            panic!()
        };
        assert_eq!(grpo.ppo.advantage, AdvantageEstimator::Grpo);
        assert_eq!(grpo.ppo.group_size, 2);
        assert_eq!(PathBuf::from(&grpo.policy), PathBuf::from("r/sft/final"));
        assert_eq!(grpo.reward_model, None);
        let l = &grpo.labeler;
        assert_eq!(
            (l.model.as_str(), l.backend, l.constitution.as_path()),
            ("base", BackendKind::Mock, std::path::Path::new("c.yaml"))
        );
        assert!(plans[5].inputs.contains(&Input::Path("c.yaml".into())));
        assert_eq!(grpo.out, PathBuf::from("r/grpo"));

        let Job::Eval(eval) = &plans[6].job else {
            panic!()
        };
        assert_eq!(PathBuf::from(&eval.policy_a), PathBuf::from("r/dpo/final"));
        assert_eq!(PathBuf::from(&eval.policy_b), PathBuf::from("r/grpo/final"));

        // Without names, eval tests the last trained policy against the SFT policy.
        let cfg = parse(
            "model: m\nsft: {data: d.jsonl}\nmix: {human: [{path: h.jsonl}]}\ndpo: {}\neval: {}\n",
        );
        let plans = plan(&cfg, &run, true)?;
        let Job::Eval(eval) = &plans[2].job else {
            panic!()
        };
        assert_eq!(PathBuf::from(&eval.policy_a), PathBuf::from("r/dpo/final"));
        assert_eq!(PathBuf::from(&eval.policy_b), PathBuf::from("r/sft/final"));
        Ok(())
    }

    #[test]
    fn example_pipelines_parse_and_plan() -> Result<()> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        let mut n = 0;
        for e in std::fs::read_dir(&dir)? {
            let path = e?.path();
            let cfg = PipelineConfig::read(&path)?;
            assert!(!plan(&cfg, &RunDir::new("r"), false)?.is_empty());
            n += 1;
        }
        assert!(n >= 2, "examples in {}", dir.display());
        Ok(())
    }
}
