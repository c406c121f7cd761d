//! Every flag of every subcommand reaches the resolved config (issue 30, part 4): the flags
//! are read from clap's own definition, so a flag added later is tested without a line here.
//! Also: `--no-X` undoes a YAML `X: true`, the old spellings still resolve, and flags apply in
//! command-line order.

use anyhow::{anyhow, Result};
use serde_json::Value;

use cai::cli::resolved_config;

/// The subcommands with a stage config, with the YAML that fills their required settings (so
/// each flag can be tested alone).
const SUBCOMMANDS: &[(&[&str], &str)] = &[
    (&["revise"], ""),
    (&["sample"], ""),
    (&["label"], ""),
    (&["compare"], "human: h.jsonl\nai: [a.jsonl]\n"),
    (&["bench"], ""),
    (&["perplexity"], "file: t.txt\n"),
    (&["eval"], ""),
    (
        &["export"],
        "input: i.jsonl\nout: o.jsonl\nkind: messages\n",
    ),
    (
        &["score"],
        "reward_model: rm\npairs: p.jsonl\nout: o.jsonl\n",
    ),
    (&["train", "sft"], ""),
    (&["train", "rm"], "data: [{path: d.jsonl}]\n"),
    (&["train", "ppo"], ""),
    (&["train", "dpo"], "data: [{path: d.jsonl}]\nloss: cdpo\n"),
];

/// Flags that need another to parse (`--best-of` and `--best-of-rm` go together).
const COMPANIONS: &[(&str, &[&str])] = &[
    ("best_of", &["--best-of-rm", "rm-folder"]),
    ("best_of_rm", &["--best-of", "7"]),
];

/// Values tried for a flag, in order, after its named choices: the first that parses and
/// changes the resolved config is the one checked (`ipo` for `--loss`, whose names clap does
/// not list).
const CANDIDATES: &[&str] = &[
    "7",
    "0.37",
    "given-value",
    "x.jsonl:2",
    "3,5",
    "0.2,0.3",
    "ipo",
];

/// `leaf`'s arguments, found in `cai`'s command.
fn sub_command(path: &[&str]) -> clap::Command {
    let mut cmd = cai::cli::command();
    cmd.build();
    let mut sub = cmd;
    for name in path {
        sub = sub.find_subcommand(name).expect("subcommand").clone();
    }
    sub
}

fn resolve(path: &[&str], config: &str, flags: &[&str]) -> Result<Value> {
    let mut argv: Vec<&str> = path.to_vec();
    argv.extend(["--config", config]);
    argv.extend(flags);
    resolved_config(&argv)
}

