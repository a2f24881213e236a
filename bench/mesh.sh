#!/usr/bin/env bash
# Machines' private traffic across hosts (the WireGuard mesh) beside the
# same traffic within one host: two release hangards, each in a network
# namespace of its own, in one run (see bench/src/mesh.rs).
# Usage: bench/mesh.sh [RUNS] (default 5). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then exec sudo -E "$0" "$@"; fi
packages=(crun docker-registry busybox-static iproute2 nftables util-linux postgresql wireguard-tools wireguard-go)
. scripts/packages.sh
install_packages "${packages[@]}"
cargo build --release --quiet --bins -p hangard -p hangar -p hangar-bench
HANGAR_BIN_DIR=target/release ./target/release/hangar-bench-mesh "${1:-5}"
