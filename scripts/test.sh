#!/usr/bin/env bash
# The project's test command: fetches the default model and Gemma 3 270M (so real-model tests
# run), then runs the whole test suite. The cargo build cache lives outside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cai-target}
bash scripts/fetch-model.sh >/dev/null
bash scripts/fetch-model.sh gemma3 >/dev/null
export CAI_REQUIRE_MODEL=1
cargo test --all-targets "$@"
