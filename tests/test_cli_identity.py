"""`meshnode identity ...` end to end, as a newcomer runs it: real processes, real SoftHSM.

Each test gets its own home directory (so its own embedded token). The external-module
tests initialise a token with softhsm2-util under a private SOFTHSM2_CONF, the way an
operator with a real HSM would have one ready.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from identity.did import public_key_from_did_key, public_key_from_peer_id

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def meshnode(*args: str, env: dict | None = None, check: bool = True, input: bytes | None = None):
    """Run the CLI in a fresh interpreter; returns the CompletedProcess (bytes out)."""
    proc = subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        capture_output=True,
        env={**os.environ, **(env or {})},
        input=input,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"meshnode {args} exited {proc.returncode}: {proc.stderr.decode()}")
    return proc


def show(home: Path) -> dict:
    return json.loads(meshnode("identity", "show", "--home", str(home), "--json").stdout)


def one_line_error(proc) -> str:
    err = proc.stderr.decode().strip()
    assert proc.returncode == 1, (proc.returncode, err)
    assert err.startswith("meshnode: error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_enroll_then_show_on_the_embedded_default(tmp_path):
    home = tmp_path / "node1"
    meshnode("identity", "enroll", "--home", str(home))
    info = show(home)
    key = bytes.fromhex(info["public_key_hex"])
    assert len(key) == 32
    assert info["did"].startswith("did:key:z6Mk") and public_key_from_did_key(info["did"]) == key
    assert info["peer_id"].startswith("12D3KooW")
    assert public_key_from_peer_id(info["peer_id"]) == key
    assert info["id"] and info["id"] not in (info["did"], info["peer_id"])
    p = info["pkcs11"]
    assert Path(p["module"]).name == "libsofthsm2.so"
    assert p["token_label"] and p["key_label"].endswith("-0")
    assert Path(p["conf"]).is_file() and Path(p["conf"]).parent.parent == home
    pin_mode = stat.S_IMODE(os.stat(p["pin_file"]).st_mode)
    assert pin_mode == 0o600
    assert info["sequence"] == 0 and info["revoked"] is False
    # A second process sees the same identity: keys and log persisted.
    assert show(home) == info
    # The human view prints the DID verbatim (rich must not turn ":key:" into an emoji).
    human = meshnode("identity", "show", "--home", str(home)).stdout.decode()
    assert info["did"] in human and info["peer_id"] in human


def test_enroll_twice_is_refused(tmp_path):
    home = tmp_path / "n"
    meshnode("identity", "enroll", "--home", str(home))
    err = one_line_error(meshnode("identity", "enroll", "--home", str(home), check=False))
    assert "already" in err


def test_show_without_enrollment_says_what_to_do(tmp_path):
    err = one_line_error(meshnode("identity", "show", "--home", str(tmp_path / "x"), check=False))
    assert "identity enroll" in err


def test_rotate_keeps_identifier_and_changes_key(tmp_path):
    home = tmp_path / "n"
    meshnode("identity", "enroll", "--home", str(home))
    before = show(home)
    meshnode("identity", "rotate", "--home", str(home))
    after = show(home)
    assert after["id"] == before["id"]
    assert after["public_key_hex"] != before["public_key_hex"]
    assert after["did"] != before["did"] and after["peer_id"] != before["peer_id"]
    assert after["sequence"] == 1 and after["pkcs11"]["key_label"].endswith("-1")
    # The rotated-to key was committed at inception: its digest was the next-key digest.
    assert after["next_key_digest_hex"] != before["next_key_digest_hex"]


def test_export_verify_and_tamper(tmp_path):
    home = tmp_path / "n"
    meshnode("identity", "enroll", "--home", str(home))
    meshnode("identity", "rotate", "--home", str(home))
    bundle = tmp_path / "id.bundle"
    meshnode("identity", "export", "--home", str(home), "--out", str(bundle))
    ok = json.loads(meshnode("identity", "verify", str(bundle), "--json").stdout)
    info = show(home)
    assert ok["id"] == info["id"] and ok["did"] == info["did"] and ok["revoked"] is False
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(bytes(data))
    one_line_error(meshnode("identity", "verify", str(bad), check=False))


def test_revoke_needs_confirmation_and_is_final(tmp_path):
    home = tmp_path / "n"
    meshnode("identity", "enroll", "--home", str(home))
    err = one_line_error(meshnode("identity", "revoke", "--home", str(home), check=False))
    assert "--yes" in err
    meshnode("identity", "revoke", "--home", str(home), "--yes")
    assert show(home)["revoked"] is True
    err = one_line_error(meshnode("identity", "rotate", "--home", str(home), check=False))
    assert "revoked" in err.lower()
    bundle = tmp_path / "b"
    meshnode("identity", "export", "--home", str(home), "--out", str(bundle))
    out = json.loads(meshnode("identity", "verify", str(bundle), "--json").stdout)
    assert out["revoked"] is True


@pytest.fixture
def external_token(tmp_path):
    """A SoftHSM token initialised by hand, as an operator's HSM would be."""
    tokens = tmp_path / "ext-tokens"
    tokens.mkdir()
    conf = tmp_path / "ext-softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    env = {"SOFTHSM2_CONF": str(conf)}
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "ops",
         "--pin", "4321", "--so-pin", "87654321"],
        check=True, capture_output=True, env={**os.environ, **env},
    )
    return env


