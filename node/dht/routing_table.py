"""Kademlia routing table: k-buckets by common prefix length (pure).

Theory of operation
-------------------
Keys are ``sha256(binary PeerId)`` (256 bits); the distance between two peers is the XOR
of their keys (libp2p/specs kad-dht/README.md, "Distance"). Contact ``c`` lives in bucket
``i = common_prefix_length(local_key, c.key)``, 0 (farthest half of the key space) to 255
(closest); bucket 256 would be the local peer itself, which is never stored. This is the
same partition the spec's lazily "unfolded" table reaches; holding the 256 buckets from
the start just skips the splitting. Each bucket holds at most ``k`` (20) contacts ordered
least-recently seen (head) to most-recently seen (tail), Kademlia paper section 2.2.

:meth:`RoutingTable.update` is called whenever the local node hears from a peer
(a successful response, or an inbound request from a DHT server). An existing contact
moves to the tail. A new contact joins a bucket with room. When the bucket is full the
paper's rule applies: *the least-recently seen contact is kept if it is still alive*.
We do not ping inline (the table is pure): the newcomer goes into the bucket's bounded
**replacement cache** (paper section 4.1) and the update result asks the caller to ping
the head contact (at most one ping per bucket in flight, re-asked after
``ping_timeout``). The caller reports the outcome with :meth:`RoutingTable.ping_result`:
alive moves the head to the tail (the newcomer waits in the cache); dead removes it,
which promotes the most recently seen replacement.

Failed requests (paper section 4.1, "Optimized contact accounting"): the caller reports
them with :meth:`RoutingTable.record_failure`. A contact whose last ``stale_after``
requests failed is *stale* until it answers again (:meth:`RoutingTable.record_answer`;
the paper calls a contact stale after 5 failures in a row, the node uses 2). A stale
contact is evicted as soon
as a replacement exists -- at once when its bucket's replacement cache is not empty
(the most recently seen replacement takes the slot), or when a newcomer arrives at its
full bucket (the newcomer takes the slot of the stale contact with the most failures,
no ping needed). With no replacement it is kept, merely flagged: "if a node's own
network connection goes down temporarily, the node won't completely void all of its
k-buckets". :meth:`RoutingTable.remove` drops a contact outright (and promotes a
replacement the same way).

Bucket refresh (paper section 2.3, "refreshes any bucket to which it has not performed a
node lookup in the past hour"): every bucket up to ``max_refresh_cpl`` has a next-refresh
time. At construction those times are spread uniformly over ``[now, now +
refresh_interval)`` with the injected ``random.Random``, so a node (or a thousand nodes
started together) never refreshes all buckets at once. After a lookup for a key in a
bucket, :meth:`RoutingTable.mark_refreshed` pushes its next refresh one interval (with
+-10 % jitter) into the future. :meth:`RoutingTable.due_refreshes` lists buckets due
at ``now`` and :meth:`RoutingTable.random_preimage_in_bucket` gives a lookup target for
one.

Time is an input everywhere: ``now`` is seconds (float) on whatever clock the driver
uses (monotonic seconds in the node, virtual seconds in the simulator).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum

from node.dht.keys import KEY_BITS, KEY_BYTES, kad_key, key_to_int
from node.dht.messages import PeerInfo

__all__ = [
    "DEFAULT_PING_TIMEOUT",
    "DEFAULT_REFRESH_INTERVAL",
    "K",
    "MAX_REFRESH_CPL",
    "Contact",
    "RoutingTable",
    "UpdateResult",
    "UpdateStatus",
]

#: Bucket size and replication parameter (libp2p/specs kad-dht "Replication parameter").
K = 20
#: Seconds between refreshes of one bucket (go-libp2p-kad-dht default: 10 minutes).
DEFAULT_REFRESH_INTERVAL = 600.0
#: Seconds after which an unanswered liveness ping may be asked for again.
DEFAULT_PING_TIMEOUT = 10.0
#: Highest bucket index refreshed (go-libp2p-kad-dht maxCplForRefresh = 15): deeper
#: buckets of a realistic network are empty or filled by lookups for our own key.
MAX_REFRESH_CPL = 15
_REFRESH_JITTER = 0.1


@dataclass(slots=True, eq=False)
class Contact:
    """A peer in the routing table.

    ``peer_id``: binary PeerId (multihash bytes, 38 bytes for Ed25519, any length is
    accepted); ``key``: its 32-byte Kademlia key; ``addrs``: binary multiaddrs;
    ``last_seen``: seconds (caller's clock) of the last successful contact;
    ``failures``: requests to it that failed since it last answered (stale from the
    table's ``stale_after`` on).
    Contacts compare by identity (the table holds one per PeerId).
    """

    peer_id: bytes
    key: bytes
    addrs: tuple[bytes, ...]
    last_seen: float
    key_int: int = field(repr=False, default=0)
    failures: int = 0
    _info: PeerInfo | None = field(repr=False, default=None)

    def peer_info(self) -> PeerInfo:
        """The contact as a :class:`PeerInfo` (PeerId + addrs), built once per addrs."""
        info = self._info
        if info is None:
            info = self._info = PeerInfo(self.peer_id, self.addrs)
        return info


class UpdateStatus(Enum):
    """What :meth:`RoutingTable.update` did."""

    ADDED = "added"  # new contact: bucket had room, or it replaced a stale contact
    UPDATED = "updated"  # known contact moved to the tail, addrs refreshed
    CACHED = "cached"  # bucket full: newcomer kept in the replacement cache
    SELF = "self"  # the local peer is never stored


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """Outcome of an update. ``ping``: PeerId the caller should ping (the head of a
    full bucket) and report with :meth:`RoutingTable.ping_result`, or None."""

    status: UpdateStatus
    ping: bytes | None = None


@dataclass(slots=True)
class _Bucket:
    contacts: list[Contact] = field(default_factory=list)  # head = least recently seen
    # by PeerId, in insertion order: last = most recent
    replacements: dict[bytes, Contact] = field(default_factory=dict)
    ping_sent_at: float | None = None  # when the head was asked to be pinged
    stale: int = 0  # stale contacts (failures >= stale_after)


class RoutingTable:
    """256 k-buckets around ``local_peer_id`` (see the module docstring).

    ``rng`` staggers bucket refresh; ``now`` is the construction time in seconds.
    Raises ValueError for ``k < 1``.
    """

    def __init__(
        self,
        local_peer_id: bytes,
        *,
        rng: random.Random,
        now: float = 0.0,
        k: int = K,
        replacement_cache_size: int | None = None,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        ping_timeout: float = DEFAULT_PING_TIMEOUT,
        max_refresh_cpl: int = MAX_REFRESH_CPL,
        stale_after: int = 1,
    ) -> None:
        if k < 1 or stale_after < 1:
            raise ValueError("k and stale_after must be at least 1")
        self.stale_after = stale_after
        self.local_peer_id = bytes(local_peer_id)
        self.local_key = kad_key(self.local_peer_id)
        self._local_int = key_to_int(self.local_key)
        self.k = k
        self.replacement_cache_size = (
            k if replacement_cache_size is None else replacement_cache_size
        )
        self.refresh_interval = float(refresh_interval)
        self.ping_timeout = float(ping_timeout)
        self._rng = rng
        self._buckets = [_Bucket() for _ in range(KEY_BITS)]
        self._by_id: dict[bytes, Contact] = {}
        self._deepest = -1  # deepest non-empty bucket (-1: empty table)
        self._next_refresh = [
            now + rng.random() * self.refresh_interval for _ in range(max_refresh_cpl + 1)
        ]
        self._refresh_due = min(self._next_refresh)

    # -- queries ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._by_id

    def get(self, peer_id: bytes) -> Contact | None:
        """The contact for ``peer_id``, or None (replacement-cache entries are not found)."""
        return self._by_id.get(peer_id)

    def contacts(self) -> Iterator[Contact]:
        """All contacts, bucket 0 first, least recently seen first within a bucket."""
        for bucket in self._buckets:
            yield from bucket.contacts

    def bucket_index(self, key: bytes) -> int:
        """Bucket of a 32-byte key: its common prefix length with the local key (0..255).
        Raises ValueError for the local key itself (256) or a key of the wrong length."""
        cpl = KEY_BITS - (key_to_int(key) ^ self._local_int).bit_length()
        if cpl >= KEY_BITS:
            raise ValueError("the local key has no bucket")
        return cpl

    def bucket(self, index: int) -> list[Contact]:
        """A copy of bucket ``index`` (0..255), least recently seen first."""
        return list(self._buckets[index].contacts)

    def replacements(self, index: int) -> list[Contact]:
        """A copy of bucket ``index``'s replacement cache, oldest first."""
        return list(self._buckets[index].replacements.values())

    def closest(
        self, target_key: bytes, count: int = K, *, exclude: Iterable[bytes] = (),
        skip_stale: Callable[[bytes], bool] | None = None,
    ) -> list[Contact]:
        """Up to ``count`` contacts closest to the 32-byte ``target_key`` by XOR distance,
        nearest first (equal distances would need a sha256 collision; they keep table
        order). PeerIds in ``exclude``, and stale contacts (``failures > 0``) for which
        ``skip_stale(peer_id)`` is true, are left out. Raises ValueError for a bad key
        length."""
        target = key_to_int(target_key)
        excluded = set(exclude)
        picked: list[Contact] = []
        for group in self._groups_by_distance(target):
            if skip_stale is None:
                picked += [c for c in group if c.peer_id not in excluded]
            else:
                picked += [c for c in group if not (
                    c.peer_id in excluded or (c.failures and skip_stale(c.peer_id)))]
            if len(picked) >= count:
                break
        picked.sort(key=lambda c: c.key_int ^ target)
        return picked[:count]

    def _groups_by_distance(self, target: int) -> Iterator[Iterable[Contact]]:
        # With t = cpl(target, local): contacts in bucket t are nearest the target (they
        # share t + 1 bits with it), then every bucket deeper than t (they share exactly
        # t bits), then buckets t - 1, t - 2, ..., 0 in that order (bucket j shares j).
        # Each group is strictly closer than the next, so only the groups needed to
        # reach ``count`` are sorted.
        t = KEY_BITS - (target ^ self._local_int).bit_length()
        if t < KEY_BITS:
            yield self._buckets[t].contacts
            deepest = self._deepest_nonempty()
            yield (c for b in self._buckets[t + 1:deepest + 1] for c in b.contacts)
        for j in range(min(t, KEY_BITS) - 1, -1, -1):
            yield self._buckets[j].contacts

    # -- updates ---------------------------------------------------------------------

    def update(self, peer_id: bytes, addrs: Iterable[bytes] = (), *, now: float,
               failures: int = 0) -> UpdateResult:
        """Record that ``peer_id`` (binary PeerId) was seen alive at ``now`` (seconds).

        Known: moved to the tail, ``addrs`` replaced when non-empty (its failure count is
        kept: hearing from a peer is not an answer to our request). New (starting with
        ``failures``, what the caller remembers of it) with room: added. New with a full
        bucket holding a stale contact with more failures than it: takes its slot. New with a full
        bucket otherwise: cached as a replacement, and ``ping`` names the head to check
        (unless a ping for this bucket is already pending and younger than
        ``ping_timeout``)."""
        peer_id = bytes(peer_id)
        if peer_id == self.local_peer_id:
            return UpdateResult(UpdateStatus.SELF)
        addrs = tuple(addrs)
        known = self._by_id.get(peer_id)
        if known is not None:
            bucket = self._buckets[self._index_of(known.key_int)]
            bucket.contacts.remove(known)
            bucket.contacts.append(known)
            known.last_seen = now
            if addrs and addrs != known.addrs:
                known.addrs, known._info = addrs, None
            return UpdateResult(UpdateStatus.UPDATED)
        key = kad_key(peer_id)
        contact = Contact(peer_id, key, addrs, now, key_to_int(key), failures)
        bucket = self._buckets[self._index_of(contact.key_int)]
        if len(bucket.contacts) < self.k:
            self._insert(bucket, contact)
            return UpdateResult(UpdateStatus.ADDED)
        stale = max(bucket.contacts, key=lambda c: c.failures) if bucket.stale else None
        if stale is not None and stale.failures > failures:  # ties: least recently seen
            bucket.contacts.remove(stale)
            bucket.stale -= 1
            del self._by_id[stale.peer_id]
            self._forget_replacement(peer_id)
            self._insert(bucket, contact)
            return UpdateResult(UpdateStatus.ADDED)
        self._cache_replacement(bucket, contact)
        if bucket.ping_sent_at is None or now - bucket.ping_sent_at >= self.ping_timeout:
            bucket.ping_sent_at = now
            return UpdateResult(UpdateStatus.CACHED, ping=bucket.contacts[0].peer_id)
        return UpdateResult(UpdateStatus.CACHED)

    def ping_result(self, peer_id: bytes, alive: bool, *, now: float) -> None:
        """Outcome of a ping asked for by :meth:`update`: alive keeps the contact (moved to
        the tail), dead removes it and promotes the newest replacement. Unknown PeerIds
        are ignored (the contact may have been removed meanwhile)."""
        contact = self._by_id.get(peer_id)
        if contact is None:
            return
        bucket = self._buckets[self._index_of(contact.key_int)]
        bucket.ping_sent_at = None
        if alive:
            self.update(peer_id, now=now)
        else:
            self.remove(peer_id)

    def set_addrs(self, peer_id: bytes, addrs: Iterable[bytes]) -> bool:
        """Give contact ``peer_id`` the multiaddrs ``addrs`` (learnt by the driver, e.g.
        from identify) without counting it as seen. Returns False when it is not a
        contact or ``addrs`` is empty."""
        contact = self._by_id.get(peer_id)
        addrs = tuple(addrs)
        if contact is None or not addrs:
            return False
        contact.addrs, contact._info = addrs, None
        return True

    def record_failure(self, peer_id: bytes) -> bool:
        """A request to ``peer_id`` failed: count it; once the contact is stale, evict it
        when its bucket has a replacement (see the module docstring). A
        replacement-cache entry is forgotten. Returns True when a contact left its
        bucket."""
        contact = self._by_id.get(peer_id)
        if contact is None:
            self._forget_replacement(peer_id)
            return False
        bucket = self._buckets[self._index_of(contact.key_int)]
        contact.failures += 1
        if contact.failures == self.stale_after:
            bucket.stale += 1
        if contact.failures >= self.stale_after and bucket.replacements:
            return self.remove(peer_id)
        return False

    def record_answer(self, peer_id: bytes) -> None:
        """``peer_id`` answered a request: it is no longer stale (no-op when unknown)."""
        contact = self._by_id.get(peer_id)
        if contact is not None and contact.failures:
            if contact.failures >= self.stale_after:
                self._buckets[self._index_of(contact.key_int)].stale -= 1
            contact.failures = 0

    def remove(self, peer_id: bytes) -> bool:
        """Drop ``peer_id`` (it failed to respond); promote the most recently seen
        replacement of its bucket. Also forgets it from replacement caches.
        Returns True when a contact was removed from a bucket."""
        contact = self._by_id.pop(peer_id, None)
        if contact is None:
            self._forget_replacement(peer_id)
            return False
        index = self._index_of(contact.key_int)
        bucket = self._buckets[index]
        bucket.contacts.remove(contact)
        if contact.failures >= self.stale_after:
            bucket.stale -= 1
        if bucket.replacements:
            self._insert(bucket, bucket.replacements.popitem()[1])
        bucket.ping_sent_at = None
        if index == self._deepest and not bucket.contacts:
            self._deepest = next(
                (i for i in range(index - 1, -1, -1) if self._buckets[i].contacts), -1)
        return True

    # -- refresh ---------------------------------------------------------------------

    def due_refreshes(self, now: float) -> list[int]:
        """Indices of buckets whose refresh time is ``<= now``, earliest first.

        Only buckets up to the deepest non-empty bucket + 1 (capped at
        ``max_refresh_cpl``) are refreshed: deeper random targets would land on keys
        no peer shares (go-libp2p-kad-dht does the same)."""
        if self._refresh_due > now:
            return []
        limit = min(self._deepest_nonempty() + 1, len(self._next_refresh) - 1)
        for index in range(limit + 1, len(self._next_refresh)):
            if self._next_refresh[index] <= now:  # nothing to refresh there yet
                self.mark_refreshed(index, now=now)
        due = [i for i in range(limit + 1) if self._next_refresh[i] <= now]
        return sorted(due, key=lambda i: (self._next_refresh[i], i))

    def next_refresh_due(self) -> float:
        """Seconds (caller's clock) of the earliest bucket refresh time: the table
        needs :meth:`due_refreshes` no earlier than this."""
        return self._refresh_due

    def next_refresh_at(self, index: int) -> float:
        """Seconds (caller's clock) when bucket ``index`` (0..max_refresh_cpl) is due."""
        return self._next_refresh[index]

    def mark_refreshed(self, index: int, *, now: float) -> None:
        """A lookup for a key in bucket ``index`` ran at ``now``: reschedule its refresh
        one ``refresh_interval`` later (+-10 % jitter from the injected rng)."""
        if 0 <= index < len(self._next_refresh):
            jitter = 1.0 + _REFRESH_JITTER * (2.0 * self._rng.random() - 1.0)
            self._next_refresh[index] = now + self.refresh_interval * jitter
            self._refresh_due = min(self._next_refresh)

    def random_key_in_bucket(self, index: int) -> bytes:
        """A random 32-byte key whose common prefix with the local key is exactly
        ``index`` bits (0..255): a lookup target that refreshes that bucket."""
        if not 0 <= index < KEY_BITS:
            raise ValueError(f"bucket index out of range: {index}")
        flip = 1 << (KEY_BITS - 1 - index)
        low = self._rng.getrandbits(KEY_BITS - 1 - index) if index < KEY_BITS - 1 else 0
        high_mask = ~((flip << 1) - 1) & ((1 << KEY_BITS) - 1)
        value = (self._local_int & high_mask) | ((self._local_int & flip) ^ flip) | low
        return value.to_bytes(KEY_BYTES, "big")

    def random_preimage_in_bucket(self, index: int) -> bytes:
        """A random 34-byte PeerId (a sha2-256 multihash ``12 20`` + 32 bytes, as
        go-libp2p-kad-dht's GenRandPeerID) whose Kademlia key falls in bucket ``index``:
        the FIND_NODE key of a refresh lookup (responders hash the key, so the wire needs
        a preimage, and a well-formed PeerId is accepted by every implementation).
        Expected work is ``2 ** (index + 1)`` sha256 calls, so ``index`` is limited to
        0..20 (ValueError)."""
        if not 0 <= index <= 20:
            raise ValueError(f"refresh preimages are generated for buckets 0..20, not {index}")
        base = b"\x12\x20" + self._rng.randbytes(KEY_BYTES - 4)
        local_top = int.from_bytes(self.local_key[:4], "big")
        shift = 31 - index  # cpl == index  <=>  top 32 bits XOR local's >> shift == 1
        sha256 = hashlib.sha256
        for counter in range(1 << 32):
            candidate = base + counter.to_bytes(4, "big")
            top = int.from_bytes(sha256(candidate).digest()[:4], "big")
            if (top ^ local_top) >> shift == 1:
                return candidate
        raise AssertionError("no preimage in 2**32 tries")  # pragma: no cover

    # -- internals -------------------------------------------------------------------

    def _index_of(self, key_int: int) -> int:
        return KEY_BITS - (key_int ^ self._local_int).bit_length()

    def _insert(self, bucket: _Bucket, contact: Contact) -> None:
        bucket.contacts.append(contact)
        if contact.failures >= self.stale_after:
            bucket.stale += 1
        self._by_id[contact.peer_id] = contact
        self._deepest = max(self._deepest, self._index_of(contact.key_int))

    def _cache_replacement(self, bucket: _Bucket, contact: Contact) -> None:
        replacements = bucket.replacements
        replacements.pop(contact.peer_id, None)
        replacements[contact.peer_id] = contact
        if len(replacements) > self.replacement_cache_size:
            del replacements[next(iter(replacements))]

    def _forget_replacement(self, peer_id: bytes) -> None:
        key = kad_key(peer_id)
        if key == self.local_key:
            return
        bucket = self._buckets[self._index_of(key_to_int(key))]
        bucket.replacements.pop(peer_id, None)

    def _deepest_nonempty(self) -> int:
        return self._deepest
