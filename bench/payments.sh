#!/usr/bin/env bash
# What paying per token costs: vouchers signed and checked per second per core, journal
# writes per second (redb, fsync). Writes bench/payments.md. Usage: bench/payments.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
export COCOON_BENCH_ROUNDS="${1:-5}"
rm -f target/bench-payments.md
cargo bench -p cocoon-ledger --bench payments
{
  echo "# bench/payments.sh, $(date -u +%Y-%m-%d), $(nproc) cores"
  echo
  cat target/bench-payments.md
} > bench/payments.md
cat bench/payments.md
