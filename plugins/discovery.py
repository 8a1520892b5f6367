"""Find installed plugins through Python entry points, without running their code.

Theory of operation
-------------------
A plugin distribution declares one entry point in the group ``meshnode.plugins``::

    [project.entry-points."meshnode.plugins"]
    hasher = "meshnode_hasher.plugin:plugin"

The entry point name is the plugin name; its value names the :class:`plugins.sdk.Plugin`
object. The node never imports plugin code: discovery reads distribution metadata and
locates the top-level package directory with a finder (``find_spec`` on an undotted
name executes nothing). The signed ``plugin.manifest`` lives in that directory and its
code digest covers the package's ``.py`` files. Only the isolated plugin process
(:mod:`plugins.runner`) imports the module.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from identity import records
from plugins.manifest import MANIFEST_FILE, Manifest, ManifestError, verify_manifest
from plugins.protocol import NAME_RE

__all__ = ["ENTRY_POINT_GROUP", "Discovered", "discover", "load_manifest"]

ENTRY_POINT_GROUP = "meshnode.plugins"


@dataclass(frozen=True)
class Discovered:
    """One entry point: ``name`` (plugin name), ``value`` (``module:attr``), its
    distribution, the top-level package directory (None when not found) and ``error``
    (why it cannot be loaded at all, or None)."""

    name: str
    value: str
    dist: str
    dist_version: str
    package_dir: Path | None
    error: str | None = None

    @property
    def module(self) -> str:
        return self.value.partition(":")[0].strip()

    @property
    def manifest_path(self) -> Path | None:
        return None if self.package_dir is None else self.package_dir / MANIFEST_FILE


def _package_dir(top: str, paths: Sequence[str] | None) -> Path | None:
    spec = None
    try:
        if paths is not None:
            spec = importlib.machinery.PathFinder.find_spec(top, list(paths))
        if spec is None:
            spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def discover(paths: Sequence[str] | None = None) -> list[Discovered]:
    """Every entry point in ``meshnode.plugins`` on ``paths`` (default: ``sys.path``),
    sorted by name. A name claimed twice keeps the first and marks the others."""
    seen: dict[str, Discovered] = {}
    out: list[Discovered] = []
    dists = importlib.metadata.distributions(**({"path": list(paths)} if paths else {}))
    for dist in dists:
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP:
                continue
            d = _one(ep, dist, paths)
            if d.name in seen:
                d = Discovered(d.name, d.value, d.dist, d.dist_version, d.package_dir,
                               f"plugin name also claimed by {seen[d.name].dist}")
            else:
                seen[d.name] = d
            out.append(d)
    return sorted(out, key=lambda d: (d.name, d.error is not None, d.dist))


def _one(ep, dist, paths) -> Discovered:
    meta_name = dist.metadata["Name"] or "?"
    version = dist.version or "?"
    value = ep.value
    module, _, attr = value.partition(":")
    error = None
    if not NAME_RE.fullmatch(ep.name):
        error = f"invalid plugin name {ep.name!r}"
    elif not module.strip() or not attr.strip():
        error = f"entry point {value!r} must be 'module:attribute'"
    pkg = _package_dir(module.strip().split(".")[0], paths) if error is None else None
    if error is None and pkg is None:
        error = f"package {module.split('.')[0]!r} not found (plugins must be packages)"
    return Discovered(ep.name, value, meta_name, version, pkg, error)


def load_manifest(d: Discovered, *,
                  resolve: Callable[[str], records.KeyState | None] | None = None) -> Manifest:
    """Read and verify ``d``'s signed manifest against its package code; the manifest
    must name the same plugin as the entry point. Raises ManifestError (one line)."""
    if d.error:
        raise ManifestError("unloadable", f"plugin {d.name}: {d.error}")
    path = d.manifest_path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError("unsigned", f"plugin {d.name}: no signed manifest at {path} "
                            "(run `meshnode plugin sign plugin.toml --home DIR`)") from None
    except OSError as exc:
        raise ManifestError("unreadable", f"plugin {d.name}: {path}: {exc.strerror}") from None
    try:
        manifest = verify_manifest(data, package_dir=d.package_dir, resolve=resolve)
    except ManifestError as exc:
        raise ManifestError(exc.reason, f"plugin {d.name}: {exc.detail}") from None
    except OSError as exc:  # reading the package code for its digest
        raise ManifestError("unreadable", f"plugin {d.name}: cannot read its code: "
                            f"{exc.strerror}: {exc.filename}") from None
    if manifest.name != d.name:
        raise ManifestError("wrong_name", f"plugin {d.name}: manifest is for {manifest.name!r}")
    return manifest
