"""Site loss without torch: the options of `cofe init`, the plan's straggler policy, the aggregator's
watch over lost sites, and what `cofe run`'s supervisor does when a collaborator dies (real processes)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from cli_assertions import refused, run_cofe
from rich.console import Console
from unit_federation import gandlf_config

from cofe_cli.engine.site_watch import QUIT_GRACE_SECONDS, SiteWatch
from cofe_cli.errors import CofeError, FederationFailed
from cofe_cli.federation import AGGREGATOR, FederationLayout, Manifest, plan_hash
from cofe_cli.launch.supervisor import ParticipantState, SiteLoss, supervise, tail_lines
from cofe_cli.plan.builder import CUTOFF_POLICY, PlanOptions, build_plan, dump_yaml, parse_duration, site_loss_policy

SITES = ("site_a", "site_b", "site_c")


# -- options and plan ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("90s", 90), ("20m", 1200), ("1h30m", 5400), ("45", 45), ("10s", 10)])
def test_round_timeout_parses(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5s", "9", "-20m", "20 minutes", "1d", "100000h"])
def test_bad_round_timeout_is_refused(text):
    with pytest.raises(CofeError) as error:
        parse_duration(text)
    assert "--round-timeout" in error.value.message and "20m" in error.value.hint


def test_policy_defaults_and_bounds():
    assert site_loss_policy(None, None, 3) == (None, None)  # OpenFL's default: wait for every site
    assert site_loss_policy(3, None, 3) == (None, None)
    assert site_loss_policy(2, None, 3) == (2, 1200.0)  # fewer than all need a deadline: 20 min
    assert site_loss_policy(2, "90s", 3) == (2, 90.0)
    assert site_loss_policy(None, "90s", 3) == (3, 90.0)  # all sites, but a deadline to give up
    for bad in (0, -1, 4):
        with pytest.raises(CofeError, match="between 1 and the number of collaborators"):
            site_loss_policy(bad, None, 3)


def _plan(**changes) -> dict:
    return build_plan(gandlf_config(), PlanOptions(rounds=3, aggregator_address="localhost", aggregator_port=50051, **changes))


def test_plan_holds_openfls_cutoff_policy_and_its_hash_covers_it():
    default = _plan()
    assert "straggler_handling_policy" not in default
    plan = _plan(min_collaborators=2, round_timeout_seconds=90.0)
    assert plan["straggler_handling_policy"] == {
        "template": CUTOFF_POLICY, "settings": {"straggler_cutoff_time": 90.0, "minimum_reporting": 2}}
    other = _plan(min_collaborators=2, round_timeout_seconds=120.0)
    assert len({plan_hash(dump_yaml(p)) for p in (default, plan, other)}) == 3
    assert CUTOFF_POLICY.rsplit(".", 1)[0] == "openfl.component.aggregator.straggler_handling"
    with pytest.raises(CofeError, match="needs both"):
        _plan(min_collaborators=2)


def test_manifest_records_the_policy():
    manifest = Manifest(name="f", collaborators=SITES, rounds=3, aggregator_address="localhost", aggregator_port=1,
                        algorithm="fedavg", plan_sha384="0" * 96, versions={}, min_collaborators=2,
                        round_timeout_seconds=90.0)
    again = Manifest.from_dict(yaml.safe_load(yaml.safe_dump(manifest.to_dict())))
    assert again == manifest and again.required_collaborators == 2
    older = {key: value for key, value in manifest.to_dict().items() if key != "site_loss"}
    assert Manifest.from_dict(older).required_collaborators == 3 and "site_loss" not in Manifest.from_dict(older).to_dict()


@pytest.mark.parametrize("args, message", [
    (["--min-collaborators", "0"], "--min-collaborators must be between 1 and the number of collaborators (2), got 0"),
    (["--min-collaborators", "-1"], "got -1"),
    (["--min-collaborators", "3"], "got 3"),
    (["--round-timeout", "soon"], "--round-timeout 'soon' is not a duration"),
    (["--round-timeout", "9s"], "--round-timeout 9s (9 s) is out of range"),
    (["--min-collaborators", "1", "--round-timeout", "5"], "out of range"),
])
def test_init_refuses_bad_site_loss_options(tmp_path, args, message):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(gandlf_config()))
    result = run_cofe("init", "--dir", tmp_path / "fed", "--gandlf-config", config, "--collaborator", "site_a",
                      "--collaborator", "site_b", *args, cwd=tmp_path)
    refused(result, message)
    assert not (tmp_path / "fed" / "plans").exists()


def test_run_refuses_bad_restarts(tmp_path):
    refused(run_cofe("run", "--dir", tmp_path, "--restarts", "-1", cwd=tmp_path), "--restarts must be between 0 and")


# -- the aggregator's watch -------------------------------------------------------------------------

def test_watch_ends_the_federation_without_sites_that_stopped_polling():
    watch = SiteWatch(sites=list(SITES), needed=2, round_timeout=60, started=0)
    watch.heard_from("site_a", 100)
    watch.heard_from("site_c", 10)
    # After the last round: site_a polled 5 s ago (wait for it), site_b never came, site_c went silent.
    assert watch.quit_not_needed(["site_a", "site_b", "site_c"], 105) == ["site_b", "site_c"]
    assert watch.quit_not_needed(["site_a"], 100 + QUIT_GRACE_SECONDS + 1) == ["site_a"]


def test_watch_declares_sites_lost_after_twice_the_round_timeout():
    watch = SiteWatch(sites=list(SITES), needed=2, round_timeout=60, started=0)
    assert watch.lost(0, [], 1000) is None  # no site connected yet: nothing is lost
    for site in SITES:
        watch.heard_from(site, 10)
    assert watch.lost(0, [], 20) is None
    assert watch.lost(0, ["site_a", "site_b"], 500) is None  # enough reported: OpenFL closes the round
    watch.heard_from("site_a", 130)
    assert watch.lost(1, ["site_a"], 130) is None  # round 2 opens at 130
    assert watch.lost(1, ["site_a"], 250) is None
    lost = watch.lost(1, ["site_a"], 251)
    assert lost is not None and lost.missing == ["site_b", "site_c"]
    assert lost.message() == ("round 2: 1 of the 2 site(s) it needs reported within 121 s; lost: "
                              "site_b (last heard from 241 s ago), site_c (last heard from 241 s ago)")
    assert SiteWatch(sites=list(SITES), needed=3, round_timeout=None, started=0).lost(0, [], 10**6) is None


# -- the supervisor ---------------------------------------------------------------------------------

def test_site_loss_decisions():
    loss = SiteLoss(SITES, needed=2, restarts=1)
    assert loss.on_exit("site_c", -9) == "restart"
    assert loss.running("site_c")
    assert loss.on_exit("site_c", -9) == "lost" and not loss.running("site_c") and loss.left() == 2
    assert loss.on_exit("site_b", 1) == "restart"
    assert loss.on_exit("site_b", 1) == "stop"


class ScriptLauncher:
    """Real processes that stand for participants: each a shell script with its own lifetime and exit."""

    def __init__(self, root: Path, scripts: dict[str, str], again: dict[str, str] | None = None):
        self.root, self.scripts, self.again = root, scripts, again or {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarted: list[str] = []

    def participants(self):
        return list(self.scripts)

    def start(self):
        for name in self.scripts:
            self._spawn(name, self.scripts[name])

    def _spawn(self, name, script):
        with self.log_path(name).open("ab") as log:
            self.procs[name] = subprocess.Popen(["sh", "-c", script], stdout=log, stderr=subprocess.STDOUT)

    def restart_participant(self, name):
        self.restarted.append(name)
        self._spawn(name, self.again[name])

    def states(self):
        return {name: ParticipantState(name, proc.poll(), 0) for name, proc in self.procs.items()}

    def log_tail(self, name, lines=20, since=0):
        return tail_lines(self.log_path(name), lines, since)

    def log_path(self, name):
        return self.root / f"{name}.log"

    def stop(self, grace=10.0):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()


def _manifest(needed: int | None) -> Manifest:
    return Manifest(name="f", collaborators=SITES, rounds=3, aggregator_address="localhost", aggregator_port=1,
                    algorithm="fedavg", plan_sha384="0" * 96, versions={}, min_collaborators=needed,
                    round_timeout_seconds=60.0 if needed else None)


def _supervise(tmp_path, launcher, needed, restarts=0):
    layout = FederationLayout(tmp_path / "fed")
    console = Console(record=True, width=250)
    progress = supervise(launcher, layout, _manifest(needed), console=console, poll_interval=0.05, restarts=restarts)
    return progress, console.export_text()


def test_supervisor_goes_on_without_a_killed_collaborator(tmp_path):
    launcher = ScriptLauncher(tmp_path, {AGGREGATOR: "sleep 2", "site_a": "sleep 2.5", "site_b": "sleep 2.5",
                                         "site_c": "kill -9 $$"})
    progress, text = _supervise(tmp_path, launcher, needed=2)
    assert "site_c lost in round 1 (exit code -9); 2 of 3 collaborators left, 2 needed: the others go on" in text
    assert f"log: {tmp_path / 'site_c.log'}" in text
    assert progress.sites["site_c"].lost_in_round == 0 and "lost in round 1" in progress._status("site_c", progress.sites["site_c"])
    assert all(proc.poll() is not None for proc in launcher.procs.values())


def test_supervisor_stops_below_the_minimum_naming_the_lost(tmp_path):
    launcher = ScriptLauncher(tmp_path, {AGGREGATOR: "sleep 30", "site_a": "sleep 30", "site_b": "sleep 0.5; exit 3",
                                         "site_c": "kill -9 $$"})
    with pytest.raises(FederationFailed) as failure:
        _supervise(tmp_path, launcher, needed=2)
    assert failure.value.message == "site_b exited with code 3; lost: site_b, site_c, 1 left, 2 needed (the plan's --min-collaborators)"
    assert failure.value.participant == "site_b"
    assert all(proc.poll() is not None for proc in launcher.procs.values())


def test_supervisor_restarts_a_dead_collaborator(tmp_path):
    launcher = ScriptLauncher(tmp_path, {AGGREGATOR: "sleep 2", "site_a": "sleep 2.5", "site_b": "sleep 2.5",
                                         "site_c": "kill -9 $$"}, again={"site_c": "sleep 2.5"})
    progress, text = _supervise(tmp_path, launcher, needed=None, restarts=1)
    assert launcher.restarted == ["site_c"]
    assert "site_c exited with code -9 in round 1: restarted (1 of 1)" in text
    assert progress.sites["site_c"].lost_in_round is None and progress.sites["site_c"].returncode == 0


def test_without_a_minimum_one_dead_collaborator_stops_everyone(tmp_path):
    launcher = ScriptLauncher(tmp_path, {AGGREGATOR: "sleep 30", "site_a": "sleep 30", "site_b": "sleep 30",
                                         "site_c": "exit 1"})
    with pytest.raises(FederationFailed) as failure:
        _supervise(tmp_path, launcher, needed=None)
    assert failure.value.message == "site_c exited with code 1"
