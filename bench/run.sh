#!/usr/bin/env bash
# Machine start latency of hangard beside raw crun and podman, in one run.
# Usage: bench/run.sh [RUNS]   (default 30). Needs root; installs what it uses.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then exec sudo -E "$0" "$@"; fi
packages=(crun docker-registry busybox-static podman)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
cargo build --release --quiet --bins -p hangard -p hangar -p hangar-bench
HANGAR_BIN_DIR="$PWD/target/release" ./target/release/hangar-bench "${1:-30}"
