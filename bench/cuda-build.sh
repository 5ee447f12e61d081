#!/usr/bin/env bash
# Builds cocoon with candle's CUDA backend (`--features cuda`) on a machine without a CUDA
# toolkit: nvcc 13 and its headers come from NVIDIA's packages on the Python registry
# (nvidia-cuda-nvcc, -runtime, -cccl, -crt, nvidia-nvvm; the cu12 nvcc packages carry only
# ptxas, no nvcc), unpacked once into ~/.cache/cocoon/cuda13. candle's kernels are compiled
# for CUDA_COMPUTE_CAP (default 90: H100/H200); cudarc is told the toolkit's API version
# (its build script does not know 13.5 yet) and loads libcuda at run time, so the result runs
# on any machine with an NVIDIA driver for CUDA 13.
#
# Usage: bench/cuda-build.sh [check|build]   (default: check, ~20 min on 2 cores; build makes
# target/cuda/release/cocoon, to carry to the GPU machine and run `cocoon node --device cuda`).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-check}"
root="${COCOON_CUDA_ROOT:-$HOME/.cache/cocoon/cuda13}"
if [ ! -x "$root/nvidia/cu13/bin/nvcc" ]; then
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps -d "$tmp" \
    nvidia-cuda-nvcc==13.5.37 nvidia-cuda-runtime==13.5.37 nvidia-cuda-crt==13.5.37 \
    nvidia-cuda-cccl==13.3.5.0.6 nvidia-nvvm==13.5.37
  mkdir -p "$root"
  for w in "$tmp"/*.whl; do python3 -m zipfile -e "$w" "$root"; done
  chmod +x "$root"/nvidia/cu13/bin/* "$root"/nvidia/cu13/nvvm/bin/*
  rm -rf "$tmp"
fi
cuda="$root/nvidia/cu13"
export PATH="$cuda/bin:$PATH" CUDA_ROOT="$cuda" CUDA_PATH="$cuda"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13040}"
export NVCC_PREPEND_FLAGS="-I$cuda/cccl"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda}"
nvcc --version | tail -1
case "$mode" in
  check) cargo check -p cocoon-inference -p cocoon-worker --features cocoon-worker/cuda --locked ;;
  build) cargo build --release -p cocoon --features cuda --locked ;;
  *) echo "usage: $0 [check|build]" >&2; exit 2 ;;
esac
