"""Across hosts: the aggregator and two collaborators each in a network namespace of its own, with an
address of its own, each from its own directory made through the kit/request/sign/install path,
with `cofe doctor` before round 0 at every site.

    root namespace:  bridge cofebr<tag> (no address), one iptables FORWARD ACCEPT rule for it
    cofe<tag>-aggregator  eth0 10.231.7.1/24   cofe start aggregator --dir AGGREGATOR_HOST
    cofe<tag>-site_a      eth0 10.231.7.2/24   cofe start collaborator site_a --dir SITE_A_HOST
    cofe<tag>-site_b      eth0 10.231.7.3/24   cofe start collaborator site_b --dir SITE_B_HOST

Needs root and `ip netns`; skipped without them, except under CI=true, where it fails instead.
Everything it creates is removed by the fixture's finaliser, also when the test fails.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from cofe_cli.federation import federation_fingerprint
from federation_helpers import SITES, cofe

pytestmark = [pytest.mark.federation, pytest.mark.timeout(1800)]

SUBNET = "10.231.7"  # a private /24; only the addresses below are ever assigned
ADDRESSES = {"aggregator": f"{SUBNET}.1", "site_a": f"{SUBNET}.2", "site_b": f"{SUBNET}.3"}
AGGREGATOR_IP = ADDRESSES["aggregator"]
PORT = 50051  # every namespace has ports of its own: no clash with anything on the host
FEDERATION_TIMEOUT = 900
COMMAND_TIMEOUT = 300
PRIVATE_KEY = b"PRIVATE KEY"
GROUPED_SHA256 = re.compile(r"\b((?:[0-9A-F]{4} ){15}[0-9A-F]{4})\b")
GROUPED_SHA384 = re.compile(r"\b((?:[0-9A-F]{4} ){23}[0-9A-F]{4})\b")
FINGERPRINT = re.compile(r"\b((?:[0-9A-F]{2}:){31}[0-9A-F]{2})\b")


def _sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root: it makes network namespaces, veth pairs, a bridge and an iptables rule"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"cofe-probe-{os.getpid()}"
    made = _sh("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip()}"
    _sh("ip", "netns", "del", probe, check=False)
    return None


class Hosts:
    """Three namespaces on one bridge: one "host" per participant."""

    def __init__(self):
        tag = str(os.getpid() % 100000)
        self.bridge = f"cofebr{tag}"
        self.namespaces = {name: f"cofe{tag}-{name}" for name in ADDRESSES}
        self.veths = {name: f"cv{tag}n{i}" for i, name in enumerate(ADDRESSES)}
        self.rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-m", "comment", "--comment",
                     f"cofe-multihost-test-{tag}", "-j", "ACCEPT"]
        self.iptables = shutil.which("iptables")
        self.rule_added = False
        self.processes: list[subprocess.Popen] = []

    def set_up(self) -> None:
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        _sh("ip", "link", "set", self.bridge, "up")
        for name, namespace in self.namespaces.items():
            _sh("ip", "netns", "add", namespace)
            _sh("ip", "link", "add", self.veths[name], "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _sh("ip", "link", "set", self.veths[name], "master", self.bridge, "up")
            _sh("ip", "-n", namespace, "addr", "add", f"{ADDRESSES[name]}/24", "dev", "eth0")
            _sh("ip", "-n", namespace, "link", "set", "eth0", "up")
            _sh("ip", "-n", namespace, "link", "set", "lo", "up")
        if self.iptables:  # once dockerd ran, FORWARD's policy is DROP, and bridged frames pass through it
            _sh(self.iptables, "-I", *self.rule[:1], "1", *self.rule[1:])
            self.rule_added = True

    def check_connectivity(self) -> None:
        """Each collaborator's namespace reaches the aggregator's address (a listener there for a moment)."""
        script = ("import socket; s = socket.create_server(('', %d)); s.settimeout(30); print('ready', flush=True)\n"
                  "for _ in range(%d): s.accept()[0].close()" % (PORT + 1, len(SITES)))
        listener = subprocess.Popen(["ip", "netns", "exec", self.namespaces["aggregator"], sys.executable, "-c", script],
                                    stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.processes.append(listener)
        assert listener.stdout.readline().strip() == b"ready"
        unreachable = [site for site in SITES if not self.can_connect(site, AGGREGATOR_IP, PORT + 1)]
        if unreachable:
            raise RuntimeError(f"{', '.join(unreachable)} cannot reach {AGGREGATOR_IP} over the bridge {self.bridge}: "
                               f"bridged traffic is dropped (iptables FORWARD: {self.iptables or 'no iptables'})")
        listener.wait(timeout=30)

    def tear_down(self) -> list[str]:
        """Remove everything set_up made (whatever part of it exists); returns what could not be removed."""
        problems = []
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        for namespace in self.namespaces.values():  # what those processes left behind, in our namespaces only
            found = _sh("ip", "netns", "pids", namespace, check=False)
            for pid in found.stdout.split():
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
        steps = [("ip", "netns", "del", namespace) for namespace in self.namespaces.values()]
        steps += [("ip", "link", "del", veth) for veth in self.veths.values()]
        steps += [("ip", "link", "del", self.bridge)]
        if self.rule_added:
            steps += [(self.iptables, "-D", *self.rule)]
        for step in steps:
            result = _sh(*step, check=False)
            gone = "Cannot find device" in result.stderr or "No such file" in result.stderr
            if result.returncode != 0 and not gone and step[1] != "link":  # veths die with their namespace
                problems.append(f"{' '.join(step)}: {result.stderr.strip()}")
        leftovers = [n for n in self.namespaces.values() if n in _sh("ip", "netns", "list", check=False).stdout]
        if _sh("ip", "link", "show", self.bridge, check=False).returncode == 0:
            leftovers.append(self.bridge)
        return problems + [f"left behind: {name}" for name in leftovers]

    def command(self, participant: str, *args) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[participant], sys.executable, "-m", "cofe_cli", *map(str, args)]

    def cofe(self, participant: str, *args, timeout: float = COMMAND_TIMEOUT, check: bool = True,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "250"}
        result = subprocess.run(self.command(participant, *args), capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        if check:
            assert result.returncode == 0, f"{participant}: cofe {' '.join(map(str, args))} failed:\n" \
                                           f"{result.stdout}\n{result.stderr}"
        return result

    def start(self, participant: str, *args, log: Path) -> subprocess.Popen:
        with open(log, "wb") as handle:
            proc = subprocess.Popen(self.command(participant, *args), stdout=handle, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.processes.append(proc)
        return proc

    def can_connect(self, participant: str, host: str, port: int) -> bool:
        probe = (f"import socket; socket.create_connection(({host!r}, {port}), timeout=2).close()")
        command = ["ip", "netns", "exec", self.namespaces[participant], sys.executable, "-c", probe]
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0


@pytest.fixture
def hosts():
    reason = _unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the across-hosts test, but: {reason}")
        pytest.skip(f"no network namespaces: {reason}")
    made = Hosts()
    try:
        made.set_up()
        made.check_connectivity()
        yield made
    finally:
        problems = made.tear_down()
        assert not problems, f"clean-up of the test's network failed: {problems}"


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {info.name: tar.extractfile(info).read() for info in tar if info.isreg()}


def _private_keys(root: Path) -> list[Path]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and PRIVATE_KEY in path.read_bytes():
            found.append(path)
    return found


def _grouped(pattern: re.Pattern, text: str) -> str:
    match = pattern.search(text)
    assert match, f"no {pattern.pattern} in:\n{text}"
    return match.group(1)


def test_three_hosts_each_with_its_own_directory_and_key(tmp_path, site_data, fast_config, hosts):
    timings = {}
    started = time.monotonic()
    fed, mail = tmp_path / "coordinator", tmp_path / "mail"
    mail.mkdir()
    sites = {name: tmp_path / f"{name}-host" for name in ADDRESSES}
    assert set(SITES) == set(sites) - {"aggregator"}

    # The coordinator: a plan that names the sites only, a CA, and one kit per participant.
    cofe("init", "--dir", fed, "--gandlf-config", fast_config, "--aggregator-address", AGGREGATOR_IP,
         "--port", PORT, "--collaborator", "site_a", "--collaborator", "site_b", "--rounds", 2, check=True)
    recorded = yaml.safe_load((fed / "plans" / "federation.yaml").read_text())
    assert recorded["init_model_sha384"] == hashlib.sha384((fed / "plans" / "init.pbuf").read_bytes()).hexdigest()
    identity = federation_fingerprint(recorded["plan_sha384"], recorded["init_model_sha384"])
    fingerprint = _grouped(FINGERPRINT, cofe("certify", "ca", "--dir", fed, check=True).stdout)
    for name in sites:
        role = ["aggregator"] if name == "aggregator" else ["collaborator", name]
        cofe("export", *role, "--dir", fed, "-o", mail / f"{name}-kit.tar.gz", check=True)
    timings["coordinator"] = time.monotonic() - started

    # Each site, on its own host: import, request (the key is made there), coordinator signs, site installs.
    for name, site in sites.items():
        data = [] if name == "aggregator" else ["--data", site_data[name]]
        imported = hosts.cofe(name, "import", mail / f"{name}-kit.tar.gz", "--dir", site, *data)
        read_back = _grouped(GROUPED_SHA384, imported.stdout).replace(" ", "").lower()
        assert read_back == identity, "the federation fingerprint the site reads back is not the coordinator's"
        requested = hosts.cofe(name, "certify", "request", "--dir", site, "-o", mail / f"{name}.csr.tar.gz")
        request_hash = _grouped(GROUPED_SHA256, requested.stdout)
        cofe("certify", "sign", mail / f"{name}.csr.tar.gz", "--dir", fed, "--expect-hash", request_hash,
             "-o", mail / f"{name}-signed.tar.gz", check=True)
        hosts.cofe(name, "certify", "install", mail / f"{name}-signed.tar.gz", "--dir", site,
                   "--expect-root-fingerprint", fingerprint)
    timings["kits, requests, signatures"] = time.monotonic() - started - sum(timings.values())

    # Before the aggregator runs, the doctor at a site says so (and exits 1: a failed check, not bad input).
    early = hosts.cofe("site_a", "doctor", "--dir", sites["site_a"], "--timeout", 3, check=False)
    assert early.returncode == 1, early.stdout + early.stderr
    assert re.search(r"^FAIL port .*refused.* fix: ", early.stdout, re.M), early.stdout
    assert re.search(r"^PASS certificate ", early.stdout, re.M), early.stdout

    logs = {name: tmp_path / f"{name}.out" for name in sites}

    def tails() -> str:
        return "\n".join(f"--- {name}\n{log.read_text(errors='replace')[-3000:]}" for name, log in logs.items()
                         if log.exists())

    mark = time.monotonic()
    aggregator = hosts.start("aggregator", "start", "aggregator", "--dir", sites["aggregator"], log=logs["aggregator"])
    deadline = time.monotonic() + 300
    while not hosts.can_connect("site_a", AGGREGATOR_IP, PORT):
        assert aggregator.poll() is None, f"the aggregator stopped before it listened:\n{tails()}"
        assert time.monotonic() < deadline, f"the aggregator did not listen within 300 s:\n{tails()}"
        time.sleep(1)
    timings["aggregator listening"] = time.monotonic() - mark

    # The doctor at each collaborator, from its own namespace: everything passes, the gRPC Ping included.
    mark = time.monotonic()
    for name in SITES:
        checked = hosts.cofe(name, "doctor", "--dir", sites[name], check=False)
        assert checked.returncode == 0, f"doctor at {name}:\n{checked.stdout}\n{checked.stderr}"
        passed = re.findall(r"^PASS (\w+)", checked.stdout, re.M)
        assert passed == ["plan", "address", "port", "tls", "aggregator", "certificate", "keys", "clock", "data",
                          "environment"], checked.stdout
        assert "Traceback" not in checked.stdout + checked.stderr
    timings["doctor at both sites"] = time.monotonic() - mark

    mark = time.monotonic()
    collaborators = [hosts.start(name, "start", "collaborator", name, "--dir", sites[name], log=logs[name])
                     for name in SITES]
    deadline = time.monotonic() + FEDERATION_TIMEOUT
    for proc in [aggregator, *collaborators]:
        try:
            proc.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the federation did not finish within {FEDERATION_TIMEOUT} s:\n{tails()}")
    timings["federation (2 rounds)"] = time.monotonic() - mark
    assert aggregator.returncode == 0, tails()
    assert [proc.returncode for proc in collaborators] == [0, 0], tails()
    assert (sites["aggregator"] / "workspaces" / "aggregator" / "save" / "last.pt").is_file()

    # Keys never left their site: each site holds exactly one private key, its own; the coordinator only the CA's.
    own_key = {"aggregator": f"workspaces/aggregator/cert/server/agg_{AGGREGATOR_IP}.key",
               "site_a": "workspaces/site_a/cert/client/col_site_a.key",
               "site_b": "workspaces/site_b/cert/client/col_site_b.key"}
    for name, site in sites.items():
        assert [path.relative_to(site).as_posix() for path in _private_keys(site)] == [own_key[name]], name
        assert sorted(p.name for p in (site / "workspaces").iterdir()) == [name]
        assert not (site / "ca").exists()
    assert sorted(path.relative_to(fed).as_posix() for path in _private_keys(fed)) == \
        ["ca/private/root-ca.key", "ca/private/signing-ca.key"]
    archives = sorted(tmp_path.rglob("*.tar.gz"))
    assert len(archives) == 9, archives  # 3 kits, 3 requests, 3 signed certificates
    for archive in archives:
        assert not [member for member, data in _members(archive).items() if PRIVATE_KEY in data], archive
    print(f"\nacross hosts: {', '.join(f'{step} {seconds:.0f} s' for step, seconds in timings.items())}, "
          f"total {time.monotonic() - started:.0f} s")
