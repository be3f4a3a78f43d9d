"""A federation across hosts: coordinator and sites in separate network namespaces.

Each party runs in its own Linux network namespace, joined by veth pairs to a bridge in a
fourth (hub) namespace, with addresses from one 10.200.N.0/24 used only inside these
namespaces (nothing is added to the host's own network). The coordinator's certificate is
issued for its real address (an IP SAN), the sites dial that address over mutual TLS.

Shown: one round completes; the standard gRPC health service and the Prometheus endpoint
answer across the network; a site whose link is cut mid-round misses nothing once the
link is back: it reconnects and submits, and the round pools with both sites. To cut the
link at a known point of the round, mtf-bravo's policy requires an operator's approval
of new specs: the test waits until bravo has received round 2 over its live connection
(the spec is pending), takes bravo's bridge port down, approves the spec (bravo now wants
to submit but cannot reach the coordinator), and brings the port back.

Needs root and a kernel that allows network namespaces; skips with the reason otherwise.
Everything is bounded in time and the namespaces are deleted even when the test fails.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
SITES = REPO / "tests" / "data" / "sites_public"
SPEC2_EXTRA = """
[[analysis]]
name = "brier"
estimator = "brier"
outcome = "outcome"
score = "risk_score"
"""
SPEC = """
[[analysis]]
name = "crude_OR"
estimator = "two_by_two"
outcome = "outcome"
exposure = "treated"
measure = "OR"

[[analysis]]
name = "auc"
estimator = "auc"
outcome = "outcome"
score = "risk_score"
scale = "logit"
"""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                          check=check)


def netns_unavailable() -> str | None:
    """The reason network namespaces cannot be used here, or None."""
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"fsprobe{os.getpid()}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"the kernel refused a network namespace: {made.stderr.strip()}"
    try:
        veth = ip("-n", probe, "link", "add", "pa", "type", "veth", "peer", "name", "pb",
                  check=False)
        if veth.returncode != 0:
            return f"the kernel refused a veth pair: {veth.stderr.strip()}"
    finally:
        ip("netns", "del", probe, check=False)
    return None


class Network:
    """Namespaces ``hub``, ``coord``, ``alpha``, ``bravo`` on a private /24."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000}{random.randrange(100):02d}"
        self.subnet = random.randrange(1, 255)
        self.ns = {role: f"fs{tag}{role[0]}" for role in ("hub", "coord", "alpha", "bravo")}
        self.addr = {"coord": f"10.200.{self.subnet}.1", "alpha": f"10.200.{self.subnet}.11",
                     "bravo": f"10.200.{self.subnet}.12"}
        self.port_of: dict[str, str] = {}

    def up(self) -> None:
        hub = self.ns["hub"]
        for name in self.ns.values():
            ip("netns", "add", name)
        ip("-n", hub, "link", "add", "br0", "type", "bridge")
        ip("-n", hub, "link", "set", "br0", "up")
        for role in ("coord", "alpha", "bravo"):
            ns, port = self.ns[role], f"h{role[0]}"
            self.port_of[role] = port
            # both ends are created directly inside their namespaces: the host's own
            # network namespace is never touched
            ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port,
               "netns", hub)
            ip("-n", ns, "addr", "add", f"{self.addr[role]}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", hub, "link", "set", port, "master", "br0")
            ip("-n", hub, "link", "set", port, "up")

    def cut(self, role: str) -> None:
        ip("-n", self.ns["hub"], "link", "set", self.port_of[role], "down")

    def restore(self, role: str) -> None:
        ip("-n", self.ns["hub"], "link", "set", self.port_of[role], "up")

    def down(self) -> None:
        for name in self.ns.values():
            ip("netns", "del", name, check=False)

    def exec(self, role: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[role], *argv]


@pytest.fixture
def network():
    reason = netns_unavailable()
    if reason:
        pytest.skip(f"multi-host test needs network namespaces: {reason}")
    net = Network()
    try:
        net.up()
        yield net
    finally:
        net.down()


class Parties:
    """Processes started in the namespaces; all stopped at the end."""

    def __init__(self, root: Path, net: Network) -> None:
        self.root, self.net = root, net
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, label: str, role: str, *args: str) -> subprocess.Popen:
        log = open(self.root / f"{label}.log", "ab")
        proc = subprocess.Popen(self.net.exec(role, sys.executable, "-m", "fedsynth", *args),
                                stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                env=dict(os.environ, PYTHONUNBUFFERED="1",
                                         PYTHONPATH=str(REPO)))
        log.close()
        self.procs[label] = proc
        return proc

    def log(self, label: str) -> str:
        path = self.root / f"{label}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {label}\n{self.log(label)[-2500:]}" for label in self.procs)

    def cli(self, *args: str, role: str | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "fedsynth", *args]
        return subprocess.run(self.net.exec(role, *argv) if role else argv, cwd=self.root,
                              capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


def wait_for(predicate, timeout: float, what: str, parties: Parties) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n"
                         f"{parties.logs()}")


