"""A real mesh of `meshnode start` processes for tests (tests only).

`Mesh` creates a `meshnode testnet`, starts nodes as child processes (start-up is read
from their stdout: no sleeps), and talks to them over their control sockets; the
node's `wait` method blocks until a condition holds, with a deadline.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from node.control import call


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True,
                          text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"meshnode {args}: {proc.stderr}")
    return proc


class Mesh:
    def __init__(self, root: Path, n: int = 4) -> None:
        self.root = root
        self.n = n
        cli("testnet", "--nodes", str(n), "--out", str(root), "--base-port", "0")
        self.procs: dict[int, subprocess.Popen] = {}
        self.extra_homes: dict[int, Path] = {}

    def home(self, k: int) -> Path:
        return self.extra_homes.get(k, self.root / f"node{k}")

    def add_home(self, k: int, home: Path) -> None:
        """Address a node outside the testnet (e.g. a joiner) as node ``k``."""
        self.extra_homes[k] = home

    def start(self, k: int) -> dict:
        err = open(self.root / f"node{k}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "start", "--home", str(self.home(k))],
            stdout=subprocess.PIPE, stderr=err, text=True)
        self.procs[k] = proc
        info = {}
        for line in proc.stdout:  # blocks until the node prints its identity and addrs
            key, _, value = line.strip().partition(" ")
            info.setdefault(key, []).append(value)
            if key == "listen":
                return info
        raise AssertionError(f"node{k} exited: {(self.root / f'node{k}.log').read_text()}")

    def control(self, k: int, method: str, params: dict | None = None, timeout_s: float = 60):
        return call(self.home(k) / "control.sock", method, params, timeout_s=timeout_s)

    def wait(self, k: int, **cond) -> dict:
        return self.control(k, "wait", {**cond, "timeout_ms": 60_000}, timeout_s=90)

    def kill(self, k: int, sig: int = signal.SIGKILL) -> int:
        proc = self.procs.pop(k)
        proc.send_signal(sig)
        return proc.wait(timeout=60)

    def stop_all(self) -> None:
        for k in list(self.procs):
            self.kill(k, signal.SIGTERM)

    def audit(self, k: int) -> list:
        return self.control(k, "audit")["entries"]


def start_all(mesh: Mesh) -> None:
    for k in range(1, mesh.n + 1):
        mesh.start(k)
    for k in range(1, mesh.n + 1):
        mesh.wait(k, peers=mesh.n - 1)
