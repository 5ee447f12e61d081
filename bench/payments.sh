#!/usr/bin/env bash
# What paying per token costs: vouchers signed and checked per second per core, journal
# writes per second (redb, fsync), paid jobs per second on one worker at 1 and 16 streams
# (the real worker and client sessions and journals, a tiny model), and on-chain operations
# and fees per 1,000 jobs (fees measured on the local chain). Writes bench/payments.md.
# Usage: bench/payments.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
export COCOON_BENCH_ROUNDS="${1:-5}"
rm -f target/bench-payments.md target/bench-onchain.md target/bench-paid-jobs.md
cargo bench -p cocoon-ledger --bench payments
cargo bench -p cocoon-tests --bench paid_jobs
cargo bench -p cocoon-ton --bench onchain
{
  echo "# bench/payments.sh, $(date -u +%Y-%m-%d), $(nproc) cores"
  echo
  cat target/bench-payments.md
  echo
  cat target/bench-paid-jobs.md
  echo
  cat target/bench-onchain.md
} > bench/payments.md
cat bench/payments.md
