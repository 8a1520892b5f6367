"""Message transport: pure framing and rate limits, and the libp2p host adapter.

``framing`` and ``ratelimit`` are pure (no trio, libp2p, socket, time) so the simulator
can use them; ``host`` is the trio/libp2p shell. Nothing is imported here, so importing
the pure modules does not pull in libp2p.
"""
