"""Token creation and the embedded SoftHSM default (``meshnode identity enroll``).

Theory of operation
-------------------
* python-pkcs11 has no ``C_InitToken``: :func:`init_token` calls it through ``ctypes`` on
  the library python-pkcs11 initialised (same ``dlopen`` handle), then ``C_InitPIN``.
* :func:`provision_embedded` makes ``DIR/hsm`` (0700): a SoftHSM config from the
  ``hsm/softhsm.conf`` template, random user and SO PINs in 0600 files, and a token
  initialised in a child process that receives the PINs over a pipe, so PINs never
  appear in argv (``softhsm2-util`` wants them in argv or on a TTY) or the environment.
* SoftHSM does not rescan its token directory after ``C_Initialize``: a token created by
  another process later is invisible in this one until it restarts (which is why the
  child creates the token before the parent first opens it).
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from pkcs11 import TokenFlag
from pkcs11 import exceptions as pkx

from identity.pkcs11 import (
    _LOCK,
    _MAX_TOKEN_LABEL,
    PIN_ENV,
    HsmConfig,
    Pkcs11Error,
    _check_token_label,
    _load_library,
    _read_pin_file,
    default_softhsm_module,
)

__all__ = ["init_token", "load_embedded", "provision_embedded"]



class _FunctionList(ctypes.Structure):
    """Head of CK_FUNCTION_LIST (PKCS#11 v2.40 section 5.4) up to C_InitToken."""

    _fields_ = [("version", ctypes.c_ubyte * 2)] + [(name, ctypes.c_void_p) for name in (
        "C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList",
        "C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo",
        "C_InitToken")]


_C_INIT_TOKEN = ctypes.CFUNCTYPE(
    ctypes.c_ulong, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)


def _c_init_token(module_path: str, slot_id: int, so_pin: str, label: str) -> None:
    """``C_InitToken`` on the library python-pkcs11 initialised (it does not wrap it)."""
    dll = ctypes.CDLL(module_path)  # dlopen returns the already loaded handle
    flist = ctypes.POINTER(_FunctionList)()
    dll.C_GetFunctionList.argtypes = [ctypes.POINTER(ctypes.POINTER(_FunctionList))]
    dll.C_GetFunctionList.restype = ctypes.c_ulong
    rv = dll.C_GetFunctionList(ctypes.byref(flist))
    if rv or not flist or not flist.contents.C_InitToken:
        raise Pkcs11Error(f"{module_path}: C_GetFunctionList failed (CKR 0x{rv:x})")
    so = so_pin.encode()
    padded = label.encode().ljust(_MAX_TOKEN_LABEL, b" ")
    rv = _C_INIT_TOKEN(flist.contents.C_InitToken)(slot_id, so, len(so), padded)
    if rv:
        raise Pkcs11Error(f"C_InitToken of {label!r} failed with CKR 0x{rv:x}")


def init_token(module: str, token_label: str, *, so_pin: str, user_pin: str,
               softhsm_conf: str | None = None) -> HsmConfig:
    """Initialise a token ``token_label`` (1-32 bytes) in the first free slot of ``module``
    (SoftHSM always has one) with the given SO and user PINs, in this process (one module
    and config per process). Returns its config. Raises :class:`Pkcs11Error` when the
    label is taken, no slot is free, or the module refuses."""
    _check_token_label(token_label)
    lib = _load_library(module, softhsm_conf)
    with _LOCK:
        if any(t.label == token_label for t in lib.lib.get_tokens()):
            raise Pkcs11Error(f"a PKCS#11 token labelled {token_label!r} already exists")
        free = [s for s in lib.lib.get_slots(token_present=True)
                if not s.get_token().flags & TokenFlag.TOKEN_INITIALIZED]
        if not free:
            raise Pkcs11Error(f"{module} has no free slot for a new token")
        _c_init_token(lib.module, free[0].slot_id, so_pin, token_label)
        try:
            so_session = free[0].get_token().open(rw=True, so_pin=so_pin)
            try:
                so_session.init_pin(user_pin)
            finally:
                so_session.close()
        except pkx.PKCS11Error as exc:
            raise Pkcs11Error(f"setting the user PIN of {token_label!r} failed: {exc!r}") from None
    return HsmConfig(module, token_label, user_pin, softhsm_conf)


def _write_secret(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 (O_EXCL: never overwrites, never briefly wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _embedded_paths(home: Path) -> tuple[Path, Path, Path, Path]:
    hsm = Path(home).absolute() / "hsm"
    return hsm, hsm / "tokens", hsm / "softhsm2.conf", hsm / "user.pin"


def provision_embedded(home: Path, token_label: str = "meshnode") -> HsmConfig:
    """Create the embedded SoftHSM under ``home/hsm`` (mode 0700): ``tokens/`` (0700),
    ``softhsm2.conf`` from the packaged template, random 128-bit user and SO PINs (32 hex
    digits) in ``user.pin`` and ``so.pin``, the label in ``token.label`` (files 0600), and
    the token itself, initialised in a child process (PINs over a pipe). Raises
    :class:`Pkcs11Error` when already provisioned, SoftHSM is missing, or initialisation
    fails (the partial ``home/hsm`` is then removed)."""
    module = default_softhsm_module()
    _check_token_label(token_label)
    hsm, tokens, conf, user_pin_file = _embedded_paths(home)
    if "\n" in str(hsm):
        raise Pkcs11Error(f"the home path contains a newline: {str(hsm)!r}")
    hsm.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        hsm.mkdir(mode=0o700)
    except FileExistsError:
        raise Pkcs11Error(f"an embedded HSM already exists in {hsm}; use it or choose "
                          "another --home") from None
    try:
        os.chmod(hsm, 0o700)
        tokens.mkdir(mode=0o700)
        template = (resources.files("identity") / "softhsm.conf").read_text(encoding="utf-8")
        _write_secret(conf, template.replace("@TOKENDIR@", str(tokens)))
        user_pin, so_pin = secrets.token_hex(16), secrets.token_hex(16)
        _write_secret(user_pin_file, user_pin + "\n")
        _write_secret(hsm / "so.pin", so_pin + "\n")
        _write_secret(hsm / "token.label", token_label + "\n")
        _init_token_in_child(module, str(conf), token_label, so_pin, user_pin)
    except BaseException:
        shutil.rmtree(hsm, ignore_errors=True)
        raise
    return HsmConfig(module, token_label, user_pin, str(conf), str(user_pin_file))


def load_embedded(home: Path, token_label: str | None = None) -> HsmConfig:
    """The config of the embedded SoftHSM that :func:`provision_embedded` made under
    ``home`` (token label read from ``home/hsm/token.label`` unless given). Raises
    :class:`Pkcs11Error` when it is missing or its PIN file is unreadable."""
    hsm, tokens, conf, user_pin_file = _embedded_paths(home)
    if not (conf.is_file() and user_pin_file.is_file() and tokens.is_dir()):
        raise Pkcs11Error(f"no embedded HSM under {Path(home)}; "
                          f"run `meshnode identity enroll --home {home}`")
    if token_label is None:
        label_file = hsm / "token.label"
        token_label = _read_pin_file(label_file) if label_file.exists() else "meshnode"
    pin = _read_pin_file(user_pin_file)
    return HsmConfig(default_softhsm_module(), token_label, pin, str(conf), str(user_pin_file))


def _init_token_in_child(module: str, conf: str, label: str, so_pin: str, user_pin: str) -> None:
    request = {"module": module, "softhsm_conf": conf, "token_label": label,
               "so_pin": so_pin, "user_pin": user_pin}
    env = {k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF", PIN_ENV)}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    code = "from identity.softhsm import _init_token_main; _init_token_main()"
    try:
        done = subprocess.run([sys.executable, "-c", code], input=json.dumps(request), env=env,
                              capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Pkcs11Error(f"cannot run the token initialiser: {exc}") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise Pkcs11Error(f"initialising the embedded token failed: {lines[-1]}")


def _init_token_main() -> None:
    """Child-process entry of :func:`provision_embedded`: a JSON request on stdin."""
    request = json.loads(sys.stdin.read())
    try:
        init_token(request["module"], request["token_label"], so_pin=request["so_pin"],
                   user_pin=request["user_pin"], softhsm_conf=request["softhsm_conf"])
    except Pkcs11Error as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
