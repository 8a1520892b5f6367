"""A node's identity home: HSM configuration and key event log on disk, crash-safe.

Theory of operation
-------------------
``DIR/identity.json`` says which PKCS#11 token holds the keys (module, token label,
key-label prefix, and for the embedded default the SoftHSM config and PIN file). It is
written once, at enrollment. ``DIR/kel.msgpack`` holds the key event log (inception,
rotations, revocation); it is the only mutable file and is replaced atomically (write a
temporary file, fsync, rename, fsync the directory), so a kill at any point leaves
either the old or the new log, never a torn one.

Key labels are derived from the log, never stored: the key established by the event
with sequence number ``s`` is labelled ``<prefix>-<s>`` and the pre-rotated next key it
commits to is ``<prefix>-<s+1>``. So every step is resumable: a rotation killed after
generating the new next key in the token but before writing the log finds that key on
retry and reuses it (it was never published), and an enrollment killed half-way
resumes where it stopped.

The PIN never appears on a command line: it comes from ``MESHNODE_HSM_PIN`` or a PIN
file (mode 0600). The embedded default writes its own random PINs under ``DIR/hsm``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from identity import records
from identity.bundle import encode_bundle
from identity.did import did_key_from_public_key, peer_id_from_public_key
from identity.pkcs11 import HsmConfig, Token
from identity.softhsm import load_embedded, provision_embedded

__all__ = ["IdentityHome", "IdentityHomeError", "atomic_write"]

CONFIG_NAME = "identity.json"
KEL_NAME = "kel.msgpack"
DEFAULT_KEY_LABEL = "meshnode"
#: Lifetime of an exported identity record, seconds (one day).
RECORD_TTL_S = 24 * 3600


class IdentityHomeError(RuntimeError):
    """The home directory is missing, not enrolled, already enrolled or corrupt."""


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content.

    Writes ``path.tmp`` (created with ``mode``), fsyncs it, renames it over ``path`` and
    fsyncs the directory. Raises OSError on I/O failure.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass(frozen=True)
class HsmSettings:
    """Where the keys live (the non-secret half of :class:`HsmConfig`)."""

    module: str
    token_label: str
    key_label: str
    embedded: bool
    conf: str | None = None
    pin_file: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "token_label": self.token_label,
            "key_label": self.key_label,
            "embedded": self.embedded,
            "conf": self.conf,
            "pin_file": self.pin_file,
        }


class IdentityHome:
    """The identity kept under one home directory ``home`` (a :class:`pathlib.Path`)."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)

    # ---- paths and loading -------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_NAME

    @property
    def kel_path(self) -> Path:
        return self.home / KEL_NAME

    def is_enrolled(self) -> bool:
        return self.config_path.exists() and self.kel_path.exists()

    def settings(self) -> HsmSettings:
        """The HSM settings from ``identity.json``. Raises IdentityHomeError if absent."""
        try:
            raw = json.loads(self.config_path.read_text())
            return HsmSettings(**raw["pkcs11"])
        except FileNotFoundError:
            raise IdentityHomeError(
                f"no identity under {self.home}; run `meshnode identity enroll --home {self.home}`"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise IdentityHomeError(f"{self.config_path} is corrupt: {exc}") from None

    def events(self) -> list[records.KeyEvent]:
        """The key event log, decoded (not yet verified)."""
        try:
            data = self.kel_path.read_bytes()
        except FileNotFoundError:
            raise IdentityHomeError(
                f"no key event log under {self.home}; "
                f"run `meshnode identity enroll --home {self.home}`"
            ) from None
        return records.decode_log(data)

    def state(self) -> records.KeyState:
        """The verified key state. Raises records.RecordError if the log is invalid."""
        return records.verify_log(self.events())

    def hsm_config(self, env: Mapping[str, str] = os.environ) -> HsmConfig:
        """Rebuild the :class:`HsmConfig` (with the PIN) for this home."""
        s = self.settings()
        if s.embedded:
            return load_embedded(self.home)
        return HsmConfig.from_sources(s.module, s.token_label, pin_file=s.pin_file, env=env)

    # ---- key labels ----------------------------------------------------------------
    @staticmethod
    def key_label_for(prefix: str, seq: int) -> str:
        """Label of the key established by the event with sequence number ``seq``."""
        return f"{prefix}-{seq}"

    def current_key_label(self, state: records.KeyState | None = None) -> str:
        state = state or self.state()
        return self.key_label_for(self.settings().key_label, state.establishment_seq)

    # ---- operations ----------------------------------------------------------------
    def enroll(
        self,
        *,
        module: str | None = None,
        token_label: str | None = None,
        pin_file: str | None = None,
        key_label: str = DEFAULT_KEY_LABEL,
        env: Mapping[str, str] = os.environ,
        now: float | None = None,
    ) -> records.KeyState:
        """Create the identity: provision (embedded default) or open the token, generate
        the current and the pre-rotated next key inside it, sign the inception event.

        With ``module=None`` the embedded SoftHSM default is provisioned under
        ``home/hsm``. Resumes an enrollment that was interrupted. Raises
        IdentityHomeError when already enrolled, Pkcs11Error when the HSM refuses.
        """
        if self.is_enrolled():
            raise IdentityHomeError(f"{self.home} already holds an identity (see `identity show`)")
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        if module is None:
            cfg = self._embedded_config(token_label or "meshnode")
            settings = HsmSettings(
                cfg.module, cfg.token_label, key_label, True, cfg.softhsm_conf, cfg.pin_file
            )
        else:
            if not token_label:
                raise IdentityHomeError("--token-label is required with --pkcs11-module")
            cfg = HsmConfig.from_sources(module, token_label, pin_file=pin_file, env=env)
            settings = HsmSettings(module, token_label, key_label, False, None, pin_file)
        with Token.open(cfg) as token:
            current = self._key(token, self.key_label_for(key_label, 0))
            nxt = self._key(token, self.key_label_for(key_label, 1))
            event = records.incept(current, nxt.public_key, issued_at=_now(now))
        config = json.dumps({"pkcs11": settings.to_json()}, indent=2).encode()
        atomic_write(self.config_path, config)
        atomic_write(self.kel_path, records.encode_log([event]))
        return records.verify_log([event])

    def rotate(self, *, env: Mapping[str, str] = os.environ, now: float | None = None):
        """Promote the pre-rotated next key to current and commit to a fresh next key
        (generated in the token). Returns the new KeyState. Raises RecordError when the
        identity is revoked, Pkcs11Error when the HSM refuses.
        """
        events = self.events()
        state = records.verify_log(events)
        if state.revoked:
            raise records.RecordError(records.Reason.REVOKED, "identity is revoked")
        prefix = self.settings().key_label
        seq = state.seq + 1
        with Token.open(self.hsm_config(env)) as token:
            new_current = token.signer(self.key_label_for(prefix, state.establishment_seq + 1))
            new_next = self._key(token, self.key_label_for(prefix, seq + 1))
            event = records.rotate(events, new_current, new_next.public_key, issued_at=_now(now))
        self._append(events, event)
        return records.verify_log([*events, event])

    def revoke(self, *, env: Mapping[str, str] = os.environ, now: float | None = None):
        """Revoke the identity for good (signed with the pre-rotated next key, so a
        stolen current key cannot do it). Returns the final KeyState.
        """
        events = self.events()
        state = records.verify_log(events)
        if state.revoked:
            raise records.RecordError(records.Reason.REVOKED, "identity is already revoked")
        prefix = self.settings().key_label
        with Token.open(self.hsm_config(env)) as token:
            signer = token.signer(self.key_label_for(prefix, state.establishment_seq + 1))
            event = records.revoke(events, signer, issued_at=_now(now))
        self._append(events, event)
        return records.verify_log([*events, event])

    def describe(self) -> dict[str, Any]:
        """What `meshnode identity show --json` prints."""
        s = self.settings()
        state = self.state()
        key = state.current_key
        out: dict[str, Any] = {
            "id": state.identifier,
            "did": did_key_from_public_key(key),
            "peer_id": peer_id_from_public_key(key),
            "public_key_hex": key.hex(),
            "sequence": state.seq,
            "revoked": state.revoked,
            "next_key_digest_hex": state.next_digest.hex(),
            "pkcs11": {
                "module": s.module,
                "token_label": s.token_label,
                "key_label": self.key_label_for(s.key_label, state.establishment_seq),
            },
            "home": str(self.home),
        }
        if s.embedded:
            out["pkcs11"]["conf"] = s.conf
            out["pkcs11"]["pin_file"] = s.pin_file
        return out

    def export_bundle(
        self,
        *,
        listen_addrs: tuple[str, ...] = (),
        ttl_s: int = RECORD_TTL_S,
        env: Mapping[str, str] = os.environ,
        now: float | None = None,
    ) -> bytes:
        """The identity as one portable file: the key event log plus, unless revoked, a
        fresh identity record signed by the current key (valid ``ttl_s`` seconds).

        Format: :mod:`identity.bundle`; verify with :func:`identity.bundle.verify_bundle`.
        """
        events = self.events()
        state = records.verify_log(events)
        record = None
        if not state.revoked:
            issued = _now(now)
            with Token.open(self.hsm_config(env)) as token:
                signer = token.signer(self.current_key_label(state))
                record = records.issue_record(
                    signer, state.identifier, version=issued, listen_addrs=listen_addrs,
                    issued_at=issued, expires_at=issued + ttl_s,
                ).to_bytes()
        return encode_bundle(events, record)

    # ---- helpers -------------------------------------------------------------------
    def _embedded_config(self, token_label: str) -> HsmConfig:
        if (self.home / "hsm").exists():
            return load_embedded(self.home)  # resume an interrupted enrollment
        return provision_embedded(self.home, token_label)

    @staticmethod
    def _key(token: Token, label: str):
        """The key ``label``, generated if absent (resumable steps)."""
        if token.has_key(label):
            return token.signer(label)
        return token.generate_keypair(label)

    def _append(self, events: list, event) -> None:
        atomic_write(self.kel_path, records.encode_log([*events, event]))


def _now(now: float | None) -> int:
    return int(time.time() if now is None else now)
