"""DhtNode driven over the in-memory network: join, lookups, values, failures, refresh."""

from __future__ import annotations

import random

import pytest

from node.dht.core import DhtConfig, DhtNode
from node.dht.keys import kad_key, xor_distance
from node.dht.memnet import MemNet
from node.dht.messages import Message, MessageType, PeerInfo, Record
from node.dht.record_store import NamespacedValidator, RecordInvalid
from node.dht.routing_table import K


class SeqValidator:
    def validate(self, key: bytes, value: bytes) -> None:
        if not value.split(b":")[0].isdigit():
            raise RecordInvalid("no sequence number")

    def select(self, key: bytes, values) -> int:
        return max(range(len(values)), key=lambda i: (int(values[i].split(b":")[0]), -i))


VALIDATOR = NamespacedValidator({"test": SeqValidator()})


def pid(n: int) -> bytes:
    return b"peer-" + n.to_bytes(4, "big")


def build(n: int, seed: int = 1, **kw) -> MemNet:
    """n nodes join one after another through a random earlier node."""
    net = MemNet(seed=seed, validator=VALIDATOR, **kw)
    rng = random.Random(seed)
    ids = [pid(i) for i in range(n)]
    net.add_node(ids[0], [b"addr0"])
    for i, p in enumerate(ids[1:], start=1):
        net.add_node(p, [b"addr%d" % i])
        via = net.nodes[ids[rng.randrange(i)]].local
        net.run_query(p, lambda node, via=via: node.bootstrap([via], now=net.now))
    return net


def true_closest(net: MemNet, target: bytes, exclude: bytes) -> list[bytes]:
    alive = [p for p in net.nodes if p != exclude and p not in net.dead]
    return sorted(alive, key=lambda p: xor_distance(kad_key(p), target))[:K]


@pytest.fixture(scope="module")
def net200() -> MemNet:
    return build(200)


def test_lookups_find_true_k_closest_200(net200: MemNet) -> None:
    rng = random.Random(7)
    ids = sorted(net200.nodes)
    for _ in range(20):
        origin = rng.choice(ids)
        target = rng.randbytes(38)
        result = net200.run_query(origin, lambda n, t=target: n.find_node(t, now=net200.now))
        got = [p.peer_id for p in result.closest]
        assert got == true_closest(net200, kad_key(target), origin)
        assert result.stats.queries < 60 and result.stats.hops <= 4
        assert all(p.addrs for p in result.closest)  # addrs learnt on the way


def test_routing_tables_are_populated_and_bounded(net200: MemNet) -> None:
    for node in net200.nodes.values():
        assert len(node.table) >= K
        for index in range(256):
            assert len(node.table.bucket(index)) <= K


def test_put_and_get_value(net200: MemNet) -> None:
    ids = sorted(net200.nodes)
    key = b"/test/greeting"
    put = net200.run_query(ids[3], lambda n: n.put_value(key, b"1:hello", now=net200.now))
    assert put.kind == "put_value" and put.stored == K
    holders = [p for p, n in net200.nodes.items() if n.store.get(key, now=net200.now)]
    assert len(holders) >= K
    got = net200.run_query(ids[150], lambda n: n.get_value(key, now=net200.now))
    assert got.value == b"1:hello"
    missing = net200.run_query(ids[150], lambda n: n.get_value(b"/test/none", now=net200.now))
    assert missing.value is None and len(missing.closest) == K


def test_get_value_quorum_corrects_outdated_peers() -> None:
    net = build(60, seed=3)
    ids = sorted(net.nodes)
    key = b"/test/counter"
    net.run_query(ids[0], lambda n: n.put_value(key, b"1:old", now=net.now))
    holders = sorted(p for p, n in net.nodes.items() if n.store.get(key, now=net.now))
    fresh = holders[:5]
    for p in fresh:  # a few holders learnt a newer value directly
        net.nodes[p].store.put(key, b"2:new", now=net.now)
    reader = next(p for p in ids if p not in holders)
    got = net.run_query(reader, lambda n: n.get_value(key, now=net.now, quorum=len(holders)))
    assert got.value == b"2:new"
    end = net.now + 2
    net.run_until(lambda: net.now >= end)  # let the corrections land
    stale = [p for p in holders if net.nodes[p].store.get(key, now=net.now).value != b"2:new"]
    assert stale == []


