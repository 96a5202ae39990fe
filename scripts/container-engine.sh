#!/usr/bin/env bash
# A Docker-API container engine (Podman) for the tool-environment tests and CI.
#
#   bash scripts/container-engine.sh up      # install if needed, build the test image, serve the API
#   bash scripts/container-engine.sh status  # does the API answer? is the image there?
#   bash scripts/container-engine.sh down    # stop the API service started by `up`
#
# `up` is idempotent. Where Podman cannot be installed (not root, no apt-get) it says so and
# exits 0: the Docker tests then skip locally and fail in CI (tests/conftest.py).
# Follows ../shared/recipes/container-engine.md.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SOCK="${THUNDER_PODMAN_SOCK:-/run/thunder-podman.sock}"
IMAGE="${THUNDER_TEST_IMAGE:-localhost/thunder-test:latest}"
LOG="${THUNDER_PODMAN_LOG:-/tmp/thunder-podman.log}"
PIDFILE="${THUNDER_PODMAN_PIDFILE:-/tmp/thunder-podman.pid}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$REPO/integrations/podman/containers.conf}"

say() { echo "[container-engine] $*"; }

api_answers() {
    command -v curl >/dev/null && curl -fsS --max-time 3 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1
}

image_served() {
    curl -fsS --max-time 5 --unix-socket "$SOCK" "http://d/images/$IMAGE/json" >/dev/null 2>&1
}

install_podman() {
    if command -v podman >/dev/null && command -v runc >/dev/null && command -v curl >/dev/null \
        && { command -v busybox >/dev/null || [ -x /bin/busybox ]; }; then
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        say "no container engine found and cannot install one (needs root and apt-get)."
        say "Docker-API tests will skip here (and fail in CI). Set DOCKER_HOST to use another engine."
        return 1
    fi
    say "installing podman, runc, busybox-static (apt-get)..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends podman runc busybox-static curl >/dev/null
}

busybox_path() {
    if [ -x /bin/busybox ]; then echo /bin/busybox; else command -v busybox; fi
}

build_image() {
    if podman image exists "$IMAGE" 2>/dev/null; then
        return 0
    fi
    say "building $IMAGE from busybox-static..."
    local dir
    dir="$(mktemp -d)"
    mkdir -p "$dir/rootfs/bin" "$dir/rootfs/tmp" "$dir/rootfs/work" "$dir/rootfs/www" \
        "$dir/rootfs/etc" "$dir/rootfs/proc" "$dir/rootfs/sys" "$dir/rootfs/dev"
    cp "$(busybox_path)" "$dir/rootfs/bin/busybox"
    while read -r applet; do
        [ -n "$applet" ] && ln -sf busybox "$dir/rootfs/bin/$applet"
    done <"$REPO/integrations/podman/busybox-applets.txt"
    echo "thunder-test" >"$dir/rootfs/www/index.html"
    echo "root:x:0:0:root:/root:/bin/sh" >"$dir/rootfs/etc/passwd"
    chmod 1777 "$dir/rootfs/tmp"
    tar -C "$dir/rootfs" -cf "$dir/rootfs.tar" .
    podman import --quiet --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' \
        "$dir/rootfs.tar" "$IMAGE" >/dev/null
    rm -rf "$dir"
}

start_service() {
    if api_answers; then
        say "Docker API already answers on unix://$SOCK"
        return 0
    fi
    rm -f "$SOCK"
    say "starting podman system service on unix://$SOCK (log: $LOG)"
    setsid podman system service --time=0 "unix://$SOCK" >>"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 60); do
        if api_answers; then
            say "Docker API answers: export DOCKER_HOST=unix://$SOCK CONTAINERS_CONF=$CONTAINERS_CONF"
            return 0
        fi
        sleep 0.5
    done
    say "podman service did not answer within 30 s; see $LOG"
    tail -n 20 "$LOG" || true
    return 1
}

cmd_up() {
    if api_answers && image_served; then
        say "Docker API answers on unix://$SOCK with $IMAGE: nothing to do"
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        say "no container engine at unix://$SOCK, and starting one needs root."
        say "Docker-API tests will skip here (and fail in CI). Set DOCKER_HOST to use another engine."
        return 0
    fi
    install_podman || exit 0
    build_image
    start_service
}

cmd_down() {
    if [ -f "$PIDFILE" ]; then
        local pid
        pid="$(cat "$PIDFILE")"
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" && say "stopped podman service (pid $pid)"
        fi
        rm -f "$PIDFILE"
    else
        say "no service started by this script"
    fi
}

cmd_status() {
    if api_answers; then say "Docker API: answers on unix://$SOCK"; else say "Docker API: not answering on unix://$SOCK"; fi
    if command -v podman >/dev/null && podman image exists "$IMAGE" 2>/dev/null; then
        say "image $IMAGE: present"
    else
        say "image $IMAGE: missing"
    fi
}

case "${1:-up}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 {up|down|status}" >&2; exit 2 ;;
esac
