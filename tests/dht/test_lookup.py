"""Iterative lookup: state machine rules, convergence on in-memory networks, failures."""

from __future__ import annotations

import random
from collections import deque

import pytest

from node.dht.keys import kad_key, xor_distance
from node.dht.lookup import ALPHA, Lookup, PeerState, ValueLookup
from node.dht.messages import PeerInfo, Record
from node.dht.record_store import RecordInvalid
from node.dht.routing_table import K, RoutingTable


def pid(n: int) -> bytes:
    return b"peer-" + n.to_bytes(4, "big")


def true_closest(ids: list[bytes], target: bytes, k: int = K) -> list[bytes]:
    return sorted(ids, key=lambda p: xor_distance(kad_key(p), target))[:k]


class Net:
    """In-memory network of pure routing tables; ``dead`` peers never answer."""

    def __init__(self, ids: list[bytes], seed: int) -> None:
        self.rng = random.Random(seed)
        self.ids = ids
        self.tables = {p: RoutingTable(p, rng=self.rng) for p in ids}
        self.dead: set[bytes] = set()

    def fill_fully(self) -> None:
        for p, t in self.tables.items():
            others = [q for q in self.ids if q != p]
            self.rng.shuffle(others)
            for q in others:
                t.update(q, now=0.0)

    def answer(self, requester: bytes, peer: bytes, target: bytes) -> list[PeerInfo]:
        table = self.tables[peer]
        table.update(requester, now=0.0)
        return [PeerInfo(c.peer_id) for c in table.closest(target, K, exclude=[requester])]

    def run(self, origin: bytes, lookup: Lookup, *, learn: bool = False) -> int:
        """Drive ``lookup`` with up to alpha requests in flight, answered FIFO."""
        in_flight: deque[bytes] = deque()
        rounds = 0
        while not lookup.finished:
            in_flight.extend(p.peer_id for p in lookup.next_queries())
            if not in_flight:
                break
            rounds += 1
            peer = in_flight.popleft()
            if peer in self.dead:
                lookup.on_failure(peer)
                if learn:
                    self.tables[origin].remove(peer)
                continue
            closer = self.answer(origin, peer, lookup.target_key)
            if learn:
                self.tables[origin].update(peer, now=0.0)
            lookup.on_response(peer, closer)
        assert rounds < 10_000
        return rounds

    def lookup(self, origin: bytes, target: bytes, **kw) -> Lookup:
        seeds = [PeerInfo(c.peer_id) for c in self.tables[origin].closest(target, K)]
        lookup = Lookup(target, seeds, local_peer_id=origin, **kw)
        self.run(origin, lookup)
        return lookup

    def join_sequentially(self) -> None:
        """Each node joins through node 0 with a lookup for its own key (paper 2.3)."""
        first = self.ids[0]
        for p in self.ids[1:]:
            self.tables[p].update(first, now=0.0)
            self.tables[first].update(p, now=0.0)
            lookup = Lookup(self.tables[p].local_key, [PeerInfo(first)], local_peer_id=p)
            self.run(p, lookup, learn=True)
            for q in lookup.closest():
                self.tables[p].update(q.peer_id, now=0.0)


def test_alpha_limit_and_nearest_first() -> None:
    target = kad_key(b"target")
    seeds = [PeerInfo(pid(n)) for n in range(10)]
    lookup = Lookup(target, seeds)
    first = lookup.next_queries()
    assert len(first) == ALPHA
    assert lookup.next_queries() == []
    expected = true_closest([s.peer_id for s in seeds], target, ALPHA)
    assert [p.peer_id for p in first] == expected
    lookup.on_failure(first[0].peer_id)
    assert len(lookup.next_queries()) == 1
    assert lookup.in_flight == ALPHA


def test_terminates_when_k_closest_answered() -> None:
    target = kad_key(b"t")
    seeds = [PeerInfo(pid(n)) for n in range(5)]
    lookup = Lookup(target, seeds, k=3, alpha=5)
    asked = lookup.next_queries()
    assert len(asked) == 3  # only the k closest are worth asking
    for p in asked:
        assert not lookup.finished
        lookup.on_response(p.peer_id, [])
    assert lookup.finished
    want = true_closest([s.peer_id for s in seeds], target, 3)
    assert [p.peer_id for p in lookup.closest()] == want


