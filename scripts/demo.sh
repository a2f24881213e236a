#!/usr/bin/env bash
# Sets up and starts hangard with a ready-to-try demo, on a fresh Debian 12
# machine with Rust installed: installs crun, builds and installs hangard and
# hangar to /usr/local/bin, starts hangard (data in /var/lib/hangar, API on
# 127.0.0.1:4280, proxy on ports 80 and 443 serving http://<app>.localhost),
# builds a small image from busybox-static with umoci (no download), imports
# it as demo:latest and runs two machines from it: one that logs, and a web
# server behind the proxy that starts on demand and stops when idle. Where
# systemd runs, hangard runs as hangard.service (packaging/hangard.service).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    exec sudo -E "$0" "$@"
fi

DATA_DIR=${HANGAR_DATA_DIR:-/var/lib/hangar}
LISTEN=${HANGAR_LISTEN:-127.0.0.1:4280}
LOG=${HANGAR_LOG:-/var/log/hangard.log}
export HANGAR_DATA_DIR=$DATA_DIR HANGAR_API_URL="http://$LISTEN"

packages=(crun busybox-static umoci util-linux e2fsprogs iproute2 nftables ca-certificates curl)
. scripts/packages.sh
. scripts/demo-image.sh
install_packages "${packages[@]}"

echo "==> building hangard and hangar (release)"
cargo build --release --bins --quiet
install -m 0755 target/release/hangard target/release/hangar /usr/local/bin/

if [ "$LOG" = /var/log/hangard.log ] && [ -d /etc/logrotate.d ]; then
    install -m 0644 packaging/hangard.logrotate /etc/logrotate.d/hangard
fi
if curl -fsS -o /dev/null -H "Authorization: Bearer $(cat "$DATA_DIR/admin-token" 2>/dev/null)" \
    "http://$LISTEN/v1/apps?org_slug=personal" 2>/dev/null; then
    echo "==> hangard already runs on $LISTEN"
else
    if [ -d /run/systemd/system ]; then
        # Under systemd: restarted if it dies, started at boot; stopping it
        # leaves the machines running.
        echo "==> starting hangard.service on $LISTEN (data: $DATA_DIR, log: $LOG)"
        sed 's|@BINDIR@|/usr/local/bin|' packaging/hangard.service >/etc/systemd/system/hangard.service
        mkdir -p /etc/systemd/system/hangard.service.d
        cat >/etc/systemd/system/hangard.service.d/demo.conf <<UNIT
[Service]
Environment=HANGAR_DATA_DIR=$DATA_DIR HANGAR_LISTEN=$LISTEN
StandardOutput=append:$LOG
UNIT
        systemctl daemon-reload
        systemctl enable --now hangard.service
    else
        echo "==> starting hangard on $LISTEN (data: $DATA_DIR, log: $LOG)"
        setsid nohup /usr/local/bin/hangard --data-dir "$DATA_DIR" --listen "$LISTEN" >>"$LOG" 2>&1 </dev/null &
    fi
    for _ in $(seq 1 100); do
        if [ -s "$DATA_DIR/admin-token" ] && curl -fsS -o /dev/null \
            -H "Authorization: Bearer $(cat "$DATA_DIR/admin-token")" \
            "http://$LISTEN/v1/apps?org_slug=personal" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
fi

echo "==> building the demo image from busybox-static"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
build_demo_image "$work" '<h1>hello from hangar</h1>'
hangar image import "$work/image" --name demo:latest

if hangar machine status web --app web >/dev/null 2>&1; then
    echo "==> the demo web machine already exists"
else
    echo "==> running the demo web machine (http://web.localhost/)"
    hangar machine run demo:latest --app web --name web \
        --port 80:8080/tcp:http --port 443:8080/tcp:http:tls --autostart --autostop \
        --detach httpd -f -p 8080 -h /www
fi

if hangar machine status hello --app demo >/dev/null 2>&1; then
    echo "==> the demo machine already exists"
else
    echo "==> running the demo machine"
    hangar machine run demo:latest --app demo --name hello \
        --env GREETING="hello from hangar" \
        sh -c 'while true; do echo "$GREETING: machine $FLY_MACHINE_ID, $(date)"; sleep 5; done'
fi
cat <<EOT

Hangar is running. Try:
  hangar machine list --app demo
  hangar machine status hello --app demo
  hangar logs --app demo -f
  hangar machine exec hello --app demo -it -- sh
  hangar machine run demo:latest --app demo --shell
  hangar machine stop hello --app demo && hangar machine start hello --app demo
  hangar machine run demo:latest --app demo --rm echo one-off
  curl http://web.localhost/                 # through the proxy (-k https://web.localhost/ too);
                                             # idle 5 min, the machine stops; the next request starts it
  hangar machine list --app web
  hangar status --app demo
  hangar dashboard                           # the web dashboard, logged in (--print: the URL)
  curl -H "Authorization: Bearer \$(cat $DATA_DIR/admin-token)" http://$LISTEN/v1/apps/demo/machines
  curl -H "Authorization: Bearer \$(cat $DATA_DIR/admin-token)" http://$LISTEN/metrics
EOT
