"""`cofe run --slurm` without a cluster: the batch scripts cofe writes, option checks, job states,
and clear errors when Slurm is missing or its controller does not answer (fake sinfo/sbatch on PATH)."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from cofe_cli.launch.factory import slurm_options_of
from cofe_cli.errors import CofeError
from cofe_cli.federation import FederationLayout
from cofe_cli.launch import slurm
from cofe_cli.launch.slurm import JobInfo, SlurmOptions, placement, render_script, render_worker_script, returncode_of


@pytest.fixture
def layout(tmp_path) -> FederationLayout:
    return FederationLayout(tmp_path / "fed")


def _directives(script: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_collaborator_script(layout):
    options = SlurmOptions(partition="gpu", account="lab", time="02:00:00", mem_per_site="4G", cpus_per_site=3,
                           gpus_per_site=1, sbatch_args=("--qos=high",))
    script = render_script(layout, "site_a", options, python="/opt/venv/bin/python")
    assert script.startswith("#!/bin/bash\n")
    directives = _directives(script)
    log = layout.root / "workspaces" / "site_a" / "logs" / "site_a.log"
    for expected in (f"--output={log}", "--open-mode=append", f"--chdir={layout.root / 'workspaces' / 'site_a'}",
                     "--cpus-per-task=3", "--partition=gpu", "--account=lab", "--time=02:00:00", "--mem=4G",
                     "--gpus=1", "--qos=high", "--no-requeue", "--nodes=1", "--ntasks=1"):
        assert expected in directives, expected
    assert any(d.startswith("--job-name=cofe-") and d.endswith("-site_a") for d in directives)
    assert "export OMP_NUM_THREADS=3" in script and "COFE_LOG_CAPTURED=1" in script
    # `cofe run` holds the federation's locks on the login node: the job's `cofe start` must not take them.
    assert f"export COFE_LOCKS_HELD_BY={os.getpid()}" in script
    assert f"exec /opt/venv/bin/python -m cofe_cli start collaborator site_a --dir {layout.root} --device cuda" in script


def test_shared_worker_script_runs_its_sites_in_one_job(layout):
    """`cofe run --slurm --workers N`: one job per worker, its output in FED/workers, its sites each with its own log."""
    options = SlurmOptions(mem_per_site="6G", cpus_per_site=2, gpus_per_site=1)
    script = render_worker_script(layout, "worker-1", ("site_a", "site_c"), options, python="/opt/venv/bin/python")
    directives = _directives(script)
    for expected in (f"--output={layout.root / 'workers' / 'worker-1.log'}", f"--chdir={layout.root}",
                     "--cpus-per-task=2", "--mem=6G", "--gpus=1", "--no-requeue"):
        assert expected in directives, expected
    assert any(d.startswith("--job-name=cofe-") and d.endswith("-worker-1") for d in directives)
    assert "export OMP_NUM_THREADS=2" in script
    assert (f"exec /opt/venv/bin/python -m cofe_cli start worker --sites site_a,site_c --dir {layout.root} "
            "--device cuda") in script


def test_aggregator_script_takes_one_core_no_gpu_and_can_be_pinned(layout):
    options = SlurmOptions(cpus_per_site=4, gpus_per_site=2)
    script = render_script(layout, "aggregator", options, python="/usr/bin/python3", restart=True, nodelist="node7")
    directives = _directives(script)
    assert "--cpus-per-task=1" in directives and "--nodelist=node7" in directives
    assert not any(d.startswith("--gpus") for d in directives)
    assert "export OMP_NUM_THREADS=1" in script
    assert f"exec /usr/bin/python3 -m cofe_cli start aggregator --dir {layout.root} --restart" in script
    assert not any(d.startswith(("--partition", "--account", "--time", "--mem")) for d in directives)


def test_paths_with_spaces_are_quoted(tmp_path):
    layout = FederationLayout(tmp_path / "my fed")
    script = render_script(layout, "site_a", SlurmOptions(), python="/opt/my venv/bin/python")
    assert f"exec '/opt/my venv/bin/python' -m cofe_cli start collaborator site_a --dir '{layout.root}'" in script


@pytest.mark.parametrize("options, message", [
    (SlurmOptions(time="2 hours"), "--time"),
    (SlurmOptions(mem_per_site="4GB"), "--mem-per-site"),
    (SlurmOptions(mem_per_site="lots"), "--mem-per-site"),
    (SlurmOptions(cpus_per_site=0), "--cpus-per-site"),
    (SlurmOptions(gpus_per_site=-1), "--gpus-per-site"),
    (SlurmOptions(partition="gpu; rm -rf /"), "--partition"),
    (SlurmOptions(sbatch_args=("qos=high",)), "--sbatch-arg"),
    (SlurmOptions(sbatch_args=("--output=/tmp/x",)), "cofe sets"),
    (SlurmOptions(sbatch_args=("--qos=a\n#SBATCH --x",)), "--sbatch-arg"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(CofeError) as error:
        options.validate()
    assert message in str(error.value)


@pytest.mark.parametrize("value", ["02:00:00", "30", "1-00:00:00", "10:00", "UNLIMITED"])
def test_time_limits_slurm_accepts(value):
    SlurmOptions(time=value).validate()


def test_slurm_options_go_with_slurm():
    assert slurm_options_of(False, False, partition=None, account=None, time=None, mem_per_site=None, cpus_per_site=1,
                            gpus_per_site=None, sbatch_args=()) is None
    with pytest.raises(CofeError, match="go with --slurm"):
        slurm_options_of(False, False, partition="gpu", account=None, time=None, mem_per_site=None, cpus_per_site=1,
                         gpus_per_site=None, sbatch_args=())
    with pytest.raises(CofeError, match="do not go together"):
        slurm_options_of(True, True, partition=None, account=None, time=None, mem_per_site=None, cpus_per_site=1,
                         gpus_per_site=None, sbatch_args=())
    options = slurm_options_of(True, False, partition="p", account=None, time="01:00:00", mem_per_site="2G",
                               cpus_per_site=2, gpus_per_site=None, sbatch_args=())
    assert options == SlurmOptions(partition="p", time="01:00:00", mem_per_site="2G", cpus_per_site=2)


@pytest.mark.parametrize("info, code", [
    (JobInfo("1", "PENDING"), None),
    (JobInfo("1", "RUNNING"), None),
    (JobInfo("1", "COMPLETING"), None),
    (JobInfo("1", "COMPLETED", exit_code=0), 0),
    (JobInfo("1", "FAILED", exit_code=1), 1),
    (JobInfo("1", "FAILED", exit_code=0), 1),
    (JobInfo("1", "CANCELLED", exit_code=0, signal=15), -15),
    (JobInfo("1", "CANCELLED", exit_code=0, signal=0), -15),
    (JobInfo("1", "TIMEOUT", exit_code=0), 1),
    (JobInfo("1", "OUT_OF_MEMORY", exit_code=0, signal=9), 1),
    (JobInfo("1", "NODE_FAIL"), 1),
    (JobInfo("1", "UNKNOWN"), 1),
])
def test_returncodes(info, code):
    assert returncode_of(info) == code


def test_placement():
    hosts = {"n1": "host1.example.org", "n2": "host2"}
    assert placement("localhost", hosts) == (None, "loopback")
    assert placement("127.0.0.1", hosts) == (None, "loopback")
    assert placement("n2", hosts) == ("n2", "node")
    assert placement("host1.example.org", hosts) == ("n1", "node")
    assert placement("host2.example.org", hosts) == ("n2", "node")
    assert placement("login.example.org", hosts) == (None, "other")


def _fake_tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """A folder on PATH holding fake Slurm tools (and nothing else of Slurm's)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}/usr/bin{os.pathsep}/bin")
    for tool in ("sbatch", "squeue", "scontrol", "scancel", "sinfo"):
        _fake_tool(folder, tool, "exit 0")
    return folder


def test_no_slurm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CofeError, match="no Slurm here: `sbatch` is not on PATH") as error:
        slurm.check_cluster(SlurmOptions())
    assert error.value.exit_code == 2 and "login node" in error.value.hint


