#!/usr/bin/env bash
# Density: MACHINES idle machines on this host, hangard's RSS and the host's
# memory per machine, and the API and the proxy with them present beside
# the same reads with one, in one run; then a mixed load (the proxy, the API
# and stop/start cycles at once) with the machines present.
# Usage: bench/density.sh [MACHINES] [RUNS] [SECONDS]   (default 1000, 3, 5).
# Needs root; installs what it uses. Traffic stays on this host.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then exec sudo -E "$0" "$@"; fi
packages=(crun docker-registry busybox-static iproute2 nftables nginx-light wrk)
. scripts/packages.sh
install_packages "${packages[@]}"
systemctl stop nginx 2>/dev/null || true
cargo build --release --quiet --bins -p hangard -p hangar -p hangar-bench
HANGAR_BIN_DIR="$PWD/target/release" ./target/release/hangar-bench-density "${1:-1000}" "${2:-3}" "${3:-5}"
