#!/usr/bin/env bash
# What the OpenAI gateway adds: TTFT and decode tok/s through `cocoon gateway` (streaming SSE)
# against the library call, same prompt, loopback. Writes bench/gateway.md. Needs a release
# build (~10 min clean on 2 cores). Usage: bench/gateway.sh [runs] [tokens]
set -euo pipefail
cd "$(dirname "$0")/.."
export COCOON_BENCH_RUNS="${1:-5}" COCOON_BENCH_TOKENS="${2:-48}"
rm -f target/bench-gateway.md
cargo bench -p cocoon-tests --bench gateway
{
  echo "# bench/gateway.sh, $(date -u +%Y-%m-%d), $(nproc) cores"
  echo
  cat target/bench-gateway.md
} > bench/gateway.md
cat bench/gateway.md
