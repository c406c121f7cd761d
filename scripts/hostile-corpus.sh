#!/usr/bin/env bash
# Writes the hostile corpus of tests/hostile.rs (crafted GGUF models and inputs, one folder
# per entry) into the folder given, for trying by hand:
#   bash scripts/hostile-corpus.sh /tmp/hostile && cai perplexity --model /tmp/hostile/ffn_down_wrong_shape/model.gguf --file README.md
set -euo pipefail
out="${1:?usage: scripts/hostile-corpus.sh OUT_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
CAI_HOSTILE_OUT="$out" cargo test --test hostile write_hostile_corpus -- --ignored --exact
echo "hostile corpus written to $out"
