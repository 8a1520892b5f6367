"""node.tasks.schedule: the pure scheduling rules, against a brute-force model (Hypothesis)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.tasks.schedule import (
    QUEUED,
    Entry,
    Outcome,
    RetryPolicy,
    Scheduler,
    after_attempt,
    backoff_delay,
    recover,
)

ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(-2, 2), st.integers(0, 20), st.integers(1, 40)),
    st.tuples(st.just("next"), st.integers(0, 3)),
    st.tuples(st.just("finish"), st.integers(0, 30)),
    st.tuples(st.just("remove"), st.integers(0, 30)),
    st.tuples(st.just("expire"), st.integers(0, 3)),
), max_size=80)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 4))
def test_scheduler_matches_a_brute_force_model(program, concurrency):
    sched = Scheduler(concurrency)
    model: dict[str, Entry] = {}
    running: set[str] = set()
    now, counter = 0.0, 0
    for op in program:
        if op[0] == "add":
            counter += 1
            e = Entry(f"t{counter}", op[1], counter, now + op[3], now + op[2])
            sched.add(e)
            model[e.task_id] = e
        elif op[0] == "next":
            now += op[1]
            got = sched.next(now)
            ready = [e for e in model.values() if e.not_before <= now]
            if len(running) >= concurrency or not ready:
                assert got is None
            else:
                best = min(ready, key=lambda e: (-e.priority, e.order))
                assert got == best
                del model[got.task_id]
                running.add(got.task_id)
        elif op[0] == "finish":
            tid = f"t{op[1]}"
            sched.finished(tid)
            running.discard(tid)
        elif op[0] == "remove":
            tid = f"t{op[1]}"
            assert (sched.remove(tid) is not None) == (tid in model)
            model.pop(tid, None)
        else:
            now += op[1]
            gone = sched.expired(now)
            want = sorted((e for e in model.values() if e.deadline <= now),
                          key=lambda e: (e.deadline, e.order))
            assert gone == want
            for e in gone:
                del model[e.task_id]
        wake = sched.next_wakeup()
        times = [e.deadline for e in model.values()]
        if len(running) < concurrency:
            times += [e.not_before for e in model.values() if e.not_before > now]
        assert wake == (min(times) if times else None) or (
            wake is not None and wake <= now and len(running) < concurrency)
        assert len(sched) == len(model) and sched.running == running


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10), st.integers(1, 10), st.floats(0, 100), st.floats(0.1, 200),
       st.sampled_from(["error", "attempt_timeout"]), st.booleans(), st.integers(0, 2**32))
def test_retry_decisions_respect_attempts_deadline_and_backoff(
        attempt, max_attempts, now, left, kind, retryable, seed):
    policy = RetryPolicy(base_s=0.5, cap_s=8.0, jitter=0.5)
    deadline = now + left
    tr = after_attempt(Outcome(kind, "why", retryable), attempt=attempt,
                       max_attempts=max_attempts, deadline=deadline, now=now,
                       policy=policy, rng=random.Random(seed))
    if tr.state == QUEUED:
        assert attempt < max_attempts and (retryable or kind == "attempt_timeout")
        delay = tr.not_before - now
        raw = min(8.0, 0.5 * 2 ** (attempt - 1))
        assert raw * 0.5 - 1e-9 <= delay <= raw + 1e-9 and tr.not_before < deadline
    else:
        assert tr.state == ("timed_out" if kind == "attempt_timeout" else "failed")
        no_time = now + backoff_delay(attempt, policy, random.Random(seed)) >= deadline
        assert attempt >= max_attempts or (kind == "error" and not retryable) or no_time


def test_terminal_outcomes_and_recovery():
    p, rng = RetryPolicy(), random.Random(1)
    kw = dict(attempt=1, max_attempts=3, deadline=10.0, now=1.0, policy=p, rng=rng)
    assert after_attempt(Outcome("ok"), **kw).state == "succeeded"
    assert after_attempt(Outcome("cancelled"), **kw).state == "cancelled"
    assert after_attempt(Outcome("no_handler", "no handler for type x"), **kw).reason == \
        "no handler for type x"
    assert after_attempt(Outcome("deadline"), **kw).state == "timed_out"
    with pytest.raises(ValueError):
        after_attempt(Outcome("weird"), **kw)
    assert recover(attempt=1, max_attempts=3, deadline=10, now=2).state == "queued"
    assert recover(attempt=3, max_attempts=3, deadline=10, now=2).state == "failed"
    assert recover(attempt=1, max_attempts=3, deadline=10, now=10).state == "timed_out"
    assert backoff_delay(100, RetryPolicy(base_s=1, cap_s=5, jitter=0), rng) == 5
    with pytest.raises(ValueError):
        RetryPolicy(jitter=2)
    with pytest.raises(ValueError):
        Scheduler(0)
