"""did:key and PeerId derivation; RFC 8032 vectors on the verify path and the soft signer."""

from __future__ import annotations

import base58
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from identity.did import (
    DidError,
    did_key_from_public_key,
    peer_id_bytes_from_public_key,
    peer_id_from_public_key,
    public_key_from_did_key,
    public_key_from_peer_id,
)
from identity.signer import Signer, verify_signature
from identity.soft import SoftSigner

# W3C CCG did-method-key, test-vectors/ed25519-x25519.json: seed -> (did, publicKeyBase58)
DID_KEY_VECTORS = [
    ("00" * 32, "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
     "4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS"),
    ("00" * 31 + "01", "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG",
     "6ASf5EcmmEHTgDJ4X4ZT5vT6iHVJBXPg5AN5YoTCpGWt"),
    ("00" * 31 + "02", "did:key:z6MknGc3ocHs3zdPiJbnaaqDi58NGb4pk1Sp9WxWufuXSdxf",
     "8pM1DN3RiT8vbom5u1sNryaNT1nyL8CTTW3b5PwWXRBH"),
    ("00" * 31 + "03", "did:key:z6MkvqoYXQfDDJRv8L4wKzxYeuKyVZBfi9Qo6Ro8MiLH3kDQ",
     "HPYVwAQmskwT1qEEeRzhoomyfyupJGASQQtCXSNG8XS2"),
    ("00" * 31 + "04", "did:key:z6MkwW6aqMnjgrhJXFUko3NnZPGzVpkNzhYK7yEhnsibmLwL",
     "J3qYF7YJMKCqQke47UQwiHizgFUXapHxRxKmxbkar89x"),
]

# RFC 8032 section 7.1, TEST 1-3: (secret key, public key, message, signature)
RFC8032_VECTORS = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555f"
     "b8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da08"
     "5ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18"
     "ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
]


@pytest.mark.parametrize(("seed", "did", "key_b58"), DID_KEY_VECTORS)
def test_did_key_vectors(seed, did, key_b58):
    public_key = SoftSigner(bytes.fromhex(seed)).public_key
    assert base58.b58encode(public_key).decode() == key_b58
    assert did_key_from_public_key(public_key) == did
    assert public_key_from_did_key(did) == public_key
    assert public_key_from_did_key(f"{did}#{did[len('did:key:'):]}") == public_key


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032_VECTORS)
def test_rfc8032_vectors(secret, public, message, signature):
    public_key, msg, sig = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
    signer = SoftSigner(bytes.fromhex(secret))
    assert isinstance(signer, Signer)
    assert signer.public_key == public_key
    assert signer.sign(msg) == sig  # Ed25519 is deterministic
    assert verify_signature(public_key, msg, sig)
    assert not verify_signature(public_key, msg + b"\x00", sig)
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not verify_signature(public_key, msg, flipped)
    other = bytes.fromhex(RFC8032_VECTORS[0][1] if public != RFC8032_VECTORS[0][1]
                          else RFC8032_VECTORS[1][1])
    assert not verify_signature(other, msg, sig)


@pytest.mark.parametrize(("key", "data", "sig"), [
    (b"\x00" * 31, b"", b"\x00" * 64),
    (b"\x00" * 32, b"", b"\x00" * 63),
    ("k" * 32, b"", b"\x00" * 64),
    (b"\x00" * 32, "text", b"\x00" * 64),
    (b"\x00" * 32, b"", bytearray(64)),
    (b"\xff" * 32, b"m", b"\x00" * 64),  # not a curve point
    (b"\x01" + b"\x00" * 31, b"m", b"\x00" * 64),  # small-order point
])
def test_verify_signature_never_raises(key, data, sig):
    assert verify_signature(key, data, sig) is False


def test_soft_signer_rejects_bad_seed():
    with pytest.raises(ValueError):
        SoftSigner(b"\x00" * 31)


def test_peer_id_matches_libp2p():
    from libp2p.crypto.ed25519 import Ed25519PublicKey
    from libp2p.peer.id import ID

    for seed, _, _ in DID_KEY_VECTORS:
        public_key = SoftSigner(bytes.fromhex(seed)).public_key
        expected = ID.from_pubkey(Ed25519PublicKey.from_bytes(public_key))
        assert peer_id_from_public_key(public_key) == expected.to_base58()
        assert peer_id_bytes_from_public_key(public_key) == expected.to_bytes()
        assert peer_id_from_public_key(public_key).startswith("12D3KooW")


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_round_trips(public_key):
    did = did_key_from_public_key(public_key)
    assert did.startswith("did:key:z6Mk")
    assert public_key_from_did_key(did) == public_key
    peer_id = peer_id_from_public_key(public_key)
    assert public_key_from_peer_id(peer_id) == public_key
    assert public_key_from_peer_id(peer_id_bytes_from_public_key(public_key)) == public_key
    assert len(peer_id_bytes_from_public_key(public_key)) == 38


@pytest.mark.parametrize("key", [b"", b"\x00" * 31, b"\x00" * 33, "x" * 32, bytearray(32)])
def test_bad_key_lengths(key):
    with pytest.raises(DidError):
        did_key_from_public_key(key)
    with pytest.raises(DidError):
        peer_id_from_public_key(key)


_DID0 = DID_KEY_VECTORS[0][1]


@pytest.mark.parametrize("did", [
    "", "did:key:", "did:key:z", "did:web:example.com", _DID0.replace("did:key:z", "did:key:m"),
    "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",  # secp256k1 vector
    _DID0 + "\n", " " + _DID0, _DID0 + " ",  # whitespace: not the canonical spelling
    _DID0[:-1] + "0",  # '0' is not base58
    _DID0 + "#z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW",  # the X25519 key, not Ed25519
    _DID0 + "#", _DID0 + "#junk",
    "did:key:z" + base58.b58encode(b"\xed\x01" + b"\x00" * 31).decode(),  # 31-byte key
    "did:key:z" + base58.b58encode(b"\xed\x01" + b"\x00" * 33).decode(),  # 33-byte key
    "did:key:z1" + _DID0[len("did:key:z"):],  # leading zero byte
    None, b"did:key:z6Mk",
])
def test_bad_did_keys(did):
    with pytest.raises(DidError):
        public_key_from_did_key(did)


_PEER0 = peer_id_from_public_key(SoftSigner(bytes(32)).public_key)


@pytest.mark.parametrize("peer_id", [
    "", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # sha256 multihash (RSA-style)
    _PEER0 + " ", "\n" + _PEER0, _PEER0[:-1], _PEER0 + "1", _PEER0.replace("1", "l"),
    b"\x00\x24\x08\x01\x12\x20" + b"\x00" * 31,
    b"\x00\x24\x08\x02\x12\x20" + b"\x00" * 32,  # key type 2: secp256k1
    b"\x12\x20" + b"\x00" * 32,
])
def test_bad_peer_ids(peer_id):
    with pytest.raises(DidError):
        public_key_from_peer_id(peer_id)
