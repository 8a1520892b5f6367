"""DHT validator for signed identity bundles under ``/meshnode-id/<binary PeerId>``.

A value is accepted only when it is a valid :mod:`identity.bundle` (key event log and
identity record, all signatures checked) whose *current* key is the one the PeerId in
the key names, and which carries a record (a revoked identity publishes nothing).
Among valid values the best is the most advanced key event log, then the highest
record version; ties keep the first (stable). Pure: no clock (record expiry is enforced
by the record store's age limit and by readers that pass ``now``).
Spec: libp2p/specs kad-dht "Record validation"; go-libp2p-record ``Validator``.
"""

from __future__ import annotations

from collections.abc import Sequence

from identity.bundle import verify_bundle
from identity.did import DidError, peer_id_from_public_key, public_key_from_peer_id
from identity.records import RecordError
from node.dht.record_store import RecordInvalid, split_key

__all__ = ["IdentityBundleValidator"]


class IdentityBundleValidator:
    """Validator for the ``meshnode-id`` namespace (see the module docstring)."""

    def validate(self, key: bytes, value: bytes) -> None:
        """Raise RecordInvalid unless ``value`` is a valid bundle for the key's PeerId."""
        self._rank(key, value)

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        """Index of the most advanced bundle (KEL sequence, then record version)."""
        ranks = [self._rank(key, v) for v in values]
        return max(range(len(values)), key=lambda i: (ranks[i], -i))

    @staticmethod
    def _rank(key: bytes, value: bytes) -> tuple[int, int]:
        _, raw_peer_id = split_key(key)
        try:
            key_owner = public_key_from_peer_id(raw_peer_id)
        except DidError as exc:
            raise RecordInvalid(f"identity key does not hold an Ed25519 PeerId: {exc}") from None
        try:
            summary = verify_bundle(value)
        except RecordError as exc:
            raise RecordInvalid(f"identity bundle: {exc}") from None
        if summary["record"] is None:
            raise RecordInvalid("a revoked identity has no record to publish")
        if summary["peer_id"] != peer_id_from_public_key(key_owner):
            raise RecordInvalid("bundle's current key is not the key's PeerId")
        return summary["sequence"], summary["record"]["version"]
