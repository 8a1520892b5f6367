"""Deterministic conflict resolution: a built-in replicated state machine of claims.

Theory of operation
-------------------
PBFT totally orders batches; a state machine that is a pure function of that order
resolves conflicts the same way at every replica, whatever order requests *arrived* in
(seed INV-005). :class:`ClaimsStateMachine` is the built-in example: operations claim and
release named resources.

* ``claim(resource)`` by client ``c``: if nobody holds ``resource``, ``c`` now holds it
  (result ``ok``); otherwise the claim is **rejected** with the reason naming the holder
  and the sequence number at which it won. The first claim in *committed* order wins.
* ``release(resource)``: only the holder may release; anyone else is rejected.

Every outcome, including rejections, is recorded (``outcomes``) so a loser can later
learn why it lost. Results are bytes: ``b"ok"`` or :data:`REJECTED` + reason.
Ops are canonical msgpack ``[verb, resource]`` (:func:`claim_op`, :func:`release_op`);
anything else is rejected as malformed, never raised.
"""

from __future__ import annotations

from collections.abc import Sequence

from identity.canonical import DecodeError, decode, encode

from .messages import Request

__all__ = ["OK", "REJECTED", "ClaimsStateMachine", "claim_op", "release_op"]

OK = b"ok"
REJECTED = b"\x00rejected: "
_MAX_OUTCOMES = 4096


def claim_op(resource: str) -> bytes:
    """``op`` bytes claiming ``resource``."""
    return encode(["claim", resource])


def release_op(resource: str) -> bytes:
    """``op`` bytes releasing ``resource``."""
    return encode(["release", resource])


class ClaimsStateMachine:
    """Resources held by clients; first claim in committed order wins. Implements
    :class:`consensus.state.StateMachine`."""

    def __init__(self) -> None:
        self.holders: dict[str, tuple[str, int]] = {}    # resource -> (client, seq)
        self.outcomes: list[tuple[int, str, int, bytes]] = []  # (seq, client, rid, result)

    def apply(self, seq: int, requests: Sequence[Request]) -> list[bytes]:
        """Execute the committed ``requests`` of sequence number ``seq`` in order."""
        out = []
        for req in requests:
            res = self._one(seq, req)
            out.append(res)
            self.outcomes.append((seq, req.client, req.rid, res))
        del self.outcomes[:-_MAX_OUTCOMES]
        return out

    def _one(self, seq: int, req: Request) -> bytes:
        try:
            verb, resource = decode(req.op)
        except (DecodeError, ValueError, TypeError):
            return REJECTED + b"malformed op"
        if not isinstance(verb, str) or not isinstance(resource, str):
            return REJECTED + b"malformed op"
        holder = self.holders.get(resource)
        if verb == "claim":
            if holder is None:
                self.holders[resource] = (req.client, seq)
                return OK
            who, won = holder
            return REJECTED + f"{resource!r} held by {who!r} since seq {won}".encode()
        if verb == "release":
            if holder is None or holder[0] != req.client:
                return REJECTED + f"{resource!r} not held by {req.client!r}".encode()
            del self.holders[resource]
            return OK
        return REJECTED + b"unknown verb"

    def snapshot(self) -> bytes:
        holders = [[r, c, s] for r, (c, s) in sorted(self.holders.items())]
        return encode([holders, [list(o) for o in self.outcomes]])

    def restore(self, snapshot: bytes) -> None:
        holders, outcomes = decode(snapshot)
        self.holders = {r: (c, s) for r, c, s in holders}
        self.outcomes = [(s, c, rid, res) for s, c, rid, res in outcomes]
