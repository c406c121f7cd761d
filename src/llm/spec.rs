//! Which model to run: resolving `--backend` and `--model` into an open [`Backend`]; where the
//! model lives is [`crate::model_files::locate`].

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::backend::Backend;
use super::local::LocalBackend;
use super::mock::MockBackend;
use super::openai::{OpenaiBackend, OpenaiConfig};
use crate::artifacts::{CONFIG_FILE, WEIGHTS_FILE};
use crate::hash::sha256_file;
use crate::model_files::locate::ModelSpec;

/// Where model calls go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Our own candle model in this process (GGUF llama models).
    #[default]
    Local,
    /// Deterministic fake model, for tests.
    Mock,
    /// An OpenAI-compatible server (vLLM, llama.cpp server, mistralrs-server, Ollama) at
    /// `--base-url`.
    Openai,
}

impl crate::choice::Choice for BackendKind {
    const CHOICES: &'static [(&'static str, Self, &'static str)] = &[
        ("local", Self::Local, "our own candle model in this process (GGUF files, model folders)"),
        ("mock", Self::Mock, "deterministic fake model, for tests"),
        ("openai", Self::Openai, "an OpenAI-compatible server (vLLM, llama.cpp server, Ollama, hosted APIs) at --base-url"),
    ];
}

/// Opens the backend a stage asked for, with default server settings.
pub fn open_backend(kind: BackendKind, model: &str) -> Result<Box<dyn Backend>> {
    open_backend_with(kind, model, &OpenaiConfig::default())
}

/// Opens the backend a stage asked for; `openai` configures `--backend openai`.
pub fn open_backend_with(
    kind: BackendKind,
    model: &str,
    openai: &OpenaiConfig,
) -> Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Mock => Ok(Box::new(MockBackend::new())),
        BackendKind::Openai => Ok(Box::new(OpenaiBackend::open(openai, model)?)),
        BackendKind::Local => match ModelSpec::resolve(model)? {
            ModelSpec::GgufFile(path) => {
                let sha = sha256_file(&path)?;
                let backend = LocalBackend::open_gguf(&path, model, Some(sha))
                    .with_context(|| format!("cannot load model {}", path.display()))?;
                Ok(Box::new(backend))
            }
            ModelSpec::Folder(dir) => {
                let gguf = std::fs::read_dir(&dir)
                    .with_context(|| format!("cannot list {}", dir.display()))?
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|e| e == "gguf"));
                match gguf {
                    Some(path) => {
                        let sha = sha256_file(&path)?;
                        Ok(Box::new(LocalBackend::open_gguf(&path, model, Some(sha))?))
                    }
                    None if dir.join(CONFIG_FILE).is_file() => {
                        let weights = dir.join(WEIGHTS_FILE);
                        let sha = weights
                            .is_file()
                            .then(|| sha256_file(&weights))
                            .transpose()?;
                        let backend = LocalBackend::open_folder(&dir, model, sha)
                            .with_context(|| format!("cannot load model {}", dir.display()))?;
                        Ok(Box::new(backend))
                    }
                    None => bail!(
                        "{}: neither a .gguf file nor {CONFIG_FILE} + {WEIGHTS_FILE} in this \
                         folder",
                        dir.display()
                    ),
                }
            }
        },
    }
}
