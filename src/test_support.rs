//! Where tests find real model files: one locator for the crate's unit tests and the
//! integration tests. Not part of cai's interface.

use std::path::{Path, PathBuf};

use crate::model_files::locate::{find_model_file, model_dirs, DEFAULT_MODEL_FILE};

/// The first of `names` in the model folders (`$CAI_MODELS`, `models/`, `~/.cache/cai/models`,
/// then the llama.cpp peer's `~/.cache/cai-peer/models`), or `None` with a note (the test is
/// skipped), unless `CAI_REQUIRE_MODEL` is set: then a missing model fails the test.
pub fn model_file(names: &[&str]) -> Option<PathBuf> {
    let peer: Vec<PathBuf> = std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".cache/cai-peer/models"))
        .into_iter()
        .collect();
    let found = find_model_file(names, &peer);
    if found.is_none() {
        let dirs: Vec<PathBuf> = model_dirs().into_iter().chain(peer).collect();
        assert!(
            std::env::var_os("CAI_REQUIRE_MODEL").is_none(),
            "CAI_REQUIRE_MODEL is set but {} is missing from {dirs:?}: run scripts/fetch-model.sh",
            names[0]
        );
        eprintln!(
            "skipped: {} not installed (run scripts/fetch-model.sh)",
            names[0]
        );
    }
    found
}

/// The default model (see [`model_file`]).
pub fn default_model() -> Option<PathBuf> {
    model_file(&[DEFAULT_MODEL_FILE])
}

/// The llama GGUF of the engine's and trainer's real-model unit tests: `CAI_TEST_GGUF` when
/// set, else the default model.
pub fn test_gguf() -> Option<PathBuf> {
    match std::env::var_os("CAI_TEST_GGUF") {
        Some(p) => Some(PathBuf::from(p)),
        None => default_model(),
    }
}