/// Whether `v` holds `text` as a leaf: a string equal to it, a number equal to its value, a
/// list whose items joined by commas are it.
fn holds(v: &Value, text: &str) -> bool {
    match v {
        Value::String(s) => s == text,
        Value::Number(n) => text.parse::<f64>().ok() == n.as_f64(),
        Value::Bool(b) => b.to_string() == text,
        Value::Array(items) => {
            let leaves: Option<Vec<String>> = items
                .iter()
                .map(|x| match x {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect();
            leaves.is_some_and(|l| l.join(",") == text) || items.iter().any(|x| holds(x, text))
        }
        // An enum's variant is a key (`trainable: {lora: …}`).
        Value::Object(map) => map.iter().any(|(k, x)| k == text || holds(x, text)),
        Value::Null => false,
    }
}

/// Flags whose value is translated on its way (`--reward labeler` is the weights
/// `{reward_model: 0, labeler: 1}`; a `FILE:WEIGHT` data source is an object), so only the
/// change is checked.
const TRANSLATED: &[&str] = &["reward", "data"];

/// Flags with no key in the config file (`#[serde(skip)]`: rm's and dpo's `--resume`), so not
/// in the resolved config's JSON either; unit tests in src/cli/rm.rs and dpo.rs check them.
const FLAG_ONLY: &[(&str, &str)] = &[
    ("train rm", "resume"),
    ("train rm", "no_resume"),
    ("train dpo", "resume"),
    ("train dpo", "no_resume"),
];

/// Every flag of every subcommand, given alone on top of a `--config` file, changes the
/// resolved config, and a valued flag's value is found in it; every switch and its `--no-X`
/// resolve differently.
#[test]
fn every_flag_of_every_subcommand_reaches_the_resolved_config() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut tested = 0;
    for (path, yaml) in SUBCOMMANDS {
        let config = dir.path().join(format!("{}.yaml", path.join("_")));
        std::fs::write(&config, yaml)?;
        let config = config.to_str().unwrap();
        let base = resolve(path, config, &[])?;
        let sub = sub_command(path);
        let ids: Vec<String> = sub
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        for arg in sub.get_arguments() {
            let id = arg.get_id().as_str();
            if ["help", "version", "config", "verbose"].contains(&id)
                || FLAG_ONLY.contains(&(path.join(" ").as_str(), id))
            {
                continue;
            }
            let long = format!("--{}", arg.get_long().expect("every flag is long"));
            let companion: Vec<&str> = COMPANIONS
                .iter()
                .find(|(i, _)| *i == id)
                .map_or(Vec::new(), |(_, c)| c.to_vec());
            let takes_value = matches!(
                arg.get_action(),
                clap::ArgAction::Set | clap::ArgAction::Append
            );
            let what = format!("cai {} {long}", path.join(" "));
            if !takes_value {
                // A switch against its opposite (`--quiet` / `--no-quiet`), or, with none
                // (`--cot`), against no flag.
                let opposite = match id.strip_prefix("no_") {
                    Some(x) => Some(x.to_string()),
                    None => Some(format!("no_{id}")),
                }
                .filter(|o| ids.contains(o));
                let on = resolve(path, config, &[&long])?;
                let off = match &opposite {
                    Some(o) => resolve(path, config, &[&format!("--{}", o.replace('_', "-"))])?,
                    None => base.clone(),
                };
                assert_ne!(on, off, "{what} resolves as its opposite {opposite:?}");
                tested += 1;
                continue;
            }
            let choices: Vec<String> = arg
                .get_possible_values()
                .iter()
                .map(|p| p.get_name().to_string())
                .collect();
            let mut found = None;
            for value in choices
                .iter()
                .map(String::as_str)
                .chain(CANDIDATES.iter().copied())
            {
                let mut flags = vec![long.as_str(), value];
                flags.extend(&companion);
                let Ok(resolved) = resolve(path, config, &flags) else {
                    continue;
                };
                if resolved != base {
                    found = Some((value, resolved));
                    break;
                }
            }
            let (value, resolved) =
                found.ok_or_else(|| anyhow!("{what}: no value changes the resolved config"))?;
            assert!(
                TRANSLATED.contains(&id) || holds(&resolved, value),
                "{what} {value}: the value is not in the resolved config {resolved:#}"
            );
            tested += 1;
        }
    }
    // 13 subcommands, each with several flags: a broken walk would test far fewer.
    assert!(tested > 200, "only {tested} flags tested");
    Ok(())
}

fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

/// A YAML `quiet: true` (and the other switches) can be undone from the command line, and
/// the last of `--quiet` / `--no-quiet` wins.
#[test]
fn no_switch_undoes_a_yaml_true() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let yaml = dir.path().join("label.yaml");
    std::fs::write(
        &yaml,
        "quiet: true\ntruncate_long: true\ncalibrate: false\nboth_orders: false\n\
         openai: {no_cache: true}\n",
    )?;
    let y = yaml.to_str().unwrap();
    let from_file = resolve(&["label"], y, &[])?;
    assert_eq!(at(&from_file, "quiet"), true);
    assert_eq!(at(&from_file, "openai.no_cache"), true);
    let undone = resolve(
        &["label"],
        y,
        &[
            "--no-quiet",
            "--no-truncate-long",
            "--calibrate",
            "--both-orders",
            "--cache",
        ],
    )?;
    for (key, want) in [
        ("quiet", false),
        ("truncate_long", false),
        ("calibrate", true),
        ("both_orders", true),
        ("openai.no_cache", false),
    ] {
        assert_eq!(at(&undone, key), want, "{key}");
    }
    // Command-line order: the last switch of a pair wins.
    let last_on = resolve(&["label"], y, &["--no-quiet", "--quiet"])?;
    assert_eq!(at(&last_on, "quiet"), true);
    let last_off = resolve(&["label"], y, &["--quiet", "--no-quiet"])?;
    assert_eq!(at(&last_off, "quiet"), false);
    // The rest of the file stands: keys no flag names are kept.
    let rm = dir.path().join("rm.yaml");
    std::fs::write(&rm, "hard: true\ndata: [{path: d.jsonl}]\nmargin: 0.5\n")?;
    let r = resolve(&["train", "rm"], rm.to_str().unwrap(), &["--no-hard"])?;
    assert_eq!(at(&r, "hard"), false);
    assert_eq!(at(&r, "margin"), 0.5);
    Ok(())
}

