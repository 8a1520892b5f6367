"""PluginHost: discover, verify and run the node's plugins, each in its own process (trio).

Theory of operation
-------------------
``PluginHost(registry, config, ...).run(task_status=...)``:

1. discovers entry points in ``meshnode.plugins`` (:mod:`plugins.discovery`), never
   importing plugin code in the node;
2. for each, checks (:func:`inspect_plugin`): the operator has a ``[plugins.<name>]``
   table, the signed manifest verifies against the author's key event log and the
   installed code, its author is the one the operator pinned, and every capability it
   requests is granted. Any failure refuses the plugin with one ``error`` log line
   (what, why, how to fix); nothing of it runs;
3. starts a :class:`PluginSupervisor` per accepted plugin (own process, limits,
   restarts with backoff), and calls ``task_status.started(status)`` once every plugin
   has had its first start (ready or failed);
4. serves plugin RPCs: the KV store (sqlite at ``kv_path``, opened here, never by a
   plugin), pubsub through the :class:`PubSubBridge` hook and consensus proposals
   through the :data:`ProposeHook`; a hook the node did not wire answers with an error.
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from identity import records
from plugins.bridge import PluginMessage, ProposeHook, PubSubBridge
from plugins.capabilities import Capability, missing
from plugins.config import PluginGrant, PluginsConfig
from plugins.discovery import Discovered, discover, load_manifest
from plugins.kv import KVError, KVStore
from plugins.manifest import Manifest, ManifestError
from plugins.process import ChildSpec, spawn
from plugins.protocol import LOCAL_RE, protocol_id
from plugins.supervisor import Backoff, CallRefused, PluginRefused, PluginSupervisor

__all__ = ["PluginHost", "inspect_plugin", "inspect_plugins"]

log = logging.getLogger("meshnode.plugins")

MAX_PUBLISH_BYTES = 1024 * 1024
MAX_OP_BYTES = 64 * 1024


def inspect_plugin(d: Discovered, grants: dict[str, PluginGrant], *,
                   resolve: Callable[[str], records.KeyState | None] | None = None,
                   ) -> tuple[dict[str, Any], Manifest | None]:
    """Check one discovered plugin without running it. Returns (status entry, manifest
    when it may run, else None). The entry's ``state`` is ``ready``, ``not granted`` or
    ``refused`` and ``error`` says why (one line)."""
    entry: dict[str, Any] = {
        "name": d.name, "entry": d.value, "dist": f"{d.dist} {d.dist_version}",
        "package_dir": str(d.package_dir) if d.package_dir else None,
        "signed": False, "version": None, "author": None, "requested": [],
        "granted": [], "state": "refused", "error": None,
    }
    grant = grants.get(d.name)
    if grant is not None:
        entry["granted"] = sorted(c.value for c in grant.capabilities)
    try:
        manifest = load_manifest(d, resolve=resolve)
    except ManifestError as exc:
        entry["error"] = str(exc)
        entry["signed"] = exc.reason not in ("unsigned", "unloadable", "unreadable")
        return entry, None
    entry.update(signed=True, version=manifest.version, author=manifest.author,
                 requested=sorted(manifest.capabilities))
    if grant is None:
        entry["state"] = "not granted"
        entry["error"] = (f"plugin {d.name}: not enabled: add [plugins.{d.name}] with "
                          f"author = \"{manifest.author}\" and grants to the node config")
        return entry, None
    if not grant.allows_author(manifest.author):
        entry["error"] = (f"plugin {d.name}: manifest signed by {manifest.author}, but the "
                          f"config trusts only {grant.author}")
        return entry, None
    lacking = missing(manifest.capabilities, grant.capabilities)
    if lacking:
        entry["error"] = (f"plugin {d.name}: requests capabilities not granted: "
                          f"{', '.join(lacking)} (grant them in [plugins.{d.name}] grants)")
        return entry, None
    entry["state"] = "ready"
    return entry, manifest


def inspect_plugins(config: PluginsConfig, *, paths: Sequence[str] | None = None,
                    resolve=None) -> list[dict[str, Any]]:
    """Status entries of every discovered plugin (what ``meshnode plugin list`` shows).
    ``paths`` (default ``config.paths``) are searched before the interpreter's path."""
    explicit = [str(p) for p in (config.paths if paths is None else paths)]
    found = discover([*explicit, *sys.path] if explicit else None)
    return [inspect_plugin(d, config.grants, resolve=resolve)[0] for d in found]