def test_put_value_refuses_invalid_locally(net200: MemNet) -> None:
    node = net200.nodes[pid(1)]
    with pytest.raises(RecordInvalid):
        node.put_value(b"/test/x", b"not-a-seq", now=net200.now)


def test_lookups_with_dead_peers_time_out_and_still_finish() -> None:
    net = build(120, seed=4, config=DhtConfig(request_timeout=2.0))
    rng = random.Random(8)
    ids = sorted(net.nodes)
    net.dead = set(rng.sample(ids, 24))
    alive = [p for p in ids if p not in net.dead]
    for _ in range(10):
        origin = rng.choice(alive)
        target = rng.randbytes(38)
        result = net.run_query(origin, lambda n, t=target: n.find_node(t, now=net.now))
        got = [p.peer_id for p in result.closest]
        assert got and not set(got) & net.dead
        assert got[:10] == true_closest(net, kad_key(target), origin)[:10]
        for p in got:
            assert p not in net.dead
    assert sum(net.nodes[p].counters["timeouts"] for p in alive) > 0


def test_failed_peer_is_locked_and_kept_until_a_replacement_exists() -> None:
    # Kademlia paper 4.1: an unresponsive contact is locked for an exponentially growing
    # backoff and flagged stale; it leaves its bucket only for a replacement.
    cfg = DhtConfig(k=2, failure_backoff=30.0, stale_after=1)
    node = DhtNode(PeerInfo(b"me"), validator=VALIDATOR, rng=random.Random(1), config=cfg)
    same = [p for p in (pid(i) for i in range(400))
            if node.table.bucket_index(kad_key(p)) == 0][:3]
    node.on_request(PeerInfo(same[0], (b"a",)), Message(MessageType.PING), now=0.0)
    node.find_node(pid(999), now=1.0)
    ready = node.ready()
    node.advance(ready)
    (req,) = ready.requests
    assert req.peer == PeerInfo(same[0], (b"a",))
    node.on_failure(req.request_id, now=1.5)
    assert same[0] in node.table and node.table.get(same[0]).failures == 1
    assert node.counters["failures"] == 1 and node.counters["fail_failed"] == 1
    assert node.health.locked(same[0], 31.4) and not node.health.locked(same[0], 31.6)
    # locked: neither asked by a lookup nor handed out in answers
    node.find_node(pid(998), now=2.0)
    assert node.ready().requests == []
    answer = node.on_request(PeerInfo(pid(7)), Message(MessageType.FIND_NODE, key=pid(5)),
                             now=2.0, sender_is_server=False)
    assert same[0] not in [p.peer_id for p in answer.response.closer_peers]
    # a newcomer to the (not full) bucket just joins; one to a full bucket replaces it
    node.on_request(PeerInfo(same[1]), Message(MessageType.PING), now=3.0)
    node.on_request(PeerInfo(same[2]), Message(MessageType.PING), now=3.0)
    assert [c.peer_id for c in node.table.bucket(0)] == [same[1], same[2]]
    # an answer clears the record: a second failure doubles the lock
    assert node.health.failed(same[1], now=10.0) == 1
    assert node.health.failed(same[1], now=10.0) == 2
    assert node.health.locked(same[1], 69.9) and not node.health.locked(same[1], 70.1)
    node.health.answered(same[1], rtt=0.1)
    assert not node.health.locked(same[1], 10.0)


