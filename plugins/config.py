"""The ``[plugins]`` section of the node config: limits and per-plugin grants (pure).

Shape (``DIR/config.toml``)::

    [plugins]
    cpu_seconds = 300         # RLIMIT_CPU per plugin process incarnation (CPU seconds)
    memory_mb = 512           # RLIMIT_AS per plugin process (MiB of address space)
    concurrency = 4           # tasks in flight per plugin
    kv_quota_bytes = 16777216 # total key+value bytes per plugin
    restart_backoff_ms = 500  # first restart delay; doubles per crash, capped below
    restart_backoff_max_ms = 60000
    paths = []                # absolute directories searched for installed plugins
                              # before the interpreter's (site dirs with *.dist-info)

    [plugins.hasher]          # one table per plugin; no table = the plugin is not loaded
    author = "mid:IL7x..."    # required: the identifier that must have signed the manifest
                              # ("*" accepts any valid signature: the signature then proves
                              #  integrity only, not who you trust)
    grants = ["tasks", "kv", "log"]
    cpu_seconds = 60          # optional per-plugin overrides of the limits above
    memory_mb = 256
    concurrency = 2

:func:`parse` raises ValueError with one line naming the key; the node's config loader
wraps it in its ConfigError.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from plugins.capabilities import Capability, CapabilityError, parse_capabilities
from plugins.protocol import check_name, protocol_id

__all__ = ["ANY_AUTHOR", "PluginGrant", "PluginLimits", "PluginsConfig", "parse"]

ANY_AUTHOR = "*"


@dataclass(frozen=True)
class PluginLimits:
    cpu_seconds: int = 300
    memory_mb: int = 512
    concurrency: int = 4
    kv_quota_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class PluginGrant:
    """What the operator allows plugin ``name``: its author and capabilities."""

    name: str
    author: str
    capabilities: frozenset[Capability]
    limits: PluginLimits = field(default_factory=PluginLimits)

    def allows_author(self, author: str) -> bool:
        return self.author == ANY_AUTHOR or self.author == author


@dataclass(frozen=True)
class PluginsConfig:
    limits: PluginLimits = field(default_factory=PluginLimits)
    restart_backoff_ms: int = 500
    restart_backoff_max_ms: int = 60_000
    paths: tuple[str, ...] = ()
    grants: dict[str, PluginGrant] = field(default_factory=dict)

    def pubsub_protocols(self) -> list[str]:
        """The protocol IDs of plugins granted ``pubsub`` (channels the node's transport
        must accept), sorted."""
        return sorted(protocol_id(n) for n, g in self.grants.items()
                      if Capability.PUBSUB in g.capabilities)

    def to_toml(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self.limits, f.name) for f in fields(PluginLimits)}
        out["restart_backoff_ms"] = self.restart_backoff_ms
        out["restart_backoff_max_ms"] = self.restart_backoff_max_ms
        out["paths"] = list(self.paths)
        for name, g in sorted(self.grants.items()):
            table: dict[str, Any] = {"author": g.author,
                                     "grants": sorted(c.value for c in g.capabilities)}
            for f in fields(PluginLimits):
                if getattr(g.limits, f.name) != getattr(self.limits, f.name):
                    table[f.name] = getattr(g.limits, f.name)
            out[name] = table
        return out


_LIMIT_KEYS = {f.name for f in fields(PluginLimits)}
_GLOBAL_INTS = _LIMIT_KEYS | {"restart_backoff_ms", "restart_backoff_max_ms"}


def _positive_int(where: str, value: Any) -> int:
    if type(value) is not int or value <= 0:
        raise ValueError(f"{where} must be a positive integer, got {value!r}")
    return value


def parse(table: dict[str, Any], *, where: str = "plugins") -> PluginsConfig:
    """Parse the ``[plugins]`` table (already decoded TOML). Raises ValueError."""
    ints: dict[str, int] = {}
    paths: tuple[str, ...] = ()
    plugin_tables: dict[str, dict] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            try:
                check_name(key)
            except ValueError as exc:
                raise ValueError(f"{where}.{key}: {exc}") from None
            plugin_tables[key] = value
        elif key == "paths":
            if not isinstance(value, list) or not all(
                    isinstance(p, str) and p.startswith("/") for p in value):
                raise ValueError(f"{where}.paths must be a list of absolute directory names")
            paths = tuple(value)
        elif key in _GLOBAL_INTS:
            ints[key] = _positive_int(f"{where}.{key}", value)
        else:
            raise ValueError(f"unknown key {where}.{key}")
    limits = PluginLimits(**{k: v for k, v in ints.items() if k in _LIMIT_KEYS})
    grants = {name: _grant(f"{where}.{name}", name, t, limits)
              for name, t in plugin_tables.items()}
    return PluginsConfig(
        limits=limits,
        restart_backoff_ms=ints.get("restart_backoff_ms", 500),
        restart_backoff_max_ms=ints.get("restart_backoff_max_ms", 60_000),
        paths=paths,
        grants=grants,
    )


def _grant(where: str, name: str, t: dict[str, Any], limits: PluginLimits) -> PluginGrant:
    overrides = {}
    author = None
    caps: frozenset[Capability] = frozenset()
    for key, value in t.items():
        if key == "author":
            if not isinstance(value, str) or not (value == ANY_AUTHOR or value.startswith("mid:")):
                raise ValueError(f"{where}.author must be a 'mid:...' identifier or '*'")
            author = value
        elif key == "grants":
            if not isinstance(value, list):
                raise ValueError(f"{where}.grants must be a list of capability names")
            try:
                caps = parse_capabilities(value, where=f"{where}.grants")
            except CapabilityError as exc:
                raise ValueError(str(exc)) from None
        elif key in _LIMIT_KEYS:
            overrides[key] = _positive_int(f"{where}.{key}", value)
        else:
            raise ValueError(f"unknown key {where}.{key}")
    if author is None:
        raise ValueError(f"{where}.author is required: the 'mid:...' identifier of the "
                         "author whose signature you trust (or '*')")
    return PluginGrant(name, author, caps, replace(limits, **overrides))
