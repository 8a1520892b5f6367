"""PeerHealth (backoff locks, RTT-based stall timeout) and the in-flight request table."""

from __future__ import annotations

import pytest

from node.dht.health import InFlight, PeerHealth, Pending
from node.dht.messages import MessageType, PeerInfo


def health(**kw) -> PeerHealth:
    args = {"backoff": 30.0, "backoff_max": 100.0, "capacity": 3, "initial": 1.0,
            "floor": 0.2, "ceiling": 10.0}
    args.update(kw)
    return PeerHealth(**args)


def test_backoff_doubles_per_consecutive_failure_up_to_the_cap() -> None:
    h = health()
    assert not h.locked(b"a", 0.0) and h.failures(b"a") == 0
    assert h.failed(b"a", now=0.0) == 1
    assert h.locked(b"a", 29.9) and not h.locked(b"a", 30.0)
    assert h.failed(b"a", now=40.0) == 2  # 60 s
    assert h.locked(b"a", 99.9) and not h.locked(b"a", 100.0)
    assert h.failed(b"a", now=100.0) == 3  # 120 s, capped at 100 s
    assert h.locked(b"a", 199.9) and not h.locked(b"a", 200.0)
    h.answered(b"a")  # an answer clears the record
    assert h.failures(b"a") == 0 and not h.locked(b"a", 150.0)


def test_the_first_lock_can_wait_for_a_second_failure_in_a_row() -> None:
    h = health(lock_after=2)
    assert h.failed(b"a", now=0.0) == 1 and not h.locked(b"a", 0.0)  # a lost message?
    assert h.failed(b"a", now=5.0) == 2 and h.locked(b"a", 34.9)  # 30 s from the 2nd
    assert not h.locked(b"a", 35.0)
    assert h.failed(b"a", now=40.0) == 3 and h.locked(b"a", 99.9)  # then 60 s
    h.answered(b"a")
    assert h.failed(b"a", now=100.0) == 1 and not h.locked(b"a", 100.0)
    with pytest.raises(ValueError):
        health(lock_after=0)


def test_records_are_bounded_and_the_least_recently_failed_is_forgotten() -> None:
    h = health(capacity=3)
    for name in (b"a", b"b", b"c"):
        h.failed(name, now=0.0)
    h.failed(b"a", now=1.0)  # a failed again: now the most recent
    h.failed(b"d", now=2.0)  # evicts b, the least recently failed
    assert len(h) == 3 and h.failures(b"b") == 0
    assert h.failures(b"a") == 2 and h.locked(b"c", 2.0) and h.locked(b"d", 2.0)


def test_stall_timeout_follows_the_rtt_estimate_within_bounds() -> None:
    h = health()
    assert h.stall_timeout() == 1.0  # no sample yet: the initial value
    h.answered(b"a", rtt=0.1)  # srtt 0.1, rttvar 0.05: max(0.2, 0.1 + 0.2)
    assert h.stall_timeout() == pytest.approx(0.3)
    for _ in range(50):
        h.answered(b"a", rtt=0.1)
    assert h.stall_timeout() == pytest.approx(0.2, abs=1e-3)  # 2 srtt, at the floor
    for _ in range(50):
        h.answered(b"a", rtt=30.0)
    assert h.stall_timeout() == 10.0  # the ceiling (the hard request timeout)
    h.answered(b"a", rtt=-5.0)  # a clock step: ignored
    assert h.stall_timeout() == 10.0
    with pytest.raises(ValueError):
        health(floor=0.0)
    with pytest.raises(ValueError):
        health(floor=11.0)


def _pending(peer: bytes, sent: float, *, stall: float | None) -> Pending:
    return Pending(PeerInfo(peer), 1, MessageType.FIND_NODE, sent, sent + 10.0,
                   None if stall is None else sent + stall)


def test_in_flight_reports_stalls_then_hard_deadlines_in_time_order() -> None:
    table = InFlight()
    table.add(1, _pending(b"a", 0.0, stall=0.5))
    table.add(2, _pending(b"b", 0.1, stall=None))
    table.add(3, _pending(b"c", 0.2, stall=0.5))
    assert table.next_deadline() == 0.5
    assert list(table.due(0.4)) == []
    due = list(table.due(0.8))
    assert [(rid, hard) for rid, _, hard in due] == [(1, False), (3, False)]
    due[0][1].stalled = True
    # request 3's stall was reported but not taken up (e.g. its lookup had ended)
    assert table.next_deadline() == 10.0  # request 1's stall time is done with
    assert table.pop(1).peer.peer_id == b"a"
    assert table.pop(1) is None  # a late answer
    hard = list(table.due(10.2))
    assert [(rid, h) for rid, _, h in hard] == [(2, True), (3, True)]
    assert len(table) == 0 and table.next_deadline() is None


def test_cold_requests_that_need_a_dial_have_their_own_estimate() -> None:
    h = health()
    assert h.stall_timeout(cold=True) == h.stall_timeout() == 1.0
    for _ in range(30):
        h.answered(b"a", rtt=0.5, cold=True)  # dial + request
    assert h.stall_timeout(cold=True) == pytest.approx(1.0, abs=0.01)
    assert h.stall_timeout() == pytest.approx(1.0, abs=0.01)  # no warm sample: the cold one
    for _ in range(30):
        h.answered(b"a", rtt=0.05)  # over an open connection
    assert h.stall_timeout() == pytest.approx(0.2)  # 2 x 0.05 is under the floor
    assert h.stall_timeout(cold=True) == pytest.approx(1.0, abs=0.01)
