"""Mutual proof of possession: success both ways and every refusal with its reason."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from identity.did import peer_id_from_public_key
from identity.pop import (
    POP_DOMAIN,
    Challenge,
    PopError,
    Response,
    Verifier,
    prove,
)
from identity.records import (
    Reason,
    RecordDecodeError,
    RecordError,
    incept,
    revoke,
    rotate,
)
from identity.registry import Registry
from identity.soft import SoftSigner

T = 1_700_000_000
PURPOSE = "meshnode/join"


def signer(label: str) -> SoftSigner:
    return SoftSigner(hashlib.sha256(label.encode()).digest())


def nonce(label: str) -> bytes:
    return hashlib.sha256(b"nonce/" + label.encode()).digest()


class Party:
    """One controller: its keys, log, and a verifier bound to the shared registry."""

    def __init__(self, name: str, registry: Registry, enrol: bool = True) -> None:
        self.keys = [signer(f"{name}/{i}") for i in range(3)]
        self.log = [incept(self.keys[0], self.keys[1].public_key, issued_at=T)]
        self.id = self.log[0].identifier
        self.signer = self.keys[0]
        if enrol:
            registry.ingest_log(self.log)
        self.verifier = Verifier(self.id, registry)


@pytest.fixture
def world():
    registry = Registry()
    return registry, Party("alice", registry), Party("bob", registry)


def refused(action, reason: Reason) -> PopError:
    with pytest.raises(RecordError) as exc:
        action()
    assert exc.value.reason == reason, exc.value
    return exc.value


def answer(party: Party, challenge: Challenge, peer: Party, label: str, now: int = T):
    return prove(party.signer, challenge, nonce=nonce(label), me=party.id, peer=peer.id,
                 purpose=PURPOSE, now=now)


def test_mutual_three_pass_exchange(world):
    _, a, b = world
    ca = a.verifier.issue(b.id, nonce=nonce("nA"), purpose=PURPOSE, now=T)
    rb = prove(b.signer, Challenge.from_bytes(ca.to_bytes()), nonce=nonce("nB"), me=b.id,
               peer=a.id, purpose=PURPOSE, now=T + 1)
    cb = b.verifier.issue(a.id, nonce=rb.prover_nonce, purpose=PURPOSE, now=T + 1)
    state_b = a.verifier.check(rb.to_bytes(), now=T + 2)  # B proved itself to A
    ra = prove(a.signer, cb, nonce=ca.nonce, me=a.id, peer=b.id, purpose=PURPOSE, now=T + 2)
    state_a = b.verifier.check(Response.from_bytes(ra.to_bytes()), now=T + 3)
    assert state_b.identifier == b.id and state_b.public_key == b.signer.public_key
    assert state_a.identifier == a.id
    assert state_a.peer_id == peer_id_from_public_key(a.signer.public_key)
    assert state_a.public_key == a.signer.public_key
    # both transcripts hold both nonces, in opposite roles
    assert (rb.verifier_nonce, rb.prover_nonce) == (ra.prover_nonce, ra.verifier_nonce)
    assert len(rb.signature) == 64 and rb.transcript() != ra.transcript()


def test_replayed_response_refused(world):
    _, a, b = world
    challenge = a.verifier.issue(b.id, nonce=nonce("1"), purpose=PURPOSE, now=T)
    response = answer(b, challenge, a, "p1")
    a.verifier.check(response, now=T)
    refused(lambda: a.verifier.check(response, now=T + 1), Reason.REPLAYED)
    # a fresh challenge answered with a prover nonce seen before is a replay too
    again = a.verifier.issue(b.id, nonce=nonce("2"), purpose=PURPOSE, now=T)
    refused(lambda: a.verifier.check(answer(b, again, a, "p1"), now=T), Reason.REPLAYED)
    # and nonces are never reused for challenges
    refused(lambda: a.verifier.issue(b.id, nonce=nonce("1"), purpose=PURPOSE, now=T),
            Reason.REPLAYED)


def test_expired_proofs_refused(world):
    _, a, b = world
    challenge = a.verifier.issue(b.id, nonce=nonce("e"), purpose=PURPOSE, now=T, ttl=10)
    assert challenge.expires_at == T + 10
    refused(lambda: answer(b, challenge, a, "pe", now=T + 10), Reason.EXPIRED)
    response = answer(b, challenge, a, "pe", now=T + 9)
    refused(lambda: a.verifier.check(response, now=T + 10), Reason.EXPIRED)
    refused(lambda: a.verifier.check(response, now=T + 11), Reason.REPLAYED)  # consumed


def test_forgotten_after_grace(world):
    registry, a, b = world
    verifier = Verifier(a.id, registry, grace=5)
    challenge = verifier.issue(b.id, nonce=nonce("g"), purpose=PURPOSE, now=T, ttl=10)
    response = answer(b, challenge, a, "pg")
    refused(lambda: verifier.check(response, now=T + 15), Reason.UNKNOWN_CHALLENGE)


def test_wrong_purpose_refused(world):
    _, a, b = world
    challenge = a.verifier.issue(b.id, nonce=nonce("w"), purpose=PURPOSE, now=T)
    refused(lambda: prove(b.signer, challenge, nonce=nonce("pw"), me=b.id, peer=a.id,
                          purpose="meshnode/other", now=T), Reason.WRONG_PURPOSE)
    other = challenge._replace(purpose="meshnode/other")
    response = prove(b.signer, other, nonce=nonce("pw"), me=b.id, peer=a.id,
                     purpose="meshnode/other", now=T)
    refused(lambda: a.verifier.check(response, now=T), Reason.WRONG_PURPOSE)


def test_wrong_peer_refused(world):
    registry, a, b = world
    carol = Party("carol", registry)
    challenge = a.verifier.issue(b.id, nonce=nonce("x"), purpose=PURPOSE, now=T)
    # carol answers a challenge meant for bob
    refused(lambda: answer(carol, challenge, a, "pc"), Reason.WRONG_PEER)
    forged = challenge._replace(prover=carol.id)
    response = answer(carol, forged, a, "pc")
    refused(lambda: a.verifier.check(response, now=T), Reason.WRONG_PEER)
    # relay: carol forwards alice's challenge to bob; bob is talking to carol, so refuses
    relayed = a.verifier.issue(b.id, nonce=nonce("y"), purpose=PURPOSE, now=T)
    refused(lambda: answer(b, relayed, carol, "pb"), Reason.WRONG_PEER)
    # a proof made for another verifier does not count here
    for_carol = carol.verifier.issue(b.id, nonce=nonce("z"), purpose=PURPOSE, now=T)
    response = answer(b, for_carol, carol, "pz")
    refused(lambda: a.verifier.check(response, now=T), Reason.UNKNOWN_CHALLENGE)


def test_swapped_roles_refused(world):
    _, a, b = world
    challenge = a.verifier.issue(b.id, nonce=nonce("s"), purpose=PURPOSE, now=T)
    # alice's own signature with the roles swapped (as if alice proved to bob)
    swapped = Response(PURPOSE, b.id, a.id, challenge.nonce, nonce("ps"),
                       challenge.expires_at, b"")
    swapped = swapped._replace(signature=a.signer.sign(POP_DOMAIN + swapped.transcript()))
    refused(lambda: a.verifier.check(swapped, now=T), Reason.WRONG_PEER)
    # the right fields but alice's signature instead of bob's
    fake = Response(PURPOSE, a.id, b.id, nonce("s2"), nonce("ps2"), T + 30, b"")
    a.verifier.issue(b.id, nonce=nonce("s2"), purpose=PURPOSE, now=T)
    fake = fake._replace(signature=a.signer.sign(POP_DOMAIN + fake.transcript()))
    refused(lambda: a.verifier.check(fake, now=T), Reason.BAD_SIGNATURE)
    # reflection: the prover nonce equal to the challenge nonce
    reflected = a.verifier.issue(b.id, nonce=nonce("r"), purpose=PURPOSE, now=T)
    refused(lambda: prove(b.signer, reflected, nonce=nonce("r"), me=b.id, peer=a.id,
                          purpose=PURPOSE, now=T), Reason.MALFORMED)


def test_rotated_revoked_and_unknown_identities(world):
    registry, a, b = world
    # after rotation only the new key proves
    registry.ingest_event(rotate(b.log, b.keys[1], b.keys[2].public_key, issued_at=T + 1))
    challenge = a.verifier.issue(b.id, nonce=nonce("r1"), purpose=PURPOSE, now=T)
    refused(lambda: a.verifier.check(answer(b, challenge, a, "pr1"), now=T),
            Reason.BAD_SIGNATURE)
    b.signer = b.keys[1]
    challenge = a.verifier.issue(b.id, nonce=nonce("r2"), purpose=PURPOSE, now=T)
    assert a.verifier.check(answer(b, challenge, a, "pr2"), now=T).sequence == 1
    # revoked
    log = registry.log(b.id)
    registry.ingest_event(revoke(log, b.keys[2], issued_at=T + 2))
    challenge = a.verifier.issue(b.id, nonce=nonce("r3"), purpose=PURPOSE, now=T)
    refused(lambda: a.verifier.check(answer(b, challenge, a, "pr3"), now=T), Reason.REVOKED)
    # unknown
    dave = Party("dave", registry, enrol=False)
    challenge = a.verifier.issue(dave.id, nonce=nonce("u"), purpose=PURPOSE, now=T)
    refused(lambda: a.verifier.check(answer(dave, challenge, a, "pu"), now=T),
            Reason.UNKNOWN_IDENTIFIER)


def test_duplicitous_identity_refused(world):
    registry, a, b = world
    registry.ingest_event(rotate(b.log, b.keys[1], b.keys[2].public_key, issued_at=T + 1))
    with pytest.raises(RecordError):
        registry.ingest_event(rotate(b.log, b.keys[1], signer("fork").public_key,
                                     issued_at=T + 1))
    b.signer = b.keys[1]
    challenge = a.verifier.issue(b.id, nonce=nonce("d"), purpose=PURPOSE, now=T)
    refused(lambda: a.verifier.check(answer(b, challenge, a, "pd"), now=T), Reason.DUPLICITOUS)


def test_unknown_challenge_and_capacity(world):
    registry, a, b = world
    stray = Response(PURPOSE, a.id, b.id, nonce("never"), nonce("p"), T + 30, b"\x00" * 64)
    refused(lambda: a.verifier.check(stray, now=T), Reason.UNKNOWN_CHALLENGE)
    small = Verifier(a.id, registry, max_outstanding=2)
    small.issue(b.id, nonce=nonce("c1"), purpose=PURPOSE, now=T, ttl=5)
    small.issue(b.id, nonce=nonce("c2"), purpose=PURPOSE, now=T, ttl=5)
    refused(lambda: small.issue(b.id, nonce=nonce("c3"), purpose=PURPOSE, now=T),
            Reason.CAPACITY)
    # expired challenges are forgotten after the grace period, freeing room
    later = T + 5 + 300
    small.issue(b.id, nonce=nonce("c3"), purpose=PURPOSE, now=later)
    tiny = Verifier(a.id, registry, max_nonces=1)
    challenge = tiny.issue(b.id, nonce=nonce("t1"), purpose=PURPOSE, now=T)
    refused(lambda: tiny.check(answer(b, challenge, a, "pt1"), now=T), Reason.CAPACITY)


@pytest.mark.parametrize("kwargs", [
    {"nonce": b"short"}, {"purpose": ""}, {"purpose": "x" * 500}, {"ttl": 0}, {"now": -1},
    {"now": 1.5},
])
def test_issue_refuses_malformed_input(world, kwargs):
    _, a, b = world
    args = {"nonce": nonce("m"), "purpose": PURPOSE, "now": T} | kwargs
    refused(lambda: a.verifier.issue(b.id, **args), Reason.MALFORMED)


def test_cannot_challenge_oneself(world):
    _, a, _ = world
    refused(lambda: a.verifier.issue(a.id, nonce=nonce("self"), purpose=PURPOSE, now=T),
            Reason.WRONG_PEER)


def test_hand_built_responses_are_checked(world):
    _, a, b = world
    challenge = a.verifier.issue(b.id, nonce=nonce("h"), purpose=PURPOSE, now=T)
    good = answer(b, challenge, a, "ph")
    for bad in (good._replace(prover_nonce=[1]), good._replace(signature=b"short"),
                good._replace(purpose=3), good._replace(expires_at=-1)):
        refused(lambda bad=bad: a.verifier.check(bad, now=T), Reason.MALFORMED)
    assert a.verifier.check(good, now=T).identifier == b.id  # still outstanding


def test_wire_round_trip(world):
    _, a, b = world
    challenge = a.verifier.issue(b.id, nonce=nonce("wire"), purpose=PURPOSE, now=T)
    assert Challenge.from_bytes(challenge.to_bytes()) == challenge
    response = answer(b, challenge, a, "pwire")
    assert Response.from_bytes(response.to_bytes()) == response
    with pytest.raises(RecordDecodeError):
        Challenge.from_bytes(response.to_bytes())
    with pytest.raises(RecordDecodeError):
        Response.from_bytes(challenge.to_bytes())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_decode_error(data):
    for decoder in (Challenge.from_bytes, Response.from_bytes):
        try:
            decoder(data)
        except RecordDecodeError:
            pass
