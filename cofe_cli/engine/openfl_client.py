"""OpenFL's gRPC client, except that a refusal by the aggregator ends the collaborator.

OpenFL retries every failed RPC forever, so a site whose certificate was revoked, or whose name is
not in the plan, would wait silently until someone notices. A refusal is not a network hiccup.
"""

from __future__ import annotations

import grpc
from openfl.protocols import aggregator_pb2_grpc
from openfl.transport.grpc.aggregator_client import AggregatorGRPCClient

from cofe_cli.engine.aggregator_status import refusal
from cofe_cli.errors import FederationFailed


class RefusedByAggregator(FederationFailed):
    """Deliberately not a grpc.RpcError: OpenFL's retry loops catch those and try again. A cofe error:
    the site is told in one line why it cannot take part, not shown a traceback."""


class _RefusalInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    def __init__(self, collaborator: str):
        self.collaborator = collaborator

    def _check(self, response):
        refused = refusal(response.code().name) if isinstance(response, grpc.RpcError) else None
        if refused is not None:
            raise RefusedByAggregator(f"{refused.told(self.collaborator)} ({response.details()})",
                                      hint=refused.fix, participant=self.collaborator)
        return response

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return self._check(continuation(client_call_details, request))

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return self._check(continuation(client_call_details, request_iterator))


class RefusalAwareClient(AggregatorGRPCClient):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._intercept()

    def reconnect(self):
        super().reconnect()
        self._intercept()

    def _intercept(self) -> None:
        self.channel = grpc.intercept_channel(self.channel, _RefusalInterceptor(self.collaborator_name))
        self.stub = aggregator_pb2_grpc.AggregatorStub(self.channel)
