#!/usr/bin/env bash
# Regenerates the tokenizer goldens in tests/data/tokenize/ with llama.cpp's llama-tokenize:
# every string of corpus.json tokenized as llama.cpp does by default (BOS/EOS as the model asks,
# special-token literals parsed), on the SmolLM2 (byte-level BPE, pre = smollm) and Gemma 3
# (SentencePiece) vocabularies, and on the SmolLM2 vocabulary relabelled with other
# pre-tokenizers (`tokenizer.ggml.pre` = llama-bpe, qwen2, gpt-2, default: a metadata-only GGUF,
# which llama-tokenize loads since it reads the vocabulary only) so that their word splitting is
# checked too. tests/tokenize.rs checks cai's tokenizer against them. Needs python's `gguf`.
# usage: scripts/golden-tokenize.sh [LLAMA_BIN_DIR] [MODELS_DIR]
#   defaults: the peer build under ~/.cache/cai-peer (tools/peer-llamacpp.sh makes it) and
#   ~/.cache/cai-peer/models (SmolLM2-135M-Instruct-Q4_1.gguf, gemma-3-270m-Q4_K_M.gguf).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$(dirname "$(find "$HOME/.cache/cai-peer" -name llama-tokenize -type f | head -1)")}
models=${2:-$HOME/.cache/cai-peer/models}
data=$root/tests/data/tokenize
commit=$(git -C "$HOME/.cache/cai-peer/llama.cpp" rev-parse --short HEAD 2>/dev/null ||
  "$bin/llama-tokenize" --version 2>&1 | sed -n 1p)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
smol=$models/SmolLM2-135M-Instruct-Q4_1.gguf
for pre in llama-bpe qwen2 gpt-2 default; do
  python3 - "$smol" "$pre" "$tmp/smollm2-$pre.gguf" <<'PY'
import sys
import gguf
src, pre, dst = sys.argv[1:]
r = gguf.GGUFReader(src)
w = gguf.GGUFWriter(dst, arch=r.fields["general.architecture"].contents())
for key, field in r.fields.items():
    if key.startswith("GGUF.") or key == "general.architecture":
        continue
    value = pre if key == "tokenizer.ggml.pre" else field.contents()
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        w.add_array(key, value)
    else:
        w.add_key_value(key, value, field.types[0])
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
PY
done
python3 - "$bin/llama-tokenize" "$data" "$commit" \
  "$smol=smollm2.json" \
  "$models/gemma-3-270m-Q4_K_M.gguf=gemma3.json" \
  "$tmp/smollm2-llama-bpe.gguf=smollm2-llama-bpe.json" \
  "$tmp/smollm2-qwen2.gguf=smollm2-qwen2.json" \
  "$tmp/smollm2-gpt-2.gguf=smollm2-gpt-2.json" \
  "$tmp/smollm2-default.gguf=smollm2-default.json" <<'PY'
import json, os, subprocess, sys, tempfile
tool, data, commit, *jobs = sys.argv[1:]
corpus = json.load(open(f"{data}/corpus.json", encoding="utf-8"))
for job in jobs:
    model, out = job.rsplit("=", 1)
    name = os.path.basename(model)
    if name.startswith("smollm2-"):
        name = "SmolLM2-135M-Instruct-Q4_1.gguf, tokenizer.ggml.pre = " + name[8:-5]
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
    golden = {"model": name, "llama_cpp": commit,
              "made_by": "scripts/golden-tokenize.sh", "cases": cases}
    with open(f"{data}/{out}", "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{data}/{out}: {len(cases)} strings")
PY
