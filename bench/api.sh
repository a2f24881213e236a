#!/usr/bin/env bash
# The API's throughput beside a trivial axum handler serving the same bytes,
# and lifecycle operations per second with 10 clients, in one run.
# Usage: bench/api.sh [RUNS] [SECONDS]   (default 3 runs of 5 s).
# Needs root; installs what it uses. Traffic stays on this host.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then exec sudo -E "$0" "$@"; fi
packages=(crun docker-registry busybox-static iproute2 nftables wrk)
. scripts/packages.sh
install_packages "${packages[@]}"
cargo build --release --quiet --bins -p hangard -p hangar -p hangar-bench
HANGAR_BIN_DIR="$PWD/target/release" ./target/release/hangar-bench-api "${1:-3}" "${2:-5}"
