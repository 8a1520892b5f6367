"""PKCS#11 custody of the node's Ed25519 keys (python-pkcs11; SoftHSM 2.6 by default).

Theory of operation
-------------------
* Keys are generated in the token with ``CKM_EC_EDWARDS_KEY_PAIR_GEN`` (PKCS#11 v3.0
  section 2.3.5), curve ``CKA_EC_PARAMS`` = DER OID 1.3.101.112 (RFC 8410). The private
  key is TOKEN, PRIVATE, SENSITIVE and not EXTRACTABLE: it never leaves the token (and
  SoftHSM encrypts PRIVATE objects on disk). ``CKM_EDDSA`` without parameters is RFC 8032
  PureEdDSA Ed25519: 64-byte signatures any RFC 8032 verifier (PyNaCl) accepts.
* python-pkcs11 loads ONE library per process and calls ``C_Initialize(NULL)``, i.e.
  without ``CKF_OS_LOCKING_OK`` (it cannot pass init args), so SoftHSM does no locking.
  Every PKCS#11 call here, attribute reads included, holds one process-wide lock. SoftHSM
  reads ``SOFTHSM2_CONF`` only at ``C_Initialize``: asking later for another module or
  config raises :class:`Pkcs11Error` instead of silently using the wrong token.
* Login state belongs to the process, not the session: a second ``C_Login`` fails with
  ``CKR_USER_ALREADY_LOGGED_IN`` (even with a wrong PIN) and ``C_Logout`` logs every
  session out. So a token has ONE shared logged-in session per process; opening it again
  checks the PIN against the one that logged in and shares the session (ref-counted).
* Key handles are looked up once (a label search is a linear scan) and kept.
* Creating tokens (``C_InitToken``) and the embedded SoftHSM default live in
  :mod:`identity.softhsm`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sysconfig
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as pkx

from identity.signer import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, SignerError, verify_signature

__all__ = [
    "ED25519_EC_PARAMS", "PIN_ENV", "HsmConfig", "Pkcs11Error", "Pkcs11Signer", "Token",
    "default_softhsm_module",
]

#: Environment variable holding the user PIN (a PIN is never taken from argv).
PIN_ENV = "MESHNODE_HSM_PIN"
#: ``CKA_EC_PARAMS`` of Ed25519: DER ``OBJECT IDENTIFIER 1.3.101.112`` (RFC 8410).
ED25519_EC_PARAMS = bytes.fromhex("06032b6570")
_EC_POINT_PREFIX = b"\x04\x20"  # CKA_EC_POINT: DER OCTET STRING of 32 bytes
_SELF_TEST = b"meshnode pkcs11 key self-test"
_MAX_TOKEN_LABEL = 32  # CK_TOKEN_INFO.label: 32 bytes, blank padded
_MULTIARCH = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
_SOFTHSM_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    f"/usr/lib/{_MULTIARCH}/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
_WRONG_PIN = (pkx.PinIncorrect, pkx.PinInvalid, pkx.PinLenRange)
#: Serialises every PKCS#11 call in this process (the module runs without OS locking).
_LOCK = threading.RLock()


class Pkcs11Error(SignerError):
    """The HSM cannot be used: module, token, key or PIN missing or wrong (fail closed).
    The message is one line (whitespace collapsed) a user can act on."""

    def __init__(self, message: object) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class HsmConfig:
    """Where the key lives: PKCS#11 module path, token label and user PIN (not in repr).

    ``softhsm_conf``: the ``SOFTHSM2_CONF`` path (embedded default; ``None`` keeps the
    process environment). ``pin_file``: where the PIN came from (for messages).
    """

    module: str
    token_label: str
    pin: str = field(repr=False)
    softhsm_conf: str | None = None
    pin_file: str | None = None

    @classmethod
    def from_sources(
        cls, module: str, token_label: str, *, pin_file: str | None,
        env: Mapping[str, str] = os.environ,
    ) -> HsmConfig:
        """PIN from ``env["MESHNODE_HSM_PIN"]`` if non-empty, else the first line of
        ``pin_file`` (refused if world-readable). Raises :class:`Pkcs11Error` when there
        is no PIN or the file cannot be read."""
        if env.get(PIN_ENV):
            return cls(module, token_label, env[PIN_ENV])
        if pin_file is None:
            raise Pkcs11Error(f"no HSM PIN: set {PIN_ENV} or pass --pin-file FILE")
        return cls(module, token_label, _read_pin_file(Path(pin_file)), pin_file=pin_file)

    def _pin_hint(self) -> str:
        return f"check the PIN in {self.pin_file}" if self.pin_file else f"check {PIN_ENV}"


def _read_pin_file(path: Path) -> str:
    try:
        if path.stat().st_mode & 0o004:
            raise Pkcs11Error(f"PIN file {path} is readable by all users; run `chmod 600 {path}`")
        pin = path.read_text(encoding="utf-8").split("\n", 1)[0].rstrip("\r")
    except OSError as exc:
        raise Pkcs11Error(f"cannot read PIN file {path}: {exc.strerror}") from None
    if not pin:
        raise Pkcs11Error(f"PIN file {path} is empty")
    return pin


def default_softhsm_module() -> str:
    """Path of ``libsofthsm2.so`` in the usual Debian/Ubuntu places; raises
    :class:`Pkcs11Error` when SoftHSM is not installed."""
    for candidate in _SOFTHSM_CANDIDATES:
        if os.path.isfile(candidate):
            return candidate
    raise Pkcs11Error("SoftHSM is not installed (no libsofthsm2.so); run "
                      "`apt-get install -y softhsm2` or pass --pkcs11-module PATH")


# --------------------------------------------------------------------------- library


@dataclass
class _SharedSession:
    session: Any  # pkcs11.Session logged in as CKU_USER
    pin_digest: bytes
    refs: int = 0


@dataclass
class _Library:
    module: str  # realpath of the .so
    conf: str | None  # SOFTHSM2_CONF in force at C_Initialize
    lib: Any  # pkcs11.lib
    pid: int
    sessions: dict[int, _SharedSession] = field(default_factory=dict)  # by slot id


_library: _Library | None = None


def _load_library(module: str, softhsm_conf: str | None) -> _Library:
    """The process's one initialised PKCS#11 library, loaded on first use."""
    global _library
    if not os.path.isfile(module):
        raise Pkcs11Error(f"PKCS#11 module not found: {module}")
    if softhsm_conf is not None and not os.path.isfile(softhsm_conf):
        raise Pkcs11Error(f"SoftHSM config not found: {softhsm_conf}")
    path = os.path.realpath(module)
    conf = os.path.realpath(softhsm_conf) if softhsm_conf else os.environ.get("SOFTHSM2_CONF")
    with _LOCK:
        if _library is not None:
            if _library.pid != os.getpid():
                raise Pkcs11Error("the PKCS#11 library was initialised before fork(); use the "
                                  "HSM from a freshly started process (multiprocessing 'spawn')")
            if (_library.module, _library.conf) != (path, conf):
                raise Pkcs11Error(
                    f"this process already uses PKCS#11 module {_library.module} "
                    f"(SOFTHSM2_CONF={_library.conf}); one module and config per process, "
                    f"so use {path} (SOFTHSM2_CONF={conf}) from another process")
            return _library
        saved = os.environ.get("SOFTHSM2_CONF")
        if conf is not None:
            os.environ["SOFTHSM2_CONF"] = conf
        try:
            lib = pkcs11.lib(path)
        except pkx.PKCS11Error as exc:
            where = f" with SOFTHSM2_CONF={conf} (is its tokendir there and writable?)"
            raise Pkcs11Error(f"cannot initialise PKCS#11 module {module}"
                              f"{where if conf else ''}: {type(exc).__name__} {exc}") from None
        finally:
            os.environ.pop("SOFTHSM2_CONF", None)
            if saved is not None:
                os.environ["SOFTHSM2_CONF"] = saved
        _library = _Library(path, conf, lib, os.getpid())
        return _library


