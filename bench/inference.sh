#!/usr/bin/env bash
# Our engine against llama.cpp on the same GGUF (SmolLM2-135M-Instruct Q4_1), the same prompt
# tokens, greedy, every core: TTFT, single-stream decode, aggregate tok/s at 4 and 16
# concurrent streams, peak RSS (tests/benches/inference.rs, bench/llamacpp_side.py).
# Builds llama.cpp's Python bindings once into ~/.cache/cocoon/llama-venv (~8 min on 2
# cores, flags from ../shared/FACTS.md: no native/AMX build, which crashes in this VM) and
# our release build (~10 min clean). Writes bench/inference.md.
# Usage: bench/inference.sh [runs] [tokens]
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${COCOON_LLAMA_VENV:-$HOME/.cache/cocoon/llama-venv}"
if ! "$venv/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  python3 -m venv "$venv"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_OPENMP=ON" \
    "$venv/bin/pip" install --quiet llama-cpp-python==0.3.36 numpy
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
