#!/usr/bin/env bash
# In-process generation vs. the same job through the network on loopback: prints a table of
# medians and keeps it in bench/loopback.md. Needs a release build (~6 min clean on 2 cores).
# Usage: bench/loopback.sh [runs] [tokens]
set -euo pipefail
cd "$(dirname "$0")/.."
export COCOON_BENCH_RUNS="${1:-5}" COCOON_BENCH_TOKENS="${2:-64}"
cargo bench -p cocoon-tests --bench loopback
{ echo "# bench/loopback.sh, $(date -u +%Y-%m-%d), $(nproc) cores"; echo; cat target/bench-loopback.md; } > bench/loopback.md
cat bench/loopback.md
