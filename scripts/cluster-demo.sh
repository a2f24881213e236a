#!/usr/bin/env bash
# Three hosts, one platform, on this machine: a PostgreSQL of its own (in
# /var/lib/hangar-cluster-demo, on a unix socket) and three hangards joined
# to it, host-a in region ams and host-b and host-c in sjc. Each host is a
# network namespace of its own (hangar-demo-host-X, with a mount namespace
# whose /sys is that network's) on a LAN bridge in this one (hgdemo0,
# 172.31.250.0/24), with its own data dir, run dir, interfaces, firewall and
# end of the WireGuard mesh that carries machines' private traffic between
# hosts. Then an app `demo` and an image built from busybox-static pushed to
# host-a's registry, which every host can run without the internet.
#
#   scripts/cluster-demo.sh        sets it up (again) and prints:
#                                    HOST <name> <region> <api-url>   (one per host)
#                                    TOKEN <admin-token>              (works on every host)
#                                    IMAGE <ref>
#   scripts/cluster-demo.sh stop   destroys its machines and removes it all
#
# HANGAR_BIN_DIR=target/debug uses binaries built already instead of a
# release build. From this namespace, host X's API is http://172.31.250.N:4280
# and its proxy http://172.31.250.N/ (N = 2, 3, 4 for host-a, -b, -c).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    exec sudo -E "$0" "$@"
fi

ROOT=/var/lib/hangar-cluster-demo
PG_PORT=5433
HOSTS=(host-a host-b host-c)
REGIONS=(ams sjc sjc)
LAN=hgdemo0

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

host_ip() { echo "172.31.250.$((2 + $1))"; }
api() { echo "http://$(host_ip "$1"):4280"; }
netns() { echo "hangar-demo-$1"; }
# Runs a command as host $1: in its network and mount namespaces.
as_host() {
    local h=$1
    shift
    nsenter --mount="$ROOT/ns/$h" --net="/run/netns/$(netns "$h")" -- "$@"
}

stop() {
    if [ -d "$ROOT" ]; then
        local token
        token=$(cat "$ROOT/host-a/admin-token" 2>/dev/null || true)
        # Apps deleted on one host go on every host, with their machines.
        if [ -n "$token" ]; then
            for app in $(curl -fsS -H "Authorization: Bearer $token" \
                "$(api 0)/v1/apps?org_slug=personal" 2>/dev/null |
                grep -o '"name":"[^"]*"' | cut -d'"' -f4 | grep -E '^[a-z0-9][a-z0-9_-]*$'); do
                curl -fsS -o /dev/null -X DELETE -H "Authorization: Bearer $token" \
                    "$(api 0)/v1/apps/$app?force=true" || true
            done
            for _ in $(seq 1 150); do
                total=$(curl -fsS -H "Authorization: Bearer $token" \
                    "$(api 0)/v1/hangar/hosts" 2>/dev/null |
                    grep -o '"machines":[0-9]*' | cut -d: -f2 | awk '{s += $1} END {print s + 0}' || true)
                [ "${total:-0}" = 0 ] && break
                sleep 0.2
            done
        fi
        for h in "${HOSTS[@]}"; do
            if [ -f "$ROOT/$h.pid" ]; then
                kill "$(cat "$ROOT/$h.pid")" 2>/dev/null || true
                for _ in $(seq 1 100); do
                    kill -0 "$(cat "$ROOT/$h.pid")" 2>/dev/null || break
                    sleep 0.1
                done
            fi
            # Its namespace goes with everything in it (bridges, firewall,
            # the mesh interface, whose wireguard-go ends with it).
            ns=$(netns "$h")
            if [ -e "/run/netns/$ns" ]; then
                for l in $(ip -n "$ns" -o link show 2>/dev/null | awk -F': ' '{print $2}' | grep '^hgm' || true); do
                    ip -n "$ns" link del "$l" 2>/dev/null || true
                done
                for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
                ip netns del "$ns" 2>/dev/null || true
            fi
            ip link del "hgdv-$h" 2>/dev/null || true
            umount "$ROOT/ns/$h" 2>/dev/null || umount -l "$ROOT/ns/$h" 2>/dev/null || true
            rm -rf "/run/hangar-demo-$h" || true
        done
        umount "$ROOT/ns" 2>/dev/null || umount -l "$ROOT/ns" 2>/dev/null || true
        if [ -f "$ROOT/pg/postmaster.pid" ]; then
            kill -INT "$(head -n 1 "$ROOT/pg/postmaster.pid")" 2>/dev/null || true
            for _ in $(seq 1 100); do
                [ -f "$ROOT/pg/postmaster.pid" ] || break
                sleep 0.1
            done
        fi
        rm -rf "$ROOT"
    fi
    ip link del "$LAN" 2>/dev/null || true
    echo "cluster demo stopped"
}

if [ "${1:-}" = stop ]; then
    stop
    exit 0
fi

packages=(crun busybox-static umoci skopeo util-linux e2fsprogs iproute2 nftables ca-certificates curl postgresql wireguard-tools wireguard-go)
. scripts/packages.sh
. scripts/demo-image.sh
install_packages "${packages[@]}"

BIN=${HANGAR_BIN_DIR:-}
if [ -z "$BIN" ]; then
    echo "==> building hangard and hangar (release)" >&2
    cargo build --release --bins --quiet
    BIN=target/release
fi
BIN=$(cd "$BIN" && pwd)

stop >/dev/null
mkdir -p "$ROOT"
chmod 755 "$ROOT"

