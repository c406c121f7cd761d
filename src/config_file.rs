//! Config files: a stage's settings as YAML, every key optional (the config's `Default` fills
//! the rest), unknown keys and type errors reported as `file:line:column`. A config is a
//! regular file of at most [`crate::inputs::TEXT_CAP`] bytes, and a number in it is finite
//! (`.nan` and `.inf` are refused where they stand, as on the command line).

use std::path::Path;

use anyhow::{bail, Result};
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::yaml_locate::{locate, Seg};

/// Reads a config file.
pub fn read_yaml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = crate::inputs::read_text(path, crate::inputs::TEXT_CAP, "config")?;
    let at = |e: &serde_yaml::Error| {
        e.location()
            .map(|l| format!("{}:{}:{}", path.display(), l.line(), l.column()))
            .unwrap_or_else(|| path.display().to_string())
    };
    let value: Value =
        serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", at(&e)))?;
    let mut keys = Vec::new();
    if let Some((name, x)) = non_finite(&value, &mut keys) {
        let segs: Vec<Seg> = keys
            .iter()
            .map(|k| match k {
                Key::Name(s) => Seg::Key(s),
                Key::Index(i) => Seg::Index(*i),
            })
            .collect();
        let (line, column) = locate(&text, &segs);
        bail!(
            "{}:{line}:{column}: `{name}` = {x} must be a finite number",
            path.display()
        );
    }
    // From the text, not the value: type errors keep their `line:column`.
    serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", at(&e)))
}

/// The config in `path`, or the defaults without one.
pub fn read_or_default<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T> {
    path.map_or_else(|| Ok(T::default()), read_yaml)
}

enum Key {
    Name(String),
    Index(usize),
}

/// The dotted name and value of the first NaN or infinite number in `v`; `keys` ends as its
/// path.
fn non_finite(v: &Value, keys: &mut Vec<Key>) -> Option<(String, f64)> {
    match v {
        Value::Number(n) => n.as_f64().filter(|x| !x.is_finite()).map(|x| {
            let name = keys
                .iter()
                .map(|k| match k {
                    Key::Name(s) => s.clone(),
                    Key::Index(i) => i.to_string(),
                })
                .collect::<Vec<_>>()
                .join(".");
            (name, x)
        }),
        Value::Sequence(items) => items.iter().enumerate().find_map(|(i, item)| {
            keys.push(Key::Index(i));
            let found = non_finite(item, keys);
            if found.is_none() {
                keys.pop();
            }
            found
        }),
        Value::Mapping(m) => m.iter().find_map(|(k, item)| {
            keys.push(Key::Name(k.as_str().unwrap_or("?").to_string()));
            let found = non_finite(item, keys);
            if found.is_none() {
                keys.pop();
            }
            found
        }),
        Value::Tagged(t) => non_finite(&t.value, keys),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Cfg {
        temperature: f64,
        nested: Vec<Vec<f64>>,
    }

    #[test]
    fn nan_and_inf_in_a_config_file_name_key_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(
            &p,
            "temperature: 0.5\nnested:\n  - [1.0]\n  - [2.0, .inf]\n",
        )
        .unwrap();
        let e = format!("{:#}", read_yaml::<Cfg>(&p).unwrap_err());
        assert!(
            e.contains("c.yaml:4:") && e.contains("`nested.1.1` = inf"),
            "{e}"
        );
        std::fs::write(&p, "temperature: .nan\n").unwrap();
        let e = format!("{:#}", read_yaml::<Cfg>(&p).unwrap_err());
        assert!(
            e.contains("c.yaml:1:") && e.contains("`temperature` = NaN must be a finite"),
            "{e}"
        );
        std::fs::write(&p, "temperature: 0.7\nnested: [[1.5]]\n").unwrap();
        let c: Cfg = read_yaml(&p).unwrap();
        assert_eq!((c.temperature, c.nested[0][0]), (0.7, 1.5));
    }

    #[test]
    fn type_errors_keep_their_location() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, "temperature: 0.5\nwhat: 1\n").unwrap();
        let e = format!("{:#}", read_yaml::<Cfg>(&p).unwrap_err());
        assert!(
            e.contains("c.yaml:2:1") && e.contains("unknown field `what`"),
            "{e}"
        );
    }
}
