"""mDNS discovery between two nodes in one private network namespace.

The namespace has its own loopback and a veth pair (both ends inside it), so multicast
never reaches a real network. The two transports run in a child process inside the
namespace; each advertises itself with py-libp2p's zeroconf service and our MdnsDialer
dials what it finds. Skips (with the reason) only without the privilege to create
namespaces.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest
from tests_support_netns import netns_unavailable

pytestmark = pytest.mark.slow

CHILD = textwrap.dedent("""
    import trio
    from libp2p import generate_new_ed25519_identity
    from node.discovery import MdnsDialer
    from node.transport.host import LibP2PTransport

    async def main():
        found = trio.Event()
        a, b = (LibP2PTransport(generate_new_ed25519_identity(), ["/ip4/0.0.0.0/tcp/0"],
                                ["consensus"], mdns=True) for _ in range(2))
        dialers = [MdnsDialer(t, on_found=lambda p, addrs: found.set()) for t in (a, b)]
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for d in dialers:
                    await nursery.start(d.run)
                for t in (a, b):
                    await nursery.start(t.run)
                await found.wait()
                print("A", a.peer_id, "B", b.peer_id)
                print("A_SEES", " ".join(a.connected_peers()))
                print("B_SEES", " ".join(b.connected_peers()))
                nursery.cancel_scope.cancel()

    trio.run(main)
""")


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


def test_two_nodes_find_and_dial_each_other_over_mdns():
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    ns = f"mnmdns-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        for dev, ip in (("v0", "10.201.0.1/24"), ("v1", "10.201.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", ip, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CHILD],
                              capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    a, b = lines["A"].split(" B ")
    assert b in lines["A_SEES"].split() and a in lines["B_SEES"].split()
