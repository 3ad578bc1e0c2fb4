"""The one table of the aggregator's gRPC status codes, as `cofe doctor`'s Ping and a refused
collaborator (engine/openfl_client.py, exercised against a real aggregator in
tests/integration/test_start.py) both read it."""

from __future__ import annotations

import grpc
import pytest

from cofe_cli.doctor.grpc_ping import describe_ping
from cofe_cli.engine.aggregator_status import STATUSES, refusal


def test_every_code_in_the_table_is_a_grpc_status_code():
    assert set(STATUSES) <= {code.name for code in grpc.StatusCode}


def test_a_revoked_or_unlisted_site_is_refused_and_told_why():
    revoked = refusal(grpc.StatusCode.PERMISSION_DENIED.name)
    assert revoked.told("site_a") == "the aggregator refused site_a: its certificate is revoked"
    assert revoked.fix.startswith("ask the coordinator")
    unlisted = refusal(grpc.StatusCode.UNAUTHENTICATED.name)
    assert "not in the aggregator's plan" in unlisted.told("site_z")


@pytest.mark.parametrize("code", ["UNAVAILABLE", "DEADLINE_EXCEEDED", "UNKNOWN", "INTERNAL", "NOT_A_CODE"])
def test_a_connection_or_header_problem_is_no_refusal_so_the_collaborator_retries(code):
    assert refusal(code) is None


@pytest.mark.parametrize("code", ["PERMISSION_DENIED", "UNAUTHENTICATED"])
def test_the_doctor_tells_a_refusal_in_the_collaborator_s_words(code):
    check = describe_ping(code, "certificate of site_a is revoked", sender="site_a", target="fl:50051")
    assert refusal(code).told("site_a") in check.detail
    assert check.fix == refusal(code).fix
