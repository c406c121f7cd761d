//! Config files: a stage's settings as YAML, every key optional (the config's `Default` fills
//! the rest), unknown keys and type errors reported as `file:line:column`. A config is a
//! regular file of at most [`crate::inputs::TEXT_CAP`] bytes.

use std::path::Path;

use anyhow::Result;
use serde::de::DeserializeOwned;

/// Reads a config file.
pub fn read_yaml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = crate::inputs::read_text(path, crate::inputs::TEXT_CAP, "config")?;
    serde_yaml::from_str(&text).map_err(|e| {
        let loc = e
            .location()
            .map(|l| format!("{}:{}:{}", path.display(), l.line(), l.column()))
            .unwrap_or_else(|| path.display().to_string());
        anyhow::anyhow!("{loc}: {e}")
    })
}

/// The config in `path`, or the defaults without one.
pub fn read_or_default<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T> {
    path.map_or_else(|| Ok(T::default()), read_yaml)
}
