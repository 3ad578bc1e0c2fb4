#!/usr/bin/env bash
# Installs Debian packages without letting their post-install scripts start system daemons
# (the engine and cluster scripts start their own, on sockets and folders of their own).
# A machine's own /usr/sbin/policy-rc.d is left alone. Output goes to stderr.
set -euo pipefail
apt-get update -qq >&2
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
