"""node.transport.host over real libp2p hosts on 127.0.0.1 (TCP, Noise, yamux)."""

from __future__ import annotations

import socket

import multiaddr
import pytest
import trio
from libp2p import generate_new_ed25519_identity, new_host
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

from node.transport.framing import HEADER_BYTES
from node.transport.host import LibP2PTransport, protocol_id

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def make(**kw) -> LibP2PTransport:
    return LibP2PTransport(generate_new_ed25519_identity(), LOOPBACK, ["consensus"], **kw)


async def started(nursery, *transports):
    for t in transports:
        await nursery.start(t.run)


async def collect(t: LibP2PTransport, n: int) -> list:
    return [await t.inbound.receive() for _ in range(n)]


async def test_messages_flow_both_ways_with_authenticated_sender():
    a, b = make(), make()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await started(nursery, a, b)
            assert await a.dial(b.listen_addrs()[0]) == b.peer_id
            for i in range(50):
                assert a.send(b.peer_id, "consensus", b"ping %d" % i)
            got = await collect(b, 50)
            assert [m.payload for m in got] == [b"ping %d" % i for i in range(50)]
            assert {m.peer_id for m in got} == {a.peer_id} and got[0].channel == "consensus"
            b.add_peer_addrs(a.peer_id, [a.listen_addrs()[0].split("/p2p/")[0]])
            b.send(a.peer_id, "consensus", b"pong")
            assert (await a.inbound.receive()).payload == b"pong"
            assert a.connected_peers() == [b.peer_id]
            nursery.cancel_scope.cancel()


async def test_oversized_frame_resets_stream_and_is_charged_to_the_peer():
    a, b = make(), make(max_frame_bytes=1024)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await started(nursery, a, b)
            await a.dial(b.listen_addrs()[0])
            raw = await a.host.new_stream(b.host.get_id(), [protocol_id("consensus")])
            await raw.write((10_000).to_bytes(HEADER_BYTES, "big") + b"x" * 100)
            with pytest.raises(Exception):  # noqa: B017 - the receiver resets the stream
                for _ in range(100):
                    await raw.write(b"y" * 1000)
                    await raw.read(1)
            assert b.dropped[(a.peer_id, "oversized")] == 1
            # The sender's well-formed traffic still gets through on a fresh stream.
            a.send(b.peer_id, "consensus", b"ok")
            assert (await b.inbound.receive()).payload == b"ok"
            nursery.cancel_scope.cancel()


async def test_rate_limit_drops_excess_frames():
    a, b = make(), make(rate_per_s=0.001, burst=5)
    all_dropped = trio.Event()

    def on_drop(peer_id, reason):
        if b.dropped[(a.peer_id, "rate_limited")] == 15:
            all_dropped.set()

    b.on_drop = on_drop
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await started(nursery, a, b)
            await a.dial(b.listen_addrs()[0])
            for i in range(20):
                a.send(b.peer_id, "consensus", b"%d" % i)
            got = await collect(b, 5)
            assert [m.payload for m in got] == [b"%d" % i for i in range(5)]
            await all_dropped.wait()
            assert b.inbound.statistics().current_buffer_used == 0
            nursery.cancel_scope.cancel()


async def test_plaintext_dialer_is_refused():
    b = make()
    kp = generate_new_ed25519_identity()
    plain = new_host(key_pair=kp, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(kp)})
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await started(nursery, b)
            async with plain.run(listen_addrs=[multiaddr.Multiaddr(LOOPBACK[0])]):
                target = info_from_p2p_addr(multiaddr.Multiaddr(b.listen_addrs()[0]))
                with pytest.raises(Exception):  # noqa: B017 - libp2p's dial error
                    await plain.connect(target)
                assert b.received[plain.get_id().to_base58()] == 0
                await plain.close()
            nursery.cancel_scope.cancel()


async def test_leaving_run_closes_the_listener():
    a = make()
    async with trio.open_nursery() as nursery:
        await started(nursery, a)
        port = int(a.listen_addrs()[0].split("/tcp/")[1].split("/")[0])
        nursery.cancel_scope.cancel()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_send_refuses_local_bugs():
    a = make(max_frame_bytes=10)
    with pytest.raises(ValueError, match="over 10"):
        a.send("12D3KooWx", "consensus", b"x" * 11)
    with pytest.raises(RuntimeError, match="not running"):
        a.send("12D3KooWx", "consensus", b"x")
