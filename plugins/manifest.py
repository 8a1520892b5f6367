"""Plugin manifests: what a plugin is, who wrote it, what it asks for — signed.

Theory of operation
-------------------
An author writes ``plugin.toml`` in the plugin's top-level package directory::

    name = "hasher"
    version = "0.1.0"
    description = "hashes things"          # optional
    capabilities = ["tasks", "kv", "log"]

``meshnode plugin sign plugin.toml --home DIR`` turns it into ``plugin.manifest`` next
to it, signed by the author's HSM-backed identity (the key never leaves the token). The
signed body also carries the author's stable identifier (``mid:...``) and a SHA-256
*code digest* over every ``.py`` file of the package, so the signature covers the code,
not only the name: an edited or swapped module no longer matches its manifest.

Wire format (canonical msgpack): ``{"v": 1, "body": bin, "sig": bin64, "kel": [event
bytes, ...]}``. ``body`` is the canonical map ``{name, version, description, author,
capabilities (sorted), code (32 bytes)}``; ``sig`` is Ed25519 over ``MANIFEST_DOMAIN +
body``; ``kel`` is the author's key event log at signing time, so anyone can verify the
manifest offline: the log must verify (:func:`identity.records.verify_log`), its
identifier must be the body's ``author``, it must not be revoked, and its current key
must have made ``sig``. A node that knows a newer state of the author's log (its
identity registry) passes ``resolve`` to refuse manifests of revoked or duplicitous
authors.

Every refusal is a :class:`ManifestError` with a one-line message and a ``reason``.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from identity import canonical, records
from identity.signer import Signer, verify_signature
from plugins.capabilities import CapabilityError, parse_capabilities
from plugins.protocol import check_name

__all__ = [
    "MANIFEST_DOMAIN",
    "MANIFEST_FILE",
    "SOURCE_FILE",
    "Manifest",
    "ManifestError",
    "ManifestSource",
    "code_digest",
    "load_source",
    "sign_manifest",
    "sign_with_home",
    "verify_manifest",
]

MANIFEST_DOMAIN = b"meshnode/plugin-manifest/v1\n"
MANIFEST_FILE = "plugin.manifest"
SOURCE_FILE = "plugin.toml"
MAX_MANIFEST_BYTES = 256 * 1024
_VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+-]{0,31}")
_BODY_KEYS = {"name", "version", "description", "author", "capabilities", "code"}


class ManifestError(ValueError):
    """A manifest that is missing, malformed, badly signed or does not match its code."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True)
class ManifestSource:
    """The unsigned ``plugin.toml``."""

    name: str
    version: str
    capabilities: frozenset[str]
    description: str = ""


@dataclass(frozen=True)
class Manifest:
    """A verified manifest. ``author_key`` is the key that signed it (32 bytes)."""

    name: str
    version: str
    author: str
    capabilities: frozenset[str]
    code: bytes
    description: str = ""
    author_key: bytes = field(default=b"", repr=False)


