"""`meshnode plugin new|list|sign|verify` commands.

Registered on the main parser by :func:`register` (``register(sub, add_home)``). Errors
a user can act on print one line, ``meshnode: error: ...``, and exit 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import tomllib
from pathlib import Path

log = logging.getLogger("meshnode.cli")

EPILOG = """\
examples:
  meshnode plugin new hasher                          scaffold ./hasher (package, manifest, test)
  meshnode plugin sign hasher/meshnode_hasher/plugin.toml --home ~/.author
  meshnode plugin verify hasher/meshnode_hasher       check signature and code digest
  meshnode plugin list --home ./node1                 discovered, signed, granted, running
"""


def _home(args: argparse.Namespace) -> Path:
    from node.cli import default_home

    return (args.home or default_home()).expanduser()


def _one_line(fn):
    """Map the errors of this module's commands to one-line messages (exit 1)."""
    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        from identity.home import IdentityHomeError
        from identity.records import RecordError
        from identity.signer import SignerError
        from plugins.manifest import ManifestError

        try:
            return fn(args)
        except (ManifestError, IdentityHomeError, RecordError, SignerError, ValueError,
                FileExistsError) as exc:
            msg = str(exc)
            if isinstance(exc, FileExistsError):
                msg = f"{exc.filename} already exists"
            print(f"meshnode: error: {msg}", file=sys.stderr)
            return 1
    return wrapper


# ---- new ----------------------------------------------------------------------------
@_one_line
def cmd_plugin_new(args: argparse.Namespace) -> int:
    from plugins.scaffold import package_name, scaffold

    root = scaffold(args.name, Path(args.dir))
    pkg = package_name(args.name)
    print(f"created {root}\n"
          f"next: cd {root} && pytest\n"
          f"      meshnode plugin sign {pkg}/plugin.toml --home DIR\n"
          f"      pip install {root}")
    return 0


# ---- sign / verify -------------------------------------------------------------------
def _source_path(path: Path) -> Path:
    from plugins.manifest import SOURCE_FILE

    return path / SOURCE_FILE if path.is_dir() else path


@_one_line
def cmd_plugin_sign(args: argparse.Namespace) -> int:
    from identity.home import atomic_write
    from plugins.manifest import MANIFEST_FILE, sign_with_home

    source = _source_path(Path(args.manifest))
    data, manifest = sign_with_home(source, _home(args))
    out = Path(args.out) if args.out else source.parent / MANIFEST_FILE
    atomic_write(out, data, mode=0o644)
    log.info("signed %s %s as %s", manifest.name, manifest.version, manifest.author)
    _show(_summary(manifest, out), args.json)
    return 0


@_one_line
def cmd_plugin_verify(args: argparse.Namespace) -> int:
    from plugins.manifest import MANIFEST_FILE, ManifestError, verify_manifest

    path = Path(args.path)
    file = path / MANIFEST_FILE if path.is_dir() else path
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ManifestError("unreadable", f"cannot read {file}: {exc.strerror}") from None
    manifest = verify_manifest(data, package_dir=file.parent)
    if args.author and manifest.author != args.author:
        raise ManifestError("wrong_author", f"signed by {manifest.author}, not {args.author}")
    _show(_summary(manifest, file), args.json)
    return 0


def _summary(manifest, path: Path) -> dict:
    return {"name": manifest.name, "version": manifest.version, "author": manifest.author,
            "capabilities": sorted(manifest.capabilities), "code_sha256": manifest.code.hex(),
            "manifest": str(path)}


def _show(obj: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, sort_keys=True))
    else:
        for k, v in obj.items():
            print(f"{k:>14}: {', '.join(v) if isinstance(v, list) else v}")


# ---- list ------------------------------------------------------------------------------
def _node_config(home: Path) -> tuple[dict, Path | None]:
    """The raw [plugins] table and the control socket path of ``home`` (if configured)."""
    path = home / "config.toml"
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}, None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    sock = Path(raw.get("control", {}).get("socket", "control.sock")).expanduser()
    return raw.get("plugins", {}), sock if sock.is_absolute() else home / sock


@_one_line
def cmd_plugin_list(args: argparse.Namespace) -> int:
    from node.control import ControlError, call
    from plugins import config as plugins_config
    from plugins.host import inspect_plugins

    home = _home(args)
    table, sock = _node_config(home)
    cfg = plugins_config.parse(table)
    entries = inspect_plugins(cfg, paths=args.path or None)
    running: dict[str, dict] = {}
    if sock is not None and sock.exists():
        try:
            running = {e["name"]: e for e in call(sock, "plugins", timeout_s=5)}
        except ControlError as exc:
            log.debug("no running node: %s", exc)
    for e in entries:
        live = running.get(e["name"])
        e["running"] = bool(live and live.get("state") == "running")
        if live:
            e.update({k: live[k] for k in ("pid", "restarts", "sandbox") if k in live})
    if args.json:
        print(json.dumps(entries, indent=2, sort_keys=True))
        return 0
    if not entries:
        print("no plugins installed (entry point group meshnode.plugins)")
    for e in entries:
        print(f"{e['name']} {e['version'] or '?'}  [{e['state']}]  "
              f"signed={'yes' if e['signed'] else 'no'}  author={e['author'] or '-'}  "
              f"running={'yes' if e['running'] else 'no'}")
        print(f"    requested: {', '.join(e['requested']) or '-'}   "
              f"granted: {', '.join(e['granted']) or '-'}")
        if e["error"]:
            print(f"    {e['error']}")
    return 0


# ---- registration ----------------------------------------------------------------------
def register(sub: argparse._SubParsersAction, add_home) -> None:
    from plugins.capabilities import DESCRIPTIONS

    caps = "\n".join(f"  {c.value:<8} {d}" for c, d in DESCRIPTIONS.items())
    plug = sub.add_parser(
        "plugin", help="plugins: scaffold, sign, verify, list",
        description="Write, sign and inspect meshnode plugins. Capabilities:\n" + caps,
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    psub = plug.add_subparsers(dest="plugin_cmd", required=True, metavar="COMMAND")

    p = psub.add_parser("new", help="scaffold a plugin package with a test")
    p.add_argument("name", metavar="NAME", help="plugin name ([a-z][a-z0-9_-]*)")
    p.add_argument("--dir", default=".", metavar="DIR", help="parent directory (default: .)")
    p.set_defaults(func=cmd_plugin_new)

    p = psub.add_parser("sign", help="sign plugin.toml with the identity in --home")
    p.add_argument("manifest", metavar="MANIFEST", help="plugin.toml (or its package dir)")
    add_home(p)
    p.add_argument("--out", metavar="FILE", help="output (default: plugin.manifest beside it)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugin_sign)

    p = psub.add_parser("verify", help="verify a signed manifest against its package code")
    p.add_argument("path", metavar="PATH", help="plugin.manifest or the package directory")
    p.add_argument("--author", metavar="MID", help="also require this author identifier")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugin_verify)

    p = psub.add_parser("list", help="installed plugins: signed? granted? running?")
    add_home(p)
    p.add_argument("--path", action="append", metavar="DIR",
                   help="search this directory first (repeatable; default: [plugins] paths)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugin_list)


def main(argv: list[str] | None = None) -> int:
    """``python -m node.cli_plugins plugin ...``: the plugin commands on their own (what
    ``meshnode plugin ...`` runs once node.cli registers them)."""
    from node import logs
    from node.cli import _add_home

    parser = argparse.ArgumentParser(prog="meshnode")
    parser.add_argument("--log-level", default="info", metavar="LEVEL")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"),
             _add_home)
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
