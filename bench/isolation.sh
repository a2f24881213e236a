#!/usr/bin/env bash
# Start latency and idle memory per runtime tier (crun, gVisor) on one
# hangard, beside raw crun and raw runsc, in one run.
# Usage: bench/isolation.sh [RUNS]   (default 10). Needs root; installs what it uses.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then exec sudo -E "$0" "$@"; fi
packages=(crun runsc docker-registry busybox-static)
. scripts/packages.sh
install_packages "${packages[@]}"
cargo build --release --quiet --bins -p hangard -p hangar -p hangar-bench
HANGAR_BIN_DIR="$PWD/target/release" ./target/release/hangar-bench-isolation "${1:-10}"