def _check_token_label(label: str) -> None:
    if not isinstance(label, str) or not label or len(label.encode()) > _MAX_TOKEN_LABEL:
        raise Pkcs11Error(f"token label must be 1-{_MAX_TOKEN_LABEL} bytes, got {label!r}")


def _find_token(lib: _Library, label: str, module: str) -> Any:
    _check_token_label(label)
    try:
        return lib.lib.get_token(token_label=label)
    except pkx.NoSuchToken:
        where = f" (SOFTHSM2_CONF={lib.conf})" if lib.conf else ""
        raise Pkcs11Error(f"no PKCS#11 token labelled {label!r} in {module}{where}; list tokens "
                          f"with `pkcs11-tool --module {module} --list-token-slots`") from None
    except pkx.MultipleTokensReturned:
        raise Pkcs11Error(f"several PKCS#11 tokens are labelled {label!r}") from None


def _pin_digest(pin: str) -> bytes:
    return hashlib.sha256(pin.encode()).digest()


def _login(token: Any, cfg: HsmConfig) -> Any:
    """A new R/W session on ``token``, logged in as CKU_USER with ``cfg.pin``."""
    name = repr(cfg.token_label)
    try:
        return token.open(rw=True, user_pin=cfg.pin)
    except _WRONG_PIN:
        raise Pkcs11Error(f"wrong PIN for PKCS#11 token {name}; {cfg._pin_hint()}") from None
    except pkx.PinLocked:
        raise Pkcs11Error(f"the user PIN of token {name} is locked; the SO must reset it") from None
    except pkx.UserPinNotInitialized:
        raise Pkcs11Error(f"token {name} has no user PIN; initialise it") from None
    except pkx.UserAlreadyLoggedIn:
        raise Pkcs11Error(f"token {name} was logged in by other code in this process; open it "
                          "only through identity.pkcs11.Token") from None
    except pkx.PKCS11Error as exc:
        raise Pkcs11Error(f"cannot log in to token {name}: {exc!r}") from None


