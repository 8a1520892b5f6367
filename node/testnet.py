"""`meshnode testnet`: N node homes on 127.0.0.1 with their own tokens and one genesis.

Each node gets its own embedded SoftHSM token, so enrolment and signing run in a child
process per node (python-pkcs11 loads one SoftHSM configuration per process, and SoftHSM
reads its configuration once). Steps: enrol node k (``meshnode identity enroll``), write
its config (listen ``/ip4/127.0.0.1/tcp/<base_port + k - 1>``, the other nodes as
bootstrap peers), build the genesis body from every node's key event log, have every
node sign it (``meshnode genesis sign``), and write ``genesis.msgpack`` into each home.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

from identity.home import IdentityHome, atomic_write
from node import config, genesis

__all__ = ["create", "free_base_port"]


class TestnetError(RuntimeError):
    """A step of testnet creation failed (the message names the node and the step)."""


def free_base_port(n: int, *, host: str = "127.0.0.1", rng: random.Random | None = None) -> int:
    """A port P such that P .. P+n-1 are all free on ``host`` right now (TCP bind test
    in 20000-60000). Raises TestnetError when 100 random tries find none. (Another
    process may still take a port between this check and the node's bind.)"""
    rng = rng or random.Random()
    for _ in range(100):
        base = rng.randrange(20000, 60000 - n)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise TestnetError(f"no {n} consecutive free ports on {host}")


def _meshnode(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "node.cli", "--log-level", "warning", *args],
                          capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        raise TestnetError(f"`meshnode {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def create(out: Path, nodes: int, *, base_port: int = 4101, metrics_base_port: int = 0,
           chain: str = "testnet", ip: str = "127.0.0.1", checkpoint_interval: int = 16,
           now: float | None = None) -> Path:
    """Create the testnet under ``out`` (must not exist or be empty); returns ``out``.

    Node k (1-based) listens on ``/ip4/<ip>/tcp/<base_port + k - 1>`` where ``{k}`` in
    ``ip`` is replaced by k (e.g. ``10.199.0.{k}`` for one network namespace per node);
    ``base_port=0`` picks a free range. ``checkpoint_interval`` (K, window 4K) is small
    by default so a testnet's membership changes take effect after tens of decisions.

    Raises TestnetError when a node cannot be enrolled or sign, ValueError for bad
    arguments (``nodes`` >= 1, ports in 1..65535).
    """
    if nodes < 1:
        raise ValueError("a testnet needs at least one node")
    if base_port == 0:
        base_port = free_base_port(nodes, host="127.0.0.1" if "{k}" not in ip else "0.0.0.0")
    if not (base_port > 0 and base_port + nodes - 1 <= 65535):
        raise ValueError("base port out of range")
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        raise TestnetError(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    homes = [out / f"node{k}" for k in range(1, nodes + 1)]
    infos = [json.loads(_meshnode("identity", "enroll", "--home", str(h), "--json"))
             for h in homes]
    addrs = [f"/ip4/{ip.replace('{k}', str(k + 1))}/tcp/{base_port + k}" for k in range(nodes)]
    members = [genesis.member_from_kel([e.to_bytes() for e in IdentityHome(h).events()], [a])
               for h, a in zip(homes, addrs, strict=True)]
    body = genesis.build_body(chain, int(time.time() if now is None else now), members,
                              checkpoint_interval=checkpoint_interval)
    body_path = out / "genesis.body"
    atomic_write(body_path, body, mode=0o644)
    signatures = {info["peer_id"]: bytes.fromhex(_meshnode("genesis", "sign", "--home", str(h),
                                                           str(body_path)).strip())
                  for h, info in zip(homes, infos, strict=True)}
    data = genesis.encode_file(body, signatures)
    genesis.verify(data)
    body_path.unlink()
    atomic_write(out / "genesis.msgpack", data, mode=0o644)
    for k, home in enumerate(homes):
        cfg = config.NodeConfig(home=home)
        cfg.network.listen = [addrs[k]]
        cfg.network.mdns = False
        cfg.network.bootstrap = [f"{a}/p2p/{i['peer_id']}"
                                 for j, (a, i) in enumerate(zip(addrs, infos, strict=True))
                                 if j != k]
        cfg.metrics.listen = f"127.0.0.1:{metrics_base_port + k}" if metrics_base_port else ""
        config.save(cfg)
        atomic_write(home / "genesis.msgpack", data, mode=0o644)
    return out
