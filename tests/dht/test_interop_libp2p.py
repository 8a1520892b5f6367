"""Interop with py-libp2p's own KadDHT over real hosts on 127.0.0.1 (/ipfs/kad/1.0.0).

A meshnode host answers with the pure core (``DhtNode.on_request``) through our codec;
py-libp2p's KadDHT stores a value on it, reads one from it and looks up peers through
it. The other way round, the meshnode core runs a bootstrap lookup against two
py-libp2p KadDHT servers, learning the second (and its binary multiaddrs) from the
first. The small stream helpers here are what the node's trio shell does per stream.

Sharp edge found on the way (py-libp2p 0.8.1): ``stream.read`` raises ``StreamEOF``
when the remote closes, and an exception escaping a stream handler cancels the whole
connection's nursery, so every later stream to that peer times out. Handlers must
catch it (see ``serve``).
"""

from __future__ import annotations

import logging
import random

import multiaddr
import trio
from dht_kit import LOOPBACK, PySeqValidator, SeqValidator, make_host
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.records.validator import NamespacedValidator as PyNamespacedValidator
from libp2p.tools.anyio_service.context import background_trio_service

from node.dht.core import DhtNode, OutboundRequest
from node.dht.messages import Message, PeerInfo
from node.dht.record_store import NamespacedValidator
from node.dht.wire import PROTOCOL_ID, FrameDecoder, WireError, encode_frame

KAD = TProtocol(PROTOCOL_ID)
logging.getLogger("libp2p").setLevel(logging.CRITICAL)


async def read_chunk(stream) -> bytes:
    try:
        return await stream.read(65536)
    except StreamEOF:
        return b""


async def serve(node: DhtNode, stream) -> None:
    """Answer every request on an inbound kad-dht stream until the remote closes it."""
    requester = stream.muxed_conn.peer_id.to_bytes()
    decoder = FrameDecoder()
    try:
        while chunk := await read_chunk(stream):
            for msg in decoder.feed(chunk):
                handled = node.on_request(PeerInfo(requester), msg, now=trio.current_time())
                if handled.response is None:
                    await stream.reset()
                    return
                await stream.write(encode_frame(handled.response))
        await stream.close()
    except WireError:
        await stream.reset()


async def request(host, req: OutboundRequest) -> Message:
    """Send one request on a new stream and return the decoded answer."""
    peer = ID(req.peer.peer_id)
    if req.peer.addrs:
        addrs = [multiaddr.Multiaddr(a) for a in req.peer.addrs]
        host.get_peerstore().add_addrs(peer, addrs, 3600)
    stream = await host.new_stream(peer, [KAD])
    try:
        await stream.write(encode_frame(req.message))
        decoder = FrameDecoder()
        while chunk := await read_chunk(stream):
            if answers := decoder.feed(chunk):
                return answers[0]
        raise EOFError("stream closed before the answer")
    finally:
        await stream.close()


async def drive(node: DhtNode, host, query_id: int) -> list:
    """Carry out the core's requests one at a time until ``query_id`` finishes (and any
    queries it started, e.g. the refresh after a bootstrap); returns ``query_id``'s
    results."""
    finished = []
    while node.query_running(query_id) or node.has_ready():
        ready = node.ready()
        node.advance(ready)
        finished.extend(ready.finished)
        for req in ready.requests:
            try:
                with trio.fail_after(10):
                    answer = await request(host, req)
            except Exception:  # noqa: BLE001 - any dial/stream/codec failure fails the request
                node.on_failure(req.request_id, now=trio.current_time())
            else:
                node.on_response(req.request_id, answer, now=trio.current_time())
    return [r for r in finished if r.query_id == query_id]


def mesh_node(host) -> DhtNode:
    local = PeerInfo(host.get_id().to_bytes(), tuple(a.to_bytes() for a in LOOPBACK))
    return DhtNode(local, validator=NamespacedValidator({"test": SeqValidator()}),
                   rng=random.Random(1), now=trio.current_time())


def py_dht(host) -> KadDHT:
    return KadDHT(host, DHTMode.SERVER, validator=PyNamespacedValidator({"test": PySeqValidator()}))


async def test_py_libp2p_kad_dht_puts_gets_and_finds_through_meshnode() -> None:
    mesh, py = make_host(), make_host()
    node = mesh_node(mesh)
    mesh.set_stream_handler(KAD, lambda stream: serve(node, stream))
    with trio.fail_after(60):
        async with mesh.run(listen_addrs=LOOPBACK), py.run(listen_addrs=LOOPBACK):
            dht = py_dht(py)
            async with background_trio_service(dht):
                await py.connect(info_from_p2p_addr(mesh.get_addrs()[0]))
                assert await dht.add_peer(mesh.get_id(), skip_server_mode_check=True)
                # PUT_VALUE from py-libp2p is validated and stored by the meshnode core
                await dht.put_value("/test/from-py", b"1:hello")
                stored = node.store.get(b"/test/from-py", now=trio.current_time())
                assert stored is not None and stored.value == b"1:hello"
                # GET_VALUE: py-libp2p decodes our Record
                node.store.put(b"/test/from-mesh", b"7:hi", now=trio.current_time())
                assert await dht.get_value("/test/from-mesh") == b"7:hi"
                # FIND_NODE: py-libp2p learns a peer only the meshnode knows
                other = make_host()
                other_id = other.get_id()
                node.table.update(other_id.to_bytes(),
                                  [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/9").to_bytes()],
                                  now=trio.current_time())
                closest = await dht.peer_routing.find_closest_peers_network(other_id.to_bytes())
                assert other_id in closest
            await mesh.close()
            await py.close()
    assert node.counters["in_put_value"] >= 1 and node.counters["rejected"] == 0


async def test_meshnode_core_looks_up_through_py_libp2p_servers() -> None:
    mesh, first, second = make_host(), make_host(), make_host()
    node = mesh_node(mesh)
    with trio.fail_after(60):
        async with (mesh.run(listen_addrs=LOOPBACK), first.run(listen_addrs=LOOPBACK),
                    second.run(listen_addrs=LOOPBACK)):
            dht1, dht2 = py_dht(first), py_dht(second)
            async with background_trio_service(dht1), background_trio_service(dht2):
                await first.connect(info_from_p2p_addr(second.get_addrs()[0]))
                assert await dht1.add_peer(second.get_id(), skip_server_mode_check=True)
                boot = info_from_p2p_addr(first.get_addrs()[0])
                mesh.get_peerstore().add_addrs(boot.peer_id, boot.addrs, 3600)
                seed = PeerInfo(boot.peer_id.to_bytes(), tuple(a.to_bytes() for a in boot.addrs))
                qid = node.bootstrap([seed], now=trio.current_time())
                (result,) = await drive(node, mesh, qid)
            for h in (mesh, first, second):
                await h.close()
    found = {p.peer_id for p in result.closest}
    assert found == {first.get_id().to_bytes(), second.get_id().to_bytes()}
    # the second server was learnt from the first's answer, binary multiaddrs included
    assert second.get_id().to_bytes() in node.table and first.get_id().to_bytes() in node.table
    assert node.table.get(second.get_id().to_bytes()).addrs
