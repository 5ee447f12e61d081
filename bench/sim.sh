#!/usr/bin/env bash
# Simulator scale: the million-node scenario (simulator/scenarios/million.toml: 0.1% workers,
# 200 relays, one simulated hour) at 10k, 100k and 1M nodes, each in its own process;
# prints events per second and peak memory, and writes bench/sim.md.
# Usage: bench/sim.sh [sizes...]   (default: 10000 100000 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p cocoon-simulator
sizes=("$@")
[ ${#sizes[@]} -eq 0 ] && sizes=(10000 100000 1000000)
rows=""
for n in "${sizes[@]}"; do
  out="target/bench-sim-$n"
  ./target/release/cocoon-sim run simulator/scenarios/million.toml --set "nodes=$n" \
    --out "$out" --no-charts --quiet
  rows+=$(python3 - "$out" "$n" <<'PY'
import json, sys
out, n = sys.argv[1], int(sys.argv[2])
p = json.load(open(f"{out}/perf.json")); s = json.load(open(f"{out}/summary.json"))
j = s["jobs"]
print(f"| {n:,} | {p['wall_secs']:.1f} | {p['build_secs']:.1f} | {p['events']:,} | "
      f"{p['events_per_sec']:,.0f} | {p['peak_rss_bytes']/2**30:.2f} | {j['created']:,} | "
      f"{s['dht']['lookups']:,} | {s['gossip']['adverts']:,} |")
PY
)$'\n'
done
{
  rev=$(git rev-parse --short HEAD)
  git diff --quiet HEAD -- simulator gossip ledger || rev="$rev + uncommitted changes"
  echo "# bench/sim.sh, $(date -u +%Y-%m-%d), $(nproc) cores, $rev"
  echo
  echo "One simulated hour of simulator/scenarios/million.toml at each size (one process each)."
  echo
  echo "| nodes | wall (s) | of which building (s) | events | events/s | peak RSS (GiB) | jobs | DHT lookups | adverts |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  printf "%s" "$rows"
} > bench/sim.md
cat bench/sim.md
