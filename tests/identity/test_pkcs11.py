"""identity.pkcs11 against a real SoftHSM 2.6 token (see conftest.py for the layout:
one shared SOFTHSM2_CONF in-process, a fresh token per test, subprocesses otherwise)."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, ObjectClass

from identity.pkcs11 import (
    ED25519_EC_PARAMS,
    PIN_ENV,
    HsmConfig,
    Pkcs11Error,
    Pkcs11Signer,
    Token,
)
from identity.signer import Signer, verify_signature
from identity.softhsm import init_token, load_embedded, provision_embedded


def _one_line(exc: pytest.ExceptionInfo[Pkcs11Error]) -> str:
    message = str(exc.value)
    assert "\n" not in message and message.strip() == message and message
    return message


def _raw_objects(cfg: HsmConfig, label: str) -> tuple[object, object, object]:
    """Open a second, independent python-pkcs11 session on the test's token (it shares
    the login of identity.pkcs11's session, as PKCS#11 login state is per process) and
    return (session, private key, public key) labelled ``label``."""
    lib = pkcs11.lib(os.path.realpath(cfg.module))  # the process's already loaded library
    session = lib.get_token(token_label=cfg.token_label).open()
    private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
    public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=label)
    return session, private, public


# ------------------------------------------------------------------- key custody


def test_private_key_value_cannot_be_read(hsm_token_config: HsmConfig, hsm_signer) -> None:
    session, private, _ = _raw_objects(hsm_token_config, "node")
    try:
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            private[Attribute.VALUE]
    finally:
        session.close()


def test_generated_key_attributes(hsm_token_config: HsmConfig, hsm_signer) -> None:
    session, private, public = _raw_objects(hsm_token_config, "node")
    try:
        assert private.key_type == KeyType.EC_EDWARDS
        assert private[Attribute.TOKEN] is True
        assert private[Attribute.SENSITIVE] is True
        assert private[Attribute.ALWAYS_SENSITIVE] is True
        assert private[Attribute.EXTRACTABLE] is False
        assert private[Attribute.NEVER_EXTRACTABLE] is True
        assert private[Attribute.PRIVATE] is True
        assert private[Attribute.SIGN] is True
        assert private[Attribute.DECRYPT] is False
        assert private[Attribute.DERIVE] is False
        assert public[Attribute.TOKEN] is True
        assert public[Attribute.EC_PARAMS] == ED25519_EC_PARAMS
        assert public[Attribute.EC_POINT] == b"\x04\x20" + hsm_signer.public_key
        assert private[Attribute.ID] == public[Attribute.ID] and len(private[Attribute.ID]) == 16
    finally:
        session.close()


def test_duplicate_label_refused(hsm_token: Token, hsm_signer: Pkcs11Signer) -> None:
    with pytest.raises(Pkcs11Error) as exc:
        hsm_token.generate_keypair("node")
    assert "already exists" in _one_line(exc)
    assert hsm_token.labels() == ["node"]


def test_labels_sorted_and_has_key(hsm_token: Token) -> None:
    assert hsm_token.labels() == []
    for label in ("zeta", "alpha", "mid"):
        hsm_token.generate_keypair(label)
    assert hsm_token.labels() == ["alpha", "mid", "zeta"]
    assert hsm_token.has_key("mid") and not hsm_token.has_key("nope")


def test_signer_lookup_returns_same_key(hsm_token: Token, hsm_signer: Pkcs11Signer) -> None:
    again = hsm_token.signer("node")
    assert again.public_key == hsm_signer.public_key and again.label == "node"
    assert isinstance(again, Signer)


def test_missing_key_refused(hsm_token: Token) -> None:
    with pytest.raises(Pkcs11Error) as exc:
        hsm_token.signer("absent")
    assert "no private key labelled 'absent'" in _one_line(exc)


@pytest.mark.parametrize("label", ["", "x" * 129, "line\nbreak"])
def test_bad_key_label_refused(hsm_token: Token, label: str) -> None:
    with pytest.raises(Pkcs11Error):
        hsm_token.generate_keypair(label)


# ------------------------------------------------------------------- signatures


@pytest.mark.parametrize("message", [b"", b"abc", bytes(range(256)) * 4096])
def test_signatures_verify_with_pynacl(hsm_signer: Pkcs11Signer, message: bytes) -> None:
    signature = hsm_signer.sign(message)
    assert len(signature) == 64 and len(hsm_signer.public_key) == 32
    assert verify_signature(hsm_signer.public_key, message, signature)


def test_signatures_are_rfc8032_pure_ed25519(hsm_signer: Pkcs11Signer) -> None:
    """RFC 8032 Ed25519 is deterministic (same key and message -> same signature) and
    PureEdDSA (no prehash, no context): libsodium's strict verifier accepts it, and
    any change to message, signature or key is rejected."""
    message = b"meshnode rfc 8032"
    signature = hsm_signer.sign(message)
    assert hsm_signer.sign(message) == signature
    assert hsm_signer.sign(bytearray(message)) == signature
    assert not verify_signature(hsm_signer.public_key, message + b"!", signature)
    assert not verify_signature(hsm_signer.public_key, b"Meshnode rfc 8032", signature)
    tampered = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify_signature(hsm_signer.public_key, message, tampered)
    other_key = bytes([hsm_signer.public_key[0] ^ 1]) + hsm_signer.public_key[1:]
    assert not verify_signature(other_key, message, signature)


def test_two_keys_in_one_token_differ(hsm_token: Token) -> None:
    a, b = hsm_token.generate_keypair("a"), hsm_token.generate_keypair("b")
    assert a.public_key != b.public_key
    assert not verify_signature(b.public_key, b"m", a.sign(b"m"))


def test_concurrent_signing_through_one_token(hsm_token: Token) -> None:
    """Without the lock, SoftHSM (initialised without OS locking) corrupts memory."""
    signers = [hsm_token.generate_keypair(f"k{i}") for i in range(2)]
    results: list[tuple[bytes, bytes, bytes]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(9)

    def work(worker: int) -> None:
        try:
            start.wait()
            signer = signers[worker % 2]
            for i in range(100):
                message = f"{worker}:{i}".encode()
                results.append((signer.public_key, message, signer.sign(message)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def keygen() -> None:  # a writer interleaved with the signers
        try:
            start.wait()
            for i in range(5):
                hsm_token.generate_keypair(f"extra{i}")
                hsm_token.labels()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    threads.append(threading.Thread(target=keygen))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 800
    assert all(verify_signature(key, msg, sig) for key, msg, sig in results)
    assert len(hsm_token.labels()) == 7


# -------------------------------------------------------------- sessions and errors


def test_second_open_shares_the_login(hsm_token_config: HsmConfig) -> None:
    first = Token.open(hsm_token_config)
    second = Token.open(hsm_token_config)  # C_Login would say UserAlreadyLoggedIn
    signer = first.generate_keypair("shared")
    first.close()  # must not log the second handle out
    assert verify_signature(signer.public_key, b"x", second.signer("shared").sign(b"x"))
    with pytest.raises(Pkcs11Error) as exc:
        signer.sign(b"x")  # made through the closed handle
    assert "closed" in _one_line(exc)
    second.close()
    second.close()  # idempotent


def test_wrong_pin(hsm_token_config: HsmConfig) -> None:
    bad = HsmConfig(hsm_token_config.module, hsm_token_config.token_label, "0000-wrong",
                    hsm_token_config.softhsm_conf)
    with pytest.raises(Pkcs11Error) as exc:
        Token.open(bad)
    assert f"wrong PIN for PKCS#11 token {hsm_token_config.token_label!r}" in _one_line(exc)
    assert PIN_ENV in str(exc.value)


def test_wrong_pin_while_token_is_open(hsm_token: Token, hsm_token_config: HsmConfig) -> None:
    bad = HsmConfig(hsm_token_config.module, hsm_token_config.token_label, "0000-wrong",
                    hsm_token_config.softhsm_conf, pin_file="/etc/meshnode/pin")
    with pytest.raises(Pkcs11Error) as exc:
        Token.open(bad)  # PKCS#11 itself would not check it (already logged in)
    assert "wrong PIN" in _one_line(exc) and "/etc/meshnode/pin" in str(exc.value)


def test_missing_module(tmp_path: Path) -> None:
    cfg = HsmConfig(str(tmp_path / "nope.so"), "meshnode", "1234")
    with pytest.raises(Pkcs11Error) as exc:
        Token.open(cfg)
    assert _one_line(exc) == f"PKCS#11 module not found: {tmp_path / 'nope.so'}"


def test_missing_token(hsm_token_config: HsmConfig) -> None:
    cfg = HsmConfig(hsm_token_config.module, "no-such-token", "1234",
                    hsm_token_config.softhsm_conf)
    with pytest.raises(Pkcs11Error) as exc:
        Token.open(cfg)
    assert "no PKCS#11 token labelled 'no-such-token'" in _one_line(exc)


def test_second_config_in_one_process_refused(
    hsm_token_config: HsmConfig, tmp_path: Path
) -> None:
    other = tmp_path / "other.conf"
    other.write_text(f"directories.tokendir = {tmp_path}\n")
    cfg = HsmConfig(hsm_token_config.module, hsm_token_config.token_label,
                    hsm_token_config.pin, str(other))
    with pytest.raises(Pkcs11Error) as exc:
        Token.open(cfg)
    assert "one module and config per process" in _one_line(exc)


def test_duplicate_token_label_refused(hsm_token_config: HsmConfig) -> None:
    with pytest.raises(Pkcs11Error) as exc:
        init_token(hsm_token_config.module, hsm_token_config.token_label, so_pin="12345678",
                   user_pin="12345678", softhsm_conf=hsm_token_config.softhsm_conf)
    assert "already exists" in _one_line(exc)


# ----------------------------------------------------------------- PIN sources


def test_pin_from_env_first(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("from-file\n")
    pin_file.chmod(0o600)
    cfg = HsmConfig.from_sources("m.so", "t", pin_file=str(pin_file), env={PIN_ENV: "from-env"})
    assert cfg.pin == "from-env" and cfg.pin_file is None
    cfg = HsmConfig.from_sources("m.so", "t", pin_file=str(pin_file), env={})
    assert cfg.pin == "from-file" and cfg.pin_file == str(pin_file)
    assert "from-file" not in repr(cfg)


def test_pin_sources_refused(tmp_path: Path) -> None:
    with pytest.raises(Pkcs11Error) as exc:
        HsmConfig.from_sources("m.so", "t", pin_file=None, env={})
    assert PIN_ENV in _one_line(exc) and "--pin-file" in str(exc.value)
    with pytest.raises(Pkcs11Error, match="cannot read PIN file"):
        HsmConfig.from_sources("m.so", "t", pin_file=str(tmp_path / "missing"), env={})
    loose = tmp_path / "loose"
    loose.write_text("1234\n")
    loose.chmod(0o644)
    with pytest.raises(Pkcs11Error, match="readable by all users"):
        HsmConfig.from_sources("m.so", "t", pin_file=str(loose), env={})


# ------------------------------------------------------- embedded default, processes

_GENERATE = """
import sys
from pathlib import Path
from identity.pkcs11 import Token
from identity.softhsm import load_embedded
with Token.open(load_embedded(Path(sys.argv[1]) if len(sys.argv) > 1 else Path({home!r}))) as t:
    print(t.generate_keypair("node").public_key.hex())
