"""NodeRuntime: one node's trio program — HSM identity, libp2p, PBFT, sqlite, control.

Theory of operation
-------------------
``NodeRuntime(home).run(task_status=...)`` opens the node's one nursery and starts, in
order: the HSM session and the current key (fail closed: no key, no node), the genesis
member set, sqlite storage and the replica restored from it, the libp2p transport
(``task_status.started()`` is called only once it listens), the consensus driver, the
healer that re-dials members until the mesh is whole, the control socket, and the
Prometheus endpoint. Cancelling the nursery (SIGINT/SIGTERM in ``meshnode start``)
unwinds them in reverse: the transport closes its host and listener, storage
checkpoints its WAL, the HSM session is closed.

All protocol logic lives in the pure cores; this module only wires effects to I/O.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from consensus.membership import MEMBERS_CLIENT, endorsement_bytes, member_op
from consensus.membership import REJECTED as MEMBER_REJECTED
from consensus.messages import batch_digest, decode_message
from consensus.persist import restore
from consensus.replica import Config
from consensus.state import NullStateMachine
from identity.did import DidError, public_key_from_peer_id
from identity.home import IdentityHome
from identity.libp2p_key import hsm_key_pair
from identity.pkcs11 import Token
from node import config as node_config
from node import genesis
from node.control import ControlError, ControlServer
from node.discovery import Discovery
from node.driver import CHANNEL, ConsensusDriver, ProposeError
from node.metrics import Metrics
from node.storage import Storage
from node.tasks.api import HandlerRegistry
from node.tasks.builtin import register_builtin_handlers
from node.tasks.control import task_handlers
from node.tasks.engine import TaskEngine
from node.tasks.meshapp import MeshTaskApp, bound_replica
from node.tasks.service import MeshSubmitError, MeshTaskService
from node.tasks.store import TaskStore
from node.transport.host import LibP2PTransport
from plugins.bridge import TransportPubSub, plugin_operation
from plugins.host import PluginHost
from plugins.supervisor import CallRefused

log = logging.getLogger("meshnode.node")

#: The node keeps every consensus message under 1 MiB: py-libp2p 0.8.1's yamux stalls
#: now and then under 2 MiB frames (four loopback nodes deciding 2 MiB PRE-PREPAREs hung
#: in about 1 run of 4 with another job on the machine; 0.9 MiB frames: 24 of 24
#: runs passed). Operations, batches and STATE-REPLYs are sized for that; the core's own
#: defaults (1 MiB operations, 2 MiB batches, ~4 MiB replies) stay for the simulator.
NODE_MAX_OP_BYTES = 768 * 1024
NODE_MAX_BATCH_BYTES = 896 * 1024
NODE_MAX_REPLY_BYTES = 960 * 1024

__all__ = ["NodeRuntime", "decided_value"]

DB_NAME = "data/node.db"
TASKS_DB_NAME = "data/tasks.db"
PLUGINS_DB_NAME = "data/plugins.db"
PLUGIN_CHANNEL_PREFIX = "/meshnode/plugin/"
CERT_DIR = "data/certificates"


def decided_value(certificate: bytes) -> bytes:
    """The audit chain's value digest: the PBFT batch digest inside a certificate."""
    return batch_digest(decode_message(certificate).batch)


@dataclass
class _Parts:
    token: Token
    storage: Storage
    transport: LibP2PTransport
    driver: ConsensusDriver
    genesis: genesis.Genesis
    discovery: Discovery
    engine: TaskEngine
    mesh: MeshTaskService
    plugins: PluginHost
    pubsub: TransportPubSub


