#!/usr/bin/env bash
# Measures how often `cai revise` loops under a sampling setting: the first 40 red-team dev
# prompts, the quickstart's revise settings (1 round, 1 few-shot example, 96/64/96 new tokens,
# temperature 0.7, top-p 0.9), then scripts/loop-share.py on the output.
#
#   scripts/loop-share.sh NAME [extra `cai revise` flags, e.g. --repetition-penalty 1.1]
#
# Writes runs/loops/NAME.jsonl (resumed when it exists). Environment: CAI (the binary, default
# $CARGO_TARGET_DIR/release/cai), PROMPTS (default ../shared/data/red-team-prompts-dev.jsonl),
# LIMIT (default 40).
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: scripts/loop-share.sh NAME [cai revise flags]}
shift
cai=${CAI:-${CARGO_TARGET_DIR:-$HOME/.cache/cai-target}/release/cai}
prompts=${PROMPTS:-../shared/data/red-team-prompts-dev.jsonl}
mkdir -p runs/loops
cfg=runs/loops/quickstart-revise.yaml
cat >"$cfg" <<'YAML'
rounds: 1
few_shot: 1
answer: {temperature: 0.7, top_p: 0.9, max_tokens: 96}
critique: {temperature: 0.7, top_p: 0.9, max_tokens: 64}
revision: {temperature: 0.7, top_p: 0.9, max_tokens: 96}
YAML
"$cai" revise --config "$cfg" --constitution constitutions/harmless.yaml \
  --prompts "$prompts" --limit "${LIMIT:-40}" --batch-size 40 --quiet \
  --out "runs/loops/$name.jsonl" "$@"
python3 scripts/loop-share.py "runs/loops/$name.jsonl"
