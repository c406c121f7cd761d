#!/usr/bin/env bash
# Builds cai with the `cuda` feature into $CARGO_TARGET_DIR (default ~/.cache/cai-cuda-target).
#
# With a CUDA toolkit on the machine (nvcc on PATH, or CUDA_HOME set) it is used as is.
# Without one (a build box with no GPU), NVIDIA's CUDA 13.0 compiler, headers and libraries
# are fetched from PyPI into ~/.cache/cai-cuda, and the driver library is replaced at link time
# by a stub holding only its symbol names; the real one is loaded where the binary runs (a
# driver of the 580 series or newer). CUDA_COMPUTE_CAP picks the GPU generation (default 90:
# H100/H200; 80: A100; 89: L4/RTX 40).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cai-cuda-target}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

if ! command -v nvcc >/dev/null && [ -z "${CUDA_HOME:-}" ]; then
  root=$HOME/.cache/cai-cuda
  cuda=$root/nvidia/cu13
  if [ ! -x "$cuda/bin/nvcc" ] || [ ! -e "$cuda/lib/libcuda.so" ]; then
    echo "build-cuda: no CUDA toolkit here; fetching CUDA 13.0 from PyPI into $root" >&2
    for pkg in nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 \
      nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85 \
      nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14; do
      # pip --target does not merge packages that share a folder: unpack each alone.
      tmp=$(mktemp -d)
      python3 -m pip install -q --no-deps --target "$tmp" "$pkg"
      mkdir -p "$cuda" && cp -rn "$tmp"/nvidia/cu13/. "$cuda"/
      rm -rf "$tmp"
    done
    (cd "$cuda/lib" && for l in cudart nvrtc cublas cublasLt; do ln -sf "lib$l.so.13" "lib$l.so"; done \
      && ln -sf libcurand.so.10 libcurand.so)
    # The driver API's names, from the cudarc sources candle builds against.
    cargo fetch -q
    sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | tail -1)
    grep -o '^            fn cu[A-Za-z0-9_]*' "$sys" | awk '{print "void " $2 "(void){}"}' | sort -u \
      > "$root/cuda_stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 "$root/cuda_stub.c" -o "$cuda/lib/libcuda.so"
  fi
  export CUDA_HOME=$cuda CUDA_ROOT=$cuda CUDA_PATH=$cuda
  export PATH=$cuda/bin:$PATH LIBRARY_PATH=$cuda/lib${LIBRARY_PATH:+:$LIBRARY_PATH}
fi

cargo build --release --features cuda "$@"
echo "build-cuda: $CARGO_TARGET_DIR/release/cai (needs libcuda, libcublas, libcurand and libcudart 13 at run time)" >&2
