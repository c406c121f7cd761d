//! `[default: …]` in `--help`, taken from the stage configs' `Default` impls, so a default is
//! written once. Flags are `Option`s (a flag given overrides the `--config` file, which
//! overrides the defaults), so clap cannot know them; each flag's default is found in its
//! subcommand's default config serialised to JSON: at the path a subcommand names for it, under
//! a top-level key of the flag's name, or wherever the keys of that name deeper down all hold
//! one value.

use clap::{ArgAction, Command};
use serde_json::Value;

/// Where a flag's default is, when not under a key of its own name.
#[derive(Debug, Clone)]
pub enum Source {
    /// A dotted path into the config (`ppo.max_new_tokens`).
    Path(&'static str),
    /// Words instead of one value (a default that depends on something else).
    Text(String),
}

/// `cmd` with each valued flag's default appended to its help, from `defaults` (a config's
/// `Default` as JSON) and the flags' `sources`. Returns the flags whose name matches several
/// keys of different values (a subcommand must name their [`Source`]).
pub fn annotate(
    cmd: Command,
    defaults: &Value,
    sources: &[(&str, Source)],
) -> (Command, Vec<String>) {
    let mut ambiguous = Vec::new();
    let mut found = Vec::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        let key = id;
        let takes_value = matches!(arg.get_action(), ArgAction::Set | ArgAction::Append);
        if arg.is_positional() || !takes_value || id == "config" {
            continue;
        }
        let text = match sources.iter().find(|(name, _)| *name == id) {
            Some((_, Source::Text(t))) => Some(t.clone()),
            Some((_, Source::Path(p))) => at_path(defaults, p).and_then(render),
            None if defaults.get(key).is_some() => defaults.get(key).and_then(render),
            None => {
                let mut values = Vec::new();
                find_key(defaults, key, &mut values);
                match values.as_slice() {
                    [] => None,
                    [v] => render(v),
                    _ => {
                        ambiguous.push(id.to_string());
                        None
                    }
                }
            }
        };
        if let Some(text) = text {
            found.push((id.to_string(), text));
        }
    }
    let mut cmd = cmd;
    for (id, text) in found {
        cmd = cmd.mut_arg(id, |a| {
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            let a = a.help(format!("{help} [default: {text}]"));
            match a.get_long_help().map(|h| h.to_string()) {
                Some(long) => a.long_help(format!("{long}\n\n[default: {text}]")),
                None => a,
            }
        });
    }
    (cmd, ambiguous)
}

fn at_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

/// Every value under a key named `key`, at any depth.
fn find_key<'a>(v: &'a Value, key: &str, out: &mut Vec<&'a Value>) {
    if let Value::Object(map) = v {
        for (k, child) in map {
            if k == key {
                if !out.contains(&child) {
                    out.push(child);
                }
            } else {
                find_key(child, key, out);
            }
        }
    }
}

/// A value as the user would type it; nothing for null, empty lists and objects.
fn render(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) if !items.is_empty() => {
            let parts: Option<Vec<String>> = items.iter().map(render).collect();
            parts.map(|p| p.join(","))
        }
        _ => None,
    }
}
