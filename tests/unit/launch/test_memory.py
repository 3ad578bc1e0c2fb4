"""The memory sampler of a process tree (benchmarks/fets_scale.py): summed PSS of the whole tree, and per
process its peak PSS, USS and RSS, on real processes."""

from __future__ import annotations

import subprocess
import sys
import time

from cofe_cli.launch.memory import TreeMemorySampler

MIB = 2**20
# A parent that starts a child holding 64 MiB of its own (written, so resident and private), then both wait.
HOLDER = "import sys, time; block = bytearray(64 * 2**20); block[::4096] = b'x' * len(block[::4096]); time.sleep(30)"
PARENT = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {HOLDER!r}]); time.sleep(30)"


def test_the_tree_is_summed_once_and_each_process_has_its_peaks():
    parent = subprocess.Popen([sys.executable, "-c", PARENT])
    try:
        sampler = TreeMemorySampler(parent.pid, interval=0.1, label=lambda proc: "parent" if proc.pid == parent.pid else "holder")
        sampler.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(p.label == "holder" and p.uss > 64 * MIB for p in sampler.memory.processes.values()):
            time.sleep(0.1)
        memory = sampler.stop()
    finally:
        parent.kill()
        parent.wait()
    peaks = {p.label: p for p in memory.processes.values()}
    assert set(peaks) == {"parent", "holder"}
    holder = peaks["holder"]
    assert 64 * MIB < holder.uss <= holder.pss <= holder.rss
    # Python's shared libraries are mapped by both: counted in each RSS, but once in the summed PSS.
    assert memory.peak_pss < peaks["parent"].rss + holder.rss
    assert holder.pss <= memory.peak_pss <= sum(p.pss for p in peaks.values())
    assert len(memory.total_pss) > 1
