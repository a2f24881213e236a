#!/usr/bin/env bash
# Deploys of a 3-machine web app under load through the proxy (rolling,
# bluegreen, and the same steps by hand through the API), in one run.
# Usage: bench/deploy.sh [RUNS]   (default 5). Needs root; installs what it
# uses. Traffic stays on this host.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then exec sudo -E "$0" "$@"; fi
packages=(crun docker-registry busybox-static iproute2 nftables wrk)
. scripts/packages.sh
install_packages "${packages[@]}"
cargo build --release --quiet --bins -p hangard -p hangar -p hangar-bench
HANGAR_BIN_DIR="$PWD/target/release" ./target/release/hangar-bench-deploy "${1:-5}"
