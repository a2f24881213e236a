#!/usr/bin/env bash
# The Hangar proxy beside nginx and a machine reached directly, with wrk, in
# one run; then the first request to a stopped app beside the machine's own
# start. Usage: bench/proxy.sh [RUNS] [SECONDS]   (default 5 runs of 10 s).
# Needs root; installs what it uses. Traffic stays on this host.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then exec sudo -E "$0" "$@"; fi
packages=(crun docker-registry busybox-static iproute2 nftables nginx-light haproxy wrk)
. scripts/packages.sh
install_packages "${packages[@]}"
# nginx-light's package starts a system nginx on port 80; the benchmark runs
# its own on a free loopback port.
systemctl stop nginx haproxy 2>/dev/null || true
cargo build --release --quiet --bins -p hangard -p hangar -p hangar-bench
HANGAR_BIN_DIR="$PWD/target/release" ./target/release/hangar-bench-proxy "${1:-5}" "${2:-10}"
