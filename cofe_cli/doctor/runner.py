"""Which participant is checked, and its checks in order: a network step that needs what an earlier one
failed to give (an address, a TCP connection, this site's certificate) is skipped; every other check
runs whatever failed before it."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import yaml

from cofe_cli.doctor.certificates import check_certificate, check_clock, check_private_keys, kernel_clock_state
from cofe_cli.doctor.data import check_data
from cofe_cli.doctor.grpc_ping import ping_check
from cofe_cli.doctor.network_tls import DEFAULT_TIMEOUT, check_address, check_listen_port, check_port, tls_handshake
from cofe_cli.doctor.plan_and_versions import check_environment, check_initial_model_file, check_plan
from cofe_cli.doctor.result import Check, skip
from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout, Manifest


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def _kit_created(workspace: Path) -> datetime | None:
    try:
        created = json.loads((workspace / "kit.json").read_text()).get("created")
        moment = datetime.fromisoformat(str(created))
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def select_participant(layout: FederationLayout, manifest: Manifest, name: str | None) -> str:
    from cofe_cli.federation import local_participant

    if name is not None:
        return local_participant(layout, manifest, name)
    present = [p for p in manifest.participant_names() if layout.workspace(p).is_dir()]
    if len(present) > 1:
        raise CofeError(f"{layout.root} holds several participants ({', '.join(present)}); which one?",
                        hint="name it: `cofe doctor --dir DIR --participant NAME`")
    return local_participant(layout, manifest, None)


def run_checks(layout: FederationLayout, manifest: Manifest, participant: str, *, min_days: int,
               data: Path | None = None, timeout: float = DEFAULT_TIMEOUT,
               report: Callable[[Check], None] = lambda check: None) -> list[Check]:
    from cofe_cli.plan.workspaces import GANDLF_FILE, collaborator_data_folder
    from cofe_cli.pki.workspace_certs import CertPaths

    checks: list[Check] = []

    def add(check: Check) -> None:
        checks.append(check)
        report(check)

    host, port = manifest.aggregator_address, manifest.aggregator_port
    this = layout.participant(participant, manifest)
    workspace, is_aggregator = this.workspace, this.is_aggregator
    paths = CertPaths.of(this)
    chain, cert_pem, key_pem = _read(paths.chain), _read(paths.cert), _read(paths.key)
    add(check_plan(layout, manifest, participant))
    # Clients dial the aggregator's address: its certificate must name it as a host (SAN) too.
    certificate, own_cert = check_certificate(
        cert_pem, key_pem, chain, participant=participant, expected_cn=this.common_name,
        min_days=min_days, expected_san=this.common_name if is_aggregator else None)
    server_cert = None
    if is_aggregator:
        add(check_listen_port(port))
    else:
        address, addresses = check_address(host, port, timeout=timeout)
        add(address)
        target = None
        if addresses:
            connected, target = check_port(addresses, host, port, timeout=timeout)
            add(connected)
        else:
            add(skip("port", "the address does not resolve"))
        have_files = chain is not None and cert_pem is not None and key_pem is not None
        if target is None:
            add(skip("tls", "no TCP connection to the aggregator"))
            add(skip("aggregator", "no TCP connection to the aggregator"))
        elif not have_files:
            add(skip("tls", "this site has no certificate yet (see the `certificate` line)"))
            add(skip("aggregator", "this site has no certificate yet"))
        else:
            tls = tls_handshake(host, port, target, chain_pem=chain, cert_file=paths.cert, key_file=paths.key,
                                timeout=timeout)
            add(tls.check)
            server_cert = tls.server_cert
            add(ping_check(workspace, host, port, chain=chain, cert=cert_pem, key=key_pem, sender=participant,
                           timeout=max(20.0, timeout)))
    add(certificate)
    add(check_private_keys(layout, manifest))
    add(check_clock(server_cert=server_cert, own_cert=own_cert, kit_created=_kit_created(workspace),
                    kernel=kernel_clock_state(), at_aggregator=is_aggregator))
    gandlf_config = yaml.safe_load((layout.plans / GANDLF_FILE).read_text()) if (layout.plans / GANDLF_FILE).is_file() else {}
    if is_aggregator:
        add(check_initial_model_file(workspace, manifest))
    else:
        folder = Path(data).expanduser().resolve() if data else collaborator_data_folder(layout, participant)
        add(check_data(folder, gandlf_config or {}, participant=participant))
    add(check_environment(manifest.versions))
    return checks
