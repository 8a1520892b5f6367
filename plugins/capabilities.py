"""The fixed list of capabilities a plugin may request and an operator may grant (pure).

A plugin's signed manifest lists the capabilities it *requests*; the node operator
*grants* capabilities per plugin in the node config (``[plugins.<name>] grants``). A
plugin that requests anything not granted is refused at load, with one log line naming
the missing capabilities; a call for a capability the plugin did not request is refused
at RPC time (the plugin gets an error, the node logs and counts it).

Capabilities
------------
``tasks``
    Register task handlers with the node's task engine. Task types are namespaced by the
    plugin name: a handler declared as ``"resize"`` in plugin ``images`` serves the task
    type ``images.resize``.
``kv``
    A private key-value store (bytes to bytes). The node keeps it in sqlite in its data
    directory; the plugin process never opens that file. Keys are per plugin: no plugin
    can read another's keys. Quotas apply (key and value size, total bytes).
``pubsub``
    Publish and subscribe on the plugin's own protocol ID
    ``/meshnode/plugin/<name>/1.0.0`` through the node's transport. A plugin cannot
    publish on another plugin's protocol or on the node's own protocols.
``propose``
    Propose operations to the mesh's consensus log (PBFT). The node tags every operation
    with the plugin name so no plugin can forge another's (or the node's) operations.
``log``
    Send log records to the node's logger (``meshnode.plugin.<name>``), rate limited.
    Without it, records are dropped and counted.
``network``
    Create IPv4/IPv6 sockets (TCP, UDP). Without it, ``socket()`` fails for every
    address family in the plugin process (seccomp), and Landlock (ABI >= 4) also denies
    TCP bind and connect. Unix sockets are refused to every plugin, granted or not.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = [
    "CAPABILITIES",
    "Capability",
    "CapabilityError",
    "DESCRIPTIONS",
    "missing",
    "parse_capabilities",
]


class Capability(enum.StrEnum):
    TASKS = "tasks"
    KV = "kv"
    PUBSUB = "pubsub"
    PROPOSE = "propose"
    LOG = "log"
    NETWORK = "network"


#: Every capability, in documentation order.
CAPABILITIES: tuple[Capability, ...] = tuple(Capability)

#: One line per capability (what ``meshnode plugin list`` and the docs show).
DESCRIPTIONS: dict[Capability, str] = {
    Capability.TASKS: "register task handlers (types <plugin>.<type>)",
    Capability.KV: "private key-value store kept by the node (sqlite, quotas)",
    Capability.PUBSUB: "publish/subscribe on /meshnode/plugin/<name>/1.0.0",
    Capability.PROPOSE: "propose consensus operations (tagged with the plugin name)",
    Capability.LOG: "send log records to the node's logger",
    Capability.NETWORK: "IPv4/IPv6 sockets (else socket() is refused by seccomp)",
}


class CapabilityError(ValueError):
    """An unknown capability name, or a capability not granted (one line)."""


def parse_capabilities(names: Iterable[object], *, where: str = "") -> frozenset[Capability]:
    """Capability names (strings) -> a frozenset of :class:`Capability`.

    Raises CapabilityError naming the first unknown or non-string entry and the valid
    names; ``where`` prefixes the message (e.g. the config key).
    """
    out = set()
    for name in names:
        try:
            out.add(Capability(name))
        except ValueError:
            valid = ", ".join(c.value for c in CAPABILITIES)
            prefix = f"{where}: " if where else ""
            raise CapabilityError(f"{prefix}unknown capability {name!r} (valid: {valid})") from None
    return frozenset(out)


def missing(requested: Iterable[Capability], granted: Iterable[Capability]) -> list[str]:
    """The requested capabilities that are not granted, sorted by name."""
    return sorted(str(c) for c in {str(c) for c in requested} - {str(c) for c in granted})
