#!/usr/bin/env bash
# What confidentiality costs: DCAP verification of the real recorded TDX quote (uncached and
# cached), the Noise handshake, and handshake + first token against the plain job path on
# loopback QUIC. Writes bench/secure.md. Needs a release build (~10 min clean on 2 cores).
# Usage: bench/secure.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
export COCOON_BENCH_RUNS="${1:-15}" COCOON_BENCH_ROUNDS="${1:-5}"
rm -f target/bench-attest.md target/bench-secure.md
cargo bench -p cocoon-p2p --bench attest
cargo bench -p cocoon-tests --bench secure
{
  echo "# bench/secure.sh, $(date -u +%Y-%m-%d), $(nproc) cores"
  echo
  cat target/bench-attest.md
  echo
  cat target/bench-secure.md
} > bench/secure.md
cat bench/secure.md
