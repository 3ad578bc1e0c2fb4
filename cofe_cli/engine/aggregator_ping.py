"""A collaborator's Ping to its aggregator, over gRPC with mutual TLS, as OpenFL's own client makes it.

`cofe doctor` uses it to ask the running aggregator itself whether it accepts this site: the TLS
handshake with the site's certificate, then OpenFL's checks of every RPC (the certificate's CN is
the sender, the sender is in the aggregator's plan, the header names this federation) and cofe's
revocation check. Ping changes nothing at the aggregator. Imported lazily: it loads OpenFL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# gRPC would print its own TLS errors to stderr; the doctor reports them in its own words.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")


@dataclass(frozen=True)
class PlanIdentity:
    aggregator_uuid: str
    federation_uuid: str


@dataclass(frozen=True)
class PingOutcome:
    code: str | None  # None: the aggregator answered; else the gRPC status code's name (UNAVAILABLE, ...)
    details: str
    answered_by: str = ""  # the sender of the aggregator's answer (its UUID)


def plan_identity(workspace: Path) -> PlanIdentity:
    """The UUIDs OpenFL derives from the workspace's plan (what a collaborator puts in every header)."""
    from openfl.federated import Plan

    from cofe_cli.engine.participant import COLS, PLAN, quiet

    workspace = Path(workspace)
    with quiet():
        plan = Plan.parse(plan_config_path=workspace / PLAN, cols_config_path=workspace / COLS)
    return PlanIdentity(plan.aggregator_uuid, plan.federation_uuid)


def grpc_target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def ping(host: str, port: int, *, chain: bytes, cert: bytes, key: bytes, sender: str, identity: PlanIdentity,
         timeout: float = 20.0) -> PingOutcome:
    import grpc
    from openfl.protocols import aggregator_pb2, aggregator_pb2_grpc
    from openfl.transport.grpc.common import create_header

    credentials = grpc.ssl_channel_credentials(root_certificates=chain, private_key=key, certificate_chain=cert)
    with grpc.secure_channel(grpc_target(host, port), credentials) as channel:
        header = create_header(sender=sender, receiver=identity.aggregator_uuid,
                               federation_uuid=identity.federation_uuid, single_col_cert_common_name="")
        try:
            reply = aggregator_pb2_grpc.AggregatorStub(channel).Ping(aggregator_pb2.PingRequest(header=header),
                                                                     timeout=timeout)
        except grpc.RpcError as error:
            return PingOutcome(error.code().name, str(error.details() or ""))
    return PingOutcome(None, "", reply.header.sender)
