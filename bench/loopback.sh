#!/usr/bin/env bash
# In-process generation vs. the same job through the network on loopback, for f32 weights
# (the default for small models) and for candle's quantized kernels (--keep-quantized).
# Prints tables of medians and keeps them in bench/loopback.md. Needs a release build
# (~10 min clean on 2 cores). Usage: bench/loopback.sh [runs] [tokens]
set -euo pipefail
cd "$(dirname "$0")/.."
export COCOON_BENCH_RUNS="${1:-5}" COCOON_BENCH_TOKENS="${2:-64}"
rm -f target/bench-loopback-*.md
COCOON_BENCH_KEEP_QUANTIZED=0 cargo bench -p cocoon-tests --bench loopback
COCOON_BENCH_KEEP_QUANTIZED=1 cargo bench -p cocoon-tests --bench loopback
{
  echo "# bench/loopback.sh, $(date -u +%Y-%m-%d), $(nproc) cores, $COCOON_BENCH_RUNS runs"
  for f in target/bench-loopback-*.md; do echo; cat "$f"; done
} > bench/loopback.md
cat bench/loopback.md
