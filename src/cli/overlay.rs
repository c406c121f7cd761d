//! Flags → config, derived once for every subcommand: the flags given on the command line
//! (clap's `ValueSource::CommandLine`) become a mapping keyed by config field, merged onto the
//! config that the `--config` YAML (or the defaults) makes, as a value, which is then
//! deserialised again into the stage config. A
//! flag's value is its parsed value serialised, so it is typed as the config field is; where
//! it goes is the flag's own name unless the subcommand's [`Flags::to`] says otherwise.
//! Precedence: the config's `Default` < the YAML < the flags, in command-line order.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, FromArgMatches};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value as Json;
use serde_yaml::{Mapping, Value};

use crate::config_file::read_or_default;

/// Where a flag's value goes in the config.
#[derive(Debug, Clone)]
pub enum To {
    /// To these dotted config paths (`openai.timeout_s`), unchanged.
    Keys(Vec<String>),
    /// Negated, to this path: a `--no-X` switch sets `X: false`.
    Not(String),
    /// The flag's value mapped by a function (`--cot` is `mode: cot`).
    Mapped(String, fn(&Json) -> Json),
    /// Nowhere by itself: [`Flags::finish`] reads it (`--config`, the trainable group).
    Explicit,
}

impl To {
    /// To one path.
    pub fn key(path: impl Into<String>) -> Self {
        Self::Keys(vec![path.into()])
    }
}

/// A subcommand's flags: which config they resolve to and where each flag goes.
pub trait Flags: clap::Args + FromArgMatches + Serialize {
    /// The stage config the flags resolve to.
    type Config: Serialize + DeserializeOwned + Default;

    /// The `--config` YAML file, when given.
    fn config_file(&self) -> Option<&Path>;

    /// Where flag `id` goes; `None` for the default: the key of the flag's name, or for a
    /// `no_X` switch `X: false`.
    fn to(id: &str) -> Option<To>;

    /// What is left after the overlay: flags with no config field of their own, checks.
    fn finish(&self, _config: &mut Self::Config) -> Result<()> {
        Ok(())
    }
}

/// Where flag `id` of `A` goes, the default rule applied.
pub fn target<A: Flags>(id: &str) -> To {
    match id {
        "config" => To::Explicit,
        _ => A::to(id).unwrap_or_else(|| match id.strip_prefix("no_") {
            Some(key) => To::Not(key.to_string()),
            None => To::key(id),
        }),
    }
}

/// The ids of `A`'s flags given on the command line, in command-line order (not the global
/// `--verbose`, nor clap's groups).
pub fn given<A: Flags>(m: &ArgMatches) -> Vec<String> {
    let cmd = A::augment_args(clap::Command::new("cai"));
    let mut ids: Vec<(usize, String)> = cmd
        .get_arguments()
        .map(|a| a.get_id().as_str())
        .filter(|id| {
            matches!(m.try_contains_id(id), Ok(true))
                && m.value_source(id) == Some(ValueSource::CommandLine)
        })
        .map(|id| (m.index_of(id).unwrap_or(0), id.to_string()))
        .collect();
    ids.sort();
    ids.into_iter().map(|(_, id)| id).collect()
}

/// The config the subcommand matches `m` resolve to: defaults < `--config` < flags.
pub fn resolve<A: Flags>(m: &ArgMatches) -> Result<A::Config> {
    let args = A::from_arg_matches(m)?;
    let mut config = resolve_args(&args, m)?;
    args.finish(&mut config)?;
    Ok(config)
}

/// `argv` (after the program name) resolved as the flags `A`, for tests.
#[cfg(test)]
pub fn resolve_flags<A: Flags>(argv: &[&str]) -> Result<A::Config> {
    let cmd = A::augment_args(clap::Command::new("cai"));
    let m = cmd.try_get_matches_from(std::iter::once("cai").chain(argv.iter().copied()))?;
    resolve::<A>(&m)
}

/// [`resolve`] without [`Flags::finish`].
fn resolve_args<A: Flags>(args: &A, m: &ArgMatches) -> Result<A::Config> {
    // The config as the YAML (or the defaults) makes it, as a value: a flag that sets one key
    // of a nested section keeps the stage's defaults for the section's other keys (rm's
    // `train.lr` is not SftConfig's when only --max-steps is given).
    let config: A::Config = read_or_default(args.config_file())?;
    let mut base = serde_yaml::to_value(&config).context("config as YAML")?;
    let flags = serde_json::to_value(args).context("flags as JSON")?;
    let mut named = Vec::new();
    for id in given::<A>(m) {
        let to = target::<A>(&id);
        if matches!(to, To::Explicit) {
            continue;
        }
        let value = flags
            .get(&id)
            .ok_or_else(|| anyhow!("flag `{id}` has no value to resolve"))?;
        let (paths, value) = match to {
            To::Keys(paths) => (paths, value.clone()),
            To::Not(path) => (vec![path], Json::Bool(!value.as_bool().unwrap_or(false))),
            To::Mapped(path, f) => (vec![path], f(value)),
            To::Explicit => unreachable!(),
        };
        let value: Value = serde_yaml::to_value(&value)?;
        for path in paths {
            put(&mut base, &path, value.clone())?;
        }
        named.push(format!("--{}", id.replace('_', "-")));
    }
    serde_yaml::from_value(base).map_err(|e| match args.config_file() {
        Some(path) if named.is_empty() => anyhow!("{}: {e}", path.display()),
        Some(path) => anyhow!("{} with {}: {e}", path.display(), named.join(" ")),
        None => anyhow!("{}: {e}", named.join(" ")),
    })
}

/// Sets the dotted `path` of `root` to `value`, creating mappings on the way.
fn put(root: &mut Value, path: &str, value: Value) -> Result<()> {
    let mut at = root;
    let keys: Vec<&str> = path.split('.').collect();
    for (i, key) in keys.iter().enumerate() {
        if !at.is_mapping() {
            if !at.is_null() && i > 0 {
                bail!("`{}` is not a mapping", keys[..i].join("."));
            }
            *at = Value::Mapping(Mapping::new());
        }
        let map = at.as_mapping_mut().expect("a mapping");
        let k = Value::String((*key).to_string());
        if i + 1 == keys.len() {
            map.insert(k, value);
            return Ok(());
        }
        at = map.entry(k).or_insert(Value::Null);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_creates_and_replaces_nested_keys() -> Result<()> {
        let mut v: Value = serde_yaml::from_str("a: 1\nb: {c: 2}")?;
        put(&mut v, "b.c", Value::from(3))?;
        put(&mut v, "d.e.f", Value::from(true))?;
        put(&mut v, "a", Value::from("x"))?;
        let want: Value = serde_yaml::from_str("a: x\nb: {c: 3}\nd: {e: {f: true}}")?;
        assert_eq!(v, want);
        assert!(put(&mut v, "a.z", Value::from(1)).is_err());
        Ok(())
    }
}
