"""Node configuration: ``DIR/config.toml``, read with tomllib, written with tomli-w.

Every key has a default, so a config file holds only what differs. Durations are given
in milliseconds (``*_ms``) in the file and exposed in seconds. Unknown sections or keys
and values of the wrong type are refused with one line naming the key, so a typo never
silently falls back to a default.

Example (what ``meshnode init`` writes)::

    [network]
    listen = ["/ip4/0.0.0.0/tcp/4001"]
    bootstrap = []            # multiaddrs with /p2p/<PeerId>
    mdns = true

    [consensus]
    genesis = "genesis.msgpack"   # relative to the home directory
    tick_ms = 10
    batch_size = 64

    [metrics]
    listen = "127.0.0.1:9464"     # "" disables the Prometheus endpoint
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from consensus.batching import MAX_BATCH_REQUESTS
from identity.canonical import MAX_MESSAGE_BYTES
from plugins import config as plugins_config

__all__ = ["ConfigError", "NodeConfig", "load", "save"]

CONFIG_NAME = "config.toml"


class ConfigError(ValueError):
    """A config file that cannot be read or has a bad key or value (one line)."""


@dataclass
class NetworkConfig:
    listen: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/4001"])
    bootstrap: list[str] = field(default_factory=list)
    mdns: bool = True
    #: Largest frame sent or accepted, bytes; at least the largest consensus message
    #: (4 MiB: a PRE-PREPARE with a full batch, a STATE-REPLY).
    max_frame_bytes: int = MAX_MESSAGE_BYTES
    inbound_rate_per_s: int = 2000
    inbound_burst: int = 4000


@dataclass
class ConsensusConfig:
    genesis: str = "genesis.msgpack"
    tick_ms: int = 10
    batch_size: int = 64
    batch_timeout_ms: int = 0
    view_timeout_ms: int = 2000
    #: How long a replica waits before re-sending its own unfinished messages. Far above
    #: a normal round trip: re-sending too eagerly under load floods the peers' queues
    #: and turns a slow round into congestion collapse (measured at 80 ms on 7 nodes).
    resend_interval_ms: int = 1000


@dataclass
class StorageConfig:
    #: sqlite ``synchronous`` in WAL mode. ``full``: every append is fsync'd before the
    #: node sends what it persisted: survives kill -9 *and* power loss (persist before
    #: send holds across an OS crash). ``normal``: no fsync per append: survives kill -9
    #: (the WAL is in the OS page cache) but an OS crash or power loss may lose the last
    #: appends, after which the replica could contradict what it sent. Use ``normal``
    #: only where the device has a battery-backed or otherwise power-safe disk.
    synchronous: str = "full"


@dataclass
class MetricsConfig:
    listen: str = "127.0.0.1:9464"


@dataclass
class ControlConfig:
    socket: str = "control.sock"


_SECTIONS = {
    "network": NetworkConfig,
    "consensus": ConsensusConfig,
    "storage": StorageConfig,
    "metrics": MetricsConfig,
    "control": ControlConfig,
}


#: Integer keys for which 0 is meaningful (every other integer must be positive).
_MAY_BE_ZERO = frozenset({"batch_timeout_ms"})


@dataclass
class NodeConfig:
    """The whole config; ``home`` is the node's home directory (not stored in the file)."""

    home: Path
    network: NetworkConfig = field(default_factory=NetworkConfig)
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    #: ``[plugins]``: limits and per-plugin author pins and capability grants
    #: (:mod:`plugins.config`; docs/plugins.md).
    plugins: plugins_config.PluginsConfig = field(default_factory=plugins_config.PluginsConfig)

    def path(self, relative: str) -> Path:
        """``relative`` resolved against the home directory (absolute paths kept)."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.home / p

    def to_toml(self) -> dict[str, Any]:
        out = {
            name: {f.name: getattr(getattr(self, name), f.name) for f in fields(cls)}
            for name, cls in _SECTIONS.items()
        }
        out["plugins"] = self.plugins.to_toml()
        return out


def load(home: Path) -> NodeConfig:
    """Read ``home/config.toml``. A missing file raises ConfigError saying to run
    ``meshnode init``; bad TOML, unknown keys and wrong types raise ConfigError."""
    path = Path(home) / CONFIG_NAME
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no {path}; run `meshnode init --home {home}`") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    cfg = NodeConfig(home=Path(home))
    for name, table in raw.items():
        if name == "plugins" and isinstance(table, dict):
            try:
                cfg.plugins = plugins_config.parse(table)
            except ValueError as exc:
                raise ConfigError(f"{path}: {exc}") from None
            continue
        cls = _SECTIONS.get(name)
        if cls is None or not isinstance(table, dict):
            raise ConfigError(f"{path}: unknown section [{name}]")
        setattr(cfg, name, _section(path, name, cls, table))
    return cfg


def _section(path: Path, name: str, cls: type, table: dict[str, Any]) -> Any:
    section = cls()
    types = {f.name: type(getattr(section, f.name)) for f in fields(cls)}
    for key, value in table.items():
        if key not in types:
            raise ConfigError(f"{path}: unknown key {name}.{key}")
        want = types[key]
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if ok and want is list:
            ok = all(isinstance(v, str) for v in value)
        if not ok:
            raise ConfigError(f"{path}: {name}.{key} must be {want.__name__}, got {value!r}")
        if want is int and (value < 0 or (value == 0 and key not in _MAY_BE_ZERO)):
            raise ConfigError(f"{path}: {name}.{key} must be "
                              f"{'>= 0' if key in _MAY_BE_ZERO else 'positive'}, got {value}")
        if (name, key) == ("network", "max_frame_bytes") and value < MAX_MESSAGE_BYTES:
            raise ConfigError(f"{path}: network.max_frame_bytes must be at least "
                              f"{MAX_MESSAGE_BYTES} (the largest consensus message), "
                              f"got {value}")
        if (name, key) == ("consensus", "batch_size") and value > MAX_BATCH_REQUESTS:
            raise ConfigError(f"{path}: consensus.batch_size must be at most "
                              f"{MAX_BATCH_REQUESTS}, got {value}")
        if (name, key) == ("storage", "synchronous") and value not in ("full", "normal"):
            raise ConfigError(f"{path}: storage.synchronous must be 'full' or 'normal'")
        setattr(section, key, value)
    return section


def save(cfg: NodeConfig) -> Path:
    """Write ``cfg`` to ``home/config.toml`` atomically; returns the path."""
    from identity.home import atomic_write

    path = cfg.home / CONFIG_NAME
    atomic_write(path, tomli_w.dumps(cfg.to_toml()).encode(), mode=0o600)
    return path