# ----------------------------------------------------------------------------- token


class Token:
    """One logged-in session on a PKCS#11 token (also a context manager). Thread-safe:
    every call into the module holds the process-wide PKCS#11 lock."""

    def __init__(self, cfg: HsmConfig, lib: _Library, slot_id: int, shared: _SharedSession):
        """Internal; use :meth:`open`."""
        self.config = cfg
        self._lib, self._slot_id, self._shared = lib, slot_id, shared
        self._signers: dict[str, Pkcs11Signer] = {}
        self._closed = False

    @classmethod
    def open(cls, cfg: HsmConfig) -> Token:
        """Load the module (``SOFTHSM2_CONF`` set before ``C_Initialize``), find the token
        by label, log in. Raises :class:`Pkcs11Error` for a missing module, config or token,
        a wrong PIN, or a second, different module/config in this process."""
        lib = _load_library(cfg.module, cfg.softhsm_conf)
        with _LOCK:
            token = _find_token(lib, cfg.token_label, cfg.module)
            slot_id = token.slot.slot_id
            shared = lib.sessions.get(slot_id)
            if shared is None:
                shared = _SharedSession(_login(token, cfg), _pin_digest(cfg.pin))
                lib.sessions[slot_id] = shared
            elif not hmac.compare_digest(shared.pin_digest, _pin_digest(cfg.pin)):
                raise Pkcs11Error(f"wrong PIN for PKCS#11 token {cfg.token_label!r}; "
                                  f"{cfg._pin_hint()}")
            shared.refs += 1
            return cls(cfg, lib, slot_id, shared)

    def __enter__(self) -> Token:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Token(label={self.config.token_label!r}, module={self.config.module!r}, {state})"

    def _check_open(self) -> Any:
        """The shared session; raises :class:`Pkcs11Error` once this handle is closed."""
        if self._closed:
            raise Pkcs11Error(f"PKCS#11 token {self.config.token_label!r} is closed")
        if self._lib.pid != os.getpid():
            raise Pkcs11Error("PKCS#11 session inherited across fork(); reopen the token")
        return self._shared.session

    def close(self) -> None:
        """Release this handle (idempotent); the last one logs out and closes the session."""
        with _LOCK:
            if self._closed:
                return
            self._closed = True
            self._shared.refs -= 1
            if self._shared.refs > 0 or self._lib.pid != os.getpid():
                return
            del self._lib.sessions[self._slot_id]
            try:
                self._shared.session.close()
            except pkx.PKCS11Error as exc:
                raise Pkcs11Error(f"closing token {self.config.token_label!r}: {exc!r}") from None

    def _keys(self, object_class: ObjectClass, label: str | None = None) -> list[Any]:
        """Objects of ``object_class`` (labelled ``label``); the search runs to the end, so
        no ``C_FindObjects`` operation stays active on the shared session."""
        attrs: dict[Attribute, Any] = {Attribute.CLASS: object_class}
        if label is not None:
            attrs[Attribute.LABEL] = label
        with _LOCK:
            return list(self._check_open().get_objects(attrs))

    def has_key(self, label: str) -> bool:
        """True when the token holds a private key labelled ``label``."""
        return bool(self._keys(ObjectClass.PRIVATE_KEY, label))

    def labels(self) -> list[str]:
        """Labels of the private keys in the token, sorted, without duplicates."""
        with _LOCK:  # reading CKA_LABEL is a PKCS#11 call too
            return sorted({key.label for key in self._keys(ObjectClass.PRIVATE_KEY)})

    def generate_keypair(self, label: str) -> Pkcs11Signer:
        """Generate a persistent Ed25519 key pair labelled ``label`` (1-128 printable
        characters) in the token: ``CKM_EC_EDWARDS_KEY_PAIR_GEN``, OID 1.3.101.112; the
        private key is TOKEN, PRIVATE, SENSITIVE, not EXTRACTABLE, SIGN only (~20-25 ms on
        SoftHSM). Raises :class:`Pkcs11Error` when the label is taken or the token refuses."""
        if not (isinstance(label, str) and 0 < len(label) <= 128 and label.isprintable()):
            raise Pkcs11Error(f"key label must be 1-128 printable characters, got {label!r}")
        with _LOCK:
            session = self._check_open()
            if self._keys(ObjectClass.PRIVATE_KEY, label) or self._keys(
                ObjectClass.PUBLIC_KEY, label
            ):
                raise Pkcs11Error(f"a key labelled {label!r} already exists in token "
                                  f"{self.config.token_label!r}; choose another label")
            try:
                public, private = session.generate_keypair(
                    KeyType.EC_EDWARDS, id=secrets.token_bytes(16), label=label, store=True,
                    capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                    mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                    public_template=_PUBLIC_TEMPLATE, private_template=_PRIVATE_TEMPLATE,
                )
            except pkx.PKCS11Error as exc:
                raise Pkcs11Error(f"token {self.config.token_label!r} cannot generate an "
                                  f"Ed25519 key: {exc!r}") from None
            if len(self._keys(ObjectClass.PRIVATE_KEY, label)) != 1:
                public.destroy()  # another process raced us to this label: undo ours
                private.destroy()
                raise Pkcs11Error(f"a key labelled {label!r} was created concurrently; retry")
            signer = Pkcs11Signer(self, label, private, _raw_public_key(public, label))
            self._signers[label] = signer
            return signer

    def signer(self, label: str) -> Pkcs11Signer:
        """The signer of the key labelled ``label`` (handles looked up once, then kept).
        Raises :class:`Pkcs11Error` when the key is missing, ambiguous, not Ed25519, or its
        halves do not match (checked once by signing and verifying a self-test message)."""
        with _LOCK:
            self._check_open()
            if label in self._signers:
                return self._signers[label]
            private = self._one_key(ObjectClass.PRIVATE_KEY, label)
            public = self._one_key(ObjectClass.PUBLIC_KEY, label)
            if private.key_type != KeyType.EC_EDWARDS:
                raise Pkcs11Error(f"key {label!r} is {private.key_type.name}, not Ed25519")
            signer = Pkcs11Signer(self, label, private, _raw_public_key(public, label))
            if not verify_signature(signer.public_key, _SELF_TEST, signer.sign(_SELF_TEST)):
                raise Pkcs11Error(f"key {label!r}: private and public halves do not match")
            self._signers[label] = signer
            return signer

    def _one_key(self, object_class: ObjectClass, label: str) -> Any:
        found = self._keys(object_class, label)
        kind = "private" if object_class == ObjectClass.PRIVATE_KEY else "public"
        if len(found) != 1:
            raise Pkcs11Error(
                f"{len(found)} {kind} keys are labelled {label!r}; expected one" if found else
                f"no {kind} key labelled {label!r} in token {self.config.token_label!r}; "
                "enroll first (`meshnode identity enroll`)")
        return found[0]


