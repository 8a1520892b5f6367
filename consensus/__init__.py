"""meshnode consensus: a pure PBFT core (Castro & Liskov, TOCS 2002), f < n/3.

Module map
----------
``replica``     :class:`Replica` and :class:`Config`: ``step/tick/propose/signed/ready/advance``
``effects``     ``Ready`` (persist, sign_requests, messages, committed), ``Record``, ``Decision``
``messages``    frozen wire dataclasses and the strict codec (``encode_message``/``decode_message``)
``wire``        the generic codec machinery the messages are declared with
``normal``      the normal-case hot path (pre-prepare, prepare, commit, execute) and ``Slot``
``certificate`` ``verify(cert, members) -> Batch``: offline check of commit certificates
``quorum``      ``Membership`` (id -> Ed25519 key), n, f, quorum arithmetic
``batching``    request pool, batching, timers and re-sends
``viewchange``  view change / new view with prepared certificates (TOCS 4.4)
``checkpoint``  checkpoints, watermarks, garbage collection, state transfer (4.3, 6.2)
``persist``     record kinds and ``restore(records)`` (persist before send)
``leader``      reputation-aware primary selection from committed state
``evidence``    equivocation evidence
``membership``  quorum-endorsed member changes, effective at a checkpoint boundary
``state``       the replicated state (application, client table, members, reputation)
``resolution``  built-in claims state machine: first in committed order wins

Time is *ticks*: the driver calls ``tick()`` once per tick and chooses what a tick is in
wall time (a node: e.g. 10 ms; the simulator: one step of its clock). Every duration in
:class:`~consensus.replica.Config` is a number of ticks. No I/O, clock or global
randomness here (import-linter contract in ``pyproject.toml``).
"""
