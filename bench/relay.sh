#!/usr/bin/env bash
# Raw TCP relays in one run: an app's dedicated address (the Hangar proxy's
# `tcp` service, spliced) beside socat, nginx's stream module and HAProxy in
# tcp mode, bulk and small requests. Usage: bench/relay.sh [RUNS] [SECONDS]
# (default 5 runs of 5 s). Needs root; installs what it uses. Traffic stays
# on this host.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then exec sudo -E "$0" "$@"; fi
packages=(crun docker-registry busybox-static iproute2 nftables nginx-light libnginx-mod-stream haproxy socat wrk)
. scripts/packages.sh
install_packages "${packages[@]}"
# The packages start system services on their default ports; the benchmark
# runs its own on free loopback ports.
systemctl stop nginx haproxy 2>/dev/null || true
cargo build --release --quiet --bins -p hangard -p hangar -p hangar-bench
HANGAR_BIN_DIR="$PWD/target/release" ./target/release/hangar-bench-relay "${1:-5}" "${2:-5}"
