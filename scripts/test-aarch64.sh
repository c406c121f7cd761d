#!/usr/bin/env bash
# Cross-builds the library's unit tests for aarch64 Linux and runs them under qemu (user mode):
# the check that cai is correct off x86-64, where candle's kernels replace ours. Needs apt (for
# the cross compiler and qemu-user) and rustup; about 20 minutes cold on 2 cores, 8 under qemu.
# Not part of `.ci/run`. Extra arguments go to the test binary (a filter, `--skip NAME`).
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  apt-get update -qq && apt-get install -y -qq gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user >/dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cai-target-arm}
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
cargo clippy --target "$target" --all-targets -- -D warnings
cargo test --target "$target" --lib -- --test-threads 2 "$@"
