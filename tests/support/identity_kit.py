"""Deterministic identities for tests: in-memory keys and valid key event logs."""

from __future__ import annotations

import hashlib

from identity.records import incept, revoke, rotate
from identity.soft import SoftSigner

#: Fixed issue time (Unix seconds) of the first event of every test log.
T = 1_700_000_000


def signer(label: str) -> SoftSigner:
    """An in-memory signer whose key derives from ``label``."""
    return SoftSigner(hashlib.sha256(label.encode()).digest())


def make_log(name: str, rotations: int = 0, revoked: bool = False):
    """A valid log and the controller's keys (key i is current after i rotations)."""
    keys = [signer(f"{name}/{i}") for i in range(rotations + 3)]
    log = [incept(keys[0], keys[1].public_key, issued_at=T)]
    for i in range(1, rotations + 1):
        log.append(rotate(log, keys[i], keys[i + 1].public_key, issued_at=T + i))
    if revoked:
        log.append(revoke(log, keys[rotations + 1], issued_at=T + rotations + 1))
    return log, keys
