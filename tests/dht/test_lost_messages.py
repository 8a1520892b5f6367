"""Lost requests and answers: a stalled lookup request is asked again (the "re-ask"),
and the peer is charged once for the pair (virtual time only, no sleeps)."""

from __future__ import annotations

import dataclasses
import random

import pytest

from node.dht.core import DhtConfig, DhtNode
from node.dht.health import PeerHealth
from node.dht.keys import kad_key, xor_distance
from node.dht.lookup import Lookup, PeerState
from node.dht.memnet import MemNet
from node.dht.messages import Message, MessageType, PeerInfo
from node.dht.record_store import NamespacedValidator, PublicKeyValidator
from node.dht.routing_table import K

VALIDATOR = NamespacedValidator({"pk": PublicKeyValidator()})


def pid(n: int) -> bytes:
    return b"peer-" + n.to_bytes(4, "big")


def order(ids: list[bytes], target: bytes) -> list[bytes]:
    return sorted(ids, key=lambda p: xor_distance(kad_key(p), target))


# -- the lookup state machine --------------------------------------------------------

def test_a_stalled_peer_is_asked_again_and_holds_the_lookup_until_it_answers() -> None:
    target = kad_key(b"t")
    ids = order([pid(n) for n in range(5)], target)
    lookup = Lookup(target, [PeerInfo(p) for p in ids], k=3, alpha=2)
    assert [p.peer_id for p in lookup.next_queries()] == ids[:2]
    assert lookup.on_stall(ids[0])  # ask it again: its request or answer may be lost
    assert lookup.state_of(ids[0]) is PeerState.RETRYING
    assert lookup.in_flight == 1  # like a stall: the lookup moves on to the next peer
    assert [p.peer_id for p in lookup.next_queries()] == [ids[2]]
    lookup.on_response(ids[1], [])
    lookup.on_response(ids[2], [])
    # the re-asked peer is still among the k closest live ones: not finished without it
    assert not lookup.finished and lookup.next_queries() == []
    assert ids[0] in lookup.waiting()
    lookup.on_response(ids[0], [])  # the re-ask is answered
    assert lookup.finished and [p.peer_id for p in lookup.closest()] == ids[:3]
    stats = lookup.stats()
    assert (stats.queries, stats.reasks, stats.stalls, stats.responses) == (4, 1, 1, 3)


def test_a_reask_that_stalls_too_ends_the_wait_and_only_one_reask_is_sent() -> None:
    target = kad_key(b"t")
    ids = order([pid(n) for n in range(4)], target)
    lookup = Lookup(target, [PeerInfo(p) for p in ids], k=2, alpha=2)
    lookup.next_queries()
    assert lookup.on_stall(ids[0])
    assert not lookup.on_stall(ids[0])  # the re-ask stalled: stop waiting, no third ask
    assert lookup.state_of(ids[0]) is PeerState.STALLED
    assert not lookup.on_stall(ids[0])  # already stalled: ignored
    for peer in [p.peer_id for p in lookup.next_queries()] + [ids[1]]:
        lookup.on_response(peer, [])
    assert lookup.finished and [p.peer_id for p in lookup.closest()] == ids[1:3]
    lookup.on_response(ids[0], [])  # a late answer to either request still counts
    assert lookup.state_of(ids[0]) is PeerState.SUCCEEDED
    assert lookup.stats().reasks == 1 and lookup.stats().stalls == 2


def test_no_reask_when_disabled_refused_by_the_driver_or_avoided() -> None:
    target = kad_key(b"t")
    ids = order([pid(n) for n in range(3)], target)
    none = Lookup(target, [PeerInfo(ids[0])], retries=0)
    none.next_queries()
    assert not none.on_stall(ids[0]) and none.state_of(ids[0]) is PeerState.STALLED
    refused = Lookup(target, [PeerInfo(ids[0])])
    refused.next_queries()
    assert not refused.on_stall(ids[0], reask=False)
    assert refused.state_of(ids[0]) is PeerState.STALLED and refused.finished
    locked: set[bytes] = set()
    avoided = Lookup(target, [PeerInfo(ids[0])], avoid=locked.__contains__)
    avoided.next_queries()
    locked.add(ids[0])  # locked out meanwhile (it failed in another lookup)
    assert not avoided.on_stall(ids[0]) and avoided.stats().reasks == 0
    with pytest.raises(ValueError):
        Lookup(target, [], retries=-1)


