"""DhtService: the trio shell over real py-libp2p hosts on 127.0.0.1."""

from __future__ import annotations

import logging
import random
import time

import trio
from dht_kit import LOOPBACK, PySeqValidator, SeqValidator, make_host
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.records.validator import NamespacedValidator as PyNamespacedValidator
from libp2p.tools.anyio_service.context import background_trio_service

from node.dht.core import DhtNode
from node.dht.messages import Message, MessageType, PeerInfo
from node.dht.record_store import NamespacedValidator
from node.dht.service import DhtService
from node.dht.wire import PROTOCOL_ID, encode_frame, encode_uvarint

logging.getLogger("libp2p").setLevel(logging.CRITICAL)


def info(host) -> PeerInfo:
    addr = host.get_addrs()[0]
    return PeerInfo(host.get_id().to_bytes(), (info_from_p2p_addr(addr).addrs[0].to_bytes(),))


def service(host, seed: int, **kw) -> DhtService:
    local = PeerInfo(host.get_id().to_bytes())
    node = DhtNode(local, validator=NamespacedValidator({"test": SeqValidator()}),
                   rng=random.Random(seed), now=time.time())
    return DhtService(host, node, **kw)


async def test_meshnodes_join_find_and_share_values_with_a_py_libp2p_peer() -> None:
    hosts = [make_host() for _ in range(4)]
    py = make_host()
    with trio.fail_after(60):
        async with (hosts[0].run(listen_addrs=LOOPBACK), hosts[1].run(listen_addrs=LOOPBACK),
                    hosts[2].run(listen_addrs=LOOPBACK), hosts[3].run(listen_addrs=LOOPBACK),
                    py.run(listen_addrs=LOOPBACK), trio.open_nursery() as nursery):
            services = [service(h, i) for i, h in enumerate(hosts)]
            for s in services:
                await nursery.start(s.run)
            for s in services[1:]:
                result = await s.bootstrap([info(hosts[0])])
                assert result.closest
            found = await services[3].find_node(hosts[2].get_id().to_bytes())
            assert hosts[2].get_id().to_bytes() in {p.peer_id for p in found.closest}
            put = await services[1].put_value(b"/test/k", b"3:value")
            assert put.stored >= 2
            got = await services[3].get_value(b"/test/k")
            assert got.value == b"3:value"
            # a py-libp2p KadDHT reads the record from the meshnodes
            dht = KadDHT(py, DHTMode.SERVER,
                         validator=PyNamespacedValidator({"test": PySeqValidator()}))
            async with background_trio_service(dht):
                await py.connect(info_from_p2p_addr(hosts[0].get_addrs()[0]))
                assert await dht.add_peer(hosts[0].get_id(), skip_server_mode_check=True)
                assert await dht.get_value("/test/k") == b"3:value"
            nursery.cancel_scope.cancel()
        for h in [*hosts, py]:
            await h.close()


async def _raw(host, target, payload: bytes) -> None:
    stream = await host.new_stream(target.get_id(), [TProtocol(PROTOCOL_ID)])
    try:
        await stream.write(payload)
        for _ in range(50):
            if not await stream.read(65536):
                break
    except Exception:  # noqa: BLE001 - the service resets the stream
        pass


async def test_garbage_oversized_refused_and_flooding_peers_are_dropped_and_counted() -> None:
    server, client = make_host(), make_host()
    with trio.fail_after(60):
        async with (server.run(listen_addrs=LOOPBACK), client.run(listen_addrs=LOOPBACK),
                    trio.open_nursery() as nursery):
            svc = service(server, 1, rate_per_s=0.001, burst=5, max_message_size=1000)
            rate_limited = trio.Event()
            svc.on_drop = lambda peer, reason: reason == "rate_limited" and rate_limited.set()
            await nursery.start(svc.run)
            await client.connect(info_from_p2p_addr(server.get_addrs()[0]))
            await _raw(client, server, b"\x05\x0b\x00\x00\x00\x00")  # group wire type
            await _raw(client, server, encode_uvarint(5000) + b"x" * 100)  # over 1000 bytes
            bad_put = Message(MessageType.PUT_VALUE, key=b"/nope/k")
            await _raw(client, server, encode_frame(bad_put))
            ping = encode_frame(Message(MessageType.PING))
            await _raw(client, server, ping * 10)  # 4 answered, then rate limited
            peer = client.get_id().to_base58()
            with trio.fail_after(5):
                await rate_limited.wait()
            assert svc.dropped[(peer, "rate_limited")] >= 1
            assert svc.dropped[(peer, "malformed")] == 2
            assert svc.dropped[(peer, "rejected")] == 1
            # burst 5: the refused PUT_VALUE took one token, four PINGs the rest
            assert svc.node.counters["in_ping"] == 4
            nursery.cancel_scope.cancel()
        await server.close()
        await client.close()
