"""A real partition: one network namespace per node, veth pairs into a hub namespace's
bridge; setting a node's link down partitions it. The test creates and removes every
namespace itself and skips (with the reason) only where it lacks the privilege.

Addresses 10.199.0.k/24 exist only inside these namespaces; nothing leaves the machine.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid

import pytest
from tests_support_netns import netns_unavailable

from node.control import call

pytestmark = pytest.mark.slow

SUBNET = "10.199.0"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


class Lan:
    """A hub namespace with a bridge and one namespace per node, each joined by veth."""

    def __init__(self, n: int) -> None:
        tag = uuid.uuid4().hex[:5]
        self.hub = f"mnhub-{tag}"
        self.nodes = [f"mn{k}-{tag}" for k in range(1, n + 1)]
        self.ports = [f"mb{k}{tag}" for k in range(1, n + 1)]  # bridge-side veth names
        sh("ip", "netns", "add", self.hub)
        sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")
        for k, (ns, port) in enumerate(zip(self.nodes, self.ports, strict=True), start=1):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "link", "add", port, "netns", self.hub, "type", "veth",
               "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{k}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", self.hub, "link", "set", port, "master", "br0")
            sh("ip", "-n", self.hub, "link", "set", port, "up")

    def set_link(self, k: int, up: bool) -> None:
        sh("ip", "-n", self.hub, "link", "set", self.ports[k - 1], "up" if up else "down")

    def close(self) -> None:
        for ns in [*self.nodes, self.hub]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def lan():
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    net = Lan(4)
    yield net
    net.close()


def test_partitioned_minority_commits_nothing_and_all_converge_after_heal(lan, tmp_path):
    root = tmp_path / "tn"
    subprocess.run([sys.executable, "-m", "node.cli", "testnet", "--nodes", "4", "--out",
                    str(root), "--ip", f"{SUBNET}.{{k}}", "--base-port", "4601"],
                   check=True, capture_output=True, timeout=120)
    procs = []
    try:
        for k, ns in enumerate(lan.nodes, start=1):
            log = open(root / f"node{k}.log", "wb")  # noqa: SIM115
            p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "node.cli",
                                  "start", "--home", str(root / f"node{k}")],
                                 stdout=subprocess.PIPE, stderr=log, text=True)
            procs.append(p)
            assert any(line.startswith("listen") for line in p.stdout), f"node{k} died"

        def ctl(k, method, params=None):
            return call(root / f"node{k}" / "control.sock", method, params, timeout_s=90)

        def wait(k, **cond):
            return ctl(k, "wait", {**cond, "timeout_ms": 60_000})

        for k in range(1, 5):
            wait(k, peers=3)
        for i in range(5):
            ctl(1 + i % 4, "propose", {"op": b"before-%d" % i})
        before = wait(4, last_decided=ctl(1, "status")["last_decided"])["last_decided"]

        lan.set_link(4, up=False)  # node 4 alone on its side
        seqs = [ctl(1 + i % 3, "propose", {"op": b"majority-%d" % i})["seq"] for i in range(10)]
        assert max(seqs) > before  # the majority keeps committing
        minority = ctl(4, "status")
        assert minority["last_decided"] == before  # cut off: it decided nothing new
        # Whatever the minority decided is a prefix of the majority's log.
        m_log, big_log = ctl(4, "audit")["entries"], ctl(1, "audit")["entries"]
        assert [e[2] for e in m_log] == [e[2] for e in big_log[: len(m_log)]]

        lan.set_link(4, up=True)
        last = ctl(2, "propose", {"op": b"after-heal"})["seq"]
        digests = {wait(k, last_decided=last, peers=3)["state_digest"] for k in range(1, 5)}
        assert len(digests) == 1
        # Same decided value at every sequence number each node holds (a node that
        # caught up by state transfer holds no entries for the range it skipped).
        logs = [{e[0]: e[2] for e in ctl(k, "audit")["entries"]} for k in range(1, 5)]
        assert all(last in log for log in logs[:3])  # the majority executed every batch
        for log in logs[1:]:
            assert all(logs[0][seq] == digest for seq, digest in log.items() if seq in logs[0])
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
