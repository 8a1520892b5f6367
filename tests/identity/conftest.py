"""Fixtures for tests that need a real SoftHSM token (never mocked).

One PKCS#11 library per process
-------------------------------
python-pkcs11 can load only one PKCS#11 library per process, and SoftHSM reads
``SOFTHSM2_CONF`` once, at ``C_Initialize``. So every in-process test shares ONE SoftHSM
config (``softhsm_conf_path``, session-scoped, its token directory in a pytest temporary
directory), and each test still gets its OWN fresh token in it, with a unique label and
random PINs (``hsm_token_config``). SoftHSM always offers one free slot, so
``identity.softhsm.init_token`` can create any number of tokens in the same process.

A test that needs a different config (the embedded default under its own ``tmp_path``,
persistence across processes) runs its PKCS#11 work in a subprocess: use
``run_python`` (``sys.executable -c CODE``; pass PINs through ``env``, never argv).

Fixtures other agents may use:
  softhsm_module_path   path of libsofthsm2.so
  softhsm_conf_path     the session's shared SOFTHSM2_CONF (Path)
  hsm_token_config      HsmConfig of a fresh token (unique label) in that config
  hsm_token             an open identity.pkcs11.Token on it (closed after the test)
  hsm_signer            a Pkcs11Signer for a fresh Ed25519 key "node" in that token
  run_python            run Python code in a child process, return CompletedProcess
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from importlib import resources
from pathlib import Path

import pytest

from identity.pkcs11 import HsmConfig, Pkcs11Signer, Token, default_softhsm_module
from identity.softhsm import init_token

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def softhsm_module_path() -> str:
    """Path of the SoftHSM PKCS#11 module (Pkcs11Error if SoftHSM is not installed)."""
    return default_softhsm_module()


@pytest.fixture(scope="session")
def softhsm_conf_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one SOFTHSM2_CONF every in-process test of this session shares."""
    root = tmp_path_factory.mktemp("softhsm")
    tokens = root / "tokens"
    tokens.mkdir(mode=0o700)
    template = (resources.files("identity") / "softhsm.conf").read_text(encoding="utf-8")
    conf = root / "softhsm2.conf"
    conf.write_text(template.replace("@TOKENDIR@", str(tokens)), encoding="utf-8")
    return conf


@pytest.fixture
def hsm_token_config(softhsm_module_path: str, softhsm_conf_path: Path) -> HsmConfig:
    """A fresh, empty token (unique label, random user and SO PINs) in the shared config."""
    label = "t-" + secrets.token_hex(8)
    return init_token(
        softhsm_module_path,
        label,
        so_pin=secrets.token_hex(16),
        user_pin=secrets.token_hex(16),
        softhsm_conf=str(softhsm_conf_path),
    )


@pytest.fixture
def hsm_token(hsm_token_config: HsmConfig) -> Iterator[Token]:
    """An open Token on the test's fresh token."""
    with Token.open(hsm_token_config) as token:
        yield token


@pytest.fixture
def hsm_signer(hsm_token: Token) -> Pkcs11Signer:
    """A signer for a freshly generated Ed25519 key labelled "node"."""
    return hsm_token.generate_keypair("node")


@pytest.fixture
def run_python() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_python(code, env=None, timeout=120)`` runs ``sys.executable -c code`` with
    the repository on PYTHONPATH and returns the CompletedProcess (text, captured).
    ``env`` entries are added to the current environment (use it for PINs).
    """

    def run(
        code: str, env: Mapping[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH")) if p
        )
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-c", code],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run
