#!/usr/bin/env bash
# Perplexity of each GGUF file under cai and under llama.cpp's llama-perplexity (same text, same
# ctx, same chunks), as a Markdown table row per file.
# usage: ppl-parity.sh [--ctx N] [--chunks K] [--text FILE] FILE.gguf...
# Needs the peer (bash ../shared/tools/peer-llamacpp.sh) and a release build of cai.
set -euo pipefail
cd "$(dirname "$0")/.."
ctx=512 chunks=8 text=../shared/data/ppl-dev.txt
while [ $# -gt 0 ]; do
  case $1 in
    --ctx) ctx=$2; shift 2 ;;
    --chunks) chunks=$2; shift 2 ;;
    --text) text=$2; shift 2 ;;
    *) break ;;
  esac
done
bin=${CAI_PEER_BIN:-$HOME/.cache/cai-peer/llama.cpp/build/bin}
cai=${CAI_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/cai-target}/release/cai}
echo "| file | llama.cpp PPL | cai PPL | difference |"
echo "|---|---:|---:|---:|"
for f in "$@"; do
  peer=$("$bin/llama-perplexity" -m "$f" -f "$text" -c "$ctx" --chunks "$chunks" -t "$(nproc)" 2>&1 |
    sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')
  ours=$("$cai" perplexity --model "$f" --file "$text" --ctx "$ctx" --chunks "$chunks" -q |
    sed -n 's/^PPL = \([0-9.]*\).*/\1/p')
  diff=$(python3 -c "print(f'{100 * ($ours - $peer) / $peer:+.2f} %')")
  echo "| $(basename "$f") | $peer | $ours | $diff |"
done
