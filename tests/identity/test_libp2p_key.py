"""The libp2p key adapter with a real SoftHSM key: two py-libp2p hosts on 127.0.0.1,
Noise-only security and yamux, one host's identity in the HSM."""

from __future__ import annotations

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyType
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import PeerStore
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from identity.did import peer_id_from_public_key
from identity.libp2p_key import HsmKeyExportError, HsmPrivateKey, hsm_key_pair, noise_only_security
from identity.pkcs11 import HsmConfig, Pkcs11Error, Pkcs11Signer, Token
from identity.signer import verify_signature

LOCALHOST = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")


class CountingSigner:
    """Forwards to the real HSM signer and counts the signatures it makes."""

    def __init__(self, inner: Pkcs11Signer) -> None:
        self.inner = inner
        self.public_key = inner.public_key
        self.calls = 0

    def sign(self, data: bytes) -> bytes:
        self.calls += 1
        return self.inner.sign(data)


class ConnectedNotifee(INotifee):
    """Sets ``event`` when the network reports a new connection."""

    def __init__(self) -> None:
        self.event = trio.Event()
        self.peers: list[ID] = []

    async def connected(self, network, conn: INetConn) -> None:
        self.peers.append(conn.muxed_conn.peer_id)
        self.event.set()

    async def opened_stream(self, network, stream: INetStream) -> None: ...
    async def closed_stream(self, network, stream: INetStream) -> None: ...
    async def disconnected(self, network, conn: INetConn) -> None: ...
    async def listen(self, network, multiaddr) -> None: ...
    async def listen_close(self, network, multiaddr) -> None: ...


def _host(key_pair):
    """Noise-only, yamux, one connection per peer (no 250 ms dial wait), and no
    AutoConnector background dials (its default target is 200 connections: it redials
    every peer in the peerstore, e.g. the impostor below, while the test ends)."""
    return new_host(
        key_pair=key_pair,
        sec_opt=noise_only_security(key_pair),
        muxer_opt={YAMUX_PROTOCOL_ID: Yamux},
        connection_config=ConnectionConfig(
            max_connections_per_peer=1, min_connections=0, low_watermark=0, high_watermark=0
        ),
    )


def test_key_shape(hsm_signer: Pkcs11Signer) -> None:
    pair = hsm_key_pair(hsm_signer)
    assert isinstance(pair.private_key, HsmPrivateKey)
    assert pair.private_key.get_type() == KeyType.Ed25519
    assert pair.public_key.to_bytes() == hsm_signer.public_key
    assert pair.private_key.get_public_key() == pair.public_key
    signature = pair.private_key.sign(b"libp2p payload")
    assert pair.public_key.verify(b"libp2p payload", signature)
    assert verify_signature(hsm_signer.public_key, b"libp2p payload", signature)
    assert str(ID.from_pubkey(pair.public_key)) == peer_id_from_public_key(hsm_signer.public_key)
    assert pair.private_key == HsmPrivateKey(hsm_signer)
    assert hash(pair.private_key) == hash(HsmPrivateKey(hsm_signer))


def test_private_key_is_not_exportable(hsm_signer: Pkcs11Signer) -> None:
    key = HsmPrivateKey(hsm_signer)
    with pytest.raises(HsmKeyExportError, match="cannot be exported"):
        key.to_bytes()
    with pytest.raises(HsmKeyExportError):
        key.serialize()


def test_closed_token_fails_closed(hsm_token_config: HsmConfig) -> None:
    token = Token.open(hsm_token_config)
    pair = hsm_key_pair(token.generate_keypair("node"))
    token.close()
    with pytest.raises(Pkcs11Error, match="is closed"):
        pair.private_key.sign(b"noise payload")


def test_in_memory_peerstore_accepts_the_key_pair(hsm_signer: Pkcs11Signer) -> None:
    pair = hsm_key_pair(hsm_signer)
    store = PeerStore()
    peer = ID.from_pubkey(pair.public_key)
    store.add_key_pair(peer, pair)
    assert store.privkey(peer) is pair.private_key


@pytest.mark.parametrize("hsm_dials", [True, False], ids=["hsm-dials", "hsm-listens"])
async def test_noise_handshake_uses_the_hsm_key(hsm_signer: Pkcs11Signer, hsm_dials: bool) -> None:
    """Each side learns the other's PeerId only from the Noise handshake payload, which
    the HSM signs (initiator in message 3, responder in message 2)."""
    signer = CountingSigner(hsm_signer)
    expected = peer_id_from_public_key(hsm_signer.public_key)
    hsm_host = _host(hsm_key_pair(signer))
    soft_host = _host(create_new_key_pair())
    assert str(hsm_host.get_id()) == expected
    seen_by_soft, seen_by_hsm = ConnectedNotifee(), ConnectedNotifee()
    soft_host.get_network().register_notifee(seen_by_soft)
    hsm_host.get_network().register_notifee(seen_by_hsm)
    try:
        with trio.fail_after(20):
            async with hsm_host.run([LOCALHOST]), soft_host.run([LOCALHOST]):
                signed_before = signer.calls
                if hsm_dials:
                    await hsm_host.connect(PeerInfo(soft_host.get_id(), soft_host.get_addrs()))
                else:
                    await soft_host.connect(PeerInfo(hsm_host.get_id(), hsm_host.get_addrs()))
                await seen_by_soft.event.wait()
                await seen_by_hsm.event.wait()
                assert [str(peer) for peer in seen_by_soft.peers] == [expected]
                assert seen_by_hsm.peers == [soft_host.get_id()]
                assert signer.calls > signed_before
    finally:
        with trio.fail_after(20):
            await soft_host.close()
            await hsm_host.close()


async def test_handshake_rejects_a_forged_peer_id(hsm_signer: Pkcs11Signer) -> None:
    """Dialing the HSM host under another PeerId fails: the Noise payload is signed by
    the HSM key, whose PeerId is not the one expected."""
    hsm_host = _host(hsm_key_pair(hsm_signer))
    soft_host = _host(create_new_key_pair())
    impostor = ID.from_pubkey(create_new_key_pair().public_key)
    try:
        with trio.fail_after(20):
            async with hsm_host.run([LOCALHOST]), soft_host.run([LOCALHOST]):
                with pytest.raises(Exception):  # noqa: B017 - libp2p's error types vary
                    await soft_host.connect(PeerInfo(impostor, hsm_host.get_addrs()))
                assert soft_host.get_connected_peers() == []
    finally:
        with trio.fail_after(20):
            await soft_host.close()
            await hsm_host.close()
