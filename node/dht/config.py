"""Configuration and effect types of the Kademlia core (pure dataclasses).

:class:`DhtConfig` holds the tunables one :class:`~node.dht.core.DhtNode` runs with; the
real node and the simulator both use its defaults. :class:`Ready` is what
:meth:`~node.dht.core.DhtNode.ready` returns: :class:`OutboundRequest` effects for the
driver to carry out and :class:`QueryResult` for finished queries. All are re-exported
by :mod:`node.dht.core`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from node.dht.lookup import ALPHA, LookupStats
from node.dht.messages import Message, PeerInfo
from node.dht.routing_table import K

__all__ = ["DhtConfig", "OutboundRequest", "QueryResult", "Ready"]


@dataclass(frozen=True, slots=True)
class DhtConfig:
    """Tunables. Times are seconds on the driver's clock."""

    k: int = K
    alpha: int = ALPHA
    #: Hard limit: a request not answered by then fails and is charged to the peer.
    request_timeout: float = 10.0
    #: Stall timeout of a lookup request before the first RTT sample (RFC 6298's
    #: initial RTO), and its floor; see :class:`~node.dht.health.PeerHealth`.
    stall_initial: float = 1.0
    stall_floor: float = 0.2
    #: Times a lookup asks a peer again, as a new request, when its request stalls
    #: (0: never). A lost request or answer otherwise drops an honest peer out of the
    #: lookup: with none, 4 % of the simulator's lookups missed their target under 2 %
    #: message loss (see :mod:`node.dht.lookup`, "Re-ask").
    lookup_retries: int = 1
    #: Consecutive failed requests after which a peer is locked out for a backoff (its
    #: table contact is then stale: evicted once a replacement exists). One lost message
    #: does not shut out an honest peer (measured: 2 % message loss in the simulator).
    stale_after: int = 2
    #: First and longest backoff lock of a peer whose requests failed, seconds.
    failure_backoff: float = 30.0
    failure_backoff_max: float = 1800.0
    #: Peers whose failures are remembered (a liar can name any number of PeerIds).
    health_capacity: int = 4096
    refresh_interval: float = 600.0
    max_records: int = 10_000
    record_max_age: float = 36 * 3600.0
    #: Self-lookups per bootstrap. One is enough now that the join refresh starts
    #: after it: peers that join together meet in each other's refreshes (measured:
    #: 100 simultaneous joins in tests/dht, and the simulator's discovery workload).
    bootstrap_rounds: int = 1
    #: Disjoint lookup paths (S/Kademlia; see :mod:`node.dht.lookup`), 1 = plain.
    #: Two paths ask about twice as many peers near the target, which is what lets a
    #: node meet its k closest honest peers when liars crowd its neighbourhood (measured
    #: in the simulator's discovery workload).
    disjoint_paths: int = 2
    #: Disjoint paths of the bootstrap self-lookup, the lookup that introduces a node
    #: to its neighbourhood (and it to them): more paths meet more of the peers just
    #: beyond the k closest, where a neighbourhood crowded by Byzantine peers keeps the
    #: k closest honest ones. It runs once per join, so the extra cost is small
    #: (measured in the simulator: 4 paths left no node unconverged at 1,000 nodes).
    bootstrap_paths: int = 4
    #: After the first bootstrap round found peers, refresh once every bucket farther
    #: away than the closest neighbour (Kademlia paper section 2.3; at most up to
    #: MAX_REFRESH_CPL), while the second round runs. "Closest" is not symmetric in
    #: Kademlia: without this, a newcomer's true neighbours may never learn of it
    #: (measured in the simulator).
    refresh_on_join: bool = True


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    """Send ``message`` to ``peer`` (PeerId + known multiaddrs); report the answer or
    failure with :meth:`DhtNode.on_response` / :meth:`DhtNode.on_failure`."""

    request_id: int
    peer: PeerInfo
    message: Message


@dataclass(frozen=True, slots=True)
class QueryResult:
    """A finished query. ``kind``: "find_node", "get_value" or "put_value";
    ``target``: the 32-byte Kademlia key looked up; ``closest``: peers that answered,
    nearest first; ``value``: best record value for get_value (None if not found);
    ``stored``: peers that acknowledged a put_value; ``stats``: lookup counters."""

    query_id: int
    kind: str
    target: bytes
    closest: tuple[PeerInfo, ...]
    value: bytes | None = None
    stored: int = 0
    stats: LookupStats | None = None


@dataclass(slots=True)
class Ready:
    """Effects for the driver: requests to send, queries finished."""

    requests: list[OutboundRequest] = field(default_factory=list)
    finished: list[QueryResult] = field(default_factory=list)
