"""The multi-terminal path (`cofe start` per participant) and the aggregator's mutual TLS."""

from __future__ import annotations

import socket
import time

import grpc
import pytest

from cofe_cli.pki import CertificateAuthority
from federation_helpers import cofe, cofe_background, free_port, processes_using, wait_for_port

pytestmark = pytest.mark.federation


def _ping(port: int, chain: bytes, cert: bytes | None, key: bytes | None, plan, sender: str) -> grpc.StatusCode | None:
    from openfl.protocols import aggregator_pb2, aggregator_pb2_grpc
    from openfl.transport.grpc.common import create_header

    credentials = grpc.ssl_channel_credentials(root_certificates=chain, private_key=key, certificate_chain=cert)
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        header = create_header(sender=sender, receiver=plan.aggregator_uuid, federation_uuid=plan.federation_uuid,
                               single_col_cert_common_name="")
        try:
            aggregator_pb2_grpc.AggregatorStub(channel).Ping(aggregator_pb2.PingRequest(header=header), timeout=20)
            return None
        except grpc.RpcError as error:
            return error.code()


def test_start_commands_finish_and_refuse_strangers(tmp_path, site_data, fast_config):
    fed = tmp_path / "fed"
    port = free_port()
    # site_b's data is named only at the site, when it starts (a coordinator never sees it).
    cofe("init", "--dir", fed, "--gandlf-config", fast_config, "--collaborator", f"site_a={site_data['site_a']}",
         "--collaborator", "site_b", "--rounds", 2, "--port", port, check=True)
    start_early = cofe("start", "aggregator", "--dir", fed)
    assert start_early.returncode == 2 and "cofe certify" in start_early.stderr
    cofe("certify", "--dir", fed, check=True)
    unknown = cofe("start", "collaborator", "site_z", "--dir", fed)
    assert unknown.returncode == 2 and "no collaborator 'site_z'" in unknown.stderr
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        busy = cofe("start", "aggregator", "--dir", fed)
    assert busy.returncode == 2 and f"port {port} is already in use" in busy.stderr, busy.stderr
    assert "Traceback" not in busy.stderr

    aggregator = cofe_background("start", "aggregator", "--dir", fed, log=tmp_path / "aggregator.out")
    wait_for_port(port)

    from openfl.federated import Plan

    workspace = fed / "workspaces" / "site_a"
    plan = Plan.parse(plan_config_path=workspace / "plan" / "plan.yaml", cols_config_path=workspace / "plan" / "cols.yaml")
    chain = (workspace / "cert" / "cert_chain.crt").read_bytes()
    own_cert = (workspace / "cert" / "client" / "col_site_a.crt").read_bytes()
    own_key = (workspace / "cert" / "client" / "col_site_a.key").read_bytes()
    stranger = CertificateAuthority.create(tmp_path / "other-ca").issue_client_cert("site_a")

    assert _ping(port, chain, own_cert, own_key, plan, "site_a") is None  # the control: a real member gets through
    assert _ping(port, chain, None, None, plan, "site_a") == grpc.StatusCode.UNAVAILABLE
    assert _ping(port, chain, stranger.cert_pem, stranger.key_pem, plan, "site_a") == grpc.StatusCode.UNAVAILABLE

    no_data = cofe("start", "collaborator", "site_b", "--dir", fed)
    assert no_data.returncode == 2 and "--data" in no_data.stderr
    collaborators = [
        cofe_background("start", "collaborator", "site_a", "--dir", fed, log=tmp_path / "site_a.out"),
        cofe_background("start", "collaborator", "site_b", "--dir", fed, "--data", site_data["site_b"], log=tmp_path / "site_b.out"),
    ]
    deadline = time.monotonic() + 900
    for proc in [aggregator, *collaborators]:
        proc.wait(timeout=max(1, deadline - time.monotonic()))
    logs = {p.name: p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("*.out")}
    assert aggregator.returncode == 0, logs
    assert all(proc.returncode == 0 for proc in collaborators), logs
    assert (fed / "workspaces" / "aggregator" / "save" / "last.pt").is_file()
    assert processes_using(fed) == []

    restarted = cofe("start", "aggregator", "--dir", fed)
    assert restarted.returncode == 2 and "already finished" in restarted.stderr
