#!/usr/bin/env bash
# 10,000 machines by simulation: the agent (real SQLite store, runners,
# addresses) and the real API over a fake runtime, in one process; the API's
# reads with one machine and with MACHINES, and the RSS per machine.
# Usage: bench/scale.sh [MACHINES] [RUNS] [SECONDS]   (default 10000, 3, 5).
# Traffic stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then exec sudo -E "$0" "$@"; fi
packages=(wrk)
. scripts/packages.sh
install_packages "${packages[@]}"
cargo build --release --quiet --bin hangar-bench-scale -p hangar-bench
./target/release/hangar-bench-scale "${1:-10000}" "${2:-3}" "${3:-5}"