def test_round_across_namespaces_survives_a_cut_link(network: Network, tmp_path: Path
                                                     ) -> None:
    from fedsynth.pki import init_ca, issue_coordinator, issue_site

    pki = tmp_path / "pki"
    init_ca(pki)
    issue_coordinator(pki, network.addr["coord"])       # certificate for its real address
    for name in ("mtf-alpha", "mtf-bravo", "probe"):
        issue_site(pki, name)
    (tmp_path / "spec.toml").write_text(SPEC)
    (tmp_path / "spec2.toml").write_text(SPEC + SPEC2_EXTRA)   # new spec: new approval
    (tmp_path / "bravo-policy.toml").write_text("require_approval = true\n"
                                                'approvals = "bravo-approvals"\n')
    coord_ip = network.addr["coord"]
    (tmp_path / "coordinator.toml").write_text(
        f'listen = "{coord_ip}:0"\nstate = "state.db"\nreport_dir = "reports"\n'
        f'addr_file = "coordinator.addr"\nmetrics_listen = "{coord_ip}:0"\n'
        f'[tls]\nca = "pki/ca.crt"\ncert = "pki/coordinator.crt"\n'
        f'key = "pki/coordinator.key"\n[sites]\nallow = ["mtf-alpha", "mtf-bravo"]\n')
    parties = Parties(tmp_path, network)
    try:
        parties.spawn("coordinator", "coord", "coordinator", "serve",
                      "--config", "coordinator.toml")
        addr_file = tmp_path / "coordinator.addr"
        wait_for(addr_file.exists, 60, "the coordinator to listen", parties)
        address = addr_file.read_text().strip()
        assert address.startswith(coord_ip + ":")
        for role in ("alpha", "bravo"):
            name = f"mtf-{role}"
            (tmp_path / f"{name}.toml").write_text(
                f'name = "{name}"\ncoordinator = "{address}"\n'
                f'state_file = "{name}.state.json"\npoll_interval = "0.5s"\n'
                f'heartbeat_interval = "1s"\nmax_backoff = "2s"\n'
                + ('policy = "bravo-policy.toml"\n' if role == "bravo" else "") +
                f'[tls]\nca = "pki/ca.crt"\ncert = "pki/{name}.crt"\nkey = "pki/{name}.key"\n'
                f'[data]\npath = "{SITES / (name + ".csv")}"\n')
            parties.spawn(name, role, "site", "run", "--config", f"{name}.toml")

        def show(round_id: str) -> dict:
            out = parties.cli("round", "show", round_id, "--config", "coordinator.toml",
                              "--format", "json")
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)

        def submitted(round_id: str) -> set[str]:
            return {s["site"] for s in show(round_id)["sites"] if s["status"] == "submitted"}

        def start_round(deadline: str, spec: str = "spec.toml") -> str:
            out = parties.cli("round", "start", "--config", "coordinator.toml", "--spec",
                              spec, "--deadline", deadline, "--quorum", "2")
            assert out.returncode == 0, out.stderr + parties.logs()
            return out.stdout.strip().splitlines()[-1]

        def pending_at_bravo() -> set[str]:
            out = parties.cli("site", "pending", "--config", "mtf-bravo.toml",
                              "--format", "json")
            assert out.returncode == 0, out.stderr
            return {p["round"] for p in json.loads(out.stdout)}

        def approve_at_bravo(round_id: str) -> None:
            out = parties.cli("site", "approve", round_id, "--config", "mtf-bravo.toml")
            assert out.returncode == 0, out.stderr

        # --- one round across hosts -----------------------------------------------------
        first = start_round("90s")
        wait_for(lambda: first in pending_at_bravo(), 90, "round 1 at mtf-bravo", parties)
        approve_at_bravo(first)
        wait_for(lambda: show(first)["status"] != "open", 120, "round 1 to close", parties)
        doc = show(first)
        assert doc["status"] == "pooled", doc
        assert submitted(first) == {"mtf-alpha", "mtf-bravo"}
        assert {a["analysis"]: a["k"] for a in doc["analyses"]} == {"crude_OR": 2, "auc": 2}

        # --- health and metrics across the network --------------------------------------
        for cert in ("mtf-alpha", "probe"):       # a probe certificate not on the allow-list
            health = parties.cli("health", "--target", address, "--ca", "pki/ca.crt",
                                 "--cert", f"pki/{cert}.crt", "--key", f"pki/{cert}.key",
                                 role="alpha", timeout=60)
            assert health.returncode == 0 and "SERVING" in health.stdout, \
                health.stdout + health.stderr
        match = re.search(r"metrics on (http://\S+)", parties.log("coordinator"))
        assert match, parties.log("coordinator")
        fetch = subprocess.run(network.exec("alpha", sys.executable, "-c",
                                            "import sys, urllib.request; sys.stdout.write("
                                            "urllib.request.urlopen(sys.argv[1], timeout=10)"
                                            ".read().decode())", match.group(1)),
                               capture_output=True, text=True, timeout=60)
        assert fetch.returncode == 0, fetch.stderr
        assert 'fedsynth_rounds_closed_total{status="pooled"} 1.0' in fetch.stdout
        assert 'fedsynth_submissions_total{site="mtf-bravo"} 1.0' in fetch.stdout

        # --- a site cut off mid-round recovers by reconnecting ---------------------------
        second = start_round("150s", "spec2.toml")
        wait_for(lambda: "mtf-alpha" in submitted(second), 90,
                 "mtf-alpha to submit round 2", parties)
        wait_for(lambda: second in pending_at_bravo(), 90,
                 "mtf-bravo to receive round 2 over its live connection", parties)
        network.cut("bravo")                       # mid-round, bravo connected
        approve_at_bravo(second)                   # bravo now wants to submit ...
        time.sleep(4)                              # ... against a dead link
        assert "mtf-bravo" not in submitted(second)
        assert show(second)["status"] == "open"
        network.restore("bravo")
        wait_for(lambda: show(second)["status"] != "open", 150,
                 "round 2 to close after the link is restored", parties)
        doc = show(second)
        assert doc["status"] == "pooled", doc
        assert submitted(second) == {"mtf-alpha", "mtf-bravo"}
        assert {a["analysis"]: a["k"] for a in doc["analyses"]} == \
            {"crude_OR": 2, "auc": 2, "brier": 2}
        assert parties.procs["mtf-bravo"].poll() is None, "the site agent kept running"
    finally:
        parties.stop()