def test_failed_peers_are_replaced_by_next_closest() -> None:
    target = kad_key(b"t")
    ids = [pid(n) for n in range(6)]
    lookup = Lookup(target, [PeerInfo(p) for p in ids], k=3, alpha=3)
    order = true_closest(ids, target, 6)
    for p in lookup.next_queries():
        lookup.on_failure(p.peer_id)
    assert lookup.state_of(order[0]) is PeerState.FAILED
    nxt = lookup.next_queries()
    assert [p.peer_id for p in nxt] == order[3:6]
    for p in nxt:
        lookup.on_response(p.peer_id, [])
    assert lookup.finished and [p.peer_id for p in lookup.closest()] == order[3:6]
    assert lookup.stats().failures == 3 and lookup.stats().queries == 6


def test_ignores_unsolicited_and_duplicate_answers_and_self() -> None:
    lookup = Lookup(kad_key(b"t"), [PeerInfo(pid(1))], local_peer_id=b"me")
    lookup.on_response(pid(1), [PeerInfo(pid(2))])  # not in flight yet
    assert lookup.state_of(pid(2)) is None
    (p,) = lookup.next_queries()
    lookup.on_response(p.peer_id, [PeerInfo(b"me"), PeerInfo(pid(3))])
    lookup.on_response(p.peer_id, [PeerInfo(pid(4))])  # duplicate answer
    lookup.on_failure(p.peer_id)  # late failure after success
    assert lookup.state_of(b"me") is None and lookup.state_of(pid(4)) is None
    assert lookup.state_of(pid(1)) is PeerState.SUCCEEDED


def test_empty_seeds_finish_immediately_and_cancel() -> None:
    assert Lookup(kad_key(b"t"), []).finished
    lookup = Lookup(kad_key(b"t"), [PeerInfo(pid(1))])
    lookup.cancel()
    assert lookup.finished and lookup.next_queries() == []
    with pytest.raises(ValueError):
        Lookup(b"short", [])


def test_response_peer_count_is_capped() -> None:
    lookup = Lookup(kad_key(b"t"), [PeerInfo(pid(0))], k=2)
    (p,) = lookup.next_queries()
    lookup.on_response(p.peer_id, [PeerInfo(pid(n)) for n in range(1, 100)])
    seen = [n for n in range(1, 100) if lookup.state_of(pid(n)) is not None]
    assert len(seen) == 4  # 2 * k


@pytest.mark.parametrize("build", ["full", "joined"])
def test_converges_to_true_k_closest_200_peers(build: str) -> None:
    ids = [pid(n) for n in range(200)]
    net = Net(ids, seed=11)
    net.fill_fully() if build == "full" else net.join_sequentially()
    rng = random.Random(99)
    for _ in range(30):
        origin = rng.choice(ids)
        target = kad_key(rng.randbytes(8))
        lookup = net.lookup(origin, target)
        got = [p.peer_id for p in lookup.closest()]
        want = true_closest([p for p in ids if p != origin], target)
        assert got == want


def test_converges_with_dead_peers() -> None:
    # 20 % of the peers are dead but still listed in every routing table, so answers
    # carry stale entries. The lookup must still return only live peers that answered,
    # always find the 10 closest live peers, and most of the 20 closest.
    ids = [pid(n) for n in range(200)]
    net = Net(ids, seed=5)
    net.fill_fully()
    rng = random.Random(6)
    net.dead = set(rng.sample(ids, 40))
    alive = [p for p in ids if p not in net.dead]
    recall = []
    for _ in range(30):
        origin = rng.choice(alive)
        target = kad_key(rng.randbytes(8))
        lookup = net.lookup(origin, target)
        got = [p.peer_id for p in lookup.closest()]
        want = true_closest([p for p in alive if p != origin], target)
        assert 10 <= len(got) <= K and not set(got) & net.dead
        assert got[:10] == want[:10]
        assert lookup.stats().failures > 0
        recall.append(len(set(got) & set(want)) / K)
    assert sum(recall) / len(recall) >= 0.85