def test_refresh_is_staggered_after_start() -> None:
    net = build(50, seed=5, config=DhtConfig(refresh_interval=300.0))
    starts: list[float] = []
    before = {p: n.counters["out_find_node"] for p, n in net.nodes.items()}
    t0 = net.now
    for step in range(300):
        net.run_until(lambda s=step: net.now >= t0 + s + 1, limit=t0 + 400)
        sent = sum(n.counters["out_find_node"] for n in net.nodes.values())
        starts.append(sent)
    total = starts[-1] - sum(before.values())
    assert total > 0
    per_second = [b - a for a, b in zip([sum(before.values()), *starts[:-1]], starts, strict=True)]
    assert max(per_second) < 0.2 * total  # no storm: no second carries a fifth of the work


def test_full_bucket_pings_oldest_and_evicts_dead() -> None:
    cfg = DhtConfig(k=2, request_timeout=1.0)
    node = DhtNode(PeerInfo(b"me"), validator=VALIDATOR, rng=random.Random(1), config=cfg)
    same = [p for p in (pid(i) for i in range(400))
            if node.table.bucket_index(kad_key(p)) == 0][:3]
    for p in same:
        node.on_request(PeerInfo(p), Message(MessageType.PING), now=0.0)
    ready = node.ready()
    node.advance(ready)
    (ping,) = ready.requests
    assert ping.message.type is MessageType.PING and ping.peer.peer_id == same[0]
    node.tick(5.0)  # no answer: the oldest is evicted, the newcomer promoted
    assert [c.peer_id for c in node.table.bucket(0)] == [same[1], same[2]]


def test_wrong_response_type_and_unknown_ids_are_counted() -> None:
    node = DhtNode(PeerInfo(b"me"), validator=VALIDATOR, rng=random.Random(1))
    qid = node.bootstrap([PeerInfo(pid(1))], now=0.0)
    (req,) = node.ready().requests
    node.on_response(req.request_id, Message(MessageType.PING), now=0.1)
    node.on_response(999, Message(MessageType.FIND_NODE), now=0.1)
    assert node.counters["wrong_response_type"] == 1
    assert node.counters["late_or_unknown_response"] == 1
    assert not node.query_running(qid)
    assert node.ready().finished[0].closest == ()


def test_inbound_rejections_are_counted() -> None:
    node = DhtNode(PeerInfo(b"me"), validator=VALIDATOR, rng=random.Random(1))
    bad = Message(MessageType.PUT_VALUE, key=b"/test/a", record=Record(b"/test/a", b"zzz"))
    handled = node.on_request(PeerInfo(pid(1)), bad, now=0.0)
    assert handled.response is None and node.counters["rejected"] == 1


def test_same_seed_same_run() -> None:
    def run() -> tuple[int, list[bytes]]:
        net = build(40, seed=9)
        result = net.run_query(pid(5), lambda n: n.find_node(b"x", now=net.now))
        return net.messages, [p.peer_id for p in result.closest]

    assert run() == run()


def test_get_value_answers_from_local_store_first() -> None:
    node = DhtNode(PeerInfo(b"me"), validator=VALIDATOR, rng=random.Random(1))
    node.on_request(PeerInfo(pid(1)), Message(MessageType.PING), now=0.0)
    node.put_value(b"/test/k", b"1:v", now=0.0)
    node.advance(node.ready())
    qid = node.get_value(b"/test/k", now=1.0)
    ready = node.ready()
    assert ready.requests == []
    assert [(r.query_id, r.value) for r in ready.finished] == [(qid, b"1:v")]


def test_live_oldest_answers_ping_and_stays() -> None:
    cfg = DhtConfig(k=2)
    node = DhtNode(PeerInfo(b"me"), validator=VALIDATOR, rng=random.Random(1), config=cfg)
    same = [p for p in (pid(i) for i in range(400))
            if node.table.bucket_index(kad_key(p)) == 0][:3]
    for p in same:
        node.on_request(PeerInfo(p), Message(MessageType.PING), now=0.0)
    (ping,) = node.ready().requests
    node.on_response(ping.request_id, Message(MessageType.PING), now=0.5)
    assert [c.peer_id for c in node.table.bucket(0)] == [same[1], same[0]]
    assert [c.peer_id for c in node.table.replacements(0)] == [same[2]]


