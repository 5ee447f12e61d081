#!/usr/bin/env bash
# Does scraping a worker's /metrics change its jobs' latency? Interleaved paid jobs with and
# without a scraper hammering the endpoint; medians in bench/metrics.md. Needs a release build.
# Usage: bench/metrics.sh [jobs per side] [scrapes]
set -euo pipefail
cd "$(dirname "$0")/.."
export COCOON_BENCH_RUNS="${1:-10}" COCOON_BENCH_SCRAPES="${2:-1000}"
rm -f target/bench-metrics.md
cargo bench -p cocoon-tests --bench metrics_load
{
  echo "# bench/metrics.sh, $(date -u +%Y-%m-%d), $(nproc) cores"
  echo
  cat target/bench-metrics.md
} > bench/metrics.md
cat bench/metrics.md