def test_enroll_on_an_external_module_with_pin_from_env(tmp_path, external_token):
    home = tmp_path / "ext"
    env = {**external_token, "MESHNODE_HSM_PIN": "4321"}
    meshnode("identity", "enroll", "--home", str(home), "--pkcs11-module", SOFTHSM_MODULE,
             "--token-label", "ops", env=env)
    info = json.loads(meshnode("identity", "show", "--home", str(home), "--json", env=env).stdout)
    assert info["pkcs11"]["token_label"] == "ops" and "conf" not in info["pkcs11"]
    meshnode("identity", "rotate", "--home", str(home), env=env)


def test_wrong_pin_fails_closed(tmp_path, external_token):
    env = {**external_token, "MESHNODE_HSM_PIN": "0000"}
    err = one_line_error(meshnode(
        "identity", "enroll", "--home", str(tmp_path / "w"), "--pkcs11-module", SOFTHSM_MODULE,
        "--token-label", "ops", env=env, check=False))
    assert "pin" in err.lower()


def test_pin_file_and_missing_pin(tmp_path, external_token):
    pin = tmp_path / "pin"
    pin.write_text("4321\n")
    pin.chmod(0o600)
    meshnode("identity", "enroll", "--home", str(tmp_path / "p"), "--pkcs11-module",
             SOFTHSM_MODULE, "--token-label", "ops", "--pin-file", str(pin), env=external_token)
    env = {**external_token, "MESHNODE_HSM_PIN": ""}
    err = one_line_error(meshnode(
        "identity", "enroll", "--home", str(tmp_path / "q"), "--pkcs11-module", SOFTHSM_MODULE,
        "--token-label", "ops", env=env, check=False))
    assert "MESHNODE_HSM_PIN" in err


def test_missing_module_and_token_fail_closed(tmp_path, external_token):
    env = {**external_token, "MESHNODE_HSM_PIN": "4321"}
    err = one_line_error(meshnode(
        "identity", "enroll", "--home", str(tmp_path / "a"), "--pkcs11-module",
        str(tmp_path / "nope.so"), "--token-label", "ops", env=env, check=False))
    assert "nope.so" in err
    err = one_line_error(meshnode(
        "identity", "enroll", "--home", str(tmp_path / "b"), "--pkcs11-module", SOFTHSM_MODULE,
        "--token-label", "no-such-token", env=env, check=False))
    assert "no-such-token" in err


def test_bad_arguments_and_help():
    proc = meshnode("identity", "frobnicate", check=False)
    assert proc.returncode == 2 and b"invalid choice" in proc.stderr
    proc = meshnode("--log-level", "loud", "identity", "show", check=False)
    assert proc.returncode == 2 and b"unknown log level" in proc.stderr
    out = meshnode("identity", "enroll", "--help").stdout.decode()
    assert "--pkcs11-module" in out and "MESHNODE_HSM_PIN" in out


def test_log_json_emits_json_lines(tmp_path):
    proc = meshnode("--log-json", "identity", "enroll", "--home", str(tmp_path / "j"))
    lines = [json.loads(line) for line in proc.stderr.decode().splitlines() if line.strip()]
    assert any(rec["logger"] == "meshnode.cli" and "enrolled" in rec["msg"] for rec in lines)