class _SeqValidator:
    """Values are b"<seq>:<payload>"; higher seq wins; b"bad" is invalid."""

    def validate(self, key: bytes, value: bytes) -> None:
        if not value.split(b":")[0].isdigit():
            raise RecordInvalid("bad")

    def select(self, key: bytes, values) -> int:
        return max(range(len(values)), key=lambda i: (int(values[i].split(b":")[0]), -i))


def test_value_lookup_stops_at_quorum_and_tracks_outdated() -> None:
    key = b"/test/k"
    seeds = [PeerInfo(pid(n)) for n in range(8)]
    lookup = ValueLookup(key, seeds, validator=_SeqValidator(), quorum=3)
    assert lookup.target_key == kad_key(key)
    a, b, c = lookup.next_queries()
    lookup.on_value_response(a.peer_id, [], Record(key, b"1:old"))
    lookup.on_value_response(b.peer_id, [], Record(key, b"bad"))
    lookup.on_value_response(c.peer_id, [], Record(key, b"2:new"))
    assert not lookup.finished and lookup.invalid == 1
    (d,) = lookup.next_queries()[:1]
    lookup.on_value_response(d.peer_id, [], Record(key, b"2:new"))
    assert lookup.finished and lookup.best == b"2:new"
    assert lookup.best_peers == [c.peer_id, d.peer_id]
    assert lookup.outdated == [a.peer_id]


def test_value_lookup_ignores_records_for_other_keys_and_finishes_without_value() -> None:
    lookup = ValueLookup(b"/test/k", [PeerInfo(pid(1))], validator=_SeqValidator())
    (p,) = lookup.next_queries()
    lookup.on_value_response(p.peer_id, [], Record(b"/test/other", b"1:x"))
    assert lookup.finished and lookup.best is None


def test_empty_and_overlong_peer_ids_are_ignored() -> None:
    lookup = Lookup(kad_key(b"t"), [PeerInfo(b""), PeerInfo(pid(1))])
    (p,) = lookup.next_queries()
    lookup.on_response(p.peer_id, [PeerInfo(b""), PeerInfo(b"x" * 129), PeerInfo(b"x" * 128)])
    assert lookup.state_of(b"") is None and lookup.state_of(b"x" * 129) is None
    assert lookup.state_of(b"x" * 128) is PeerState.CANDIDATE


def test_value_lookup_local_value_counts_towards_quorum() -> None:
    lookup = ValueLookup(b"/test/k", [PeerInfo(pid(1))], validator=_SeqValidator())
    lookup.on_local_value(b"3:mine")
    assert lookup.finished and lookup.best == b"3:mine" and lookup.best_peers == []
    two = ValueLookup(b"/test/k", [PeerInfo(pid(1))], validator=_SeqValidator(), quorum=2)
    two.on_local_value(b"1:old")
    (p,) = two.next_queries()
    two.on_value_response(p.peer_id, [], Record(b"/test/k", b"2:new"))
    assert two.finished and two.best == b"2:new" and two.outdated == []


def test_a_stalled_request_frees_its_slot_and_a_late_answer_still_counts() -> None:
    target = kad_key(b"t")
    ids = [pid(n) for n in range(6)]
    order = true_closest(ids, target, 6)
    lookup = Lookup(target, [PeerInfo(p) for p in ids], k=3, alpha=2, retries=0)
    first = [p.peer_id for p in lookup.next_queries()]
    assert first == order[:2]
    assert not lookup.on_stall(order[0])  # slow: stop waiting for it (no re-ask)
    assert lookup.state_of(order[0]) is PeerState.STALLED and lookup.in_flight == 1
    assert [p.peer_id for p in lookup.next_queries()] == [order[2]]
    lookup.on_response(order[1], [])
    lookup.on_response(order[2], [])
    assert [p.peer_id for p in lookup.next_queries()] == [order[3]]
    lookup.on_response(order[3], [])
    # the stalled peer is not among the k closest live ones: the lookup is done
    assert lookup.finished and [p.peer_id for p in lookup.closest()] == order[1:4]
    lookup.on_response(order[0], [PeerInfo(pid(99))])  # answers late: used after all
    assert lookup.state_of(order[0]) is PeerState.SUCCEEDED
    assert lookup.state_of(pid(99)) is PeerState.CANDIDATE
    assert lookup.stats().stalls == 1 and lookup.stats().responses == 4
    again = Lookup(target, [PeerInfo(order[0])], retries=0)
    again.next_queries()
    again.on_stall(order[0])
    again.on_failure(order[0])  # the hard timeout of a stalled request
    assert again.state_of(order[0]) is PeerState.FAILED and again.finished


