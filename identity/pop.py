"""Mutual proof of possession: challenge-response against the registry (pure).

Theory of operation
-------------------
A proof of possession shows that a peer controls the *current* key of an identifier
without revealing it: the verifier picks a fresh challenge, the prover signs a transcript
that contains it, and the verifier checks the Ed25519 signature with the key the
registry holds for the prover. An EdDSA signature over a verifier-chosen challenge is a
Fiat-Shamir-transformed Schnorr proof of knowledge of the private key (RFC 8235 shape).

The transcript (canonical msgpack, signed as ``POP_DOMAIN + transcript``) binds:
``purpose`` (what the proof is for), ``v`` and ``p`` (the verifier's and the prover's
identifiers: fixed roles, so a proof cannot be reflected or reused with roles swapped),
``nv`` (the verifier's 32-byte nonce: freshness for the verifier), ``np`` (the prover's
own 32-byte nonce: the prover never signs a message chosen entirely by someone else)
and ``exp`` (expiry, Unix seconds). Mutual authentication is the ISO/IEC 9798-3
three-pass exchange run with these two calls each way::

    A: ca = va.issue(B, nonce=nA, now=t)                     A -> B: ca
    B: rb = prove(sb, ca, nonce=nB, me=B, peer=A, purpose=P, now=t)
       cb = vb.issue(A, nonce=nB, now=t)                     B -> A: rb, cb
    A: va.check(rb, now=t)   (B is authenticated to A)
       ra = prove(sa, cb, nonce=nA, me=A, peer=B, purpose=P, now=t)   A -> B: ra
    B: vb.check(ra, now=t)   (A is authenticated to B)

so each transcript holds both nonces. ``peer`` must be the identity the prover is
actually talking to (the transport's authenticated PeerId resolved in the registry):
checking it is what stops a relay (man in the middle) from forwarding another
verifier's challenge. :meth:`Verifier.check` returns the prover's key state so the shell
can also compare ``state.peer_id`` with the connection's remote PeerId.

State: a :class:`Verifier` keeps its outstanding challenges (each usable once, whatever
the outcome) and a replay cache of every nonce it has seen, kept until the challenge's
expiry plus a grace period. Both are bounded; when full of unexpired entries it refuses
with CAPACITY rather than forget a nonce (fail closed). No clock, no randomness:
``now`` and nonces are inputs. Refusals raise :class:`PopError` (a RecordError) with a
precise ``reason``.
"""

from __future__ import annotations

import heapq
from typing import NamedTuple

from identity import canonical
from identity.records import KeyState, Reason, RecordDecodeError, RecordError
from identity.registry import Registry
from identity.signer import Signer, verify_signature

__all__ = ["NONCE_BYTES", "POP_DOMAIN", "Challenge", "PopError", "Response", "Verifier", "prove"]

#: Signature domain of proof-of-possession transcripts.
POP_DOMAIN = b"meshnode/proof-of-possession/v1\n"
#: Length of every nonce, bytes.
NONCE_BYTES = 32
#: Default lifetime of a challenge, seconds.
DEFAULT_TTL = 30
#: Seconds an expired challenge and its nonces are kept after expiry, so that a late
#: answer is refused as EXPIRED (not UNKNOWN_CHALLENGE) and replays stay recognisable.
DEFAULT_GRACE = 300
MAX_PURPOSE_CHARS = 128
_MAX_ID_CHARS = 128


class PopError(RecordError):
    """A proof of possession (or a challenge) was refused; ``reason`` says why."""


def _check_nonce(nonce: object) -> bytes:
    if type(nonce) is not bytes or len(nonce) != NONCE_BYTES:
        raise PopError(Reason.MALFORMED, f"a nonce is {NONCE_BYTES} bytes")
    return nonce


def _check_text(value: object, limit: int, what: str) -> str:
    if type(value) is not str or not 0 < len(value) <= limit:
        raise PopError(Reason.MALFORMED, f"{what} is a non-empty str of at most {limit} chars")
    return value


def _check_time(value: object) -> int:
    if type(value) is not int or not 0 <= value < 2**63:
        raise PopError(Reason.MALFORMED, "times are non-negative ints (Unix seconds)")
    return value


def _decode_map(data: bytes, fields: tuple[str, ...]) -> dict:
    try:
        value = canonical.decode(data, max_bytes=1024)
    except canonical.DecodeError as exc:
        raise RecordDecodeError(str(exc)) from None
    if type(value) is not dict or tuple(value) != fields:
        raise RecordDecodeError(f"expected fields {fields}")
    return value