def load_source(path: Path) -> ManifestSource:
    """Parse ``plugin.toml``. Raises ManifestError("malformed", ...) naming the problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError("missing", f"no {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError("malformed", f"{path}: {exc}") from None
    unknown = set(raw) - {"name", "version", "description", "capabilities"}
    if unknown:
        raise ManifestError("malformed", f"{path}: unknown key {sorted(unknown)[0]!r}")
    try:
        return _source(raw.get("name"), raw.get("version"), raw.get("capabilities", []),
                       raw.get("description", ""))
    except (ValueError, TypeError) as exc:
        raise ManifestError("malformed", f"{path}: {exc}") from None


def _source(name: Any, version: Any, caps: Any, description: Any) -> ManifestSource:
    check_name(name)
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise ValueError(f"invalid version {version!r}")
    if not isinstance(caps, list):
        raise ValueError("capabilities must be a list of names")
    if not isinstance(description, str) or len(description) > 200:
        raise ValueError("description must be a string of at most 200 characters")
    parsed = parse_capabilities(caps, where="capabilities")
    return ManifestSource(name, version, frozenset(c.value for c in parsed), description)


def code_digest(package_dir: Path) -> bytes:
    """SHA-256 over the sorted ``(relative path, sha256(content))`` of every ``.py``
    file under ``package_dir`` (``__pycache__`` skipped). Raises OSError."""
    root = Path(package_dir)
    entries = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts or not path.is_file():
            continue
        entries.append([rel.as_posix(), hashlib.sha256(path.read_bytes()).digest()])
    return hashlib.sha256(canonical.encode(entries)).digest()


def _body(source: ManifestSource, author: str, code: bytes) -> bytes:
    return canonical.encode({
        "name": source.name, "version": source.version, "description": source.description,
        "author": author, "capabilities": sorted(source.capabilities), "code": code,
    })


def sign_manifest(source: ManifestSource, *, signer: Signer,
                  kel: list[records.KeyEvent], code: bytes) -> bytes:
    """The signed manifest bytes. ``signer`` must hold the current key of ``kel`` (the
    author's verified, unrevoked key event log). Raises ManifestError or RecordError."""
    state = records.verify_log(kel)
    if state.revoked:
        raise ManifestError("revoked", f"author {state.identifier} is revoked")
    if signer.public_key != state.public_key:
        raise ManifestError("wrong_key", "the signer is not the author's current key")
    body = _body(source, state.identifier, code)
    sig = bytes(signer.sign(MANIFEST_DOMAIN + body))
    if not verify_signature(state.public_key, MANIFEST_DOMAIN + body, sig):
        raise ManifestError("bad_signature", "the signer returned an invalid signature")
    return canonical.encode({"v": 1, "body": body, "sig": sig,
                             "kel": [e.to_bytes() for e in kel]})


def sign_with_home(source_path: Path, home: Path, *, env=None) -> tuple[bytes, Manifest]:
    """Sign ``plugin.toml`` at ``source_path`` with the identity in ``home`` (HSM key,
    through :class:`identity.home.IdentityHome` and :class:`identity.pkcs11.Token`),
    over the code of the directory holding it. Returns (manifest bytes, Manifest)."""
    import os

    from identity.home import IdentityHome
    from identity.pkcs11 import Token

    source_path = Path(source_path)
    source = load_source(source_path)
    code = code_digest(source_path.parent)
    ident = IdentityHome(Path(home))
    events = ident.events()
    state = records.verify_log(events)
    with Token.open(ident.hsm_config(os.environ if env is None else env)) as token:
        signer = token.signer(ident.current_key_label(state))
        data = sign_manifest(source, signer=signer, kel=events, code=code)
    return data, verify_manifest(data)


def _decode(data: bytes) -> tuple[dict, dict, bytes, list[records.KeyEvent]]:
    try:
        outer = canonical.decode(data, max_bytes=MAX_MANIFEST_BYTES)
    except canonical.DecodeError as exc:
        raise ManifestError("malformed", f"manifest is not canonical msgpack: {exc}") from None
    if (type(outer) is not dict or set(outer) != {"v", "body", "sig", "kel"}
            or outer["v"] != 1 or type(outer["body"]) is not bytes
            or type(outer["sig"]) is not bytes or type(outer["kel"]) is not list):
        raise ManifestError("malformed", "not a plugin manifest (v1)")
    try:
        body = canonical.decode(outer["body"])
        kel = records.decode_log(canonical.encode(outer["kel"]))
    except (canonical.DecodeError, records.RecordError) as exc:
        raise ManifestError("malformed", f"manifest: {exc}") from None
    if type(body) is not dict or set(body) != _BODY_KEYS:
        raise ManifestError("malformed", "manifest body has the wrong fields")
    return outer, body, outer["sig"], kel


def verify_manifest(data: bytes, *, package_dir: Path | None = None,
                    resolve: Callable[[str], records.KeyState | None] | None = None,
                    ) -> Manifest:
    """Verify signed manifest bytes and return the :class:`Manifest`.

    Checks the author's key event log, that it names the body's author, is not revoked,
    and that its current key signed the body. With ``package_dir`` the code digest must
    match that directory. ``resolve(author)`` may return a fresher key state (refused if
    revoked or duplicitous). Raises ManifestError with ``reason`` one of malformed,
    bad_kel, wrong_author, revoked, bad_signature, code_mismatch.
    """
    outer, body, sig, kel = _decode(data)
    try:
        state = records.verify_log(kel)
    except records.RecordError as exc:
        raise ManifestError("bad_kel", f"author key event log invalid: {exc}") from None
    author = body["author"]
    if author != state.identifier:
        raise ManifestError("wrong_author", f"manifest author {author!r} is not the "
                            f"identifier of the included key event log ({state.identifier})")
    fresher = resolve(author) if resolve else None
    for st in (state, fresher):
        if st is not None and (st.revoked or st.duplicitous):
            raise ManifestError("revoked", f"author {author} is revoked or duplicitous")
    if not verify_signature(state.public_key, MANIFEST_DOMAIN + outer["body"], sig):
        raise ManifestError("bad_signature", f"manifest signature is not valid for author "
                            f"{author} (key {state.public_key.hex()[:16]}...)")
    try:
        src = _source(body["name"], body["version"], body["capabilities"], body["description"])
    except (ValueError, TypeError, CapabilityError) as exc:
        raise ManifestError("malformed", f"manifest body: {exc}") from None
    if type(body["code"]) is not bytes or len(body["code"]) != 32:
        raise ManifestError("malformed", "manifest code digest is not 32 bytes")
    if package_dir is not None and code_digest(package_dir) != body["code"]:
        raise ManifestError("code_mismatch", f"the code in {package_dir} does not match the "
                            "signed manifest (edited after signing? re-run `meshnode plugin sign`)")
    return Manifest(src.name, src.version, author, src.capabilities, body["code"],
                    src.description, state.public_key)
