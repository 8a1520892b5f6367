"""`meshnode` command line.

Every command is a function ``cmd_<name>(args) -> int`` registered on an argparse
sub-parser. Errors a user can act on (HSM, identity, bad input) print one line,
``meshnode: error: ...``, and exit 1; argparse usage errors exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from node import logs

log = logging.getLogger("meshnode.cli")

DEFAULT_HOME_ENV = "MESHNODE_HOME"

EPILOG = """\
examples:
  meshnode identity enroll --home ./node1        provision the embedded SoftHSM token and a key
  meshnode identity show --home ./node1 --json   print the identifier, DID and PeerId
  meshnode identity rotate --home ./node1        promote the pre-rotated key
  MESHNODE_HSM_PIN=... meshnode identity enroll --home ./n2 \\
      --pkcs11-module /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so --token-label mytoken
"""


def default_home() -> Path:
    """``$MESHNODE_HOME`` or ``~/.meshnode``."""
    return Path(os.environ.get(DEFAULT_HOME_ENV) or Path.home() / ".meshnode")


def _add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--home",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"node home directory (default: ${DEFAULT_HOME_ENV} or ~/.meshnode)",
    )


def _home(args: argparse.Namespace) -> Path:
    return (args.home or default_home()).expanduser()


# ---- identity ---------------------------------------------------------------------------
def cmd_identity_enroll(args: argparse.Namespace) -> int:
    from identity.home import IdentityHome

    home = IdentityHome(_home(args))
    home.enroll(
        module=args.pkcs11_module,
        token_label=args.token_label,
        pin_file=args.pin_file,
        key_label=args.key_label,
    )
    info = home.describe()
    log.info("enrolled identity %s (PeerId %s) under %s", info["id"], info["peer_id"], home.home)
    _print_identity(info, as_json=args.json)
    return 0


def cmd_identity_show(args: argparse.Namespace) -> int:
    from identity.home import IdentityHome

    _print_identity(IdentityHome(_home(args)).describe(), as_json=args.json)
    return 0


def cmd_identity_rotate(args: argparse.Namespace) -> int:
    from identity.home import IdentityHome

    home = IdentityHome(_home(args))
    home.rotate()
    info = home.describe()
    log.info("rotated to key %s (sequence %d)", info["pkcs11"]["key_label"], info["sequence"])
    _print_identity(info, as_json=args.json)
    return 0


def cmd_identity_revoke(args: argparse.Namespace) -> int:
    from identity.home import IdentityHome

    if not args.yes:
        _fail("revocation is permanent: pass --yes to confirm")
    home = IdentityHome(_home(args))
    home.revoke()
    info = home.describe()
    log.warning("identity %s is revoked; it can no longer sign anything", info["id"])
    _print_identity(info, as_json=args.json)
    return 0


def cmd_identity_export(args: argparse.Namespace) -> int:
    from identity.home import IdentityHome

    data = IdentityHome(_home(args)).export_bundle()
    if args.out is None or str(args.out) == "-":
        sys.stdout.buffer.write(data)
    else:
        from identity.home import atomic_write

        atomic_write(args.out, data, mode=0o644)
        log.info("wrote %d bytes to %s", len(data), args.out)
    return 0


def cmd_identity_verify(args: argparse.Namespace) -> int:
    import time

    from identity.bundle import verify_bundle

    try:
        data = sys.stdin.buffer.read() if str(args.file) == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        _fail(f"cannot read {args.file}: {exc.strerror}")
    result = verify_bundle(data, now=int(time.time()))
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        status = "REVOKED" if result["revoked"] else "valid"
        print(f"{status}: {result['id']}  did={result['did']}  sequence={result['sequence']}")
    return 0


def _print_identity(info: dict, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    rows = [
        ("identifier", info["id"]),
        ("did", info["did"]),
        ("peer id", info["peer_id"]),
        ("public key", info["public_key_hex"]),
        ("sequence", str(info["sequence"])),
        ("status", "REVOKED" if info["revoked"] else "active"),
        ("pkcs11 module", info["pkcs11"]["module"]),
        ("token", info["pkcs11"]["token_label"]),
        ("key label", info["pkcs11"]["key_label"]),
    ]
    if "conf" in info["pkcs11"]:
        rows.append(("SOFTHSM2_CONF", info["pkcs11"]["conf"]))
    for k, v in rows:
        table.add_row(k, Text(v))  # Text: no markup or emoji codes (":key:") in values
    Console(emoji=False, highlight=False).print(table)


def _build_identity(sub: argparse._SubParsersAction) -> None:
    ident = sub.add_parser(
        "identity",
        help="self-sovereign identity: HSM keys, did:key, key event log",
        description="Manage this node's identity. Keys are generated inside a PKCS#11 "
        "token and never leave it; with no HSM given, an embedded SoftHSM token is "
        "provisioned under the home directory.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    isub = ident.add_subparsers(dest="identity_cmd", required=True, metavar="COMMAND")

    p = isub.add_parser("enroll", help="create the identity (keys in the HSM, inception event)")
    _add_home(p)
    p.add_argument("--pkcs11-module", metavar="PATH", help="PKCS#11 module (.so) of your HSM; "
                   "omit to use the embedded SoftHSM token under DIR/hsm")
    p.add_argument("--token-label", metavar="LABEL", help="token label in that module")
    p.add_argument("--pin-file", metavar="FILE", help="file holding the user PIN "
                   "(or set MESHNODE_HSM_PIN); the PIN is never taken from the command line")
    p.add_argument("--key-label", default="meshnode", metavar="PREFIX",
                   help="prefix of the key labels in the token (default: meshnode)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_identity_enroll)

    p = isub.add_parser("show", help="print identifier, DID, PeerId and where the key lives")
    _add_home(p)
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_identity_show)

    p = isub.add_parser("rotate", help="promote the pre-rotated next key, commit to a new one")
    _add_home(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_identity_rotate)

    p = isub.add_parser("revoke", help="revoke the identity permanently")
    _add_home(p)
    p.add_argument("--yes", action="store_true", help="confirm: revocation cannot be undone")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_identity_revoke)

    p = isub.add_parser("export", help="write the key event log and a signed identity record")
    _add_home(p)
    p.add_argument("--out", type=Path, metavar="FILE", help="output file (default: stdout)")
    p.set_defaults(func=cmd_identity_export)

    p = isub.add_parser("verify", help="verify an exported identity offline (exit 0 if valid)")
    p.add_argument("file", metavar="FILE", help="file from `identity export` (- for stdin)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_identity_verify)


# ---- program ----------------------------------------------------------------------------
class _Fail(Exception):
    pass


def _fail(msg: str) -> None:
    raise _Fail(msg)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshnode",
        description="meshnode: a self-sovereign peer-to-peer mesh node "
        "(libp2p + Kademlia discovery, PBFT consensus, HSM-backed identity).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="info", metavar="LEVEL",
                        help="debug, info, warning or error (default: info)")
    parser.add_argument("--libp2p-log-level", default="warning", metavar="LEVEL",
                        help="level for py-libp2p's own (noisy) logger (default: warning)")
    parser.add_argument("--log-json", action="store_true",
                        help="log one JSON object per line on stderr (for machines)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _build_identity(sub)
    from node import cli_node

    cli_node.register(sub, _add_home)
    from node import cli_tasks

    cli_tasks.register(sub, _add_home)
    from node import cli_plugins

    cli_plugins.register(sub, _add_home)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``meshnode`` console script. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        logs.configure(args.log_level, json_lines=args.log_json,
                       libp2p_level=args.libp2p_log_level)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("meshnode: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - mapped to one-line errors below
        return _report(exc)


def _report(exc: Exception) -> int:
    from consensus.certificate import CertificateError
    from identity.canonical import DecodeError
    from identity.home import IdentityHomeError
    from identity.records import RecordError
    from identity.signer import SignerError
    from node.config import ConfigError
    from node.control import ControlError
    from node.genesis import GenesisError
    from node.storage import AuditError
    from node.tasks.engine import EngineError
    from node.testnet import TestnetError

    known = (_Fail, SignerError, IdentityHomeError, RecordError, DecodeError, ConfigError,
             ControlError, GenesisError, CertificateError, AuditError, TestnetError,
             EngineError)
    if isinstance(exc, known):
        print(f"meshnode: error: {exc}", file=sys.stderr)
        return 1
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        print(f"meshnode: error: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 1
    raise exc


if __name__ == "__main__":
    sys.exit(main())