"""

_SIGN = """
import json, os
from identity.pkcs11 import HsmConfig, Token
cfg = HsmConfig.from_sources({module!r}, "meshnode", pin_file=None, env=os.environ)
cfg = HsmConfig(cfg.module, cfg.token_label, cfg.pin, softhsm_conf={conf!r})
with Token.open(cfg) as t:
    s = t.signer("node")
    print(json.dumps([s.public_key.hex(), s.sign(b"across processes").hex(), t.labels()]))
"""


def test_provision_embedded_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cfg = provision_embedded(home)
    hsm = home / "hsm"
    assert stat.S_IMODE(hsm.stat().st_mode) == 0o700
    assert stat.S_IMODE((hsm / "tokens").stat().st_mode) == 0o700
    for name in ("user.pin", "so.pin", "softhsm2.conf"):
        assert stat.S_IMODE((hsm / name).stat().st_mode) == 0o600, name
    user_pin = (hsm / "user.pin").read_text().strip()
    so_pin = (hsm / "so.pin").read_text().strip()
    assert len(user_pin) == 32 and len(so_pin) == 32 and user_pin != so_pin
    conf_text = (hsm / "softhsm2.conf").read_text()
    assert f"directories.tokendir = {hsm / 'tokens'}\n" in conf_text
    assert "@TOKENDIR@" not in conf_text
    assert any((hsm / "tokens").iterdir())  # the token was initialised
    assert cfg == load_embedded(home)
    assert cfg.pin == user_pin and cfg.softhsm_conf == str(hsm / "softhsm2.conf")
    assert cfg.pin_file == str(hsm / "user.pin") and cfg.token_label == "meshnode"
    with pytest.raises(Pkcs11Error) as exc:
        provision_embedded(home)
    assert "already exists" in _one_line(exc)
    assert load_embedded(home).pin == user_pin  # the refusal changed nothing


def test_provision_embedded_custom_token_label(tmp_path: Path) -> None:
    cfg = provision_embedded(tmp_path, token_label="node-7")
    assert load_embedded(tmp_path).token_label == "node-7" == cfg.token_label
    assert stat.S_IMODE((tmp_path / "hsm" / "token.label").stat().st_mode) == 0o600


def test_provision_embedded_bad_label_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(Pkcs11Error, match="token label must be 1-32 bytes"):
        provision_embedded(tmp_path, token_label="x" * 33)
    assert not (tmp_path / "hsm").exists()


def test_load_embedded_missing(tmp_path: Path) -> None:
    with pytest.raises(Pkcs11Error) as exc:
        load_embedded(tmp_path)
    assert _one_line(exc) == (
        f"no embedded HSM under {tmp_path}; run `meshnode identity enroll --home {tmp_path}`"
    )


def test_key_persists_across_processes(tmp_path: Path, run_python) -> None:
    home = tmp_path / "home"
    cfg = provision_embedded(home)
    made = run_python(_GENERATE.format(home=str(home)))
    assert made.returncode == 0, made.stderr
    public_key = bytes.fromhex(made.stdout.strip())
    used = run_python(
        _SIGN.format(module=cfg.module, conf=cfg.softhsm_conf), env={PIN_ENV: cfg.pin}
    )
    assert used.returncode == 0, used.stderr
    key_hex, sig_hex, labels = json.loads(used.stdout)
    assert bytes.fromhex(key_hex) == public_key and labels == ["node"]
    assert verify_signature(public_key, b"across processes", bytes.fromhex(sig_hex))
    again = run_python(_GENERATE.format(home=str(home)))
    assert again.returncode == 1 and "Pkcs11Error: a key labelled 'node' already exists" in (
        again.stderr
    )


def test_wrong_pin_in_fresh_process(tmp_path: Path, run_python) -> None:
    cfg = provision_embedded(tmp_path / "home")
    done = run_python(
        _SIGN.format(module=cfg.module, conf=cfg.softhsm_conf), env={PIN_ENV: "wrong-pin"}
    )
    assert done.returncode == 1
    assert "Pkcs11Error: wrong PIN for PKCS#11 token 'meshnode'; check MESHNODE_HSM_PIN" in (
        done.stderr
    )
