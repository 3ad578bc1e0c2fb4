"""What the aggregator's gRPC status codes say about a collaborator: one table, read by `cofe doctor`'s
Ping (cofe_cli/doctor/grpc_ping.py) and by the collaborator that stops when it is refused
(engine/openfl_client.py), so both tell a site the same cause and the same fix.

Codes are held by name (grpc.StatusCode.X.name): this module imports neither grpc nor OpenFL.
Who answers what:
- PERMISSION_DENIED: cofe's revocation check (engine/openfl_server.py) found the certificate on the CRL.
- UNAUTHENTICATED: OpenFL checks every RPC: the sender is in the plan and is the certificate's CN.
- UNKNOWN: OpenFL asserts the header (an AssertionError, which gRPC reports as UNKNOWN): another plan's UUIDs.
- UNAVAILABLE: no TLS connection at all (the handshake failed, or nothing answers).
Only the first two are refusals of the site itself: every retry would be refused alike.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AggregatorStatus:
    meaning: str  # for a refusal, what is wrong with the site, after "the aggregator refused SITE: "
    fix: str
    refusal: bool = False  # the aggregator refuses this site itself: retrying cannot help

    def told(self, site: str) -> str:
        return f"the aggregator refused {site}: {self.meaning}" if self.refusal else self.meaning


STATUSES = {
    "PERMISSION_DENIED": AggregatorStatus(
        "its certificate is revoked",
        "ask the coordinator: make a new request (`cofe certify request --force`), have it signed and install it",
        refusal=True),
    "UNAUTHENTICATED": AggregatorStatus(
        "its name is not in the aggregator's plan, or its certificate's CN is not its name",
        "check with the coordinator that the aggregator runs the plan that lists this site, and that this site's "
        "certificate was signed for its name (start it under that name)",
        refusal=True),
    "UNAVAILABLE": AggregatorStatus(
        "the TLS connection was refused (wrong CA, an expired or not yet valid certificate, or the aggregator "
        "stopped)",
        "install the certificate this federation's coordinator signed (`cofe certify install`); check the "
        "`certificate` and `tls` lines of `cofe doctor`"),
    "UNKNOWN": AggregatorStatus(
        "the aggregator rejected the request's header: it runs another plan (another federation UUID) than this "
        "site's",
        "compare the plan hash with the coordinator; import the current kit (`cofe import KIT --force`)"),
    "DEADLINE_EXCEEDED": AggregatorStatus(
        "the aggregator did not answer in time",
        "the aggregator may be overloaded or starting; run `cofe doctor` again in a minute"),
}


def refusal(code_name: str) -> AggregatorStatus | None:
    """The table's entry when the code means the aggregator refuses the site itself, else None."""
    status = STATUSES.get(code_name)
    return status if status is not None and status.refusal else None
