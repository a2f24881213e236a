#!/usr/bin/env bash
# hangard's registry beside Debian's docker-registry (skopeo pushes of a
# multi-layer image), and edit-to-serving of a Dockerfile app with `hangar
# deploy` beside the same build pushed by hand, in one run.
# Usage: bench/registry.sh [RUNS]   (default 5). Needs root; installs what it
# uses. Traffic stays on this host.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then exec sudo -E "$0" "$@"; fi
packages=(crun docker-registry busybox-static iproute2 nftables skopeo buildah)
. scripts/packages.sh
install_packages "${packages[@]}"
cargo build --release --quiet --bins -p hangard -p hangar -p hangar-bench
HANGAR_BIN_DIR="$PWD/target/release" ./target/release/hangar-bench-registry "${1:-5}"
