"""Identity bundles: a key event log plus a signed identity record, verifiable offline.

A bundle is what a node exports (``meshnode identity export``) and publishes in the DHT
under ``/meshnode-id/<PeerId>``: enough for anyone to check, without trusting the
sender, that the stable identifier is controlled by the key behind the PeerId and
where that peer listens.

Format (canonical msgpack): ``{"v": 1, "kel": [event bytes...], "record": bytes |
None}``; ``record`` is None once the identity is revoked (nothing can be signed then).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from identity import canonical, records

__all__ = ["BUNDLE_VERSION", "MAX_BUNDLE_BYTES", "encode_bundle", "verify_bundle"]

BUNDLE_VERSION = 1
#: Upper bound on an encoded bundle, bytes (a long key event log stays far below).
MAX_BUNDLE_BYTES = 256 * 1024


def encode_bundle(events: Sequence[records.KeyEvent], record: bytes | None) -> bytes:
    """Canonical bundle bytes from the key event log and an encoded identity record."""
    return canonical.encode({"v": BUNDLE_VERSION, "kel": [e.to_bytes() for e in events],
                             "record": record})


def verify_bundle(data: bytes, *, now: int | None = None) -> dict[str, Any]:
    """Verify a bundle: the key event log (signatures, hash chain, pre-rotation) and the
    identity record against the resulting key state (expiry checked when ``now``, Unix
    seconds, is given).

    Returns a summary: ``id``, ``did``, ``peer_id``, ``public_key_hex``, ``sequence``,
    ``revoked``, ``events`` and ``record`` (None or ``version``, ``listen_addrs``,
    ``issued_at``, ``expires_at``). Raises records.RecordError with the precise reason
    (RecordDecodeError for malformed bytes); never anything else.
    """
    try:
        bundle = canonical.decode(data, max_bytes=MAX_BUNDLE_BYTES)
    except canonical.DecodeError as exc:
        raise records.RecordDecodeError(records.Reason.MALFORMED, f"bundle: {exc}") from None
    if (
        type(bundle) is not dict
        or set(bundle) != {"v", "kel", "record"}
        or bundle["v"] != BUNDLE_VERSION
        or type(bundle["kel"]) is not list
    ):
        raise records.RecordDecodeError(records.Reason.MALFORMED, "not an identity bundle (v1)")
    events = records.decode_log(canonical.encode(bundle["kel"]))
    state = records.verify_log(events)
    summary: dict[str, Any] = {
        "id": state.identifier,
        "did": state.did,
        "peer_id": state.peer_id,
        "public_key_hex": state.public_key.hex(),
        "sequence": state.sequence,
        "revoked": state.revoked,
        "events": len(events),
        "record": None,
    }
    if bundle["record"] is not None:
        if type(bundle["record"]) is not bytes:
            raise records.RecordDecodeError(records.Reason.MALFORMED, "record is not bytes")
        record = records.IdentityRecord.from_bytes(bundle["record"])
        records.verify_record(record, state, now=now)
        summary["record"] = {
            "version": record.version,
            "listen_addrs": list(record.listen_addrs),
            "issued_at": record.issued_at,
            "expires_at": record.expires_at,
        }
    return summary
