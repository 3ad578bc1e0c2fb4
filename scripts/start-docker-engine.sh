#!/usr/bin/env bash
# Starts a Docker engine of its own for cofe's container tests and makes a local base image,
# on a Debian machine where no daemon runs and no image registry is reachable (CI, a sandbox).
#
#   eval "$(scripts/start-docker-engine.sh)"   # exports DOCKER_HOST, COFE_TEST_BASE_IMAGE, COFE_ENGINE_DIR,
#                                               # and COFE_ENGINE_STARTED=1 when it started the daemon
#
# Progress goes to stderr; stdout carries only the export lines. Run as root. Idempotent: an
# engine already answering on the socket is reused, and an existing base image is kept.
set -euo pipefail

ENGINE_DIR=${COFE_ENGINE_DIR:-/var/lib/cofe-engine}
SOCKET="unix://$ENGINE_DIR/docker.sock"
BASE_IMAGE=${COFE_TEST_BASE_IMAGE:-cofe-base:bookworm}
SUITE=bookworm

say() { echo "[docker-engine] $*" >&2; }
engine() { docker -H "$SOCKET" "$@"; }

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    say "installing docker.io and debootstrap from Debian"
    bash "$(dirname "$0")/apt-install-without-services.sh" docker.io debootstrap
fi

mkdir -p "$ENGINE_DIR"
started=0
if engine version >/dev/null 2>&1; then
    say "reusing the engine already answering on $SOCKET"
else
    say "starting dockerd (data in $ENGINE_DIR, log $ENGINE_DIR/dockerd.log)"
    # setsid: the daemon outlives this script and the shell that ran it.
    setsid dockerd --data-root "$ENGINE_DIR/data" --exec-root "$ENGINE_DIR/exec" \
        --pidfile "$ENGINE_DIR/dockerd.pid" -H "$SOCKET" \
        >>"$ENGINE_DIR/dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 1 60); do
        engine version >/dev/null 2>&1 && break
        sleep 0.5
    done
    started=1
    engine version >/dev/null 2>&1 || { say "dockerd did not answer; its log:"; tail -n 30 "$ENGINE_DIR/dockerd.log" >&2; exit 1; }
fi

if engine image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base image $BASE_IMAGE already present"
else
    # No registry is reachable, so the base image is a Debian root file system made here.
    say "making base image $BASE_IMAGE with debootstrap (about a minute)"
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$rootfs" >&2
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | engine import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >&2
    rm -rf "$rootfs"
fi

echo "export DOCKER_HOST=$SOCKET"
echo "export COFE_TEST_BASE_IMAGE=$BASE_IMAGE"
echo "export COFE_ENGINE_DIR=$ENGINE_DIR"
echo "export COFE_ENGINE_STARTED=$started"
