"""OpenFL's gRPC client, except that a refusal by the aggregator ends the collaborator.

OpenFL retries every failed RPC forever, so a site whose certificate was revoked, or whose name is
not in the plan, would wait silently until someone notices. A refusal is not a network hiccup.
"""

from __future__ import annotations

import grpc
from openfl.protocols import aggregator_pb2_grpc
from openfl.transport.grpc.aggregator_client import AggregatorGRPCClient

_REFUSALS = {
    grpc.StatusCode.PERMISSION_DENIED: "its certificate is revoked",
    grpc.StatusCode.UNAUTHENTICATED: "its certificate's name is not a collaborator of this plan, or not the name it uses",
}


class RefusedByAggregator(RuntimeError):
    """Deliberately not a grpc.RpcError: OpenFL's retry loops catch those and try again."""


class _RefusalInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    def __init__(self, collaborator: str):
        self.collaborator = collaborator

    def _check(self, response):
        if isinstance(response, grpc.RpcError) and response.code() in _REFUSALS:
            raise RefusedByAggregator(f"the aggregator refused {self.collaborator}: {_REFUSALS[response.code()]} "
                                      f"({response.details()})")
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