echo "==> starting PostgreSQL ($ROOT/pg, socket in $ROOT/pgsock)" >&2
mkdir -p "$ROOT/pg" "$ROOT/pgsock"
chmod 700 "$ROOT/pg"
chown postgres:postgres "$ROOT/pg" "$ROOT/pgsock"
runuser -u postgres -- "$(pg_bin)/initdb" -A trust -U postgres -E UTF8 -D "$ROOT/pg" >/dev/null
setsid runuser -u postgres -- "$(pg_bin)/postgres" -D "$ROOT/pg" -k "$ROOT/pgsock" -p "$PG_PORT" \
    -c listen_addresses= >"$ROOT/pg.log" 2>&1 </dev/null &
# The socket shows before the server takes connections: wait until it does.
for _ in $(seq 1 300); do
    (cd / && runuser -u postgres -- "$(pg_bin)/pg_isready" -q -h "$ROOT/pgsock" -p "$PG_PORT") && break
    sleep 0.1
done
runuser -u postgres -- "$(pg_bin)/psql" -X -q -h "$ROOT/pgsock" -p "$PG_PORT" -d postgres \
    -c "CREATE DATABASE hangar" >/dev/null
CLUSTER="host=$ROOT/pgsock port=$PG_PORT user=postgres dbname=hangar"

echo "==> the hosts' LAN: $LAN 172.31.250.1/24" >&2
ip link add "$LAN" type bridge
ip addr add 172.31.250.1/24 dev "$LAN"
ip link set "$LAN" up
# The files that keep the hosts' mount namespaces sit on a private mount.
mkdir -p "$ROOT/ns"
mount --bind "$ROOT/ns" "$ROOT/ns"
mount --make-private "$ROOT/ns"

for i in 0 1 2; do
    h=${HOSTS[$i]}
    ns=$(netns "$h")
    ip=$(host_ip "$i")
    echo "==> starting $h (${REGIONS[$i]}) in namespace $ns, API $(api "$i")" >&2
    ip netns add "$ns"
    ip link add "hgdv-$h" type veth peer name eth0 netns "$ns"
    ip link set "hgdv-$h" master "$LAN" up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    # Its mount namespace: /sys of its network namespace, the cgroups again.
    touch "$ROOT/ns/$h"
    mkdir -p "$ROOT/ns/cg-$h"
    nsenter --net="/run/netns/$ns" unshare --mount="$ROOT/ns/$h" --propagation private sh -c \
        "mount --rbind /sys/fs/cgroup $ROOT/ns/cg-$h && mount -t sysfs sysfs /sys && mount --rbind $ROOT/ns/cg-$h /sys/fs/cgroup && umount -l $ROOT/ns/cg-$h"
    mkdir -p "$ROOT/$h"
    setsid nsenter --mount="$ROOT/ns/$h" --net="/run/netns/$ns" -- \
        "$BIN/hangard" --data-dir "$ROOT/$h" --listen "$ip:4280" \
        --region "${REGIONS[$i]}" --cluster "$CLUSTER" --host-id "$h" \
        --secrets-key-file "$ROOT/secrets.key" --run-dir "/run/hangar-demo-$h" \
        --cgroup-parent "/hangar-demo-$h" \
        --proxy-http "$ip:80" --proxy-https "$ip:443" \
        --no-outbound-nat >"$ROOT/$h.log" 2>&1 </dev/null &
    echo $! >"$ROOT/$h.pid"
    for _ in $(seq 1 300); do
        if [ -s "$ROOT/$h/admin-token" ] && curl -fsS -o /dev/null \
            -H "Authorization: Bearer $(cat "$ROOT/$h/admin-token")" \
            "$(api "$i")/v1/apps?org_slug=personal" 2>/dev/null; then
            break
        fi
        kill -0 "$(cat "$ROOT/$h.pid")" 2>/dev/null || { tail -n 20 "$ROOT/$h.log" >&2; exit 1; }
        sleep 0.1
    done
done
TOKEN=$(cat "$ROOT/host-a/admin-token")
A=$(api 0)

echo "==> building the demo image from busybox-static and pushing it to host-a" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
build_demo_image "$work" '<h1>hello from a hangar cluster</h1>'
curl -fsS -o /dev/null -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d '{"app_name":"demo","org_slug":"personal"}' "$A/v1/apps"
skopeo copy --quiet --dest-tls-verify=false --dest-creds "hangar:$TOKEN" \
    "oci:$work/image:latest" "docker://$(host_ip 0):4280/demo:latest"
IMAGE="$(host_ip 0):4280/demo:latest"

for i in 0 1 2; do
    echo "HOST ${HOSTS[$i]} ${REGIONS[$i]} $(api "$i")"
done
echo "TOKEN $TOKEN"
echo "IMAGE $IMAGE"
cat >&2 <<EOT

Three hosts are up. Try (any host answers for every machine):
  export HANGAR_API_URL=$A HANGAR_API_TOKEN=$TOKEN
  hangar hosts list
  hangar machine run $IMAGE --app demo --region sjc --name web \\
      --port 80:8080/tcp:http --autostart -- httpd -f -p 8080 -h /www
  curl -H 'Host: demo.localhost' http://$(host_ip 0)/   # host-a's proxy, the machine runs in sjc
  hangar machine run $IMAGE --app demo --region ams --name client -- sleep inf
  hangar machine exec <client-id> --app demo -- nslookup -type=AAAA demo.internal
      # machines on different hosts talk over the mesh (fdaa:... addresses)
  HANGAR_API_URL=$(api 2) hangar machine list --app demo
  scripts/cluster-demo.sh stop
EOT
