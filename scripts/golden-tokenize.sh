#!/usr/bin/env bash
# Regenerates the tokenizer goldens in tests/data/tokenize/ with llama.cpp's llama-tokenize:
# every string of corpus.json tokenized as llama.cpp does by default (BOS/EOS as the model asks,
# special-token literals parsed), on the SmolLM2 (byte-level BPE, pre = smollm) and Gemma 3
# (SentencePiece) vocabularies. tests/tokenize.rs checks cai's tokenizer against them.
# usage: scripts/golden-tokenize.sh [LLAMA_BIN_DIR] [MODELS_DIR]
#   defaults: the peer build under ~/.cache/cai-peer (tools/peer-llamacpp.sh makes it) and
#   ~/.cache/cai-peer/models (SmolLM2-135M-Instruct-Q4_1.gguf, gemma-3-270m-Q4_K_M.gguf).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$(dirname "$(find "$HOME/.cache/cai-peer" -name llama-tokenize -type f | head -1)")}
models=${2:-$HOME/.cache/cai-peer/models}
data=$root/tests/data/tokenize
commit=$(git -C "$HOME/.cache/cai-peer/llama.cpp" rev-parse --short HEAD 2>/dev/null ||
  "$bin/llama-tokenize" --version 2>&1 | head -1)
python3 - "$bin/llama-tokenize" "$data" "$commit" \
  "$models/SmolLM2-135M-Instruct-Q4_1.gguf=smollm2.json" \
  "$models/gemma-3-270m-Q4_K_M.gguf=gemma3.json" <<'PY'
import json, os, subprocess, sys, tempfile
tool, data, commit, *jobs = sys.argv[1:]
corpus = json.load(open(f"{data}/corpus.json", encoding="utf-8"))
for job in jobs:
    model, out = job.rsplit("=", 1)
    cases = []
    for text in corpus:
        with tempfile.NamedTemporaryFile("wb", delete=False) as f:
            f.write(text.encode("utf-8"))
        try:
            # --file reads the bytes verbatim; --no-escape keeps backslashes as they are.
            res = subprocess.run([tool, "-m", model, "-f", f.name, "--no-escape", "--ids",
                                  "--log-disable"], capture_output=True, check=True)
        finally:
            os.unlink(f.name)
        ids = json.loads(res.stdout.decode().strip().splitlines()[-1])
        cases.append({"text": text, "ids": ids})
    golden = {"model": os.path.basename(model), "llama_cpp": commit,
              "made_by": "scripts/golden-tokenize.sh", "cases": cases}
    with open(f"{data}/{out}", "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{data}/{out}: {len(cases)} strings")
PY
