"""The aggregator's own answer: a gRPC Ping as OpenFL's collaborator makes it (engine/aggregator_ping.py,
imported when the Ping is made: it loads OpenFL), its status told as engine/aggregator_status.py
tells it to a collaborator the aggregator refuses."""

from __future__ import annotations

from pathlib import Path

from cofe_cli.doctor.result import Check, fail, ok
from cofe_cli.engine.aggregator_status import STATUSES, AggregatorStatus

_OTHER_STATUS = AggregatorStatus("the Ping failed", "check the aggregator's log")


def ping_check(workspace: Path, host: str, port: int, *, chain: bytes, cert: bytes, key: bytes, sender: str,
               timeout: float) -> Check:
    from cofe_cli.engine.aggregator_ping import grpc_target, ping, plan_identity

    try:
        identity = plan_identity(workspace)
    except Exception as error:  # OpenFL raises bare exceptions for any plan problem
        return fail("aggregator", f"OpenFL cannot parse this workspace's plan ({type(error).__name__}: {error})",
                    "import the kit again (`cofe import KIT --force`)")
    outcome = ping(host, port, chain=chain, cert=cert, key=key, sender=sender, identity=identity, timeout=timeout)
    return describe_ping(outcome.code, outcome.details, sender=sender, target=grpc_target(host, port),
                         answered_by=outcome.answered_by)


def describe_ping(code: str | None, details: str, *, sender: str, target: str, answered_by: str = "") -> Check:
    if code is None:
        who = f" as {answered_by}" if answered_by else ""
        return ok("aggregator", f"{target} answered a gRPC Ping from {sender}{who}: it accepts this site's "
                                "certificate, name and plan")
    status = STATUSES.get(code, _OTHER_STATUS)
    shown = " ".join(details.split())
    if len(shown) > 240:
        shown = shown[:237] + "..."
    return fail("aggregator", f"Ping to {target} failed with {code}: {status.told(sender)}"
                + (f" [{shown}]" if shown else ""), status.fix)
