"""Measure the real per-operation costs the CPU model uses, on this machine.

Wall-clock measurement is the point here (this module is never used during a run).
Figures are medians of several repetitions of a timed loop, in seconds per operation
(or per byte for the codec slopes, from a linear fit between a small and a large
message, so the fixed part of a codec call is not counted per byte).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from identity.canonical import decode, encode
from identity.signer import verify_signature
from identity.soft import SoftSigner

__all__ = ["as_cost_flag", "measure"]


def _per_op(fn: Callable[[], object], loops: int, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append((time.perf_counter() - t0) / loops)
    return statistics.median(times)


def _message(payload_bytes: int) -> dict:
    """A PBFT-COMMIT-like message with a payload of about ``payload_bytes``."""
    return {"t": "commit", "view": 3, "seq": 12345, "digest": bytes(32), "from": 17,
            "sig": bytes(64), "body": bytes(payload_bytes)}


def measure(quick: bool = False) -> dict[str, float]:
    """Return measured seconds: ``pynacl_sign_s``, ``pynacl_verify_s``,
    ``encode_fixed_s``, ``encode_byte_s``, ``decode_fixed_s``, ``decode_byte_s``."""
    scale = 10 if quick else 1
    signer = SoftSigner(bytes(range(32)))
    data = encode(_message(100))
    sig = signer.sign(data)
    out = {
        "pynacl_sign_s": _per_op(lambda: signer.sign(data), 2000 // scale),
        "pynacl_verify_s": _per_op(lambda: verify_signature(signer.public_key, data, sig),
                                   2000 // scale),
    }
    small, large = _message(0), _message(16_384)
    small_b, large_b = encode(small), encode(large)
    span = len(large_b) - len(small_b)
    enc_s = _per_op(lambda: encode(small), 20_000 // scale)
    enc_l = _per_op(lambda: encode(large), 20_000 // scale)
    dec_s = _per_op(lambda: decode(small_b), 20_000 // scale)
    dec_l = _per_op(lambda: decode(large_b), 20_000 // scale)
    out.update({
        "encode_fixed_s": enc_s, "encode_byte_s": max(0.0, (enc_l - enc_s) / span),
        "decode_fixed_s": dec_s, "decode_byte_s": max(0.0, (dec_l - dec_s) / span),
    })
    return out


def as_cost_flag(figures: dict[str, float]) -> str:
    """A ``--cost`` value from :func:`measure` figures (sign stays the HSM figure)."""
    return (
        f"verify={figures['pynacl_verify_s'] * 1e6:.1f}us,"
        f"encode_byte={figures['encode_byte_s'] * 1e9:.2f}ns,"
        f"decode_byte={figures['decode_byte_s'] * 1e9:.2f}ns"
    )