def test_controller_down_is_a_clear_error(fake_slurm, monkeypatch):
    _fake_tool(fake_slurm, "sinfo", "exec sleep 30")
    monkeypatch.setattr(slurm, "QUERY_TIMEOUT", 0.5)
    with pytest.raises(CofeError, match="controller did not answer `sinfo` within") as error:
        slurm.check_cluster(SlurmOptions())
    assert "slurmctld" in error.value.hint


def test_unknown_partition(fake_slurm):
    _fake_tool(fake_slurm, "sinfo", "printf 'debug*\\ngpu\\n'")
    assert slurm.check_cluster(SlurmOptions(partition="gpu")) == ["debug", "gpu"]
    with pytest.raises(CofeError, match=r"no partition 'big' \(it has: debug, gpu\)"):
        slurm.check_cluster(SlurmOptions(partition="big"))


def test_refused_submission_shows_slurms_reason(fake_slurm, tmp_path):
    _fake_tool(fake_slurm, "sbatch", "echo 'sbatch: error: Batch job submission failed: Requested node configuration "
                                     "is not available' >&2; exit 1")
    script = tmp_path / "site_a.sbatch"
    script.write_text("#!/bin/bash\n")
    with pytest.raises(CofeError, match="Slurm refused the job of site_a: Batch job submission failed: Requested node "
                                        "configuration is not available") as error:
        slurm.submit(script, test_only=True)
    assert "--mem-per-site" in error.value.hint