class NodeRuntime:
    """A meshnode process rooted at ``home`` (see ``meshnode init``)."""

    def __init__(self, home: Path, *, env: Mapping[str, str] = os.environ) -> None:
        self.home = Path(home)
        self.env = env
        self.cfg = node_config.load(self.home)
        self.identity = IdentityHome(self.home)
        self.parts: _Parts | None = None
        self.metrics = Metrics()
        #: Task handlers by type: built-ins and plugins register here.
        self.registry = HandlerRegistry()
        register_builtin_handlers(self.registry)

    # ---- lifecycle ----------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; ``task_status.started(info)`` once listening, where
        ``info`` is :meth:`info`. Raises ConfigError, GenesisError, Pkcs11Error,
        RecordError at start-up with a one-line reason."""
        state = self.identity.state()
        if state.revoked:
            raise ControlError(f"identity {state.identifier} is revoked; this node cannot run")
        gen = genesis.verify(self.cfg.path(self.cfg.consensus.genesis).read_bytes())
        token = Token.open(self.identity.hsm_config(self.env))
        try:
            signer = token.signer(self.identity.current_key_label(state))
            storage = Storage(self.home / DB_NAME, digest_of=decided_value,
                              synchronous=self.cfg.storage.synchronous)
            try:
                await self._run_parts(token, signer, storage, gen, task_status)
            finally:
                storage.close()
        finally:
            token.close()
            log.info("node stopped")

    async def _run_parts(self, token, signer, storage, gen, task_status) -> None:
        net = self.cfg.network
        channels = [CHANNEL, *self.cfg.plugins.pubsub_protocols()]
        transport = LibP2PTransport(
            hsm_key_pair(signer), net.listen, channels, max_frame_bytes=net.max_frame_bytes,
            rate_per_s=net.inbound_rate_per_s, burst=net.inbound_burst, mdns=net.mdns,
        )
        me = transport.peer_id
        members = gen.members_map()
        if me not in members:
            log.info("not a genesis member: joining as a non-voting replica; it votes once a "
                     "committed `meshnode members add` takes effect")
        app = MeshTaskApp(lambda: None, other=NullStateMachine())
        replica = self._replica(me, gen, storage, app)
        driver = ConsensusDriver(
            replica, persist=self._persister(storage),
            sign_all=lambda datas: [signer.sign(d) for d in datas],
            send=transport.send, tick_s=self.cfg.consensus.tick_ms / 1000,
            on_decision=self.metrics.on_decision, max_op_bytes=NODE_MAX_OP_BYTES,
        )
        transport.on_drop = self.metrics.on_drop
        discovery = Discovery(self.identity, transport, bootstrap=self.cfg.network.bootstrap,
                              known=[(m.peer_id, m.addrs) for m in gen.members if m.peer_id != me],
                              env=self.env, mdns=net.mdns)
        engine = TaskEngine(TaskStore(self.home / TASKS_DB_NAME,
                                      synchronous=self.cfg.storage.synchronous), self.registry)

        async def sign(data: bytes) -> bytes:
            return await trio.to_thread.run_sync(signer.sign, data, limiter=driver.io_limiter)

        async def propose(op: bytes) -> bytes:
            try:
                return (await driver.propose_for_result(op))[1]
            except ProposeError as exc:
                raise MeshSubmitError(str(exc)) from None

        mesh = MeshTaskService(app, engine, me=me, propose=propose, sign=sign)

        async def plugin_propose(plugin: str, op: bytes) -> int:
            try:
                return (await driver.propose(plugin_operation(plugin, op))).seq
            except ProposeError as exc:
                raise CallRefused(str(exc)) from None

        pubsub = TransportPubSub(transport)
        plugin_host = PluginHost(self.registry, self.cfg.plugins,
                                 kv_path=self.home / PLUGINS_DB_NAME, protect=[self.home],
                                 propose=plugin_propose, pubsub=pubsub)
        self.parts = _Parts(token, storage, transport, driver, gen, discovery, engine, mesh,
                            plugin_host, pubsub)
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run)
            for m in gen.members:
                if m.peer_id != me:
                    transport.add_peer_addrs(m.peer_id, m.addrs)
            nursery.start_soon(self._pump)
            await nursery.start(driver.run)
            nursery.start_soon(self._heal)
            await nursery.start(discovery.run)
            await nursery.start(engine.run)
            await nursery.start(mesh.run)
            await nursery.start(plugin_host.run)
            control = ControlServer(self.cfg.path(self.cfg.control.socket), self._handlers())
            await nursery.start(control.run)
            if self.cfg.metrics.listen:
                self.metrics.serve(self.cfg.metrics.listen)
                nursery.start_soon(self.metrics.collect_forever, self)
            log.info("node %s up: %d members (f=%d), view %d, last decided %d", me,
                     replica.members.n, replica.members.f, replica.view, replica.last_executed)
            task_status.started(self.info())
            try:
                await trio.sleep_forever()
            finally:
                self.metrics.stop()

    def _replica(self, me: str, gen: genesis.Genesis, storage: Storage, app: MeshTaskApp):
        c = self.cfg.consensus
        tick = c.tick_ms
        cfg = Config(
            checkpoint_interval=gen.checkpoint_interval, window=gen.window,
            batch_size=c.batch_size, batch_timeout=c.batch_timeout_ms // tick,
            view_timeout=max(2, c.view_timeout_ms // tick),
            resend_interval=max(1, c.resend_interval_ms // tick),
            max_batch_bytes=NODE_MAX_BATCH_BYTES, max_reply_bytes=NODE_MAX_REPLY_BYTES,
        )
        members = gen.members_map()
        records = storage.records()
        make = bound_replica()  # points the app at the replica's member set first
        if not records:
            return make(me, members, config=cfg, app=app)
        log.info("restoring the replica from %d persisted records", len(records))
        return restore(me, members, records, config=cfg, app=app, replica_cls=make)

    @staticmethod
    def _persister(storage: Storage):
        def persist(records) -> None:
            storage.append_records(records)
            stable = [r.seq for r in records if r.kind == "stable"]
            if stable:
                storage.compact(max(stable))
        return persist

    async def _pump(self) -> None:
        parts = self.parts
        async for msg in parts.transport.inbound:
            if msg.channel == CHANNEL:
                parts.driver.on_frame(msg.peer_id, msg.payload)
            elif msg.channel.startswith(PLUGIN_CHANNEL_PREFIX):
                parts.pubsub.on_inbound(msg.peer_id, msg.channel, msg.payload)

    async def _heal(self) -> None:
        """Re-dial members of the current member set that are not connected (addresses
        from the genesis, the peerstore, bootstrap and the DHT), with per-peer
        exponential backoff (0.5 s doubling to 30 s, jittered), while the node runs."""
        rng = random.Random()
        backoff: dict[str, float] = {}
        due: dict[str, float] = {}
        transport = self.parts.transport
        replica = self.parts.driver.replica
        while True:
            now = trio.current_time()
            connected = set(transport.connected_peers())
            peers = [p for p in replica.members.ids if p != transport.peer_id]
            for p in peers:
                backoff.setdefault(p, 0.5)
                due.setdefault(p, 0.0)
                if p in connected:
                    backoff[p] = 0.5
                elif now >= due[p]:
                    due[p] = now + rng.uniform(0.5, 1.0) * backoff[p]
                    backoff[p] = min(30.0, backoff[p] * 2)
                    try:
                        await transport.host.connect(transport.host.get_peerstore().peer_info(
                            _peer_id_obj(p)))
                        log.info("connected to member %s", p)
                    except Exception as exc:  # noqa: BLE001 - any dial failure: retry later
                        log.debug("dial %s failed: %s", p, exc)
            await trio.sleep(0.25)

    # ---- introspection and control ------------------------------------------------
    def info(self) -> dict[str, Any]:
        """PeerId, DID, identifier and listen multiaddrs."""
        parts = self.parts
        state = self.identity.state()
        return {"peer_id": parts.transport.peer_id, "did": state.did, "id": state.identifier,
                "listen": parts.transport.listen_addrs()}

    def status(self) -> dict[str, Any]:
        p = self.parts
        r = p.driver.replica
        return {
            **self.info(),
            "peers": p.transport.connected_peers(),
            "members": list(r.members.ids), "n": r.members.n, "f": r.members.f,
            "view": r.view, "primary": r.primary(r.view), "in_view_change": r.in_view_change,
            "last_decided": r.last_executed, "state_digest": r.state.digest().hex(),
            "chain": p.genesis.chain,
            "evidence": len(r.evidence),
            "member": r.me in r.members,
            "dht": p.discovery.stats(),
            "dropped": {reason: sum(v.values())
                        for reason, v in p.transport.drop_counts().items()},
            "undecodable": sum(p.driver.decode_drops.values()),
            "refused": dict(sorted(sum((Counter(v) for v in r.drops.values()),
                                       Counter()).items())),
        }

    def _handlers(self):
        async def status(params):
            return self.status()

        async def peers(params):
            t = self.parts.transport
            return [{"peer_id": p, "member": p in self.parts.driver.replica.members}
                    for p in t.connected_peers()]

        async def propose(params):
            op = params.get("op")
            if type(op) is not bytes or not op:
                raise ControlError("propose needs a non-empty op (bytes)")
            started = trio.current_time()
            try:
                decision = await self.parts.driver.propose(op)
            except ProposeError as exc:
                raise ControlError(str(exc)) from None
            self.metrics.commit_latency.observe(trio.current_time() - started)
            path = self._write_certificate(decision.seq)
            return {"seq": decision.seq, "certificate": str(path)}

        async def decision(params):
            seq = params.get("seq")
            cert = self.parts.storage.decided(seq) if type(seq) is int else None
            if cert is None:
                raise ControlError(f"no decision at sequence number {seq}")
            return {"seq": seq, "certificate": cert}

        async def audit(params):
            entries = self.parts.storage.audit_entries(int(params.get("start", 0)))
            return {"members": self.parts.genesis.members_map(),
                    "entries": [[e.seq, e.certificate, e.value_digest, e.prev_hash,
                                 e.entry_hash] for e in entries]}

        async def wait(params):
            """Block until ``peers`` members are connected, ``last_decided`` is reached
            and (if ``published``) our identity is in the DHT — each optional — or fail
            after ``timeout_ms`` milliseconds."""
            peers_wanted = int(params.get("peers", 0))
            published = bool(params.get("published", False))
            decided_wanted = int(params.get("last_decided", 0))
            timeout_s = int(params.get("timeout_ms", 30_000)) / 1000
            with trio.move_on_after(timeout_s):
                while True:
                    st = self.status()
                    members = set(st["members"])
                    if (len(members.intersection(st["peers"])) >= peers_wanted
                            and st["last_decided"] >= decided_wanted
                            and (st["dht"].get("published") or not published)):
                        return st
                    await trio.sleep(0.02)
            raise ControlError(f"timed out after {timeout_s:g} s waiting for "
                               f"peers>={peers_wanted}, last_decided>={decided_wanted}")

        async def members_endorse(params):
            return {"endorser": self.parts.transport.peer_id,
                    "signature": await self._endorse(params)}

        async def members_change(params):
            return await self._propose_member_change(params)

        async def dht_lookup(params):
            peer_id = params.get("peer_id")
            if type(peer_id) is not str:
                raise ControlError("dht_lookup needs a peer_id (string)")
            try:
                return await self.parts.discovery.lookup_identity(peer_id)
            except LookupError as exc:
                raise ControlError(str(exc)) from None

        return {"status": status, "peers": peers, "propose": propose,
                "decision": decision, "audit": audit, "wait": wait, "dht_lookup": dht_lookup,
                "members.endorse": members_endorse, "members.change": members_change,
                **task_handlers(self.parts.engine, mesh=self.parts.mesh),
                **self.parts.plugins.control_handlers()}

    @staticmethod
    def _member_change_params(params: dict[str, Any]) -> tuple[str, str, bytes]:
        action, peer_id = params.get("action"), params.get("peer_id")
        if action not in ("add", "remove") or type(peer_id) is not str:
            raise ControlError("a member change needs action add|remove and a peer_id")
        try:
            return action, peer_id, public_key_from_peer_id(peer_id)
        except DidError as exc:
            raise ControlError(f"not an Ed25519 PeerId: {exc}") from None

    async def _endorse(self, params: dict[str, Any]) -> bytes:
        """This member's HSM signature endorsing a change of the *current* member set."""
        action, peer_id, key = self._member_change_params(params)
        replica = self.parts.driver.replica
        if replica.me not in replica.members:
            raise ControlError("only a current member can endorse a membership change")
        data = endorsement_bytes(replica.members, action, peer_id, key)
        signer = self.parts.token.signer(self.identity.current_key_label())
        return await trio.to_thread.run_sync(signer.sign, data,
                                             limiter=self.parts.driver.io_limiter)

    async def _propose_member_change(self, params: dict[str, Any]) -> dict[str, Any]:
        """Propose a quorum-endorsed membership change (``endorsements``: {peer_id:
        signature}); returns its sequence number, the result and when it takes effect."""
        action, peer_id, key = self._member_change_params(params)
        endorsements = params.get("endorsements")
        if type(endorsements) is not dict or not all(
                type(k) is str and type(v) is bytes for k, v in endorsements.items()):
            raise ControlError("endorsements must map PeerIds to signatures")
        op = member_op(action, peer_id, key, endorsements)
        rid = time.time_ns() // 1_000_000  # unique and increasing per change
        try:
            decision, result = await self.parts.driver.propose_for_result(
                op, client=MEMBERS_CLIENT, rid=rid)
        except ProposeError as exc:
            raise ControlError(str(exc)) from None
        if result.startswith(MEMBER_REJECTED):
            raise ControlError(result[len(MEMBER_REJECTED):].decode("utf-8", "replace"))
        return {"seq": decision.seq, "result": result.decode("utf-8", "replace")}

    def _write_certificate(self, seq: int) -> Path:
        from identity.home import atomic_write

        cert = self.parts.storage.decided(seq)
        directory = self.home / CERT_DIR
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / f"{seq:012d}.cert"
        atomic_write(path, cert, mode=0o644)
        return path


def _peer_id_obj(peer_id: str):
    from libp2p.peer.id import ID

    return ID.from_base58(peer_id)
