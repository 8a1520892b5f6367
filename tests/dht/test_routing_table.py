"""Routing table: bucket invariants, closest() vs brute force, full-bucket policy, refresh."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from node.dht.keys import common_prefix_length, kad_key, xor_distance
from node.dht.routing_table import K, RoutingTable, UpdateStatus


def pid(n: int) -> bytes:
    return b"peer-" + n.to_bytes(4, "big")


def table(local: bytes = b"local", **kw) -> RoutingTable:
    return RoutingTable(local, rng=random.Random(1), **kw)


def fill_bucket(t: RoutingTable, index: int, count: int, start: int = 0) -> list[bytes]:
    """PeerIds of ``count`` new peers that land in bucket ``index``."""
    found: list[bytes] = []
    n = start
    while len(found) < count:
        n += 1
        p = pid(n)
        if common_prefix_length(t.local_key, kad_key(p)) == index:
            found.append(p)
    return found


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 5000), min_size=0, max_size=400, unique=True),
    st.binary(min_size=32, max_size=32),
    st.integers(1, 40),
)
def test_invariants_and_closest_match_brute_force(ns: list[int], target: bytes, count: int) -> None:
    t = table()
    for i, n in enumerate(ns):
        t.update(pid(n), now=float(i))
    stored = list(t.contacts())
    assert len(stored) == len(t)
    for index in range(256):
        bucket = t.bucket(index)
        assert len(bucket) <= K
        for c in bucket:
            assert common_prefix_length(t.local_key, c.key) == index
        assert [c.last_seen for c in bucket] == sorted(c.last_seen for c in bucket)
    expected = sorted(stored, key=lambda c: xor_distance(c.key, target))[:count]
    assert [c.peer_id for c in t.closest(target, count)] == [c.peer_id for c in expected]


def test_touch_moves_to_tail_and_refreshes_addrs() -> None:
    t = table()
    a, b = fill_bucket(t, 0, 2)
    t.update(a, [b"addr1"], now=1.0)
    t.update(b, now=2.0)
    assert t.update(a, [b"addr2"], now=3.0).status is UpdateStatus.UPDATED
    assert [c.peer_id for c in t.bucket(0)] == [b, a]
    assert t.get(a).addrs == (b"addr2",) and t.get(a).last_seen == 3.0
    t.update(a, now=4.0)  # empty addrs keep the known ones
    assert t.get(a).addrs == (b"addr2",)


def test_local_peer_is_never_stored() -> None:
    t = table()
    assert t.update(b"local", now=0.0).status is UpdateStatus.SELF
    assert len(t) == 0


def test_full_bucket_keeps_live_oldest_and_caches_newcomer() -> None:
    t = table(k=3, ping_timeout=5.0)
    first = fill_bucket(t, 0, 5)
    for i, p in enumerate(first[:3]):
        assert t.update(p, now=float(i)).status is UpdateStatus.ADDED
    res = t.update(first[3], now=10.0)
    assert res.status is UpdateStatus.CACHED and res.ping == first[0]
    # one ping per bucket in flight: the next newcomer does not ask again ...
    assert t.update(first[4], now=11.0).ping is None
    # ... the oldest answers: it stays (now most recent), newcomers wait in the cache
    t.ping_result(first[0], True, now=12.0)
    assert [c.peer_id for c in t.bucket(0)] == [first[1], first[2], first[0]]
    assert [c.peer_id for c in t.replacements(0)] == [first[3], first[4]]


def test_dead_oldest_is_replaced_by_newest_replacement() -> None:
    t = table(k=3)
    ps = fill_bucket(t, 0, 5)
    for i, p in enumerate(ps):
        t.update(p, now=float(i))
    t.ping_result(ps[0], False, now=10.0)
    assert [c.peer_id for c in t.bucket(0)] == [ps[1], ps[2], ps[4]]
    assert [c.peer_id for c in t.replacements(0)] == [ps[3]]
    assert ps[0] not in t


def test_ping_is_asked_again_after_timeout() -> None:
    t = table(k=1, ping_timeout=5.0)
    a, b, c = fill_bucket(t, 0, 3)
    t.update(a, now=0.0)
    assert t.update(b, now=1.0).ping == a
    assert t.update(c, now=3.0).ping is None
    assert t.update(c, now=6.5).ping == a


def test_remove_on_failure_promotes_replacement_and_cache_is_bounded() -> None:
    t = table(k=2, replacement_cache_size=2)
    ps = fill_bucket(t, 0, 6)
    for i, p in enumerate(ps):
        t.update(p, now=float(i))
    assert [c.peer_id for c in t.replacements(0)] == [ps[4], ps[5]]
    assert t.remove(ps[1]) is True
    assert [c.peer_id for c in t.bucket(0)] == [ps[0], ps[5]]
    assert t.remove(ps[1]) is False
    assert t.remove(ps[4]) is False  # forgotten from the cache too
    assert t.replacements(0) == []


def test_failed_contact_is_kept_flagged_until_a_replacement_exists() -> None:
    # Kademlia paper 4.1: stale contacts are evicted only in favour of a replacement
    t = table(k=2)
    a, b, c, d = fill_bucket(t, 0, 4)
    t.update(a, now=0.0)
    t.update(b, now=1.0)
    assert t.record_failure(a) is False  # no replacement: kept, flagged stale
    assert a in t and t.get(a).failures == 1
    assert t.closest(t.local_key, 5, skip_stale=lambda p: True) == [t.get(b)]
    assert len(t.closest(t.local_key, 5, skip_stale=lambda p: False)) == 2
    t.record_answer(a)  # it answered again: no longer stale
    assert t.get(a).failures == 0
    t.record_failure(a)
    t.record_failure(a)
    t.record_failure(b)
    # a newcomer to the full bucket takes the slot of the most-failed contact
    res = t.update(c, now=2.0)
    assert res.status is UpdateStatus.ADDED and res.ping is None
    assert [x.peer_id for x in t.bucket(0)] == [b, c]
    # a newcomer known to have failed as often does not displace it
    assert t.update(d, now=3.0, failures=1).status is UpdateStatus.CACHED
    assert t.record_failure(b) is True  # now a replacement exists: b is evicted
    assert [x.peer_id for x in t.bucket(0)] == [c, d] and b not in t
    assert t.get(d).failures == 1  # what the caller remembered travels with it
    assert t.record_failure(b"unknown") is False


def test_a_contact_is_stale_only_after_stale_after_failures_in_a_row() -> None:
    t = table(k=1, stale_after=2)
    a, b, c = fill_bucket(t, 0, 3)
    t.update(a, now=0.0)
    t.update(b, now=1.0)  # cached behind the full bucket
    assert t.record_failure(a) is False and a in t  # one failure: not stale yet
    assert t.update(c, now=2.0).status is UpdateStatus.CACHED  # so no eviction
    assert t.record_failure(a) is True  # stale, and a replacement exists
    assert [x.peer_id for x in t.bucket(0)] == [c]


def test_closest_excludes_and_rejects_bad_keys() -> None:
    t = table()
    for n in range(100):
        t.update(pid(n), now=0.0)
    target = kad_key(pid(7))
    assert t.closest(target, 1)[0].peer_id == pid(7)
    assert pid(7) not in [c.peer_id for c in t.closest(target, 5, exclude=[pid(7)])]
    with pytest.raises(ValueError):
        t.closest(b"short", 3)


def test_bucket_index_and_random_key_in_bucket() -> None:
    t = table()
    for index in (0, 1, 7, 100, 254, 255):
        for _ in range(5):
            key = t.random_key_in_bucket(index)
            assert len(key) == 32
            assert t.bucket_index(key) == index
    with pytest.raises(ValueError):
        t.bucket_index(t.local_key)
    with pytest.raises(ValueError):
        t.random_key_in_bucket(256)


def test_refresh_is_staggered_at_start() -> None:
    t = RoutingTable(b"local", rng=random.Random(7), now=100.0, refresh_interval=600.0)
    times = [t.next_refresh_at(i) for i in range(16)]
    assert len(set(times)) == 16  # no two buckets due at the same instant
    assert all(100.0 <= x < 700.0 for x in times)
    spread = sorted(times)
    assert max(b - a for a, b in zip([100.0, *spread], [*spread, 700.0], strict=True)) < 300.0


def test_many_nodes_started_together_do_not_storm() -> None:
    rng = random.Random(3)
    tables = [RoutingTable(pid(n), rng=rng, now=0.0, refresh_interval=600.0) for n in range(200)]
    times = [t.next_refresh_at(i) for t in tables for i in range(16)]
    per_window = [0] * 60  # 10-second windows over the 600-second interval
    for x in times:
        per_window[int(x // 10)] += 1
    mean = len(times) / 60
    assert max(per_window) < 2 * mean and min(per_window) > mean / 2


def test_due_refreshes_and_mark_refreshed() -> None:
    t = RoutingTable(b"local", rng=random.Random(5), now=0.0, refresh_interval=100.0)
    for n in range(300):
        t.update(pid(n), now=0.0)
    assert t.due_refreshes(0.0) == []
    due = t.due_refreshes(100.0)
    assert due and len(due) == len(set(due))
    assert [t.next_refresh_at(i) for i in due] == sorted(t.next_refresh_at(i) for i in due)
    for i in due:
        t.mark_refreshed(i, now=100.0)
        assert 190.0 <= t.next_refresh_at(i) <= 210.0
    assert t.due_refreshes(100.0) == []


def test_empty_table_refreshes_only_bucket_zero() -> None:
    t = RoutingTable(b"local", rng=random.Random(5), now=0.0, refresh_interval=10.0)
    assert t.due_refreshes(1e9) == [0]


def test_random_preimage_in_bucket_is_a_multihash_peer_id() -> None:
    t = table()
    for index in (0, 3, 9):
        preimage = t.random_preimage_in_bucket(index)
        assert len(preimage) == 34 and preimage[:2] == b"\x12\x20"
        assert t.bucket_index(kad_key(preimage)) == index
    with pytest.raises(ValueError):
        t.random_preimage_in_bucket(21)


class TableMachine(RuleBasedStateMachine):
    """Random updates, removals, failures, answers and ping outcomes keep the table
    consistent."""

    def __init__(self) -> None:
        super().__init__()
        self.t = RoutingTable(b"local", rng=random.Random(0), k=3, replacement_cache_size=2,
                              ping_timeout=1.0, stale_after=2)
        self.now = 0.0

    @rule(n=st.integers(0, 60))
    def update(self, n: int) -> None:
        self.now += 0.5
        res = self.t.update(pid(n), now=self.now)
        if res.ping is not None:
            assert res.ping in self.t

    @rule(n=st.integers(0, 60))
    def remove(self, n: int) -> None:
        self.t.remove(pid(n))

    @rule(n=st.integers(0, 60))
    def record_failure(self, n: int) -> None:
        self.t.record_failure(pid(n))

    @rule(n=st.integers(0, 60))
    def record_answer(self, n: int) -> None:
        self.t.record_answer(pid(n))

    @rule(n=st.integers(0, 60), alive=st.booleans())
    def ping_result(self, n: int, alive: bool) -> None:
        self.now += 0.5
        self.t.ping_result(pid(n), alive, now=self.now)

    @invariant()
    def consistent(self) -> None:
        in_buckets = [c.peer_id for c in self.t.contacts()]
        assert len(in_buckets) == len(set(in_buckets)) == len(self.t)
        for index in range(256):
            bucket, cache = self.t.bucket(index), self.t.replacements(index)
            assert len(bucket) <= 3 and len(cache) <= 2
            cached = [c.peer_id for c in cache]
            assert len(cached) == len(set(cached))
            assert not set(cached) & set(in_buckets)
            for c in bucket + cache:
                assert self.t.bucket_index(c.key) == index
            if cache:
                assert len(bucket) == 3  # a replacement waits only behind a full bucket
            # internal bookkeeping: stale contacts counted per bucket
            assert self.t._buckets[index].stale == sum(
                1 for c in bucket if c.failures >= self.t.stale_after)
        assert self.t._deepest == max(
            (i for i in range(256) if self.t.bucket(i)), default=-1)
        for p in in_buckets:
            assert self.t.get(p).peer_id == p


TestTableMachine = TableMachine.TestCase
TestTableMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