class Challenge(NamedTuple):
    """Verifier -> prover: "prove, for ``purpose``, that you are ``prover``".

    ``verifier``/``prover`` are identifiers, ``nonce`` is the verifier's 32 bytes,
    ``expires_at`` Unix seconds.
    """

    purpose: str
    verifier: str
    prover: str
    nonce: bytes
    expires_at: int

    def to_bytes(self) -> bytes:
        """Canonical msgpack map."""
        return canonical.encode({"purpose": self.purpose, "v": self.verifier,
                                 "p": self.prover, "nv": self.nonce, "exp": self.expires_at})

    @classmethod
    def from_bytes(cls, data: bytes) -> Challenge:
        """Decode and check field shapes. Raises RecordDecodeError only."""
        m = _decode_map(data, ("exp", "nv", "p", "purpose", "v"))
        try:
            return cls._checked(m["purpose"], m["v"], m["p"], m["nv"], m["exp"])
        except PopError as exc:
            raise RecordDecodeError(exc.detail) from None

    @classmethod
    def _checked(cls, purpose: object, verifier: object, prover: object, nonce: object,
                 expires_at: object) -> Challenge:
        return cls(
            _check_text(purpose, MAX_PURPOSE_CHARS, "purpose"),
            _check_text(verifier, _MAX_ID_CHARS, "verifier"),
            _check_text(prover, _MAX_ID_CHARS, "prover"),
            _check_nonce(nonce), _check_time(expires_at),
        )


class Response(NamedTuple):
    """Prover -> verifier: the transcript fields and the prover's 64-byte signature."""

    purpose: str
    verifier: str
    prover: str
    verifier_nonce: bytes
    prover_nonce: bytes
    expires_at: int
    signature: bytes

    def transcript(self) -> bytes:
        """The canonical bytes the prover signs (after ``POP_DOMAIN``)."""
        return canonical.encode({
            "t": "pop", "purpose": self.purpose, "v": self.verifier, "p": self.prover,
            "nv": self.verifier_nonce, "np": self.prover_nonce, "exp": self.expires_at,
        })

    def to_bytes(self) -> bytes:
        """Canonical msgpack ``[transcript, signature]``."""
        return canonical.encode([self.transcript(), self.signature])

    @classmethod
    def from_bytes(cls, data: bytes) -> Response:
        """Decode and check field shapes. Raises RecordDecodeError only."""
        try:
            outer = canonical.decode(data, max_bytes=2048)
        except canonical.DecodeError as exc:
            raise RecordDecodeError(str(exc)) from None
        if type(outer) is not list or len(outer) != 2 or type(outer[0]) is not bytes:
            raise RecordDecodeError("a response is [transcript, signature]")
        signature = outer[1]
        if type(signature) is not bytes or len(signature) != 64:
            raise RecordDecodeError("signature is 64 bytes")
        m = _decode_map(outer[0], ("exp", "np", "nv", "p", "purpose", "t", "v"))
        if m["t"] != "pop":
            raise RecordDecodeError("not a proof-of-possession transcript")
        try:
            ch = Challenge._checked(m["purpose"], m["v"], m["p"], m["nv"], m["exp"])
            prover_nonce = _check_nonce(m["np"])
        except PopError as exc:
            raise RecordDecodeError(exc.detail) from None
        return cls(ch.purpose, ch.verifier, ch.prover, ch.nonce, prover_nonce,
                   ch.expires_at, signature)


def prove(signer: Signer, challenge: Challenge, *, nonce: bytes, me: str, peer: str,
          purpose: str, now: int) -> Response:
    """Answer ``challenge`` as ``me`` with ``signer`` (``me``'s current key).

    ``nonce`` is the prover's fresh 32 bytes; ``peer`` is the identifier of the party the
    prover is actually talking to and ``purpose`` what it expects to prove; ``now`` is
    Unix seconds. Raises PopError: WRONG_PEER (challenge is for someone else or from
    another verifier), WRONG_PURPOSE, EXPIRED, MALFORMED (bad nonce, nonce reflected).
    """
    challenge = Challenge._checked(*challenge)
    if challenge.prover != me or challenge.verifier != peer or me == peer:
        raise PopError(Reason.WRONG_PEER, "challenge names other peers")
    if challenge.purpose != purpose:
        raise PopError(Reason.WRONG_PURPOSE, f"challenge is for {challenge.purpose!r}")
    if _check_time(now) >= challenge.expires_at:
        raise PopError(Reason.EXPIRED, f"challenge expired at {challenge.expires_at}")
    if _check_nonce(nonce) == challenge.nonce:
        raise PopError(Reason.MALFORMED, "prover nonce equals the verifier nonce")
    unsigned = Response(challenge.purpose, challenge.verifier, challenge.prover,
                        challenge.nonce, nonce, challenge.expires_at, b"")
    signature = bytes(signer.sign(POP_DOMAIN + unsigned.transcript()))
    return unsigned._replace(signature=signature)


