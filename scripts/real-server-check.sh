#!/usr/bin/env bash
# Manual check of `--backend openai` against a real llama.cpp server on loopback (not run in CI).
#
# Starts llama-server with the default model on 127.0.0.1, runs `cai revise --limit 4` and
# `cai label` (the 12 sample pairs, both orders) through it at concurrency 1, 4 and 16 (cache
# off) and prints requests/s and labels/s from the manifests, then repeats one revise run twice
# with the cache on to show the requests it saves.
#
# usage: scripts/real-server-check.sh [LLAMA_BIN_DIR]   (default: built by peer-llamacpp.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-$(bash /work/shared/tools/peer-llamacpp.sh)}
model=${CAI_MODEL:-$HOME/.cache/cai/models/SmolLM2-135M-Instruct.Q4_1.gguf}
port=${PORT:-8089}
work=$(mktemp -d)
cargo build -q
cai=${CARGO_TARGET_DIR:-target}/debug/cai

"$bin/llama-server" -m "$model" --host 127.0.0.1 --port "$port" -np 16 -c 32768 \
  >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 1
done

revise() { # OUT CONCURRENCY EXTRA...
  local out=$1 conc=$2; shift 2
  "$cai" revise --backend openai --base-url "http://127.0.0.1:$port" --concurrency "$conc" \
    --limit 4 --rounds 1 --batch-size 4 --seed 1 --quiet --out "$work/$out" "$@"
}
stats() { # OUT
  python3 - "$work/$1.manifest.json" "$1" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["stats"]
b = s["backend"]
r, t = b["requests"], s["seconds"]
print(f"{sys.argv[2]}: {r} requests in {t:.2f} s = {r / t:.2f} requests/s; "
      f"retries {b['retries']}, failures {b['failures']}, cache {b['cache']}")
PY
}

compare_labels() { # SERVER_LABELS LOCAL_LABELS
  python3 - "$1" "$2" <<'PY'
import json, sys
load = lambda p: {r["id"]: r for r in map(json.loads, open(p))}
a, b = load(sys.argv[1]), load(sys.argv[2])
ids = sorted(set(a) & set(b))
diff = [abs(a[i]["p_a"] - b[i]["p_a"]) for i in ids]
same = sum((a[i]["p_a"] > 0.5) == (b[i]["p_a"] > 0.5) for i in ids)
print(f"server vs local labels on {len(ids)} pairs: mean |p_a difference| "
      f"{sum(diff) / len(diff):.4f}, max {max(diff):.4f}, same preferred response {same}/{len(ids)}")
PY
}

echo "uptime: $(uptime)"
for c in 1 4 16; do
  revise "c$c.jsonl" "$c" --no-cache
  stats "c$c.jsonl"
done
label() { # OUT CONCURRENCY
  "$cai" label --backend openai --base-url "http://127.0.0.1:$port" --concurrency "$2" \
    --pairs data/sample-pairs.jsonl --few-shot 1 --seed 1 --quiet --no-cache --out "$work/$1"
  python3 - "$work/$1.manifest.json" "label at concurrency $2" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["stats"]
n, t = s["written"], s["seconds"]
print(f"{sys.argv[2]}: {n} labels in {t:.2f} s = {n / t:.2f} labels/s")
PY
}
for c in 1 4 16; do
  label "l$c.jsonl" "$c"
done
revise cached-1.jsonl 16 --cache-dir "$work/cache"
stats cached-1.jsonl
revise cached-2.jsonl 16 --cache-dir "$work/cache"
stats cached-2.jsonl
cmp <(python3 -c 'import json,sys;[print(json.dumps({k:v for k,v in json.loads(l).items()})) for l in open(sys.argv[1])]' "$work/cached-1.jsonl") \
    <(python3 -c 'import json,sys;[print(json.dumps({k:v for k,v in json.loads(l).items()})) for l in open(sys.argv[1])]' "$work/cached-2.jsonl") \
  && echo "repeated run: identical records"
# The same labels from the local backend (cai's own model code on the same GGUF).
"$cai" label --pairs data/sample-pairs.jsonl --few-shot 1 --seed 1 --quiet --out "$work/local.jsonl"
compare_labels "$work/l1.jsonl" "$work/local.jsonl"
echo "uptime: $(uptime)"
echo "records: $work/c1.jsonl"