_PUBLIC_TEMPLATE = {Attribute.EC_PARAMS: ED25519_EC_PARAMS, Attribute.TOKEN: True,
                    Attribute.PRIVATE: False, Attribute.VERIFY: True}
_PRIVATE_TEMPLATE = {Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                     Attribute.EXTRACTABLE: False, Attribute.SIGN: True,
                     Attribute.DECRYPT: False, Attribute.UNWRAP: False, Attribute.DERIVE: False}


def _raw_public_key(public: Any, label: str) -> bytes:
    """The 32 raw key bytes of ``CKA_EC_POINT`` (DER ``04 20`` + key, or bare 32 bytes)."""
    point = bytes(public[Attribute.EC_POINT])
    if len(point) == PUBLIC_KEY_BYTES + 2 and point.startswith(_EC_POINT_PREFIX):
        return point[2:]
    if len(point) == PUBLIC_KEY_BYTES:
        return point
    raise Pkcs11Error(f"key {label!r} has a {len(point)}-byte EC point; not an Ed25519 key")


class Pkcs11Signer:
    """An Ed25519 key in a PKCS#11 token, implementing :class:`identity.signer.Signer`:
    ``public_key`` is the raw 32-byte key, ``label`` its CKA_LABEL. Get one from
    :meth:`Token.generate_keypair` or :meth:`Token.signer`."""

    __slots__ = ("_private", "_token", "label", "public_key")

    def __init__(self, token: Token, label: str, private: Any, public_key: bytes) -> None:
        self._token, self._private = token, private
        self.label, self.public_key = label, public_key

    def sign(self, data: bytes) -> bytes:
        """The 64-byte RFC 8032 Ed25519 signature over ``data`` (any length), made in the
        token with ``CKM_EDDSA`` (PKCS#11 v3.0). Thread-safe; ~0.3 ms on SoftHSM, GIL
        released meanwhile. Raises :class:`Pkcs11Error` when closed or refused."""
        with _LOCK:
            self._token._check_open()
            try:
                signature = self._private.sign(bytes(data), mechanism=Mechanism.EDDSA)
            except pkx.PKCS11Error as exc:
                raise Pkcs11Error(f"HSM signing with key {self.label!r} failed: {exc!r}") from None
        if len(signature) != SIGNATURE_BYTES:
            raise Pkcs11Error(f"HSM returned a {len(signature)}-byte signature, expected 64")
        return bytes(signature)

    def __repr__(self) -> str:
        return f"Pkcs11Signer(label={self.label!r}, public_key={self.public_key.hex()[:16]}...)"
