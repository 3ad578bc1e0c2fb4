"""What a tree of processes holds in memory, sampled over time: the summed PSS of the whole tree (each
shared page counted once, split among the processes that map it) and, per process, USS and RSS.

RSS counts torch's and GaNDLF's shared libraries again in every process, so summed RSS overstates what a
federation of many processes costs the machine; summed PSS is what it costs. psutil reads both from
/proc/PID/smaps_rollup (Linux).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psutil


@dataclass
class ProcessPeak:
    """The largest values one process reached (each at its own moment)."""

    pid: int
    label: str
    pss: int = 0
    uss: int = 0
    rss: int = 0


@dataclass
class TreeMemory:
    """Samples of a process tree: `total_pss` (time, summed PSS) per sample and the peaks per process."""

    total_pss: list[tuple[float, int]] = field(default_factory=list)
    processes: dict[int, ProcessPeak] = field(default_factory=dict)

    @property
    def peak_pss(self) -> int:
        return max((pss for _, pss in self.total_pss), default=0)

    def add_sample(self, when: float, processes: list[psutil.Process], label=lambda proc: proc.name()) -> None:
        total = 0
        for proc in processes:
            try:
                info = proc.memory_full_info()
                peak = self.processes.get(proc.pid)
                if peak is None:
                    peak = self.processes[proc.pid] = ProcessPeak(proc.pid, label(proc))
            except psutil.Error:  # ended between listing and reading
                continue
            total += info.pss
            peak.pss, peak.uss, peak.rss = max(peak.pss, info.pss), max(peak.uss, info.uss), max(peak.rss, info.rss)
        self.total_pss.append((when, total))


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


class TreeMemorySampler(threading.Thread):
    """Samples the tree under `pid` every `interval` seconds until stop(); `label(proc)` names a process."""

    def __init__(self, pid: int, interval: float = 1.0, label=lambda proc: " ".join(proc.cmdline()[-3:])):
        super().__init__(daemon=True)
        self.pid, self.interval, self.label = pid, interval, label
        self.memory = TreeMemory()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            self.memory.add_sample(time.monotonic(), process_tree(self.pid), self.label)
            if self._stop_event.wait(self.interval):
                return

    def stop(self) -> TreeMemory:
        self._stop_event.set()
        self.join()
        return self.memory