def test_avoided_peers_are_not_asked_and_are_checked_again_before_asking() -> None:
    target = kad_key(b"t")
    ids = [pid(n) for n in range(5)]
    order = true_closest(ids, target, 5)
    locked = {order[0]}
    lookup = Lookup(target, [PeerInfo(p) for p in ids], k=3, alpha=1,
                    avoid=lambda p: p in locked)
    assert [p.peer_id for p in lookup.next_queries()] == [order[1]]
    locked.add(order[2])  # e.g. failed in another lookup meanwhile
    lookup.on_response(order[1], [])  # nothing closer: the rest are asked at once
    assert [p.peer_id for p in lookup.next_queries()] == [order[3], order[4]]
    lookup.on_response(order[3], [])
    lookup.on_response(order[4], [])
    assert lookup.finished and lookup.stats().avoided == 2


def test_disjoint_paths_never_ask_a_peer_twice_and_ask_more_peers() -> None:
    ids = [pid(n) for n in range(200)]
    net = Net(ids, seed=3)
    net.fill_fully()
    rng = random.Random(4)
    for _ in range(10):
        origin = rng.choice(ids)
        target = kad_key(rng.randbytes(8))
        one = net.lookup(origin, target)
        two = net.lookup(origin, target, paths=2)
        want = true_closest([p for p in ids if p != origin], target)
        assert [p.peer_id for p in two.closest()] == want  # still exact
        asked = [e for e in two._sorted if e.path >= 0]
        assert two.stats().queries == len(asked)  # one request per asked peer
        assert {e.path for e in asked} == {0, 1}
        # each path stops only when its own k closest usable peers answered, so the
        # two together ask more peers near the target (how many more depends on how
        # many distinct peers the answers name)
        assert two.stats().queries > one.stats().queries


def test_paths_without_seeds_share_the_first_answer() -> None:
    target = kad_key(b"t")
    lookup = Lookup(target, [PeerInfo(pid(0))], k=2, alpha=1, paths=3)
    (p,) = lookup.next_queries()
    assert lookup.next_queries() == []  # the other paths know nobody yet
    lookup.on_response(p.peer_id, [PeerInfo(pid(n)) for n in range(1, 7)])
    asked = lookup.next_queries()
    assert len(asked) == 3  # one request per path now
    paths = {lookup._entries[a.peer_id].path for a in asked}
    assert paths == {0, 1, 2}
    with pytest.raises(ValueError):
        Lookup(target, [], paths=0)


def test_a_round_without_progress_asks_all_remaining_k_closest_at_once() -> None:
    target = kad_key(b"t")
    ids = [pid(n) for n in range(1, 10)]
    order = true_closest(ids, target, 9)
    lookup = Lookup(target, [PeerInfo(p) for p in order[2:8]], k=6, alpha=2)
    assert [p.peer_id for p in lookup.next_queries()] == order[2:4]
    lookup.on_response(order[2], [PeerInfo(order[1])])  # closer: still alpha
    assert [p.peer_id for p in lookup.next_queries()] == [order[1]]
    lookup.on_response(order[3], [])
    lookup.on_response(order[1], [PeerInfo(order[8])])  # a round without progress
    asked = [p.peer_id for p in lookup.next_queries()]
    assert asked == order[4:7]  # every unasked one among the 6 closest, at once
    lookup.on_response(order[4], [PeerInfo(order[0])])  # closer again: alpha again
    assert [p.peer_id for p in lookup.next_queries()] == []  # 2 still in flight
    lookup.on_response(order[5], [])
    assert [p.peer_id for p in lookup.next_queries()] == [order[0]]
