"""Whether this host can listen on a port, asked the way gRPC's aggregator will bind it."""

from __future__ import annotations

import socket

from cofe_cli.errors import CofeError


def listen_error(port: int) -> OSError | None:
    """None when [::]:port (or 0.0.0.0:port) can be bound. gRPC binds with SO_REUSEPORT, so a second
    aggregator would share a taken port silently: this probe binds without it to find out first."""
    family = socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("::" if family == socket.AF_INET6 else "", port))
        except OSError as error:
            return error
    return None


def port_in_use(port: int) -> CofeError:
    return CofeError(f"port {port} is already in use on this machine",
                     hint="stop what uses it, or re-create the federation with `cofe init --force --port N`")


def check_port_free(port: int) -> None:
    if listen_error(port) is not None:
        raise port_in_use(port)