class PluginHost:
    """Runs the plugins of one node. ``registry`` is the task engine's HandlerRegistry;
    ``config`` the parsed ``[plugins]`` section; ``kv_path`` the sqlite file for plugin
    KV stores (e.g. ``<home>/data/plugins.db``); ``pubsub`` and ``propose`` the node's
    hooks (None: those calls are refused); ``paths`` directories searched for plugins
    before the interpreter's path (default: ``config.paths``); ``protect`` directories
    no plugin may read (the node's home), enforced by Landlock where available."""

    def __init__(self, registry: Any, config: PluginsConfig | Mapping[str, PluginGrant], *,
                 kv_path: Path | None = None,
                 pubsub: PubSubBridge | None = None, propose: ProposeHook | None = None,
                 paths: Sequence[str] | None = None, protect: Sequence[Path] = (),
                 resolve: Callable[[str], records.KeyState | None] | None = None,
                 scratch_root: Path | None = None, rng: random.Random | None = None) -> None:
        if isinstance(config, Mapping):  # just the grants: default limits
            config = PluginsConfig(grants=dict(config))
        self.registry, self.config = registry, config
        self.kv_path, self.pubsub, self.propose = kv_path, pubsub, propose
        explicit = [str(p) for p in (config.paths if paths is None else paths)]
        #: Where discovery looks (the explicit paths first, then the interpreter's) and
        #: what the plugin process prepends to its own sys.path (the explicit ones only).
        self.paths = [*explicit, *sys.path] if explicit else None
        self.child_paths = tuple(explicit)
        self.protect = [str(Path(p).resolve()) for p in protect]
        self.resolve, self.scratch_root = resolve, scratch_root
        self.rng = rng or random.Random()
        self.entries: dict[str, dict[str, Any]] = {}
        self.supervisors: dict[str, PluginSupervisor] = {}
        self._kv: KVStore | None = None
        self._kv_limiter = trio.CapacityLimiter(1)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; ``task_status.started(self.status())`` once every
        accepted plugin has had its first start."""
        try:
            async with trio.open_nursery() as nursery:
                sups = [s for s in map(self._prepare, discover(self.paths)) if s is not None]
                async with trio.open_nursery() as starting:  # first starts in parallel
                    for sup in sups:
                        starting.start_soon(nursery.start, sup.run)
                task_status.started(self.status())
                await trio.sleep_forever()
        finally:
            if self._kv is not None:
                self._kv.close()

    def _prepare(self, d: Discovered) -> PluginSupervisor | None:
        entry, manifest = inspect_plugin(d, self.config.grants, resolve=self.resolve)
        if d.name in self.entries:
            entry["state"], entry["error"] = "refused", f"plugin {d.name}: name claimed twice"
            manifest = None
        self.entries.setdefault(d.name, entry)
        if manifest is None:
            (log.warning if entry["state"] == "not granted" else log.error)(
                "plugin refused: %s", entry["error"])
            return None
        grant = self.config.grants[d.name]
        caps = frozenset(Capability(c) for c in manifest.capabilities)
        limits = grant.limits
        spec = ChildSpec(d.name, d.value, str(d.package_dir), self.child_paths,
                         limits.cpu_seconds, limits.memory_mb * 1024 * 1024,
                         limits.concurrency, Capability.NETWORK in caps, tuple(self.protect))
        backoff = Backoff(self.config.restart_backoff_ms / 1000,
                          self.config.restart_backoff_max_ms / 1000,
                          rng=random.Random(self.rng.random()))
        sup = PluginSupervisor(
            d.name, spec, caps, registry=self.registry,
            dispatch=lambda method, args, _n=d.name: self._dispatch(_n, method, args),
            backoff=backoff, subscribe=self._subscriber(d.name),
            spawner=lambda s, _d=d: self._spawn_verified(_d, manifest, s))
        self.supervisors[d.name] = sup
        return sup

    async def _spawn_verified(self, d: Discovered, manifest: Manifest, spec: ChildSpec):
        """Check the plugin again (code, signature, grants) before every start, so a
        package changed on disk after the node started is not run unchecked."""
        entry, again = await trio.to_thread.run_sync(
            lambda: inspect_plugin(d, self.config.grants, resolve=self.resolve))
        if again is None or again != manifest:
            raise PluginRefused(entry["error"] or f"plugin {d.name}: its manifest changed "
                                "since the node started; restart the node to load it")
        return await spawn(spec, scratch_root=self.scratch_root)

    def _subscriber(self, name: str):
        if self.pubsub is None:
            return None
        proto = protocol_id(name)

        def subscribe(deliver: Callable[[PluginMessage], None]) -> Callable[[], None]:
            return self.pubsub.subscribe(proto, deliver)
        return subscribe

    # ---- RPC services ----------------------------------------------------------------
    async def _dispatch(self, name: str, method: str, args: dict) -> Any:
        if method.startswith("kv."):
            return await self._kv_call(name, method, args)
        if method == "pubsub.publish":
            topic, data = _args(args, topic=str, data=bytes)
            if not LOCAL_RE.fullmatch(topic) or len(data) > MAX_PUBLISH_BYTES:
                raise CallRefused("publish needs a valid topic and at most 1 MiB of data")
            if self.pubsub is None:
                raise CallRefused("this node has no pubsub bridge")
            await self.pubsub.publish(protocol_id(name), topic, data)
            return None
        if method == "propose":
            (op,) = _args(args, op=bytes)
            if not op or len(op) > MAX_OP_BYTES:
                raise CallRefused(f"an operation is 1..{MAX_OP_BYTES} bytes")
            if self.propose is None:
                raise CallRefused("this node does not accept proposals from plugins")
            return {"seq": int(await self.propose(name, op))}
        raise CallRefused(f"unknown method {method!r}")

    async def _kv_call(self, name: str, method: str, args: dict) -> Any:
        if self.kv_path is None:
            raise CallRefused("this node has no plugin KV storage configured")
        if self._kv is None:
            self._kv = KVStore(self.kv_path)
        kv, quota = self._kv, self.config.grants[name].limits.kv_quota_bytes
        if method == "kv.get":
            call = (kv.get, name, *_args(args, key=bytes))
        elif method == "kv.put":
            key, value = _args(args, key=bytes, value=bytes)
            call = (lambda: kv.put(name, key, value, quota=quota),)
        elif method == "kv.delete":
            call = (kv.delete, name, *_args(args, key=bytes))
        else:
            call = (kv.keys, name, *_args(args, prefix=bytes, limit=int))
        try:
            return await trio.to_thread.run_sync(*call, limiter=self._kv_limiter)
        except KVError as exc:
            raise CallRefused(str(exc)) from None

    # ---- introspection ----------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """One entry per discovered plugin (see :func:`inspect_plugin`), with the
        supervisor's state, pid, restarts, sandbox and counters for running ones."""
        out = []
        for name in sorted(self.entries):
            entry = dict(self.entries[name])
            sup = self.supervisors.get(name)
            if sup is not None:
                entry.update(sup.status())
                if entry["state"] == "refused" and not entry["error"]:
                    entry["error"] = f"plugin {name}: {sup.last_exit}"
            out.append(entry)
        return out

    def control_handlers(self) -> dict[str, Callable]:
        """Control-API methods for the node's ControlServer: ``plugins`` -> status."""
        async def plugins(params):
            return self.status()
        return {"plugins": plugins}


def _args(args: dict, **types: type) -> tuple:
    if set(args) != set(types) or not all(type(args[k]) is t for k, t in types.items()):
        want = ", ".join(f"{k}: {t.__name__}" for k, t in types.items())
        raise CallRefused(f"bad arguments (want {want})")
    return tuple(args[k] for k in types)
