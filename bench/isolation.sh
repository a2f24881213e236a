#!/usr/bin/env bash
# Start latency, suspend/resume and idle memory per runtime tier (crun,
# gVisor, microVM) on one hangard, beside raw crun, raw runsc and a bare
# qemu microvm boot of the same kernel and initramfs, in one run.
# Usage: bench/isolation.sh [RUNS]   (default 10). Needs root; installs what it uses.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then exec sudo -E "$0" "$@"; fi
packages=(crun runsc docker-registry busybox-static)
. scripts/packages.sh
install_packages "${packages[@]}"
install_qemu
vm_kernel=$PWD/target/vm-kernel
[ -s "$vm_kernel/vmlinuz" ] || ./scripts/vm-kernel.sh "$vm_kernel"
export HANGAR_BENCH_VM_KERNEL_DIR=$vm_kernel
cargo build --release --quiet --bins -p hangard -p hangar -p hangar-bench
HANGAR_BIN_DIR="$PWD/target/release" ./target/release/hangar-bench-isolation "${1:-10}"
