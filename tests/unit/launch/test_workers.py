"""`--workers N` without torch: which worker holds which site, the options' checks through the real CLI,
and what the supervisor sees of sites in shared workers (real processes standing for the workers)."""

from __future__ import annotations

import pytest
from cli_assertions import refused, run_cofe
from rich.console import Console
from unit_federation import gandlf_config, write_federation

from cofe_cli.errors import FederationFailed
from cofe_cli.federation import AGGREGATOR, FederationLayout, Manifest
from cofe_cli.launch.supervisor import supervise
from cofe_cli.launch.workers import WorkerFederation, assign_sites
from cofe_cli.plan.workspaces import CollaboratorData

SITES = ("site_a", "site_b", "site_c")


def test_sites_are_dealt_round_robin_in_the_plans_order():
    assert assign_sites(["a", "b", "c", "d", "e"], 2) == [("a", "c", "e"), ("b", "d")]
    assert assign_sites(["a", "b", "c"], 3) == [("a",), ("b",), ("c",)]
    assert assign_sites(["a", "b", "c"], 1) == [("a", "b", "c")]
    dealt = assign_sites([f"s{i}" for i in range(33)], 2)
    assert sorted(sum(dealt, ())) == sorted(f"s{i}" for i in range(33)) and [len(w) for w in dealt] == [17, 16]


@pytest.fixture
def fed(tmp_path):
    write_federation(tmp_path / "fed", config=gandlf_config(), address="localhost",
                     collaborators=[CollaboratorData(name, None) for name in SITES])
    return tmp_path / "fed"


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--workers", "-2"], "--workers must be at least 1, got -2"),
    (["--workers", "4"], "--workers 4 is more than the federation's 3 collaborator(s)"),
    (["--workers", "2", "--containers"], "--workers does not go with --containers"),
])
def test_run_refuses_bad_workers(fed, args, message):
    before = sorted(p.relative_to(fed) for p in fed.rglob("*"))
    refused(run_cofe("run", "--dir", fed, *args, cwd=fed.parent), message)
    assert sorted(p.relative_to(fed) for p in fed.rglob("*")) == before  # nothing started, nothing written


def test_run_counts_the_collaborators_it_is_asked_to_init(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("{}")
    refused(run_cofe("run", "--dir", tmp_path / "fed", "--gandlf-config", config, "--collaborator", f"a={tmp_path}",
                     "--collaborator", f"b={tmp_path}", "--workers", "3", cwd=tmp_path),
            "--workers 3 is more than the federation's 2 collaborator(s)")
    assert not (tmp_path / "fed").exists()


@pytest.mark.parametrize("args, message", [
    (["--sites", "2", "--workers", "3"], "--workers 3 is more than the federation's 2 collaborator(s)"),
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--workers", "2", "--containers"], "--workers does not go with --containers"),
])
def test_demo_refuses_bad_workers(tmp_path, args, message):
    refused(run_cofe("demo", "--dir", tmp_path / "demo", *args, cwd=tmp_path), message)
    assert not (tmp_path / "demo").exists()


def test_a_worker_refuses_a_site_the_plan_does_not_know(fed):
    refused(run_cofe("start", "worker", "--sites", "site_a,site_x", "--dir", fed, cwd=fed.parent), "site_x")


# -- the supervisor and sites in shared workers ------------------------------------------------------------


class ScriptWorkers(WorkerFederation):
    """The real launcher of shared workers, with shell scripts standing for the aggregator and the workers
    (a script writes a site's exit file as the engine's worker does)."""

    def __init__(self, layout: FederationLayout, manifest: Manifest, workers: int, scripts: dict[str, str]):
        super().__init__(layout, manifest, workers=workers)
        self.scripts = scripts

    def command(self, name):
        return ["sh", "-c", self.scripts[name]]

    def worker_command(self, sites):
        return ["sh", "-c", self.scripts[",".join(sites)]]


def _exit(fed, site: str, code: int) -> str:
    exit_file = FederationLayout(fed).participant(site).exit_file
    return f"mkdir -p {exit_file.parent} && echo {code} > {exit_file}"


def _supervise(fed, scripts: dict[str, str], needed: int | None):
    layout = FederationLayout(fed)
    manifest = layout.load_manifest()
    manifest = Manifest(**{**manifest.__dict__, "min_collaborators": needed, "round_timeout_seconds": 60.0 if needed else None})
    launcher = ScriptWorkers(layout, manifest, 2, scripts)
    console = Console(record=True, width=250)
    progress = supervise(launcher, layout, manifest, console=console, poll_interval=0.05)
    return launcher, progress, console.export_text()


def test_a_killed_worker_loses_every_site_it_held(fed):
    # worker-1 holds site_a and site_c, worker-2 site_b.
    launcher, progress, text = _supervise(fed, {
        AGGREGATOR: "sleep 2.5",
        "site_a,site_c": "sleep 0.3; kill -9 $$",
        "site_b": f"sleep 2; {_exit(fed, 'site_b', 0)}",
    }, needed=1)
    assert launcher.collaborator_processes == 2
    for site in ("site_a", "site_c"):
        assert f"{site} lost in round 1 (exit code -9)" in text, text
        assert progress.sites[site].lost_in_round == 0
    assert progress.sites["site_b"].returncode == 0 and progress.sites["site_b"].lost_in_round is None


def test_a_site_that_fails_in_a_running_worker_stops_the_federation(fed):
    with pytest.raises(FederationFailed) as failure:
        _supervise(fed, {
            AGGREGATOR: "sleep 30",
            "site_a,site_c": f"{_exit(fed, 'site_c', 3)}; sleep 30",  # site_c refused; its worker goes on with site_a
            "site_b": "sleep 30",
        }, needed=None)
    assert failure.value.message == "site_c exited with code 3"
    assert failure.value.participant == "site_c"


def test_a_worker_that_finished_its_sites_ends_them_with_their_own_codes(fed):
    launcher, progress, _ = _supervise(fed, {
        AGGREGATOR: "sleep 1",
        "site_a,site_c": f"{_exit(fed, 'site_a', 0)}; {_exit(fed, 'site_c', 0)}",
        "site_b": _exit(fed, "site_b", 0),
    }, needed=None)
    assert {name: site.returncode for name, site in progress.sites.items()} == {AGGREGATOR: 0, **dict.fromkeys(SITES, 0)}
    assert sorted(p.name for p in (fed / "workers").iterdir()) == ["worker-1.log", "worker-2.log"]
