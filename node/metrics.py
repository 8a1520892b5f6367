"""Prometheus metrics for one node (prometheus-client), served on 127.0.0.1 by default.

Metrics (all prefixed ``meshnode_``): ``peers`` (connected peers), ``members``,
``view``, ``last_decided`` (sequence number), ``decisions_total``, ``commit_latency_
seconds`` (histogram: propose to local execution, for operations proposed here),
``dropped_messages_total{reason}`` (transport drops: queue_full, oversized,
rate_limited, stream_error) and ``consensus_dropped_total`` (messages the replica
refused). Each runtime has its own registry, so several nodes can run in one process.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("meshnode.metrics")

__all__ = ["Metrics"]


class Metrics:
    """The node's metrics and their HTTP endpoint."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.peers = Gauge("meshnode_peers", "Connected libp2p peers", registry=r)
        self.members = Gauge("meshnode_members", "Members in the current view", registry=r)
        self.view = Gauge("meshnode_view", "Current PBFT view", registry=r)
        self.last_decided = Gauge("meshnode_last_decided", "Last executed sequence number",
                                  registry=r)
        self.decisions = Counter("meshnode_decisions", "Decisions executed", registry=r)
        self.commit_latency = Histogram(
            "meshnode_commit_latency_seconds", "Propose to local execution (seconds)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.dropped = Counter("meshnode_dropped_messages", "Frames dropped by the transport",
                               ["reason"], registry=r)
        self.consensus_dropped = Gauge("meshnode_consensus_dropped",
                                       "Messages refused by the replica", registry=r)
        self._server: Any = None

    def on_decision(self, decision: Any) -> None:
        self.decisions.inc()
        self.last_decided.set(decision.seq)

    def on_drop(self, peer_id: str, reason: str) -> None:
        self.dropped.labels(reason=reason).inc()

    def serve(self, listen: str) -> tuple[str, int]:
        """Start the HTTP endpoint on ``host:port`` (port 0 picks one); returns the
        bound address. Raises ValueError for a malformed address, OSError if taken."""
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"metrics listen address must be host:port, got {listen!r}")
        self._server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        bound = self._server.server_address[:2]
        log.info("metrics on http://%s:%d/metrics", *bound)
        return bound

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    async def collect_forever(self, runtime: Any, interval_s: float = 1.0) -> None:
        """Refresh the gauges from the runtime every ``interval_s`` seconds."""
        while True:
            parts = runtime.parts
            replica = parts.driver.replica
            self.peers.set(len(parts.transport.connected_peers()))
            self.members.set(replica.members.n)
            self.view.set(replica.view)
            self.last_decided.set(replica.last_executed)
            self.consensus_dropped.set(sum(sum(v.values()) for v in replica.drops.values()))
            await trio.sleep(interval_s)