def test_a_reask_stays_on_its_disjoint_path() -> None:
    target = kad_key(b"t")
    ids = order([pid(n) for n in range(8)], target)
    lookup = Lookup(target, [PeerInfo(p) for p in ids[:2]], k=4, alpha=1, paths=2)
    asked = [p.peer_id for p in lookup.next_queries()]
    assert asked == ids[:2]  # one seed per path
    lookup.on_response(ids[0], [PeerInfo(p) for p in ids[2:5]])  # path 0 learns 2..4
    assert lookup.on_stall(ids[1])  # path 1's only peer stalls: re-asked on path 1
    going_on = [p.peer_id for p in lookup.next_queries()]
    assert going_on == ids[2:5]  # path 0 goes on (nothing closer: its final round)
    assert not lookup.finished  # path 1 waits for the re-ask
    lookup.on_response(ids[1], [PeerInfo(p) for p in ids[5:]])  # the re-ask's answer
    assert lookup.state_of(ids[1]) is PeerState.SUCCEEDED
    asked = going_on
    for _ in range(20):
        for peer in asked:
            lookup.on_response(peer, [])
        asked = [p.peer_id for p in lookup.next_queries()]
        assert ids[1] not in asked
        if not asked:
            break
    assert lookup.finished
    # path 1's peers came from ids[1]'s answer; path 0 never asked them, nor ids[1]
    assert lookup._entries[ids[1]].path == 1
    assert all(lookup._entries[p].path == 1 for p in ids[5:])


# -- the core and a lossy network ------------------------------------------------------

def _net(n: int, seed: int) -> MemNet:
    net = MemNet(seed=seed, validator=VALIDATOR, latency=0.05)
    rng = random.Random(seed)
    ids = [rng.randbytes(38) for _ in range(n)]
    for peer in ids:
        net.add_node(peer, [b"addr"])
    via = net.nodes[ids[0]].local
    for peer in ids[1:]:
        net.run_query(peer, lambda node, via=via: node.bootstrap([via], now=net.now))
    return net


@pytest.fixture(scope="module")
def net100() -> MemNet:
    return _net(100, seed=4)


def _lose_first_answers(net: MemNet, origin: bytes, key: bytes, only: bytes | None = None):
    """Drop the first answer each peer (or only ``only``) sends ``origin`` for ``key``."""
    lost: set[bytes] = set()

    def drop(sender: bytes, receiver: bytes, msg: Message, answer: bool) -> bool:
        if not answer or receiver != origin or msg.key != key or sender in lost:
            return False
        if only is not None and sender != only:
            return False
        lost.add(sender)
        return True

    net.drop = drop
    return lost


def test_lookup_finds_the_k_closest_although_every_first_answer_is_lost(net100) -> None:
    rng = random.Random(11)
    ids = sorted(net100.nodes)
    for _ in range(4):
        origin = rng.choice(ids)
        target = rng.randbytes(38)
        lost = _lose_first_answers(net100, origin, target)
        try:
            result = net100.run_query(origin, lambda n, t=target: n.find_node(t, now=net100.now))
        finally:
            net100.drop = None
        want = order([p for p in ids if p != origin], kad_key(target))[:K]
        assert [p.peer_id for p in result.closest] == want
        assert result.stats.reasks == len(lost) > K


def test_a_lost_answer_from_the_target_itself_is_asked_again(net100) -> None:
    rng = random.Random(12)
    ids = sorted(net100.nodes)
    for _ in range(4):
        origin, target = rng.sample(ids, 2)
        node = net100.nodes[origin]
        lost = _lose_first_answers(net100, origin, target, only=target)
        try:
            result = net100.run_query(origin, lambda n, t=target: n.find_node(t, now=net100.now))
            assert lost == {target}
            assert target in [p.peer_id for p in result.closest]
            # the same loss without the re-ask: the target drops out of the result
            node.config = dataclasses.replace(node.config, lookup_retries=0)
            lost = _lose_first_answers(net100, origin, target, only=target)
            result = net100.run_query(origin, lambda n, t=target: n.find_node(t, now=net100.now))
            assert lost == {target}
            assert target not in [p.peer_id for p in result.closest]
        finally:
            net100.drop = None
            node.config = DhtConfig()
        net100.run_until(lambda t=net100.now: net100.now >= t + 11.0)  # timeouts fire
        node.health.answered(target)  # forget the failure of the run without re-asks


