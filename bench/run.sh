#!/usr/bin/env bash
# Machine start latency of hangard beside raw crun and podman, in one run.
# Usage: bench/run.sh [RUNS]   (default 30). Needs root; installs what it uses.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then exec sudo -E "$0" "$@"; fi
packages=(crun docker-registry busybox-static podman)
. scripts/packages.sh
install_packages "${packages[@]}"
cargo build --release --quiet --bins -p hangard -p hangar -p hangar-bench
HANGAR_BIN_DIR="$PWD/target/release" ./target/release/hangar-bench "${1:-30}"
