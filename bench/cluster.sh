#!/usr/bin/env bash
# The cluster's shared database at scale, by simulation: a durable
# PostgreSQL and 10 to 100 simulated hosts running hangard's statements on
# its schedule, with 1,000 to 10,000 machines churning (see
# bench/src/cluster_sim.rs). Usage: bench/cluster.sh [SECONDS] (default 20
# per configuration). Needs root (PostgreSQL runs as the postgres user).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then exec sudo -E "$0" "$@"; fi
packages=(postgresql)
. scripts/packages.sh
install_packages "${packages[@]}"
cargo build --release --quiet -p hangar-bench --bin hangar-bench-cluster-sim
./target/release/hangar-bench-cluster-sim "${1:-20}"
