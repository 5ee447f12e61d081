#!/usr/bin/env bash
# The cost of reaching a worker behind NAT: the real `cocoon` binary in network namespaces,
# client and worker each public or behind a full-cone, port-restricted or symmetric router
# (16 pairs), plus a worker behind routers with UPnP; `cocoon infer` from the client, a fresh
# client identity per try (tests/benches/reachability.rs). Keeps the table in
# bench/reachability.md. Needs root, iproute2, nftables, miniupnpd and a release build
# (~10 min clean on 2 cores); ~15 min with 20 tries. Usage: bench/reachability.sh [tries]
# COCOON_BENCH_ONLY="symmetric → port-restricted, public → public" runs only those rows; the
# logs of rows with failures are kept in target/bench-reachability-logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
export COCOON_BENCH_TRIES="${1:-${COCOON_BENCH_TRIES:-20}}"
rm -f target/bench-reachability.md
cargo bench -p cocoon-tests --bench reachability
cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
if grep -qw avx512f /proc/cpuinfo; then simd=AVX-512; elif grep -qw avx2 /proc/cpuinfo; then simd="AVX2 (no AVX-512)"; else simd="no AVX2"; fi
{
  echo "# bench/reachability.sh, $(date -u +%Y-%m-%d), $(nproc) cores, $cpu, $simd, commit $(git rev-parse --short HEAD), $COCOON_BENCH_TRIES tries per row"
  echo
  cat target/bench-reachability.md
} > bench/reachability.md
cat bench/reachability.md
