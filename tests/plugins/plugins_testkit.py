"""Helpers for plugin tests: authors, plugin packages on a private site dir, a host.

A test plugin is a real package with a ``*.dist-info`` (METADATA + entry_points.txt) in
a temporary site directory: discovery reads it through ``importlib.metadata`` on that
path and the plugin process gets the path prepended to its ``sys.path``. Nothing is
installed into the shared virtualenv.
"""

from __future__ import annotations

import contextlib
import hashlib
import textwrap
from dataclasses import dataclass
from pathlib import Path

import trio

from identity import records
from identity.soft import SoftSigner
from node.tasks.api import HandlerRegistry, TaskContext
from plugins import config as plugins_config
from plugins.host import PluginHost
from plugins.manifest import ManifestSource, code_digest, sign_manifest


@dataclass
class Author:
    signer: SoftSigner
    events: list
    identifier: str


def make_author(seed: bytes) -> Author:
    current = SoftSigner(hashlib.sha256(seed + b"/0").digest())
    nxt = SoftSigner(hashlib.sha256(seed + b"/1").digest())
    event = records.incept(current, nxt.public_key, issued_at=1_700_000_000)
    return Author(current, [event], event.identifier)


class Site:
    """A private site directory holding plugin packages and their dist-info."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, code: str, *, capabilities=("tasks",), author: Author | None,
            version: str = "0.1.0") -> Path:
        """Write package ``mnp_<name>`` (module ``plugin`` with ``code``), sign its
        manifest with ``author`` (None: leave unsigned). Returns the package dir."""
        pkg = self.root / f"mnp_{name}"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        header = "from plugins.sdk import Plugin, TaskContext, TaskFailed, NodeError\n"
        header += f"plugin = Plugin({name!r})\n"
        (pkg / "plugin.py").write_text(header + textwrap.dedent(code))
        caps = ", ".join(f'"{c}"' for c in capabilities)
        (pkg / "plugin.toml").write_text(
            f'name = "{name}"\nversion = "{version}"\ncapabilities = [{caps}]\n')
        if author is not None:
            self.sign(pkg, author)
        dist = self.root / f"mnp_{name}-{version}.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: mnp-{name}\nVersion: {version}\n")
        (dist / "entry_points.txt").write_text(
            f"[meshnode.plugins]\n{name} = mnp_{name}.plugin:plugin\n")
        return pkg

    @staticmethod
    def sign(pkg: Path, author: Author) -> None:
        from plugins.manifest import load_source

        source: ManifestSource = load_source(pkg / "plugin.toml")
        data = sign_manifest(source, signer=author.signer, kel=author.events,
                             code=code_digest(pkg))
        (pkg / "plugin.manifest").write_bytes(data)


def plugins_cfg(author: Author | str, grants: dict[str, list[str]], **limits):
    ident = author if isinstance(author, str) else author.identifier
    table: dict = dict(limits)
    for name, caps in grants.items():
        table[name] = {"author": ident, "grants": caps}
    table.setdefault("restart_backoff_ms", 50)
    table.setdefault("restart_backoff_max_ms", 400)
    return plugins_config.parse(table)


@contextlib.asynccontextmanager
async def running_host(site: Site, cfg, tmp_path: Path, **kw):
    """Run a PluginHost over ``site`` until the block ends; yields (host, registry)."""
    registry = HandlerRegistry()
    kw.setdefault("kv_path", tmp_path / "home" / "data" / "plugins.db")
    kw.setdefault("protect", [tmp_path / "home"])
    (tmp_path / "home").mkdir(exist_ok=True)
    kw.setdefault("paths", [str(site.root)])
    host = PluginHost(registry, cfg, **kw)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        try:
            yield host, registry
        finally:
            nursery.cancel_scope.cancel()


async def run_task(registry, task_type: str, data: bytes = b"", *, timeout: float = 20.0,
                   attempt: int = 1, task_id: str = "t") -> bytes:
    handler = registry.get(task_type)
    assert handler is not None, f"{task_type} not registered: {registry.types()}"
    return await handler(TaskContext(task_id, task_type, data, attempt,
                                     trio.current_time() + timeout))
