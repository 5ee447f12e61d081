#!/usr/bin/env bash
# Our engine against llama.cpp on the same GGUF (SmolLM2-135M-Instruct Q4_1), the same prompt
# tokens, greedy, every core: TTFT, single-stream decode, aggregate tok/s at 4 and 16
# concurrent streams, peak RSS (tests/benches/inference.rs, bench/llamacpp_side.py).
# Builds llama.cpp's Python bindings once into ~/.cache/cocoon/llama-venv-<flags> (~8 min on 2
# cores; the flags below: no native/AMX build, which crashes in some VMs) and
# our release build (~10 min clean). Writes bench/inference.md.
# Usage: bench/inference.sh [runs] [tokens]
set -euo pipefail
cd "$(dirname "$0")/.."
# llama.cpp gets every SIMD set this CPU has (from /proc/cpuinfo, as -march=native would)
# except AMX, which some VMs report but do not allow; one venv per set of flags.
has() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
flags="-DGGML_NATIVE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF -DGGML_OPENMP=ON"
flags+=" -DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma) -DGGML_F16C=$(has f16c)"
flags+=" -DGGML_BMI2=$(has bmi2) -DGGML_AVX_VNNI=$(has avx_vnni) -DGGML_AVX512=$(has avx512f)"
flags+=" -DGGML_AVX512_VBMI=$(has avx512_vbmi) -DGGML_AVX512_VNNI=$(has avx512_vnni) -DGGML_AVX512_BF16=$(has avx512_bf16)"
tag=$(echo "$flags" | sha256sum | cut -c1-8)
venv="${COCOON_LLAMA_VENV:-$HOME/.cache/cocoon/llama-venv-$tag}"
if ! "$venv/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  python3 -m venv "$venv"
  CMAKE_ARGS="$flags" "$venv/bin/pip" install --quiet llama-cpp-python==0.3.36 numpy
fi
export COCOON_BENCH_RUNS="${1:-3}" COCOON_BENCH_TOKENS="${2:-64}" COCOON_LLAMA_PYTHON="$venv/bin/python"
rm -f target/bench-inference.md
cargo bench -p cocoon-tests --bench inference
{
  echo "# bench/inference.sh, $(date -u +%Y-%m-%d), $(nproc) cores, commit $(git rev-parse --short HEAD)"
  echo
  cat target/bench-inference.md
} > bench/inference.md
cat bench/inference.md