/// A command line (subcommand, `--config`, flags) and the config key it must set to a value.
type Case<'a> = (&'a [&'a str], &'a str, &'a [&'a str], &'a str, Value);

/// The old spellings still work, and each lands on the config key the new name is.
#[test]
fn old_flag_spellings_resolve_to_the_config_keys() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rm_yaml = dir.path().join("rm.yaml");
    std::fs::write(&rm_yaml, "data: [{path: d.jsonl}]\n")?;
    let rm = rm_yaml.to_str().unwrap();
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "")?;
    let e = empty.to_str().unwrap();
    let cases: &[Case] = &[
        (
            &["train", "rm"],
            rm,
            &["--eval-split", "0.25"],
            "eval_fraction",
            0.25.into(),
        ),
        (
            &["train", "dpo"],
            rm,
            &["--eval-split", "0.25"],
            "eval_fraction",
            0.25.into(),
        ),
        (
            &["train", "ppo"],
            e,
            &["--max-tokens", "9"],
            "ppo.max_new_tokens",
            9.into(),
        ),
        (&["label"], e, &["--one-order"], "both_orders", false.into()),
        (
            &["label"],
            e,
            &["--timeout", "5"],
            "openai.timeout_s",
            5.0.into(),
        ),
        (
            &["label"],
            e,
            &["--backoff", "0.5"],
            "openai.retry.backoff_s",
            0.5.into(),
        ),
        (&["label"], e, &["--cot"], "mode", "cot".into()),
        (
            &["bench"],
            e,
            &["--quantized-only"],
            "compare_quantized",
            true.into(),
        ),
        (
            &["sample"],
            e,
            &["--best-of", "4", "--reward-model", "rm"],
            "best_of_rm",
            "rm".into(),
        ),
    ];
    for (path, config, flags, key, want) in cases {
        let v = resolve(path, config, flags)?;
        assert_eq!(at(&v, key), want, "{path:?} {flags:?}");
    }
    Ok(())
}

/// A flag that stands for several keys sets each: revise's `--temperature` and `--max-tokens`
/// are every step's, eval's `--seed` the policies' and the labeler's.
#[test]
fn one_flag_sets_every_key_it_stands_for() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let yaml = dir.path().join("c.yaml");
    std::fs::write(&yaml, "critique: {temperature: 0.9}\n")?;
    let y = yaml.to_str().unwrap();
    let v = resolve(
        &["revise"],
        y,
        &["--temperature", "0.3", "--max-tokens", "11"],
    )?;
    for step in ["answer", "critique", "revision"] {
        assert_eq!(at(&v, &format!("{step}.temperature")), 0.3, "{step}");
        assert_eq!(at(&v, &format!("{step}.max_tokens")), 11, "{step}");
    }
    let e = resolve(&["eval"], y, &[]);
    assert!(e.is_err(), "revise keys are not eval's: {e:?}");
    let empty = dir.path().join("e.yaml");
    std::fs::write(&empty, "")?;
    let v = resolve(&["eval"], empty.to_str().unwrap(), &["--seed", "123"])?;
    assert_eq!(
        (at(&v, "seed"), at(&v, "labeler.seed")),
        (&123.into(), &123.into())
    );
    Ok(())
}

/// A flag that sets one key of a nested section keeps the stage's own defaults for the rest
/// of it: `cai train rm --max-steps 2` trains at the reward model's lr 1e-5 (its `Default`),
/// not at the `train:` section type's own 2e-5 (SFT's).
#[test]
fn a_nested_flag_keeps_the_stages_other_defaults() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let yaml = dir.path().join("rm.yaml");
    std::fs::write(&yaml, "data: [{path: d.jsonl}]\n")?;
    let v = resolve(
        &["train", "rm"],
        yaml.to_str().unwrap(),
        &["--max-steps", "2"],
    )?;
    assert_eq!(
        (at(&v, "train.max_steps"), at(&v, "train.lr")),
        (&2.into(), &1e-5.into())
    );
    let v = resolve(
        &["label"],
        yaml.to_str().unwrap().replace("rm.yaml", "x").as_str(),
        &[],
    );
    assert!(v.is_err(), "a missing --config file is an error");
    Ok(())
}