def test_on_request_never_raises_on_any_message() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from node.dht.messages import ConnectionType

    peers = st.builds(PeerInfo, st.binary(max_size=40),
                      st.lists(st.binary(max_size=8), max_size=2).map(tuple),
                      st.sampled_from(ConnectionType))
    msgs = st.builds(Message, st.sampled_from(MessageType), st.binary(max_size=40),
                     st.none() | st.builds(Record, st.binary(max_size=20),
                                           st.binary(max_size=20)),
                     st.lists(peers, max_size=3).map(tuple))
    node = DhtNode(PeerInfo(b"me"), validator=VALIDATOR, rng=random.Random(1))

    @settings(max_examples=300, deadline=None)
    @given(peers, msgs)
    def check(sender: PeerInfo, msg: Message) -> None:
        handled = node.on_request(sender, msg, now=1.0)
        assert handled.response is not None or handled.rejected

    check()


def test_simultaneous_join_converges_every_table() -> None:
    # 100 nodes bootstrap through one peer at the same instant; once their bootstrap
    # self-lookups finished (the join refreshes run alongside) every node holds its
    # true 20 closest peers: in its buckets, or
    # (rarely) in the replacement cache of a full bucket, whose older live contacts
    # Kademlia keeps in preference (paper 2.2; sim.workloads.discovery.holds_closest).
    net = MemNet(seed=2, validator=VALIDATOR, latency=0.05)
    ids = [pid(i) for i in range(100)]
    for p in ids:
        net.add_node(p)
    seed_peer = net.nodes[ids[0]].local
    started = {p: net.start_query(p, lambda n: n.bootstrap([seed_peer], now=0.0))
               for p in ids[1:]}
    net.run_until(lambda: all((p, q) in net.results for p, q in started.items()), limit=10)
    assert net.now < 3.0
    strict = 0
    for p in ids:
        table = net.nodes[p].table
        want = sorted((x for x in ids if x != p),
                      key=lambda x: xor_distance(kad_key(x), kad_key(p)))[:K]
        for w in want:
            index = table.bucket_index(kad_key(w))
            strict += w in table
            assert w in table or (len(table.bucket(index)) == K and w in [
                c.peer_id for c in table.replacements(index)])
    assert strict >= 0.995 * len(ids) * K


def test_put_value_refuses_to_publish_a_worse_value() -> None:
    node = DhtNode(PeerInfo(b"me"), validator=VALIDATOR, rng=random.Random(1))
    node.put_value(b"/test/k", b"2:new", now=0.0)
    with pytest.raises(RecordInvalid, match="better"):
        node.put_value(b"/test/k", b"1:old", now=1.0)


def test_silent_peers_stall_instead_of_holding_up_lookups() -> None:
    # request_timeout 10 s: without stalls every dead peer among the k closest would
    # hold its lookup up for 10 s; with them a lookup takes a few round trips.
    net = build(80, seed=6, latency=0.05, config=DhtConfig(request_timeout=10.0))
    rng = random.Random(9)
    ids = sorted(net.nodes)
    net.dead = set(rng.sample(ids, 16))
    alive = [p for p in ids if p not in net.dead]
    for _ in range(5):
        origin = rng.choice(alive)
        target = rng.randbytes(38)
        t0 = net.now
        result = net.run_query(origin, lambda n, t=target: n.find_node(t, now=net.now))
        assert net.now - t0 < 3.0
        assert not {p.peer_id for p in result.closest} & net.dead
        assert result.closest[0].peer_id == true_closest(net, kad_key(target), origin)[0]
    assert sum(net.nodes[p].counters["stalls"] for p in alive) > 0
    t0 = net.now
    net.run_until(lambda: net.now >= t0 + 12.0)  # the hard timeouts fire later
    charged = [(n, d) for n in (net.nodes[p] for p in alive) for d in net.dead
               if n.health.failures(d)]
    assert charged  # counted; locked out from the second failure in a row on
    assert all(n.health.locked(d, net.now) == (n.health.failures(d) >= 2)
               for n, d in charged)


