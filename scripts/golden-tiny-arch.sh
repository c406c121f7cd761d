#!/usr/bin/env bash
# Rewrites tests/data/tiny-arch-ppl.json: writes the tiny random-weight models of
# tests/tiny_arch.rs and scores each with llama.cpp's llama-perplexity (the oracle), same text,
# ctx and chunks as the test. Needs the peer: bash ../shared/tools/peer-llamacpp.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cai-target}
bin=${CAI_PEER_BIN:-$HOME/.cache/cai-peer/llama.cpp/build/bin}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# The test writes the models first; its comparison may fail against old goldens.
CAI_TINY_GGUF_DIR=$dir cargo test -q --test tiny_arch >/dev/null 2>&1 || true
out=tests/data/tiny-arch-ppl.json
{
  echo "{"
  sep=""
  for f in "$dir"/tiny-*.gguf; do
    arch=$(basename "$f" .gguf); arch=${arch#tiny-}
    ppl=$("$bin/llama-perplexity" -m "$f" -f ../shared/data/ppl-dev.txt -c 64 --chunks 3 -b 64 -t "$(nproc)" 2>&1 |
      sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')
    [ -n "$ppl" ] || { echo "llama-perplexity failed on $f" >&2; exit 1; }
    printf '%s  "%s": %s' "$sep" "$arch" "$ppl"
    sep=$',\n'
  done
  printf '\n}\n'
} > "$out"
cat "$out"
