#!/usr/bin/env bash
# Calibrates the simulator against real nodes: a loopback network of real `cocoon node`
# processes (40 and a probe) and the same network in cocoon-sim, compared measure by measure
# (tests/benches/calibrate.rs). Keeps the table in bench/calibration.md, the real figures in
# simulator/scenarios/calibration.measured.json (the simulator's calibration test reads them)
# and writes the two fitted costs into simulator/scenarios/calibration.toml.
# Needs a release build (~10 min clean on 2 cores). Usage: bench/calibrate.sh [window secs]
set -euo pipefail
cd "$(dirname "$0")/.."
export COCOON_CAL_SECS="${1:-150}"
status=0
cargo bench -p cocoon-tests --bench calibrate || status=$?
measured=target/calibration-measured.json
[ -f "$measured" ] || exit 1
cp "$measured" simulator/scenarios/calibration.measured.json
processing=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fitted"]["processing_ms"])' "$measured")
cpu=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fitted"]["advert_cpu_ms"])' "$measured")
cores=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fitted"]["host_cores"])' "$measured")
sed -i -e "s/^processing_ms = .*/processing_ms = $processing/" \
       -e "s/^advert_cpu_ms = .*/advert_cpu_ms = $cpu/" \
       -e "s/^host_cores = .*/host_cores = $cores/" simulator/scenarios/calibration.toml
{
  echo "# bench/calibrate.sh, $(date -u +%Y-%m-%d), $(nproc) cores, commit $(git rev-parse --short HEAD)"
  echo
  cat target/bench-calibration.md
} > bench/calibration.md
cat bench/calibration.md
exit $status
