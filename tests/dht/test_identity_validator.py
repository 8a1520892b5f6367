"""The DHT validator for identity bundles: only the key owner's current, signed bundle."""

from __future__ import annotations

import pytest

from identity import records
from identity.bundle import encode_bundle
from identity.did import peer_id_bytes_from_public_key
from identity.soft import SoftSigner
from node.dht.identity_validator import IdentityBundleValidator
from node.dht.record_store import RecordInvalid, identity_record_key

T0 = 1_800_000_000


def identity(seed: int):
    keys = [SoftSigner(bytes([seed, i]) * 16) for i in range(3)]
    icp = records.incept(keys[0], keys[1].public_key, issued_at=T0)
    return keys, [icp]


def bundle(keys, events, version=1, signer=None):
    state = records.verify_log(events)
    signer = signer or next(k for k in keys if k.public_key == state.public_key)
    rec = records.issue_record(signer, state.identifier, version=version,
                               listen_addrs=["/ip4/127.0.0.1/tcp/4001"], issued_at=T0,
                               expires_at=T0 + 3600)
    return encode_bundle(events, rec.to_bytes())


V = IdentityBundleValidator()


def key_of(signer) -> bytes:
    return identity_record_key(peer_id_bytes_from_public_key(signer.public_key))


def test_owner_bundle_is_valid_and_the_most_advanced_is_selected():
    keys, events = identity(1)
    v1 = bundle(keys, events, version=1)
    v2 = bundle(keys, events, version=2)
    V.validate(key_of(keys[0]), v1)
    assert V.select(key_of(keys[0]), [v1, v2]) == 1
    assert V.select(key_of(keys[0]), [v2, v1]) == 0
    rot = records.rotate(events, keys[1], keys[2].public_key, issued_at=T0 + 1)
    rotated = bundle(keys, [*events, rot], version=1)
    V.validate(key_of(keys[1]), rotated)  # the PeerId follows the new key
    with pytest.raises(RecordInvalid, match="not the key's PeerId"):
        V.validate(key_of(keys[0]), rotated)


def test_someone_elses_bundle_garbage_and_revoked_are_refused():
    keys, events = identity(1)
    other_keys, other_events = identity(2)
    with pytest.raises(RecordInvalid, match="not the key's PeerId"):
        V.validate(key_of(keys[0]), bundle(other_keys, other_events))
    with pytest.raises(RecordInvalid, match="identity bundle"):
        V.validate(key_of(keys[0]), b"\x93garbage")
    with pytest.raises(RecordInvalid, match="Ed25519 PeerId"):
        V.validate(b"/meshnode-id/not-a-peer-id", bundle(keys, events))
    rev = records.revoke(events, keys[1], issued_at=T0 + 5)
    with pytest.raises(RecordInvalid, match="revoked"):
        V.validate(key_of(keys[1]), encode_bundle([*events, rev], None))


def test_record_signed_by_a_stranger_is_refused():
    keys, events = identity(1)
    forged = bundle(keys, events, signer=SoftSigner(bytes(32)))
    with pytest.raises(RecordInvalid):
        V.validate(key_of(keys[0]), forged)
