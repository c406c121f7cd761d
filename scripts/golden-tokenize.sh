#!/usr/bin/env bash
# Regenerates the tokenizer goldens in tests/data/tokenize/ with llama.cpp's llama-tokenize:
# every string of corpus.json tokenized as llama.cpp does by default (BOS/EOS as the model asks,
# special-token literals parsed), on the SmolLM2 (byte-level BPE, pre = smollm) and Gemma 3
# (SentencePiece) vocabularies, and on the SmolLM2 vocabulary relabelled with other
# pre-tokenizers (`tokenizer.ggml.pre` = llama-bpe, qwen2, gpt-2, default, deepseek-llm: a metadata-only GGUF,
# which llama-tokenize loads since it reads the vocabulary only) so that their word splitting is
# checked too, and on Gemma 3 with `tokenizer.ggml.add_space_prefix` on. tests/tokenize.rs checks cai's tokenizer against them. Needs python's `gguf`.
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
# corpus-random.json: strings mixing the corpus's ingredients at random (fixed seed), to find
# what hand-picked strings miss.
python3 - "$data/corpus-random.json" <<'PY'
import json, random, sys
rng = random.Random(20261130)
atoms = [
    lambda: rng.choice(["the", "Hello", "world", "naïve", "Straße", "ÉCOLE", "x", "iPhone", "a"]),
    lambda: "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 9))),
    lambda: "".join(rng.choice([" ", " ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u0085", "\u2028"])
                    for _ in range(rng.randint(1, 6))),
    lambda: "".join(rng.choice("!?.,;:'\"()[]{}<>/\\|~^$%&*+-=_`@#") for _ in range(rng.randint(1, 4))),
    lambda: rng.choice(["'s", "'LL", "'re", "'ve", "'m", "'d", "'t", "n't", "'S"]),
    lambda: rng.choice(["你好", "世界和平", "日本語", "カタカナ", "한국어", "مرحبا", "שלום", "Привет", "Ελλάδα"]),
    lambda: rng.choice(["🦀", "❤️", "👨‍👩‍👧", "🇫🇷", "👍🏽", "🎉", "\u2603"]),
    lambda: rng.choice(["e\u0301", "a\u0308\u0323", "\u0915\u094d\u0937", "ก\u0e34"]),
    lambda: rng.choice(["\U0001d573", "\U00013000", "\U0010fffd", "\u0378", "\ufeff", "\u200b", "\x07", "\x00"]),
    lambda: rng.choice(["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<start_of_turn>",
                        "<end_of_turn>", "<bos>", "<eos>", "<unused7>", "\n\n\n", "    ", "\t\t"]),
]
corpus = []
for _ in range(100):
    parts = [rng.choice(atoms)() for _ in range(rng.randint(2, 12))]
    sep = rng.choice(["", " ", ""])
    corpus.append(sep.join(parts))
with open(sys.argv[1], "w", encoding="utf-8") as f:
    json.dump(corpus, f, ensure_ascii=False, indent=1)
    f.write("\n")
PY
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
smol=$models/SmolLM2-135M-Instruct-Q4_1.gguf
# relabel SRC DST KEY VALUE: a metadata-only copy of SRC with KEY set to VALUE (JSON).
relabel() {
  python3 - "$@" <<'PY'
import json, sys
import gguf
src, dst, key, value = sys.argv[1:]
r = gguf.GGUFReader(src)
w = gguf.GGUFWriter(dst, arch=r.fields["general.architecture"].contents())
for k, field in r.fields.items():
    if k.startswith("GGUF.") or k == "general.architecture":
        continue
    v = json.loads(value) if k == key else field.contents()
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        w.add_array(k, v)
    else:
        w.add_key_value(k, v, field.types[0])
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
PY
}
gemma=$models/gemma-3-270m-Q4_K_M.gguf
jobs=("$smol=smollm2.json" "$gemma=gemma3.json")
for pre in llama-bpe qwen2 gpt-2 default deepseek-llm; do
  relabel "$smol" "$tmp/smollm2-$pre.gguf" tokenizer.ggml.pre "\"$pre\""
  jobs+=("$tmp/smollm2-$pre.gguf=smollm2-$pre.json")
done
# Gemma with the space prefix Llama 2 / Mistral vocabularies use (at the start of the text and
# after every special token).
relabel "$gemma" "$tmp/gemma3-space-prefix.gguf" tokenizer.ggml.add_space_prefix true
jobs+=("$tmp/gemma3-space-prefix.gguf=gemma3-space-prefix.json")
# ONLY=name.json limits the run to that golden.
python3 - "$bin/llama-tokenize" "$data" "$commit" "${ONLY:-}" "${jobs[@]}" <<'PY'
import json, os, subprocess, sys, tempfile
tool, data, commit, only, *jobs = sys.argv[1:]
corpus = json.load(open(f"{data}/corpus.json", encoding="utf-8"))
corpus += json.load(open(f"{data}/corpus-random.json", encoding="utf-8"))


def write(path, golden):
    """One case per line, so that diffs show which strings changed."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n")
        for key, value in golden.items():
            if key != "cases":
                f.write(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},\n")
        f.write(' "cases": [\n')
        f.write(",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in golden["cases"]))
        f.write("\n ]\n}\n")


labels = {
    "smollm2-": "SmolLM2-135M-Instruct-Q4_1.gguf, tokenizer.ggml.pre = ",
    "gemma3-space-prefix": "gemma-3-270m-Q4_K_M.gguf, tokenizer.ggml.add_space_prefix = true",
}
for job in jobs:
    model, out = job.rsplit("=", 1)
    if only and out != only:
        continue
    name = os.path.basename(model)
    if name.startswith("smollm2-"):
        name = labels["smollm2-"] + name[8:-5]
    elif name.startswith("gemma3-space-prefix"):
        name = labels["gemma3-space-prefix"]
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
    write(f"{data}/{out}", golden)
    print(f"{data}/{out}: {len(cases)} strings")
PY
