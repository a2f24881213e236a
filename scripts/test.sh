#!/usr/bin/env bash
# Runs Hangar's whole test suite: unit, component, API and end-to-end tests
# (real crun and runc, a real registry on loopback, real SQLite).
#
# Works on a fresh Debian 12 machine with Rust installed: it installs the
# system packages the tests need. Needs root (containers, mounts, cgroups).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    exec sudo -E "$0" "$@"
fi

# crun/runc run the machines; docker-registry serves test images; the test
# images are built from busybox-static; ps and mount come from procps and
# util-linux; volumes use e2fsprogs (mkfs.ext4, resize2fs) and losetup;
# private networks use iproute2 (ip) and nftables (nft); the firewall tests
# also check the iptables fallback; skopeo, buildah and podman push to and
# pull from the built-in registry; the cluster tests run their own PostgreSQL
# (and the cluster demo builds its image with umoci); the hosts of a cluster
# join their machines' networks over WireGuard (wireguard-go, as a kernel
# without the module needs, configured by wg); a Prometheus server scrapes
# hangard's /metrics; headless Chromium, driven through chromedriver, uses
# the dashboard; systemd (systemd-analyze), logrotate and dpkg check the
# unit, the log rule and the Debian package; runsc (gVisor) runs the
# machines that ask for it.
packages=(crun runc docker-registry busybox-static procps util-linux e2fsprogs iproute2 nftables iptables ca-certificates skopeo buildah podman postgresql umoci wireguard-tools wireguard-go prometheus chromium chromium-driver systemd logrotate runsc)
. scripts/packages.sh
install_packages "${packages[@]}"
# qemu boots the microVM machines, with Debian's cloud kernel as the guest
# kernel (fetched once into target/, not installed).
install_qemu
vm_kernel=$PWD/target/vm-kernel
[ -s "$vm_kernel/vmlinuz" ] || ./scripts/vm-kernel.sh "$vm_kernel"
export HANGAR_TEST_VM_KERNEL_DIR=$vm_kernel

echo "==> building"
cargo build --workspace --bins --quiet
echo "==> testing"
HANGAR_HOST_TESTS=1 cargo test --workspace --no-fail-fast "$@"