def _node() -> DhtNode:
    cfg = DhtConfig(stall_initial=0.5, request_timeout=4.0, alpha=1, disjoint_paths=1,
                    refresh_interval=1e9)
    node = DhtNode(PeerInfo(b"me"), validator=VALIDATOR, rng=random.Random(1), now=0.0,
                   config=cfg)
    node.tick(0.0)
    for n in (1, 2):
        node.on_request(PeerInfo(pid(n), (b"a",)), Message(MessageType.PING), now=0.0)
    return node


def test_a_peer_that_misses_request_and_reask_is_charged_once() -> None:
    node = _node()
    qid = node.find_node(pid(9), now=1.0)
    (first,) = node.ready().requests
    node.advance(node.ready())
    node.tick(1.5)  # stalls: asked again on a new request; the next peer is asked too
    reask, second = node.ready().requests
    node.advance(node.ready())
    assert reask.peer == first.peer and reask.request_id not in (first.request_id,
                                                                 second.request_id)
    node.on_response(second.request_id, Message(MessageType.FIND_NODE), now=1.6)
    assert node.query_running(qid)  # waits for the re-ask
    node.tick(2.0)  # the re-ask stalls too: the lookup stops waiting
    (result,) = node.ready().finished
    assert [p.peer_id for p in result.closest] == [second.peer.peer_id]
    node.advance(node.ready())
    silent = first.peer.peer_id
    node.tick(5.0)  # the first request's hard timeout: the re-ask is still open
    assert node.health.failures(silent) == 0
    node.tick(5.5)  # the re-ask's: one failed request, charged once, not locked
    assert node.health.failures(silent) == 1 and not node.health.locked(silent, 5.5)
    assert node.table.get(silent) is not None
    # it left a stall unanswered: the next lookup that stalls on it does not re-ask
    assert node.health.unanswered(silent)
    node.find_node(pid(9), now=6.0)
    (again,) = node.ready().requests
    node.advance(node.ready())
    assert again.peer.peer_id == silent
    node.tick(6.5)
    assert [r.peer.peer_id for r in node.ready().requests] == [second.peer.peer_id]
    assert node.counters["reasks"] == 1


def test_the_reask_answer_counts_and_the_first_request_is_forgotten() -> None:
    node = _node()
    node.find_node(pid(9), now=1.0)
    (first,) = node.ready().requests
    node.advance(node.ready())
    node.tick(1.5)
    reask, second = node.ready().requests
    node.advance(node.ready())
    node.on_response(reask.request_id, Message(MessageType.FIND_NODE), now=1.6)
    node.on_response(second.request_id, Message(MessageType.FIND_NODE), now=1.6)
    (result,) = node.ready().finished
    assert {p.peer_id for p in result.closest} == {pid(1), pid(2)}
    assert not node.health.unanswered(first.peer.peer_id)  # it answered
    node.tick(5.0)  # the forgotten first request never times out and is not charged
    assert node.health.failures(first.peer.peer_id) == 0 and node.counters["timeouts"] == 0
    node.on_response(first.request_id, Message(MessageType.FIND_NODE), now=5.1)
    assert node.counters["late_or_unknown_response"] == 1


def test_a_reask_that_fails_at_once_ends_the_wait_without_a_charge() -> None:
    node = _node()
    qid = node.find_node(pid(9), now=1.0)
    (first,) = node.ready().requests
    node.advance(node.ready())
    node.tick(1.5)
    reask, second = node.ready().requests
    node.advance(node.ready())
    node.on_response(second.request_id, Message(MessageType.FIND_NODE), now=1.6)
    node.on_failure(reask.request_id, now=1.7, reason="reset")  # the first is still open
    assert not node.query_running(qid)
    assert node.health.failures(first.peer.peer_id) == 0
    node.tick(5.0)  # now every request to it failed: charged once
    assert node.health.failures(first.peer.peer_id) == 1


def test_unanswered_peers_are_bounded_and_cleared_by_an_answer() -> None:
    health = PeerHealth(backoff=30.0, backoff_max=60.0, capacity=2, initial=1.0,
                        floor=0.2, ceiling=10.0)
    for peer in (b"a", b"b", b"c"):
        health.stalled(peer)
    assert not health.unanswered(b"a")  # the oldest was forgotten
    assert health.unanswered(b"b") and health.unanswered(b"c")
    health.answered(b"b")
    assert not health.unanswered(b"b")