def test_job_states_from_squeue_and_scontrol(fake_slurm):
    _fake_tool(fake_slurm, "squeue", "printf '11|RUNNING|n1|None\\n12|PENDING||Resources\\n13|FAILED|n2|NonZeroExitCode\\n'")
    _fake_tool(fake_slurm, "scontrol", 'if [ "$4" = 13 ]; then echo "JobId=13 JobState=FAILED Reason=NonZeroExitCode '
                                       'ExitCode=3:0 NodeList=n2"; else exit 1; fi')
    infos = slurm.query_jobs(["11", "12", "13", "14"])
    assert infos["11"].state == "RUNNING" and infos["11"].node == "n1" and returncode_of(infos["11"]) is None
    assert infos["12"].reason == "Resources"
    assert infos["13"].exit_code == 3 and returncode_of(infos["13"]) == 3
    assert infos["14"].state == "UNKNOWN" and returncode_of(infos["14"]) == 1


def test_jobs_file_round_trip(layout):
    slurm.write_jobs(layout, {"aggregator": "7", "site_a": "8"})
    assert slurm.recorded_job_ids(layout) == {"aggregator": "7", "site_a": "8"}
    assert slurm.read_jobs(layout)["jobs"]["site_a"]["script"] == str(layout.root / "slurm" / "site_a.sbatch")


def test_polling_submits_nothing(fake_slurm, layout, monkeypatch):
    """The collaborators' jobs are submitted by start()'s thread once the aggregator runs, pinned to its node
    (a loopback address on a cluster of two hosts); states() only asks Slurm. It used to submit them itself."""
    from cofe_cli.federation import Manifest
    from cofe_cli.launch.slurm import SlurmFederation

    submitted = fake_slurm / "submitted"
    _fake_tool(fake_slurm, "sinfo", "echo 'debug*'")
    _fake_tool(fake_slurm, "scontrol", '[ "$3" = node ] && printf "NodeName=n1 NodeHostName=h1\\nNodeName=n2 NodeHostName=h2\\n"')
    _fake_tool(fake_slurm, "sbatch", f'[ "$2" = --test-only ] && exit 0\nn=$(($(cat {submitted} 2>/dev/null | wc -l) + 7))\n'
                                     f'echo "$n $(grep -o -- "--nodelist=[a-z0-9]*" "$2")" >> {submitted}\necho $n')
    _fake_tool(fake_slurm, "scancel", f'touch {fake_slurm / "cancelled"}')
    _fake_tool(fake_slurm, "squeue", f'if [ -e {fake_slurm / "cancelled"} ]; then s=CANCELLED; else s=RUNNING; fi\n'
                                     'for j in $(echo "$5" | tr , " "); do echo "$j|$s|n2|None"; done')
    manifest = Manifest(name="f", collaborators=("site_a", "site_b"), rounds=1, aggregator_address="localhost",
                        aggregator_port=50051, algorithm="fedavg", plan_sha384="0" * 96, versions={})
    launcher = SlurmFederation(layout, manifest)
    submitters = []
    real_submit = slurm.submit

    def submit(script, **kwargs):
        if not kwargs.get("test_only"):
            submitters.append((script.stem, threading.current_thread().name))
        return real_submit(script, **kwargs)

    monkeypatch.setattr(slurm, "submit", submit)
    launcher.check()
    launcher.start()
    try:
        for _ in range(100):
            launcher.states()
            if len(submitted.read_text().splitlines()) == 3:
                break
            time.sleep(0.1)
        assert submitted.read_text().splitlines() == ["7 ", "8 --nodelist=n2", "9 --nodelist=n2"]
        assert [who for who in submitters if who[0] != "aggregator"] == [("site_a", "slurm-collaborators"),
                                                                         ("site_b", "slurm-collaborators")]
        assert slurm.recorded_job_ids(layout) == {"aggregator": "7", "site_a": "8", "site_b": "9"}
    finally:
        launcher.stop()
