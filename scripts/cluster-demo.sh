#!/usr/bin/env bash
# Three hosts, one platform, on this machine: a PostgreSQL of its own (in
# /var/lib/hangar-cluster-demo, on a unix socket) and three hangards joined
# to it, host-a in region ams and host-b and host-c in sjc, each with its own
# data dir, run dir, API port, proxy ports and networks. Then an app `demo`
# and an image built from busybox-static pushed to host-a's registry, which
# every host can run without the internet.
#
#   scripts/cluster-demo.sh        sets it up (again) and prints:
#                                    HOST <name> <region> <api-url>   (one per host)
#                                    TOKEN <admin-token>              (works on every host)
#                                    IMAGE <ref>
#   scripts/cluster-demo.sh stop   destroys its machines and removes it all
#
# HANGAR_BIN_DIR=target/debug uses binaries built already instead of a
# release build. The hosts share this machine's network namespace: their
# APIs are on 127.0.0.1:4281-4283 and their proxies on 127.0.0.1:8081-8083.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    exec sudo -E "$0" "$@"
fi

ROOT=/var/lib/hangar-cluster-demo
PG_PORT=5433
HOSTS=(host-a host-b host-c)
REGIONS=(ams sjc sjc)

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

api_port() { echo $((4281 + $1)); }

stop() {
    if [ -d "$ROOT" ]; then
        local token
        token=$(cat "$ROOT/host-a/admin-token" 2>/dev/null || true)
        # Apps deleted on one host go on every host, with their machines.
        if [ -n "$token" ]; then
            for app in $(curl -fsS -H "Authorization: Bearer $token" \
                "http://127.0.0.1:$(api_port 0)/v1/apps?org_slug=personal" 2>/dev/null |
                grep -o '"name":"[^"]*"' | cut -d'"' -f4 | grep -E '^[a-z0-9][a-z0-9_-]*$'); do
                curl -fsS -o /dev/null -X DELETE -H "Authorization: Bearer $token" \
                    "http://127.0.0.1:$(api_port 0)/v1/apps/$app?force=true" || true
            done
            for _ in $(seq 1 150); do
                total=$(curl -fsS -H "Authorization: Bearer $token" \
                    "http://127.0.0.1:$(api_port 0)/v1/hangar/hosts" 2>/dev/null |
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
            # Its bridges and firewall table, named after its installation.
            inst=$(grep -o 'hangar_[0-9a-f]\{4\}' "$ROOT/$h.log" 2>/dev/null | tail -n 1 | cut -d_ -f2 || true)
            if [ -n "$inst" ]; then
                for l in $(ls /sys/class/net | grep "^hgr$inst" || true); do ip link del "$l" 2>/dev/null || true; done
                nft delete table inet "hangar_$inst" 2>/dev/null || true
            fi
            # Its run dir, with the tmpfs it mounts there, deepest first.
            for m in $(awk -v d="/run/hangar-demo-$h" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r); do
                umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
            done
            rm -rf "/run/hangar-demo-$h" || true
        done
        if [ -f "$ROOT/pg/postmaster.pid" ]; then
            kill -INT "$(head -n 1 "$ROOT/pg/postmaster.pid")" 2>/dev/null || true
            for _ in $(seq 1 100); do
                [ -f "$ROOT/pg/postmaster.pid" ] || break
                sleep 0.1
            done
        fi
        rm -rf "$ROOT"
    fi
    echo "cluster demo stopped"
}

if [ "${1:-}" = stop ]; then
    stop
    exit 0
fi

packages=(crun busybox-static umoci skopeo util-linux e2fsprogs iproute2 nftables ca-certificates curl postgresql)
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
for _ in $(seq 1 100); do
    [ -S "$ROOT/pgsock/.s.PGSQL.$PG_PORT" ] && break
    sleep 0.1
done
runuser -u postgres -- "$(pg_bin)/psql" -X -q -h "$ROOT/pgsock" -p "$PG_PORT" -d postgres \
    -c "CREATE DATABASE hangar" >/dev/null
CLUSTER="host=$ROOT/pgsock port=$PG_PORT user=postgres dbname=hangar"

for i in 0 1 2; do
    h=${HOSTS[$i]}
    port=$(api_port "$i")
    echo "==> starting $h (${REGIONS[$i]}) on 127.0.0.1:$port" >&2
    mkdir -p "$ROOT/$h"
    setsid "$BIN/hangard" --data-dir "$ROOT/$h" --listen "127.0.0.1:$port" \
        --region "${REGIONS[$i]}" --cluster "$CLUSTER" --host-id "$h" \
        --secrets-key-file "$ROOT/secrets.key" --run-dir "/run/hangar-demo-$h" \
        --network-range "10.233.$((i * 4)).0/22" --ip-pool "127.0.$((3 + i)).0/24" \
        --proxy-http "127.0.0.1:$((8081 + i))" --proxy-https "127.0.0.1:$((8441 + i))" \
        --no-outbound-nat >"$ROOT/$h.log" 2>&1 </dev/null &
    echo $! >"$ROOT/$h.pid"
    for _ in $(seq 1 300); do
        if [ -s "$ROOT/$h/admin-token" ] && curl -fsS -o /dev/null \
            -H "Authorization: Bearer $(cat "$ROOT/$h/admin-token")" \
            "http://127.0.0.1:$port/v1/apps?org_slug=personal" 2>/dev/null; then
            break
        fi
        kill -0 "$(cat "$ROOT/$h.pid")" 2>/dev/null || { tail -n 20 "$ROOT/$h.log" >&2; exit 1; }
        sleep 0.1
    done
done
TOKEN=$(cat "$ROOT/host-a/admin-token")
A="http://127.0.0.1:$(api_port 0)"

echo "==> building the demo image from busybox-static and pushing it to host-a" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
build_demo_image "$work" '<h1>hello from a hangar cluster</h1>'
curl -fsS -o /dev/null -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d '{"app_name":"demo","org_slug":"personal"}' "$A/v1/apps"
skopeo copy --quiet --dest-tls-verify=false --dest-creds "hangar:$TOKEN" \
    "oci:$work/image:latest" "docker://127.0.0.1:$(api_port 0)/demo:latest"
IMAGE="127.0.0.1:$(api_port 0)/demo:latest"

for i in 0 1 2; do
    echo "HOST ${HOSTS[$i]} ${REGIONS[$i]} http://127.0.0.1:$(api_port "$i")"
done
echo "TOKEN $TOKEN"
echo "IMAGE $IMAGE"
cat >&2 <<EOT

Three hosts are up. Try (any host answers for every machine):
  export HANGAR_API_URL=$A HANGAR_API_TOKEN=$TOKEN
  hangar hosts list
  hangar machine run $IMAGE --app demo --region sjc --name web \\
      --port 80:8080/tcp:http --autostart -- httpd -f -p 8080 -h /www
  curl -H 'Host: demo.localhost' http://127.0.0.1:8081/   # host-a's proxy, the machine runs in sjc
  HANGAR_API_URL=http://127.0.0.1:$(api_port 2) hangar machine list --app demo
  scripts/cluster-demo.sh stop
EOT