class Verifier:
    """Issues challenges as ``me`` and checks responses against ``registry``.

    ``max_outstanding`` bounds open challenges, ``max_nonces`` the replay cache (which
    also counts open challenges); entries are forgotten ``grace`` seconds after expiry.
    """

    def __init__(self, me: str, registry: Registry, *, max_outstanding: int = 10_000,
                 max_nonces: int = 100_000, grace: int = DEFAULT_GRACE) -> None:
        self._grace = grace
        self.me = _check_text(me, _MAX_ID_CHARS, "me")
        self._registry = registry
        self._max_outstanding = max_outstanding
        self._max_nonces = max_nonces
        self._outstanding: dict[bytes, Challenge] = {}
        self._seen: dict[bytes, int] = {}  # nonce -> forget after (Unix seconds)
        self._expiry: list[tuple[int, bytes]] = []  # heap over _seen and _outstanding

    def issue(self, peer: str, *, nonce: bytes, purpose: str, now: int,
              ttl: int = DEFAULT_TTL) -> Challenge:
        """A challenge for ``peer`` (identifier) to prove ``purpose`` before
        ``now + ttl`` (seconds). ``nonce`` is 32 fresh bytes from the shell's CSPRNG.
        Raises PopError: MALFORMED, REPLAYED (nonce already used), CAPACITY.
        """
        if type(ttl) is not int or ttl <= 0:
            raise PopError(Reason.MALFORMED, "ttl is a positive int (seconds)")
        challenge = Challenge._checked(purpose, self.me, peer, nonce, _check_time(now) + ttl)
        if peer == self.me:
            raise PopError(Reason.WRONG_PEER, "cannot challenge oneself")
        self._purge(now)
        if nonce in self._seen or nonce in self._outstanding:
            raise PopError(Reason.REPLAYED, "nonce already used")
        if (len(self._outstanding) >= self._max_outstanding
                or len(self._seen) + len(self._outstanding) >= self._max_nonces):
            raise PopError(Reason.CAPACITY, "too many outstanding challenges or nonces")
        self._outstanding[nonce] = challenge
        heapq.heappush(self._expiry, (challenge.expires_at, nonce))
        return challenge

    def check(self, response: Response | bytes, *, now: int) -> KeyState:
        """Verify a response to one of our challenges at ``now`` (Unix seconds); return
        the prover's key state. The challenge is consumed whatever the outcome.

        Raises PopError: MALFORMED, UNKNOWN_CHALLENGE, REPLAYED, WRONG_PEER,
        WRONG_PURPOSE, EXPIRED, UNKNOWN_IDENTIFIER, DUPLICITOUS, REVOKED, BAD_SIGNATURE,
        CAPACITY.
        """
        if isinstance(response, Response):  # re-derive: hand-built fields are checked too
            try:
                response = response.to_bytes()
            except (TypeError, ValueError, OverflowError):
                raise RecordDecodeError("response fields have no canonical form") from None
        response = Response.from_bytes(response)
        self._purge(_check_time(now))
        challenge = self._outstanding.pop(response.verifier_nonce, None)
        if challenge is None:
            if response.verifier_nonce in self._seen:
                raise PopError(Reason.REPLAYED, "challenge already answered")
            raise PopError(Reason.UNKNOWN_CHALLENGE, "no such outstanding challenge")
        self._seen[challenge.nonce] = challenge.expires_at  # heap entry already pushed
        self._check_context(response, challenge, now)
        state = self._registry.state(response.prover)
        if state is None:
            raise PopError(Reason.UNKNOWN_IDENTIFIER, response.prover)
        if state.duplicitous:
            raise PopError(Reason.DUPLICITOUS, f"{state.identifier} has duplicity evidence")
        if state.revoked:
            raise PopError(Reason.REVOKED, f"{state.identifier} is revoked")
        message = POP_DOMAIN + response.transcript()
        if not verify_signature(state.public_key, message, response.signature):
            raise PopError(Reason.BAD_SIGNATURE, "not signed by the prover's current key")
        self._remember(response.prover_nonce, challenge.expires_at)
        return state

    def _check_context(self, response: Response, challenge: Challenge, now: int) -> None:
        if response.verifier != self.me or response.prover != challenge.prover:
            raise PopError(Reason.WRONG_PEER, "response names other peers")
        if response.purpose != challenge.purpose:
            raise PopError(Reason.WRONG_PURPOSE, f"response is for {response.purpose!r}")
        if response.expires_at != challenge.expires_at:
            raise PopError(Reason.MALFORMED, "response expiry differs from the challenge")
        if now >= challenge.expires_at:
            raise PopError(Reason.EXPIRED, f"challenge expired at {challenge.expires_at}")
        nonce = response.prover_nonce
        if nonce == challenge.nonce or nonce in self._seen or nonce in self._outstanding:
            raise PopError(Reason.REPLAYED, "prover nonce seen before")

    def _remember(self, nonce: bytes, until: int) -> None:
        if len(self._seen) + len(self._outstanding) >= self._max_nonces:
            raise PopError(Reason.CAPACITY, "replay cache full of unexpired nonces")
        self._seen[nonce] = until
        heapq.heappush(self._expiry, (until, nonce))

    def _purge(self, now: int) -> None:
        """Forget nonces and challenges that expired at least ``grace`` seconds ago."""
        heap = self._expiry
        while heap and heap[0][0] + self._grace <= now:
            until, nonce = heapq.heappop(heap)
            if self._seen.get(nonce) == until:
                del self._seen[nonce]
            challenge = self._outstanding.get(nonce)
            if challenge is not None and challenge.expires_at == until:
                del self._outstanding[nonce]