def test_next_wakeup_is_the_earliest_stall_or_deadline() -> None:
    cfg = DhtConfig(stall_initial=0.5, request_timeout=4.0, alpha=1, disjoint_paths=1,
                    refresh_interval=1e9)
    node = DhtNode(PeerInfo(b"me"), validator=VALIDATOR, rng=random.Random(1), now=0.0,
                   config=cfg)
    assert node.next_wakeup() == min(node.table.next_refresh_due(), 0.0)  # expiry scan
    node.tick(0.0)
    for n in (1, 2):
        node.on_request(PeerInfo(pid(n)), Message(MessageType.PING), now=0.0)
    node.find_node(pid(9), now=1.0)
    ready = node.ready()
    node.advance(ready)
    (first,) = ready.requests
    assert node.next_wakeup() == 1.5  # the stall time of that request
    node.tick(1.5)  # stalled: the lookup asks the next peer without waiting, and asks
    # the stalled peer again (its request or answer may have been lost) on a new request
    reask, second = node.ready().requests
    assert reask.peer.peer_id == first.peer.peer_id and reask.request_id != first.request_id
    assert reask.message == first.message and node.counters["reasks"] == 1
    assert second.peer.peer_id != first.peer.peer_id and node.counters["stalls"] == 1
    assert node.next_wakeup() == 2.0  # the re-ask's and the second request's stall time
    node.on_response(first.request_id, Message(MessageType.FIND_NODE), now=2.0)
    assert node.health.warm.srtt == 1.0  # the late answer still counts (and is timed)
    node.on_response(reask.request_id, Message(MessageType.FIND_NODE), now=2.1)
    assert node.counters["late_or_unknown_response"] == 1  # the re-ask was forgotten


def test_bootstrap_asks_its_seeds_even_in_backoff() -> None:
    node = DhtNode(PeerInfo(b"me"), validator=VALIDATOR, rng=random.Random(1))
    node.health.failed(pid(1), now=0.0)
    node.find_node(pid(5), now=1.0)
    assert node.ready().requests == []  # pid(1) is not in the table anyway
    node.bootstrap([PeerInfo(pid(1), (b"a",))], now=1.0)
    (req,) = node.ready().requests
    assert req.peer.peer_id == pid(1)


def test_no_address_is_not_charged_and_a_later_address_is_used() -> None:
    node = DhtNode(PeerInfo(b"me"), validator=VALIDATOR, rng=random.Random(1),
                   config=DhtConfig(disjoint_paths=1))
    node.on_request(PeerInfo(pid(1)), Message(MessageType.PING), now=0.0)  # no addrs yet
    node.on_request(PeerInfo(pid(2), (b"b",)), Message(MessageType.PING), now=0.0)
    node.find_node(pid(9), now=1.0)
    ready = node.ready()
    node.advance(ready)
    by_peer = {r.peer.peer_id: r for r in ready.requests}
    node.on_failure(by_peer[pid(1)].request_id, now=1.1, reason="no_address")
    assert node.counters["fail_no_address"] == 1
    assert not node.health.locked(pid(1), 1.1) and node.table.get(pid(1)).failures == 0
    # pid(2) names pid(1) with an address: the lookup asks it after all
    node.on_response(by_peer[pid(2)].request_id, Message(
        MessageType.FIND_NODE, closer_peers=(PeerInfo(pid(1), (b"a",)),)), now=1.2)
    (retry,) = node.ready().requests
    assert retry.peer == PeerInfo(pid(1), (b"a",))
    node.learn_addrs(pid(1), [b"a2"])  # e.g. from identify
    assert node.table.get(pid(1)).peer_info() == PeerInfo(pid(1), (b"a2",))
